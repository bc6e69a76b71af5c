"""The latest rows travel by binary COPY into a per-backend temp staging table, which the commit statement reads.

Each test checks ``*_latest`` against the newest row per symbol computed here, and counts the time-series rows by
unique update id, through the paths that reach the staging table differently: several batches per commit with rows
out of receipt order, mixed NULL patterns, a spooled batch replayed (its latest rows come back as column arrays), a
backend terminated in the middle of the latest statement, connections that are new or lost their temp tables, and
two writes in one unit of work.
"""

import asyncio
import logging
import random
from typing import Any

import asyncpg

from hftdb import BookTicker, DatabaseManager, ExchangeName, FundingRate, now_us
from hftdb.config import DatabaseSettings, Settings, StorageSettings, WriterSettings
from hftdb.wire.copy import HEADER, TRAILER
from hftdb.store.tables import BookTickerWriter
from hftdb.wire.books import LAYOUTS
from hftdb.wire.copy import copy_columns

from helpers import settings, sql

STAGE = BookTickerWriter.latest_stage


def _rows(n: int, *, symbols: int, t: int, seed: int, start_id: int = 0) -> list[BookTicker]:
    """``n`` tickers in shuffled receipt order (unique recv_ts and update ids), every NULL pattern of
    exchange_ts/update_id among them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pattern = rng.randrange(4)
        price = 100.0 + rng.randrange(1000) / 8
        out.append(BookTicker(
            "binance_spot", f"S{i % symbols}", price, 1.25, price + 0.5, 2.5, t + i * 7,
            exchange_ts=None if pattern & 1 else t + i * 7 - 3, update_id=None if pattern & 2 else start_id + i,
        ))
    rng.shuffle(out)
    return out


def _newest(rows: list[BookTicker]) -> dict[str, tuple]:
    best: dict[str, BookTicker] = {}
    for r in rows:
        if r.symbol not in best or best[r.symbol].recv_ts <= r.recv_ts:
            best[r.symbol] = r
    return {s: (r.recv_ts, r.exchange_ts, r.bid_price, r.ask_qty, r.update_id) for s, r in best.items()}


async def _stored_latest(db: DatabaseManager) -> dict[str, tuple]:
    return {r.symbol: (r.recv_ts, r.exchange_ts, r.bid_price, r.ask_qty, r.update_id)
            for r in await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)}


async def _counts(conn: Any) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT count(*), count(DISTINCT (recv_ts, symbol_id)) FROM book_tickers")
    return row[0], row[1]


def test_copy_columns_packs_what_the_per_row_layouts_pack():
    t = now_us()
    rows = [(7, t, t - 3, 1.5, 2.0, 1.75, 3.0, 11), (8, t + 1, None, 0.1, 1e-9, 0.2, 5e8, 12),
            (9, t + 2, t - 1, 2.0, 1.0, 3.0, 1.0, None), (2**31 - 1, t + 3, None, 1.0, 1.0, 1.0, 1.0, -(2**63))]
    expected = HEADER
    for sid, recv, ex, bp, bq, ap, aq, uid in rows:
        pack = LAYOUTS[(ex is not None, uid is not None)].row.pack
        head = (8, 4, sid, 8, recv - 946_684_800_000_000)
        ex_part = (8, ex - 946_684_800_000_000) if ex is not None else (-1,)
        uid_part = (8, uid) if uid is not None else (-1,)
        expected += pack(*head, *ex_part, 8, bp, 8, bq, 8, ap, 8, aq, *uid_part)
    expected += TRAILER
    assert copy_columns("ittddddq", [list(c) for c in zip(*rows)]) == expected


async def test_out_of_order_rows_with_nulls_over_several_batches_per_commit(dsn, tmp_path):
    t = now_us()
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=7)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sent: list[BookTicker] = []
        for seed in range(3):
            rows = _rows(100, symbols=13, t=t + seed * 1_000, seed=seed, start_id=seed * 1_000)
            sent += rows
            assert await db.insert_book_ticker_snapshots(rows) == len(rows)
            await db.flush()
            assert await _stored_latest(db) == _newest(sent)
        stats = db.writer_stats("book_tickers")
        # Several batches went in one commit (the group's latest rows merged across batches out of order).
        assert stats["batches_committed"] > stats["commits"]
        assert await _counts(sql(db)) == (300, 300)
        nulls = await sql(db).fetchrow(
            "SELECT count(*) FILTER (WHERE exchange_ts IS NULL), count(*) FILTER (WHERE update_id IS NULL)"
            " FROM book_tickers_latest")
        assert nulls[0] > 0 and nulls[1] > 0


async def test_funding_rate_latest_with_null_fields_out_of_order(dsn, tmp_path):
    t = now_us()
    rng = random.Random(5)
    rates = [FundingRate("binance_usdm", f"P{i % 5}", i / 1e5, t + i * 3,
                         exchange_ts=None if i % 2 else t + i * 3 - 1,
                         next_funding_ts=None if i % 3 == 0 else t + 3_600_000_000,
                         mark_price=None if i % 4 == 0 else 100.0 + i, index_price=None if i % 5 < 2 else 99.0 + i)
             for i in range(60)]
    rng.shuffle(rates)
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=9)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        assert await db.insert_funding_rates(rates) == 60
        await db.flush()
        got = {r.symbol: (r.recv_ts, r.exchange_ts, r.rate, r.next_funding_ts, r.mark_price, r.index_price)
               for r in await db.get_latest_funding_rates(ExchangeName.BINANCE_USDM)}
    best: dict[str, FundingRate] = {}
    for r in rates:
        if r.symbol not in best or best[r.symbol].recv_ts <= r.recv_ts:
            best[r.symbol] = r
    assert got == {s: (r.recv_ts, r.exchange_ts, r.rate, r.next_funding_ts, r.mark_price, r.index_price)
                   for s, r in best.items()}


async def test_spooled_batches_replay_their_latest_rows(dsn, tmp_path):
    t = now_us()
    cfg = settings(tmp_path, batch_max_rows=10)
    first = _rows(40, symbols=6, t=t, seed=1)
    held = _rows(120, symbols=9, t=t + 10_000, seed=2, start_id=1_000)
    async with DatabaseManager(dsn, settings=cfg) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(first)
        await db.flush()
        # The latest table locked: the next commits wait inside their latest statement, and close() spools them.
        admin = await asyncpg.connect(dsn)
        try:
            tx = admin.transaction()
            await tx.start()
            await admin.execute("LOCK TABLE book_tickers_latest IN ACCESS EXCLUSIVE MODE")
            await db.insert_book_ticker_snapshots(held)
            await db.close(timeout=0.5)
            await tx.rollback()
        finally:
            await admin.close()
    assert list((tmp_path / "spool" / "book_tickers").glob("*.spool"))
    async with DatabaseManager(dsn, settings=cfg) as db:
        await db.flush(timeout=60)
        assert db.writer_stats("book_tickers")["batches_replayed"] > 1
        assert not list((tmp_path / "spool" / "book_tickers").glob("*.spool"))
        assert await _stored_latest(db) == _newest(first + held)
        assert await _counts(sql(db)) == (160, 160)


async def test_backend_terminated_inside_the_latest_statement_is_retried_once(dsn, tmp_path):
    t = now_us()
    first = _rows(30, symbols=5, t=t, seed=3)
    second = _rows(50, symbols=8, t=t + 5_000, seed=4, start_id=1_000)
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(first)
        await db.flush()
        locker, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE book_tickers_latest IN ACCESS EXCLUSIVE MODE")
            await db.insert_book_ticker_snapshots(second)
            flushed = asyncio.create_task(db.flush(timeout=60))
            # Both COPYs are done and the statement waits on the lock: terminate that backend. (Polled outside any
            # transaction: inside one, pg_stat_activity is a snapshot taken at its first read.)
            terminated = None
            while not terminated:
                terminated = await admin.fetchval(
                    "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> $1"
                    " AND datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%_latest_in%'",
                    locker.get_server_pid())
                await asyncio.sleep(0.01)
            await tx.rollback()
            await flushed
        finally:
            await locker.close()
            await admin.close()
        assert db.writer_stats("book_tickers")["retries"] >= 1
        assert await _stored_latest(db) == _newest(first + second)
        assert await _counts(sql(db)) == (80, 80)


def _one_connection(tmp_path) -> Settings:
    base = settings(tmp_path)
    db = DatabaseSettings(data_dir=str(tmp_path / "pg"), connect_timeout=20.0, pool_min_size=1, pool_max_size=1)
    return Settings(database=db, writer=base.writer, cache=base.cache, storage=base.storage)


async def test_new_backends_and_dropped_staging_tables(dsn, tmp_path):
    t = now_us()
    sent: list[BookTicker] = []
    async with DatabaseManager(dsn, settings=_one_connection(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)

        async def commit(seed: int) -> None:
            rows = _rows(40, symbols=7, t=t + seed * 1_000, seed=seed, start_id=seed * 1_000)
            sent.extend(rows)
            await db.insert_book_ticker_snapshots(rows)
            await db.flush(timeout=60)
            assert await _stored_latest(db) == _newest(sent)

        await commit(0)
        # The writer's backend forgets its temp tables (DISCARD TEMP): the next attempt fails, the one after
        # creates the table again.
        async with db.connection() as conn:
            await conn.execute("DISCARD TEMP")
        retries = db.writer_stats("book_tickers")["retries"]
        await commit(1)
        assert db.writer_stats("book_tickers")["retries"] == retries + 1
        # Every backend of the pool replaced by a new one (no staging table yet).
        admin = await asyncpg.connect(dsn)
        try:
            old = await sql(db).fetchval("SELECT pg_backend_pid()")
            await admin.execute("SELECT pg_terminate_backend($1)", old)
        finally:
            await admin.close()
        await commit(2)
        assert await sql(db).fetchval("SELECT pg_backend_pid()") != old
        assert await sql(db).fetchval(f"SELECT count(*) FROM pg_temp.{STAGE}") == 0  # emptied at COMMIT
        assert await _counts(sql(db)) == (120, 120)


async def test_two_writes_in_one_unit_of_work(dsn, tmp_path):
    t = now_us()
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(_rows(8, symbols=4, t=t, seed=6))  # registers S0..S3
        await db.flush()
        ids = {r.symbol: r.symbol_id for r in await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)}

        def bt(sym: str, price: float, ts: int) -> BookTicker:
            return BookTicker("binance_spot", sym, price, 1.0, price + 1, 1.0, ts, symbol_id=ids[sym])

        async with db.transaction() as uow:
            await uow.insert_book_ticker_snapshots([bt("S0", 10.0, t + 100), bt("S1", 11.0, t + 100)])
            # S0 older than what the first write left, S1 newer, S2 new in this unit.
            await uow.insert_book_ticker_snapshots([bt("S0", 20.0, t + 50), bt("S1", 21.0, t + 200),
                                                    bt("S2", 22.0, t + 200)])
            # The staging table holds the second write's rows only.
            assert await uow.connection.fetchval(f"SELECT count(*) FROM pg_temp.{STAGE}") == 3
        got = {r.symbol: (r.bid_price, r.recv_ts) for r in await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)}
        assert (got["S0"], got["S1"], got["S2"]) == ((10.0, t + 100), (21.0, t + 200), (22.0, t + 200))


async def test_writer_start_readies_the_pools_connections_for_commits(dsn, tmp_path):
    # Before the first row: both connections a writer commits on (two commits in flight) hold the staging table
    # and have the latest statement prepared, so the first commits pay no extra round trips for them; the first
    # commit then stores as usual. A pool of one connection starts too (one readied, no wait for a second).
    base = settings(tmp_path)
    two = DatabaseSettings(data_dir=str(tmp_path / "pg"), connect_timeout=20.0, pool_min_size=2, pool_max_size=2)
    async with DatabaseManager(dsn, settings=Settings(database=two, writer=base.writer, storage=base.storage)) as db:
        async with db.connection() as a, db.connection() as b:
            for conn in (a, b):
                assert await conn.fetchval(f"SELECT to_regclass('pg_temp.{STAGE}') IS NOT NULL")
                prepared = await conn.fetch("SELECT statement FROM pg_prepared_statements")
                assert any("book_tickers_latest" in r[0] and "ingest_batches" in r[0] for r in prepared)
                assert any("funding_rates_latest" in r[0] for r in prepared)
            assert await a.fetchval("SELECT count(*) FROM ingest_batches") == 0  # readying wrote nothing
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        rows = _rows(50, symbols=5, t=now_us(), seed=3)
        await db.insert_book_ticker_snapshots(rows)
        await db.flush(timeout=60)
        assert await _stored_latest(db) == _newest(rows)
        assert await _counts(sql(db)) == (50, 50)
    async with DatabaseManager(dsn, settings=_one_connection(tmp_path)) as db:
        async with db.connection() as conn:
            assert await conn.fetchval(f"SELECT to_regclass('pg_temp.{STAGE}') IS NOT NULL")


async def test_writer_starts_when_the_database_does_not_answer(tmp_path, caplog):
    # Readying connections is best effort: nothing listens on port 1, so no connection can be had, and the writer
    # starts anyway (its first commits would do the work), saying so at debug level without the DSN's password.
    caplog.set_level(logging.DEBUG, logger="hftdb.store.writer")
    pool = await asyncpg.create_pool("postgresql://hftdb:s3cretpw@127.0.0.1:1/hftdb", min_size=0, max_size=2)
    writer = BookTickerWriter(pool, settings=WriterSettings(spool_dir=None), storage=StorageSettings(),
                              spool_dir=None)
    try:
        await asyncio.wait_for(writer.start(), 30)
        assert writer.accepting
        assert any("not readied for commits" in r.getMessage() for r in caplog.records)
        assert "s3cretpw" not in caplog.text
    finally:
        await writer.terminate()
        await pool.close()

"""Hostile rows on every public write path: text the database cannot hold, values it refuses, exact duplicates.

A bad row is rejected alone, counted by reason, and the call returns promptly with the good rows beside it stored
exactly once. Every call is bounded by ``asyncio.wait_for``: before the fix, a NUL in a symbol made registration
fail with a server encoding error that was taken for an outage and retried forever.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Awaitable

import asyncpg
import pytest

from hftdb import Balance, BookTicker, DatabaseManager, ExchangeName, FundingRate, Symbol, ValidationError, now_us
from hftdb.db import dberrors

from helpers import settings, sql, tickers

#: Bound on a call that must return at once (generous: the machine is shared). Not a timing assertion: a hang
#: fails the test instead of stalling it until the suite's timeout.
BOUND = 20.0

BAD_TEXT = {"nul": "BAD\x00USDT", "surrogate": "BAD\ud800USDT", "control": "BAD\x07USDT", "newline": "BAD\nUSDT"}


async def _count(db: DatabaseManager, sql: str, *args: object) -> int:
    async with db.connection() as conn:
        return await conn.fetchval(sql, *args)


def _bad_tickers(t: int) -> list[BookTicker]:
    return [BookTicker("binance_spot", sym, 1.0, 1.0, 1.1, 1.0, t + i, update_id=10_000 + i)
            for i, sym in enumerate(BAD_TEXT.values())]


@pytest.mark.parametrize("size", [20, 400])  # the per-row path, and a call big enough to be offered to vector.py
async def test_bad_symbols_are_rejected_and_good_rows_stored(dsn, tmp_path, size):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        good = tickers(size, symbols=5)
        rows = good[: size // 2] + _bad_tickers(good[0].recv_ts) + good[size // 2:]
        taken = await asyncio.wait_for(db.insert_book_ticker_snapshots(rows), BOUND)
        assert taken == size
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == size
        assert await _count(db, "SELECT count(DISTINCT update_id) FROM book_tickers") == size
        assert db.writer_stats("book_tickers")["rejects"] == {"symbol_bad_char": len(BAD_TEXT)}
        assert await _count(db, "SELECT count(*) FROM symbols") == 5
        # The writer goes on: a later call (cached names, vectorized when big) is stored too.
        more = tickers(size, start_id=size, symbols=5)
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(more), BOUND) == size
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == 2 * size


async def test_bad_exchange_names_are_rejected_alone(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        good = tickers(10, symbols=2)
        t = good[0].recv_ts
        bad = [BookTicker("binance\x00spot", "BTCUSDT", 1.0, 1.0, 1.1, 1.0, t),
               BookTicker("binance\udfffspot", "BTCUSDT", 1.0, 1.0, 1.1, 1.0, t)]
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(good + bad), BOUND) == 10
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == 10
        assert db.writer_stats("book_tickers")["rejects"] == {"exchange_bad_char": 2}
        with pytest.raises(ValidationError):
            await db.insert_exchange("bad\x00name")


async def test_bad_funding_symbols_are_rejected(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        t = now_us()
        good = [FundingRate("binance_usdm", f"S{i % 3}USDT", 0.0001, t + i) for i in range(9)]
        bad = [FundingRate("binance_usdm", sym, 0.0001, t) for sym in BAD_TEXT.values()]
        assert await asyncio.wait_for(db.insert_funding_rates(good[:4] + bad + good[4:]), BOUND) == 9
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM funding_rates") == 9
        assert db.writer_stats("funding_rates")["rejects"] == {"symbol_bad_char": len(BAD_TEXT)}


async def test_bad_balance_text_is_rejected(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        good = [Balance(exchange="binance_spot", account="main", asset=f"A{i}", free=Decimal(i), locked=Decimal(0),
                        recv_ts=t + i) for i in range(6)]
        bad = [Balance(exchange="binance_spot", account="main", asset=v, free=Decimal(1), locked=Decimal(0),
                       recv_ts=t) for v in ("U\x00SDT", "U\ud800SDT", "U\x1bSDT")]
        bad += [Balance(exchange="binance_spot", account=v, asset="USDT", free=Decimal(1), locked=Decimal(0),
                        recv_ts=t) for v in ("ma\x00in", "ma\udc80in")]
        bad += [Balance(exchange="binance\x00spot", account="main", asset="USDT", free=Decimal(1),
                        locked=Decimal(0), recv_ts=t)]
        taken = await asyncio.wait_for(db.insert_balance_snapshots(good[:3] + bad + good[3:]), BOUND)
        assert taken == 6
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM balances") == 6
        assert await _count(db, "SELECT count(*) FROM balances_latest") == 6
        assert db.writer_stats("balances")["rejects"] == {
            "asset_bad_char": 3, "account_bad_char": 2, "exchange_bad_char": 1}


async def test_units_of_work_refuse_bad_text_with_a_validation_error(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        for bad in BAD_TEXT.values():
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await asyncio.wait_for(uow.insert_book_ticker_snapshots(
                        [BookTicker("binance_spot", bad, 1.0, 1.0, 1.1, 1.0, t)]), BOUND)
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol=bad))
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await uow.insert_balance_snapshots([Balance(
                        exchange="binance_spot", account=bad, asset="USDT", free=Decimal(1), locked=Decimal(0),
                        recv_ts=t)])
        # A clean unit still commits after all that.
        async with db.transaction() as uow:
            sym = await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol="GOODUSDT"))
            assert await uow.insert_book_ticker_snapshots(
                [BookTicker("binance_spot", "GOODUSDT", 1.0, 1.0, 1.1, 1.0, t + 1, symbol_id=sym.id)]) == 1
        assert await _count(db, "SELECT count(*) FROM book_tickers") == 1
        assert await _count(db, "SELECT count(*) FROM symbols") == 1


async def test_columns_path_beside_bad_rows(dsn, tmp_path):
    np = pytest.importorskip("numpy")
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()
        await asyncio.wait_for(db.insert_book_ticker_snapshots(_bad_tickers(t)), BOUND)
        n = 300
        ids = np.full(n, sym.id)
        ids[7] = 2**31 + 5  # no symbol has it (outside int4): rejected, not a failed lookup
        taken = await asyncio.wait_for(db.insert_book_ticker_columns(
            ids, np.full(n, 1.0), np.full(n, 2.0), np.full(n, 1.5), np.full(n, 3.0), np.arange(n) + t,
            update_id=np.arange(n)), BOUND)
        assert taken == n - 1
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == n - 1
        assert db.writer_stats("book_tickers")["rejects"] == {"symbol_bad_char": len(BAD_TEXT),
                                                            "unknown_symbol_id": 1}


def test_classify_by_sqlstate():
    assert dberrors.classify(asyncpg.exceptions.AdminShutdownError("x")) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.CannotConnectNowError("x")) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.ConnectionFailureError("x")) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.TooManyConnectionsError("x")) == dberrors.WAIT
    assert dberrors.classify(ConnectionResetError()) == dberrors.WAIT
    assert dberrors.classify(asyncio.TimeoutError()) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.CharacterNotInRepertoireError("x")) == dberrors.DATA
    assert dberrors.classify(asyncpg.exceptions.UntranslatableCharacterError("x")) == dberrors.DATA
    assert dberrors.classify(asyncpg.exceptions.NumericValueOutOfRangeError("x")) == dberrors.DATA
    assert dberrors.classify(asyncpg.exceptions.CheckViolationError("violates check constraint")) == dberrors.DATA
    assert dberrors.classify(asyncpg.exceptions.CheckViolationError(
        'no partition of relation "book_tickers" found for row')) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.InsufficientPrivilegeError("x")) == dberrors.OTHER
    assert dberrors.classify(ValueError("x")) == dberrors.OTHER


async def _latest_matches_history(db: DatabaseManager) -> None:
    """Each symbol's latest row is its newest stored row (no refused row got into the latest table)."""
    async with db.connection() as conn:
        wrong = await conn.fetchval("""
            SELECT count(*) FROM book_tickers_latest l
            WHERE (l.recv_ts, l.bid_price, l.update_id) IS DISTINCT FROM (
                SELECT (b.recv_ts, b.bid_price, b.update_id) FROM book_tickers b WHERE b.symbol_id = l.symbol_id
                ORDER BY b.recv_ts DESC, b.update_id DESC LIMIT 1)""")
    assert wrong == 0


@pytest.mark.parametrize("size", [50, 3000])
async def test_rows_the_server_refuses_at_commit_are_rejected_alone(dsn, tmp_path, size):
    """The client lets these rows through; a CHECK constraint added to the test database refuses them at COPY
    (history) or at the latest upsert (latest table). Only they are lost, counted; the writer goes on."""
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        async with db.connection() as conn:
            await conn.execute("ALTER TABLE book_tickers ADD CONSTRAINT no_13 CHECK (bid_price <> 13.0)")
            await conn.execute("ALTER TABLE book_tickers_latest ADD CONSTRAINT no_77 CHECK (ask_qty <> 77.0)")
        rows = tickers(size, symbols=7)
        refused = {3, size // 2, size - 1}
        for i in refused:
            rows[i].bid_price = 13.0
            rows[i].ask_price = 14.0
        # The newest row of one symbol carries ask_qty 77: the history takes it, the latest table refuses it.
        latest_refused = size - 2
        rows[latest_refused].ask_qty = 77.0
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(rows), BOUND) == size
        await asyncio.wait_for(db.flush(), BOUND * 3)
        stored = {r["update_id"] for r in await sql(db).fetch("SELECT update_id FROM book_tickers")}
        assert stored == {r.update_id for i, r in enumerate(rows) if i not in refused | {latest_refused}}
        assert await _count(db, "SELECT count(*) FROM book_tickers") == len(stored)
        assert db.writer_stats("book_tickers")["rejects"] == {"db_23514": len(refused) + 1}
        assert db.writer_stats("book_tickers")["rows_committed"] == len(stored)
        await _latest_matches_history(db)
        # The writer keeps committing, and the batches' ledger rows cover the stored rows exactly.
        more = tickers(size, start_id=size, symbols=7)
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(more), BOUND) == size
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == len(stored) + size
        assert await _count(db, "SELECT sum(row_count) FROM ingest_batches WHERE table_name = 'book_tickers'") \
            == len(stored) + size
        await _latest_matches_history(db)


async def test_refused_balances_and_funding_rates_are_rejected_alone(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        async with db.connection() as conn:
            await conn.execute("ALTER TABLE balances ADD CONSTRAINT small CHECK (free < 1000000)")
            await conn.execute("ALTER TABLE funding_rates ADD CONSTRAINT sane CHECK (rate < 0.5)")
        t = now_us()
        balances = [Balance(exchange="binance_usdm", account="main", asset=f"A{i % 4}",
                            free=Decimal("1e7") if i == 5 else Decimal(i) / 3, locked=Decimal("0.1"), recv_ts=t + i)
                    for i in range(40)]
        rates = [FundingRate("binance_usdm", f"S{i % 3}USDT", 0.9 if i in (2, 30) else 0.0001 * i, t + i,
                             next_funding_ts=t + 3_600_000_000) for i in range(40)]
        assert await asyncio.wait_for(db.insert_balance_snapshots(balances), BOUND) == 40
        assert await asyncio.wait_for(db.insert_funding_rates(rates), BOUND) == 40
        await asyncio.wait_for(db.flush(), BOUND * 3)
        assert await _count(db, "SELECT count(*) FROM balances") == 39
        assert await _count(db, "SELECT count(*) FROM balances WHERE free >= 1000000") == 0
        assert await _count(db, "SELECT count(*) FROM funding_rates") == 38
        assert db.writer_stats("balances")["rejects"] == {"db_23514": 1}
        assert db.writer_stats("funding_rates")["rejects"] == {"db_23514": 2}
        # Latest rows are the newest stored ones, exact numerics intact.
        latest = {(b.asset): b for b in await db.get_latest_balances(ExchangeName.BINANCE_USDM)}
        assert latest["A3"].free == Decimal(39) / 3 and latest["A3"].recv_ts == t + 39
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM funding_rates_latest") == 3


async def test_taking_a_batch_apart_is_exactly_once_across_a_lost_connection(dsn, tmp_path):
    """The connection dies (the backend is terminated) after some parts of a refused batch committed: the next
    attempt finds those parts in the ledger by their derived ids and sends only the rest."""
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        async with db.connection() as conn:
            await conn.execute("""
                ALTER TABLE book_tickers ADD CONSTRAINT no_13 CHECK (bid_price <> 13.0);
                CREATE SEQUENCE ledger_writes;
                CREATE FUNCTION die_on_second_part() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('ledger_writes') = 2 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                    RETURN NULL;
                END $$;
                CREATE TRIGGER die AFTER INSERT ON ingest_batches
                    FOR EACH STATEMENT EXECUTE FUNCTION die_on_second_part();""")
        rows = tickers(1000, symbols=7)
        refused = {5, 700}
        for i in refused:
            rows[i].bid_price, rows[i].ask_price = 13.0, 14.0
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(rows), BOUND) == 1000
        await asyncio.wait_for(db.flush(), BOUND * 3)
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT last_value FROM ledger_writes") > 2  # the kill did happen
            stored = [r[0] for r in await conn.fetch("SELECT update_id FROM book_tickers")]
            ledger_rows = await conn.fetchval("SELECT sum(row_count) FROM ingest_batches")
        assert sorted(stored) == [r.update_id for i, r in enumerate(rows) if i not in refused]
        assert ledger_rows == 998
        assert db.writer_stats("book_tickers")["rejects"] == {"db_23514": 2}
        assert db.writer_stats("book_tickers")["retries"] >= 2  # the refusal, and the lost connection
        await _latest_matches_history(db)


# -- exact duplicates --------------------------------------------------------------------------------------------


def _stored_count(db: DatabaseManager, table: str = "book_tickers") -> Awaitable[int]:
    return _count(db, f"SELECT count(*) FROM {table}")


@pytest.mark.parametrize("size,by_id", [(20, False), (20, True), (400, False), (400, True)])
async def test_a_call_sent_twice_is_stored_once(dsn, tmp_path, size, by_id):
    """Per-row path (20 rows) and vectorized path (400 rows; names from the cache, or ids), the same call twice
    within one batch, and duplicates inside one call: each row is stored once, the rest counted."""
    async with DatabaseManager(dsn, settings=settings(tmp_path, linger_ms=60_000.0, batch_max_age_ms=60_000.0)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        rows = tickers(size, symbols=7)
        await db.insert_book_ticker_snapshots(rows[:7])  # registers the names (and caches them)
        await db.flush()
        if by_id:
            for r in rows:
                r.symbol_id = db.resolve_symbol_id(r.exchange, r.symbol)
        rest = rows[7:]
        assert await db.insert_book_ticker_snapshots(rest) == len(rest)
        assert await db.insert_book_ticker_snapshots(list(rest)) == 0
        # Inside one call: every row twice, interleaved.
        again = tickers(size, start_id=size, symbols=7, base_ts=rows[-1].recv_ts + 1)
        if by_id:
            for r in again:
                r.symbol_id = db.resolve_symbol_id(r.exchange, r.symbol)
        doubled = [r for pair in zip(again, again) for r in pair]
        assert await db.insert_book_ticker_snapshots(doubled) == size
        await db.flush()
        assert await _stored_count(db) == 2 * size
        assert await _count(db, "SELECT count(DISTINCT update_id) FROM book_tickers") == 2 * size
        assert db.writer_stats("book_tickers")["rows_duplicate"] == len(rest) + size
        assert db.writer_stats("book_tickers")["rejects"] == {}
        await _latest_matches_history(db)


async def test_rows_at_one_receipt_time_are_not_duplicates_unless_equal(dsn, tmp_path):
    """A feed's socket read stamps its rows with one receipt time: rows that differ in any field are all kept."""
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        for size in (10, 300):
            rows = [BookTicker("binance_spot", f"S{i % 3}", 1.0 + i, 1.0, 2.0 + i, 1.0, t, update_id=None)
                    for i in range(size)]
            rows += [BookTicker("binance_spot", "S0", 1.0, 1.0, 2.0, 1.0, t, update_id=u) for u in range(size, 0, -1)]
            assert await db.insert_book_ticker_snapshots(rows) == 2 * size
            t += 1_000_000
        await db.flush()
        assert await _stored_count(db) == 620
        assert db.writer_stats("book_tickers")["rows_duplicate"] == 0


async def test_duplicate_columns_and_other_tables(dsn, tmp_path):
    np = pytest.importorskip("numpy")
    async with DatabaseManager(dsn, settings=settings(tmp_path, linger_ms=60_000.0, batch_max_age_ms=60_000.0)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_USDM)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()
        n = 500
        cols = (np.full(n, sym.id), np.full(n, 1.0), np.full(n, 2.0), np.full(n, 1.5), np.full(n, 3.0),
                np.arange(n) + t)
        assert await db.insert_book_ticker_columns(*cols, update_id=np.arange(n)) == n
        assert await db.insert_book_ticker_columns(*cols, update_id=np.arange(n)) == 0
        rates = [FundingRate("binance_usdm", "BTCUSDT", 0.0001, t + i, next_funding_ts=t + 10**9) for i in range(5)]
        assert await db.insert_funding_rates(rates) == 5
        assert await db.insert_funding_rates(rates + rates) == 0
        bal = [Balance(exchange="binance_usdm", account="main", asset=f"A{i}", free=Decimal("1.5"),
                       locked=Decimal(0), recv_ts=t) for i in range(4)]
        assert await db.insert_balance_snapshots(bal) == 4
        assert await db.insert_balance_snapshots(bal) == 0
        changed = [Balance(exchange="binance_usdm", account="main", asset="A0", free=Decimal("2"),
                           locked=Decimal(0), recv_ts=t)]
        assert await db.insert_balance_snapshots(changed) == 1  # same time, another amount: not a duplicate
        await db.flush()
        assert await _stored_count(db) == n
        assert await _stored_count(db, "funding_rates") == 5
        assert await _stored_count(db, "balances") == 5
        assert db.writer_stats("book_tickers")["rows_duplicate"] == n
        assert db.writer_stats("funding_rates")["rows_duplicate"] == 10
        assert db.writer_stats("balances")["rows_duplicate"] == 4


async def test_names_the_server_refuses_reject_only_their_rows(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        async with db.connection() as conn:
            await conn.execute("ALTER TABLE symbols ADD CONSTRAINT no_evil CHECK (symbol <> 'EVILUSDT')")
        good = tickers(30, symbols=3)
        t = good[-1].recv_ts
        evil = [BookTicker("binance_spot", "EVILUSDT", 1.0, 1.0, 1.1, 1.0, t + i) for i in range(2)]
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(evil + good), BOUND) == 30
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _stored_count(db) == 30
        assert db.writer_stats("book_tickers")["rejects"] == {"symbol_rejected": 2}


async def test_an_error_retrying_cannot_fix_is_retried_a_few_times_then_rejected(dsn, tmp_path):
    """A trigger raises a plain exception (P0001: neither an outage nor a data error) for one row: the commit is
    tried a bounded number of times, then that row alone is rejected and the writer goes on."""
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        async with db.connection() as conn:
            await conn.execute("""
                CREATE FUNCTION no_13() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.bid_price = 13.0 THEN RAISE EXCEPTION 'thirteen'; END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER no_13 BEFORE INSERT ON book_tickers FOR EACH ROW EXECUTE FUNCTION no_13();""")
        rows = tickers(200, symbols=5)
        rows[77].bid_price, rows[77].ask_price = 13.0, 14.0
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(rows), BOUND) == 200
        await asyncio.wait_for(db.flush(), BOUND * 3)
        assert await _stored_count(db) == 199
        assert db.writer_stats("book_tickers")["rejects"] == {"db_P0001": 1}
        assert db.writer_stats("book_tickers")["retries"] == dberrors.MAX_OTHER_ATTEMPTS


async def test_a_unit_of_work_gets_a_validation_error_for_a_refused_row(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        async with db.connection() as conn:
            await conn.execute("ALTER TABLE book_tickers ADD CONSTRAINT no_13 CHECK (bid_price <> 13.0)")
        rows = tickers(10, symbols=1)
        for r in rows:
            r.symbol_id = sym.id
        rows[4].bid_price, rows[4].ask_price = 13.0, 14.0
        with pytest.raises(ValidationError, match="23514"):
            async with db.transaction() as uow:
                await asyncio.wait_for(uow.insert_book_ticker_snapshots(rows), BOUND)
        assert await _stored_count(db) == 0

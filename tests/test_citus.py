"""hftdb on a real Citus cluster (a coordinator and two workers the tests start, see tests/citus_cluster.py).

Skipped, with the reason, where no PostgreSQL with the citus extension is installed (CI): the default suite runs
on the embedded server, which has no Citus.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import asyncpg
import msgspec
import orjson
import pytest

from hftdb import Balance, DatabaseManager, ExchangeName, FundingRate, now_us
from hftdb.db import citus, partitions
from hftdb.db import dberrors
from hftdb.db.dberrors import MAX_OTHER_ATTEMPTS
from hftdb.db.schema import migrate
from hftdb.config import ReadSettings
from hftdb.errors import DatabaseUnavailableError

from citus_cluster import CitusCluster, find_citus_bin
from helpers import settings, tickers
from test_cli import cli, free_port, one_error_line
from test_notify import _consume_until, _next

CITUS_BIN, WHY_NOT = find_citus_bin()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CITUS_BIN is None, reason=WHY_NOT)]

WAIT = 60.0


@pytest.fixture(scope="session")
async def citus_cluster():
    cluster = CitusCluster(CITUS_BIN)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def citus_dsn(citus_cluster):
    """The coordinator's DSN of a fresh database with the citus extension and two workers."""
    dsn = await citus_cluster.new_database(workers=2)
    try:
        yield dsn
    finally:
        await citus_cluster.drop_database(dsn.rsplit("/", 1)[1])


async def _value(db: DatabaseManager, sql: str, *args: object) -> object:
    async with db.connection() as conn:
        return await conn.fetchval(sql, *args)


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=30)


async def _until(condition, what: str, *, timeout: float = WAIT) -> None:
    """Wait until ``condition()`` (awaitable of a bool) holds, polling; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


async def test_migrate_and_distribute_lays_out_the_tables(citus_dsn):
    conn = await _connect(citus_dsn)
    try:
        await migrate(conn)
        assert await citus.layout_problems(conn) is None  # nothing distributed yet
        report = await citus.distribute(conn)
        assert report.reference == ["exchanges", "symbols"]
        assert sorted(report.distributed) == sorted(citus.LAYOUT)
        assert await citus.layout_problems(conn) == []
        again = await citus.distribute(conn)
        assert not again.changed
        kinds = {r["t"]: r["k"] for r in await conn.fetch(
            "SELECT table_name::text AS t, citus_table_type AS k FROM citus_tables")}
        assert "ingest_batches" not in kinds
        assert kinds["exchanges"] == kinds["symbols"] == "reference"
        columns = {r["t"]: r["c"] for r in await conn.fetch(
            "SELECT table_name::text AS t, distribution_column AS c FROM citus_tables WHERE citus_table_type = "
            "'distributed' AND table_name::text NOT LIKE '%\\_p2%'")}
        assert columns == {"book_tickers": "symbol_id", "book_tickers_latest": "symbol_id",
                           "funding_rates": "symbol_id", "funding_rates_latest": "symbol_id",
                           "balances": "exchange_id", "balances_latest": "exchange_id"}, columns
        history = await conn.fetchval("SELECT colocation_id FROM citus_tables WHERE table_name = 'book_tickers'::regclass")
        latest = await conn.fetchval(
            "SELECT colocation_id FROM citus_tables WHERE table_name = 'book_tickers_latest'::regclass")
        assert history != latest
    finally:
        await conn.close()


def _settings(tmp_path, **writer):
    s = settings(tmp_path, **writer)
    return msgspec.structs.replace(s, storage=msgspec.structs.replace(s.storage, distribute=True))


async def _worker_counts(cluster: CitusCluster, dsn: str, table: str) -> list[int]:
    """Rows of ``table`` held by each worker of this database (counted on the workers themselves)."""
    conn = await _connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT nodeport, sum(result::bigint) AS n FROM run_command_on_shards($1, 'SELECT count(*) FROM %s') r"
            " JOIN citus_shards s USING (shardid) GROUP BY nodeport", table)
        ports = {r[0] for r in await conn.fetch("SELECT nodeport FROM pg_dist_node WHERE groupid <> 0")}
    finally:
        await conn.close()
    by_port = {r["nodeport"]: int(r["n"]) for r in rows}
    return [by_port.get(w.port, 0) for w in cluster.workers if w.port in ports]


async def test_ingest_reads_and_latest_on_the_cluster(citus_cluster, citus_dsn, tmp_path):
    async with DatabaseManager(citus_dsn, settings=_settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        rows = tickers(5_000, symbols=50)
        await db.insert_book_ticker_snapshots(rows)
        await db.flush(timeout=WAIT)
        more = tickers(5_000, start_id=5_000, symbols=50, base_ts=rows[-1].recv_ts + 1)
        await db.insert_book_ticker_snapshots(more)
        await db.flush(timeout=WAIT)
        stats = db.writer_stats("book_tickers")
        assert stats["rows_committed"] == 10_000
        # [storage] distribute laid the tables out at start: the public call finds nothing left to do.
        assert not (await db.distribute()).changed
        latest = await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)
        assert len(latest) == 50
        newest = {}
        for r in rows + more:
            newest[r.symbol] = r.update_id
        assert {r.symbol: r.update_id for r in latest} == newest
        history = await db.get_book_ticker_history(ExchangeName.BINANCE_SPOT, "SYM3USDT", start=rows[0].recv_ts,
                                                  end=more[-1].recv_ts + 1)
        assert [r.update_id for r in history] == [r.update_id for r in rows + more if r.symbol == "SYM3USDT"]
    conn = await _connect(citus_dsn)
    try:
        assert await conn.fetchval("SELECT count(DISTINCT update_id) FROM book_tickers") == 10_000
        assert await conn.fetchval("SELECT count(*) FROM book_tickers") == 10_000
        assert await citus.layout_problems(conn) == []
    finally:
        await conn.close()
    on_workers = await _worker_counts(citus_cluster, citus_dsn, "book_tickers")
    assert sum(on_workers) == 10_000 and all(n > 0 for n in on_workers), on_workers


async def test_cli_distribute_validate_and_migrations_keep_the_layout(citus_dsn, tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    e.update(HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"), HFTDB_METRICS_PORT=str(free_port()))
    e["HFTDB_DSN"] = citus_dsn
    code, out, err = await cli("migrate", "up", env=e, cwd=tmp_path)
    assert code == 0, err
    code, out, err = await cli("validate", env=e, cwd=tmp_path)
    assert code == 0 and "no hftdb table is distributed" in out, out + err
    code, out, err = await cli("distribute", env=e, cwd=tmp_path)
    assert code == 0 and "reference    exchanges, symbols" in out and "2 worker(s)" in out, out + err
    assert "ingest_batches (the exactly-once ledger) stays local on the coordinator" in out, out
    code, out, err = await cli("distribute", env=e, cwd=tmp_path)
    assert code == 0 and out.startswith("already distributed"), out + err
    code, out, err = await cli("validate", env=e, cwd=tmp_path)
    assert code == 0 and out.startswith("valid:"), out + err
    # 0004 rebuilds the latest tables: down and up again leaves them local unless the run distributes them again.
    code, out, err = await cli("migrate", "down", "--to", "3", "--yes", env=e, cwd=tmp_path)
    assert code == 0, err
    code, out, err = await cli("migrate", "up", env=e, cwd=tmp_path)
    assert code == 0, err
    code, out, err = await cli("validate", env=e, cwd=tmp_path)
    assert code == 0 and out.startswith("valid:"), out + err
    # A latest table colocated with its history (what made every commit fail) is a problem validate names.
    conn = await _connect(citus_dsn)
    try:
        await conn.execute("SELECT update_distributed_table_colocation('book_tickers_latest', "
                           "colocate_with => 'book_tickers')")
    finally:
        await conn.close()
    code, out, err = await cli("validate", env=e, cwd=tmp_path)
    assert code == 1 and "PROBLEM  Citus: the *_latest tables are colocated with their history tables" in out, out
    code, out, err = await cli("distribute", env=e, cwd=tmp_path)
    assert code == 0 and "regrouped" in out, out + err
    code, out, err = await cli("validate", env=e, cwd=tmp_path)
    assert code == 0, out + err



async def test_funding_balances_notifications_retention_and_stats(citus_cluster, citus_dsn, tmp_path):
    async with DatabaseManager(citus_dsn, settings=_settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        await db.insert_exchange(ExchangeName.OKX_SPOT)
        t = now_us()
        old = t - 40 * 86_400_000_000  # a backfill 40 days back: its partition is made on demand, distributed
        async with db.notifications("book_tickers", exchange="binance_usdm") as feed:
            await db.insert_book_ticker_snapshots(tickers(100, exchange="binance_usdm", symbols=10, base_ts=old))
            await db.insert_book_ticker_snapshots(tickers(2_000, start_id=100, exchange="binance_usdm", symbols=10))
            await db.flush(timeout=WAIT)
            notes = [await asyncio.wait_for(feed.__anext__(), WAIT)]
            while sum(n.rows for n in notes) < 2_100:
                notes.append(await asyncio.wait_for(feed.__anext__(), WAIT))
            assert sum(n.rows for n in notes) == 2_100 and not any(n.catch_up for n in notes)
        await db.insert_funding_rates([FundingRate("binance_usdm", f"SYM{i % 10}USDT", 0.0001 * i, t + i,
                                                   exchange_ts=t + i, mark_price=100.0 + i) for i in range(50)])
        await db.insert_balance_snapshots([Balance(exchange="okx_spot", asset=a, free=Decimal(f"{i}.5"),
                                                   locked=Decimal("0"), recv_ts=t + i)
                                           for i, a in enumerate(("BTC", "ETH", "USDT", "BTC"))])
        await db.flush(timeout=WAIT)
        funding = {f.symbol: f.rate for f in await db.get_latest_funding_rates(ExchangeName.BINANCE_USDM)}
        assert funding == {f"SYM{i % 10}USDT": 0.0001 * i for i in range(40, 50)}
        balances = {b.asset: b.free for b in await db.get_latest_balances(ExchangeName.OKX_SPOT)}
        assert balances == {"BTC": Decimal("3.5"), "ETH": Decimal("1.5"), "USDT": Decimal("2.5")}

        # Statistics come from the shards: the coordinator's partitions are empty shells.
        await _value(db, "ANALYZE book_tickers")
        stats = (await db.get_database_stats())["tables"]["book_tickers"]
        assert stats["estimated_rows"] == 2_100 and stats["bytes"] > 100_000, stats
        async with db.connection() as conn:
            parts = await partitions.list_partitions(conn, "book_tickers")
        assert sum(p.rows for p in parts) == 2_100 and min(p.size_bytes for p in parts) > 16_384, parts

        dropped = await db.cleanup_old_data(30)
        assert dropped["book_tickers"] == [parts[0].name]
        assert await _value(db, "SELECT count(*) FROM book_tickers") == 2_000
        assert await _value(db, "SELECT to_regclass($1)", parts[0].name) is None
        assert await _value(db, "SELECT count(*) FROM pg_description WHERE description LIKE 'hftdb:%'") == 0
        # The writer forgot the dropped partition: another old row recreates (and distributes) it.
        await db.insert_book_ticker_snapshots(tickers(1, start_id=9_999, exchange="binance_usdm", base_ts=old))
        await db.flush(timeout=WAIT)
        assert await _value(db, "SELECT count(*) FROM book_tickers") == 2_001
        report = await db.run_maintenance()
        assert report.dropped == [parts[0].name]
        code = await _value(db, "SELECT count(*) FROM citus_tables WHERE table_name::text LIKE 'book_tickers%'")
        assert code == len(parts) + 1  # the parent, its partitions: all distributed, the dropped one gone


async def _produce(db: DatabaseManager, stop: asyncio.Event, *, chunk: int = 200) -> int:
    sent = 0
    while not stop.is_set():
        sent += await db.insert_book_ticker_snapshots(tickers(chunk, start_id=sent, symbols=40))
        await asyncio.sleep(0.002)
    return sent


async def _committed_more(db: DatabaseManager, n: int) -> None:
    target = db.writer_stats("book_tickers")["rows_committed"] + n
    await _until(lambda: _true(db.writer_stats("book_tickers")["rows_committed"] >= target), f"{n} more rows commit")


async def _true(value: bool) -> bool:
    return value


async def _counts(dsn: str) -> tuple[int, int]:
    conn = await _connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*), count(DISTINCT update_id) FROM book_tickers")
        return row[0], row[1]
    finally:
        await conn.close()


async def _exactly_once(dsn: str, sent: int) -> None:
    # A worker that was down when the coordinator committed gets its prepared transaction committed by Citus's
    # recovery (citus.recover_2pc_interval, 1 s here): wait for it, then every row is there once.
    async def settled() -> bool:
        return (await _counts(dsn))[0] >= sent

    await _until(settled, f"all {sent} rows are visible")
    assert await _counts(dsn) == (sent, sent)


@pytest.mark.parametrize("node", ["worker", "coordinator"])
async def test_exactly_once_when_a_node_restarts_during_ingest(citus_cluster, citus_dsn, tmp_path, node):
    async with DatabaseManager(citus_dsn, settings=_settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        stop = asyncio.Event()
        producer = asyncio.create_task(_produce(db, stop))
        try:
            for mode in ("immediate", "fast"):
                await _committed_more(db, 2_000)
                target = citus_cluster.coordinator if node == "coordinator" else citus_cluster.workers[0]
                await target.restart(mode)
            await _committed_more(db, 2_000)
        finally:
            stop.set()
            sent = await producer
        await db.flush(timeout=WAIT)
        stats = db.writer_stats("book_tickers")
        rejected = stats.get("rejects")
    assert stats["retries"] > 0, "the restarts never hit the writer: the test did not test anything"
    assert not rejected, rejected
    await _exactly_once(citus_dsn, sent)


async def test_a_worker_down_longer_than_the_retries_loses_nothing(citus_cluster, citus_dsn, tmp_path):
    # While the worker is down every commit fails (08006, or XX000 mid-commit, see the next test) and is waited
    # out: sealed batches go to the spool, and once the worker is back everything commits exactly once.
    async with DatabaseManager(citus_dsn, settings=_settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        stop = asyncio.Event()
        producer = asyncio.create_task(_produce(db, stop))
        worker = citus_cluster.workers[1]
        try:
            await _committed_more(db, 2_000)
            await worker.stop("immediate")
            try:
                await _until(lambda: _true(db.writer_stats("book_tickers")["retries"] >= 3 * MAX_OTHER_ATTEMPTS),
                             "the writer retried the outage many times")
                assert db.writer_stats("book_tickers")["batches_spooled"] > 0  # sealed batches wait on disk, oldest first
            finally:
                await worker.start()
            await _committed_more(db, 2_000)
        finally:
            stop.set()
            sent = await producer
        await db.flush(timeout=WAIT)
        rejected = db.writer_stats("book_tickers").get("rejects")
    assert not rejected, rejected
    await _exactly_once(citus_dsn, sent)


async def test_a_worker_lost_mid_transaction_is_waited_out_not_held_against_the_rows(citus_cluster, citus_dsn):
    # Citus reports a worker lost under an open transaction as XX000 ("failure on connection marked as
    # essential"), not as a connection error: classified as an unknown error, its bounded retries would end in
    # rejected rows.
    conn = await _connect(citus_dsn)
    worker = citus_cluster.workers[0]
    try:
        await migrate(conn)
        await citus.distribute(conn)
        tr = conn.transaction()
        await tr.start()
        await conn.execute("INSERT INTO book_tickers_latest (symbol_id, recv_ts, bid_price, bid_qty, ask_price, ask_qty)"
                           " SELECT i, now(), 1, 1, 2, 1 FROM generate_series(1, 100) i")
        await worker.stop("immediate")
        try:
            with pytest.raises(asyncpg.PostgresError) as caught:
                await tr.commit()
        finally:
            await worker.start()
    finally:
        await conn.close()
    assert dberrors.classify(caught.value) == dberrors.WAIT, (caught.value.sqlstate, str(caught.value))


async def test_adding_a_worker_and_rebalancing_while_ingesting(citus_cluster, citus_dsn, tmp_path):
    database = citus_dsn.rsplit("/", 1)[1]
    async with DatabaseManager(citus_dsn, settings=_settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        stop = asyncio.Event()
        producer = asyncio.create_task(_produce(db, stop))
        try:
            await _committed_more(db, 2_000)
            worker = await citus_cluster.add_worker()
            await citus_cluster.prepare_node(worker, database)
            admin = await _connect(citus_dsn)
            try:
                await admin.execute("SELECT citus_add_node('127.0.0.1', $1)", worker.port)
                # book_tickers has no primary key: logical replication still moves it, as it only gets INSERTs.
                await admin.execute("SELECT citus_rebalance_start(shard_transfer_mode => 'force_logical')")
                await admin.execute("SELECT citus_rebalance_wait()", timeout=WAIT * 3)
                status = await admin.fetchval("SELECT state::text FROM citus_rebalance_status()")
                assert status == "finished", status
            finally:
                await admin.close()
            await _committed_more(db, 2_000)
        finally:
            stop.set()
            sent = await producer
        await db.flush(timeout=WAIT)
        rejected = db.writer_stats("book_tickers").get("rejects")
        latest = await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)
    assert not rejected, rejected
    assert len(latest) == 40
    await _exactly_once(citus_dsn, sent)
    on_workers = await _worker_counts(citus_cluster, citus_dsn, "book_tickers")
    assert len(on_workers) == 3 and on_workers[2] > 0 and sum(on_workers) == sent, on_workers


async def test_cli_stats_optimize_archive_retention_backup_and_restore(citus_cluster, citus_dsn, tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    e.update(HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"), HFTDB_METRICS_PORT=str(free_port()), HFTDB_DSN=citus_dsn)
    old = now_us() - 40 * 86_400_000_000
    async with DatabaseManager(citus_dsn, settings=_settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(300, symbols=20, base_ts=old))
        await db.insert_book_ticker_snapshots(tickers(700, start_id=300, symbols=20))
        await db.flush(timeout=WAIT)
        await _value(db, "ANALYZE book_tickers")
    code, out, err = await cli("stats", "--json", env=e, cwd=tmp_path)
    assert code == 0, err
    report = orjson.loads(out)
    assert report["tables"]["book_tickers"]["rows"] == 1_000, report["tables"]["book_tickers"]
    code, out, err = await cli("optimize", env=e, cwd=tmp_path)
    assert code == 0 and "indexes: all valid" in out, out + err
    # Retention archives the old partition to Parquet (the default [archive] root), verified, then drops it.
    code, out, err = await cli("cleanup", "--retention-days", "30", env=e, cwd=tmp_path)
    assert code == 0 and "(archived first)" in out, out + err
    conn = await _connect(citus_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM book_tickers") == 700
    finally:
        await conn.close()
    # pg_dump of the coordinator holds the rows (Citus serves COPY TO from the shards), not the distribution:
    # a restore gives local tables, and distribute lays them out again.
    code, out, err = await cli("backup", str(tmp_path / "b.dump"), env=e, cwd=tmp_path)
    assert code == 0 and "book_tickers 700" in out, out + err
    fresh = await citus_cluster.new_database(workers=2)
    try:
        e["HFTDB_DSN"] = fresh
        code, out, err = await cli("restore", str(tmp_path / "b.dump"), env=e, cwd=tmp_path)
        assert code == 0 and "book_tickers 700" in out, out + err
        code, out, err = await cli("validate", env=e, cwd=tmp_path)
        assert code == 0 and "no hftdb table is distributed" in out, out + err
        code, out, err = await cli("distribute", env=e, cwd=tmp_path)
        assert code == 0, out + err
        conn = await _connect(fresh)
        try:
            assert await citus.layout_problems(conn) == []
            assert await conn.fetchval("SELECT count(DISTINCT update_id) FROM book_tickers") == 700
        finally:
            await conn.close()
        assert sum(await _worker_counts(citus_cluster, fresh, "book_tickers")) == 700
    finally:
        await citus_cluster.drop_database(fresh.rsplit("/", 1)[1])


async def _symbol_nodes(dsn: str) -> dict[str, set[int]]:
    """Ports of the workers holding each book-ticker symbol's rows: its latest row's shard and its history's."""
    conn = await _connect(dsn)
    try:
        port_of = {r["shardid"]: r["nodeport"] for r in await conn.fetch("SELECT shardid, nodeport FROM citus_shards")}
        names = {r["id"]: r["symbol"] for r in await conn.fetch("SELECT id, symbol FROM symbols")}
        # Every partition of book_tickers is colocated with it: the parent's shard of a symbol says where.
        out: dict[str, set[int]] = {}
        for table, sid in [(t, i) for t in ("book_tickers", "book_tickers_latest") for i in names]:
            shard = await conn.fetchval("SELECT get_shard_id_for_distribution_column($1, $2::bigint)", table, sid)
            out.setdefault(names[sid], set()).add(port_of[shard])
        return out
    finally:
        await conn.close()


async def test_reads_and_stats_with_a_worker_down_fail_clearly_or_answer_partially_and_recover(
        citus_cluster, citus_dsn, tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    e.update(HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool-cli"), HFTDB_METRICS_PORT=str(free_port()),
             HFTDB_DSN=citus_dsn)
    worker = citus_cluster.workers[0]
    async with DatabaseManager(citus_dsn, settings=_settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        rows = tickers(4_000, symbols=40)
        await db.insert_book_ticker_snapshots(rows)
        await db.flush(timeout=WAIT)
        await _value(db, "ANALYZE book_tickers")
        nodes = await _symbol_nodes(citus_dsn)
        alive = next(s for s, ports in sorted(nodes.items()) if worker.port not in ports)
        lost = next(s for s, ports in sorted(nodes.items()) if ports == {worker.port})
        start = rows[0].recv_ts
        await worker.stop("immediate")
        try:
            # A read that needs a shard of the stopped worker: a typed error that says so, at once.
            with pytest.raises(DatabaseUnavailableError, match="a Citus worker is unreachable from the coordinator"):
                await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)
            with pytest.raises(DatabaseUnavailableError, match="a Citus worker is unreachable"):
                await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT, symbols=[lost])
            with pytest.raises(DatabaseUnavailableError, match="a Citus worker is unreachable"):
                await db.get_book_ticker_history(ExchangeName.BINANCE_SPOT, lost, start=start)
            # Reads that reach only live shards are answered.
            (one,) = await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT, symbols=[alive])
            assert one.update_id == max(r.update_id for r in rows if r.symbol == alive)
            history = await db.get_book_ticker_history(ExchangeName.BINANCE_SPOT, alive, start=start)
            assert sorted(r.update_id for r in history) == sorted(r.update_id for r in rows if r.symbol == alive)
            # Statistics answer with what the live workers hold, and count the shards left out.
            stats = (await db.get_database_stats())["tables"]
            assert stats["book_tickers"]["unreachable_shards"] > 0 and stats["book_tickers"]["bytes"] > 0, stats
            assert stats["book_tickers_latest"]["unreachable_shards"] > 0, stats
            assert "unreachable_shards" not in stats["ingest_batches"]
            code, out, err = await cli("stats", env=e, cwd=tmp_path)
            assert code == 0 and "WARNING Citus:" in out and "Traceback" not in err, out + err
            code, out, err = await cli("stats", "--json", env=e, cwd=tmp_path)
            table = orjson.loads(out)["tables"]["book_tickers"]
            assert code == 0 and table["rows"] is None and table["unreachable_shards"] > 0, table
            code, out, err = await cli("status", env=e, cwd=tmp_path)
            assert code == 0 and "newest    unknown: a Citus worker is unreachable" in out, out + err
            assert "WARNING Citus:" in out, out
            code, out, err = await cli("health", "--db-only", env=e, cwd=tmp_path)
            assert code == 1 and "citus workers: UNREACHABLE, 1 of 2 answering" in out, out + err
            assert f"127.0.0.1:{worker.port}" in out and "unhealthy" in out, out
            # A command that needs every worker fails with one line naming the cause, no traceback.
            code, out, err = await cli("validate", env=e, cwd=tmp_path)
            assert code == 1
            one_error_line(err, "a Citus worker is unreachable from the coordinator")
        finally:
            await worker.start()
        # The worker is back: the same reads and statistics are whole again.
        latest = await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)
        assert len(latest) == 40
        history = await db.get_book_ticker_history(ExchangeName.BINANCE_SPOT, lost, start=start)
        assert len(history) == sum(1 for r in rows if r.symbol == lost)
        stats = (await db.get_database_stats())["tables"]
        assert "unreachable_shards" not in stats["book_tickers"] and stats["book_tickers"]["estimated_rows"] == 4_000
    code, out, err = await cli("stats", env=e, cwd=tmp_path)
    assert code == 0 and "WARNING" not in out, out + err
    code, out, err = await cli("health", "--db-only", env=e, cwd=tmp_path)
    assert code == 0 and "citus workers: ok, 2 of 2 answering" in out, out + err


def _processes(node) -> list[int]:
    """The node's postmaster and its children (backends, background workers)."""
    postmaster = int((node.data_dir / "postmaster.pid").read_text().split()[0])
    children = [int(line.split()[0]) for line in Path("/proc").joinpath(str(postmaster), "task", str(postmaster),
                                                                        "children").read_text().split()]
    return [postmaster, *children]


async def test_a_worker_that_hangs_bounds_reads_and_stats(citus_cluster, citus_dsn, tmp_path):
    # A worker that stops answering without refusing (a frozen host, a network black hole): reads end with a
    # typed error after the command timeout, or after citus.node_connection_timeout (5 s here) for a new
    # connection; statistics ask each worker once and leave its shards out. Nothing waits forever.
    s = _settings(tmp_path)
    s = msgspec.structs.replace(s, database=msgspec.structs.replace(s.database, command_timeout=10.0))
    worker = citus_cluster.workers[1]
    async with DatabaseManager(citus_dsn, settings=s) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(2_000, symbols=40))
        await db.flush(timeout=WAIT)
        assert len(await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)) == 40
        frozen = _processes(worker)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):  # a backend may end meanwhile
                os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # a cached connection to the worker times out; then a new one cannot be made
                with pytest.raises(DatabaseUnavailableError):
                    await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)
            stats = (await db.get_database_stats())["tables"]
            assert stats["book_tickers"]["unreachable_shards"] > 0, stats
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):  # an exited backend reaped after the postmaster resumed
                    os.kill(pid, signal.SIGCONT)
        assert len(await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)) == 40
        assert "unreachable_shards" not in (await db.get_database_stats())["tables"]["book_tickers"]


async def test_notifications_catch_up_and_the_latest_mirror_heals_across_a_coordinator_restart(
        citus_cluster, citus_dsn, tmp_path):
    s = msgspec.structs.replace(_settings(tmp_path), reads=ReadSettings(listen_keepalive_s=0.5,
                                                                         listen_retry_max_s=0.2))
    async with DatabaseManager(citus_dsn, settings=s) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(5, symbols=5, start_id=0))
        await db.flush(timeout=WAIT)
        sid = db.resolve_symbol_id("binance_spot", "SYM0USDT")
        async with db.notifications("book_tickers", exchange="binance_spot", symbols=["SYM0USDT"]) as feed, \
                db.latest_mirror("book_tickers", exchange="binance_spot") as mirror:
            seen: set[int] = set()
            notes: list = []
            await db.insert_book_ticker_snapshots(tickers(100, symbols=1, start_id=0))
            await db.flush(timeout=WAIT)
            await _consume_until(db, feed, set(range(100)), seen, notes)
            last_max = notes[-1].max_ts

            await citus_cluster.coordinator.restart("fast")
            # Rows written while the listener is down (the writer waits until the coordinator is back).
            await db.insert_book_ticker_snapshots(tickers(100, symbols=1, start_id=100))
            await db.flush(timeout=WAIT)
            catch_up = await _next(feed)
            assert catch_up.catch_up and catch_up.since_ts <= last_max and catch_up.ids is None
            rows = await db.get_book_ticker_history("binance_spot", "SYM0USDT", start=catch_up.since_ts,
                                                    primary=True, format="columns")
            seen.update(rows["update_id"])
            assert set(range(200)) <= seen

            # The LISTEN is back on the restarted coordinator: later batches are notified as usual.
            await db.insert_book_ticker_snapshots(tickers(100, symbols=1, start_id=200))
            await db.flush(timeout=WAIT)
            await _consume_until(db, feed, set(range(300)), seen, notes)
            assert feed.reconnects >= 1
            assert not any(n.catch_up for n in notes)
            # The mirror reloaded after its own catch-up: it holds the newest row of every symbol.
            while (mirror.get(sid) is None or mirror.get(sid).update_id != 299):
                await mirror.changed(timeout=WAIT)
            assert {r.update_id for r in mirror.snapshot()} == {299, 1, 2, 3, 4}


async def _unused(conn: asyncpg.Connection, index: str) -> citus.ShardIndex:
    usage = await citus.index_usage(conn)
    assert usage is not None and usage.unreachable == 0
    (found,) = [i for i in usage.indexes if i.index == index]
    return found


async def test_optimize_reports_index_usage_from_the_shards(citus_cluster, citus_dsn, tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    e.update(HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool-cli"), HFTDB_METRICS_PORT=str(free_port()),
             HFTDB_DSN=citus_dsn)
    day = 86_400_000_000
    yesterday = (now_us() // day - 1) * day + 3_600_000_000  # a sealed partition, which optimize gives its btree
    async with DatabaseManager(citus_dsn, settings=_settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        rows = tickers(60_000, symbols=40, base_ts=yesterday)
        await db.insert_book_ticker_snapshots(rows)
        await db.flush(timeout=WAIT)
        (part,) = [p.name for p in await _partitions(db) if p.lower_us <= yesterday < p.upper_us]
    code, out, err = await cli("optimize", env=e, cwd=tmp_path)
    assert code == 0 and f"sealed partition(s) indexed ({part})" in out, out + err
    assert "Citus: index health and usage of" in out and "indexes: all valid" in out, out
    # The btree lives in the partition's shards: never scanned yet, and big enough to report.
    line = f"unused index {part}_btree on {part} ("
    assert line in out and "shard(s) on the workers, no scan" in out, out
    conn = await _connect(citus_dsn)
    try:
        index = await _unused(conn, f"{part}_btree")
        assert index.scans == 0 and index.shards == 8 and index.bytes >= 1 << 20 and index.invalid_shards == 0
        # One lookup by its key scans it on one worker; the workers' counters are flushed within seconds.
        sid = await conn.fetchval("SELECT id FROM symbols WHERE symbol = 'SYM0USDT'")
        assert await conn.fetchval("SELECT count(*) FROM book_tickers WHERE symbol_id = $1 AND recv_ts = "
                                   "to_timestamp($2 / 1e6)", sid, rows[0].recv_ts) == 1

        async def scanned() -> bool:
            return (await _unused(conn, f"{part}_btree")).scans > 0

        await _until(scanned, "the shard's index scan is counted")
    finally:
        await conn.close()
    code, out, err = await cli("optimize", env=e, cwd=tmp_path)
    assert code == 0 and line not in out, out + err


async def _partitions(db: DatabaseManager) -> list[partitions.PartitionInfo]:
    async with db.connection() as conn:
        return await partitions.list_partitions(conn, "book_tickers")

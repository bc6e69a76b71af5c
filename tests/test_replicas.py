"""Read replicas for real: a streaming standby made by pg_basebackup from the test's own primary.

Reads rotate to the replica while it is healthy, move to the primary when it dies or lags past the bound, come
back when it recovers, and keep working while the primary restarts under the writers.
"""

import asyncio
import contextlib
import inspect
import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest

from hftdb import ConfigError, DatabaseManager, DatabaseUnavailableError, ExchangeName, load_settings
from hftdb.config import ReadSettings
from hftdb.read import archive
from hftdb.read.replicas import ReadRouter
from hftdb.db.server import run_tool, bin_dir

from helpers import settings, tickers

pytestmark = pytest.mark.slow

WAIT = 60.0


class StreamingReplica:
    """A hot standby of ``primary`` in ``data_dir``, on a Unix socket in a short directory of its own."""

    def __init__(self, primary_dsn: str, data_dir: Path) -> None:
        self.primary_dsn = primary_dsn
        self.data_dir = data_dir
        # As root, pgserver runs PostgreSQL as its own user; the standby must run as that user too.
        self.user = "pgserver" if os.geteuid() == 0 else None
        self.socket_dir = Path(tempfile.mkdtemp(prefix="hftdb-rs-"))  # short: socket paths are limited to ~100
        self.dsn = f"postgresql://postgres:@/postgres?host={self.socket_dir}"

    async def create(self) -> None:
        self.data_dir.mkdir(mode=0o700)
        if self.user is not None:
            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
            shutil.chown(self.data_dir, self.user, self.user)
            shutil.chown(self.socket_dir, self.user, self.user)
        await self._tool("pg_basebackup", "-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast",
                         "-d", self.primary_dsn)

    async def start(self) -> None:
        # Retry the primary every 100 ms instead of 5 s after losing it, so a primary restart heals quickly.
        opts = f"-h '' -k {self.socket_dir} -c wal_retrieve_retry_interval=100ms"
        await self._tool("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-l", str(self.data_dir / "log"),
                         "-o", opts, "start")

    async def stop(self, mode: str = "immediate") -> None:
        await self._tool("pg_ctl", "-D", str(self.data_dir), "-w", "-m", mode, "stop")

    async def execute(self, sql: str) -> object:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def _tool(self, name: str, *args: str) -> str:
        return await asyncio.to_thread(run_tool, [str(bin_dir() / name), *args], user=self.user, timeout=120)


@pytest.fixture
async def replica(fault_server, tmp_path):
    rep = StreamingReplica(fault_server.dsn, tmp_path / "replica")
    await rep.create()
    await rep.start()
    try:
        yield rep
    finally:
        with contextlib.suppress(Exception):
            await rep.stop()
        shutil.rmtree(rep.socket_dir, ignore_errors=True)


def _settings(tmp_path, replica_dsn: str, **reads):
    r = {"replicas": (replica_dsn,), "health_interval_ms": 50.0, "max_lag_ms": 2_000.0, "health_timeout_s": 1.0,
         **reads}
    return msgspec.structs.replace(settings(tmp_path), reads=ReadSettings(**r))


async def _until(db: DatabaseManager, condition, what: str) -> None:
    """Health round by health round, until ``condition()`` (a bool or an awaitable of one) holds."""
    deadline = time.monotonic() + WAIT
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}: {db.read_status()}")
        await asyncio.wait_for(db.check_reads(), WAIT)


def _replica(db: DatabaseManager) -> dict:
    return db.read_status()[1]


async def _latest_ids(db: DatabaseManager, **kw) -> set[int]:
    return {r.update_id for r in await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT, **kw)}


async def test_reads_use_the_replica_and_survive_it_going_down(fault_server, replica, tmp_path):
    async with DatabaseManager(fault_server.dsn, settings=_settings(tmp_path, replica.dsn)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        rows = tickers(50, symbols=5)
        await db.insert_book_ticker_snapshots(rows)
        await db.flush()
        want = {r.update_id for r in rows[-5:]}

        async def replica_current() -> bool:
            return _replica(db)["healthy"] and await _latest_ids(db) == want

        await _until(db, replica_current, "the replica serves the committed rows")
        before = _replica(db)["reads"]
        for _ in range(10):
            assert await _latest_ids(db) == want
        assert _replica(db)["reads"] >= before + 10

        # Kill the replica while a reader hammers it: no read fails, they move to the primary.
        stop = asyncio.Event()
        served = 0

        async def reader() -> None:
            nonlocal served
            while not stop.is_set():
                assert await _latest_ids(db) == want
                served += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(reader())
        await replica.stop("immediate")

        async def replica_out() -> bool:
            return not _replica(db)["healthy"]

        await _until(db, replica_out, "the dead replica leaves the rotation")
        primary_reads = db.read_status()[0]["reads"]
        await _until(db, lambda: (db.read_status()[0]["reads"] > primary_reads + 5),
                     "reads go to the primary")
        stop.set()
        await task
        assert served > 0 and _replica(db)["last_error"]

        # Back up: it rejoins the rotation after a passing health check.
        await replica.start()

        async def replica_back() -> bool:
            return _replica(db)["healthy"]

        await _until(db, replica_back, "the replica rejoins")
        before = _replica(db)["reads"]
        assert await _latest_ids(db) == want
        assert _replica(db)["reads"] == before + 1


async def test_a_lagging_replica_is_bypassed_until_it_catches_up(fault_server, replica, tmp_path):
    async with DatabaseManager(fault_server.dsn, settings=_settings(tmp_path, replica.dsn, max_lag_ms=300.0)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        first = tickers(5, symbols=5, start_id=0)
        await db.insert_book_ticker_snapshots(first)
        await db.flush()
        await _until(db, lambda: (_replica(db)["healthy"] and _replica(db)["lag_ms"] == 0),
                     "the replica is current")

        await replica.execute("SELECT pg_wal_replay_pause()")
        second = tickers(5, symbols=5, start_id=100)
        await db.insert_book_ticker_snapshots(second)
        await db.flush()
        want = {r.update_id for r in second}

        async def lagging() -> bool:
            return not _replica(db)["healthy"]

        await _until(db, lagging, "the paused replica exceeds the lag bound")
        assert "lags" in _replica(db)["last_error"] and _replica(db)["lag_ms"] > 300
        # Reads now come from the primary, so they see the new rows the replica has not replayed.
        assert await _latest_ids(db) == want
        assert await replica.execute("SELECT count(*) FROM book_tickers WHERE update_id >= 100") == 0

        await replica.execute("SELECT pg_wal_replay_resume()")
        await _until(db, lambda: (_replica(db)["healthy"]), "the replica catches up and rejoins")
        before = _replica(db)["reads"]
        assert await _latest_ids(db) == want
        assert _replica(db)["reads"] == before + 1


async def test_primary_restart_under_writers_while_reads_continue_on_the_replica(fault_server, replica, tmp_path):
    async with DatabaseManager(fault_server.dsn, settings=_settings(tmp_path, replica.dsn)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(10, symbols=5))
        await db.flush()
        await _until(db, lambda: (_replica(db)["healthy"]), "the replica is in rotation")

        stop = asyncio.Event()
        read_errors: list[BaseException] = []
        reads = 0

        async def produce() -> int:
            sent = 10
            while not stop.is_set():
                sent += await db.insert_book_ticker_snapshots(tickers(100, symbols=5, start_id=sent))
                await asyncio.sleep(0.005)
            return sent

        async def read() -> None:
            nonlocal reads
            while not stop.is_set():
                try:
                    await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)
                    reads += 1
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    read_errors.append(exc)
                await asyncio.sleep(0.002)

        producer = asyncio.create_task(produce())
        reader = asyncio.create_task(read())
        committed = db.writer_stats("book_tickers")["rows_committed"]
        await asyncio.wait_for(_wait(lambda: db.writer_stats("book_tickers")["rows_committed"] > committed + 500), WAIT)
        replica_reads = _replica(db)["reads"]
        await fault_server.restart(mode="fast")
        await asyncio.wait_for(_wait(lambda: db.writer_stats("book_tickers")["rows_committed"] > committed + 2_000), WAIT)
        stop.set()
        sent = await producer
        await reader
        await db.flush(timeout=WAIT)

        assert db.writer_stats("book_tickers")["retries"] > 0, "the restart never hit the writer: nothing was tested"
        assert read_errors == [] and reads > 0
        assert _replica(db)["reads"] > replica_reads
        # Everything the writers accepted reaches the primary exactly once, and streams on to the replica.
        count = "SELECT count(*) FROM book_tickers"
        async with db.connection() as conn:
            assert await conn.fetchval(count) == sent

        async def replica_has_all() -> bool:
            return await replica.execute(count) == sent

        await _until(db, replica_has_all, "the replica has replayed every row")


DAY_US = 86_400_000_000


def _update_ids(rows: object) -> list[int]:
    """The update ids of a history read in any format, oldest first."""
    if isinstance(rows, list):
        return [r.update_id for r in rows]
    ids = rows["update_id"]  # type: ignore[index]
    return ids if isinstance(ids, list) else ids.tolist()


async def test_a_history_read_on_a_replica_behind_the_archiver_takes_each_row_once(fault_server, replica, tmp_path):
    # The primary archives three days (files written and verified, partitions detached and dropped, manifests
    # marked dropped) while the replica's replay is paused: the replica still has those partitions attached, and
    # lags within the bound, so reads go to it. They must take those days from the replica, not from the files
    # as well; once the replica replays the drops, from the files.
    pytest.importorskip("pyarrow")
    s = _settings(tmp_path, replica.dsn, max_lag_ms=600_000.0)
    async with DatabaseManager(fault_server.dsn, settings=s) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        today = int(time.time()) * 1_000_000 // DAY_US * DAY_US
        rows = [r for d in range(3) for r in tickers(100, start_id=1_000 * d, symbols=1,
                                                     base_ts=today - (20 - d) * DAY_US + 3_600_000_000)]
        rows += tickers(50, start_id=9_000, symbols=1)
        await db.insert_book_ticker_snapshots(rows)
        await db.flush()
        lo, hi = today - 25 * DAY_US, today + 2 * DAY_US
        formats = ("numpy", "columns", "objects")

        async def history(fmt: str, **kw) -> list[int]:
            return _update_ids(await db.get_book_ticker_history("binance_spot", "SYM0USDT", start=lo, end=hi,
                                                                format=fmt, **kw))

        want = {fmt: await history(fmt, primary=True) for fmt in formats}
        assert all(len(ids) == len(rows) for ids in want.values())
        count = "SELECT count(*) FROM book_tickers"

        async def replica_current() -> bool:
            return _replica(db)["healthy"] and await replica.execute(count) == len(rows)

        await _until(db, replica_current, "the replica has every row")
        await replica.execute("SELECT pg_wal_replay_pause()")

        async def paused() -> bool:
            return await replica.execute("SELECT pg_get_wal_replay_pause_state()") == "paused"

        await _until(db, paused, "the replica's replay is paused")
        report = (await db.archive_partitions(10, tables=["book_tickers"]))["book_tickers"]
        assert len(report.archived) == 3
        assert all(m.state == "dropped" for m in archive.read_manifests(Path(s.archive.root), "book_tickers"))
        async with db.connection() as conn:
            assert await conn.fetchval(count) == 50
        assert await replica.execute(count) == len(rows)  # the replica has not seen the detach or the drop
        await db.check_reads()
        assert _replica(db)["healthy"], db.read_status()
        before = _replica(db)["reads"], db.read_status()[0]["reads"]
        got = {fmt: await history(fmt) for fmt in formats}
        # Every read was the replica's.
        assert _replica(db)["reads"] >= before[0] + 3 and db.read_status()[0]["reads"] == before[1], db.read_status()
        assert {fmt: len(ids) for fmt, ids in got.items()} == {fmt: len(rows) for fmt in formats}
        assert got == want

        await replica.execute("SELECT pg_wal_replay_resume()")

        async def replica_dropped() -> bool:
            return _replica(db)["healthy"] and await replica.execute(count) == 50

        await _until(db, replica_dropped, "the replica replays the drops")
        before = _replica(db)["reads"], db.read_status()[0]["reads"]
        assert {fmt: await history(fmt) for fmt in formats} == want
        assert _replica(db)["reads"] >= before[0] + 3 and db.read_status()[0]["reads"] == before[1], db.read_status()


async def _wait(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_lag_is_measured_against_sampled_primary_positions():
    router = ReadRouter("postgresql://p/x", ReadSettings(max_lag_ms=1_000.0), database=settings(Path("/tmp")).database)
    assert router._lag(500, 12.0) == 12.0  # no primary sample yet: the replica's own view
    now = time.monotonic()
    router._lsn_samples.extend([(now - 3.0, 100), (now - 2.0, 200), (now - 0.1, 300)])
    assert router._lag(300, 3600.0) == 0.0  # replayed the newest sample: an idle primary is not lag
    assert router._lag(None, None) == float("inf")  # not replaying at all
    lag = router._lag(250, 3600.0)  # at least where the primary was 2 s ago; replay time says an hour
    assert 2.0 <= lag < 3.0
    assert router._lag(250, 0.01) == 0.01  # the last replayed commit is 10 ms old: the tighter bound wins
    # Behind every sample (the router just started): the samples give only a floor, the replay time is the bound.
    router._lsn_samples.clear()
    router._lsn_samples.append((time.monotonic() - 0.01, 300))
    assert router._lag(250, 6.0) >= 6.0
    assert router._lag(250, None) == float("inf")


async def test_a_replica_far_behind_when_reads_start_does_not_join(fault_server, replica, tmp_path):
    # A router that has just started has one primary sample, newer than anything the paused replica replayed: the
    # lag came out as the age of that sample (ms), and the replica served stale rows for max_lag_ms.
    async with DatabaseManager(fault_server.dsn, settings=settings(tmp_path)) as writer:
        await writer.insert_exchange(ExchangeName.BINANCE_SPOT)
        await writer.insert_book_ticker_snapshots(tickers(5, symbols=5, start_id=0))
        await writer.flush()
        await _wait_for_replay(replica, 5)
        await replica.execute("SELECT pg_wal_replay_pause()")
        fresh = tickers(5, symbols=5, start_id=100)
        await writer.insert_book_ticker_snapshots(fresh)
        await writer.flush()
        await asyncio.sleep(1.5)  # (the replica's last replayed commit is now older than the bound)
        cfg = _settings(tmp_path / "reader", replica.dsn, max_lag_ms=1_000.0)  # (a spool of its own)
        async with DatabaseManager(fault_server.dsn, settings=cfg) as db:
            await db.check_reads()
            assert not _replica(db)["healthy"], db.read_status()
            assert await _latest_ids(db) == {r.update_id for r in fresh}
        await replica.execute("SELECT pg_wal_replay_resume()")


async def _wait_for_replay(replica: StreamingReplica, rows: int) -> None:
    for _ in range(6_000):  # (a hang guard)
        with contextlib.suppress(asyncpg.UndefinedTableError):
            if await replica.execute("SELECT count(*) FROM book_tickers") >= rows:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the replica never replayed the rows")


def test_read_settings_validate_and_hide_passwords(tmp_path):
    s = ReadSettings(replicas=("postgresql://u:topsecret@r1/db",))
    assert "topsecret" not in repr(s)
    config = tmp_path / "c.toml"
    config.write_text("[reads]\nmax_lag_ms = 100\nhealth_interval_ms = 80\n")
    with pytest.raises(ConfigError):
        load_settings(config, environ={})
    loaded = load_settings(None, environ={"HFTDB_READS_REPLICAS": '["postgresql://r1/db", "postgresql://r2/db"]'})
    assert loaded.reads.replicas == ("postgresql://r1/db", "postgresql://r2/db")


async def test_a_server_that_is_not_a_standby_never_joins_the_rotation(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=_settings(tmp_path, dsn)) as db:  # the "replica" is the primary
        await db.check_reads()
        primary, impostor = db.read_status()
        assert not impostor["healthy"] and "not a standby" in impostor["last_error"]
        await db.get_latest_book_tickers()
        assert db.read_status()[0]["reads"] == primary["reads"] + 1


async def test_a_replica_that_refuses_the_login_is_said_at_once(dsn, tmp_path, caplog):
    # A replica that never joined (a wrong password, a database that is not there) was retried every round and
    # said nothing in the log: only health_check() showed it.
    missing = urlunsplit(urlsplit(dsn)._replace(path="/hftdb_no_such_database"))
    async with DatabaseManager(dsn, settings=_settings(tmp_path, missing)) as db:
        for _ in range(3):
            await db.check_reads()
        said = [r for r in caplog.records if "hftdb_no_such_database" in r.getMessage()]
        assert len(said) == 1 and said[0].levelname == "ERROR" and "3D000" in said[0].getMessage(), said
        assert not _replica(db)["healthy"]


async def test_reads_raise_database_unavailable_when_no_server_answers(fault_server, tmp_path):
    async with DatabaseManager(fault_server.dsn, settings=settings(tmp_path)) as db:
        await fault_server.kill()
        try:
            with pytest.raises(DatabaseUnavailableError):
                await db.get_latest_book_tickers(symbol_ids=[1])
        finally:
            await fault_server.start_again()

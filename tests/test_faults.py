"""Faults for real: restart, kill and terminate the server under ingest, then count rows.

Every row carries a unique update_id, so "nothing lost, nothing duplicated" is: the table's count equals the
count of distinct ids equals what the writer accepted.
"""

import asyncio
import contextlib
import shutil
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from hftdb import BookTicker, BufferFullError, ConfigError, DatabaseManager, ExchangeName, Settings, now_us
from hftdb.db.server import EmbeddedServer

from helpers import settings, tickers

pytestmark = pytest.mark.slow


async def _counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*), count(DISTINCT update_id) FROM book_tickers")
        return row[0], row[1]
    finally:
        await conn.close()


async def _produce(db: DatabaseManager, stop: asyncio.Event, *, chunk: int = 200) -> int:
    sent = 0
    while not stop.is_set():
        sent += await db.insert_book_ticker_snapshots(tickers(chunk, start_id=sent))
        await asyncio.sleep(0.002)
    return sent


async def _wait_committed(db: DatabaseManager, at_least: int) -> None:
    while db.writer_stats("book_tickers")["rows_committed"] < at_least:
        await asyncio.sleep(0.01)


async def _register(db: DatabaseManager, *, first_id: int = 10**6) -> None:
    """The exchange and its symbols registered: 10 rows stored, update ids from ``first_id``."""
    await db.insert_exchange(ExchangeName.BINANCE_SPOT)
    await db.insert_book_ticker_snapshots(tickers(10, start_id=first_id))
    await db.flush()


async def _open_then_down(server: EmbeddedServer, cfg: Settings, *, first_id: int = 10**6) -> DatabaseManager:
    """A started manager whose symbols are registered (:func:`_register`), then its server killed: what it takes
    next waits for the database, or goes to the spool."""
    db = DatabaseManager(server.dsn, settings=cfg)
    await db.initialize()
    await _register(db, first_id=first_id)
    await server.kill()
    return db


async def test_server_restart_during_sustained_ingest(fault_server, tmp_path):
    async with DatabaseManager(fault_server.dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        stop = asyncio.Event()
        producer = asyncio.create_task(_produce(db, stop))
        for mode in ("fast", "immediate", "fast"):
            committed = db.writer_stats("book_tickers")["rows_committed"]
            await asyncio.wait_for(_wait_committed(db, committed + 2_000), 60)
            await fault_server.restart(mode=mode)
        await asyncio.wait_for(_wait_committed(db, db.writer_stats("book_tickers")["rows_committed"] + 2_000), 60)
        stop.set()
        sent = await producer
        await db.flush(timeout=60)
        retries = db.writer_stats("book_tickers")["retries"]
    assert retries > 0, "the restarts never hit the writer: the test did not test anything"
    assert await _counts(fault_server.dsn) == (sent, sent)


async def test_terminate_backend_during_flush(fault_server, tmp_path):
    async with DatabaseManager(fault_server.dsn, settings=settings(tmp_path, batch_max_rows=2_000)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        stop = asyncio.Event()
        producer = asyncio.create_task(_produce(db, stop, chunk=500))
        admin = await asyncpg.connect(fault_server.dsn)
        killed = 0
        try:
            for _ in range(20):
                await asyncio.wait_for(_wait_committed(db, db.writer_stats("book_tickers")["rows_committed"] + 500), 60)
                # The COPY (or the statement after it) of an in-flight batch: terminate that backend.
                killed += await admin.fetchval(
                    """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                       WHERE pid <> pg_backend_pid() AND datname = current_database()
                         AND (query ILIKE 'COPY%' OR query ILIKE '%ingest_batches%')""")
        finally:
            await admin.close()
        stop.set()
        sent = await producer
        await db.flush(timeout=60)
    assert killed > 0, "no in-flight COPY was caught; nothing was tested"
    assert await _counts(fault_server.dsn) == (sent, sent)


async def test_backend_terminated_while_the_copy_waits_for_the_socket(dsn, tmp_path):
    # A COPY whose backend waits for a lock reads nothing: the client's socket buffers fill, and asyncpg waits for
    # them to drain before it sends the next CopyData message. Terminating that backend must fail the COPY at once
    # (the commit is retried and every row lands once), not leave it waiting for a drain that never comes.
    # Commits of ~28 MB: far more than the socket's buffers hold (the writer asks for 16 MB of send buffer).
    cfg = settings(tmp_path, batch_max_rows=100_000, commit_max_rows=300_000)
    async with DatabaseManager(dsn, settings=cfg) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sent = await db.insert_book_ticker_snapshots(tickers(100))  # symbols registered, partition made
        await db.flush()
        locker, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute("LOCK TABLE book_tickers IN ACCESS EXCLUSIVE MODE")
            sent += await db.insert_book_ticker_snapshots(tickers(600_000, start_id=sent))
            pid = None
            for _ in range(1_000):
                pid = await admin.fetchval(
                    """SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                         AND query ILIKE 'COPY%' AND wait_event_type = 'Lock' LIMIT 1""")
                if pid is not None:
                    break
                await asyncio.sleep(0.01)
            assert pid is not None, "no COPY waited for the lock; nothing was tested"
            await asyncio.sleep(0.5)  # the socket's buffers are full long before
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await lock.rollback()
        finally:
            await locker.close()
            await admin.close()
        await db.flush(timeout=30)
        stats = db.writer_stats("book_tickers")
    assert stats["retries"] >= 1
    assert await _counts(dsn) == (sent, sent)


async def test_outage_spools_and_replays_in_order(fault_server, tmp_path):
    cfg = settings(tmp_path, batch_max_rows=500, batch_max_age_ms=20.0, buffer_max_rows=2_000)
    async with DatabaseManager(fault_server.dsn, settings=cfg) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sent = await db.insert_book_ticker_snapshots(tickers(1_000))
        await db.flush()
        await fault_server.kill()
        for i in range(30):
            sent += await db.insert_book_ticker_snapshots(tickers(500, start_id=sent))
        assert db.writer_stats("book_tickers")["batches_spooled"] > 0
        assert db.writer_stats("book_tickers")["rows_in_memory"] <= 2_000 + 500
        spool_files = list((tmp_path / "spool" / "book_tickers").glob("*.spool"))
        assert spool_files
        await fault_server.start_again()
        await db.flush(timeout=60)
        assert not list((tmp_path / "spool" / "book_tickers").glob("*.spool"))
    assert await _counts(fault_server.dsn) == (sent, sent)


async def test_spool_survives_process_restart(fault_server, tmp_path):
    cfg = settings(tmp_path, batch_max_rows=500, buffer_max_rows=1_000)
    db = await _open_then_down(fault_server, cfg)
    sent = 0
    for _ in range(6):
        sent += await db.insert_book_ticker_snapshots(tickers(500, start_id=sent))
    await db.close(timeout=1.0)  # the database is down: everything left goes to the spool
    assert list((tmp_path / "spool" / "book_tickers").glob("*.spool"))
    await fault_server.start_again()
    async with DatabaseManager(fault_server.dsn, settings=cfg) as db2:
        assert db2.writer_stats("book_tickers")["batches_replayed"] > 0
        await db2.flush(timeout=60)
    assert await _counts(fault_server.dsn) == (sent + 10, sent + 10)


async def test_replay_of_a_committed_batch_is_not_duplicated(fault_server, tmp_path):
    """A batch that committed but stayed in the spool (crash before the file was removed) is skipped."""
    from hftdb.store.spool import Spool

    cfg = settings(tmp_path, batch_max_rows=1000)
    async with DatabaseManager(fault_server.dsn, settings=cfg) as db:
        await _register(db)
        await fault_server.kill()
        await db.insert_book_ticker_snapshots(tickers(300))
        await db.close(timeout=0.5)
    spool = Spool(tmp_path / "spool" / "book_tickers", max_bytes=1 << 30)
    (path,) = spool.open()
    copy_of = path.read_bytes()
    spool.close()  # (the directory's lock: the next manager takes it)
    await fault_server.start_again()
    async with DatabaseManager(fault_server.dsn, settings=cfg) as db:
        await db.flush(timeout=60)
    # Put the committed batch back, as if the process died between COMMIT and unlink.
    path.write_bytes(copy_of)
    async with DatabaseManager(fault_server.dsn, settings=cfg) as db:
        await db.flush(timeout=60)
        assert db.writer_stats("book_tickers")["duplicates_skipped"] == 1
    assert await _counts(fault_server.dsn) == (310, 310)


@pytest.mark.parametrize("policy", ["raise", "drop_oldest", "block"])
async def test_full_buffer_policies(fault_server, tmp_path, policy):
    cfg = settings(tmp_path, batch_max_rows=100, buffer_max_rows=1_000, full_policy=policy, spool_dir=None)
    async with DatabaseManager(fault_server.dsn, settings=cfg) as db:
        await _register(db)
        await fault_server.kill()
        accepted = 0
        if policy == "raise":
            with pytest.raises(BufferFullError):
                for _ in range(50):
                    accepted += await db.insert_book_ticker_snapshots(tickers(100, start_id=accepted))
            assert db.writer_stats("book_tickers")["rows_in_memory"] <= 1_000
        elif policy == "drop_oldest":
            for _ in range(50):
                accepted += await db.insert_book_ticker_snapshots(tickers(100, start_id=accepted))
            assert db.writer_stats("book_tickers")["rows_dropped"] > 0
            assert db.writer_stats("book_tickers")["rows_in_memory"] <= 1_000 + 100
        else:
            async def produce() -> int:
                n = 0
                for _ in range(50):
                    n += await db.insert_book_ticker_snapshots(tickers(100, start_id=n))
                return n
            task = asyncio.create_task(produce())
            done, _ = await asyncio.wait({task}, timeout=1.0)
            assert not done, "producer should be blocked while the buffer is full"
            assert db.writer_stats("book_tickers")["rows_in_memory"] <= 1_000
        await fault_server.start_again()
        if policy == "block":
            accepted = await asyncio.wait_for(task, 60)
        await db.flush(timeout=60)
        dropped = db.writer_stats("book_tickers")["rows_dropped"]
    total, distinct = await _counts(fault_server.dsn)
    assert total == distinct == accepted - dropped + 10
    if policy != "drop_oldest":
        assert dropped == 0


async def test_close_while_database_down_without_spool_reports_loss(fault_server, tmp_path, caplog):
    db = await _open_then_down(fault_server, settings(tmp_path, spool_dir=None), first_id=0)
    await db.insert_book_ticker_snapshots(tickers(10, start_id=10))
    with contextlib.suppress(Exception):
        await db.close(timeout=0.5)
    assert db.writer_stats("book_tickers")["rows_dropped"] == 10
    assert "no room to spool" in caplog.text
    await fault_server.start_again()


async def test_new_symbol_during_outage_waits_for_the_database(fault_server, tmp_path):
    async with DatabaseManager(fault_server.dsn, settings=settings(tmp_path)) as db:
        await _register(db)
        await fault_server.kill()
        # Known symbols still go in (buffered); a never-seen symbol needs an id from the database.
        assert await db.insert_book_ticker_snapshots(tickers(10)) == 10
        t = now_us()
        fresh = asyncio.create_task(db.insert_book_ticker_snapshots([
            BookTicker("binance_spot", "BRANDNEWUSDT", 1.0, 1.0, 1.1, 1.0, t + i, update_id=200 + i)
            for i in range(5)]))
        done, _ = await asyncio.wait({fresh}, timeout=1.0)
        assert not done, "the producer should wait for the database, not lose or raise"
        await fault_server.start_again()
        assert await asyncio.wait_for(fresh, 60) == 5
        await db.flush(timeout=60)
    assert await _counts(fault_server.dsn) == (25, 25)


async def test_two_writers_replaying_copies_of_one_spool_store_each_row_once(fault_server, tmp_path):
    # Two writers replaying the same spooled batches at once (two copies of one spool: a backup restored beside
    # the original), with rows the server refuses (a CHECK of the user's): both take each batch apart at the same
    # time. A part the other writer has just committed is refused by the ledger's key (23505); it used to be cut
    # in two again and its halves stored under new ids, a second time. Now the ledger's refusal means "stored".
    db = await _open_then_down(fault_server, settings(tmp_path, batch_max_rows=2_000))
    n = 12_000
    assert await db.insert_book_ticker_snapshots(tickers(n)) == n
    await db.close(timeout=0.5)
    assert db.writer_stats("book_tickers")["batches_spooled"] > 0
    spool, copy = tmp_path / "spool", tmp_path / "spool-copy"
    shutil.copytree(spool, copy)
    await fault_server.start_again()
    conn = await asyncpg.connect(fault_server.dsn)
    try:
        await conn.execute("ALTER TABLE book_tickers ADD CONSTRAINT not_5 CHECK (update_id % 997 <> 5)")
    finally:
        await conn.close()
    refused = sum(1 for i in range(n) if i % 997 == 5)
    a = DatabaseManager(fault_server.dsn, settings=settings(tmp_path))
    b = DatabaseManager(fault_server.dsn, settings=settings(tmp_path, spool_dir=str(copy)))
    await asyncio.gather(a.initialize(), b.initialize())
    try:
        await asyncio.gather(a.flush(timeout=120), b.flush(timeout=120))
    finally:
        await asyncio.gather(a.close(), b.close())
    assert await _counts(fault_server.dsn) == (10 + n - refused, 10 + n - refused)


async def test_a_spool_directory_has_one_writer_at_a_time(dsn, tmp_path):
    # Another process holding the spool directory (a second daemon started with the same spool_dir): the manager
    # refuses to start, saying so, instead of replaying and deleting that process's batches. Once the holder is
    # gone (here killed with SIGKILL: the kernel drops its lock), the directory is free.
    spool = tmp_path / "spool" / "balances"  # (the last table's: the writers started before it let theirs go)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sys, time; from hftdb.store.spool import Spool; "
        f"Spool({str(spool)!r}, max_bytes=1 << 20).open(); print('held', flush=True); time.sleep(300)",
        stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 60)).strip() == b"held"
        db = DatabaseManager(dsn, settings=settings(tmp_path))
        with pytest.raises(ConfigError, match=rf"spool_dir {spool}: in use by another writer \(process {holder.pid}\)"):
            await db.initialize()
    finally:
        holder.kill()
        await holder.wait()
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        assert await db.insert_book_ticker_snapshots(tickers(10)) == 10
        other = DatabaseManager(dsn, settings=settings(tmp_path))
        with pytest.raises(ConfigError, match="in use by another writer"):
            await other.initialize()
        await db.flush()
    assert await _counts(dsn) == (10, 10)


async def _sync_rep(conn: asyncpg.Connection, on: bool) -> None:
    # With a synchronous standby named that never connects, a COMMIT is written and flushed locally, then waits
    # (wait_event SyncRep) for the standby: terminated there, the transaction is committed and its client gets an
    # error instead of the answer, an outcome it cannot know.
    if on:
        await conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    else:
        await conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
    await conn.execute("SELECT pg_reload_conf()")


#: The backends whose COMMIT is flushed locally and waits for the standby (see :func:`_sync_rep`).
_COMMIT_WAITING = "FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND query ILIKE 'COMMIT%'"


async def _lose_commit_answers(conn: asyncpg.Connection) -> int:
    """Terminate every backend whose COMMIT waits for the standby: each of those transactions is committed, and
    its client never hears so. Returns how many."""
    return await conn.fetchval(f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) {_COMMIT_WAITING}")


async def _lose_a_commit_answer(conn: asyncpg.Connection, *, pause: float = 0.01) -> int:
    """:func:`_lose_commit_answers` as soon as a COMMIT waits (a hang guard of 1,000 looks); how many it ended."""
    for _ in range(1_000):
        ended = await _lose_commit_answers(conn)
        if ended:
            return ended
        await asyncio.sleep(pause)
    return 0


@contextlib.asynccontextmanager
async def _manager_beside_admin(
    server: EmbeddedServer, cfg: Settings
) -> AsyncIterator[tuple[DatabaseManager, asyncpg.Connection]]:
    """A manager with its symbols registered (:func:`_register`), and an admin connection of the test's own."""
    conn = await asyncpg.connect(server.dsn)
    try:
        async with DatabaseManager(server.dsn, settings=cfg) as db:
            await _register(db)
            yield db, conn
    finally:
        conn.terminate()  # (never raises, also after the test killed the server under it)


async def test_commits_whose_answer_was_lost_count_as_committed(fault_server, tmp_path):
    # A commit the server carried out but whose answer never reached the writer: the writer retries after a look
    # in the ledger, which shows the batches stored, so they are not sent again. They are counted as committed
    # (they are, by this writer), so the counters add up: accepted = committed. They were counted as neither.
    async with _manager_beside_admin(fault_server, settings(tmp_path, batch_max_rows=500)) as (db, conn):
        await _sync_rep(conn, True)
        try:
            assert await db.insert_book_ticker_snapshots(tickers(3_000)) == 3_000
            ended = await _lose_a_commit_answer(conn)
        finally:
            await _sync_rep(conn, False)
        assert ended > 0
        await db.flush(timeout=60)
        stats = db.writer_stats("book_tickers")
    assert stats["duplicates_skipped"] > 0
    assert (stats["rows_accepted"], stats["rows_committed"]) == (3_010, 3_010)
    assert await _counts(fault_server.dsn) == (3_010, 3_010)


async def test_batches_taken_apart_while_commits_lose_their_answers_store_each_row_once(fault_server, tmp_path):
    # Two batches, each with a row the server refuses, taken apart part by part while nearly every part's COMMIT
    # loses its answer (the backend ended after the commit, see _sync_rep): after each such outage the ledger
    # tells which parts are stored. Every other row is stored once, and each refused row is counted once.
    async with _manager_beside_admin(fault_server, settings(tmp_path, batch_max_rows=500, linger_ms=0.0)) as (db, conn):
        await conn.execute("ALTER TABLE book_tickers ADD CONSTRAINT refused CHECK (update_id NOT IN (100, 700))")
        await _sync_rep(conn, True)
        ended = 0
        try:
            assert await db.insert_book_ticker_snapshots(tickers(1_000)) == 1_000
            for _ in range(3_000):  # (a hang guard)
                if (await _counts(fault_server.dsn))[0] == 1_008:
                    break
                # A part's COMMIT loses its answer; a new connection's staging table (DDL, which commits too) is
                # let through by turning the standby off for a moment.
                ended += await _lose_commit_answers(conn)
                if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"):
                    await _sync_rep(conn, False)
                    await _sync_rep(conn, True)
                await asyncio.sleep(0.01)
        finally:
            await _sync_rep(conn, False)
        await db.flush(timeout=60)
        stats = db.writer_stats("book_tickers")
    assert ended > 1
    assert stats["rejects"] == {"db_23514": 2}
    assert await _counts(fault_server.dsn) == (1_008, 1_008)
    # Parts whose answer was lost count as committed once the ledger shows them stored: the counters add up.
    assert (stats["rows_accepted"], stats["rows_committed"]) == (1_010, 1_008)


async def test_a_dropped_batch_the_server_had_stored_counts_as_committed_not_dropped(fault_server, tmp_path):
    # drop_oldest: while the database is down, a full buffer drops its oldest batches, counted in rows_dropped. The
    # oldest is the one whose commit was cut off, and that commit may have gone through (its answer lost): its rows
    # are stored, yet they were counted as dropped (stored + dropped > accepted). Once the database is back the
    # ledger settles it: they count as committed.
    cfg = settings(tmp_path, batch_max_rows=500, buffer_max_rows=1_000, full_policy="drop_oldest", spool_dir=None)
    async with _manager_beside_admin(fault_server, cfg) as (db, conn):
        await _sync_rep(conn, True)
        accepted = await db.insert_book_ticker_snapshots(tickers(500))
        for _ in range(1_000):  # (a hang guard) until the batch's COMMIT is flushed and waits for the standby
            if await conn.fetchval(f"SELECT count(*) {_COMMIT_WAITING}"):
                break
            await asyncio.sleep(0.01)
        await fault_server.kill()  # (the commit is in the WAL: recovery keeps it; the writer never hears of it)
        auto = fault_server.data_dir / "postgresql.auto.conf"
        auto.write_text("".join(line for line in auto.read_text().splitlines(keepends=True)
                                if not line.startswith("synchronous_standby_names")))
        for _ in range(30):
            accepted += await db.insert_book_ticker_snapshots(tickers(100, start_id=accepted))
            await asyncio.sleep(0.005)
        assert db.writer_stats("book_tickers")["rows_dropped"] > 0
        await fault_server.start_again()
        await db.flush(timeout=60)
        stats = db.writer_stats("book_tickers")
    total, distinct = await _counts(fault_server.dsn)
    assert total == distinct == 10 + accepted - stats["rows_dropped"]
    assert (stats["rows_accepted"], stats["rows_committed"]) == (10 + accepted, total)


async def test_a_batch_taken_apart_before_an_outage_is_not_taken_apart_again(fault_server, tmp_path):
    # Three batches with a refused row each: the first attempt fails on the server's refusal, and the writer takes
    # the batches apart. An outage (a part's COMMIT losing its answer) while it is on the third, after it finished
    # the second in the same pass: it used to take the second apart again, refusing and counting its bad row a
    # second time. A row of the third batch is slowed (pg_sleep in the CHECK) to hold that moment open.
    async with _manager_beside_admin(fault_server, settings(tmp_path, batch_max_rows=500, linger_ms=0.0)) as (db, conn):
        await conn.execute("CREATE FUNCTION slow_ok() RETURNS boolean LANGUAGE sql AS"
                           " 'SELECT pg_sleep(0.3) IS NOT NULL OR true'")
        await conn.execute("ALTER TABLE book_tickers ADD CONSTRAINT refused CHECK ("
                           "update_id NOT IN (100, 600, 1100) AND (update_id <> 1000 OR slow_ok()))")
        assert await db.insert_book_ticker_snapshots(tickers(1_500)) == 1_500
        try:
            for _ in range(3_000):  # (a hang guard)
                second = await conn.fetchval("SELECT count(*) FROM book_tickers WHERE update_id BETWEEN 500 AND 999")
                if second == 499:
                    break
                await asyncio.sleep(0.002)
            await _sync_rep(conn, True)
            ended = await _lose_a_commit_answer(conn, pause=0.005)
        finally:
            await _sync_rep(conn, False)
        await db.flush(timeout=60)
        stats = db.writer_stats("book_tickers")
    assert ended == 1
    assert stats["rejects"] == {"db_23514": 3}
    assert await _counts(fault_server.dsn) == (1_507, 1_507)


async def test_a_login_the_server_refuses_midway_keeps_the_rows_until_it_is_let_in(fault_server, tmp_path, caplog):
    # The role loses its login while the writer runs (a rotated password, pg_hba, NOLOGIN): retrying cannot fix
    # it, an operator can. The rows wait, nothing is rejected, the log says what is wrong at ERROR; once the login
    # works again every row is stored once. It was taken for a fault of the rows ("retrying a few times").
    admin = await asyncpg.connect(fault_server.dsn)
    try:
        await admin.execute("CREATE ROLE hftdb_w LOGIN SUPERUSER")
        parts = urlsplit(fault_server.dsn)
        role_dsn = urlunsplit(parts._replace(netloc="hftdb_w@" + parts.netloc.rpartition("@")[2]))
        cfg = settings(tmp_path, retry_initial_ms=10.0, retry_max_ms=50.0)
        async with DatabaseManager(role_dsn, settings=cfg) as db:
            await _register(db)
            await admin.execute("ALTER ROLE hftdb_w NOLOGIN")
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'hftdb_w'")
            assert await db.insert_book_ticker_snapshots(tickers(500)) == 500
            for _ in range(2_000):  # (a hang guard)
                if db.writer_stats("book_tickers")["retries"] >= 12:
                    break
                await asyncio.sleep(0.01)
            stats = db.writer_stats("book_tickers")
            assert stats["retries"] >= 12 and stats["rejects"] == {} and stats["rows_committed"] == 10
            refused = [r for r in caplog.records if r.levelname == "ERROR" and "refuses" in r.getMessage()]
            assert refused and "28000" in refused[0].getMessage(), [r.getMessage() for r in caplog.records][-5:]
            await admin.execute("ALTER ROLE hftdb_w LOGIN")
            await db.flush(timeout=60)
            stats = db.writer_stats("book_tickers")
        assert stats["rejects"] == {} and stats["rows_committed"] == 510
        assert await _counts(fault_server.dsn) == (510, 510)
    finally:
        await admin.close()

"""A writer killed (SIGKILL) during a real outage leaves exactly a prefix of what it accepted.

A child process (tests/crash_writer.py) ingests book tickers numbered 1, 2, 3, ... in the order its writer accepts
them, against a private server. The server is stopped; the child goes on accepting rows, which spool while commits
fail; the child is killed at some point of the outage; the server comes back and a new manager replays the spool.
What is stored must then be update ids 1..k, each once, with k at least what the child had reported durable
(committed or spooled) before it died, and no more lost than the bound the README states. The same holds when
the writer is closed during an outage with its spool full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from hftdb import DatabaseManager, ExchangeName
from hftdb.db.server import EmbeddedServer

from conftest import with_database
from helpers import settings, tickers

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("crash_writer.py")
BATCH_ROWS = 200
WAIT_S = 60.0
NEW_IDS = 10**9  # update ids of the rows the recovering run adds


class _Child:
    """The writer process and what it last reported."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.accepted = self.durable = self.spooled = self.retries = 0
        self.full = self.stalled = self.ended = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            words = line.decode().split()
            if words[0] == "progress":
                self.accepted, self.durable, self.spooled, self.retries = map(int, words[1:])
            elif words[0] == "full":
                self.full = True
            elif words[0] == "stalled":
                self.stalled = True
            async with self._changed:
                self._changed.notify_all()
        self.ended = True
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, what: str, cond: Callable[[], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: cond() or self.ended), WAIT_S)
        if not cond():
            await self.proc.wait()
            pytest.fail(f"the writer process ended before {what}:\n{self.stderr.read_text()[-3000:]}")

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader


async def _start_child(dsn: str, tmp_path: Path, writer: dict, **extra: object) -> _Child:
    config = {"tmp": str(tmp_path), "writer": writer, "chunk": 50, "pause_s": 0.002, **extra}
    stderr = tmp_path / "child.stderr"
    with stderr.open("wb") as err:  # the child keeps its own copy of the descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), dsn, json.dumps(config),
            stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL,
        )
    return _Child(proc, stderr)


@pytest.fixture(scope="module")
async def crash_server(tmp_path_factory):
    """A private server for this module's tests, which stop it and start it again (one initdb, not five)."""
    server = EmbeddedServer(tmp_path_factory.mktemp("crashpg") / "data")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def crash_dsn(crash_server):
    """A fresh database on ``crash_server``, which the test may stop; it runs again after the test."""
    name = "crash_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(crash_server.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield with_database(crash_server.dsn, name)
    if crash_server.pid is None:  # the test failed during the outage
        await crash_server.start_again()
    conn = await asyncpg.connect(crash_server.dsn)
    try:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _replay_committed_first(dsn: str) -> bool:
    """Whether every batch of the new run's rows (receipt times after every spooled row's) committed after every
    replayed batch."""
    conn = await asyncpg.connect(dsn)
    try:
        new_from = await conn.fetchval("SELECT min(recv_ts) FROM book_tickers WHERE update_id >= $1", NEW_IDS)
        return await conn.fetchval(
            """SELECT (SELECT min(committed_at) FROM ingest_batches WHERE min_recv_ts >= $1)
                      >= (SELECT max(committed_at) FROM ingest_batches WHERE max_recv_ts < $1)""", new_from)
    finally:
        await conn.close()


async def _spooling(db: DatabaseManager) -> None:
    while db.writer_stats("book_tickers")["batches_spooled"] == 0:
        await asyncio.sleep(0.01)


async def _stored_ids(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT update_id FROM book_tickers ORDER BY update_id")]
    finally:
        await conn.close()


# Where in the outage the writer dies, and the writer settings it runs with.
KILL_POINTS = {
    # As soon as the first commit failed and the writer spooled what it held.
    "first_failure": ({}, lambda c: c.retries >= 1 and c.spooled >= 1, {}),
    # Well into the outage, after many spool files.
    "after_spills": ({}, lambda c: c.spooled >= 15, {}),
    # Keeping a few sealed batches in memory: they must be the newest ones.
    "keep_in_memory": ({"memory_max_batches": 3}, lambda c: c.spooled >= 10, {}),
    # In the middle of writing a spool file (stalled in its fsync, before the rename).
    "mid_spool_write": ({}, lambda c: c.stalled, {"stall_spool_write": 6}),
    # The spool is full and the buffer too: full_policy "raise" refuses rows.
    "spool_full": ({"spool_max_bytes": 8 * BATCH_ROWS * 80, "buffer_max_rows": 2_000, "full_policy": "raise"},
                   lambda c: c.full, {}),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
async def test_sigkill_during_outage_leaves_a_prefix(crash_server, crash_dsn, tmp_path, point):
    overrides, reached, extra = KILL_POINTS[point]
    writer = {"batch_max_rows": BATCH_ROWS, "batch_max_age_ms": 20.0, **overrides}
    child = await _start_child(crash_dsn, tmp_path, writer, **extra)
    try:
        await child.wait_until("committing rows", lambda: child.durable >= 1_000)
        await crash_server.kill()
        await child.wait_until(f"the kill point {point}", lambda: reached(child))
        accepted, durable = child.accepted, child.durable
    finally:
        with contextlib.suppress(ProcessLookupError):
            await child.kill()
    spool = tmp_path / "spool" / "book_tickers"
    if point == "mid_spool_write":
        assert list(spool.glob("*.tmp")), "the kill did not land inside a spool write"
    await crash_server.start_again()

    async with DatabaseManager(crash_dsn, settings=settings(tmp_path, **writer)) as db:
        # New rows at once: the spooled ones must still be committed before them.
        await db.insert_book_ticker_snapshots(tickers(100, start_id=NEW_IDS))
        await db.flush(timeout=WAIT_S)
        replayed = db.writer_stats("book_tickers")["batches_replayed"]
    ids = await _stored_ids(crash_dsn)
    assert ids[-100:] == list(range(NEW_IDS, NEW_IDS + 100))
    assert await _replay_committed_first(crash_dsn)
    ids = ids[:-100]
    k = len(ids)
    assert ids == list(range(1, k + 1)), "what survived is not a prefix of what was accepted"
    assert k >= durable, f"rows the writer held durable were lost: {k} stored, {durable} reported durable"
    assert replayed > 0
    assert not [p for p in spool.iterdir() if p.name != ".lock"]  # (the directory's lock file stays)
    if point == "spool_full":
        bound = overrides["buffer_max_rows"]  # the spool full, what memory may hold
    else:
        # The README's bound: the current batch, memory_max_batches sealed batches, and the one being spooled.
        bound = (overrides.get("memory_max_batches", 0) + 2) * BATCH_ROWS
    assert accepted - k <= bound, f"{accepted - k} rows lost, more than the newest rows in memory ({bound})"


async def test_close_with_a_full_spool_keeps_a_prefix(crash_server, crash_dsn, tmp_path, caplog):
    """Closing during an outage with the spool full: a later batch that would still fit is not spooled past an
    earlier one that does not (it would leave a hole); both are counted lost instead."""
    # 1,000-row batches are ~97 kB on disk: ten fill the 1 MB spool with ~25 kB to spare, which a 1-row batch fits.
    cfg = settings(tmp_path, batch_max_rows=1_000, spool_max_bytes=1_000_000)
    db = DatabaseManager(crash_dsn, settings=cfg)
    await db.initialize()
    await db.insert_exchange(ExchangeName.BINANCE_SPOT)
    sent = await db.insert_book_ticker_snapshots(tickers(10, start_id=1))
    await db.flush(timeout=WAIT_S)
    await crash_server.kill()
    sent += await db.insert_book_ticker_snapshots(tickers(1_000, start_id=sent + 1))
    await asyncio.wait_for(_spooling(db), WAIT_S)  # the outage's first commit must fail before batches spool
    for _ in range(14):
        sent += await db.insert_book_ticker_snapshots(tickers(1_000, start_id=sent + 1))
    assert db.writer_stats("book_tickers")["batches_spooled"] == 10 and db.writer_stats("book_tickers")["rows_in_memory"] == 5_000
    sent += await db.insert_book_ticker_snapshots(tickers(1, start_id=sent + 1))
    await db.close(timeout=0.5)
    dropped = db.writer_stats("book_tickers")["rows_dropped"]
    assert dropped == 5_001
    assert "no room to spool" in caplog.text
    await crash_server.start_again()
    async with DatabaseManager(crash_dsn, settings=cfg) as db:
        await db.flush(timeout=WAIT_S)
    assert await _stored_ids(crash_dsn) == list(range(1, sent - dropped + 1))


async def test_unwritable_spool_during_outage_keeps_rows_in_memory(crash_server, crash_dsn, tmp_path, caplog):
    """A spool that cannot be written (here its directory is replaced by a file) neither fails the producers'
    calls nor stops the age timer: batches wait in memory, and all commit once the database is back."""
    cfg = settings(tmp_path, batch_max_rows=200, batch_max_age_ms=20.0)
    spool = tmp_path / "spool" / "book_tickers"
    async with DatabaseManager(crash_dsn, settings=cfg) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sent = await db.insert_book_ticker_snapshots(tickers(10, start_id=1))
        await db.flush(timeout=WAIT_S)
        shutil.rmtree(spool)
        spool.write_bytes(b"")
        await crash_server.kill()
        sent += await db.insert_book_ticker_snapshots(tickers(200, start_id=sent + 1))
        await asyncio.wait_for(_logged(caplog, "could not write to the spool"), WAIT_S)
        for _ in range(5):
            sent += await db.insert_book_ticker_snapshots(tickers(150, start_id=sent + 1))
        # The age timer seals the last 150 rows while commits fail: it tries to spool them and must survive that.
        await asyncio.wait_for(_sealed_all(db, sent - 10), WAIT_S)
        assert db.writer_stats("book_tickers")["batches_spooled"] == 0
        spool.unlink()
        spool.mkdir()
        await crash_server.start_again()
        await db.flush(timeout=WAIT_S)
    assert "task _ager failed" not in caplog.text
    assert await _stored_ids(crash_dsn) == list(range(1, sent + 1))


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    while text not in caplog.text:
        await asyncio.sleep(0.01)


async def _sealed_all(db: DatabaseManager, rows: int) -> None:
    # Every row in a sealed batch (the current one empty), all of them still in memory.
    while (stats := db.writer_stats("book_tickers"))["rows_in_memory"] != rows or stats["rows_unsealed"]:
        await asyncio.sleep(0.01)

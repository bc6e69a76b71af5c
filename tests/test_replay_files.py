"""``ingest-file`` over many frames and several files: idempotent against what any writer stored before,
in time order across files, compressed captures, hostile lines, and the command's summary and exit code.

Captures are generated Binance USD-M combined-stream bookTicker frames (unique rising ``u`` per symbol), so
every frame is one row and rows can be counted exactly.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import sys
import zlib
from decimal import Decimal
from pathlib import Path

import asyncpg
import msgspec
import pytest

from hftdb import DatabaseManager
from hftdb.config import load_settings
from hftdb.errors import DatabaseUnavailableError, StateError, ValidationError
from hftdb.exchanges.binance import BinanceAdapter
from hftdb.exchanges.intake import Intake
from hftdb.exchanges.runner import StreamRunner
from hftdb.models import ExchangeName, now_us
import helpers
from hftdb.ops.replay import (DISORDER_US, MAX_LINE_BYTES, ReplayTuning, check_files, ingest_file, ingest_files,
                              replay_frames)

USDM = ExchangeName.BINANCE_USDM
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def settings():
    base = load_settings(environ={})
    return msgspec.structs.replace(base, writer=msgspec.structs.replace(base.writer, spool_dir=None))


def frames(first: int, n: int, *, t0_ms: int | None = None, step_ms: int = 10) -> list[bytes]:
    """Frames ``first`` .. ``first + n - 1`` of one endless capture: frame i is symbol i % 3 with u = 1000 + i,
    exchange time t0 + i * step (t0: an hour ago, so the rows land in partitions that exist)."""
    t0 = t0_ms if t0_ms is not None else T0_MS
    out = []
    for i in range(first, first + n):
        s = SYMBOLS[i % 3]
        t = t0 + i * step_ms
        out.append(json.dumps({"stream": f"{s.lower()}@bookTicker", "data": {
            "e": "bookTicker", "u": 1000 + i, "s": s, "b": f"{100 + i % 7}.5", "B": f"{1 + i % 11}",
            "a": f"{101 + i % 7}.5", "A": "2", "T": t, "E": t + 3}}, separators=(",", ":")).encode())
    return out


T0_MS = (now_us() // 1000) - 3_600_000


def write(path: Path, lines: list[bytes], *, opener=open) -> Path:
    with opener(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return path


async def stored_ids(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT update_id FROM book_tickers ORDER BY update_id")]
    finally:
        await conn.close()


async def _count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")  # table: a name written in this file
    finally:
        await conn.close()


def ids(first: int, n: int) -> list[int]:
    return list(range(1000 + first, 1000 + first + n))


async def replay(db, *paths, **kw):
    return await ingest_files(db, list(paths), exchange=USDM, channels=["bookTicker"], **kw)


@pytest.mark.parametrize("step_ms", [1, 10], ids=["block-within-a-window", "block-over-10s"])
@pytest.mark.parametrize("order", ["older-first", "newer-first"])
async def test_a_capture_that_half_overlaps_what_a_replay_stored_writes_only_the_rest(dsn, tmp_path, order, step_ms):
    # A block spread over more than 10 s of exchange time is checked key by key, a narrower one by its window.
    a = write(tmp_path / "a.jsonl", frames(0, 3000, step_ms=step_ms))
    b = write(tmp_path / "b.jsonl", frames(1500, 3000, step_ms=step_ms))
    first, second = (a, b) if order == "older-first" else (b, a)
    async with DatabaseManager(dsn, settings=settings()) as db:
        (r1,) = await replay(db, first)
        assert r1.committed["book_tickers"] == 3000 and r1.duplicates == 0
        (r2,) = await replay(db, second)
        # Newer first: the second replay writes its first half (new) before meeting the stored half.
        assert r2.committed["book_tickers"] == 1500 and r2.duplicates == 1500
        (r3,) = await replay(db, a)  # and once more, all stored
        assert r3.committed["book_tickers"] == 0 and r3.duplicates == 3000
    assert await stored_ids(dsn) == ids(0, 4500)


async def test_rows_stored_live_by_a_feed_are_not_written_again(dsn, tmp_path):
    live = frames(0, 2000)
    async with DatabaseManager(dsn, settings=settings()) as db:
        await _store_live(db, live)
        assert await stored_ids(dsn) == ids(0, 2000)
        # A capture of the same stream, a minute longer on each side.
        capture = write(tmp_path / "capture.jsonl", frames(0, 4000))
        (r,) = await replay(db, capture)
        assert r.committed["book_tickers"] == 2000 and r.duplicates == 2000
    assert await stored_ids(dsn) == ids(0, 4000)


async def test_a_frame_far_out_of_order_is_still_found_stored(dsn, tmp_path):
    # Beyond DISORDER_US before its file's first frame, a row is looked up in book_tickers itself.
    step = 10
    late = DISORDER_US // 1000 // step + 500  # frames: the first one of the second file is this far ahead
    async with DatabaseManager(dsn, settings=settings()) as db:
        await replay(db, write(tmp_path / "old.jsonl", frames(0, 30)))
        # The file starts with one late frame of one symbol, then the old stretch of all three: the other two
        # symbols' old frames pass admission (nothing newer of theirs seen yet) and must be found stored.
        lines = frames(late, 1) + frames(0, 30) + frames(late + 1, 29)
        (r,) = await replay(db, write(tmp_path / "mixed.jsonl", lines))
        assert r.committed["book_tickers"] == 30 and r.duplicates == 30
    assert await stored_ids(dsn) == ids(0, 30) + ids(late, 30)


async def test_a_frame_far_ahead_of_its_file_end_is_still_found_stored(dsn, tmp_path):
    # Stored rows sent after a plain file's last block (less DISORDER_US) are not copied; a frame of the file
    # that lies there is looked up in book_tickers itself.
    ahead = json.loads(frames(1, 1)[0])  # ETHUSDT, ten minutes ahead of everything else, lowest id
    ahead["data"].update(u=999, T=T0_MS + 600_000, E=T0_MS + 600_003)
    ahead = json.dumps(ahead).encode()
    body = frames(0, 8000)  # > 1 MiB: the end of the file read for its newest time does not hold the second line
    async with DatabaseManager(dsn, settings=settings()) as db:
        await replay(db, write(tmp_path / "ahead.jsonl", [ahead]))
        (r,) = await replay(db, write(tmp_path / "capture.jsonl", body[:1] + [ahead] + body[1:]))
        assert r.committed["book_tickers"] == 8000 and r.duplicates == 1
    assert await stored_ids(dsn) == [999] + ids(0, 8000)


def test_tuning_refuses_sizes_that_cannot_work():
    for kw, name in (({"read_bytes": 0}, "read_bytes"), ({"block_bytes": -1}, "block_bytes"),
                     ({"ahead_rows": -1}, "ahead_rows"), ({"read_bytes": 1.5}, "read_bytes")):
        with pytest.raises(ValueError, match=name):
            ReplayTuning(**kw)


async def test_a_replay_parses_no_further_ahead_of_the_commits_than_it_is_told(dsn, tmp_path):
    base = settings()
    small = msgspec.structs.replace(base, writer=msgspec.structs.replace(
        base.writer, batch_max_rows=50, commit_max_rows=100))
    for first, ahead, bounded in ((0, 0, False), (3000, 100, True)):  # ahead_rows 0: no bound
        path = write(tmp_path / f"capture-{first}.jsonl", frames(first, 3000))
        held: list[int] = []
        async with DatabaseManager(dsn, settings=small) as db:
            def progress(done: int, total: int) -> None:
                held.append(db.writer_stats("book_tickers")["rows_in_memory"])

            r = await ingest_file(db, path, exchange=USDM, channels=["bookTicker"], progress=progress,
                                  tuning=ReplayTuning(read_bytes=4096, ahead_rows=ahead))
        assert r.committed["book_tickers"] == 3000 and r.duplicates == 0
        assert len(held) > 20
        assert (max(held) <= ahead) is bounded, held
    assert await stored_ids(dsn) == ids(0, 6000)


async def test_several_files_and_a_directory_replay_in_time_order_as_one_stream(dsn, tmp_path):
    d = tmp_path / "captures"
    d.mkdir()
    # Names sort against time: files are ordered by their first frame's exchange time.
    write(d / "1-last.jsonl", frames(2000, 1000))
    write(d / "2-first.jsonl.gz", frames(0, 1000), opener=gzip.open)
    write(d / "3-middle.jsonl", frames(900, 1200))  # overlaps both neighbours
    write(d / ".hidden", [b"not a capture"])
    seen = []
    async with DatabaseManager(dsn, settings=settings()) as db:
        results = await replay(db, d, progress=seen.append)
    assert [Path(r.path).name for r in results] == ["2-first.jsonl.gz", "3-middle.jsonl", "1-last.jsonl"]
    assert [(r.frames, r.committed["book_tickers"], r.duplicates) for r in results] == [
        (1000, 1000, 0), (1200, 1100, 100), (1000, 900, 100)]
    assert await stored_ids(dsn) == ids(0, 3000)
    assert seen[-1].frames == 3200 and seen[-1].bytes_done == seen[-1].bytes_total
    assert [s.file_index for s in seen] == sorted(s.file_index for s in seen)


async def test_zstd_captures_replay(dsn, tmp_path):
    zstandard = pytest.importorskip("zstandard", reason="zstd captures need the optional zstandard package "
                                                         "(pip install 'hftdb[zstd]'; the test extra has it)")
    path = tmp_path / "capture.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(frames(0, 5000)) + b"\n"))
    async with DatabaseManager(dsn, settings=settings()) as db:
        r = await ingest_file(db, path, exchange=USDM, channels=["bookTicker"])
    assert r.committed["book_tickers"] == 5000 and not r.rejects
    assert await stored_ids(dsn) == ids(0, 5000)


async def test_hostile_lines_are_rejects_and_the_rest_of_the_file_is_stored(dsn, tmp_path):
    good = frames(0, 40)
    huge = b'{"stream":"btcusdt@bookTicker","data":{"s":"' + b"A" * (MAX_LINE_BYTES + 10) + b'"}}'
    lines = good[:10] + [b"\xff\xfe not utf-8 \xc3", b'{"s":"BTC\x00USDT"}', huge] + good[10:20] + [huge] + good[20:]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines))  # and no newline at the end
    async with DatabaseManager(dsn, settings=settings()) as db:
        r = await ingest_file(db, path, exchange=USDM, channels=["bookTicker"])
    assert r.committed["book_tickers"] == 40
    assert r.rejects.pop("line_too_long") == 2
    assert sum(r.rejects.values()) == 2  # the two undecodable frames, by the parser's reasons
    assert r.frames == 42
    assert await stored_ids(dsn) == ids(0, 40)


async def test_a_truncated_gzip_file_keeps_what_came_before_the_damage(dsn, tmp_path):
    whole = gzip.compress(b"\n".join(frames(0, 20000)) + b"\n")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) * 3 // 4])
    async with DatabaseManager(dsn, settings=settings()) as db:
        r = await ingest_file(db, path, exchange=USDM, channels=["bookTicker"])
    assert r.rejects.get("corrupt_file") == 1
    n = r.committed["book_tickers"]
    assert 0 < n < 20000 and await stored_ids(dsn) == ids(0, n)


def cut_gzip(path: Path, n: int) -> tuple[Path, int]:
    """A gzip capture of frames 0 .. n - 1 cut in the middle of its compressed stream (much less than a read of
    the replay's), and how many whole lines what is left holds: those zcat recovers."""
    whole = gzip.compress(b"\n".join(frames(0, n)) + b"\n")
    cut = whole[: len(whole) // 2]
    path.write_bytes(cut)
    return path, zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(cut).count(b"\n")


async def test_a_truncated_gzip_file_smaller_than_a_read_keeps_every_line_before_the_damage(dsn, tmp_path):
    path, whole_lines = cut_gzip(tmp_path / "cut.jsonl.gz", 3000)
    assert 0 < whole_lines < 3000
    async with DatabaseManager(dsn, settings=settings()) as db:
        r = await ingest_file(db, path, exchange=USDM, channels=["bookTicker"])
    assert r.frames == r.committed["book_tickers"] == whole_lines
    # The line the damage cut is part of it: one corrupt_file reject, not also a frame the parser refused.
    assert r.rejects == {"corrupt_file": 1} and r.damaged and not r.failed
    assert await stored_ids(dsn) == ids(0, whole_lines)


async def test_a_second_replay_into_the_same_venue_at_once_is_refused(dsn, tmp_path):
    path = write(tmp_path / "a.jsonl", frames(0, 10))
    async with DatabaseManager(dsn, settings=settings()) as db:
        ex = await db.insert_exchange(USDM)
        conn = await asyncpg.connect(dsn)
        try:
            # What a replay in another process holds while it runs.
            await conn.execute("SELECT pg_advisory_lock($1)", int.from_bytes(b"hftdbrp\x00", "big") | (ex.id & 0xFF))
            with pytest.raises(StateError, match="another ingest-file is replaying into binance_usdm"):
                await replay(db, path)
        finally:
            await conn.close()
        (r,) = await replay(db, path)
        assert r.committed["book_tickers"] == 10


async def test_unreadable_inputs_are_refused_before_anything_is_written(dsn, tmp_path):
    good = write(tmp_path / "good.jsonl", frames(0, 10))
    empty = tmp_path / "empty"
    empty.mkdir()
    async with DatabaseManager(dsn, settings=settings()) as db:
        with pytest.raises(ValidationError, match="no such file"):
            await replay(db, good, tmp_path / "missing.jsonl")
        with pytest.raises(ValidationError, match="holds no files"):
            await replay(db, good, empty)
    assert await stored_ids(dsn) == []


# -- the command ----------------------------------------------------------------------------------------------------


async def cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hftdb.ops.cli", *args, cwd=str(cwd), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(dsn, tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    e.update(HFTDB_DSN=dsn, HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"), HFTDB_METRICS_PORT=str(free_port()))
    return e


async def test_the_command_prints_a_summary_per_file_and_fails_when_a_file_gave_nothing(dsn, env, tmp_path):
    a = write(tmp_path / "a.jsonl", frames(0, 300))
    b = write(tmp_path / "b.jsonl.gz", frames(200, 200) + [b"not json"], opener=gzip.open)
    args = ("ingest-file", "--exchange", "binance_usdm", "--channel", "bookTicker")
    code, out, err = await cli(*args, str(b), str(a), env=env, cwd=tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{a}: 300 frames: rows written book_tickers=300, funding_rates=0, balances=0; "
                               "rejects none; 0 duplicates skipped, 0 gaps (")
    assert lines[1].startswith(f"{b}: 201 frames: rows written book_tickers=100, funding_rates=0, balances=0; "
                               "rejects invalid_json=1; 100 duplicates skipped, 0 gaps (")
    assert lines[2].startswith("total, 2 files: 501 frames: rows written book_tickers=400, funding_rates=0, "
                               "balances=0; rejects invalid_json=1; 100 duplicates skipped, 0 gaps (")
    assert "100% (" in err and "file 2/2, 501 frames" in err and "frames/s, ETA" in err
    assert "Traceback" not in err

    # Already stored: nothing written, but every frame found stored, so not a failure.
    code, out, _ = await cli(*args, str(a), env=env, cwd=tmp_path)
    assert code == 0 and "book_tickers=0," in out and "300 duplicates skipped" in out

    # No frame of this file gives a row: exit 1, named.
    bad = write(tmp_path / "bad.jsonl", [b"not json", b'{"stream":"x@bookTicker","data":{"s":"BTCUSDT"}}', b"[]"])
    code, out, err = await cli(*args, str(bad), str(a), env=env, cwd=tmp_path)
    assert code == 1, (out, err)
    assert f"{bad}: FAILED: none of its 3 frames gave a row that is stored" in out
    assert "Traceback" not in err
    assert await stored_ids(dsn) == ids(0, 400)


async def test_the_command_fails_on_a_damaged_file_after_storing_what_came_before(dsn, env, tmp_path):
    cut, whole_lines = cut_gzip(tmp_path / "cut.jsonl.gz", 3000)
    a = write(tmp_path / "a.jsonl", frames(3000, 10))
    args = ("ingest-file", "--exchange", "binance_usdm", "--channel", "bookTicker")
    code, out, err = await cli(*args, str(cut), str(a), env=env, cwd=tmp_path)
    assert code == 1, (out, err)
    assert out.startswith(f"{cut}: {whole_lines:,} frames: rows written book_tickers={whole_lines:,}, ")
    assert "rejects corrupt_file=1;" in out
    assert (f"{cut}: DAMAGED: the file is truncated or corrupt (see the log); its {whole_lines:,} frames before "
            "the damage were replayed, the rest is lost") in out
    assert f"{a}: 10 frames: rows written book_tickers=10," in out and "Traceback" not in err
    assert await stored_ids(dsn) == ids(0, whole_lines) + ids(3000, 10)


async def _count_distinct(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*), count(DISTINCT (symbol_id, update_id)) FROM book_tickers")
        return row[0], row[1]
    finally:
        await conn.close()


@pytest.mark.slow
async def test_a_replay_goes_on_through_a_server_restart_and_an_outage(fault_server, tmp_path):
    """New rows need no stored-row query: the replay outlives its own connection, the writer spools through the
    outage, and every frame is stored once."""
    n = 200_000
    path = write(tmp_path / "capture.jsonl", frames(0, n))
    cfg = helpers.settings(tmp_path, batch_max_rows=500, commit_max_rows=2000, buffer_max_rows=5000)
    async with DatabaseManager(fault_server.dsn, settings=cfg) as db:
        stats = lambda: db.writer_stats("book_tickers")  # noqa: E731
        task = asyncio.create_task(ingest_file(db, path, exchange=USDM, channels=["bookTicker"],
                                               tuning=ReplayTuning(read_bytes=1 << 16)))
        while stats()["rows_committed"] < 20_000 and not task.done():
            await asyncio.sleep(0.002)
        await fault_server.restart(mode="immediate")
        committed = stats()["rows_committed"]
        while stats()["rows_committed"] < committed + 20_000 and not task.done():
            await asyncio.sleep(0.002)
        await fault_server.kill()
        while not stats()["batches_spooled"] and not task.done():
            await asyncio.sleep(0.01)
        await fault_server.start_again()
        r = await asyncio.wait_for(task, 120)
        await db.flush(timeout=60)
        assert stats()["retries"] > 0, "the restarts never reached the writer: the test tested nothing"
    assert r.frames == n and not r.rejects and r.duplicates == 0
    assert await _count_distinct(fault_server.dsn) == (n, n)


@pytest.mark.slow
async def test_a_replay_that_loses_its_check_says_so_and_a_second_run_finishes(fault_server, tmp_path):
    """Rows older than the stored ones are checked against the replay's snapshot, which lives in its session: a
    restart there stops the replay with a typed error, and the same command run again stores the rest once."""
    n = 200_000
    cfg = helpers.settings(tmp_path, batch_max_rows=500, commit_max_rows=2000)
    async with DatabaseManager(fault_server.dsn, settings=cfg) as db:
        # The newest tenth is stored first, so every block of the file before it is checked by a query.
        await ingest_file(db, write(tmp_path / "tail.jsonl", frames(n - n // 10, n // 10)), exchange=USDM,
                          channels=["bookTicker"])
        path = write(tmp_path / "capture.jsonl", frames(0, n))
        reached = asyncio.Event()

        def progress(done: int, total: int) -> None:
            if done >= n // 20:
                reached.set()

        task = asyncio.create_task(ingest_file(db, path, exchange=USDM, channels=["bookTicker"], progress=progress,
                                               tuning=ReplayTuning(read_bytes=1 << 16)))
        await asyncio.wait([task, asyncio.create_task(reached.wait())], return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), "the replay ended before the restart: the test tested nothing"
        await fault_server.restart(mode="immediate")
        with pytest.raises(DatabaseUnavailableError, match="run the same ingest-file again"):
            await asyncio.wait_for(task, 120)
        await db.flush(timeout=60)
        r = await ingest_file(db, path, exchange=USDM, channels=["bookTicker"])
        assert r.frames == n and not r.rejects and r.duplicates > 0
    assert await _count_distinct(fault_server.dsn) == (n, n)


async def _store_live(db, lines: list[bytes], *, venue=USDM, channel="bookTicker", step_ms=10) -> None:
    # What a live connection does with frames: its own intake, stamped on receipt (a few ms after the exchange
    # time of the last of each hundred, frames ``step_ms`` apart from T0_MS), pushed to the same DatabaseManager.
    adapter = BinanceAdapter(venue, db.feed_sink(), symbols=SYMBOLS, channels=(channel,))
    await db.insert_exchange(adapter.exchange_record())
    runner = StreamRunner(adapter)
    intake = Intake(runner, adapter.new_parser())
    for i in range(0, len(lines), 100):
        recv = (T0_MS + (i + 99) * step_ms + 5) * 1000
        await runner.push(intake.process([(recv, lines[i:i + 100])]))
    await db.flush()


def _archiving(tmp_path: Path):
    # Minute partitions, archived to Parquet under tmp_path: every minute an hour old is sealed.
    base = settings()
    return msgspec.structs.replace(
        base, storage=msgspec.structs.replace(base.storage, partition_interval_s=60),
        archive=msgspec.structs.replace(base.archive, root=str(tmp_path / "archive")))


@pytest.mark.parametrize("step_ms", [1, 10], ids=["block-within-a-window", "block-over-10s"])
async def test_rows_moved_to_the_archive_are_not_written_again(dsn, tmp_path, step_ms):
    pytest.importorskip("pyarrow")
    async with DatabaseManager(dsn, settings=_archiving(tmp_path)) as db:
        await _store_live(db, frames(0, 3000, step_ms=step_ms))
        # Every minute of them is sealed: all go to the Parquet tier, none stays in PostgreSQL.
        report = (await db.archive_partitions(0.0001, tables=["book_tickers"]))["book_tickers"]
        assert report.archived and report.rows == 3000
        assert await stored_ids(dsn) == []
        (r,) = await replay(db, write(tmp_path / "capture.jsonl", frames(0, 3000, step_ms=step_ms)))
        assert r.committed["book_tickers"] == 0 and r.duplicates == 3000
        # A capture that goes on past what was archived writes only the rest.
        (r,) = await replay(db, write(tmp_path / "longer.jsonl", frames(0, 4500, step_ms=step_ms)))
        assert r.committed["book_tickers"] == 1500 and r.duplicates == 3000
        history = []
        for sym in SYMBOLS:
            history += await db.get_book_ticker_history(USDM, sym, start=T0_MS * 1000 - 10**9, end=now_us() + 1)
        assert sorted(h.update_id for h in history) == ids(0, 4500)
    assert await stored_ids(dsn) == ids(3000, 1500)


async def test_funding_and_balances_moved_to_the_archive_are_not_written_again(dsn, fixtures_dir, tmp_path):
    pytest.importorskip("pyarrow")
    mark = json.loads((fixtures_dir / "binance_usdm_markPrice_doc.json").read_text())
    account = json.loads((fixtures_dir / "binance_spot_outboundAccountPosition_doc.json").read_text())

    def funding(n: int) -> list[bytes]:  # one update a second on each of two symbols
        return [json.dumps(dict(mark, s=SYMBOLS[i % 2], E=T0_MS + 500 * i, r=f"0.000{i % 7}{i % 2}")).encode()
                for i in range(n)]

    def balances(n: int) -> list[bytes]:  # an account update a second, two assets each
        out = []
        for i in range(n):
            frame = json.loads(json.dumps(account))
            frame["event"]["E"] = T0_MS + 1000 * i
            frame["event"]["B"] = [{"a": "ETH", "f": f"{10 + i}.5", "l": "0.000000"},
                                   {"a": "BTC", "f": "1", "l": "0.25"}]
            out.append(json.dumps(frame).encode())
        return out

    async with DatabaseManager(dsn, settings=_archiving(tmp_path)) as db:
        await _store_live(db, funding(240), channel="markPrice@1s", step_ms=500)
        await _store_live(db, balances(120), venue=ExchangeName.BINANCE_SPOT, step_ms=1000)
        reports = await db.archive_partitions(0.0001, tables=["funding_rates", "balances"])
        assert (reports["funding_rates"].rows, reports["balances"].rows) == (240, 240)
        assert await _count(dsn, "funding_rates") == 0 == await _count(dsn, "balances")

        r = await ingest_file(db, write(tmp_path / "mark.jsonl", funding(240)), exchange=USDM,
                              channels=["markPrice@1s"])
        assert r.committed["funding_rates"] == 0 and r.duplicates == 240 and not r.rejects
        # A capture that goes on past what was archived writes only the rest.
        r = await ingest_file(db, write(tmp_path / "mark2.jsonl", funding(300)), exchange=USDM,
                              channels=["markPrice@1s"])
        assert r.committed["funding_rates"] == 60 and r.duplicates == 240

        r = await ingest_file(db, write(tmp_path / "acct.jsonl", balances(120)), exchange="binance_spot",
                              channels=["bookTicker"])
        assert r.committed["balances"] == 0 and r.duplicates == 240 and not r.rejects
        r = await ingest_file(db, write(tmp_path / "acct2.jsonl", balances(150)), exchange="binance_spot",
                              channels=["bookTicker"])
        assert r.committed["balances"] == 60 and r.duplicates == 240
        rates = []
        for sym in SYMBOLS[:2]:
            rates += await db.get_funding_rate_history(USDM, sym, start=T0_MS * 1000 - 10**9, end=now_us() + 1)
        assert len(rates) == 300 == len({(f.symbol, f.exchange_ts) for f in rates})
        eth = await db.get_balance_history("binance_spot", "ETH", start=T0_MS * 1000 - 10**9, end=now_us() + 1)
        assert sorted(b.free for b in eth) == sorted(Decimal(f"{10 + i}.5") for i in range(150))
    assert await _count(dsn, "funding_rates") == 60 == await _count(dsn, "balances")


@pytest.mark.parametrize(("account", "message"), [
    ("", "--account (account=) is empty: every balance row would be rejected as account_invalid"),
    ("main\tsub", "--account (account=) 'main\\tsub' holds a character that is not printable"),
    ("a" * 300, "--account (account=) is 300 characters long, over 64"),
], ids=["empty", "tab", "long"])
async def test_an_account_the_writer_would_refuse_is_refused_before_the_database(tmp_path, account, message):
    # It was found only after every frame was replayed: each balance row rejected, then FAILED.
    frames = tmp_path / "wallet.jsonl"
    frames.write_text('{"topic": "wallet", "data": []}\n')
    with pytest.raises(ValidationError) as caught:
        check_files([frames], exchange="bybit_linear", channels=["tickers"], account=account)
    assert str(caught.value).startswith(message), caught.value
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN="postgresql://u@127.0.0.1:1/db", HFTDB_DATABASE_CONNECT_TIMEOUT="1")
    code, out, err = await cli("ingest-file", "--exchange", "bybit_linear", "--channel", "tickers",
                               "--account", account, str(frames), env=env, cwd=tmp_path)
    assert code == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hftdb: {message}"), err
    check_files([frames], exchange="bybit_linear", channels=["tickers"], account="x" * 64)  # at the limit: taken


async def test_channel_sets_the_sequencing_and_selects_no_frames_as_documented(dsn, fixtures_dir):
    # --channel was read as a filter ("a bookTicker file ingested with --channel markPrice stores its book
    # tickers"): it is the subscription the frames came from, and the help says what that does and does not do.
    code, out, _ = await cli("ingest-file", "--help", env=dict(os.environ), cwd=Path(__file__).parent)
    assert code == 0 and "it selects no frames" in " ".join(out.split()), out
    books = (fixtures_dir / "binance_usdm_bookTicker_combined_recorded.jsonl").read_text().splitlines()[:20]
    ticker = json.dumps(json.loads((fixtures_dir / "bybit_linear_tickers_snapshot_doc.json").read_text()))
    async with DatabaseManager(dsn, settings=settings()) as db:
        r = await replay_frames(db, books, exchange="binance_usdm", channels=["markPrice@1s"])
        assert r.committed["book_tickers"] > 0  # not a filter: the book tickers are stored
        # On Bybit an orderbook channel named: a tickers frame's quote (no update id) is dropped, its funding kept.
        r = await replay_frames(db, [ticker], exchange="bybit_linear", channels=["orderbook.1"])
        assert r.committed["book_tickers"] == 0 and r.committed["funding_rates"] == 1, r
        r = await replay_frames(db, [ticker], exchange="bybit_linear", channels=["tickers"])
        assert r.committed["book_tickers"] == 1, r

"""The ``hftdb`` command end to end: each command run as a process against a real PostgreSQL.

Most tests point the command at a fresh database of the session's server (``HFTDB_DSN``); the backup and restore
test runs with no DSN, so the command starts the embedded server itself and uses its pg_dump and pg_restore.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from hftdb.db import partitions
from hftdb.db.target import with_database
from hftdb.models import now_us
from hftdb.db.server import EmbeddedServer

pytestmark = pytest.mark.timeout(180)

COMMANDS = ("run", "migrate", "status", "health", "stats", "cleanup", "archive", "reset", "backup", "restore", "validate",
            "optimize", "ingest-file", "simulate")
FRAMES = (  # fixture file, venue, channel, book rows it holds, duplicates among them
    ("okx_tickers_recorded.jsonl", "okx_spot", "tickers", 3, 0),
    ("binance_spot_bookTicker_combined_recorded.jsonl", "binance_spot", "bookTicker", 12, 0),
    ("bybit_linear_orderbook1_recorded.jsonl", "bybit_linear", "orderbook.1", 4, 1),
)
# Two of the OKX capture's five rows are a dated future and a swap: not instruments of okx_spot.
REJECTS = {"okx_tickers_recorded.jsonl": "wrong_market=2"}
# Nothing listens on port 1: a command that reaches for this database fails with "cannot connect" (after the
# connection's retries, for some), so a test that gets another error knows the command never tried.
UNREACHABLE = "postgresql://hftdb:s3cret@127.0.0.1:1/nowhere"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The command's environment: no stray HFTDB_* settings, a private spool, a metrics port nobody serves."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    e.update(HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"), HFTDB_METRICS_PORT=str(free_port()))
    return e


async def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hftdb.ops.cli", *args, cwd=str(cwd), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # timed out (a command that should have refused its arguments runs on)
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


def one_error_line(err: str, contains: str) -> None:
    """A user mistake: one line on stderr, starting with hftdb:, naming the problem; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hftdb: ") and contains in lines[0], err
    assert "Traceback" not in err


async def fetchval(dsn: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_help_covers_every_command(env, tmp_path):
    code, out, _ = await cli("--help", env=env, cwd=tmp_path)
    assert code == 0
    for command in COMMANDS:
        assert command in out
    for command in COMMANDS:
        code, out, err = await cli(command, "--help", env=env, cwd=tmp_path)
        assert code == 0 and "usage: hftdb" in out and "--config" in out, (command, err)
    code, _, err = await cli("nope", env=env, cwd=tmp_path)
    assert code == 2 and "invalid choice" in err and "Traceback" not in err


async def test_migrate_up_status_down(dsn, env, tmp_path):
    env["HFTDB_DSN"] = dsn
    code, out, _ = await cli("migrate", "status", env=env, cwd=tmp_path)
    assert code == 0 and out.split() == ["0001", "initial", "pending", "0002", "latest_packed", "pending",
                                         "0003", "latest_exchange_by_writer", "pending", "0004", "latest_packed_first",
                                         "pending"]
    code, out, _ = await cli("migrate", "up", env=env, cwd=tmp_path)
    assert (code, out.strip()) == (0, "applied 0001, 0002, 0003, 0004; now at version 4")
    code, out, _ = await cli("migrate", "up", env=env, cwd=tmp_path)
    assert (code, out.strip()) == (0, "already up to date (version 4)")
    code, out, _ = await cli("migrate", "status", env=env, cwd=tmp_path)
    assert code == 0 and "applied" in out and out.rstrip().endswith("checksum ok")
    code, _, err = await cli("migrate", "down", "--to", "0", env=env, cwd=tmp_path)
    assert code == 1
    one_error_line(err, "reverts 0004_latest_packed_first, 0003_latest_exchange_by_writer, 0002_latest_packed,"
                       " 0001_initial and drops what they hold; add --yes")
    assert await fetchval(dsn, "SELECT to_regclass('book_tickers') IS NOT NULL")
    code, out, _ = await cli("migrate", "down", "--to", "0", "--yes", env=env, cwd=tmp_path)
    assert (code, out.strip()) == (0, "reverted 0004, 0003, 0002, 0001; now at version 0")
    assert not await fetchval(dsn, "SELECT to_regclass('book_tickers') IS NOT NULL")
    code, _, err = await cli("migrate", "down", env=env, cwd=tmp_path)
    assert code == 2 and "--to" in err


async def test_validate_finds_drift(dsn, env, tmp_path):
    env["HFTDB_DSN"] = dsn
    assert (await cli("migrate", "up", env=env, cwd=tmp_path))[0] == 0
    code, out, _ = await cli("validate", env=env, cwd=tmp_path)
    assert code == 0 and out.startswith("valid: ") and "9 tables" in out

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE my_notes (id int)")
        await conn.execute("CREATE INDEX symbols_base ON symbols (base)")
        code, out, _ = await cli("validate", env=env, cwd=tmp_path)
        assert code == 0  # additions hftdb does not use are warnings
        assert "warning  table my_notes is not created by any migration" in out
        assert "warning  index symbols.symbols_base" in out

        await conn.execute("ALTER TABLE symbols ALTER COLUMN tick_size TYPE double precision")
        await conn.execute("ALTER TABLE book_tickers DROP COLUMN update_id")
        await conn.execute("ALTER TABLE exchanges DROP CONSTRAINT exchanges_market_check")
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited'")
        code, out, _ = await cli("validate", env=env, cwd=tmp_path)
    finally:
        await conn.close()
    assert code == 1
    assert "PROBLEM  column symbols.tick_size is double precision, expected numeric" in out
    assert "PROBLEM  column book_tickers.update_id is missing (expected bigint)" in out
    assert "PROBLEM  constraint exchanges.exchanges_market_check is missing" in out
    assert "PROBLEM  migration 0001 (initial) is applied but its file is missing or edited" in out
    assert "PROBLEM  migration 0002 (latest_packed) is applied but its file is missing or edited" in out
    assert "PROBLEM  migration 0003 (latest_exchange_by_writer) is applied but its file is missing or edited" in out
    assert "PROBLEM  migration 0004 (latest_packed_first) is applied but its file is missing or edited" in out
    assert out.rstrip().endswith("invalid: 7 problem(s)")


async def test_validate_of_a_database_without_the_hftdb_schema_is_not_valid(dsn, env, tmp_path):
    # It said "valid: ... matches migrations 0001..0000 (0 tables: ...)" and exited 0 for an empty database.
    env["HFTDB_DSN"] = dsn
    code, out, err = await cli("validate", env=env, cwd=tmp_path)
    assert code == 1, (out, err)
    assert "PROBLEM  no hftdb schema here: no migration is applied (run `hftdb migrate up`)" in out
    assert out.rstrip().endswith("invalid: 1 problem(s)") and "valid: " not in out.replace("invalid: ", "")
    assert "Traceback" not in err


async def test_ingest_file_then_stats_optimize_and_cleanup(dsn, env, tmp_path, fixtures_dir):
    env["HFTDB_DSN"] = dsn
    total = 0
    for name, venue, channel, rows, dups in FRAMES:
        code, out, err = await cli("ingest-file", "--exchange", venue, "--channel", channel, str(fixtures_dir / name),
                                   env=env, cwd=tmp_path)
        assert code == 0, err
        assert (f"rows written book_tickers={rows}, funding_rates=0, balances=0; rejects {REJECTS.get(name, 'none')}; "
                f"{dups} duplicates skipped") in out
        assert out.startswith(f"{fixtures_dir / name}: ")
        assert "100%" in err and "frames/s, ETA" in err  # progress
        total += rows
    bad = tmp_path / "bad.jsonl"
    bad.write_text('not json\n\n{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT",'
                   '"instId":"BTC-USDT","askPx":"nan","askSz":"1","bidPx":"1","bidSz":"1","ts":"1652459224956"}]}\n')
    code, out, _ = await cli("ingest-file", "--exchange", "okx_spot", "--channel", "tickers", str(bad), env=env, cwd=tmp_path)
    assert code == 1  # no frame of the file gave a stored row
    assert out.startswith(f"{bad}: 2 frames: rows written book_tickers=0") and "rejects ask_price_nan=1, invalid_json=1" in out
    assert f"{bad}: FAILED: none of its 2 frames gave a row that is stored" in out
    assert await fetchval(dsn, "SELECT count(*) FROM book_tickers") == total

    code, out, _ = await cli("stats", env=env, cwd=tmp_path)
    assert code == 0
    for heading in ("Tables", "Rows per day", "Partitions", "Writers and caches: the daemon is not answering",
                    "Slowest queries (pg_stat_statements", "unavailable: pg_stat_statements is not installed"):
        assert heading in out
    code, out, _ = await cli("stats", "--exact", "--json", env=env, cwd=tmp_path)
    report = json.loads(out)
    assert sum(report["rows_per_day"]["book_tickers"].values()) == total
    assert len(report["partitions"]["book_tickers"]) == 3 and report["daemon"] is None

    code, out, err = await cli("optimize", env=env, cwd=tmp_path)
    assert code == 0 and "analyzed 9 tables" in out and "indexes: all valid" in out
    assert "[3/9] ANALYZE book_tickers" in err
    code, out, _ = await cli("stats", "--json", env=env, cwd=tmp_path)
    assert json.loads(out)["tables"]["book_tickers"]["rows"] == total  # ANALYZE made the estimate exact here

    old = now_us() - int(timedelta(days=60).total_seconds() * 1_000_000)
    conn = await asyncpg.connect(dsn)
    try:
        made = await partitions.ensure_partitions(conn, "book_tickers", old, old, interval_s=86_400)
    finally:
        await conn.close()
    code, out, _ = await cli("cleanup", "--dry-run", env=env, cwd=tmp_path)
    assert code == 0 and f"would drop {made[0]}" in out and "would drop 1 partition(s) older than 30 days" in out
    assert await fetchval(dsn, "SELECT to_regclass($1) IS NOT NULL", made[0])
    code, out, err = await cli("cleanup", env=env, cwd=tmp_path)
    assert code == 0 and f"dropped {made[0]}" in out and "[1/3] book_tickers" in err
    assert not await fetchval(dsn, "SELECT to_regclass($1) IS NOT NULL", made[0])
    assert await fetchval(dsn, "SELECT count(*) FROM book_tickers") == total
    code, _, err = await cli("cleanup", "--retention-days", "0", env=env, cwd=tmp_path)
    assert code == 1
    one_error_line(err, "--retention-days must be > 0")


async def test_reset_requires_yes_then_empties_everything(dsn, env, tmp_path, fixtures_dir):
    env["HFTDB_DSN"] = dsn
    name, venue, channel, rows, _ = FRAMES[0]
    assert (await cli("ingest-file", "--exchange", venue, "--channel", channel, str(fixtures_dir / name),
                      env=env, cwd=tmp_path))[0] == 0
    spooled = tmp_path / "spool" / "book_tickers" / "00000001-stale.spool"
    spooled.parent.mkdir(parents=True)
    spooled.write_bytes(b"batch meant for the old database")
    code, _, err = await cli("reset", env=env, cwd=tmp_path)
    assert code == 1
    one_error_line(err, "add --yes")
    assert await fetchval(dsn, "SELECT count(*) FROM book_tickers") == rows
    code, out, _ = await cli("reset", "--yes", env=env, cwd=tmp_path)
    assert code == 0 and "reverted 4 and applied 4 migration(s); 1 spooled batch(es) discarded" in out
    assert await fetchval(dsn, "SELECT count(*) FROM book_tickers") == 0
    assert await fetchval(dsn, "SELECT count(*) FROM exchanges") == 0
    assert not spooled.exists()


async def test_status_and_health(dsn, env, tmp_path):
    env["HFTDB_DSN"] = dsn
    code, out, _ = await cli("health", "--db-only", env=env, cwd=tmp_path)
    assert code == 0 and out.splitlines()[0].startswith("database: ok") and out.rstrip().endswith("healthy")
    assert "schema: ok, version 0 (empty); 4 pending" in out
    code, out, _ = await cli("health", env=env, cwd=tmp_path)
    assert code == 1 and "daemon: NOT RUNNING" in out and out.rstrip().endswith("unhealthy")
    code, out, _ = await cli("status", env=env, cwd=tmp_path)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["database", "schema", "daemon"]

    env.update(HFTDB_DSN="postgresql://hftdb:s3cret@127.0.0.1:1/nowhere", HFTDB_DATABASE_CONNECT_TIMEOUT="2")
    code, out, err = await cli("health", "--db-only", env=env, cwd=tmp_path)
    assert code == 1 and "database: UNREACHABLE" in out and "s3cret" not in out + err
    code, _, err = await cli("status", env=env, cwd=tmp_path)
    assert code == 1
    one_error_line(err, "cannot connect to postgresql://hftdb:***@127.0.0.1:1/nowhere")


async def test_mistakes_are_one_line(dsn, env, tmp_path, fixtures_dir):
    env["HFTDB_DSN"] = dsn
    frames = str(fixtures_dir / FRAMES[0][0])
    cases = [
        (("stats",), "the database has no hftdb schema yet: run `hftdb migrate up`"),
        (("backup", str(tmp_path / "no" / "such" / "dir" / "b.dump")), "does not exist"),
        (("backup", str(tmp_path)), "is a directory"),
        (("restore", str(tmp_path / "missing.dump")), "no such backup file"),
        (("restore", frames), "is not a backup pg_restore can read"),
        (("ingest-file", "--exchange", "okx", "--channel", "tickers", frames), "exchange must be one of"),
        (("ingest-file", "--exchange", "okx_spot", "--channel", "bookTicker", frames),
         "'bookTicker' is not a channel of okx_spot (its channels: bbo-tbt, tickers)"),
        (("ingest-file", "--exchange", "okx_spot", "--channel", "tickers", str(tmp_path / "none.jsonl")), "no such file"),
        (("--demo", "status"), "the demo database hftdb_demo does not exist yet"),
        (("restore", "--clean", frames), "add --yes"),
    ]
    for args, message in cases:
        code, _, err = await cli(*args, env=env, cwd=tmp_path)
        assert code == 1, (args, err)
        one_error_line(err, message)


async def test_an_embedded_data_dir_that_cannot_hold_a_cluster_is_one_line(env, tmp_path):
    # A directory of other files, or a file, was handed to initdb: pgserver's ERROR dump of the failed command, then
    # "CalledProcessError(1, [...initdb...]); see DIR/log", a log that did not exist.
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("not a cluster")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    cases = [
        (other, "[database] data_dir = " + repr(str(other)) + " is not empty (readme.txt) and holds no PostgreSQL"),
        (a_file, "[database] data_dir = " + repr(str(a_file)) + " is a file, not a directory"),
        (a_file / "pg", f"[database] data_dir = {str(a_file / 'pg')!r}: {a_file} is a file, not a directory"),
    ]
    for data_dir, message in cases:
        code, out, err = await cli("status", env={**env, "HFTDB_DATABASE_DATA_DIR": str(data_dir)}, cwd=tmp_path)
        assert (code, out) == (1, ""), err
        one_error_line(err, message)
    assert sorted(p.name for p in other.iterdir()) == ["readme.txt"]
    # A directory pgserver takes for a cluster (PG_VERSION) but whose server cannot start: pg_ctl's line and the
    # server log's reason, pointing at the log that exists, not the exception's repr.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "PG_VERSION").write_text("16\n")
    code, out, err = await cli("status", env={**env, "HFTDB_DATABASE_DATA_DIR": str(broken)}, cwd=tmp_path)
    assert code == 1, err
    one_error_line(err, f"could not start the embedded PostgreSQL in {broken}: pg_ctl: could not start server; "
                        "the server log says: ")
    assert err.rstrip().endswith(f"; see {broken / 'log'}") and (broken / "log").is_file()
    assert "CalledProcessError" not in err and "ERROR pgserver" not in err


async def test_ingest_file_refuses_a_named_pipe_instead_of_waiting_on_it(env, tmp_path, fixtures_dir):
    # A FIFO was opened for reading like a file of frames: the command blocked forever, waiting for a writer.
    env["HFTDB_DSN"] = UNREACHABLE
    pipe = tmp_path / "frames.pipe"
    os.mkfifo(pipe)
    frames = str(fixtures_dir / FRAMES[0][0])
    for paths in ([str(pipe)], [frames, str(pipe)]):
        code, _, err = await cli("ingest-file", "--exchange", "okx_spot", "--channel", "tickers", *paths, env=env,
                                 cwd=tmp_path, timeout=60)
        assert code == 1, err
        one_error_line(err, f"{pipe} is a named pipe (FIFO), not a regular file of frames")


async def test_backup_then_restore_into_a_fresh_database_on_the_embedded_server(tmp_path, env, fixtures_dir):
    env["HFTDB_DATABASE_DATA_DIR"] = str(tmp_path / "pg")  # no DSN: the command starts the embedded server
    for name, venue, channel, _, _ in FRAMES:
        code, _, err = await cli("ingest-file", "--exchange", venue, "--channel", channel, str(fixtures_dir / name),
                                 env=env, cwd=tmp_path)
        assert code == 0, err
    dump = tmp_path / "hftdb.ops.dump"
    code, out, err = await cli("backup", str(dump), env=env, cwd=tmp_path)
    assert code == 0, err
    assert out.startswith(f"backup written to {dump}") and "book_tickers 19" in out
    assert "dumped public.book_tickers_p" in err and dump.stat().st_size > 0
    assert not list(tmp_path.glob(".*.partial"))

    # A fresh database on the same server: the demo's, named for this test (created by restore).
    restored = dict(env, HFTDB_DEMO_DATABASE="restored")
    code, out, err = await cli("--demo", "restore", str(dump), env=restored, cwd=tmp_path)
    assert code == 0, err
    assert "migrations verified" in out and "restored public.book_tickers_p" in err
    code, _, err = await cli("--demo", "restore", str(dump), env=restored, cwd=tmp_path)
    assert code == 1
    one_error_line(err, "already holds hftdb tables; restore into an empty database")
    code, out, _ = await cli("--demo", "validate", env=restored, cwd=tmp_path)
    assert code == 0, out

    server = EmbeddedServer(tmp_path / "pg")
    admin = await server.start()
    try:
        original, copy = await asyncpg.connect(admin), await asyncpg.connect(with_database(admin, "restored"))
        try:
            tables = [r[0] for r in await original.fetch(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
                " ORDER BY 1")]
            assert "book_tickers" in tables and len(tables) >= 16
            for table in tables:  # names from the catalog of a database this test made
                want = await original.fetchval(f'SELECT count(*) FROM "{table}"')
                got = await copy.fetchval(f'SELECT count(*) FROM "{table}"')
                assert got == want, table
            assert await copy.fetchval("SELECT count(*) FROM book_tickers") == 19  # 3 + 12 + 4 (FRAMES)
            checksum = "SELECT md5(string_agg(b::text, ',' ORDER BY b::text)) FROM book_tickers b"
            assert await copy.fetchval(checksum) == await original.fetchval(checksum)
        finally:
            await original.close()
            await copy.close()
    finally:
        await server.stop()


async def test_simulate_serves_until_interrupted(env, tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hftdb.ops.cli", "simulate", "--rate", "20", "--symbols", "2", cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ports = {}
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "simulate exited early"
                if line.startswith("simulating"):
                    break
                if line.split() and line.split()[0] in ("binance_spot", "binance_usdm", "bybit", "okx"):
                    ports[line.split()[0]] = line.split()[1]
        assert set(ports) == {"binance_spot", "binance_usdm", "bybit", "okx"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{ports['binance_spot']}/api/v3/exchangeInfo") as resp:
                assert resp.status == 200
                assert [s["symbol"] for s in (await resp.json())["symbols"]] == ["BTCUSDT", "ETHUSDT"]
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip().splitlines()[-1].startswith("sent ")


async def test_ingest_file_is_callable_from_python(dsn, tmp_path, fixtures_dir):
    import msgspec

    from hftdb import DatabaseManager
    from hftdb.config import load_settings
    from hftdb.ops.replay import ingest_file

    base = load_settings(environ={})
    settings = msgspec.structs.replace(base, writer=msgspec.structs.replace(base.writer, spool_dir=None))
    seen: list[tuple[int, int]] = []
    async with DatabaseManager(dsn, settings=settings) as db:
        result = await ingest_file(db, fixtures_dir / "bybit_linear_orderbook1_recorded.jsonl", exchange="bybit_linear",
                                   channels=["orderbook.1"], progress=lambda done, total: seen.append((done, total)))
        assert result.frames == 5 and result.duplicates == 1 and result.rejects == {}
        assert result.committed == {"book_tickers": 4, "funding_rates": 0, "balances": 0}
        latest = await db.get_latest_book_tickers("bybit_linear")
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert latest and all(t.update_id is not None for t in latest)


async def test_cli_distribute_on_plain_postgresql_is_one_error_line(dsn, env, tmp_path):
    e = env
    e["HFTDB_DSN"] = dsn
    code, out, err = await cli("migrate", "up", env=e, cwd=tmp_path)
    assert code == 0, err
    code, out, err = await cli("distribute", env=e, cwd=tmp_path)
    assert code == 1
    one_error_line(err, "citus extension is not created")


async def test_days_that_are_not_a_sane_number_of_days_are_one_line(env, tmp_path):
    # Refused before the database is reached, with no traceback turning them into a cutoff.
    env.update(HFTDB_DSN=UNREACHABLE, HFTDB_ARCHIVE_ROOT=str(tmp_path / "archive"))
    for value in ("nan", "inf", "1e300", "36501", "0"):
        code, _, err = await cli("cleanup", "--retention-days", value, "--dry-run", env=env, cwd=tmp_path)
        assert code == 1, (value, err)
        one_error_line(err, "--retention-days must be > 0 and at most 36,500 days")
        code, _, err = await cli("archive", "--older-than-days", value, "--dry-run", env=env, cwd=tmp_path)
        assert code == 1, (value, err)
        one_error_line(err, "--older-than-days must be > 0 and at most 36,500 days")
    # The same values from the settings: one line too, whichever check (the config's or the command's) says it.
    for key, command in (("HFTDB_STORAGE_RETENTION_DAYS", "cleanup"), ("HFTDB_ARCHIVE_AFTER_DAYS", "archive"),
                         ("HFTDB_ARCHIVE_RETENTION_DAYS", "cleanup")):
        for value in ("inf", "1e300"):
            code, _, err = await cli(command, "--dry-run", env=dict(env, **{key: value}), cwd=tmp_path)
            assert code == 1, (key, value, err)
            one_error_line(err, key.split("_", 2)[2].lower())


async def test_simulate_refuses_arguments_out_of_range_before_building_anything(env, tmp_path):
    cases = [
        (("--port", "99999"), "--port must be 0 (free ports) or at most 65532"),
        (("--port", "-1"), "--port must be 0"),
        (("--port", "65534"), "--port must be 0"),
        (("--rate", "-5"), "--rate must be >= 0"),
        (("--rate", "nan"), "--rate must be >= 0"),
        (("--rate", "inf"), "--rate must be >= 0"),
        (("--rate", "1e9"), "at most 1,000,000 book updates per second"),
        (("--symbols", "0"), "--symbols must be between 1 and 20,000"),
        (("--symbols", "-3"), "--symbols must be between 1 and 20,000"),
        (("--funding-interval", "-1"), "--funding-interval must be > 0 seconds"),
        (("--funding-interval", "nan"), "--funding-interval must be > 0 seconds"),
        (("--funding-interval", "0"), "--funding-interval must be > 0 seconds"),
        # Last: without the check it takes all the memory there is before it would fail.
        (("--symbols", "100000000"), "--symbols must be between 1 and 20,000"),
    ]
    for args, message in cases:
        code, out, err = await cli("simulate", *args, env=env, cwd=tmp_path, timeout=30)
        assert code == 1, (args, out, err)
        one_error_line(err, message)
    code, _, err = await cli("simulate", env=dict(env, HFTDB_DEMO_SYMBOLS="0"), cwd=tmp_path, timeout=30)
    assert code == 1
    one_error_line(err, "symbols")


async def test_run_refuses_a_ledger_it_could_not_write_before_starting(env, tmp_path):
    env["HFTDB_DSN"] = UNREACHABLE
    code, _, err = await cli("run", "--ledger", str(tmp_path / "ledger.json"), env=env, cwd=tmp_path)
    assert code == 2 and "--ledger needs --demo" in err and "Traceback" not in err, err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, _, err = await cli("run", "--demo", "--ledger", str(a_file / "ledger.json"), env=env, cwd=tmp_path)
    assert code == 1
    one_error_line(err, f"cannot write --ledger {a_file / 'ledger.json'}: {a_file} is not a directory")
    code, _, err = await cli("--demo", "run", env=dict(env, HFTDB_DEMO_LEDGER_FILE=str(a_file / "deeper" / "l.json")),
                             cwd=tmp_path)
    assert code == 1
    one_error_line(err, "cannot write [demo] ledger_file")
    code, _, err = await cli("run", "--demo", "--ledger", str(tmp_path), env=env, cwd=tmp_path)
    assert code == 1
    one_error_line(err, f"--ledger {tmp_path} is a directory")


async def test_migrate_to_a_version_that_does_not_exist_is_refused(dsn, env, tmp_path):
    from hftdb.db.schema import load_migrations

    env["HFTDB_DSN"] = dsn
    versions = ", ".join(str(m.version) for m in load_migrations())
    for args in (("up", "--to", "999"), ("up", "--to", "-1"), ("down", "--to", "999", "--yes"),
                 ("down", "--to", "-1", "--yes")):
        code, out, err = await cli("migrate", *args, env=env, cwd=tmp_path)
        assert code == 1, (args, out, err)
        one_error_line(err, f"migrate {args[0]} --to {args[2]}: no migration has that version; "
                            f"the versions are {versions}")
    assert not await fetchval(dsn, "SELECT to_regclass('schema_migrations') IS NOT NULL")  # nothing applied
    code, out, err = await cli("migrate", "up", "--to", "2", env=env, cwd=tmp_path)
    assert (code, out.strip()) == (0, "applied 0001, 0002; now at version 2"), err
    code, out, err = await cli("migrate", "down", "--to", "999", "--yes", env=env, cwd=tmp_path)
    assert code == 1
    one_error_line(err, "(or 0: revert everything)")
    assert await fetchval(dsn, "SELECT max(version) FROM schema_migrations") == 2


async def test_ingest_file_checks_its_arguments_and_files_before_the_database(env, tmp_path, fixtures_dir):
    env["HFTDB_DSN"] = UNREACHABLE
    frames = str(fixtures_dir / FRAMES[0][0])
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("--exchange", "okx", "--channel", "tickers", frames), "exchange must be one of"),
        (("--exchange", "okx_spot", "--channel", "bookTicker", frames), "'bookTicker' is not a channel of okx_spot"),
        (("--exchange", "okx_spot", "--channel", "tickers", frames, str(tmp_path / "none.jsonl")),
         f"no such file: {tmp_path / 'none.jsonl'}"),
        (("--exchange", "okx_spot", "--channel", "tickers", str(empty)), f"{empty} holds no files"),
    ]
    for args, message in cases:
        code, _, err = await cli("ingest-file", *args, env=env, cwd=tmp_path)
        assert code == 1, (args, err)
        one_error_line(err, message)


async def test_the_daemon_of_another_database_is_not_taken_for_this_ones(dsn, pg_admin_dsn, env, tmp_path):
    # `run.py --demo` answers on the metrics port the live database's commands ask: its health, counters and
    # "running" are the demo database's, not the live one's.
    env["HFTDB_DSN"] = dsn
    live = urlsplit(dsn).path.lstrip("/")
    demo = f"{live}_demo"
    env.update(HFTDB_DEMO_DATABASE=demo, HFTDB_DEMO_RATE="20", HFTDB_DEMO_SYMBOLS="2")
    port = env["HFTDB_METRICS_PORT"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hftdb.ops.cli", "--demo", "run", cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(120), aiohttp.ClientSession() as session:
            while True:
                assert proc.returncode is None, "the demo daemon exited early"
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        other = f"the daemon on 127.0.0.1:{port} serves database {demo}, not {live}"

        code, out, err = await cli("health", env=env, cwd=tmp_path)
        assert code == 0 and f"daemon: ANOTHER DATABASE'S, {other}; this database is judged alone" in out, out + err
        assert "daemon: ok" not in out and "Traceback" not in err
        code, out, err = await cli("--demo", "health", env=env, cwd=tmp_path)
        assert code == 0 and "daemon: ok" in out, out + err  # its own database's daemon still counts
        code, out, err = await cli("status", env=env, cwd=tmp_path)
        assert code == 0 and f"daemon    not this database's: {other}" in out and "Traceback" not in err
        assert (await cli("migrate", "up", env=env, cwd=tmp_path))[0] == 0
        code, out, err = await cli("stats", env=env, cwd=tmp_path)
        assert code == 0 and f"Writers and caches: not shown, {other}" in out and "Writers (daemon" not in out
        assert "Traceback" not in err
        code, out, _ = await cli("stats", "--json", env=env, cwd=tmp_path)
        report = json.loads(out)
        assert report["daemon"] is None and report["daemon_elsewhere"] == other
        code, out, err = await cli("reset", "--yes", env=env, cwd=tmp_path)
        assert code == 0 and "reverted 4 and applied 4 migration(s)" in out, err
        code, _, err = await cli("--demo", "reset", "--yes", env=env, cwd=tmp_path)
        assert code == 1
        one_error_line(err, "the daemon is running")  # its own daemon does stop a reset
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(60):
                    await proc.communicate()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{demo}" WITH (FORCE)')  # a name this test made
        finally:
            await conn.close()


async def test_a_failed_backup_says_why_with_the_tools_detail_line(dsn, pg_admin_dsn, env, tmp_path):
    # pg_dump's error is followed by the line that explains it ("detail: Query was: ...", "detail: server
    # version: 16.2; pg_dump version: 15.20"); the message kept the error alone.
    from hftdb.db.server import bin_dir

    role, password = f"fb_{os.getpid()}_{now_us() % 10**9}", "s3cretPassw0rd"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("CREATE TABLE secret_stuff (x int)")
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")  # a name this test made
    finally:
        await admin.close()
    tools = tmp_path / "bin"  # the embedded server's own pg_dump, whatever PATH holds
    tools.mkdir()
    (tools / "pg_dump").symlink_to(bin_dir() / "pg_dump")
    parts = urlsplit(dsn)
    env.update(HFTDB_DSN=parts._replace(netloc=f"{role}:{password}@{parts.netloc.rsplit('@', 1)[1]}").geturl(),
               PATH=f"{tools}{os.pathsep}{env.get('PATH', '')}")
    try:
        code, out, err = await cli("backup", str(tmp_path / "b.dump"), env=env, cwd=tmp_path)
        assert code == 1, out + err
        one_error_line(err, "pg_dump failed: pg_dump: error: query failed: ERROR:  permission denied for table "
                            "secret_stuff; pg_dump: detail: Query was: LOCK TABLE public.secret_stuff")
        assert password not in out + err and not (tmp_path / "b.dump").exists()
    finally:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await conn.close()


async def test_restore_of_a_directory_says_it_is_one(env, tmp_path):
    env["HFTDB_DSN"] = UNREACHABLE  # the file is checked before the database is reached
    code, out, err = await cli("restore", str(tmp_path), env=env, cwd=tmp_path)
    assert (code, out) == (1, "")
    one_error_line(err, f"{tmp_path} is a directory, not a backup file")
    code, _, err = await cli("restore", str(tmp_path / "none.dump"), env=env, cwd=tmp_path)
    assert code == 1
    one_error_line(err, f"no such backup file: {tmp_path / 'none.dump'}")


async def test_archive_verify_of_a_day_or_table_with_nothing_archived_fails_as_restore_does(env, tmp_path):
    pytest.importorskip("pyarrow")
    root = tmp_path / "archive"
    root.mkdir()
    env.update(HFTDB_DSN=UNREACHABLE, HFTDB_ARCHIVE_ROOT=str(root))  # verify needs no database
    code, out, err = await cli("archive", "verify", env=env, cwd=tmp_path)
    assert code == 0 and "verified 0 file(s) of 0 archived partition(s)" in out, err  # an empty archive, as such
    for args, message in (
            (("--table", "book_tickers", "--date", "2026-01-02"),
             f"nothing of book_tickers is archived for 2026-01-02 under {root}"),
            (("--date", "2026-01-02"), f"nothing is archived for 2026-01-02 under {root}"),
            (("--table", "balances"), f"nothing of balances is archived under {root}")):
        code, out, err = await cli("archive", "verify", *args, env=env, cwd=tmp_path)
        assert (code, out) == (1, ""), (args, out, err)
        one_error_line(err, message)


async def test_a_table_never_analyzed_has_an_unknown_row_count_not_0(dsn, env, tmp_path, fixtures_dir):
    # reltuples is -1 until a table is first analyzed: `stats` showed "exchanges ~0" for a table of rows, and
    # hftdb_table_estimated_rows exported 0 for it.
    from hftdb import DatabaseManager
    from hftdb.service.metrics import render

    env["HFTDB_DSN"] = dsn
    name, venue, channel, _, _ = FRAMES[1]
    code, _, err = await cli("ingest-file", "--exchange", venue, "--channel", channel, str(fixtures_dir / name),
                             env=env, cwd=tmp_path)
    assert code == 0, err
    assert await fetchval(dsn, "SELECT count(*) FROM exchanges") > 0
    code, out, err = await cli("stats", "--json", env=env, cwd=tmp_path)
    assert code == 0 and "Traceback" not in err
    tables = json.loads(out)["tables"]
    assert tables["exchanges"]["rows"] is None and tables["symbols"]["rows"] is None
    code, out, _ = await cli("stats", env=env, cwd=tmp_path)
    (line,) = [line for line in out.splitlines() if line.split()[:1] == ["exchanges"]]
    assert line.split()[1] == "?", line

    async with DatabaseManager(dsn) as db:
        stats = await db.get_database_stats()
        assert stats["tables"]["exchanges"]["estimated_rows"] is None
        assert 'hftdb_table_estimated_rows{table="exchanges"}' not in render(stats)  # unknown: no sample
        assert 'hftdb_table_estimated_rows{table="balances"} 0' in render(stats)  # empty: known to hold none
        async with db.connection() as conn:
            await conn.execute("ANALYZE exchanges")
            n = await conn.fetchval("SELECT count(*) FROM exchanges")
        stats = await db.get_database_stats()
        assert stats["tables"]["exchanges"]["estimated_rows"] == n
        assert f'hftdb_table_estimated_rows{{table="exchanges"}} {n}' in render(stats)


async def test_dry_runs_without_pyarrow_fail_as_the_real_runs_do(dsn, env, tmp_path):
    # `cleanup --dry-run` and `archive --dry-run` promised to archive partitions that the real runs, without
    # pyarrow, refuse to touch.
    hide = tmp_path / "no_pyarrow"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(  # what `import pyarrow` meets where it is not installed
        "import sys\nsys.modules['pyarrow'] = None\n")
    env.update(HFTDB_DSN=dsn, PYTHONPATH=os.pathsep.join(p for p in (str(hide), env.get("PYTHONPATH")) if p))
    assert (await cli("migrate", "up", env=env, cwd=tmp_path))[0] == 0
    for args in (("cleanup", "--retention-days", "5"), ("cleanup", "--retention-days", "5", "--dry-run"),
                 ("archive",), ("archive", "--dry-run")):
        code, out, err = await cli(*args, env=env, cwd=tmp_path)
        assert (code, out) == (1, ""), (args, out, err)
        one_error_line(err, "the Parquet archive needs pyarrow: pip install 'hftdb[archive]'")
    # With the archive off, retention needs no pyarrow: its dry run lists what it would drop.
    code, out, err = await cli("cleanup", "--retention-days", "5", "--dry-run", env=dict(env, HFTDB_ARCHIVE_ROOT=""),
                               cwd=tmp_path)
    assert code == 0 and "would drop 0 partition(s) older than 5 days" in out, err

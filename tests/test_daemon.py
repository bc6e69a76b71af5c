"""The daemon end to end: run.py --demo as a real process, signals, the simulator's ledger against the database.

The demo streams all six venues from the in-process exchange simulator. At shutdown the daemon pauses the
simulator, lets it write what it queued, stops the feeds (every frame received is written) and writes the
simulator's ledger, so "every message sent up to the stop is in the database, once" is checked exactly: per
venue, channel and symbol, the set of message keys (update id, or exchange time in ms) the simulator sent
equals the keys stored, and no key is stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest

from hftdb.config import Settings, load_settings
from hftdb.service.daemon import Daemon
from hftdb.simulator.server import ExchangeSimulator
from hftdb.db.target import with_database
from hftdb.errors import ConfigError
from hftdb.service.metrics import family_names
from hftdb.models import ExchangeName as E
from hftdb.db.server import EmbeddedServer
from hftdb import venues

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
FUNDING_CHANNELS = frozenset(c for v in venues.VENUES for c in v.funding_channels)
VENUES = venues.NAMES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_") or k == "HFTDB_TEST_DSN"}
    env.pop("HFTDB_TEST_DSN", None)
    env.update(
        HFTDB_DATABASE_DATA_DIR=str(tmp_path / "pg"),
        HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"),
        HFTDB_METRICS_PORT=str(port),
        HFTDB_DAEMON_STATUS_INTERVAL_S="1",
        HFTDB_LOGGING_FORMAT="json",
        HFTDB_DEMO_RATE="40",
        HFTDB_DEMO_SYMBOLS="4",
        HFTDB_DEMO_FUNDING_INTERVAL_S="0.5",
        HFTDB_EXCHANGES_BALANCE_INTERVAL_S="1",
        **extra,
    )
    return env


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


async def poll(url: str, predicate, *, timeout: float, proc: asyncio.subprocess.Process | None = None) -> tuple[int, str]:
    """GET ``url`` until ``predicate(status, body)`` holds (the daemon's endpoints are the condition to wait on)."""
    last: tuple[int, str] | None = None
    async with asyncio.timeout(timeout):
        while True:
            if proc is not None and proc.returncode is not None:
                raise AssertionError(f"the daemon exited early with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                last = await get(url)
                if predicate(*last):
                    return last
            await asyncio.sleep(0.2)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus exposition."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)$"
    m = re.search(pattern, text, re.MULTILINE)
    return None if m is None else float(m.group(1))


_SAMPLE = re.compile(r'^[a-z_:][a-z0-9_:]*(\{([a-z_][a-z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+|NaN|[+-]Inf)$')


def assert_valid_exposition(text: str) -> None:
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert _SAMPLE.match(line), f"not a Prometheus sample line: {line!r}"


async def stored_keys(dsn: str) -> dict[tuple[str, str, str], list[int]]:
    """Message keys per (venue, kind, symbol) as the database holds them, duplicates kept."""
    conn = await asyncpg.connect(dsn)
    try:
        books = await conn.fetch(
            "SELECT e.name, s.symbol, b.update_id, (extract(epoch FROM b.exchange_ts) * 1000000)::bigint AS ets"
            " FROM book_tickers b JOIN symbols s ON s.id = b.symbol_id JOIN exchanges e ON e.id = s.exchange_id"
        )
        funding = await conn.fetch(
            "SELECT e.name, s.symbol, (extract(epoch FROM f.exchange_ts) * 1000000)::bigint AS ets"
            " FROM funding_rates f JOIN symbols s ON s.id = f.symbol_id JOIN exchanges e ON e.id = s.exchange_id"
        )
    finally:
        await conn.close()
    out: dict[tuple[str, str, str], list[int]] = {}
    for r in books:
        key = r["update_id"] if r["update_id"] is not None else r["ets"] // 1000
        out.setdefault((r["name"], "book", r["symbol"]), []).append(key)
    for r in funding:
        out.setdefault((r["name"], "funding", r["symbol"]), []).append(r["ets"] // 1000)
    return out


def ledger_keys(ledger: dict) -> dict[tuple[str, str, str], set[int]]:
    out: dict[tuple[str, str, str], set[int]] = {}
    for s in ledger["streams"]:
        kind = "funding" if s["channel"] in FUNDING_CHANNELS else "book"
        keys = out.setdefault((s["venue"], kind, s["symbol"]), set())
        for lo, hi in s["keys"]:
            keys.update(range(lo, hi + 1))
    return out


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            lines.append(json.loads(line))  # every line of the JSON log format is one JSON object
    return lines


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hftdb.ops.cli", *args, cwd=str(ROOT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def stop_daemon(proc: asyncio.subprocess.Process, sig: int, *, timeout: float = 60) -> tuple[bytes, bytes]:
    """Send ``sig`` to a daemon started by :func:`start_daemon` and wait for it to exit: (stdout, stderr)."""
    proc.send_signal(sig)
    async with asyncio.timeout(timeout):
        return await proc.communicate()


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill a daemon that a failed test left running."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def start_daemon(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "run.py"), "--demo", *args, cwd=str(ROOT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def test_demo_daemon_ingests_until_sigterm_then_holds_every_sent_message_once(tmp_path):
    port = free_port()
    ledger_path = tmp_path / "ledger.json"
    proc = await start_daemon(daemon_env(tmp_path, port), "--ledger", str(ledger_path))
    base = f"http://127.0.0.1:{port}"
    try:
        await poll(f"{base}/health", lambda st, _: st == 200, timeout=120, proc=proc)

        def ingested(st: int, body: str) -> bool:
            return st == 200 and all(
                (metric(body, "hftdb_writer_rows_committed_total", table=t) or 0) >= n
                for t, n in (("book_tickers", 600), ("funding_rates", 60), ("balances", 6))
            )

        _, text = await poll(f"{base}/metrics", ingested, timeout=120, proc=proc)
        assert_valid_exposition(text)
        families = set(family_names(text))
        for name in ("hftdb_feed_messages_total", "hftdb_feed_rows_total", "hftdb_feed_gaps_total",
                     "hftdb_feed_reconnects_total", "hftdb_writer_commit_seconds", "hftdb_writer_rows_pending",
                     "hftdb_database_up", "hftdb_table_bytes", "hftdb_cache_hits_total", "hftdb_demo_sent_messages_total"):
            assert name in families, name
        for venue in VENUES:
            assert metric(text, "hftdb_feed_up", venue=venue) == 1
            assert (metric(text, "hftdb_feed_messages_total", venue=venue) or 0) > 0
        assert metric(text, "hftdb_database_up") == 1
        dashboard = (ROOT / "docs" / "grafana-dashboard.json").read_text()
        used = set(re.findall(r"\b(hftdb_[a-z0-9_]+)", dashboard))
        assert used and used <= families | {f + "_bucket" for f in families}, sorted(used - families)
        status, body = await get(f"{base}/health")
        health = json.loads(body)
        assert status == 200 and health["ok"] and set(health["feeds"]) == set(VENUES)
        stats = json.loads((await get(f"{base}/stats"))[1])
        assert stats["mode"] == "demo" and stats["writers"]["book_tickers"]["rows_committed"] > 0

        # The hftdb command, sharing the daemon's configuration, reaches the daemon and its database.
        env = daemon_env(tmp_path, port)
        code, out, err = await run_cli(env, "--demo", "health")
        assert code == 0 and "daemon: ok, 6 feeds live" in out and out.rstrip().endswith("healthy"), out + err
        code, out, err = await run_cli(env, "--demo", "status")
        assert code == 0 and "daemon    demo at" in out and "healthy" in out, out + err
        assert all(venue in out for venue in VENUES)
        code, out, err = await run_cli(env, "--demo", "stats", "--json")
        assert code == 0, err
        daemon_part = json.loads(out)["daemon"]
        assert daemon_part["writers"]["book_tickers"]["rows_committed"] > 0
        assert daemon_part["caches"]["symbol_ids"]["hits"] > 0

        out, err = await stop_daemon(proc, signal.SIGTERM)
    finally:
        await reap(proc)
    stdout, stderr = out.decode(), err.decode()
    (tmp_path / "daemon.log").write_text(stderr)  # kept in the test's directory for a look after a failure
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    summary = stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("hftdb stopped after"), stdout
    logs = json_lines(stderr)
    status_lines = [r for r in logs if r["logger"] == "hftdb.service.status" and r.get("feed")]
    assert {r["feed"] for r in status_lines} == set(VENUES)
    line = status_lines[-1]
    for field in ("msgs_per_s", "rows", "queue_rows", "flush_p99_ms", "reconnects", "gaps", "rejects"):
        assert field in line
    assert "msg/s" in line["msg"] and "flush p99" in line["msg"]

    ledger = json.loads(ledger_path.read_text())
    sent = ledger_keys(ledger)
    assert sum(len(k) for k in sent.values()) > 600
    assert {v for v, _, _ in sent} == set(VENUES)
    server = EmbeddedServer(tmp_path / "pg")
    admin = await server.start()
    try:
        stored = await stored_keys(with_database(admin, "hftdb_demo"))
    finally:
        await server.stop()
    problems = []
    for stream in sorted(set(sent) | set(stored)):
        got = stored.get(stream, [])
        twice = [k for k, n in Counter(got).items() if n > 1]
        missing = sent.get(stream, set()) - set(got)
        extra = set(got) - sent.get(stream, set())
        if twice or missing or extra:
            problems.append(f"{stream}: sent {len(sent.get(stream, ()))}, stored {len(got)}, missing {sorted(missing)[:5]}, "
                            f"never sent {sorted(extra)[:5]}, twice {twice[:5]}")
    assert not problems, "\n".join(problems)
    total = sum(len(k) for k in sent.values())
    assert f"the simulator sent {sum(s['messages'] for s in ledger['streams']):,} messages" in summary[0]
    assert total == sum(s["messages"] for s in ledger["streams"])


async def outage_then(fault_server, tmp_path: Path, stop, **extra: str) -> tuple[int, str, str]:
    """Run a demo daemon on ``fault_server``, kill the server once the daemon is healthy and the writers hold some
    rows, then ``await stop(proc, base_url)``; return (exit code, stdout, stderr) once it has exited. The server is
    started again; stderr is kept in the test's directory for a look after a failure."""
    port = free_port()
    env = daemon_env(tmp_path, port, HFTDB_DSN=fault_server.dsn, HFTDB_WRITER_RETRY_MAX_MS="200",
                     HFTDB_METRICS_HEALTH_TIMEOUT_S="1", HFTDB_DATABASE_CONNECT_TIMEOUT="2")
    env.update(extra)
    proc = await start_daemon(env)
    base = f"http://127.0.0.1:{port}"
    try:
        await poll(f"{base}/health", lambda st, _: st == 200, timeout=120, proc=proc)
        await fault_server.kill()
        # Rows keep arriving while the database is down: wait until the writers hold some.
        await poll(f"{base}/metrics",
                   lambda st, b: (metric(b, "hftdb_writer_rows_pending", table="book_tickers") or 0) > 50,
                   timeout=60, proc=proc)
        await stop(proc, base)
        async with asyncio.timeout(120):
            out, err = await proc.communicate()
    finally:
        await reap(proc)
        with contextlib.suppress(Exception):
            await fault_server.start_again()
    (tmp_path / "daemon.log").write_text(err.decode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_second_sigint_forces_the_stop_and_spools_what_the_dead_database_did_not_take(fault_server, tmp_path):
    async def twice(proc: asyncio.subprocess.Process, base: str) -> None:
        _, body = await poll(f"{base}/health", lambda st, _: st == 503, timeout=60, proc=proc)
        assert any(r.startswith("database unreachable") for r in json.loads(body)["reasons"])
        proc.send_signal(signal.SIGINT)

        def stuck_flushing(st: int, b: str) -> bool:
            # The graceful stop has stopped the feeds and now waits for a database that is gone.
            h = json.loads(b)
            return h["state"] == "stopping" and all(f["state"] == "stopped" for f in h["feeds"].values())

        await poll(f"{base}/health", stuck_flushing, timeout=60, proc=proc)
        proc.send_signal(signal.SIGINT)

    rc, _, stderr = await outage_then(fault_server, tmp_path, twice, HFTDB_DAEMON_SHUTDOWN_TIMEOUT_S="120")
    assert rc == 130, stderr[-3000:]
    raw = [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert raw == ["hftdb: stop forced; uncommitted rows were spooled for the next start"], raw  # no traceback
    json_lines(stderr.replace(raw[0], ""))
    spooled = list((tmp_path / "spool" / "hftdb_demo").rglob("*.spool"))
    assert spooled, "the forced stop lost the rows the writers held instead of spooling them"


async def test_the_summary_counts_rows_with_no_room_to_spool_as_dropped_not_spooled(fault_server, tmp_path):
    # The database dies under a running daemon with no spool: at the stop, what the writers hold cannot be kept.
    # The summary must say so (rows dropped), not that they were spooled for the next start.
    async def once(proc: asyncio.subprocess.Process, base: str) -> None:
        proc.send_signal(signal.SIGTERM)

    rc, out, stderr = await outage_then(fault_server, tmp_path, once, HFTDB_DAEMON_SHUTDOWN_TIMEOUT_S="2",
                                        HFTDB_WRITER_SPOOL_DIR="")
    assert rc == 0, stderr[-3000:]
    lost = sum(int(line["msg"].split(" uncommitted rows")[0].rsplit(" ", 1)[-1])
               for line in json_lines(stderr) if "no room to spool them" in line["msg"])
    assert lost > 50, stderr[-3000:]
    (summary,) = [line for line in out.splitlines() if line.startswith("hftdb stopped after")]
    assert "spooled for the next start" not in summary and "0 batches spooled" in summary, summary
    dropped = int(summary.split(" rows dropped")[0].rsplit(" ", 1)[-1].replace(",", ""))
    assert dropped >= lost, summary


async def test_the_demo_waits_for_a_database_that_is_starting_as_the_live_mode_does(fault_server, tmp_path):
    # run.py --demo gave up on the first refused connection (1.3 s) where the live mode retries for
    # [database] connect_timeout: a daemon started beside a server that is still starting must wait for it.
    await fault_server.kill()
    port = free_port()
    env = daemon_env(tmp_path, port, HFTDB_DSN=fault_server.dsn, HFTDB_DATABASE_CONNECT_TIMEOUT="60")
    proc = await start_daemon(env)
    try:
        async with asyncio.timeout(60):
            while True:  # the daemon has tried and been refused at least once
                line = await proc.stderr.readline()
                assert line, "the daemon stopped before the database came back"
                if b"simulator" in line:
                    break
        await asyncio.sleep(1.0)
        assert proc.returncode is None, "the demo gave up on a database that was starting"
        await fault_server.start_again()
        await poll(f"http://127.0.0.1:{port}/health", lambda st, _: st == 200, timeout=120, proc=proc)
        out, err = await stop_daemon(proc, signal.SIGTERM)
    finally:
        await reap(proc)
    assert proc.returncode == 0, err.decode()[-3000:]


async def test_a_dsn_the_client_refuses_stops_the_demo_in_one_line(tmp_path):
    # A query option asyncpg refuses (sslmode=bogus) printed 45 lines of traceback under --demo.
    env = daemon_env(tmp_path, free_port(), HFTDB_DSN="postgresql://u:s3cretPassw0rd@127.0.0.1:1/hft?sslmode=bogus",
                     HFTDB_DATABASE_CONNECT_TIMEOUT="60")
    env["HFTDB_LOGGING_FORMAT"] = "text"
    proc = await start_daemon(env)
    async with asyncio.timeout(30):  # refused at once, not after connect_timeout
        out, err = await proc.communicate()
    stderr = err.decode()
    assert proc.returncode == 1 and "Traceback" not in stderr and "s3cretPassw0rd" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("hftdb: cannot connect to postgresql://u:***@"), stderr
    assert "sslmode" in stderr.strip().splitlines()[-1], stderr


# -- in process: health, staleness, status lines, maintenance ---------------------------------------------


@pytest.fixture
async def demo_settings(dsn, tmp_path):
    """Settings for an in-process demo daemon on the test server, in a database of its own (dropped after)."""
    name = "hftdb_demo_" + uuid.uuid4().hex[:10]
    base = load_settings(environ={})
    settings = msgspec.structs.replace(
        base,
        database=msgspec.structs.replace(base.database, dsn=dsn),
        writer=msgspec.structs.replace(base.writer, spool_dir=str(tmp_path / "spool")),
        daemon=msgspec.structs.replace(base.daemon, status_interval_s=0.2, feed_stale_after_s=1.0,
                                       maintenance_interval_s=0.2),
        metrics=msgspec.structs.replace(base.metrics, port=0),
        demo=msgspec.structs.replace(base.demo, database=name, rate=40.0, symbols=3),
    )
    yield settings
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def wait_for(predicate, *, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_health_turns_503_while_a_feed_is_stale_and_recovers(demo_settings, caplog):
    caplog.set_level("INFO", logger="hftdb.service.status")
    daemon = Daemon(demo_settings, demo=True)
    await daemon.start()
    try:
        async def healthy() -> bool:
            return (await daemon.health())["ok"]

        await wait_for(healthy, timeout=30)
        daemon.simulator.stall(4.0, "okx_spot")

        async def okx_stale() -> bool:
            h = await daemon.health()
            return not h["ok"] and any(r.startswith("okx_spot") for r in h["reasons"])

        await wait_for(okx_stale, timeout=30)
        status, body = await get(f"{daemon.metrics.url}/health")
        assert status == 503 and "okx_spot" in body
        await wait_for(healthy, timeout=30)
        assert (await get(f"{daemon.metrics.url}/health"))[0] == 200
    finally:
        summary = await daemon.close()
    assert summary.feeds == 6 and summary.committed["book_tickers"] > 0
    assert summary.line().startswith("hftdb stopped after")
    lines = [r.getMessage() for r in caplog.records if r.name == "hftdb.service.status"]
    assert any(line.startswith("okx_spot: ") and "msg/s" in line for line in lines)
    assert any(line.startswith("writers: book_tickers") for line in lines)
    assert await daemon.close() is summary  # idempotent


async def test_maintenance_runs_periodically(demo_settings):
    daemon = Daemon(demo_settings, demo=True)
    await daemon.start()
    try:
        async def ran() -> bool:
            return daemon.maintenance_runs > 0 or daemon.maintenance_failures > 0

        await wait_for(ran, timeout=30)
        assert daemon.maintenance_failures == 0
    finally:
        await daemon.close()


@pytest.mark.parametrize(("interval", "pollers"), [(60.0, {"binance_usdm", "bybit_linear", "okx_swap"}), (0.0, set())],
                         ids=["default", "off"])
async def test_funding_poll_interval_0_starts_no_rest_funding_poller(demo_settings, interval, pollers):
    settings = msgspec.structs.replace(
        demo_settings, exchanges=msgspec.structs.replace(demo_settings.exchanges, funding_poll_interval_s=interval))
    daemon = Daemon(settings, demo=True)
    await daemon.start()
    try:
        def tasks() -> set[str]:
            return {t.get_name() for t in asyncio.all_tasks()}

        async def streaming() -> bool:
            # A feed creates its funding poller right after its streams task, with no await in between.
            return all(f"{v}-streams" in tasks() for v in VENUES)

        await wait_for(streaming, timeout=30)
        assert {n.removesuffix("-funding") for n in tasks() if n.endswith("-funding")} == pollers
    finally:
        await daemon.close()


async def test_a_symbol_found_unlisted_after_the_start_stops_the_daemon_in_one_line(demo_settings, monkeypatch,
                                                                                     caplog):
    # The venue's listing is late (its first symbol sync missed the start-up timeout): the unlisted symbol is
    # found once it answers, and stops the daemon with the key named. That ConfigError was logged with a traceback.
    real_start = ExchangeSimulator.start

    async def listing_late(self):
        started = await real_start(self)
        self.http_error("okx_spot", 503, path="/api/v5/public/instruments", count=14)
        return started

    monkeypatch.setattr(ExchangeSimulator, "start", listing_late)
    settings: Settings = msgspec.structs.replace(
        demo_settings,
        exchanges=msgspec.structs.replace(
            demo_settings.exchanges, startup_timeout_s=2.0,
            okx_spot=msgspec.structs.replace(demo_settings.exchanges.okx_spot, symbols=("BTC-USDT", "NOPE-USDT")),
        ),
    )
    daemon = Daemon(settings, demo=True)
    await daemon.start()
    try:
        async with asyncio.timeout(120):
            await daemon.wait()
    finally:
        await daemon.close()
    assert isinstance(daemon.failure, ConfigError), daemon.failure
    assert "[exchanges.okx_spot] symbols: NOPE-USDT not listed by okx_spot" in str(daemon.failure)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


async def test_an_unlisted_symbol_stops_the_start_with_the_key_named(demo_settings):
    settings: Settings = msgspec.structs.replace(
        demo_settings,
        exchanges=msgspec.structs.replace(
            demo_settings.exchanges,
            okx_spot=msgspec.structs.replace(demo_settings.exchanges.okx_spot, symbols=("NOPE-USDT",)),
        ),
    )
    daemon = Daemon(settings, demo=True)
    with pytest.raises(ConfigError) as info:
        await daemon.start()
    assert "[exchanges.okx_spot] symbols: NOPE-USDT not listed by okx_spot" in str(info.value)
    await daemon.close()  # closing a daemon whose start failed is fine


async def test_a_metrics_port_in_use_stops_the_start_with_the_key_named(demo_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = msgspec.structs.replace(demo_settings, metrics=msgspec.structs.replace(demo_settings.metrics, port=port))
        daemon = Daemon(settings, demo=True)
        with pytest.raises(ConfigError, match=rf"^\[metrics\] cannot listen on 127.0.0.1:{port}: "):
            await daemon.start()
    await daemon.close()


async def test_hftdb_run_is_the_daemon_too(tmp_path):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hftdb.ops.cli", "--demo", "run", cwd=str(ROOT), env=daemon_env(tmp_path, port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        await poll(f"http://127.0.0.1:{port}/health", lambda st, _: st == 200, timeout=120, proc=proc)
        # As Ctrl-C in a terminal does: SIGINT to the whole process group (the embedded PostgreSQL runs in a
        # session of its own, so it keeps serving the final flush).
        os.killpg(proc.pid, signal.SIGINT)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        await reap(proc)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().startswith("hftdb stopped after") and "the simulator sent" in out.decode()
    assert any(r["msg"].startswith("SIGINT received: stopping") for r in json_lines(err.decode()))


async def test_hostile_frames_cost_the_running_daemon_nothing_else(demo_settings, tmp_path):
    # Issue 12 through the whole service: the simulator's fault injection writes hostile frames (deep nesting, NUL
    # and control characters in symbols, missing update ids, corrupt times, other markets, oversized frames) into
    # the daemon's live connections between good ones. Each venue's feed must reject exactly those, by reason, on
    # the same connection (no reconnect, no resync), stay healthy, and store every good message the simulator
    # sent, once.
    from test_hostile_frames import live_frames, reasons

    ledger_path = tmp_path / "ledger.json"
    daemon = Daemon(demo_settings, demo=True, ledger_file=ledger_path)
    await daemon.start()
    hostile = {venue: live_frames(venue) for venue in (E.BINANCE_USDM, E.OKX_SWAP, E.BYBIT_LINEAR)}
    try:
        async def healthy() -> bool:
            return (await daemon.health())["ok"]

        await wait_for(healthy, timeout=60)

        async def feeds() -> dict:
            return (await daemon.snapshot())["feeds"]

        before = await feeds()
        for venue, frames in hostile.items():
            assert daemon.simulator.send_raw(venue, [f for f, _ in frames]) == len(frames)  # one connection each

        async def rejected_and_streaming_on() -> bool:
            now = await feeds()
            return all(now[v.value]["rejected"] - before[v.value]["rejected"] == len(hostile[v])
                       and now[v.value]["book_rows"] >= before[v.value]["book_rows"] + 20 for v in hostile)

        await wait_for(rejected_and_streaming_on, timeout=60)
        after = await feeds()
        assert (await daemon.health())["ok"]
    finally:
        await daemon.close()
    for venue, frames in hostile.items():
        view = after[venue.value]
        assert view["reconnects"] == 0 and view["resyncs"] == 0, view
        got = Counter({r: n - before[venue.value]["rejects_by_reason"].get(r, 0)
                       for r, n in view["rejects_by_reason"].items()})
        assert +got == reasons(frames), venue

    ledger = json.loads(ledger_path.read_text())
    sent = ledger_keys(ledger)
    stored = await stored_keys(with_database(demo_settings.database.dsn, demo_settings.demo.database))
    for stream in sorted(set(sent) | set(stored)):
        got_keys = stored.get(stream, [])
        assert len(got_keys) == len(set(got_keys)) and set(got_keys) == sent.get(stream, set()), stream


async def test_a_ledger_that_cannot_be_written_at_the_end_is_not_claimed_and_fails_the_run(demo_settings, tmp_path):
    # The summary ended "(ledger: PATH)" and run.py exited 0 although the write had failed.
    ledger = tmp_path / "later" / "ledger.json"
    port = free_port()
    env = daemon_env(tmp_path, port, HFTDB_DSN=demo_settings.database.dsn,
                     HFTDB_DEMO_DATABASE=demo_settings.demo.database)
    proc = await start_daemon(env, "--ledger", str(ledger))
    try:
        await poll(f"http://127.0.0.1:{port}/health", lambda st, _: st == 200, timeout=120, proc=proc)
        (tmp_path / "later").write_text("")  # checked at the start, the path has become unwritable since
        out, err = await stop_daemon(proc, signal.SIGINT)
    finally:
        await reap(proc)
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "(ledger: " not in stdout and f"(NO ledger: cannot write the simulator's ledger to {ledger}: " in stdout
    assert stdout.startswith("hftdb stopped after"), stdout

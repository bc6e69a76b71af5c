"""The daemon's feeds under database faults and listing changes, for real: the server stopped, restarted or its
backends terminated while the feeds sync symbols, and a configured symbol delisted by the exchange simulator.

Exactly-once is checked as in test_daemon: per venue, channel and symbol, the message keys the simulator sent (its
ledger) equal the keys stored, none twice. A feed that restarts loses what the venue sent until it is back, which
the ledger does not see (nothing was sent to a connection that was gone): on Bybit, whose book update ids are
consecutive, such a loss is a hole in the stored ids, so there they must also be contiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from hftdb.config import Settings, load_settings
from hftdb.db.target import with_database
from hftdb.errors import DatabaseUnavailableError
from hftdb.service.daemon import Daemon

from test_daemon import ledger_keys, stored_keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def demo_settings(dsn: str, tmp_path: Path, **exchanges: Any) -> Settings:
    """An in-process demo daemon's settings on ``dsn``: small and quick, metrics on a port of the system's choice,
    a demo database of its own (not ``hftdb_demo``, which other tests on the shared server expect absent)."""
    base = load_settings(environ={})
    return msgspec.structs.replace(
        base,
        database=msgspec.structs.replace(base.database, dsn=dsn, connect_timeout=3.0),
        writer=msgspec.structs.replace(base.writer, spool_dir=str(tmp_path / "spool"), retry_initial_ms=20.0,
                                       retry_max_ms=200.0),
        archive=msgspec.structs.replace(base.archive, root=str(tmp_path / "archive")),
        exchanges=msgspec.structs.replace(base.exchanges, **exchanges),
        daemon=msgspec.structs.replace(base.daemon, status_interval_s=0, feed_stale_after_s=5.0,
                                       maintenance_interval_s=3600.0),
        metrics=msgspec.structs.replace(base.metrics, port=0),
        demo=msgspec.structs.replace(base.demo, rate=40.0, symbols=3, database="hftdb_demo_" + uuid.uuid4().hex[:10]),
    )


async def wait_for(predicate, *, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def feeds(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return (await daemon.snapshot())["feeds"]


def healthy(daemon: Daemon):
    """A check for :func:`wait_for`: the daemon's /health says ok."""
    async def check() -> bool:
        return (await daemon.health())["ok"]
    return check


async def check_exactly_once(dsn: str, ledger_path: Path, *, contiguous: bool = True) -> None:
    """Every message the simulator sent is stored once, and (``contiguous``: no connection was lost) Bybit's
    stored update ids have no hole."""
    sent = ledger_keys(json.loads(ledger_path.read_text()))
    stored = await stored_keys(dsn)
    problems = []
    for stream in sorted(set(sent) | set(stored)):
        got = stored.get(stream, [])
        twice = [k for k, n in Counter(got).items() if n > 1]
        want = sent.get(stream, set())
        if twice or set(got) != want:
            problems.append(f"{stream}: sent {len(want)}, stored {len(got)}, missing {sorted(want - set(got))[:5]}, "
                            f"never sent {sorted(set(got) - want)[:5]}, twice {twice[:5]}")
        venue, kind, _ = stream
        if contiguous and venue.startswith("bybit") and kind == "book" and got:
            holes = max(got) - min(got) + 1 - len(set(got))
            if holes:
                problems.append(f"{stream}: {holes} update ids never reached the daemon")
    assert sum(len(k) for k in sent.values()) > 100
    assert not problems, "\n".join(problems)


async def terminate_backends(admin: asyncpg.Connection, database: str) -> int:
    return await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database)


# -- 1. the periodic symbol sync meets a database outage: the streams go on --------------------------------------


@pytest.mark.parametrize("fault", ["stop", "terminate"])
async def test_a_database_outage_during_the_periodic_symbol_sync_cuts_no_stream(fault_server, tmp_path, caplog, fault):
    caplog.set_level(logging.INFO)
    settings = demo_settings(fault_server.dsn, tmp_path, symbol_sync_interval_s=0.2)
    demo_dsn = with_database(fault_server.dsn, settings.demo.database)
    ledger_path = tmp_path / "ledger.json"
    daemon = Daemon(settings, demo=True, ledger_file=ledger_path)
    await daemon.start()
    try:
        await wait_for(healthy(daemon), timeout=60)
        before = await feeds(daemon)
        if fault == "stop":
            await fault_server.kill()

            async def synced_into_the_outage_and_streamed_on() -> bool:
                now = await feeds(daemon)
                return all(now[v]["rest_errors"] > before[v]["rest_errors"]
                           and now[v]["messages"] >= before[v]["messages"] + 20 for v in now)

            await wait_for(synced_into_the_outage_and_streamed_on, timeout=60)
            await fault_server.start_again()
        else:
            admin = await asyncpg.connect(fault_server.dsn)
            try:
                async def a_few_syncs_lost_their_backend() -> bool:
                    await terminate_backends(admin, settings.demo.database)
                    now = await feeds(daemon)
                    return sum(now[v]["rest_errors"] - before[v]["rest_errors"] for v in now) >= 6

                await wait_for(a_few_syncs_lost_their_backend, timeout=90)
            finally:
                await admin.close()
        after_fault = await feeds(daemon)

        async def healthy_and_streaming_on() -> bool:
            now = await feeds(daemon)
            return await healthy(daemon)() and all(now[v]["book_rows"] >= after_fault[v]["book_rows"] + 20
                                                   for v in now)

        await wait_for(healthy_and_streaming_on, timeout=60)
        final = await feeds(daemon)
    finally:
        await daemon.close()
    for venue, view in final.items():
        assert view["restarts"] == 0 and view["reconnects"] == 0, (venue, view)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "restarting the feed" in m or "feed failed" in m]
    assert any("symbol sync failed" in m and "the streams go on" in m for m in messages)
    await check_exactly_once(demo_dsn, ledger_path)


# -- 2. the database goes away during the first symbol sync at start-up ------------------------------------------


async def hold_the_first_syncs(daemon: Daemon, seconds: float) -> None:
    """As soon as the daemon's simulator is up, make every venue's first instruments request wait ``seconds``
    (one HTTP 429 with Retry-After), so that the first syncs are under way while the test stops the database."""
    while daemon.simulator is None:
        await asyncio.sleep(0.001)
    for venue in daemon.settings.exchanges.venues():
        # The first request to each venue is its instruments request: nothing else runs before the first sync.
        daemon.simulator.http_error(venue, 429, count=1, retry_after=seconds)


async def first_syncs_under_way(daemon: Daemon) -> None:
    """Until every feed exists (the first syncs start right after)."""
    async def all_feeds() -> bool:
        return len((await daemon.health())["feeds"]) == len(daemon.settings.exchanges.venues())

    await wait_for(all_feeds, timeout=120)


async def test_a_database_restart_during_the_first_symbol_sync_is_waited_out(fault_server, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = demo_settings(fault_server.dsn, tmp_path)
    settings = msgspec.structs.replace(settings, database=msgspec.structs.replace(settings.database,
                                                                                   connect_timeout=60.0))
    ledger_path = tmp_path / "ledger.json"
    daemon = Daemon(settings, demo=True, ledger_file=ledger_path)
    hold = asyncio.create_task(hold_the_first_syncs(daemon, 2.0))
    start = asyncio.create_task(daemon.start())
    try:
        await first_syncs_under_way(daemon)
        await fault_server.kill()

        async def syncs_met_the_outage() -> bool:
            return any(f["last_error"] and "database is unavailable" in f["last_error"]
                       for f in (await daemon.health())["feeds"].values())

        await wait_for(syncs_met_the_outage, timeout=60)
        await fault_server.start_again()
        async with asyncio.timeout(120):
            await start

        async def healthy_and_streaming() -> bool:
            return await healthy(daemon)() and all(f["book_rows"] >= 20 for f in (await feeds(daemon)).values())

        await wait_for(healthy_and_streaming, timeout=60)
    finally:
        hold.cancel()
        if not start.done():
            start.cancel()
        with contextlib.suppress(BaseException):
            await start
        summary = await daemon.close()
    assert summary.committed["book_tickers"] > 0
    await check_exactly_once(with_database(fault_server.dsn, settings.demo.database), ledger_path)


async def test_a_database_gone_for_good_during_the_first_symbol_sync_fails_the_start_cleanly(fault_server, tmp_path,
                                                                                              caplog):
    caplog.set_level(logging.INFO)
    settings = demo_settings(fault_server.dsn, tmp_path)
    daemon = Daemon(settings, demo=True)
    hold = asyncio.create_task(hold_the_first_syncs(daemon, 1.0))
    try:
        start = asyncio.create_task(daemon.start())
        await first_syncs_under_way(daemon)
        await fault_server.kill()
        with pytest.raises(DatabaseUnavailableError, match="the database stayed unavailable"):
            async with asyncio.timeout(120):
                await start
    finally:
        hold.cancel()
        await daemon.close()
        with contextlib.suppress(Exception):
            await fault_server.start_again()
    gc.collect()  # an exception nobody retrieved is reported when its task is collected
    await asyncio.sleep(0)
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not unretrieved, [r.getMessage() for r in unretrieved]


# -- 3. a configured symbol delisted at runtime: dropped, the others stream on -------------------------------------


GIVEN = {"binance_spot": ("BTCUSDT", "ETHUSDT"), "bybit_spot": ("BTCUSDT", "ETHUSDT"),
         "okx_spot": ("BTC-USDT", "ETH-USDT")}


async def test_a_configured_symbol_delisted_at_runtime_stops_only_itself(dsn, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    base = demo_settings(dsn, tmp_path)
    venues = {v: msgspec.structs.replace(getattr(base.exchanges, v), symbols=GIVEN.get(v, "all"),
                                         enabled=v in GIVEN)
              for v in base.exchanges.venues()}
    settings = msgspec.structs.replace(base, exchanges=msgspec.structs.replace(base.exchanges, **venues))
    ledger_path = tmp_path / "ledger.json"
    daemon = Daemon(settings, demo=True, ledger_file=ledger_path)
    await daemon.start()
    try:
        async def streaming() -> bool:
            return await healthy(daemon)() and all(f["book_rows"] >= 20 for f in (await feeds(daemon)).values())

        await wait_for(streaming, timeout=60)
        for venue, (gone, _) in GIVEN.items():
            daemon.simulator.delist_symbol(venue, gone)
            daemon.simulator.drop_connections(venue)  # each reconnect's subscription of `gone` is refused
        before = await feeds(daemon)

        async def refused_and_streaming_on() -> bool:
            health = await daemon.health()
            now = await feeds(daemon)
            return health["ok"] and all(
                "refused" in (health["feeds"][v]["last_error"] or "") and now[v]["reconnects"] >= 1
                and now[v]["book_rows"] >= before[v]["book_rows"] + 40 for v in GIVEN)

        await wait_for(refused_and_streaming_on, timeout=60)
        status = (await daemon.snapshot())["feeds"]
    finally:
        await daemon.close()
    for venue, (gone, kept) in GIVEN.items():
        assert [k for k in status[venue]["not_streamed"] if gone.lower() in k.lower()], status[venue]
        assert status[venue]["restarts"] == 0, status[venue]
    # The dropped connections lost what was sent while they reconnected (not sent, for the ledger): no hole check.
    await check_exactly_once(with_database(dsn, settings.demo.database), ledger_path, contiguous=False)
    sent = ledger_keys(json.loads(ledger_path.read_text()))
    for venue, (gone, kept) in GIVEN.items():
        # The kept symbol was streamed after the delisting too: more of its messages than of the delisted one's.
        assert len(sent[(venue, "book", kept)]) > len(sent[(venue, "book", gone)]), venue
    conn = await asyncpg.connect(dsn)  # the shared server keeps no demo database of this test's
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{settings.demo.database}" WITH (FORCE)')
    finally:
        await conn.close()

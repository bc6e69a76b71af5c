"""The daemon: exchange feeds into the database, kept healthy and observable until told to stop.

Start, in order (:meth:`Daemon.start`):

1. with ``demo``, start the in-process exchange simulator (:mod:`hftdb.simulator`);
2. start the embedded PostgreSQL or connect to the DSN, apply migrations, start the writers
   (:class:`~hftdb.manager.DatabaseManager`); the demo writes to a database of its own (``[demo] database``);
3. serve ``/metrics``, ``/health`` and ``/stats`` (:mod:`hftdb.service.metrics`);
4. start one adapter per enabled venue and sync exchanges and symbols, all venues at once, bounded by
   ``[exchanges] startup_timeout_s``; venues that miss it keep retrying in the background, and if none made
   it the daemon stops with an error;
5. run, per venue, the streams, the periodic symbol sync and the balance poller (where API keys exist), plus
   the periodic maintenance (:meth:`~hftdb.manager.DatabaseManager.run_maintenance`) and status lines.

Stop (:meth:`Daemon.close`): with ``demo``, pause the simulator and let it write what it queued; cancel the feeds
(each connection is closed gracefully and every frame already received is written); flush every writer within
``[daemon] shutdown_timeout_s`` (what does not commit in time is spooled, not lost); close the pool; write the
demo's ledger (only for a run that started: a failed start writes none); return a :class:`Summary`, which names
the ledger only once it is written (``ledger_error`` says why it was not). Cancelling ``close()`` (a second
SIGINT) skips the waiting: feeds are dropped and writers spool what they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import orjson

from ..config import Settings
from ..errors import ConfigError, DatabaseUnavailableError, ExchangeError, HftdbError, StateError, ValidationError
from .feeds import Feed, FeedState, open_feed
from ..manager import DatabaseManager
from .metrics import MetricsServer
from ..models import now_us
from ..tablespec import TIME_SERIES
from .status import StatusReporter, Summary
from ..db.target import Target, identify, open_target
from ..exchanges.stream import Backoff
from ..store.writer import DROPPED_BATCH

__all__ = ["Daemon", "serve", "check_ledger_path"]

logger = logging.getLogger(__name__)
status_logger = logging.getLogger("hftdb.service.status")

_VERSION = "0.1.0"
# The writers' close after a final flush that used up [daemon] shutdown_timeout_s: long enough to spool.
_CLOSE_AT_LEAST_S = 1.0
# Retrying the first symbol sync while the database is away: from 0.2 s up to 2 s, with jitter.
_SYNC_BACKOFF = Backoff(initial=0.2, maximum=2.0)


# ----------------------------------------------------------------------------------------------------- daemon


class _State(enum.Enum):
    UNOPENED = "unopened"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"


class Daemon:
    """Exchange feeds into the database, with maintenance, status lines, metrics and health.

    >>> daemon = Daemon(load_settings("config/default.toml"), demo=True)
    >>> await daemon.start()
    >>> await daemon.wait()          # until daemon.stop() (a signal handler calls it)
    >>> print((await daemon.close()).line())

    ``demo`` streams from an in-process exchange simulator instead of the exchanges; ``ledger_file`` (default
    ``[demo] ledger_file``) receives what the simulator sent, written at shutdown.
    """

    def __init__(self, settings: Settings, *, demo: bool = False, ledger_file: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(settings, Settings):
            raise ValueError(f"settings must be hftdb.Settings, got {type(settings).__name__}")
        if ledger_file is not None and not demo:
            raise ValueError("ledger_file is only written in demo mode")
        if not settings.exchanges.venues():
            raise ConfigError("[exchanges]: every venue is disabled; enable at least one (enabled = true)")
        self.settings = settings
        self.demo = demo
        ledger = ledger_file if ledger_file is not None else settings.demo.ledger_file
        self.ledger_file = Path(ledger).expanduser() if demo and ledger else None
        self.simulator: Any = None
        self.metrics: MetricsServer | None = None
        self._target: Target | None = None
        self._identity: dict[str, str | None] | None = None
        self._db: DatabaseManager | None = None
        self._feeds: dict[str, Feed] = {}
        self._tasks: set[asyncio.Task] = set()  # feeds, maintenance and status: every task the daemon runs
        self._final_writers: dict[str, dict[str, Any]] = {}
        self._summary: Summary | None = None
        #: what stopped the daemon when it was not asked to stop
        self.failure: BaseException | None = None
        #: maintenance passes completed and failed
        self.maintenance_runs = 0
        self.maintenance_failures = 0
        self._stop = asyncio.Event()
        self._state = _State.UNOPENED
        self._ran = False  # the start completed: only such a run has a ledger worth writing
        #: why the demo's ledger could not be written at the end, or None
        self.ledger_error: str | None = None
        self._ledger_written = False
        self._started_at = time.monotonic()
        self._reporter = StatusReporter()

    def __repr__(self) -> str:
        return f"<Daemon {'demo' if self.demo else 'live'} {self._state.value} feeds={list(self._feeds)}>"

    @property
    def db(self) -> DatabaseManager:
        """The database manager (once started)."""
        if self._db is None:
            raise StateError("the daemon is not started")
        return self._db

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the start sequence (see the module docstring). On failure, everything started is closed again."""
        if self._state is not _State.UNOPENED:
            raise StateError(f"{self!r} cannot be started twice")
        self._state = _State.STARTING
        self._started_at = time.monotonic()
        try:
            await self._start()
        except BaseException:
            await self._abort()
            raise
        self._state = _State.RUNNING
        self._ran = True

    async def _start(self) -> None:
        settings = self.settings
        if self.demo:
            from ..simulator import ExchangeSimulator, Limits

            d = settings.demo
            self.simulator = ExchangeSimulator(
                rate=d.rate, symbols=d.symbols, seed=d.seed, limits=Limits(funding_interval=d.funding_interval_s)
            )
            await self.simulator.start()
            logger.info("demo: exchange simulator on %s", ", ".join(f"{n}={p}" for n, p in self.simulator.ports.items()))
        self._target = await open_target(settings, demo=self.demo)
        spool = settings.writer.spool_dir
        if self.demo and spool:
            # The demo's batches must never be replayed into the live database.
            spool = str(Path(spool) / settings.demo.database)
        if self.demo and settings.archive.root:
            # Nor archived into the live archive: the demo's symbol ids mean other symbols.
            settings = msgspec.structs.replace(settings, archive=msgspec.structs.replace(
                settings.archive, root=str(Path(settings.archive.root) / settings.demo.database)))
        self._db = DatabaseManager(self._target.dsn, settings=settings, spool_dir=spool)
        await self._db.initialize()
        async with self._db.connection(timeout=settings.database.connect_timeout) as conn:
            self._identity = await identify(conn)
        logger.info("database ready: %s, migrations applied", self._target.description)
        if settings.metrics.enabled:
            m = settings.metrics
            self.metrics = MetricsServer(self.snapshot, self.health, host=m.host, port=m.port)
            await self.metrics.start()
        for venue, config in settings.exchanges.venues().items():
            self._feeds[venue] = await open_feed(venue, config, settings.exchanges, self.db, simulator=self.simulator)
        await self._initial_sync()
        for feed in self._feeds.values():
            feed.task = self._spawn(feed.run(), f"feed-{feed.venue}")
        self._spawn(self._maintenance_loop(), "maintenance")
        if settings.daemon.status_interval_s > 0:
            self._spawn(self._status_loop(), "status")
        logger.info("hftdb running: %d feed(s) (%s)%s", len(self._feeds), ", ".join(self._feeds),
                    " against the exchange simulator" if self.demo else "")

    async def _initial_sync(self) -> None:
        timeout = self.settings.exchanges.startup_timeout_s
        feeds = list(self._feeds.values())
        tasks = [asyncio.create_task(self._first_sync(feed), name=f"sync-{feed.venue}") for feed in feeds]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        failures = []
        fatal: list[BaseException] = []
        for feed, task in zip(feeds, tasks):
            error = None if task in done and not task.cancelled() else f"no answer within {timeout:g}s"
            # Every task's exception is retrieved here, so none is reported "never retrieved" when one is raised.
            exc = None if error is not None else task.exception()
            if exc is not None:
                if not isinstance(exc, ExchangeError):
                    # A ConfigError (unlisted symbol), a database that stayed away, or a bug: not retried here.
                    fatal.append(exc)
                    continue
                error = str(exc)
            if error is not None:
                feed.last_error = error
                failures.append(f"{feed.venue}: {error}")
        if fatal:
            # A configuration mistake first: the operator fixes that one before anything else matters.
            raise next((e for e in fatal if isinstance(e, ConfigError)), fatal[0])
        if len(failures) == len(feeds):
            hint = "" if self.demo else "; without internet access, try the demo: run.py --demo"
            raise ExchangeError(f"no exchange could be reached at start-up ({'; '.join(failures)}){hint}")
        for failure in failures:
            logger.warning("first symbol sync failed (%s); retrying in the background", failure)

    async def _first_sync(self, feed: Feed) -> None:
        # The database going away under the first sync (a restart, a terminated backend) is waited out for up to
        # [database] connect_timeout, as the manager's start waits for it; if it stays away, start-up fails with it.
        wait = self.settings.database.connect_timeout
        deadline = time.monotonic() + wait
        attempt = 0
        while True:
            try:
                await feed.sync()
                return
            except DatabaseUnavailableError as exc:
                feed.last_error = str(exc)
                delay = _SYNC_BACKOFF.delay(attempt)
                attempt += 1
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailableError(
                        f"{feed.venue}: first symbol sync: the database stayed unavailable for {wait:g}s "
                        f"([database] connect_timeout): {exc}") from exc
                if attempt & (attempt - 1) == 0:  # the 1st, 2nd, 4th... failure: not a line per retry
                    logger.warning("%s: first symbol sync: %s; retrying (%d failed so far, next in %.1fs)", feed.venue,
                                   exc, attempt, delay)
                await asyncio.sleep(delay)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The loops catch what they can recover from; anything else stops the daemon rather than
            # leaving it up without a part.
            exc = task.exception()
            if self.failure is None:
                self.failure = exc
            if isinstance(exc, ConfigError):
                # A mistake in the configuration found late (a venue's listing came after the start): the user's to
                # fix, said in one line (run.py prints it again as it exits), with no traceback.
                logger.error("%s: %s; stopping", task.get_name(), exc)
            else:
                logger.error("daemon task %s failed: %r; stopping", task.get_name(), exc, exc_info=exc)
            self.stop()

    def stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stop.set()

    async def wait(self) -> None:
        """Return once :meth:`stop` is called."""
        await self._stop.wait()

    async def close(self) -> Summary:
        """Stop feeds, flush every writer, close the pool; return what the run did. Idempotent.

        Cancelling it (a second interrupt) drops what is still being waited for: writers spool what they hold.
        """
        if self._state is _State.CLOSED and self._summary is not None:
            return self._summary
        self._state = _State.STOPPING
        try:
            await self._close()
        except asyncio.CancelledError:
            logger.error("forced stop: feeds dropped, uncommitted rows spooled")
            await self._abort()
            raise
        self._state = _State.CLOSED
        assert self._summary is not None
        return self._summary

    async def _close(self) -> None:
        timeout = self.settings.daemon.shutdown_timeout_s
        feed_tasks = [f.task for f in self._feeds.values() if f.task is not None]
        periodic = self._tasks - set(feed_tasks)
        for task in periodic:
            task.cancel()
        if self.simulator is not None:
            # Pause the simulator and let it write what it queued, so its ledger is final and the feeds below
            # receive every message it counts as sent.
            try:
                await self.simulator.quiesce(timeout=timeout)
            except TimeoutError:
                logger.warning("demo: the simulator did not drain within %gs", timeout)
        for task in feed_tasks:
            task.cancel()
        if feed_tasks:
            # Each feed closes its connections gracefully and hands every frame received to the writers.
            _, pending = await asyncio.wait(feed_tasks, timeout=timeout)
            if pending:
                logger.error("%d feed(s) did not stop within %gs: %s", len(pending), timeout,
                             ", ".join(t.get_name() for t in pending))
        for feed in self._feeds.values():
            feed.set_state(FeedState.STOPPED)
            await feed.adapter.close()
        await asyncio.gather(*periodic, return_exceptions=True)
        if self._db is not None:
            # The final flush and the close share one budget: the close flushes again what is left, then spools.
            deadline = asyncio.get_running_loop().time() + timeout
            try:
                await self._db.flush(timeout=timeout)
            except (TimeoutError, HftdbError) as exc:
                logger.error("final flush incomplete after %gs (%r): the rest is spooled", timeout, exc)
            self._log_status()
            left = deadline - asyncio.get_running_loop().time()
            await self._db.close(timeout=max(left, _CLOSE_AT_LEAST_S))
            # Read after the close: it spools what is still uncommitted, or counts as dropped what has no room.
            self._final_writers = self._writer_snapshots()
        if self.metrics is not None:
            await self.metrics.close()
        self._write_ledger()
        if self.simulator is not None:
            await self.simulator.close()
        if self._target is not None:
            await self._target.close()
        self._summary = self._make_summary()

    async def _abort(self) -> None:
        """Close whatever was started, without waiting on anything that may hang."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for feed in self._feeds.values():
            with contextlib.suppress(Exception):
                await feed.adapter.close()
        if self._db is not None:
            # A writer's close() that times out spools what it holds; a failed start may leave no writer at all.
            with contextlib.suppress(Exception):
                await self._db.close(timeout=1.0)
            with contextlib.suppress(HftdbError):
                self._final_writers = self._writer_snapshots()
        if self.metrics is not None:
            await self.metrics.close()
        if self.simulator is not None:
            if self._ran:  # a forced stop; a start that failed ran nothing worth a ledger
                self._write_ledger()
            await self.simulator.close()
        if self._target is not None:
            await self._target.close()
        self._summary = self._make_summary()
        self._state = _State.CLOSED

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- periodic work ---------------------------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        interval = self.settings.daemon.maintenance_interval_s
        while True:
            # The first pass waits one interval: start-up already created partitions, and retention right at
            # start could cost data to a wrong clock before anyone looks (see partitions.maintain).
            await asyncio.sleep(interval)
            try:
                report = await self.db.run_maintenance()
            except (HftdbError, asyncpg.PostgresError, OSError) as exc:
                self.maintenance_failures += 1
                logger.warning("maintenance failed (%s); next attempt in %gs", exc, interval)
                continue
            except Exception:  # noqa: BLE001 - a failed upkeep pass must not stop ingestion
                self.maintenance_failures += 1
                logger.exception("maintenance failed; next attempt in %gs", interval)
                continue
            self.maintenance_runs += 1
            if report.created or report.dropped or report.indexed or report.ledger_rows_deleted:
                logger.info("maintenance: created %s, dropped %s, indexed %s, %d ledger rows trimmed",
                            report.created or "-", report.dropped or "-", report.indexed or "-",
                            report.ledger_rows_deleted)

    async def _status_loop(self) -> None:
        interval = self.settings.daemon.status_interval_s
        while True:
            await asyncio.sleep(interval)
            self._log_status()

    def _log_status(self) -> None:
        if self._db is None:
            return
        now = now_us()
        stale = self.settings.daemon.feed_stale_after_s
        feeds = {v: f.view(now, stale) for v, f in self._feeds.items()}
        for line, fields in self._reporter.report(feeds, self._writer_snapshots()):
            status_logger.info("%s", line, extra=fields)

    def _writer_snapshots(self) -> dict[str, dict[str, Any]]:
        return {t: self.db.writer_stats(t) for t in TIME_SERIES}

    # -- observability ---------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``ok`` when the daemon runs, the database answers and no feed is stale; the reasons otherwise."""
        reasons: list[str] = []
        if self._state is not _State.RUNNING:
            reasons.append(f"daemon is {self._state.value}")
        database: dict[str, Any] = {"ok": False}
        if self._db is not None:
            database = await self._db.health_check(timeout=self.settings.metrics.health_timeout_s)
            # Which database this daemon serves: the hftdb command, whose metrics port may be answered by the
            # daemon of another database (the demo's, another DSN's), compares it with its own.
            database["identity"] = self._identity
            if not database.get("ok"):
                reasons.append(f"database unreachable: {database.get('error', 'no answer')}")
        now = now_us()
        stale = self.settings.daemon.feed_stale_after_s
        feeds = {}
        for venue, feed in self._feeds.items():
            view = feed.view(now, stale)
            feeds[venue] = {k: view[k] for k in ("state", "live", "last_message_age_s", "connections", "last_error")}
            if not view["live"] and self._state is _State.RUNNING:
                age = view["last_message_age_s"]
                why = view["last_error"] or (f"no message for {age:.0f}s" if age is not None else "no message yet")
                reasons.append(f"{venue} {feed.state.value}: {why}")
        return {"ok": not reasons, "reasons": reasons, "state": self._state.value, "database": database, "feeds": feeds}

    async def snapshot(self) -> dict[str, Any]:
        """Everything ``/stats`` shows and ``/metrics`` exports: feeds, writers, caches, pool, tables, health."""
        now = now_us()
        stale = self.settings.daemon.feed_stale_after_s
        out: dict[str, Any] = {
            "version": _VERSION,
            "mode": "demo" if self.demo else "live",
            "state": self._state.value,
            "uptime_s": time.monotonic() - self._started_at,
            "feeds": {v: f.view(now, stale) for v, f in self._feeds.items()},
            "maintenance": {"runs": self.maintenance_runs, "failures": self.maintenance_failures},
        }
        health = await self.health()
        out["health"] = {"ok": health["ok"], "reasons": health["reasons"]}
        out["database"] = health["database"]
        if self._db is not None:
            out["writers"] = self._writer_snapshots()
            if health["database"].get("ok"):
                try:
                    stats = await asyncio.wait_for(self._db.get_database_stats(), self.settings.metrics.health_timeout_s)
                except (HftdbError, asyncpg.PostgresError, OSError, TimeoutError) as exc:
                    logger.debug("stats unavailable: %r", exc)
                else:
                    for key in ("tables", "caches", "pool", "archive"):
                        if key in stats:
                            out[key] = stats[key]
        if self.simulator is not None:
            out["demo"] = {"sent": self._demo_sent()}
        return out

    def _demo_sent(self) -> dict[str, dict[str, int]]:
        sent: dict[str, dict[str, int]] = {}
        for (venue, channel, _), tally in self.simulator.ledger.streams().items():
            by_channel = sent.setdefault(venue, {})
            by_channel[channel] = by_channel.get(channel, 0) + tally.messages
        return sent

    # -- the end ---------------------------------------------------------------------------------------

    def _write_ledger(self) -> None:
        if self.simulator is None or self.ledger_file is None:
            return
        ledger = self.simulator.ledger
        doc = {
            "written_at_us": now_us(),
            "streams": [
                {"venue": venue, "channel": channel, "symbol": symbol, "frames": t.frames, "messages": t.messages,
                 "keys": t.keys.ranges(), "duplicates": t.duplicates, "gaps": t.gaps}
                for (venue, channel, symbol), t in sorted(ledger.streams().items())
            ],
            "malformed": dict(ledger.malformed),
        }
        try:
            self.ledger_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.ledger_file.with_name(self.ledger_file.name + ".tmp")
            tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            tmp.replace(self.ledger_file)
        except OSError as exc:
            # Written while stopping (the path was checked before the start, but it may have changed since):
            # raised, it would stand in for the summary or the error that stopped the daemon. The summary says
            # it instead, and the entry points exit 1: the ledger is what the user asked for.
            self.ledger_error = f"cannot write the simulator's ledger to {self.ledger_file}: " + (
                exc.strerror or type(exc).__name__)
            logger.error("demo: %s", self.ledger_error)
            return
        self._ledger_written = True
        logger.info("demo: the simulator's ledger written to %s", self.ledger_file)

    def _make_summary(self) -> Summary:
        writers = getattr(self, "_final_writers", {})
        stats = [f.adapter.stats for f in self._feeds.values()]
        sent = None
        if self.simulator is not None:
            sent = self.simulator.ledger.messages()
        return Summary(
            seconds=time.monotonic() - self._started_at,
            feeds=len(self._feeds),
            messages=sum(s.messages for s in stats),
            committed={t: w["rows_committed"] for t, w in writers.items()},
            # (A batch dropped by drop_oldest is counted under its own reason, once a batch: its rows are dropped.)
            writer_rejects=sum(n for w in writers.values() for r, n in w["rejects"].items() if r != DROPPED_BATCH),
            frame_rejects=sum(s.rejected for s in stats),
            reconnects=sum(s.reconnects for s in stats),
            gaps=sum(s.gaps for s in stats),
            dropped_rows=sum(s.dropped_rows for s in stats) + sum(w["rows_dropped"] for w in writers.values()),
            batches_spooled=sum(w["batches_spooled"] for w in writers.values()),
            pending_rows=sum(w["rows_pending"] for w in writers.values()),
            demo_sent=sent,
            ledger_file=str(self.ledger_file) if self._ledger_written else None,
            ledger_error=self.ledger_error,
        )


def check_ledger_path(path: str | os.PathLike[str], what: str) -> None:
    """Refuse, before the daemon starts, a ledger path it could not write at the end of the run: a directory, a
    path under a file, or a directory where no file can be created (tried, not inferred from permission bits:
    root passes ``os.access`` for ``/proc``). Missing directories are created when the ledger is written.
    ``what`` names the setting in the :class:`~hftdb.errors.ValidationError` (``--ledger``)."""
    target = Path(path).expanduser()
    if not str(path).strip():
        raise ValidationError(f"{what} is empty: name the JSON file to write")
    if target.is_dir():
        raise ValidationError(f"{what} {path} is a directory: name the file to write")
    parent = next(a for a in (target.parent, *target.parent.parents) if a.exists())
    if not parent.is_dir():
        raise ValidationError(f"cannot write {what} {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".hftdb-ledger-check-")
    except OSError as exc:
        raise ValidationError(
            f"cannot write {what} {path}: no file can be created in {parent} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


# ------------------------------------------------------------------------------------------------------ serve


async def serve(settings: Settings, *, demo: bool = False, ledger_file: str | os.PathLike[str] | None = None) -> Summary:
    """Run the daemon until SIGINT or SIGTERM, then stop it gracefully; return its summary.

    The demo's ledger path is checked first (:func:`check_ledger_path`); ``summary.ledger_error`` tells a run
    whose ledger could not be written at the end (the entry points then exit 1).

    A second SIGINT or SIGTERM cancels the graceful stop (writers spool what they hold) and raises
    ``CancelledError``; a third SIGINT ends the process at once (the default handler is back by then).
    """
    # The ledger is written at the end of the run: a path it cannot write is refused now, not after the whole run.
    if demo and ledger_file is not None:
        check_ledger_path(ledger_file, "--ledger")
    elif demo and settings.demo.ledger_file:
        check_ledger_path(settings.demo.ledger_file, "[demo] ledger_file")
    loop = asyncio.get_running_loop()
    daemon = Daemon(settings, demo=demo, ledger_file=ledger_file)
    main = asyncio.current_task()
    assert main is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            logger.warning("%s received: stopping (flushing every writer); %s again to force", name, name)
            daemon.stop()
        else:
            logger.error("%s received again: forcing the stop", name)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            main.cancel()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows, nor off the main thread
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    try:
        starting = asyncio.create_task(daemon.start(), name="start")
        stopping = asyncio.create_task(daemon.wait(), name="wait-stop")
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # raises what start() raised (after it closed what it had started)
                await stopping
            else:
                logger.warning("stop requested during start-up")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            stopping.cancel()
        summary = await daemon.close()
        if daemon.failure is not None:
            raise daemon.failure
        return summary
    finally:
        for signum in installed:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


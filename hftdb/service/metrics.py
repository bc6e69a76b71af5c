"""The daemon's HTTP endpoint: Prometheus ``/metrics``, ``/health`` and ``/stats``, on a small aiohttp server.

``/stats`` is the daemon's snapshot as JSON (feeds, writers, caches, pool, database, tables); ``/metrics`` is the
same snapshot in the Prometheus text exposition format (version 0.0.4), rendered by :func:`render`; ``/health``
answers 200 when the database answers and every feed is live, 503 otherwise, with the reasons as JSON.
``docs/grafana-dashboard.json`` charts these metrics.

The exposition is written here rather than by prometheus_client: rendering the same snapshot through its custom
collectors and ``generate_latest`` measured 3-10x slower (about 0.36 against 1.1-3.7 ms for a six-venue
snapshot, ``benchmarks/bench_metrics.py``), and it writes every integer as a float (``970.0``) and sorts labels,
so the text would change for whoever reads it. :func:`collect` is the walk both can take.

The server binds ``127.0.0.1`` by default: the counters say what the process trades on, so exposing them
wider is a decision for the operator (``[metrics] host``).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from ..errors import ConfigError, StateError
from ..redact import redact
from ..tablespec import TABLES

__all__ = ["MetricsServer", "render", "collect", "Families", "Family", "CONTENT_TYPE"]

logger = logging.getLogger(__name__)

#: Content type of the Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Snapshot = Callable[[], Awaitable[dict[str, Any]]]
Health = Callable[[], Awaitable[dict[str, Any]]]

# FeedStats counters exported as <prefix>_feed_<name>_total.
_FEED_COUNTERS = (
    ("messages", "Websocket frames received."),
    ("duplicates", "Rows dropped because their update id (or exchange time) was already stored."),
    ("gaps", "Jumps in update ids within one connection."),
    ("missed_ids", "Update ids skipped by those jumps."),
    ("reconnects", "Connections lost and replaced."),
    ("restarts", "Restarts of the whole feed after a failure."),
    ("rollovers", "Connections replaced on purpose (age limit, announced shutdown, resync)."),
    ("resyncs", "Connections replaced to recover a book lost to a corrupt frame."),
    ("stale", "Connections given up for silence."),
    ("errors", "Error answers from the exchange."),
    ("sink_errors", "Failed writes of received rows (retried)."),
    ("dropped_rows", "Received rows lost after the writes failed repeatedly."),
    ("rest_errors", "Failed REST requests (symbol sync, balance polls)."),
)
_FEED_ROWS = tuple((t.feed_rows, t.name) for t in TABLES)
_WRITER_COUNTERS = (
    ("rows_accepted", "Rows accepted for writing."),
    ("rows_committed", "Rows committed."),
    ("batches_committed", "Batches committed."),
    ("batches_spooled", "Batches written to the spool while the database was away."),
    ("batches_replayed", "Spooled batches committed later."),
    ("duplicates_skipped", "Batch retries skipped because the first attempt had committed."),
    ("retries", "Commit attempts retried."),
    ("rows_dropped", "Rows dropped by the drop_oldest policy."),
)
_WRITER_GAUGES = (
    ("rows_pending", "Rows accepted and not yet committed."),
    ("rows_in_memory", "Rows held in memory."),
    ("batches_queued", "Sealed batches waiting for their commit."),
    ("spool_bytes", "Bytes in the spool."),
)


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float | int | bool | None, **labels: str) -> None:
        if value is None:
            return
        self.samples.append((labels, float(value)))


class _Exposition:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.families: dict[str, _Family] = {}

    def family(self, name: str, kind: str, help_text: str) -> _Family:
        full = f"{self.prefix}_{name}"
        fam = self.families.get(full)
        if fam is None:
            fam = self.families[full] = _Family(full, kind, help_text)
        return fam

    def text(self) -> str:
        lines: list[str] = []
        for fam in self.families.values():
            # Declared even without samples (no reject yet, say), so dashboards and alerts find every family.
            lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
            lines.append(f"# TYPE {fam.name} {fam.kind}")
            for labels, value in fam.samples:
                label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{fam.name}{{{label_text}}} {_number(value)}" if label_text else f"{fam.name} {_number(value)}")
        return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


class Families(Protocol):
    """Where :func:`collect` puts the metric families it finds in a snapshot."""

    def family(self, name: str, kind: str, help_text: str) -> Family:
        """The family ``<prefix>_<name>`` of ``kind`` ('counter' or 'gauge'), created on first use."""
        ...


class Family(Protocol):
    """One metric family: samples are added to it by labels."""

    def add(self, value: float | int | bool | None, **labels: str) -> None:
        """Add one sample (None adds nothing)."""
        ...


def render(snapshot: Mapping[str, Any], *, prefix: str = "hftdb") -> str:
    """The daemon's snapshot (as served on ``/stats``) in the Prometheus text format."""
    out = _Exposition(prefix)
    collect(out, snapshot)
    return out.text()


def collect(out: Families, snapshot: Mapping[str, Any]) -> None:
    """Walk the snapshot into ``out``'s metric families: every family and sample :func:`render` writes, in order.

    ``benchmarks/bench_metrics.py`` runs the same walk into prometheus_client's families to compare the two
    expositions.
    """
    out.family("info", "gauge", "Always 1; the labels say which hftdb runs and how.").add(
        1, version=str(snapshot.get("version", "")), mode=str(snapshot.get("mode", ""))
    )
    out.family("uptime_seconds", "gauge", "Seconds since the daemon started.").add(snapshot.get("uptime_s"))
    health = snapshot.get("health") or {}
    if "ok" in health:
        out.family("healthy", "gauge", "1 when /health answers 200.").add(bool(health["ok"]))
    maintenance = snapshot.get("maintenance") or {}
    out.family("maintenance_runs_total", "counter", "Maintenance passes completed.").add(maintenance.get("runs"))
    out.family("maintenance_failures_total", "counter", "Maintenance passes that failed.").add(maintenance.get("failures"))
    _render_feeds(out, snapshot.get("feeds") or {})
    _render_writers(out, snapshot.get("writers") or {})
    database = snapshot.get("database") or {}
    if "ok" in database:
        out.family("database_up", "gauge", "1 when the database answered the last check.").add(bool(database["ok"]))
        latency = database.get("latency_ms")
        out.family("database_latency_seconds", "gauge", "Round trip of the last database check.").add(
            None if latency is None else latency / 1000
        )
    for table, t in (snapshot.get("tables") or {}).items():
        out.family("table_bytes", "gauge", "Size on disk, partitions and indexes included.").add(t.get("bytes"), table=table)
        out.family("table_estimated_rows", "gauge", "Planner's row estimate.").add(t.get("estimated_rows"), table=table)
        out.family("table_partitions", "gauge", "Attached partitions.").add(t.get("partitions"), table=table)
    for table, a in ((snapshot.get("archive") or {}).get("tables") or {}).items():
        out.family("archive_days", "gauge", "Days of the table in the Parquet archive.").add(a.get("days"), table=table)
        out.family("archive_files", "gauge", "Parquet files of the table in the archive.").add(a.get("files"), table=table)
        out.family("archive_rows", "gauge", "Rows of the table in the archive.").add(a.get("rows"), table=table)
        out.family("archive_bytes", "gauge", "Bytes of the table's Parquet files.").add(a.get("bytes"), table=table)
        out.family("archive_damaged_manifests", "gauge",
                   "Archive manifests that cannot be read, left out of the figures (hftdb archive verify).").add(
            a.get("damaged_manifests"), table=table)
        out.family("archive_bytes_per_row", "gauge", "Parquet bytes per archived row.").add(
            a.get("bytes_per_row"), table=table)
        out.family("hot_bytes_per_row", "gauge", "PostgreSQL bytes per row (indexes included), from the estimate.").add(
            a.get("hot_bytes_per_row"), table=table)
    for cache, c in (snapshot.get("caches") or {}).items():
        out.family("cache_hits_total", "counter", "Cache lookups answered from the cache.").add(c.get("hits"), cache=cache)
        out.family("cache_misses_total", "counter", "Cache lookups that went to the database.").add(c.get("misses"), cache=cache)
        out.family("cache_expirations_total", "counter", "Cache entries expired by their TTL.").add(c.get("expirations"), cache=cache)
        out.family("cache_entries", "gauge", "Entries in the cache.").add(c.get("size"), cache=cache)
    pool = snapshot.get("pool") or {}
    if pool:
        conns = out.family("pool_connections", "gauge", "Connections of the pool, by state.")
        conns.add(pool.get("size"), state="open")
        conns.add(pool.get("idle"), state="idle")
        out.family("pool_max_connections", "gauge", "The pool's maximum size.").add(pool.get("max"))
    for venue, channels in ((snapshot.get("demo") or {}).get("sent") or {}).items():
        fam = out.family("demo_sent_messages_total", "counter", "Distinct data messages the demo's simulator sent.")
        for channel, count in channels.items():
            fam.add(count, venue=venue, channel=channel)


def _render_feeds(out: Families, feeds: Mapping[str, Mapping[str, Any]]) -> None:
    for venue, f in feeds.items():
        out.family("feed_up", "gauge", "1 while the feed streams and is not stale.").add(bool(f.get("live")), venue=venue)
        out.family("feed_connections", "gauge", "Open websocket connections.").add(f.get("connections"), venue=venue)
        out.family("feed_last_message_age_seconds", "gauge", "Seconds since the feed's last message.").add(
            f.get("last_message_age_s"), venue=venue
        )
        for name, help_text in _FEED_COUNTERS:
            out.family(f"feed_{name}_total", "counter", help_text).add(f.get(name), venue=venue)
        rows = out.family("feed_rows_total", "counter", "Rows the feed handed to the writers, by table.")
        for key, table in _FEED_ROWS:
            rows.add(f.get(key), venue=venue, table=table)
        rejects = out.family("feed_rejects_total", "counter", "Frames the parser rejected, by reason.")
        for reason, count in (f.get("rejects_by_reason") or {}).items():
            rejects.add(count, venue=venue, reason=reason)


def _render_writers(out: Families, writers: Mapping[str, Mapping[str, Any]]) -> None:
    for table, w in writers.items():
        for name, help_text in _WRITER_COUNTERS:
            out.family(f"writer_{name}_total", "counter", help_text).add(w.get(name), table=table)
        for name, help_text in _WRITER_GAUGES:
            out.family(f"writer_{name}", "gauge", help_text).add(w.get(name), table=table)
        commit = out.family("writer_commit_seconds", "gauge", "Commit duration of recent batches, by quantile.")
        for key, q in (("commit_p50_ms", "0.5"), ("commit_p99_ms", "0.99")):
            value = w.get(key)
            commit.add(None if value is None else value / 1000, table=table, quantile=q)
        out.family("writer_mean_batch_rows", "gauge", "Mean rows per recent batch.").add(w.get("mean_batch_rows"), table=table)
        rejects = out.family("writer_rejects_total", "counter", "Rows rejected by validation, by reason.")
        for reason, count in (w.get("rejects") or {}).items():
            rejects.add(count, table=table, reason=reason)


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class MetricsServer:
    """Serves ``/metrics``, ``/health`` and ``/stats`` from two callbacks: ``snapshot()`` (the ``/stats`` dict) and
    ``health()`` (a dict with ``ok``; 503 when false).

    >>> async with MetricsServer(snapshot, health, host="127.0.0.1", port=9464) as server:
    ...     print(server.url)
    """

    def __init__(self, snapshot: Snapshot, health: Health, *, host: str = "127.0.0.1", port: int = 9464) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {port!r}")
        if not host:
            raise ValueError("host must not be empty")
        self.host = host
        self.port = port
        self._snapshot = snapshot
        self._health = health
        self._runner: web.AppRunner | None = None
        self._state = _State.UNOPENED

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url if self._state is _State.OPENED else self._state.value}>"

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._state is not _State.OPENED:
            raise StateError("the metrics server is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve. A port in use is a :class:`~hftdb.errors.ConfigError` naming ``[metrics] port``."""
        if self._state is not _State.UNOPENED:
            raise StateError(f"{self!r} cannot be started twice")
        app = web.Application()
        app.add_routes([
            web.get("/", self._index),
            web.get("/metrics", self._metrics),
            web.get("/health", self._health_route),
            web.get("/stats", self._stats),
        ])
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._state = _State.CLOSED
            raise ConfigError(
                f"[metrics] cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(set [metrics] port, HFTDB_METRICS_PORT, or port = 0 for any free port)"
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        self._state = _State.OPENED
        logger.info("metrics on %s/metrics, health on %s/health", self.url, self.url)

    async def close(self) -> None:
        """Stop serving. Idempotent."""
        self._state = _State.CLOSED
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="hftdb: /metrics /health /stats\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        text = redact(render(await self._snapshot()))
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _health_route(self, request: web.Request) -> web.Response:
        result = await self._health()
        return _json(result, status=200 if result.get("ok") else 503)

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(await self._snapshot())


def _json(obj: Any, *, status: int = 200) -> web.Response:
    # Redacted once more as a whole: what reaches the network is held to the same rule as a log line, whichever
    # part of the snapshot a secret came in by (an error's text, a DSN).
    text = orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return web.Response(body=redact(text).encode(), status=status, content_type="application/json")


def family_names(text: str) -> Iterable[str]:
    """The metric family names declared in an exposition (``# TYPE`` lines); for tests and the dashboard check."""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            yield line.split()[2]

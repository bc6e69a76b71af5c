"""What the database holds, for ``hftdb stats`` and ``hftdb status``: table sizes and row estimates, rows per
day, partitions, and the slowest queries when ``pg_stat_statements`` is installed.

Row counts are the planner's estimates unless asked for exactly (a scan of every time-series table); a
partition never analyzed has no estimate, shown as ``?``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import asyncpg
import msgspec

from ..read import reads
from ..db.partitions import TIME_SERIES_TABLES, list_partitions
from ..tablespec import ALL_TABLES

__all__ = ["TABLES", "tables", "collect", "render", "size", "utc", "approx"]

#: hftdb's tables, in the order reports list them
TABLES = ALL_TABLES


async def tables(conn: asyncpg.Connection, partitions: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, dict[str, Any]]:
    """Bytes, estimated rows (None when unknown) and partition count of each hftdb table, and on Citus with a
    worker down the number of ``unreachable_shards`` left out of a table's size."""
    if partitions is None:
        partitions = await _partitions(conn)
    out = {}
    for name, t in (await reads.table_stats(conn))["tables"].items():
        rows = t["estimated_rows"]
        parts = partitions.get(name)
        if parts is not None:
            # From the partition list, as the report lists them (on Citus, their shards' figures).
            known = [p["rows"] for p in parts]
            rows = None if any(r is None for r in known) else sum(known)
        out[name] = {"bytes": t["bytes"], "rows": rows, "partitions": t["partitions"]}
        if t.get("unreachable_shards"):
            # Citus with a worker down: the size leaves its shards out and the row count is unknown.
            out[name].update(rows=None, unreachable_shards=t["unreachable_shards"])
    return out


async def _partitions(conn: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    return {t: [msgspec.to_builtins(p) for p in await list_partitions(conn, t)] for t in TIME_SERIES_TABLES}


async def collect(conn: asyncpg.Connection, *, exact: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole report as plain data (what ``hftdb stats --json`` prints, less the daemon's counters)."""
    partitions = await _partitions(conn)
    report: dict[str, Any] = {"tables": await tables(conn, partitions), "partitions": partitions}
    ts = TIME_SERIES_TABLES
    if exact:
        per_day: dict[str, dict[str, int | None]] = {}
        for i, table in enumerate(ts, 1):
            if progress is not None:
                progress(f"[{i}/{len(ts)}] counting {table} rows per day")
            rows = await conn.fetch(  # table names from the fixed TIME_SERIES_TABLES
                f"SELECT (recv_ts AT TIME ZONE 'UTC')::date::text AS day, count(*) AS n FROM {table} GROUP BY 1 ORDER BY 1"
            )
            per_day[table] = {r["day"]: r["n"] for r in rows}
    else:
        per_day = {t: _estimate_per_day(partitions[t]) for t in ts}
    report["rows_per_day"] = per_day
    report["rows_per_day_exact"] = exact
    report["slow_queries"] = await _slow_queries(conn)
    return report


def _estimate_per_day(partitions: list[dict[str, Any]]) -> dict[str, int | None]:
    days: dict[str, int | None] = {}
    for p in partitions:
        if p["lower_us"] is None:
            continue
        day = utc(p["lower_us"])[:10]
        if p["rows"] is None:
            days.setdefault(day, None)
        else:
            days[day] = (days.get(day) or 0) + p["rows"]
    return days


async def _slow_queries(conn: asyncpg.Connection) -> dict[str, Any]:
    if not await conn.fetchval("SELECT true FROM pg_extension WHERE extname = 'pg_stat_statements'"):
        return {"available": False, "reason": "pg_stat_statements is not installed (CREATE EXTENSION pg_stat_statements, "
                "with it in shared_preload_libraries)"}
    try:
        rows = await conn.fetch(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 160) AS query, calls, mean_exec_time, total_exec_time"
            " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " ORDER BY mean_exec_time DESC LIMIT 10"
        )
    except asyncpg.PostgresError as exc:
        return {"available": False, "reason": str(exc)}
    return {"available": True, "queries": [dict(r) for r in rows]}


def render(report: dict[str, Any], *, daemon_url: str) -> list[str]:
    """The report as text lines; ``report["daemon"]`` holds the running daemon's counters, or None (with
    ``report["daemon_elsewhere"]`` saying why when the daemon answering serves another database)."""
    out: list[str] = ["Tables", f"  {'table':<22} {'rows':>14} {'size':>10} {'partitions':>10}"]
    for table in TABLES:
        t = report["tables"].get(table)
        if t is not None:
            out.append(f"  {table:<22} {approx(t['rows']):>14} {size(t['bytes']):>10} {t['partitions'] or '':>10}")
    lost = sum(t.get("unreachable_shards", 0) for t in report["tables"].values())
    if not lost and any(t["rows"] is None for t in report["tables"].values()):
        out.append("  (? = not analyzed yet: `hftdb optimize` runs ANALYZE)")
    if lost:
        out.append(f"  WARNING Citus: {lost} shard(s) are on a worker that does not answer: sizes leave them out, "
                   "rows of their tables are unknown (?)")
    kind = "counted" if report["rows_per_day_exact"] else "estimated from partition statistics; --exact counts"
    out.append(f"\nRows per day ({kind})")
    unknown = False
    for table, days in report["rows_per_day"].items():
        shown = ", ".join(f"{d} {'?' if n is None else f'{n:,}'}" for d, n in days.items()) or "none"
        unknown = unknown or any(n is None for n in days.values())
        out.append(f"  {table:<14} {shown}")
    if unknown:
        out.append("  (? = not analyzed yet: `hftdb optimize` runs ANALYZE)")
    out.append("\nPartitions")
    for parts in report["partitions"].values():
        for part in parts:
            out.append(f"  {part['name']:<30} {utc(part['lower_us'])} .. {utc(part['upper_us'])}  "
                       f"{size(part['size_bytes']):>9}  {approx(part['rows']):>10} rows  btree {'yes' if part['has_btree'] else 'no'}")
    arch = report.get("archive")
    if arch is not None:
        out.append(f"\nArchive (Parquet, {arch['root']})")
        for table, a in arch["tables"].items():
            damaged = a.get("damaged_manifests")
            if not a["partitions"]:
                out.append(f"  {table:<14} nothing archived" if not damaged else f"  {table:<14} nothing readable")
            else:
                ratio = a.get("times_smaller")
                hot = a.get("hot_bytes_per_row")
                out.append(f"  {table:<14} {a['days']} day(s) {a['first_day']} .. {a['last_day']}, {a['files']} "
                           f"file(s), {a['rows']:,} rows, {size(a['bytes'])}, {a['bytes_per_row']:.1f} bytes/row"
                           + (f" (hot tier {hot:.1f}: {ratio:.1f}x smaller)" if ratio else ""))
            if damaged:
                out.append(f"  {'':<14} DAMAGED: {damaged} manifest(s) cannot be read, not counted above; "
                           f"`hftdb archive verify --table {table}` names them")
    daemon = report.get("daemon")
    if daemon is None and report.get("daemon_elsewhere"):
        out.append(f"\nWriters and caches: not shown, {report['daemon_elsewhere']}")
    elif daemon is None:
        out.append(f"\nWriters and caches: the daemon is not answering at {daemon_url} (its counters live in it)")
    else:
        out.append(f"\nWriters (daemon, {daemon.get('mode')})")
        for table, w in (daemon.get("writers") or {}).items():
            rejects = sum((w.get("rejects") or {}).values())
            p99 = w.get("commit_p99_ms")
            out.append(f"  {table:<14} committed {w['rows_committed']:>12,}  pending {w['rows_pending']:>8,}  batches "
                       f"{w['batches_committed']:,}  spooled {w['batches_spooled']}  retries {w['retries']}  "
                       f"rejects {rejects}  p99 {'-' if p99 is None else f'{p99:.1f} ms'}")
        out.append("Caches (daemon)")
        for cache, c in (daemon.get("caches") or {}).items():
            out.append(f"  {cache:<14} hits {c['hits']:,}  misses {c['misses']:,}  entries {c['size']:,}")
    slow = report["slow_queries"]
    out.append("\nSlowest queries (pg_stat_statements, by mean time)")
    if not slow["available"]:
        out.append(f"  unavailable: {slow['reason']}")
    for q in slow.get("queries", []):
        out.append(f"  {q['mean_exec_time']:>9.2f} ms x {q['calls']:<8,} {q['query']}")
    return out


def size(n: int | None) -> str:
    """Bytes for people: ``1.2 MB``."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def utc(us: int | None) -> str:
    """Unix microseconds as ``YYYY-MM-DD HH:MM`` (UTC); ``-`` for an open bound."""
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M")


def approx(n: int | None) -> str:
    """A planner estimate: ``~1,234``, or ``?`` before the table was first analyzed."""
    return "?" if n is None else f"~{n:,}"

"""Partitions of the time-series tables: naming, creation ahead and on demand, retention, indexing, upkeep.

``book_tickers``, ``funding_rates`` and ``balances`` are range-partitioned on ``recv_ts``. Partitions align to
multiples of ``interval_s`` seconds since the Unix epoch and are named ``<table>_pYYYYMMDD``, or
``<table>_pYYYYMMDD_HHMM`` when the interval is not a whole number of days. A new partition gets a BRIN index
on ``recv_ts`` (cheap to maintain under COPY); once sealed it gets a btree on its lookup key
(:func:`index_cold_partitions`). Retention drops whole partitions, never deletes rows. :func:`maintain` is one
upkeep pass over all three tables (and trims the ``ingest_batches`` ledger).

Locks, chosen so that partition upkeep never stalls the writers' COPY into the parent table:
    * a partition is created standalone and then ``ATTACH``-ed (SHARE UPDATE EXCLUSIVE on the parent) rather than
      made with ``CREATE TABLE ... PARTITION OF`` (ACCESS EXCLUSIVE on the parent, which queues every writer
      behind the longest running reader);
    * retention uses ``DETACH PARTITION ... CONCURRENTLY`` then drops the detached table, for the same reason
      (on Citus, which has no CONCURRENTLY for distributed tables, a plain DETACH: :mod:`hftdb.db.citus`);
    * sealed partitions are indexed with ``CREATE INDEX CONCURRENTLY``: late (spooled) rows may still arrive.
    Creation is serialized per table by a transaction-level advisory lock, drop and index by a session-level one.
    That one (the maintenance lock, also held by archiving) is polled with ``pg_try_advisory_lock``, never waited
    for inside a statement: a waiting statement holds a snapshot, which the holder's ``CREATE INDEX
    CONCURRENTLY`` waits for, a cycle the server broke with "deadlock detected". A caller waits up to an hour,
    then gets a StateError naming the server process holding it.

The tables themselves are created by the versioned migrations of :mod:`hftdb.db.schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta, timezone
from typing import Final, Literal

import asyncpg
import msgspec

from . import citus
from ..config import StorageSettings
from ..errors import DatabaseError, StateError, ValidationError
from .locks import unlock
from ..tablespec import TABLES, TIME_SERIES

__all__ = [
    "TIME_SERIES_TABLES",
    "PartitionInfo",
    "MaintenanceReport",
    "partition_bounds",
    "partition_name",
    "ensure_partitions",
    "list_partitions",
    "drop_partitions_before",
    "index_cold_partitions",
    "maintain",
    "is_hftdb_partition",
    "maintenance_lock",
    "sealed_partitions",
    "detach_partition",
    "detached_tables",
    "drop_detached",
]

logger = logging.getLogger(__name__)

# Per-table keys: ``hftdbpt`` / ``hftdbmn`` plus the table's index in TIME_SERIES_TABLES as the low byte.
_PARTITION_LOCK_BASE: Final = int.from_bytes(b"hftdbpt\x00", "big")
_MAINTENANCE_LOCK_BASE: Final = int.from_bytes(b"hftdbmn\x00", "big")

#: The range-partitioned tables (:mod:`hftdb.tablespec`), the only identifiers partition management formats
#: into SQL.
TIME_SERIES_TABLES: Final = TIME_SERIES
# Lookup key of the btree given to sealed partitions (and to new ones with hot_index="btree").
_BTREE_COLUMNS: Final = {t.name: ", ".join((*t.key, "recv_ts")) for t in TABLES}

_US: Final = 1_000_000
_DAY_S: Final = 86_400
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_PARTITIONS_PER_CALL: Final = 10_000
_LEDGER_DELETE_CHUNK: Final = 50_000
# How long a caller waits for a table's maintenance lock before it gives up with a StateError naming the holder:
# an archive of a large partition holds it for minutes.
_MAINTENANCE_LOCK_WAIT_S: Final = 3600.0
# The lock is polled (see _take_maintenance_lock), first this often, backing off to the second.
_LOCK_POLL_FIRST_S: Final = 0.01
_LOCK_POLL_MAX_S: Final = 0.5
# Set on a partition just before retention detaches it, so a run interrupted between DETACH and DROP can tell
# its own leftovers from tables someone else detached on purpose.
_DROP_MARKER: Final = "hftdb: retention drop in progress"

_IDENT_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_BOUND_RE = re.compile(r"^FOR VALUES FROM \('([^']*)'\) TO \('([^']*)'\)$")


class PartitionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One attached partition. Bounds are Unix µs, None for MINVALUE/MAXVALUE/DEFAULT; ``rows`` is the
    planner's estimate, None until the partition is first analyzed (0 while its heap is empty: none was ever
    written to it); ``size_bytes`` includes indexes."""

    table: str
    name: str
    lower_us: int | None
    upper_us: int | None
    rows: int | None
    size_bytes: int
    has_btree: bool


class MaintenanceReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one :func:`maintain` pass did: partition names created, dropped and given their btree."""

    created: list[str]
    dropped: list[str]
    indexed: list[str]
    ledger_rows_deleted: int


def _check_table(table: object) -> str:
    if table not in TIME_SERIES_TABLES:
        raise ValidationError(f"table must be one of {', '.join(TIME_SERIES_TABLES)}; got {table!r}")
    return table  # type: ignore[return-value]


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{name} must be an int (µs since the Unix epoch), got {value!r}")
    return value


def _check_interval(interval_s: object) -> int:
    if not isinstance(interval_s, int) or isinstance(interval_s, bool) or interval_s < 60 or interval_s % 60:
        raise ValidationError(f"interval_s must be a whole number of minutes, at least 60, got {interval_s!r}")
    return interval_s


def _utc(us: int) -> datetime:
    try:
        return _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        raise ValidationError(f"timestamp {us} µs is outside years 1-9999") from None


def partition_bounds(ts_us: int, interval_s: int) -> tuple[int, int]:
    """The ``[lower, upper)`` bounds in µs of the partition that holds ``ts_us``."""
    step = _check_interval(interval_s) * _US
    lower = _check_int("ts_us", ts_us) // step * step
    return lower, lower + step


def partition_name(table: str, ts_us: int, *, interval_s: int) -> str:
    """Name of ``table``'s partition holding ``ts_us``: ``<table>_pYYYYMMDD`` or ``<table>_pYYYYMMDD_HHMM``."""
    _check_table(table)
    lower, _ = partition_bounds(ts_us, interval_s)
    at = _utc(lower)
    day = f"{table}_p{at.year:04d}{at.month:02d}{at.day:02d}"
    return day if interval_s % _DAY_S == 0 else f"{day}_{at.hour:02d}{at.minute:02d}"


def _is_ours(table: str, name: str) -> bool:
    return re.fullmatch(re.escape(table) + r"_p\d{8}(?:_\d{4})?", name) is not None


def _ident(name: str) -> str:
    # Every identifier is a table from TIME_SERIES_TABLES or a name built from one and digits; check, then quote.
    if _IDENT_RE.fullmatch(name) is None:
        raise ValueError(f"refusing to put {name!r} into SQL as an identifier")
    return f'"{name}"'


def _bound_literal(us: int) -> str:
    # Bounds cannot be bind parameters; the literal is an ISO-8601 UTC time made from an int we computed.
    text = _utc(_check_int("bound", us)).isoformat(sep=" ")
    if re.fullmatch(r"[0-9 :.+-]+", text) is None:
        raise ValueError(f"unexpected bound literal {text!r}")
    return f"'{text}'"


async def _partitions(conn: asyncpg.Connection, table: str) -> list[asyncpg.Record]:
    # Bounds are read back from the catalog, not parsed from names: a partition made by hand (or with another
    # interval) still reports its true range. The literal is re-read in the session that printed it, so
    # DateStyle and TimeZone round-trip.
    return await conn.fetch(
        """
        SELECT c.relname AS name,
               (extract(epoch FROM b[1]::timestamptz) * 1000000)::bigint AS lower_us,
               (extract(epoch FROM b[2]::timestamptz) * 1000000)::bigint AS upper_us,
               c.reltuples::bigint AS reltuples,
               pg_relation_size(c.oid) AS heap_bytes,
               pg_total_relation_size(c.oid) AS size_bytes,
               EXISTS (SELECT 1 FROM pg_index x JOIN pg_class xc ON xc.oid = x.indexrelid
                       WHERE x.indrelid = c.oid AND x.indisvalid AND xc.relname = c.relname || '_btree') AS has_btree,
               i.inhdetachpending AS detach_pending,
               obj_description(c.oid, 'pg_class') AS comment
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), $2) AS b
        WHERE i.inhparent = $1::regclass
        ORDER BY lower_us NULLS FIRST, c.relname
        """,
        table, _BOUND_RE.pattern,
    )


async def list_partitions(conn: asyncpg.Connection, table: str) -> list[PartitionInfo]:
    """The attached partitions of ``table``, oldest first, with bounds, size and whether the btree is built."""
    _check_table(table)
    rows = [row for row in await _partitions(conn, table) if not row["detach_pending"]]
    # On Citus the coordinator's partitions are empty shells: their shards' figures replace the catalog's.
    shards = await citus.relation_stats(conn, [row["name"] for row in rows])
    out = []
    for row in rows:
        # A partition with a shard on a worker that is down has a partial size and no row estimate (unknown).
        figures = shards.get(row["name"])
        # Never analyzed (reltuples -1): unknown, unless its heap is empty (a partition made ahead holds no row).
        unknown = row["reltuples"] < 0 and row["heap_bytes"] > 0
        size, est = ((row["size_bytes"], None if unknown else max(row["reltuples"], 0)) if figures is None
                     else (figures.bytes, figures.rows))
        out.append(PartitionInfo(table=table, name=row["name"], lower_us=row["lower_us"], upper_us=row["upper_us"],
                                 rows=est, size_bytes=size, has_btree=row["has_btree"]))
    return out


def _uncovered(
    table: str, wanted: Iterable[tuple[int, int]], existing: list[tuple[int | None, int | None]]
) -> list[tuple[int, int]]:
    # A wanted range is fine when existing partitions cover it entirely (say daily ones, after a switch to hourly),
    # missing when none overlaps it, and a conflict otherwise: attaching it would fail on the overlap.
    low, high = -(1 << 63), 1 << 63
    spans = sorted((low if lo is None else lo, high if hi is None else hi) for lo, hi in existing)
    missing = []
    for lo, hi in wanted:
        pos = lo
        overlapping = [(a, b) for a, b in spans if a < hi and b > lo]
        for a, b in overlapping:
            if a > pos:
                break
            pos = max(pos, b)
        if not overlapping:
            missing.append((lo, hi))
        elif pos < hi:
            raise ValidationError(
                f"{table}: the partition for [{_utc(lo)}, {_utc(hi)}) would overlap existing partitions that do not "
                "cover it; was storage.partition_interval_s changed to one that does not nest?"
            )
    return missing


async def ensure_partitions(
    conn: asyncpg.Connection,
    table: str,
    start_us: int,
    end_us: int,
    *,
    interval_s: int,
    hot_index: Literal["brin", "btree"] = "brin",
) -> list[str]:
    """Create every missing partition of ``table`` covering ``[start_us, end_us]``; return the names created.

    Idempotent and safe against concurrent callers. Each new partition gets a BRIN index on ``recv_ts``
    (pages_per_range 32), and with ``hot_index="btree"`` also its btree. Works inside a caller's transaction
    (then the creation commits with it).
    """
    _check_table(table)
    start_us, end_us = _check_int("start_us", start_us), _check_int("end_us", end_us)
    if end_us < start_us:
        raise ValidationError(f"end_us ({end_us}) is before start_us ({start_us})")
    if hot_index not in ("brin", "btree"):
        raise ValidationError(f"hot_index must be 'brin' or 'btree', got {hot_index!r}")
    step = _check_interval(interval_s) * _US
    first, last = start_us // step * step, end_us // step * step
    if (last - first) // step >= _MAX_PARTITIONS_PER_CALL:
        raise ValidationError(f"[{start_us}, {end_us}] spans over {_MAX_PARTITIONS_PER_CALL} partitions")
    wanted = [(lo, lo + step) for lo in range(first, last + 1, step)]
    lock_key = _PARTITION_LOCK_BASE + TIME_SERIES_TABLES.index(table)
    # Unlocked first look: the usual answer is "all there", and then we take no lock at all.
    existing = [(r["lower_us"], r["upper_us"]) for r in await _partitions(conn, table)]
    created = []
    for lo, hi in _uncovered(table, wanted, existing):
        name = partition_name(table, lo, interval_s=interval_s)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
                existing = [(r["lower_us"], r["upper_us"]) for r in await _partitions(conn, table)]
                if not _uncovered(table, [(lo, hi)], existing):
                    continue  # another process made it while we waited
                for statement in _create_statements(table, name, lo, hi, hot_index):
                    await conn.execute(statement)
        except asyncpg.DuplicateTableError as exc:
            # (The creation's transaction, or savepoint in the caller's, is rolled back: the connection is usable.)
            if await _being_dropped(conn, name):
                # Detached by an archive or retention run that has not dropped it yet (still running, or killed
                # in between: its rerun drops it). The name is free again then: an outage-like wait (SQLSTATE
                # 55006 object_in_use, dberrors.WAIT) for writers, who keep the rows and retry.
                raise asyncpg.ObjectInUseError(
                    f"{name} of {table} is detached for archiving or retention and not dropped yet; its rows wait "
                    "until that run (or `hftdb archive` / `hftdb cleanup` run again) drops it") from exc
            raise DatabaseError(
                f"table {name} exists but is not a partition of {table}; inspect it and drop or attach it"
            ) from exc
        logger.info("created partition %s [%s, %s)", name, _utc(lo), _utc(hi))
        created.append(name)
    return created


async def _being_dropped(conn: asyncpg.Connection, name: str) -> bool:
    # Both hftdb markers of a detached partition on its way to DROP (retention's _DROP_MARKER and the archive's,
    # hftdb.read.archive.MARKER) end so.
    return bool(await conn.fetchval(
        "SELECT NOT c.relispartition AND obj_description(c.oid, 'pg_class') LIKE 'hftdb: %drop in progress'"
        " FROM pg_class c WHERE c.oid = to_regclass($1)", _ident(name)))


def _create_statements(table: str, name: str, lower: int, upper: int, hot_index: str) -> list[str]:
    part = _ident(name)
    statements = [
        f"CREATE TABLE {part} (LIKE {_ident(table)} INCLUDING ALL EXCLUDING INDEXES)",
        f"CREATE INDEX {_ident(name + '_brin')} ON {part} USING brin (recv_ts) WITH (pages_per_range = 32)",
    ]
    if hot_index == "btree":
        statements.append(_btree_statement(table, name, concurrently=False))
    statements.append(
        f"ALTER TABLE {_ident(table)} ATTACH PARTITION {part} "
        f"FOR VALUES FROM ({_bound_literal(lower)}) TO ({_bound_literal(upper)})"
    )
    return statements


def _btree_statement(table: str, name: str, *, concurrently: bool) -> str:
    how = "CONCURRENTLY " if concurrently else ""
    return f"CREATE INDEX {how}IF NOT EXISTS {_ident(name + '_btree')} ON {_ident(name)} ({_BTREE_COLUMNS[table]})"


async def _take_maintenance_lock(conn: asyncpg.Connection, table: str, key: int) -> None:
    # Polled, never waited for inside a statement: a statement waiting for the lock holds a snapshot, and the
    # holder's CREATE INDEX CONCURRENTLY (or DETACH CONCURRENTLY) waits for every older snapshot to go, so a
    # blocking pg_advisory_lock made a cycle the server broke with "deadlock detected". Between two tries this
    # session holds no snapshot (the caller is outside a transaction: checked above).
    deadline = time.monotonic() + _MAINTENANCE_LOCK_WAIT_S
    pause = _LOCK_POLL_FIRST_S
    logged = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
        if not logged:
            holder = await _lock_holder(conn, key)
            logger.info("waiting for the maintenance lock of %s (held by server process %s: another archive, "
                        "optimize, cleanup or upkeep pass)", table, holder)
            logged = True
        if time.monotonic() >= deadline:
            holder = await _lock_holder(conn, key)
            raise StateError(
                f"the maintenance lock of {table} was not free within {_MAINTENANCE_LOCK_WAIT_S:.0f} s: server "
                f"process {holder} holds it (another hftdb archive, optimize, cleanup or upkeep); try again later")
        await asyncio.sleep(pause)
        pause = min(pause * 2, _LOCK_POLL_MAX_S)


async def _lock_holder(conn: asyncpg.Connection, key: int) -> object:
    return await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid::bigint = ($1::bigint >> 32) AND objid::bigint = ($1::bigint & 4294967295) LIMIT 1", key)


@contextlib.asynccontextmanager
async def _maintenance_lock(conn: asyncpg.Connection, table: str) -> AsyncIterator[None]:
    if conn.is_in_transaction():
        raise StateError("partition maintenance needs a connection outside a transaction (it runs CONCURRENTLY)")
    key = _MAINTENANCE_LOCK_BASE + TIME_SERIES_TABLES.index(table)
    await _take_maintenance_lock(conn, table, key)
    try:
        yield
    finally:
        await unlock(conn, key)


async def drop_partitions_before(
    conn: asyncpg.Connection, table: str, cutoff_us: int, *, dry_run: bool = False
) -> list[str]:
    """Drop ``table``'s partitions whose upper bound is <= ``cutoff_us``; return their names (all that would go
    when ``dry_run``). Only partitions named by hftdb are dropped; others are logged and kept.

    Partitions are detached CONCURRENTLY, so writers are never blocked; the connection must be outside a
    transaction. Leftovers of an interrupted run are finished first.
    """
    _check_table(table)
    _check_int("cutoff_us", cutoff_us)
    if dry_run:
        return [p.name for p in await list_partitions(conn, table) if _expired(table, p.name, p.upper_us, cutoff_us)]
    async with _maintenance_lock(conn, table):
        await _finish_interrupted_drops(conn, table)
        dropped = []
        for row in await _partitions(conn, table):
            if row["detach_pending"] or not _expired(table, row["name"], row["upper_us"], cutoff_us):
                continue
            await _detach(conn, table, row["name"], _DROP_MARKER)
            await conn.execute(f"DROP TABLE {_ident(row['name'])}")
            logger.info("dropped partition %s (upper bound %s <= cutoff %s)", row["name"], _utc(row["upper_us"]),
                        _utc(cutoff_us))
            dropped.append(row["name"])
        return dropped


def _expired(table: str, name: str, upper_us: int | None, cutoff_us: int) -> bool:
    if upper_us is None or upper_us > cutoff_us:
        return False
    if not _is_ours(table, name):
        logger.warning("retention keeps partition %s of %s: hftdb did not create it (drop it by hand)", name, table)
        return False
    return True


async def _finish_interrupted_drops(conn: asyncpg.Connection, table: str) -> None:
    # Retention's own leftovers: the same recovery archiving uses, with retention's marker.
    for name in await detached_tables(conn, table, marker=_DROP_MARKER):
        logger.warning("dropping %s, detached by an interrupted retention run", name)
        await conn.execute(f"DROP TABLE {_ident(name)}")


def is_hftdb_partition(table: str, name: str) -> bool:
    """Whether ``name`` is a partition name hftdb gives ``table``'s partitions (others are never dropped)."""
    return _is_ours(_check_table(table), name)


def maintenance_lock(conn: asyncpg.Connection, table: str) -> contextlib.AbstractAsyncContextManager[None]:
    """The session-level lock that retention, indexing and archiving of ``table`` hold while they run, so that
    no two of them work on the same partition at once. The connection must be outside a transaction."""
    return _maintenance_lock(conn, _check_table(table))


async def sealed_partitions(conn: asyncpg.Connection, table: str, cutoff_us: int) -> list[PartitionInfo]:
    """``table``'s attached partitions named by hftdb whose upper bound is <= ``cutoff_us``, oldest first."""
    _check_int("cutoff_us", cutoff_us)
    return [p for p in await list_partitions(conn, table)
            if p.upper_us is not None and p.upper_us <= cutoff_us and _is_ours(table, p.name)]


async def detach_partition(conn: asyncpg.Connection, table: str, name: str, *, marker: str) -> None:
    """Detach hftdb partition ``name`` of ``table`` CONCURRENTLY (writers are not blocked), first commenting it
    with ``marker`` so that :func:`detached_tables` finds it again after a crash; on Citus plainly, the marker
    set in the detach's own transaction. Call it under :func:`maintenance_lock`."""
    if not is_hftdb_partition(table, name):
        raise ValidationError(f"{name} is not an hftdb partition of {table}")
    await _detach(conn, table, name, marker)


async def _detach(conn: asyncpg.Connection, table: str, name: str, marker: str) -> None:
    part = _ident(name)
    if await citus.is_distributed(conn, table):
        # Citus supports neither DETACH ... CONCURRENTLY nor FINALIZE. A plain DETACH (ACCESS EXCLUSIVE on the
        # parent while it runs: writers wait that long) commits with the marker, so the marker is only ever on a
        # table that is detached, and a failed detach leaves the partition attached and unmarked.
        async with conn.transaction():
            await conn.execute(f"ALTER TABLE {_ident(table)} DETACH PARTITION {part}")
            await conn.execute(f"COMMENT ON TABLE {part} IS {_literal(marker)}")
        return
    # CONCURRENTLY runs in two transactions: the marker goes first, so a detach interrupted between them is
    # found (detach pending, marked) and finalized by detached_tables.
    await conn.execute(f"COMMENT ON TABLE {part} IS {_literal(marker)}")
    await conn.execute(f"ALTER TABLE {_ident(table)} DETACH PARTITION {part} CONCURRENTLY")


async def detached_tables(conn: asyncpg.Connection, table: str, *, marker: str) -> list[str]:
    """hftdb partitions of ``table`` detached with ``marker`` and not dropped yet (an interrupted run's), after
    finishing any detach that was interrupted half way. Call it under :func:`maintenance_lock`."""
    _check_table(table)
    for row in await _partitions(conn, table):
        if row["detach_pending"] and row["comment"] == marker and _is_ours(table, row["name"]):
            logger.warning("finishing the interrupted detach of %s", row["name"])
            await conn.execute(f"ALTER TABLE {_ident(table)} DETACH PARTITION {_ident(row['name'])} FINALIZE")
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND NOT c.relispartition"
        " AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $1::regclass)"
        " AND obj_description(c.oid, 'pg_class') = $2 ORDER BY c.relname",
        table, marker,
    )
    return [r["relname"] for r in rows if _is_ours(table, r["relname"])]


async def drop_detached(conn: asyncpg.Connection, table: str, name: str, *, marker: str) -> bool:
    """Drop the detached table ``name`` if it still carries ``marker`` and is no partition; return whether it
    was dropped. Never drops an attached partition."""
    if not is_hftdb_partition(table, name):
        raise ValidationError(f"{name} is not an hftdb partition of {table}")
    ok = await conn.fetchval(
        "SELECT NOT c.relispartition AND obj_description(c.oid, 'pg_class') = $2 FROM pg_class c"
        " WHERE c.oid = to_regclass($1)",
        _ident(name), marker,
    )
    if not ok:
        return False
    await conn.execute(f"DROP TABLE {_ident(name)}")
    return True


def _literal(text: str) -> str:
    # COMMENT takes no bind parameter; the markers are constants of hftdb's own, checked here all the same.
    if re.fullmatch(r"[A-Za-z0-9 :_.-]*", text) is None:
        raise ValueError(f"refusing to put {text!r} into SQL as a literal")
    return f"'{text}'"


async def index_cold_partitions(conn: asyncpg.Connection, table: str, now_us: int) -> list[str]:
    """Give every sealed partition (upper bound <= ``now_us``) of ``table`` its btree if it lacks one; return
    the partition names indexed.

    The btree is on (symbol_id, recv_ts), for balances (exchange_id, account, asset, recv_ts), built CONCURRENTLY
    (late rows may still arrive) and named ``<partition>_btree``; an invalid one left by an interrupted build is
    rebuilt. The connection must be outside a transaction.
    """
    _check_table(table)
    _check_int("now_us", now_us)
    async with _maintenance_lock(conn, table):
        indexed = []
        for part in await list_partitions(conn, table):
            if part.has_btree or part.upper_us is None or part.upper_us > now_us or not _is_ours(table, part.name):
                continue
            # has_btree is False for a missing index and for an invalid one, which IF NOT EXISTS would keep.
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_ident(part.name + '_btree')}")
            await conn.execute(_btree_statement(table, part.name, concurrently=True))
            logger.info("indexed sealed partition %s", part.name)
            indexed.append(part.name)
        return indexed


async def maintain(
    conn: asyncpg.Connection, settings: StorageSettings, now_us: int, *, retention: bool = True, drop: bool = True
) -> MaintenanceReport:
    """One upkeep pass for all time-series tables: create partitions from ``now_us`` through
    ``settings.partitions_ahead`` intervals ahead, drop those past ``retention_days``, trim the ``ingest_batches``
    ledger past ``ledger_retention_days`` and, with ``cold_btree``, index sealed partitions.

    ``retention=False`` deletes nothing (no drop, no ledger trim): for start-up, where a wrong clock or a freshly
    shortened setting should not cost data before anyone looks. ``drop=False`` trims the ledger but drops no
    partition: the caller archives them first (:mod:`hftdb.read.archive`). Run it periodically on a connection outside
    a transaction; it is idempotent.
    """
    _check_int("now_us", now_us)
    interval_s = settings.partition_interval_s
    ahead_us = settings.partitions_ahead * interval_s * _US
    cutoff_us = now_us - round(settings.retention_days * _DAY_S * _US)
    created: list[str] = []
    dropped: list[str] = []
    indexed: list[str] = []
    for table in TIME_SERIES_TABLES:
        created += await ensure_partitions(
            conn, table, now_us, now_us + ahead_us, interval_s=interval_s, hot_index=settings.hot_index
        )
        if retention and drop:
            dropped += await drop_partitions_before(conn, table, cutoff_us)
        if settings.cold_btree:
            indexed += await index_cold_partitions(conn, table, now_us)
    deleted = 0
    if retention:
        deleted = await _trim_ledger(conn, now_us - round(settings.ledger_retention_days * _DAY_S * _US))
    report = MaintenanceReport(created=created, dropped=dropped, indexed=indexed, ledger_rows_deleted=deleted)
    logger.info(
        "maintenance: %d partitions created, %d dropped, %d indexed, %d ledger rows deleted",
        len(created), len(dropped), len(indexed), deleted,
    )
    return report


async def _trim_ledger(conn: asyncpg.Connection, cutoff_us: int) -> int:
    # The cutoff travels as bigint microseconds and is converted in SQL, so this works on plain connections and
    # on hftdb's pool connections alike (those carry timestamptz as integer microseconds, not datetimes).
    deleted = 0
    while True:
        # Chunked so no single transaction holds a week of ledger rows.
        status = await conn.execute(
            "DELETE FROM ingest_batches WHERE batch_id IN"
            " (SELECT batch_id FROM ingest_batches"
            "  WHERE committed_at < 'epoch'::timestamptz + $1::bigint * interval '1 microsecond' LIMIT $2)",
            cutoff_us, _LEDGER_DELETE_CHUNK,
        )
        count = int(status.split()[-1])
        deleted += count
        if count < _LEDGER_DELETE_CHUNK:
            return deleted

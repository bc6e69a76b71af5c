"""Citus: hftdb's tables distributed over a cluster, and the few statements that differ there.

hftdb runs unchanged on plain PostgreSQL; on a Citus coordinator (the ``citus`` extension created in the
database) :func:`distribute` lays the tables out as below. It is idempotent and is not a numbered migration: the
migrations must run on plain PostgreSQL, and a migration that rebuilds a table (0004 does) leaves it local, so
:mod:`hftdb.db.schema` runs :func:`distribute` again after migrating a database that was distributed.

The layout (:data:`LAYOUT`), and why:

* ``exchanges`` and ``symbols`` are **reference tables** (a copy on every node): small, and joined with the
  distributed ``*_latest`` tables by the latest upsert (``exchange_id`` from ``symbols``) and by reads.
* ``book_tickers``, ``funding_rates`` (and their partitions) are **distributed by** ``symbol_id``, ``balances``
  by ``exchange_id``: every unique key includes the column and no foreign key points into them. They share one
  colocation group.
* ``book_tickers_latest``, ``funding_rates_latest`` and ``balances_latest`` are distributed by the same columns
  in **a colocation group of their own**. A commit COPYs into the history shards over several connections per
  worker and then upserts the latest rows in the same transaction; were the latest shards colocated with the
  history shards, Citus would have to use the connection that modified the colocated placement and refuses
  (``cannot perform query with placements that were modified over multiple connections``). hftdb never joins a
  latest table to its history, so nothing is lost by separating them.
* ``ingest_batches`` (the exactly-once ledger) **stays a local table on the coordinator**. Every COPY into a
  distributed table makes Citus commit with two-phase commit, whose decision is the coordinator's own local
  commit: the ledger row commits in that same local transaction, so "the batch id is in the ledger" holds
  exactly when the batch's rows are committed (a worker that was down at that moment gets its prepared
  transaction committed by Citus's recovery). As a reference table it would cost a write on every node per
  commit, and nothing joins it to a distributed table.

Elsewhere: retention cannot ``DETACH PARTITION ... CONCURRENTLY`` (nor ``FINALIZE``) a distributed table, so
:mod:`hftdb.db.partitions` asks :func:`is_distributed` and detaches plainly; sizes and row estimates of distributed
tables come from their shards (:func:`relation_stats`), since the coordinator's tables are empty shells.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import asyncpg
import msgspec

from .. import tablespec
from ..errors import StateError

__all__ = [
    "LAYOUT",
    "REFERENCE_TABLES",
    "LOCAL_TABLES",
    "DistributedTable",
    "DistributeReport",
    "ShardFigures",
    "ShardIndex",
    "IndexUsage",
    "index_usage",
    "workers",
    "available",
    "distribute",
    "distributed_before",
    "is_distributed",
    "layout_problems",
    "relation_stats",
    "table_totals",
]

logger = logging.getLogger(__name__)


class DistributedTable(msgspec.Struct, frozen=True):
    """Where one hash-distributed table goes: its distribution column and its colocation group's name."""

    column: str
    group: str


#: Reference tables, in creation order (symbols has a foreign key to exchanges).
REFERENCE_TABLES: Final = tablespec.REFERENCE_TABLES

#: Tables that stay local to the coordinator (see the module docstring for the ledger).
LOCAL_TABLES: Final = ("ingest_batches",)

#: The hash-distributed tables, in creation order within each group: each time-series table and its latest
#: table by the first column of its key (every unique key includes it). The groups are hftdb's names for two
#: colocation groups that must differ: ``history`` and ``latest``.
LAYOUT: Final = {
    **{t.name: DistributedTable(t.key[0], "history") for t in tablespec.TABLES},
    **{t.latest: DistributedTable(t.key[0], "latest") for t in tablespec.TABLES},
}


class DistributeReport(msgspec.Struct, kw_only=True):
    """What :func:`distribute` did: the tables it made reference or distributed, and those it regrouped."""

    reference: list[str] = []
    distributed: list[str] = []
    regrouped: list[str] = []

    @property
    def changed(self) -> bool:
        """Whether anything changed (False on a cluster already laid out)."""
        return bool(self.reference or self.distributed or self.regrouped)


async def available(conn: asyncpg.Connection) -> bool:
    """Whether the ``citus`` extension is created in this database (its catalog tables exist)."""
    return bool(await conn.fetchval("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL"))


async def is_distributed(conn: asyncpg.Connection, table: str) -> bool:
    """Whether ``table`` is a Citus table (distributed or reference); False on plain PostgreSQL."""
    if not await available(conn):
        return False
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1))", table))


async def _layout(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    # partmethod 'h' is hash-distributed, 'n' with repmodel 't' a reference table; other Citus tables (citus
    # local tables) count as neither. Partitions are left out: they follow their parent.
    rows = await conn.fetch(
        """SELECT c.relname AS name, p.partmethod::text AS method, p.repmodel::text AS repmodel,
                  CASE WHEN p.partmethod = 'h' THEN column_to_column_name(p.logicalrelid, p.partkey) END AS col,
                  p.colocationid AS colocation
           FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
           WHERE c.relnamespace = current_schema()::regnamespace AND NOT c.relispartition
             AND c.relname = ANY($1::text[])""",
        [*REFERENCE_TABLES, *LOCAL_TABLES, *LAYOUT],
    )
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        kind = "distributed" if r["method"] == "h" else "reference" if r["repmodel"] == "t" else "other"
        out[r["name"]] = {"kind": kind, "column": r["col"], "colocation": r["colocation"]}
    return out


def _problems(layout: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for table in REFERENCE_TABLES:
        kind = layout.get(table, {}).get("kind", "local")
        if kind != "reference":
            problems.append(f"{table} is a {kind} table, expected a reference table")
    for table in LOCAL_TABLES:
        if table in layout:
            problems.append(f"{table} is a {layout[table]['kind']} Citus table, expected a local table on the "
                            "coordinator (the ledger commits with the coordinator's 2PC decision)")
    groups: dict[str, set[int]] = {"history": set(), "latest": set()}
    for table, want in LAYOUT.items():
        got = layout.get(table)
        if got is None or got["kind"] != "distributed":
            problems.append(f"{table} is a {'local' if got is None else got['kind']} table, expected distributed "
                            f"by {want.column}")
            continue
        if got["column"] != want.column:
            problems.append(f"{table} is distributed by {got['column']}, expected {want.column}")
        groups[want.group].add(got["colocation"])
    for group, ids in groups.items():
        if len(ids) > 1:
            problems.append(f"the {group} tables are in {len(ids)} colocation groups ({sorted(ids)}), expected one")
    if groups["history"] & groups["latest"]:
        problems.append("the *_latest tables are colocated with their history tables: a commit would fail with "
                        "'placements that were modified over multiple connections'; run `hftdb distribute`")
    return problems


async def layout_problems(conn: asyncpg.Connection) -> list[str] | None:
    """What differs from :data:`LAYOUT` in this database, or None when hftdb's tables are not on Citus at all
    (plain PostgreSQL, or the extension present and nothing distributed). For ``hftdb validate``."""
    if not await available(conn):
        return None
    layout = await _layout(conn)
    if not layout:
        return None
    return _problems(layout)


async def distributed_before(conn: asyncpg.Connection) -> bool:
    """Whether any hftdb table is a Citus table here: a migration run re-distributes such a database."""
    return await available(conn) and bool(await _layout(conn))


async def distribute(conn: asyncpg.Connection) -> DistributeReport:
    """Lay hftdb's tables out as :data:`LAYOUT` on a Citus coordinator; idempotent (a laid-out cluster is left
    alone), and fixes a table a migration rebuilt as local or a latest table colocated with its history.

    Needs the hftdb schema (migrated) and the ``citus`` extension with at least one worker; raises
    :class:`StateError` without them. The connection must be outside a transaction: each table is distributed in
    its own (existing rows are moved to the workers, then the coordinator's local copy is emptied).
    """
    if conn.is_in_transaction():
        raise StateError("distribute needs a connection outside a transaction: each table is distributed in its own")
    if not await available(conn):
        raise StateError("the citus extension is not created in this database (CREATE EXTENSION citus, with citus in "
                         "shared_preload_libraries): hftdb runs on plain PostgreSQL undistributed")
    if not await conn.fetchval("SELECT to_regclass('exchanges') IS NOT NULL"):
        raise StateError("the database has no hftdb schema yet: run `hftdb migrate up` first")
    if not await conn.fetchval("SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0"):
        raise StateError("the Citus cluster has no worker: add one with citus_add_node() on the coordinator first")
    report = DistributeReport()
    layout = await _layout(conn)
    for table in REFERENCE_TABLES:
        kind = layout.get(table, {}).get("kind")
        if kind == "reference":
            continue
        if kind is not None:
            raise StateError(f"{table} is a {kind} Citus table; hftdb expects a reference table: undistribute it "
                             f"(SELECT undistribute_table('{table}')) and run distribute again")
        async with conn.transaction():
            await conn.execute("SELECT create_reference_table($1)", table)
        await _truncate_local(conn, table)
        report.reference.append(table)
    anchors: dict[str, str] = {}  # group -> a member already in the group's colocation group
    history_ids = {layout[t]["colocation"] for t, w in LAYOUT.items()
                   if w.group == "history" and layout.get(t, {}).get("kind") == "distributed"}
    for table, want in LAYOUT.items():
        got = layout.get(table)
        anchor = anchors.get(want.group)
        if got is not None and got["kind"] != "distributed":
            raise StateError(f"{table} is a {got['kind']} Citus table; hftdb expects it distributed by {want.column}: "
                             f"undistribute it (SELECT undistribute_table('{table}')) and run distribute again")
        if got is None:
            async with conn.transaction():
                await conn.execute("SELECT create_distributed_table($1, $2, colocate_with => $3)",
                                   table, want.column, anchor or "none")
            await _truncate_local(conn, table)
            report.distributed.append(table)
        elif got["column"] != want.column:
            await conn.execute("SELECT alter_distributed_table($1, distribution_column => $2, colocate_with => $3)",
                               table, want.column, anchor or "none")
            report.distributed.append(table)
        elif anchor is not None:
            if got["colocation"] != await _colocation(conn, anchor):
                await conn.execute("SELECT update_distributed_table_colocation($1, colocate_with => $2)", table, anchor)
                report.regrouped.append(table)
        elif want.group == "latest" and got["colocation"] in history_ids:
            # The first latest table found colocated with the history tables leaves their group for a new one.
            await conn.execute("SELECT update_distributed_table_colocation($1, colocate_with => 'none')", table)
            report.regrouped.append(table)
        if want.group == "history":
            history_ids = {await _colocation(conn, table)}
        anchors.setdefault(want.group, table)
    if report.changed:
        logger.info("citus: reference %s, distributed %s, regrouped %s", report.reference or "-",
                    report.distributed or "-", report.regrouped or "-")
    return report


async def _colocation(conn: asyncpg.Connection, table: str) -> int:
    return await conn.fetchval("SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = $1::regclass", table)


async def _truncate_local(conn: asyncpg.Connection, table: str) -> None:
    # create_*_table copies existing rows to the shards and keeps the coordinator's copy; it is dead weight.
    # Partitioned tables hold no rows of their own (their partitions do, and are emptied with them).
    if await conn.fetchval("SELECT relkind = 'r' FROM pg_class WHERE oid = $1::regclass", table):
        await conn.execute("SELECT truncate_local_data_after_distributing_table($1)", table)
    else:
        for part in await conn.fetch("SELECT inhrelid::regclass::text AS name FROM pg_inherits "
                                     "WHERE inhparent = $1::regclass", table):
            await conn.execute("SELECT truncate_local_data_after_distributing_table($1)", part["name"])


class _ShardResult(msgspec.Struct, frozen=True):
    table: str
    shardid: int
    result: str


async def _on_shards(conn: Any, where: str, args: list[Any], command: str) -> tuple[list[_ShardResult], int]:
    """Run ``command`` (``%1$s`` is the shard's name) on one placement of every shard of the Citus tables that
    ``where`` (over ``pg_class c`` and ``pg_dist_partition p``) selects, in parallel; return the answers and how
    many shards could not be read.

    The workers are asked first, once, whether they answer (``run_command_on_workers``): a shard whose every
    placement is on a worker that does not is counted without a connection to it being tried. So a worker that
    hangs instead of refusing costs one ``citus.node_connection_timeout``, not one per shard as
    ``run_command_on_shards`` would; a reference table is read on a placement that answers.
    """
    down = {(r["nodename"], r["nodeport"]) for r in await conn.fetch(
        "SELECT nodename, nodeport FROM run_command_on_workers('SELECT 1') WHERE NOT success")}
    shards = await conn.fetch(
        f"""SELECT c.relname AS table, s.shardid, shard_name(s.logicalrelid, s.shardid) AS shard,
                   array_agg(n.nodename ORDER BY n.groupid) AS hosts, array_agg(n.nodeport ORDER BY n.groupid) AS ports
            FROM pg_dist_shard s JOIN pg_class c ON c.oid = s.logicalrelid
            JOIN pg_dist_partition p ON p.logicalrelid = s.logicalrelid
            JOIN pg_dist_placement pl ON pl.shardid = s.shardid
            JOIN pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary'
            WHERE c.relnamespace = current_schema()::regnamespace AND {where}
            GROUP BY 1, 2, 3 ORDER BY 1, 2""",
        *args,
    )
    picked, hosts, ports, commands = [], [], [], []
    unreachable = 0
    for r in shards:
        node = next(((h, p) for h, p in zip(r["hosts"], r["ports"]) if (h, p) not in down), None)
        if node is None:
            unreachable += 1
            continue
        picked.append(r)
        hosts.append(node[0])
        ports.append(node[1])
        commands.append(command.replace("%1$s", r["shard"]))
    out = []
    if picked:
        for r, answer in zip(picked, await conn.fetch(
                "SELECT success, result FROM master_run_on_worker($1::text[], $2::int[], $3::text[], true)"
                " WITH ORDINALITY ORDER BY ordinality", hosts, ports, commands)):
            if answer["success"]:
                out.append(_ShardResult(r["table"], r["shardid"], answer["result"]))
            else:
                unreachable += 1  # the worker went away since it was asked
    return out, unreachable


class ShardFigures(msgspec.Struct, frozen=True):
    """A Citus table's figures summed over its shards: bytes, estimated rows (None when no shard was analyzed
    yet, or when a shard could not be read), and how many shards could not be read (their worker is down)."""

    bytes: int
    rows: int | None
    unreachable: int = 0


#: Run on each shard, its name put in for ``%1$s``.
_SHARD_FIGURES = "SELECT pg_total_relation_size('%1$s') || ' ' || reltuples FROM pg_class WHERE oid = '%1$s'::regclass"


async def relation_stats(conn: Any, names: list[str]) -> dict[str, ShardFigures]:
    """:class:`ShardFigures` of each Citus table among ``names``, read from its shards on the workers; tables
    that are not Citus tables are left out. Empty on plain PostgreSQL.

    The coordinator's catalog only knows its empty shells (``book_tickers`` showed 200 kB and no rows while one
    partition held 152 MB), so sizes and row estimates come from each shard (``pg_total_relation_size``,
    ``reltuples``). With a worker down the statement does not fail (``citus_total_relation_size`` would): the
    shards that cannot be read are counted in ``unreachable`` and the figures are partial, and say so.
    """
    if not names or not await available(conn):
        return {}
    results, _ = await _on_shards(conn, "c.relname = ANY($1::text[])", [list(names)], _SHARD_FIGURES)
    lost = await conn.fetch(  # shards per table, to count those not read
        "SELECT c.relname AS name, count(*) AS n FROM pg_dist_shard s JOIN pg_class c ON c.oid = s.logicalrelid"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1::text[]) GROUP BY 1",
        list(names))
    sums: dict[str, list[Any]] = {r["name"]: [0, None, r["n"]] for r in lost}  # bytes, rows or None, not read
    for r in results:
        acc = sums[r.table]
        acc[2] -= 1
        size, tuples = r.result.split()
        acc[0] += int(size)
        if float(tuples) >= 0:  # -1: never analyzed
            acc[1] = (acc[1] or 0) + int(float(tuples))
    return {name: ShardFigures(b, None if lost else n, lost) for name, (b, n, lost) in sums.items()}


async def table_totals(db: Any, names: list[str]) -> dict[str, ShardFigures]:
    """:func:`relation_stats` of each Citus table among ``names`` with its partitions' figures added in (a
    partitioned table's own shards hold nothing). Empty on plain PostgreSQL."""
    if not await available(db):
        return {}
    parts = await db.fetch(
        "SELECT p.relname AS parent, c.relname AS child FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE p.relnamespace = current_schema()::regnamespace"
        " AND p.relname = ANY($1::text[])", list(names))
    stats = await relation_stats(db, [*names, *(r["child"] for r in parts)])
    out: dict[str, ShardFigures] = {}
    for name in names:
        if name not in stats:
            continue
        children = [r["child"] for r in parts if r["parent"] == name]
        known = [stats[m] for m in (name, *children) if m in stats]
        # An analyzed partitioned table's reltuples already counts its partitions' rows: rows from these alone.
        counted = [stats[m] for m in (children or [name]) if m in stats]
        rows = [f.rows for f in counted if f.rows is not None]
        lost = sum(f.unreachable for f in known)
        out[name] = ShardFigures(sum(f.bytes for f in known), sum(rows) if rows and not lost else None, lost)
    return out


class ShardIndex(msgspec.Struct, frozen=True, kw_only=True):
    """One index of a distributed table, summed over the table's shards: bytes, scans since each worker's
    statistics were reset, and on how many of its shards it is invalid (an interrupted build)."""

    table: str
    index: str
    bytes: int
    scans: int
    shards: int
    invalid_shards: int
    unique: bool


class IndexUsage(msgspec.Struct, frozen=True, kw_only=True):
    """:func:`index_usage`: the distributed tables' indexes, the tables they cover, and the shards not read."""

    indexes: list[ShardIndex]
    tables: list[str]
    unreachable: int


#: Run on each shard (its name put in for ``%1$s``): its indexes' names, scans, bytes, validity and uniqueness,
#: as one JSON array.
_SHARD_INDEXES = (
    "SELECT coalesce(json_agg(json_build_array(i.relname, coalesce(s.idx_scan, 0), pg_relation_size(x.indexrelid),"
    " x.indisvalid, x.indisunique OR x.indisprimary)), '[]') FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
    " LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = x.indexrelid WHERE x.indrelid = '%1$s'::regclass"
)


async def index_usage(conn: asyncpg.Connection) -> IndexUsage | None:
    """Scans, sizes and validity of the indexes of every hash-distributed table here (the *_latest tables and
    every partition), read from their shards on the workers; None on plain PostgreSQL or when nothing is
    distributed. For ``hftdb optimize``: the coordinator's own counters never see a scan of a shard's index, and
    its index of a distributed table is an empty shell.

    A shard's index is named after the coordinator's with ``_<shard id>`` appended (Citus shortens a name that
    would pass 63 bytes, which is then shown as the shard's). Shards on a worker that does not answer are counted
    in ``unreachable``.
    """
    if not await available(conn):
        return None
    where = "p.partmethod = 'h' AND c.relkind = 'r'"
    tables = [r["relname"] for r in await conn.fetch(
        f"SELECT c.relname FROM pg_class c JOIN pg_dist_partition p ON p.logicalrelid = c.oid"
        f" WHERE c.relnamespace = current_schema()::regnamespace AND {where} ORDER BY 1")]
    if not tables:
        return None
    results, unreachable = await _on_shards(conn, where, [], _SHARD_INDEXES)
    sums: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        suffix = f"_{r.shardid}"
        for name, scans, size, valid, unique in msgspec.json.decode(r.result):
            index = name[: -len(suffix)] if name.endswith(suffix) else name
            acc = sums.setdefault((r.table, index), {"bytes": 0, "scans": 0, "shards": 0, "invalid_shards": 0,
                                                     "unique": unique})
            acc["bytes"] += size
            acc["scans"] += scans
            acc["shards"] += 1
            acc["invalid_shards"] += not valid
    return IndexUsage(indexes=[ShardIndex(table=t, index=i, **acc) for (t, i), acc in sums.items()],
                      tables=tables, unreachable=unreachable)


async def workers(conn: asyncpg.Connection) -> list[tuple[str, str | None]] | None:
    """Each primary worker of this coordinator as ``("host:port", None)`` when it answers a ``SELECT 1``, or with
    the reason it does not; None on plain PostgreSQL or when nothing is distributed. For ``hftdb health`` and
    ``status``: the coordinator answering says nothing of its workers."""
    if not await distributed_before(conn):
        return None
    rows = await conn.fetch("SELECT nodename, nodeport, success, result FROM run_command_on_workers('SELECT 1') "
                            "ORDER BY nodename, nodeport")
    return [(f"{r['nodename']}:{r['nodeport']}", None if r["success"] else r["result"]) for r in rows]

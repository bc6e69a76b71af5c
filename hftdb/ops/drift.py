"""Schema drift: does the live schema match what the applied migrations create?

Three checks, all read-only:

* **Checksums**: every applied migration still ships, unedited (:meth:`hftdb.db.schema.Migrator.status`).
* **Catalog**: the applied migrations are run again into a scratch schema inside a transaction that is rolled
  back, and the tables, columns (type, nullability, default, identity), constraints and indexes they create
  are compared with the live ones. Partitions are left out (hftdb makes them at run time), as is
  ``schema_migrations`` (made by the runner, not by a migration).

* **Citus layout**: on a Citus coordinator whose tables are distributed, each table is a reference, distributed
  or local table as :data:`hftdb.db.citus.LAYOUT` says, with the latest tables in a colocation group of their own.

Differences that break hftdb (a missing table or column, another type, a missing constraint) are *problems*;
additions that do not (an extra table or index) are *warnings*, as are pending migrations (the daemon applies
them at start). A database where no migration is applied has no hftdb schema to check: that is one problem.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import msgspec

from ..db import citus
from ..db.schema import Migrator, MigrationSource, load_migrations

__all__ = ["DriftReport", "check_drift"]

_IGNORED_TABLES = frozenset({"schema_migrations"})


class DriftReport(msgspec.Struct, kw_only=True):
    """The outcome of :func:`check_drift`: ``ok`` when there is no problem (warnings allowed)."""

    applied: list[int]
    pending: list[int]
    tables: int
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


async def _catalog(conn: asyncpg.Connection, schema: str) -> dict[str, Any]:
    tables = {
        r["relname"]: r["relkind"]
        for r in await conn.fetch(
            "SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            schema,
        )
        if r["relname"] not in _IGNORED_TABLES
    }
    columns = {
        (r["relname"], r["attname"]): (r["type"], r["attnotnull"], _strip(r["dflt"], schema), r["attidentity"])
        for r in await conn.fetch(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,"
            " pg_get_expr(d.adbin, d.adrelid) AS dflt, a.attidentity::text"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND a.attnum > 0 AND NOT a.attisdropped",
            schema, list(tables),
        )
    }
    constraints = {
        (r["relname"], r["conname"]): _strip(r["def"], schema)
        for r in await conn.fetch(
            "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) AS def FROM pg_constraint k"
            " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = ANY($2::text[])",
            schema, list(tables),
        )
    }
    indexes = {
        (r["relname"], r["indexname"]): _strip(r["def"], schema)
        for r in await conn.fetch(
            "SELECT t.relname, i.relname AS indexname, pg_get_indexdef(x.indexrelid) AS def FROM pg_index x"
            " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE n.nspname = $1 AND t.relname = ANY($2::text[])",
            schema, list(tables),
        )
    }
    return {"tables": tables, "columns": columns, "constraints": constraints, "indexes": indexes}


def _strip(definition: str | None, schema: str) -> str | None:
    # Definitions name the schema where it is not on the search path; the scratch and live schemas differ.
    if definition is None:
        return None
    return definition.replace(f"{schema}.", "").replace("public.", "")


async def _expected(conn: asyncpg.Connection, sqls: list[str]) -> dict[str, Any]:
    scratch = "hftdb_drift_" + uuid.uuid4().hex[:12]
    tr = conn.transaction()
    await tr.start()
    try:
        # The scratch name is made here from hex digits: safe to format into the statement.
        await conn.execute(f"CREATE SCHEMA {scratch}")
        await conn.execute(f"SET LOCAL search_path TO {scratch}")
        for sql in sqls:
            await conn.execute(sql)
        return await _catalog(conn, scratch)
    finally:
        await tr.rollback()  # nothing of the scratch schema survives


async def check_drift(conn: asyncpg.Connection, *, source: MigrationSource = None) -> DriftReport:
    """Compare the live schema (``current_schema()``) with the applied migrations; see the module docstring.

    ``conn`` must be outside a transaction. Needs the right to create a schema in the database.
    """
    statuses = await Migrator(conn, source=source).status()
    problems: list[str] = []
    warnings: list[str] = []
    for st in statuses:
        if st.applied and st.checksum_ok is False:
            problems.append(f"migration {st.version:04d} ({st.name}) is applied but its file is missing or edited")
    applied = [st.version for st in statuses if st.applied]
    pending = [st.version for st in statuses if not st.applied]
    if not applied:
        # Nothing to compare with: an empty database "matched migrations 0001..0000 (0 tables)" and was valid.
        return DriftReport(applied=[], pending=pending, tables=0, warnings=[],
                           problems=["no hftdb schema here: no migration is applied (run `hftdb migrate up`)"])
    if pending:
        warnings.append(f"{len(pending)} migration(s) pending: {', '.join(f'{v:04d}' for v in pending)} "
                        "(applied by `hftdb migrate up` or at the daemon's start)")
    shipped = [m for m in load_migrations(source) if m.version in set(applied)]
    live_schema = await conn.fetchval("SELECT current_schema()")
    live = await _catalog(conn, live_schema)
    want = await _expected(conn, [m.up_sql for m in shipped])
    for table, kind in sorted(want["tables"].items()):
        if table not in live["tables"]:
            problems.append(f"table {table} is missing")
        elif live["tables"][table] != kind:
            problems.append(f"table {table} is {_kind(live['tables'][table])}, expected {_kind(kind)}")
    for table in sorted(set(live["tables"]) - set(want["tables"])):
        warnings.append(f"table {table} is not created by any migration")
    both = set(want["tables"]) & set(live["tables"])
    _compare(problems, problems, "column", want["columns"], live["columns"], both, _column_text)
    _compare(problems, problems, "constraint", want["constraints"], live["constraints"], both, str)
    _compare(problems, warnings, "index", want["indexes"], live["indexes"], both, str)
    citus_layout = await citus.layout_problems(conn)
    if citus_layout is not None:
        problems.extend(f"Citus: {p}" for p in citus_layout)
    elif await citus.available(conn):
        warnings.append("the citus extension is installed but no hftdb table is distributed: "
                        "`hftdb distribute` spreads them over the workers")
    return DriftReport(applied=applied, pending=pending, tables=len(want["tables"]), problems=problems, warnings=warnings)


def _compare(missing_to: list[str], extra_to: list[str], what: str, want: dict, live: dict, tables: set[str],
             show: Any) -> None:
    """Compare one kind of object of the tables both sides have (a missing or extra table is reported once)."""
    for key in sorted(want):
        table, name = key
        if table not in tables:
            continue
        if key not in live:
            missing_to.append(f"{what} {table}.{name} is missing (expected {show(want[key])})")
        elif live[key] != want[key]:
            missing_to.append(f"{what} {table}.{name} is {show(live[key])}, expected {show(want[key])}")
    for key in sorted(set(live) - set(want)):
        table, name = key
        if table in tables:
            extra_to.append(f"{what} {table}.{name} ({show(live[key])}) is not created by any migration")


def _column_text(spec: tuple) -> str:
    type_, notnull, default, identity = spec
    text = type_ + (" NOT NULL" if notnull else "")
    if default:
        text += f" DEFAULT {default}"
    if identity:
        text += " GENERATED " + ("ALWAYS" if identity == "a" else "BY DEFAULT") + " AS IDENTITY"
    return text


def _kind(relkind: str) -> str:
    return "a partitioned table" if relkind == "p" else "a plain table"

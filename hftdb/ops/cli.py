"""The ``hftdb`` command: operate the database and the daemon from a shell.

Every command reads the daemon's configuration (``--config PATH``, ``$HFTDB_CONFIG``, ``./config/default.toml``,
``HFTDB_*`` overrides) and works on its database: the DSN, or the embedded server in ``[database] data_dir``
(started for the command if the daemon is not running). ``--demo`` works on the demo's database instead.
Commands that ask the running daemon (``status``, ``health``, ``stats``) reach it at ``[metrics] host:port``, and
take it for their database's daemon only when its ``/health`` or ``/stats`` names the same database.

Output goes to standard output, progress and errors to standard error. A mistake (a bad option, a missing
file, an unreachable database) is one line starting with ``hftdb:``, exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg
import msgspec
import orjson

from .. import tablespec, venues
from ..version import __version__
from ..db import citus, dberrors, partitions, schema
from . import dump, inventory
from ..config import MAX_DAYS, Settings, load_settings, locate_config
from ..redact import redact
from ..service.daemon import serve
from ..db.target import Target, identify, open_target
from .drift import check_drift
from ..errors import DatabaseUnavailableError, HftdbError, ValidationError
from ..service.logsetup import configure_logging, report_fatal
from ..manager import DatabaseManager
from ..models import now_us
from .inventory import approx as _approx
from .inventory import size as _size
from .inventory import utc as _utc
from .replay import ReplayProgress, ReplayResult, check_files, ingest_files

__all__ = ["main"]

_HFTDB_TABLES = inventory.TABLES
_COUNTED = tablespec.REFERENCE_TABLES + tablespec.TIME_SERIES
_TS = partitions.TIME_SERIES_TABLES
_US_PER_DAY = 86_400_000_000


# ------------------------------------------------------------------------------------------------- plumbing


class _Context:
    """What every command gets: the settings, the target (live or demo database) and the output streams."""

    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        self.settings = settings
        self.args = args
        self.demo = bool(getattr(args, "demo", False))
        self.out = sys.stdout
        self.err = sys.stderr

    def print(self, text: str = "") -> None:
        # Every line the command prints is redacted, like the log: a DSN or an exchange's error quoted in a
        # status or stats line must not show its password or key.
        print(redact(text), file=self.out, flush=True)

    def progress(self, text: str) -> None:
        # One line per step, on stderr: readable in a terminal and in a captured log alike.
        print(redact(text), file=self.err, flush=True)

    @contextlib.asynccontextmanager
    async def target(self, *, create: bool = False) -> AsyncIterator[Target]:
        target = await open_target(self.settings, demo=self.demo, create=create)
        try:
            yield target
        finally:
            await target.close()

    @contextlib.asynccontextmanager
    async def connect(self, *, create: bool = False) -> AsyncIterator[tuple[Target, asyncpg.Connection]]:
        async with self.target(create=create) as target:
            conn = await _connect(target, self.settings.database.connect_timeout, demo=self.demo,
                                  demo_db=self.settings.demo.database)
            try:
                yield target, conn
            finally:
                await conn.close()

    async def daemon(self, path: str) -> tuple[int, dict[str, Any]] | None:
        """``(status, json)`` of the running daemon's ``path``, or None when nothing answers."""
        m = self.settings.metrics
        if not m.enabled or m.port == 0:
            return None
        host = "127.0.0.1" if m.host in ("0.0.0.0", "", "::") else m.host
        host = f"[{host}]" if ":" in host else host
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                async with session.get(f"http://{host}:{m.port}{path}") as resp:
                    return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            return None

    def daemon_url(self) -> str:
        m = self.settings.metrics
        return f"http://{m.host}:{m.port}"

    def elsewhere(self, body: dict[str, Any], mine: dict[str, str | None]) -> str | None:
        """Why the daemon that answered with ``body`` is not the daemon of this command's database (``mine``, as
        :func:`identify` gives it), as one sentence; None when it is (or, a daemon that does not say, may be)."""
        m = self.settings.metrics
        where = f"the daemon on {m.host}:{m.port}"
        theirs = (body.get("database") or {}).get("identity") if isinstance(body, dict) else None
        if not isinstance(theirs, dict):
            # A daemon of an older hftdb: only its mode can tell it apart.
            mode = body.get("mode") if isinstance(body, dict) else None
            if mode in ("live", "demo") and (mode == "demo") != self.demo:
                return f"{where} serves the {mode} database, not the {'demo' if self.demo else 'live'} one"
            return None
        if theirs.get("database") != mine["database"]:
            return f"{where} serves database {theirs.get('database')}, not {mine['database']}"
        for key, what in (("system_identifier", "system identifier"), ("port", "port")):
            if theirs.get(key) is not None and mine[key] is not None:
                if theirs[key] != mine[key]:
                    return (f"{where} serves database {mine['database']} of another server ({what} {theirs[key]}, "
                            f"not {mine[key]})")
                break  # the system identifier, when both have it, settles it; the port is the fallback
        return None


async def _connect(target: Target, timeout: float, *, demo: bool, demo_db: str) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(target.dsn, timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        if demo:
            raise DatabaseUnavailableError(f"the demo database {demo_db} does not exist yet: run `run.py --demo` "
                                           "(or `hftdb run --demo`) first") from None
        raise DatabaseUnavailableError(f"{target.description}: the database does not exist") from None
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to {target.description}: {dberrors.describe(exc, timeout=timeout)}") from None
    return conn


def _days_us(days: float, what: str) -> int:
    """``days`` in microseconds; a ValidationError naming ``what`` (the option, or the setting it came from) when
    it is not a finite number of days > 0 and at most :data:`MAX_DAYS`."""
    if not (math.isfinite(days) and 0 < days <= MAX_DAYS):
        raise ValidationError(f"{what} must be > 0 and at most {MAX_DAYS:,} days (a finite number), got {days:g}")
    return int(days * _US_PER_DAY)


async def _require_schema(conn: asyncpg.Connection) -> None:
    if not await conn.fetchval("SELECT to_regclass('exchanges') IS NOT NULL"):
        raise ValidationError("the database has no hftdb schema yet: run `hftdb migrate up` (or start the daemon)")


async def _refuse_if_daemon_runs(ctx: _Context, conn: asyncpg.Connection, what: str) -> None:
    answer = await ctx.daemon("/health")
    # The daemon answering may serve another database (the demo's, another DSN's): that one is no obstacle.
    if answer is not None and ctx.elsewhere(answer[1], await identify(conn)) is None:
        raise ValidationError(f"the daemon is running ({ctx.daemon_url()}): stop it before {what}")




# ------------------------------------------------------------------------------------------------- commands


def _check_migration_target(version: int, *, action: str) -> None:
    # A version that no migration has would be taken as "everything" (up) or "nothing" (down) and exit 0.
    shipped = [m.version for m in schema.load_migrations()]
    valid = ([0] if action == "down" else []) + shipped
    if version not in valid:
        listed = ", ".join(str(v) for v in shipped) or "none"
        raise ValidationError(f"migrate {action} --to {version}: no migration has that version; the versions are "
                              f"{listed}" + (" (or 0: revert everything)" if action == "down" else ""))


async def _migrate(ctx: _Context) -> int:
    args = ctx.args
    if args.action in ("up", "down") and args.to is not None:
        _check_migration_target(args.to, action=args.action)
    async with ctx.connect(create=args.action == "up") as (_, conn):
        migrator = schema.Migrator(conn)
        if args.action == "status":
            rows = await migrator.status()
            if not rows:
                ctx.print("no migrations")
            for st in rows:
                state = f"applied {st.applied_at:%Y-%m-%d %H:%M:%S %Z}" if st.applied_at else "pending"
                check = {True: "checksum ok", False: "FILE CHANGED OR MISSING", None: ""}[st.checksum_ok]
                ctx.print(f"{st.version:04d}  {st.name:<24} {state:<32} {check}".rstrip())
            return 0 if all(st.checksum_ok is not False for st in rows) else 1
        if args.action == "up":
            done = await migrator.up(args.to)
            version = max((st.version for st in await migrator.status() if st.applied), default=0)
            ctx.print(f"applied {', '.join(f'{v:04d}' for v in done)}; now at version {version}" if done
                      else f"already up to date (version {version})")
            return 0
        applied = [st for st in await migrator.status() if st.applied and st.version > args.to]
        if not applied:
            ctx.print(f"nothing to revert: no applied version above {args.to}")
            return 0
        names = ", ".join(f"{st.version:04d}_{st.name}" for st in sorted(applied, key=lambda s: -s.version))
        if not args.yes:
            raise ValidationError(f"migrate down --to {args.to} reverts {names} and drops what they hold; "
                                  "add --yes to do it")
        done = await migrator.down(args.to)
        ctx.print(f"reverted {', '.join(f'{v:04d}' for v in done)}; now at version {args.to}")
        return 0


async def _database_line(target: Target, conn: asyncpg.Connection) -> str:
    started = time.perf_counter()
    version = await conn.fetchval("SHOW server_version")
    ms = (time.perf_counter() - started) * 1000
    return f"{target.description} (PostgreSQL {version}), answering in {ms:.1f} ms"


async def _schema_line(conn: asyncpg.Connection) -> tuple[bool, str]:
    rows = await schema.Migrator(conn).status()
    applied = [st for st in rows if st.applied]
    pending = [st for st in rows if not st.applied]
    broken = [st for st in rows if st.checksum_ok is False]
    version = max((st.version for st in applied), default=0)
    text = f"version {version}" + (f" ({applied[-1].name})" if applied else " (empty)")
    if broken:
        return False, text + f"; {len(broken)} applied migration(s) changed or missing: run `hftdb validate`"
    if pending:
        return True, text + f"; {len(pending)} pending (applied at the daemon's start, or by `hftdb migrate up`)"
    return True, text + "; up to date"


async def _status(ctx: _Context) -> int:
    async with ctx.connect() as (target, conn):
        mine = await identify(conn)
        ctx.print(f"database  {await _database_line(target, conn)}")
        _, schema_text = await _schema_line(conn)
        ctx.print(f"schema    {schema_text}")
        if await conn.fetchval("SELECT to_regclass('exchanges') IS NOT NULL"):
            stats = await inventory.tables(conn)
            parts = [f"{t} {_approx(stats[t]['rows'])} rows ({_size(stats[t]['bytes'])})" for t in _TS if t in stats]
            ctx.print(f"data      {'; '.join(parts)}")
            lost = sum(t.get("unreachable_shards", 0) for t in stats.values())
            if lost:
                ctx.print(f"          WARNING Citus: {lost} shard(s) on a worker that does not answer are left out")
            newest = []
            try:
                for table in (t.latest for t in tablespec.TABLES):
                    age = await conn.fetchval(  # fixed identifiers
                        f"SELECT extract(epoch FROM clock_timestamp() - max(recv_ts))::float8 FROM {table}"
                    )
                    if age is not None:
                        newest.append(f"{table.removesuffix('_latest')} {age:,.1f}s ago")
            except asyncpg.PostgresError as exc:
                if not dberrors.citus_worker_unreachable(exc):
                    raise
                newest = [f"unknown: a Citus worker is unreachable ({' '.join(str(exc).split())})"]
            ctx.print(f"newest    {'; '.join(newest) or 'no rows yet'}")
    answer = await ctx.daemon("/stats")
    if answer is None:
        ctx.print(f"daemon    not answering at {ctx.daemon_url()}")
        return 0
    other = ctx.elsewhere(answer[1], mine)
    if other is not None:
        ctx.print(f"daemon    not this database's: {other}")
        return 0
    stats = answer[1]
    health = stats.get("health", {})
    state = "healthy" if health.get("ok") else "UNHEALTHY: " + "; ".join(health.get("reasons", []))
    ctx.print(f"daemon    {stats.get('mode')} at {ctx.daemon_url()}, up {stats.get('uptime_s', 0):,.0f}s, {state}")
    for venue, f in (stats.get("feeds") or {}).items():
        age = f.get("last_message_age_s")
        ctx.print(f"  {venue:<13} {f.get('state'):<10} {f.get('messages', 0):>12,} msgs  conns={f.get('connections')}"
                  f"  reconnects={f.get('reconnects')} gaps={f.get('gaps')} rejects={f.get('rejected')}"
                  f"  last {'-' if age is None else f'{age:.1f}s'} ago")
    for table, w in (stats.get("writers") or {}).items():
        ctx.print(f"  {table:<13} committed {w.get('rows_committed', 0):>12,}  pending {w.get('rows_pending', 0):,}")
    return 0


async def _health(ctx: _Context) -> int:
    ok = True
    mine = None
    try:
        async with ctx.connect() as (target, conn):
            mine = await identify(conn)
            ctx.print(f"database: ok, {await _database_line(target, conn)}")
            schema_ok, schema_text = await _schema_line(conn)
            ctx.print(f"schema: {'ok' if schema_ok else 'PROBLEM'}, {schema_text}")
            ok = ok and schema_ok
            nodes = await citus.workers(conn)
            if nodes is not None:
                down = [f"{node} ({why})" for node, why in nodes if why is not None]
                ctx.print(f"citus workers: {'ok' if not down else 'UNREACHABLE'}, {len(nodes) - len(down)} of "
                          f"{len(nodes)} answering" + (f"; not answering: {', '.join(down)}" if down else ""))
                ok = ok and not down
    except DatabaseUnavailableError as exc:
        ctx.print(f"database: UNREACHABLE, {exc}")
        ok = False
    if not ctx.args.db_only:
        answer = await ctx.daemon("/health")
        if answer is None:
            ctx.print(f"daemon: NOT RUNNING (nothing answers at {ctx.daemon_url()}/health; --db-only skips this)")
            ok = False
        elif mine is None:
            ctx.print(f"daemon: UNKNOWN, a daemon answers at {ctx.daemon_url()}/health, but whether it serves this "
                      "database cannot be told while the database is unreachable")
            ok = False
        elif (other := ctx.elsewhere(answer[1], mine)) is not None:
            # Not this database's daemon: its feeds say nothing of this database, judged on its own above.
            ctx.print(f"daemon: ANOTHER DATABASE'S, {other}; this database is judged alone")
        elif answer[0] == 200:
            ctx.print(f"daemon: ok, {len(answer[1].get('feeds', {}))} feeds live")
        else:
            ctx.print(f"daemon: UNHEALTHY, {'; '.join(answer[1].get('reasons', [])) or f'HTTP {answer[0]}'}")
            ok = False
    ctx.print("healthy" if ok else "unhealthy")
    return 0 if ok else 1


async def _stats(ctx: _Context) -> int:
    args = ctx.args
    async with ctx.connect() as (_, conn):
        await _require_schema(conn)
        mine = await identify(conn)
        report = await inventory.collect(conn, exact=args.exact, progress=ctx.progress)
    arch = _archive_settings(ctx)
    if arch.root:
        from ..read import archive

        report["archive"] = archive.summary(arch.root, hot={
            t: {"bytes": v["bytes"], "estimated_rows": v["rows"]} for t, v in report["tables"].items()})
    answer = await ctx.daemon("/stats")
    other = None if answer is None else ctx.elsewhere(answer[1], mine)
    if answer is None or other is not None:
        report["daemon"] = None  # another database's counters are not this one's
        if other is not None:
            report["daemon_elsewhere"] = other
    else:
        report["daemon"] = {k: answer[1].get(k) for k in ("mode", "writers", "caches", "pool", "feeds")}
    if args.json:
        ctx.print(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode())
        return 0
    for line in inventory.render(report, daemon_url=ctx.daemon_url()):
        ctx.print(line)
    return 0


async def _cleanup(ctx: _Context) -> int:
    args = ctx.args
    if args.retention_days is not None:
        days, source = args.retention_days, "--retention-days"
    else:
        days, source = ctx.settings.storage.retention_days, "[storage] retention_days"
    span = _days_us(days, source)
    from ..read import archive

    now = now_us()
    cutoff = now - span
    total = 0
    arch = _archive_settings(ctx)
    archiving = archive.enabled(arch)
    expire_span = None
    if archiving and arch.retention_days is not None:
        expire_span = _days_us(arch.retention_days, "[archive] retention_days")
    if archiving:
        archive.require_pyarrow()  # a dry run too: it must not promise what the real run cannot do
    note = " (archived first)" if archiving else ""
    async with ctx.connect() as (_, conn):
        await _require_schema(conn)
        for i, table in enumerate(_TS, 1):
            ctx.progress(f"[{i}/{len(_TS)}] {table}: partitions ending before {_utc(cutoff)}")
            if archiving:
                report = await archive.archive_table(conn, table, settings=arch, cutoff_us=cutoff,
                                                     interval_s=ctx.settings.storage.partition_interval_s,
                                                     dry_run=args.dry_run)
                names = report.pending if args.dry_run else report.archived + report.finished
            else:
                names = await partitions.drop_partitions_before(conn, table, cutoff, dry_run=args.dry_run)
            total += len(names)
            for name in names:
                ctx.print(f"{'would drop' if args.dry_run else 'dropped'} {name}{note}")
            if expire_span is not None:
                for name in await archive.expire(arch.root, table, now - expire_span, dry_run=args.dry_run):
                    ctx.print(f"{'would delete' if args.dry_run else 'deleted'} the archive of {name}")
    verb = "would drop" if args.dry_run else "dropped"
    ctx.print(f"{verb} {total} partition(s) older than {days:g} days"
              + (f", each archived under {arch.root} first" if archiving else ""))
    return 0


async def _archive(ctx: _Context) -> int:
    from ..read import archive

    args = ctx.args
    if args.action == "restore":
        return await _archive_restore(ctx)
    if args.action == "verify":
        return await _archive_verify(ctx)
    if args.date is not None:
        raise ValidationError("--date goes with `hftdb archive restore` or `verify`")
    if not archive.enabled(ctx.settings.archive):
        raise ValidationError("the archive is off: [archive] root is empty")
    if args.older_than_days is not None:
        span = _days_us(args.older_than_days, "--older-than-days")
    else:
        span = _days_us(ctx.settings.archive.after_days, "[archive] after_days")
    tables = [args.table] if args.table else list(_TS)
    archive.require_pyarrow()  # a dry run too: it must not promise what the real run cannot do
    cutoff = now_us() - span
    rows = done = 0
    async with ctx.connect() as (_, conn):
        await _require_schema(conn)
        for i, table in enumerate(tables, 1):
            ctx.progress(f"[{i}/{len(tables)}] {table}: partitions ending before {_utc(cutoff)}")
            report = await archive.archive_table(
                conn, table, settings=_archive_settings(ctx), cutoff_us=cutoff,
                interval_s=ctx.settings.storage.partition_interval_s, dry_run=args.dry_run)
            for name in report.pending:
                ctx.print(f"would archive {name}")
            for name in report.finished:
                ctx.print(f"finished {name} (left by an interrupted run)")
            for name in report.archived:
                ctx.print(f"archived {name}")
            rows += report.rows
            done += len(report.archived) + len(report.finished)
    if args.dry_run:
        ctx.print(f"dry run: nothing written or dropped; archive root {_archive_settings(ctx).root}")
    else:
        ctx.print(f"archived {done} partition(s), {rows:,} rows, under {_archive_settings(ctx).root}")
    return 0


async def _archive_verify(ctx: _Context) -> int:
    from ..read import archive

    args = ctx.args
    root = _archive_settings(ctx).root
    if not root:
        raise ValidationError("the archive is off: [archive] root is empty")
    report = await asyncio.to_thread(archive.verify, root, table=args.table, date=args.date,
                                     batch_rows=_archive_settings(ctx).piece_rows)
    if report.manifests == 0 and (args.table is not None or args.date is not None):
        # Asked about a table or a day that has nothing archived: "verified 0 file(s) ... every file matches"
        # would pass for a check of it. (A whole archive that is empty is verified as such.)
        what = f"nothing of {args.table}" if args.table is not None else "nothing"
        raise ValidationError(f"{what} is archived" + (f" for {args.date}" if args.date is not None else "")
                              + f" under {root}")
    for problem in report.problems:
        ctx.print(f"MISMATCH {problem}")
    verdict = f"{len(report.problems)} problem(s)" if report.problems else "every file matches its manifest"
    ctx.print(f"verified {report.files} file(s) of {report.manifests} archived partition(s), {report.rows:,} rows, "
              f"{report.bytes:,} bytes under {root}: {verdict}")
    return 1 if report.problems else 0


async def _archive_restore(ctx: _Context) -> int:
    from ..read import archive

    args = ctx.args
    if args.table is None or args.date is None:
        raise ValidationError("archive restore needs --table and --date YYYY-MM-DD")
    async with ctx.connect() as (_, conn):
        await _require_schema(conn)
        names, rows = await archive.restore_day(conn, args.table, args.date, settings=_archive_settings(ctx),
                                                interval_s=ctx.settings.storage.partition_interval_s)
    for name in names:
        ctx.print(f"restored {name}")
    ctx.print(f"restored {rows:,} rows of {args.table} for {args.date} into PostgreSQL; its archive files are "
              "deleted (the upkeep archives the day again once it is older than [archive] after_days)")
    return 0


async def _reset(ctx: _Context) -> int:
    if not ctx.args.yes:
        raise ValidationError("reset drops every hftdb table and all their data, then recreates them empty; "
                              "add --yes to do it")
    async with ctx.connect(create=True) as (target, conn):
        await _refuse_if_daemon_runs(ctx, conn, "resetting its database")
        migrator = schema.Migrator(conn)
        reverted = await migrator.down(0)
        applied = await migrator.up()
        await partitions.maintain(conn, ctx.settings.storage, now_us(), retention=False)
    removed = _clear_spool(ctx)
    ctx.print(f"reset {target.description}: reverted {len(reverted)} and applied {len(applied)} migration(s); "
              f"{removed} spooled batch(es) discarded")
    return 0


def _archive_settings(ctx: _Context) -> Any:
    arch = ctx.settings.archive
    if ctx.demo and arch.root:  # the demo's archive, like its spool, lives apart from the live one
        arch = msgspec.structs.replace(arch, root=str(Path(arch.root) / ctx.settings.demo.database))
    return arch


def _spool_root(ctx: _Context) -> Path | None:
    spool = ctx.settings.writer.spool_dir
    if not spool:
        return None
    return Path(spool) / ctx.settings.demo.database if ctx.demo else Path(spool)


def _clear_spool(ctx: _Context) -> int:
    # Spooled batches carry symbol ids of the database they were meant for: replayed into another, they are wrong.
    root = _spool_root(ctx)
    removed = 0
    if root is not None:
        for table in _TS:
            for f in (root / table).glob("*.spool"):
                f.unlink()
                removed += 1
    return removed


def _table_progress(ctx: _Context, verb: str) -> Callable[[int, int, str], None]:
    def report(done: int, total: int, table: str) -> None:
        ctx.progress(f"[{done}/{total}] {verb} {table}")
    return report


async def _backup(ctx: _Context) -> int:
    async with ctx.connect() as (target, conn):
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'"
        )
        counts = await _row_counts(conn)
        await conn.close()
        path = await dump.backup(target.dsn, ctx.args.file, embedded=target.server is not None, tables=tables,
                                 progress=_table_progress(ctx, "dumped"))
    ctx.print(f"backup written to {path} ({_size(path.stat().st_size)}; "
              + ", ".join(f"{t} {n:,}" for t, n in counts.items()) + ")")
    return 0


async def _row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    out = {}
    for table in _COUNTED:
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            out[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")  # fixed identifiers
    return out


async def _restore(ctx: _Context) -> int:
    args = ctx.args
    if args.clean and not args.yes:
        raise ValidationError("restore --clean replaces the hftdb tables and all their data; add --yes to do it")
    dump.check_backup_file(args.file)
    async with ctx.connect(create=True) as (target, conn):
        if args.clean:
            await _refuse_if_daemon_runs(ctx, conn, "replacing its database")
        has_schema = await conn.fetchval("SELECT to_regclass('exchanges') IS NOT NULL")
        if has_schema and not args.clean:
            raise ValidationError(f"{target.description} already holds hftdb tables; restore into an empty database "
                                  "(HFTDB_DSN=...), or pass --clean --yes to replace them")
        n = await dump.restore(target.dsn, args.file, embedded=target.server is not None, clean=args.clean,
                               progress=_table_progress(ctx, "restored"))
        await schema.Migrator(conn).verify()
        counts = await _row_counts(conn)
    if args.clean:
        _clear_spool(ctx)
    ctx.print(f"restored {n} table(s) into {target.description}; migrations verified; "
              + ", ".join(f"{t} {c:,}" for t, c in counts.items()))
    return 0


async def _validate(ctx: _Context) -> int:
    async with ctx.connect() as (target, conn):
        report = await check_drift(conn)
    for problem in report.problems:
        ctx.print(f"PROBLEM  {problem}")
    for warning in report.warnings:
        ctx.print(f"warning  {warning}")
    version = max(report.applied, default=0)
    if report.ok:
        ctx.print(f"valid: {target.description} matches migrations 0001..{version:04d} "
                  f"({report.tables} tables: columns, constraints, indexes; checksums)")
        return 0
    ctx.print(f"invalid: {len(report.problems)} problem(s)")
    return 1


async def _distribute(ctx: _Context) -> int:
    async with ctx.connect() as (target, conn):
        await _require_schema(conn)
        report = await citus.distribute(conn)
        workers = await conn.fetchval("SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0")
    if not report.changed:
        ctx.print(f"already distributed: {target.description} is laid out for Citus ({workers} worker(s))")
        return 0
    for what, tables in (("reference", report.reference), ("distributed", report.distributed),
                         ("regrouped", report.regrouped)):
        if tables:
            ctx.print(f"{what:<12} {', '.join(tables)}")
    ctx.print(f"distributed over {workers} worker(s); ingest_batches (the exactly-once ledger) stays local on the "
              "coordinator: it commits in the coordinator's two-phase commit decision (docs/SCALE-OUT.md)")
    return 0


#: Indexes smaller than this are left out of optimize's unused-index report: fresh partitions' are noise.
_UNUSED_MIN_BYTES = 1 << 20


async def _optimize(ctx: _Context) -> int:
    async with ctx.connect() as (_, conn):
        await _require_schema(conn)
        for i, table in enumerate(_HFTDB_TABLES, 1):
            ctx.progress(f"[{i}/{len(_HFTDB_TABLES)}] ANALYZE {table}")
            await conn.execute(f"ANALYZE {table}")  # fixed identifiers
        ctx.progress("partition maintenance (partitions ahead, btrees of sealed partitions)")
        report = await partitions.maintain(conn, ctx.settings.storage, now_us(), retention=False)
        # On Citus the distributed tables' indexes live in their shards on the workers: read there, and the
        # coordinator's empty shells of them are left out of its own report.
        shards = await citus.index_usage(conn)
        skip = shards.tables if shards is not None else []
        invalid = [(r["index"], r["table"], "") for r in await conn.fetch(
            "SELECT i.relname AS index, t.relname AS table FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN pg_class t ON t.oid = x.indrelid WHERE NOT x.indisvalid AND t.relnamespace = current_schema()::regnamespace"
            " AND t.relname <> ALL($1::text[])", skip)]
        unused = [(r["index"], r["table"], r["bytes"], "") for r in await conn.fetch(
            "SELECT s.indexrelname AS index, s.relname AS table, pg_relation_size(s.indexrelid) AS bytes"
            " FROM pg_stat_user_indexes s JOIN pg_index x ON x.indexrelid = s.indexrelid"
            " WHERE s.schemaname = current_schema() AND s.idx_scan = 0 AND NOT x.indisunique AND NOT x.indisprimary"
            " AND pg_relation_size(s.indexrelid) >= $2"  # small ones (fresh partitions) are noise
            " AND s.relname <> ALL($1::text[])", skip, _UNUSED_MIN_BYTES)]
    if shards is not None:
        invalid += [(i.index, i.table, f" on {i.invalid_shards} of {i.shards} shard(s)")
                    for i in shards.indexes if i.invalid_shards]
        unused += [(i.index, i.table, i.bytes, f" over {i.shards} shard(s) on the workers") for i in shards.indexes
                   if i.scans == 0 and not i.unique and i.bytes >= _UNUSED_MIN_BYTES]
    unused = sorted(unused, key=lambda u: -u[2])[:10]
    ctx.print(f"analyzed {len(_HFTDB_TABLES)} tables")
    ctx.print(f"partitions: {len(report.created)} created, {len(report.indexed)} sealed partition(s) indexed"
              + (f" ({', '.join(report.indexed)})" if report.indexed else ""))
    if shards is not None:
        ctx.print(f"Citus: index health and usage of {len(shards.tables)} distributed table(s) read from their shards "
                  "on the workers (scans since each worker's statistics reset)"
                  + (f"; {shards.unreachable} shard(s) on a worker that does not answer are left out"
                     if shards.unreachable else ""))
    if invalid:
        for index, table, note in invalid:
            ctx.print(f"INVALID index {index} on {table}{note} (an interrupted build): drop and recreate it")
    else:
        ctx.print("indexes: all valid")
    for index, table, size, note in unused:
        ctx.print(f"unused index {index} on {table} ({_size(size)}{note}, no scan since statistics reset)")
    return 1 if invalid else 0


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _ReplayProgressLine:
    """``ingest-file``'s one progress line on stderr: rewritten in place on a terminal (5 times a second),
    a line every 10 s otherwise (a captured log), and always once at the end."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = 0.2 if self.tty else 10.0
        self.last = time.monotonic()
        self.state: ReplayProgress | None = None
        self.shown = False

    def __call__(self, state: ReplayProgress) -> None:
        self.state = state
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.show()

    def show(self) -> None:
        state = self.state
        if state is None:
            return
        rate = state.frames / state.elapsed if state.elapsed > 0 else 0.0
        left = state.bytes_total - state.bytes_done
        eta = _duration(left * state.elapsed / state.bytes_done) if state.bytes_done and state.elapsed > 0 else "?"
        line = (f"{state.bytes_done * 100 // max(state.bytes_total, 1)}% ({_size(state.bytes_done)} of "
                f"{_size(state.bytes_total)}), file {state.file_index + 1}/{state.files}, {state.frames:,} frames, "
                f"{rate:,.0f} frames/s, ETA {eta}")
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True

    def end(self) -> None:
        """The last state, and the cursor to a fresh line."""
        self.show()
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _replay_line(r: ReplayResult) -> str:
    rows = ", ".join(f"{t}={n:,}" for t, n in r.committed.items())
    rejects = ", ".join(f"{reason}={n:,}" for reason, n in sorted(r.rejects.items())) or "none"
    return (f"{r.frames:,} frames: rows written {rows}; rejects {rejects}; {r.duplicates:,} duplicates skipped, "
            f"{r.gaps:,} gaps")


async def _ingest(ctx: _Context) -> int:
    args = ctx.args
    # Its own writers, without the daemon's spool (two processes must not share one); rows it cannot commit
    # make the command fail rather than wait in a spool nobody replays.
    settings = msgspec.structs.replace(
        ctx.settings, writer=msgspec.structs.replace(ctx.settings.writer, spool_dir=None)
    )
    # The arguments and the files are checked before the database is reached: a mistake in them is not reported
    # after the connection's retries, nor hidden behind an unreachable database.
    check_files(args.file, exchange=args.exchange, channels=args.channel, account=args.account)
    progress = _ReplayProgressLine(ctx.err)
    async with ctx.target(create=True) as target:
        async with DatabaseManager(target.dsn, settings=settings) as db:
            try:
                results = await ingest_files(db, args.file, exchange=args.exchange, channels=args.channel,
                                             account=args.account, progress=progress)
            finally:
                progress.end()
    code = 0
    for r in results:
        ctx.print(f"{r.path}: {_replay_line(r)} ({r.seconds:.1f} s)")
        if r.damaged:
            ctx.print(f"{r.path}: DAMAGED: the file is truncated or corrupt (see the log); its {r.frames:,} frames "
                      "before the damage were replayed, the rest is lost")
            code = 1
        if r.failed:
            ctx.print(f"{r.path}: FAILED: none of its {r.frames:,} frames gave a row that is stored")
            code = 1
        if r.dropped_rows:
            ctx.print(f"{r.path}: {r.dropped_rows:,} rows could not be written (see the log)")
            code = 1
    if len(results) > 1:
        total = ReplayResult(
            frames=sum(r.frames for r in results),
            committed={t: sum(r.committed[t] for r in results) for t in results[0].committed},
            rejects={k: sum(r.rejects.get(k, 0) for r in results) for k in {k for r in results for k in r.rejects}},
            duplicates=sum(r.duplicates for r in results), gaps=sum(r.gaps for r in results),
            dropped_rows=sum(r.dropped_rows for r in results))
        seconds = sum(r.seconds for r in results)
        ctx.print(f"total, {len(results)} files: {_replay_line(total)} ({seconds:.1f} s, "
                  f"{total.frames / seconds if seconds else 0:,.0f} frames/s)")
    return code


def _simulator_arguments(ctx: _Context) -> dict[str, Any]:
    """The simulator's arguments from the options, else [demo]; a ValidationError naming the option (or setting)
    that is out of range, checked before anything is built (the simulator's own check)."""
    from ..simulator import Limits, argument_problem

    args = ctx.args
    d = ctx.settings.demo
    given = {"rate": (args.rate, "--rate", d.rate, "[demo] rate"),
             "symbols": (args.symbols, "--symbols", d.symbols, "[demo] symbols"),
             "funding_interval": (args.funding_interval, "--funding-interval", d.funding_interval_s,
                                  "[demo] funding_interval_s"),
             "port": (args.port, "--port", 0, "--port")}
    value = {name: option if option is not None else default for name, (option, _, default, _) in given.items()}
    problem = argument_problem(**value)
    if problem is not None:
        name, what = problem
        option, flag, _, setting = given[name]
        raise ValidationError(f"{flag if option is not None else setting} {what}")
    seed = args.seed if args.seed is not None else d.seed
    return {"host": args.host, "port": value["port"], "rate": value["rate"], "symbols": value["symbols"],
            "seed": seed, "limits": Limits(funding_interval=value["funding_interval"])}


async def _simulate(ctx: _Context) -> int:
    from ..simulator import ExchangeSimulator

    args = ctx.args
    kw = _simulator_arguments(ctx)
    try:
        sim = ExchangeSimulator(**kw)
    except ValueError as exc:  # the simulator's own check of its arguments
        raise ValidationError(f"simulate: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await sim.start()
    except OSError as exc:
        raise ValidationError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    try:
        for name, port in sim.ports.items():
            ctx.print(f"{name:<13} http://{args.host}:{port}  ws://{args.host}:{port}")
        c = sim.credentials
        ctx.print(f"test credentials: api key {c.api_key!r}, secret {c.api_secret!r}, passphrase {c.passphrase!r}")
        ctx.print("simulating; Ctrl-C to stop")
        await stop.wait()
    finally:
        await sim.close()
    ctx.print(f"sent {sim.ledger.messages():,} data messages")
    return 0


async def _run(ctx: _Context) -> int:
    # serve() checks the ledger path before it starts (run.py shares the check).
    summary = await serve(ctx.settings, demo=ctx.demo, ledger_file=ctx.args.ledger)
    ctx.print(summary.line())
    return 1 if summary.ledger_error else 0  # the ledger asked for is missing


# -------------------------------------------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML settings (default: $HFTDB_CONFIG, else ./config/default.toml, else built-in)")
    common.add_argument("--demo", action="store_true", default=argparse.SUPPRESS,
                        help="work on the demo's database ([demo] database) instead of the live one")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO level")

    parser = argparse.ArgumentParser(
        prog="hftdb", parents=[common],
        description="Operate hftdb: the database, its schema and the daemon. Every command shares the daemon's "
                    "configuration (--config, HFTDB_* environment variables).",
        epilog="Run `hftdb COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"hftdb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, func: Callable[[_Context], Awaitable[int]]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = command("run", "run the daemon until SIGINT/SIGTERM (what run.py does)", _run)
    p.add_argument("--ledger", metavar="PATH",
                   help="with --demo: write what the simulator sent to this JSON file at exit "
                   "(checked before the start; exit 1 if it cannot be written)")

    p = command("migrate", "apply, revert or list schema migrations", _migrate)
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = msub.add_parser("up", parents=[common], help="apply pending migrations", description="apply pending migrations")
    up.add_argument("--to", type=int, metavar="N", help="stop at version N (default: all)")
    down = msub.add_parser("down", parents=[common], help="revert migrations above version N",
                           description="revert applied migrations above version N, newest first (drops their data)")
    down.add_argument("--to", type=int, metavar="N", required=True, help="the version to go back to (0: everything)")
    down.add_argument("--yes", action="store_true", help="confirm: the reverted migrations' tables and data are dropped")
    msub.add_parser("status", parents=[common], help="list migrations, applied or pending, with checksum checks",
                    description="list migrations, applied or pending, with checksum checks")

    command("status", "the database, schema, data and daemon at a glance", _status)
    p = command("health", "check the database and the daemon; exit 0 when healthy, 1 otherwise", _health)
    p.add_argument("--db-only", action="store_true", help="check only the database, not the daemon")
    p = command("stats", "table sizes, rows per day, partitions, writer and cache counters, slow queries", _stats)
    p.add_argument("--exact", action="store_true", help="count rows per day exactly (scans the tables) instead of estimating")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p = command("cleanup", "apply retention: drop partitions older than the retention period", _cleanup)
    p.add_argument("--retention-days", type=float, metavar="DAYS", help="default: [storage] retention_days")
    p.add_argument("--dry-run", action="store_true", help="list the partitions that would be dropped, drop nothing")
    p = command("archive", "move sealed partitions to Parquet files under [archive] root, verified, then drop "
                           "them", _archive)
    p.add_argument("action", nargs="?", choices=["restore", "verify"],
                   help="restore: load the archived day --date of --table back into PostgreSQL; verify: read "
                        "every archived file back and check it against its manifest (--table, --date narrow it)")
    p.add_argument("--date", metavar="YYYY-MM-DD", help="with restore: the day to load back; with verify: only it")
    p.add_argument("--older-than-days", type=float, metavar="DAYS", help="default: [archive] after_days")
    p.add_argument("--table", choices=_TS, help="only this table (default: all three)")
    p.add_argument("--dry-run", action="store_true", help="list the partitions that would be archived, touch nothing")
    p = command("reset", "drop every hftdb table and recreate the schema empty", _reset)
    p.add_argument("--yes", action="store_true", help="confirm: all data is lost")
    p = command("backup", "dump the database to FILE (pg_dump custom format)", _backup)
    p.add_argument("file", metavar="FILE")
    p = command("restore", "restore a backup FILE into the database (pg_restore, in one transaction)", _restore)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--clean", action="store_true", help="replace the hftdb tables the database already has")
    p.add_argument("--yes", action="store_true", help="confirm --clean")
    command("validate", "compare the live schema with the migrations: checksums, tables, columns, indexes", _validate)
    command("optimize", "ANALYZE, report index health, run partition maintenance", _optimize)
    command("distribute", "on a Citus coordinator: distribute the tables over the workers (idempotent; see "
                          "docs/SCALE-OUT.md)", _distribute)
    p = command("ingest-file", "replay files of raw websocket frames (one per line; plain, gzip or zstd) into the "
                "database, in time order; exit 1 if a file is truncated or corrupt (the frames before the damage "
                "are replayed), or if its frames gave no stored row", _ingest)
    p.add_argument("--exchange", required=True, metavar="NAME",
                   help=f"venue: {', '.join(venues.NAMES[:-1])} or {venues.NAMES[-1]}")
    p.add_argument("--channel", required=True, action="append", metavar="CHANNEL",
                   help="a channel the frames came from, as a live connection subscribes it (repeat for a file of "
                   "several); e.g. bookTicker, tickers. It is checked against the venue's channels and sets how frames "
                   "are sequenced (on Bybit, naming orderbook.1 drops the quotes of tickers frames, as live); it "
                   "selects no frames: every frame the venue's parser recognises is stored, whatever its channel")
    p.add_argument("--account", default="default",
                   help="account name for balance frames: 1 to 64 printable characters (default: default)")
    p.add_argument("file", metavar="FILE", nargs="+",
                   help="capture files (one frame per line; .gz/.zst recognised by content) or directories of them")
    p = command("simulate", "run the local exchange simulator (Binance, Bybit, OKX on loopback) until Ctrl-C", _simulate)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="first port: hosts bind PORT..PORT+3 (default: free ports)")
    p.add_argument("--rate", type=float, help="book updates per second per venue (default: [demo] rate)")
    p.add_argument("--symbols", type=int, help="instruments per venue (default: [demo] symbols)")
    p.add_argument("--seed", type=int, help="random seed (default: [demo] seed)")
    p.add_argument("--funding-interval", type=float, help="seconds between funding updates (default: [demo])")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hftdb`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.ledger is not None and not getattr(args, "demo", False):
        parser.error("--ledger needs --demo")  # as run.py says it: the ledger is the demo simulator's
    try:
        settings = load_settings(locate_config(getattr(args, "config", None)))
        log = settings.logging
        if args.command != "run":
            # A command's output is its answer; its progress and errors go to stderr, the library's INFO chatter
            # only with --verbose.
            log = msgspec.structs.replace(log, level="info" if getattr(args, "verbose", False) else "warning")
        configure_logging(log)
        ctx = _Context(settings, args)
        return _runner()(args.func(ctx))
    except HftdbError as exc:
        if args.command == "run":
            report_fatal(str(exc))  # the daemon's, as run.py reports it: into its log too
        else:
            _fail(str(exc))
        return 1
    except asyncpg.PostgresError as exc:
        if dberrors.citus_worker_unreachable(exc):
            _fail(f"a Citus worker is unreachable from the coordinator, and this command needs it (bring it back, "
                  f"then run the command again): {' '.join(str(exc).split())}")
        else:
            _fail(f"the database refused: {exc}")
        return 1
    except asyncpg.InterfaceError as exc:
        # The client side of the connection: asyncpg's own check of what it was given.
        _fail(f"cannot use the database connection: {exc}")
        return 1
    except OSError as exc:
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("hftdb: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> None:
    print(f"hftdb: {redact(message)}", file=sys.stderr)


def _runner() -> Callable[[Awaitable[int]], int]:
    try:
        import uvloop

        return uvloop.run  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - not on Windows
        return asyncio.run  # type: ignore[return-value]


if __name__ == "__main__":
    sys.exit(main())

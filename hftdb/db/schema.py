"""Versioned schema migrations: the SQL files under ``hftdb/db/migrations/`` and the runner that applies them.

``hftdb/db/migrations/NNNN_name.up.sql`` and ``NNNN_name.down.sql`` ship in the package. ``schema_migrations``
records each applied version with the sha256 of its up file, and :meth:`Migrator.up` refuses to run when an
applied file has changed or gone. Each migration runs in its own transaction, and every run holds the
session-level advisory lock :data:`MIGRATION_LOCK_KEY`, so concurrent processes apply each version once.
:meth:`Migrator.down` reverts to a version with the down files.

The partitions of the time-series tables are managed by :mod:`hftdb.db.partitions`. On a Citus coordinator whose
tables were distributed, a run that applied or reverted anything distributes them again (:mod:`hftdb.db.citus`): a
migration that rebuilds a table leaves it local.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final, Union

import asyncpg
import msgspec

from . import citus
from ..errors import MigrationError, StateError, ValidationError
from .locks import unlock

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "MigrationStatus",
    "Migrator",
    "load_migrations",
    "migrate",
]

logger = logging.getLogger(__name__)

#: Session-level advisory lock held while migrating: ASCII ``hftdbmig`` read as a big-endian int64.
MIGRATION_LOCK_KEY: Final = int.from_bytes(b"hftdbmig", "big")

_FILE_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.(up|down)\.sql")

MigrationSource = Union[str, "os.PathLike[str]", Traversable, Mapping[str, Union[str, bytes]], None]


class Migration(msgspec.Struct, frozen=True, kw_only=True):
    """One versioned migration as shipped: its SQL and the sha256 (hex) of its up file."""

    version: int
    name: str
    up_sql: str
    down_sql: str | None
    checksum: str

    @property
    def filename(self) -> str:
        """Name of the up file, as error messages cite it."""
        return f"{self.version:04d}_{self.name}.up.sql"


class MigrationStatus(msgspec.Struct, frozen=True, kw_only=True):
    """State of one version. ``checksum_ok`` is None while pending, False for an applied version with no file."""

    version: int
    name: str
    applied: bool
    applied_at: datetime | None
    checksum_ok: bool | None


def load_migrations(source: MigrationSource = None) -> list[Migration]:
    """Read migrations from ``source`` (default: the ``hftdb.db.migrations`` package), sorted by version.

    ``source`` may be a directory or a mapping of file name to contents (lets a test present an edited file).
    A ``.sql`` file whose name does not follow ``NNNN_name.(up|down).sql`` is a :class:`MigrationError`, as are
    a version with two names and a down file with no up file.
    """
    files = _read_source(source)
    ups: dict[int, tuple[str, bytes]] = {}
    downs: dict[int, tuple[str, bytes]] = {}
    for filename, data in sorted(files.items()):
        match = _FILE_RE.fullmatch(filename)
        if match is None:
            if filename.endswith(".sql"):
                raise MigrationError(f"migration file {filename!r} is not named NNNN_name.up.sql or NNNN_name.down.sql")
            continue
        version, name, direction = int(match[1]), match[2], match[3]
        if version == 0:
            raise MigrationError(f"migration file {filename!r}: version 0000 is reserved for 'nothing applied'")
        target = ups if direction == "up" else downs
        if version in target:
            raise MigrationError(
                f"two {direction} files for version {version:04d}: {target[version][0]!r} and {name!r}"
            )
        target[version] = (name, data)
    migrations = []
    for version in sorted(ups.keys() | downs.keys()):
        if version not in ups:
            raise MigrationError(f"version {version:04d} has a down file but no up file")
        name, up = ups[version]
        down = downs.get(version)
        if down is not None and down[0] != name:
            raise MigrationError(f"version {version:04d} has up file {name!r} but down file {down[0]!r}")
        migrations.append(Migration(
            version=version,
            name=name,
            up_sql=_decode(version, up),
            down_sql=None if down is None else _decode(version, down[1]),
            checksum=hashlib.sha256(up).hexdigest(),
        ))
    return migrations


def _read_source(source: MigrationSource) -> dict[str, bytes]:
    if isinstance(source, Mapping):
        return {name: data.encode() if isinstance(data, str) else bytes(data) for name, data in source.items()}
    if source is None:
        root: Traversable = importlib.resources.files("hftdb.db.migrations")
    elif isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise MigrationError(f"migration directory not found: {root}")
    else:
        root = source
    return {entry.name: entry.read_bytes() for entry in root.iterdir() if entry.is_file()}


def _decode(version: int, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(f"migration {version:04d} is not valid UTF-8: {exc}") from exc


class Migrator:
    """Applies and reverts the migrations on one connection, under :data:`MIGRATION_LOCK_KEY`.

    The connection must not be inside a transaction: each migration runs in its own. ``source`` overrides where
    the migrations are read from (see :func:`load_migrations`); ``lock_timeout`` bounds the wait for another
    process's run, after which :class:`MigrationError` is raised.

    >>> applied = await Migrator(conn).up()
    """

    def __init__(self, conn: asyncpg.Connection, *, source: MigrationSource = None, lock_timeout: float = 60.0) -> None:
        if lock_timeout <= 0:
            raise ValueError(f"lock_timeout must be > 0, got {lock_timeout!r}")
        self._conn = conn
        self._source = source
        self._lock_timeout = lock_timeout
        self._migrations: list[Migration] | None = None  # read on first use: no I/O in the constructor

    def _load(self) -> list[Migration]:
        if self._migrations is None:
            self._migrations = load_migrations(self._source)
        return self._migrations

    async def status(self) -> list[MigrationStatus]:
        """Every known version, shipped or applied, with whether it is applied and whether its file still matches."""
        applied = await self._applied()
        shipped = {m.version: m for m in self._load()}
        out = []
        for version in sorted(shipped.keys() | applied.keys()):
            row, mig = applied.get(version), shipped.get(version)
            out.append(MigrationStatus(
                version=version,
                name=mig.name if mig is not None else row["name"],
                applied=row is not None,
                applied_at=None if row is None else row["applied_at"],
                checksum_ok=None if row is None else (mig is not None and mig.checksum == row["checksum"]),
            ))
        return out

    async def verify(self) -> None:
        """Raise :class:`MigrationError` if an applied migration's up file has changed or has no file at all."""
        self._check(await self._applied())

    async def up(self, target: int | None = None) -> list[int]:
        """Apply pending migrations up to ``target`` (default: all) in order; return the versions applied.

        Verifies first, and refuses a pending version older than the newest applied one (a migration added out of
        order would run against a schema it was not written for).
        """
        if target is not None:
            _check_version(target)
        migrations = self._load()
        async with self._locked():
            # (looked up first: CREATE ... IF NOT EXISTS needs the CREATE privilege even when the table is there, and
            # a role that only reads must be able to start on a schema that is up to date)
            if await self._conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                await self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            applied = await self._applied()
            self._check(applied)
            pending = [m for m in migrations if m.version not in applied and (target is None or m.version <= target)]
            newest = max(applied, default=0)
            stale = [m.filename for m in pending if m.version < newest]
            if stale:
                raise MigrationError(
                    f"pending migration(s) {', '.join(stale)} are older than applied version {newest:04d}; "
                    "renumber them after it"
                )
            was_distributed = await citus.distributed_before(self._conn)
            done = []
            for mig in pending:
                logger.info("applying migration %s", mig.filename)
                try:
                    async with self._conn.transaction():
                        await self._conn.execute(mig.up_sql)
                        await self._conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                            mig.version, mig.name, mig.checksum,
                        )
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"migration {mig.filename} failed and was rolled back: {exc}") from exc
                done.append(mig.version)
            if done and was_distributed:
                await citus.distribute(self._conn)  # a migration may rebuild a table as local (0004 does)
            return done

    async def down(self, target: int) -> list[int]:
        """Revert applied versions above ``target`` (0: all) newest first with their down files; return them."""
        _check_version(target)
        shipped = {m.version: m for m in self._load()}
        async with self._locked():
            applied = await self._applied()
            self._check(applied)
            doomed = sorted((v for v in applied if v > target), reverse=True)
            no_down = [shipped[v].filename for v in doomed if shipped[v].down_sql is None]
            if no_down:
                raise MigrationError(f"cannot revert: no down file for {', '.join(no_down)}")
            was_distributed = await citus.distributed_before(self._conn)
            for version in doomed:
                mig = shipped[version]
                logger.info("reverting migration %s", mig.filename)
                try:
                    async with self._conn.transaction():
                        await self._conn.execute(mig.down_sql)
                        await self._conn.execute("DELETE FROM schema_migrations WHERE version = $1", version)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"reverting {mig.filename} failed and was rolled back: {exc}") from exc
            if doomed and was_distributed and await self._conn.fetchval("SELECT to_regclass('exchanges') IS NOT NULL"):
                await citus.distribute(self._conn)
            return doomed

    async def _applied(self) -> dict[int, asyncpg.Record]:
        if await self._conn.fetchval("SELECT to_regclass('schema_migrations') IS NULL"):
            return {}
        rows = await self._conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
        return {row["version"]: row for row in rows}

    def _check(self, applied: Mapping[int, asyncpg.Record]) -> None:
        shipped = {m.version: m for m in self._load()}
        problems = []
        for version, row in sorted(applied.items()):
            mig = shipped.get(version)
            if mig is None:
                problems.append(
                    f"version {version:04d} ({row['name']}) is applied but no file for it ships with this hftdb: "
                    "the database was migrated by a newer version"
                )
            elif mig.checksum != row["checksum"]:
                problems.append(
                    f"version {version:04d}: {mig.filename} has changed since it was applied (sha256 "
                    f"{row['checksum'][:12]}... then, {mig.checksum[:12]}... now); never edit an applied "
                    "migration, add a new one"
                )
        if problems:
            raise MigrationError("; ".join(problems))

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        conn = self._conn
        if conn.is_in_transaction():
            raise StateError("Migrator needs a connection outside a transaction: each migration runs in its own")
        try:
            # A session lock taken inside a transaction outlives its commit; SET LOCAL bounds only this wait.
            async with conn.transaction():
                await conn.execute("SELECT set_config('lock_timeout', $1, true)", f"{int(self._lock_timeout * 1000)}ms")
                await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        except asyncpg.LockNotAvailableError as exc:
            raise MigrationError(
                f"another process held the migration lock (advisory key {MIGRATION_LOCK_KEY}) "
                f"for over {self._lock_timeout:g}s"
            ) from exc
        try:
            yield
        finally:
            await unlock(conn, MIGRATION_LOCK_KEY)


def _check_version(target: object) -> None:
    if not isinstance(target, int) or isinstance(target, bool) or target < 0:
        raise ValidationError(f"target must be a version number >= 0, got {target!r}")


async def migrate(conn: asyncpg.Connection, *, target: int | None = None) -> list[int]:
    """Verify and apply the shipped migrations (up to ``target``); return the versions applied. For start-up."""
    return await Migrator(conn).up(target)

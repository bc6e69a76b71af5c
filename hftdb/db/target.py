"""The database a process works on: the configured DSN, or the embedded server, or the demo's database on either.

The daemon and the ``hftdb`` command resolve it the same way, so they always agree on where the data is.
"""

from __future__ import annotations

import getpass
import logging
import os
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import asyncpg
import msgspec

from ..config import Settings, redact_dsn
from ..errors import ConfigError, DatabaseUnavailableError
from . import dberrors
from .server import EmbeddedServer

__all__ = ["Target", "identify", "live_database", "open_target", "with_database"]

logger = logging.getLogger(__name__)


class Target(msgspec.Struct, kw_only=True):
    """The database hftdb works on: its DSN, and the embedded server started to reach it (if any)."""

    dsn: str
    server: EmbeddedServer | None = None
    description: str

    def __repr__(self) -> str:
        return f"Target({self.description!r}, server={self.server!r})"  # the description is the redacted DSN

    async def close(self) -> None:
        """Release the embedded server handle (the server stops when no other process holds one)."""
        if self.server is not None:
            await self.server.stop()
            self.server = None


async def open_target(settings: Settings, *, demo: bool = False, create: bool = True) -> Target:
    """Resolve the database: the configured DSN, or the embedded server (started here) in ``data_dir``.

    With ``demo`` the database is ``[demo] database`` on that same server, created when missing (unless
    ``create`` is false), so simulated quotes never land in the live tables: a ``[demo] database`` that is the
    live database itself (the DSN's, or the embedded server's ``postgres``) is a :class:`ConfigError`.
    """
    dsn = settings.database.dsn
    server = None
    if dsn is None:
        server = EmbeddedServer(settings.database.data_dir)
        dsn = await server.start()
        description = f"embedded PostgreSQL in {server.data_dir}"
    else:
        description = redact_dsn(dsn) or ""
    if demo:
        name = settings.demo.database
        try:
            if name == live_database(dsn):
                where = "the one [database] dsn names" if server is None else "the embedded server's default database"
                raise ConfigError(
                    f"[demo] database {name!r} is the live database ({where}, {description}): the simulator would "
                    "write its quotes into the live tables; set [demo] database (HFTDB_DEMO_DATABASE) to another name")
            if create:
                await _ensure_database(dsn, name, timeout=settings.database.connect_timeout)
        except BaseException:
            if server is not None:
                await server.stop()
            raise
        dsn = with_database(dsn, name)
        description = f"database {name} of {description}"
    return Target(dsn=dsn, server=server, description=description)


def live_database(dsn: str) -> str:
    """The database ``dsn`` connects to, resolved as asyncpg does: the URI's path, else ``?dbname=`` or
    ``?database=``, else ``$PGDATABASE``, else the user's name (the URI's, ``$PGUSER``, the login)."""
    parts = urlsplit(dsn)
    if path := unquote(parts.path.lstrip("/")):
        return path
    query = parse_qs(parts.query)
    for key in ("dbname", "database"):
        if query.get(key):
            return query[key][0]
    if os.environ.get("PGDATABASE"):
        return os.environ["PGDATABASE"]
    if parts.username:
        return unquote(parts.username)
    try:
        return os.environ.get("PGUSER") or getpass.getuser()
    except (OSError, KeyError):  # no login name: asyncpg could not connect without a user either
        return ""


async def identify(conn: asyncpg.Connection) -> dict[str, str | None]:
    """What tells the database ``conn`` is on from any other, with no secret in it: ``database`` (its name),
    ``system_identifier`` (the server's, fixed when its cluster was created; None where pg_control_system() is not
    granted) and ``port`` (the server's own). The daemon shows it on ``/health`` and ``/stats``, and the ``hftdb``
    command compares it with its own database's before it takes the daemon that answers for this database's."""
    name, port = await conn.fetchrow("SELECT current_database(), current_setting('port')")
    try:
        system = await conn.fetchval("SELECT system_identifier::text FROM pg_control_system()")
    except asyncpg.InsufficientPrivilegeError:
        system = None
    return {"database": name, "system_identifier": system, "port": port}


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at ``database`` instead of its own (URI form only)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"[database] dsn must be a postgresql:// URI to name another database, got {redact_dsn(dsn)!r}")
    return urlunsplit(parts._replace(path="/" + database))


async def _ensure_database(dsn: str, name: str, *, timeout: float) -> None:
    conn = await dberrors.first_connection(lambda: asyncpg.connect(dsn, timeout=timeout), dsn, timeout=timeout)
    try:
        if not await conn.fetchval("SELECT true FROM pg_database WHERE datname = $1", name):
            # An identifier cannot be a bind parameter; the name is checked by [demo] database's pattern.
            await conn.execute(f'CREATE DATABASE "{name}"')
            logger.info("created database %s", name)
    except asyncpg.DuplicateDatabaseError:
        pass  # created by a concurrent process since we looked
    except asyncpg.PostgresError as exc:
        raise DatabaseUnavailableError(
            f"cannot create database {name!r} for the demo: {exc} (create it, or set [demo] database)"
        ) from None
    finally:
        await conn.close()



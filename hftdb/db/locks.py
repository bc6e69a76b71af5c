"""Session-level PostgreSQL advisory locks: their release, shared by the migration runner and partition upkeep.

hftdb's keys are ASCII tags read as big-endian int64s, so they cannot collide with each other:
``hftdbmig`` (:data:`hftdb.db.schema.MIGRATION_LOCK_KEY`), and per time-series table ``hftdbpt`` / ``hftdbmn`` plus
the table's index as the low byte (partition creation and maintenance, :mod:`hftdb.db.partitions`).
"""

from __future__ import annotations

import logging

import asyncpg

__all__ = ["unlock"]

logger = logging.getLogger(__name__)


async def unlock(conn: asyncpg.Connection, key: int) -> None:
    """Release the session-level advisory lock ``key`` held by ``conn``; a failure is logged, never raised."""
    if conn.is_closed():
        return  # the session, and its locks, are gone
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Raising here would hide the error that got us here; asyncpg's pool reset unlocks all on release.
        logger.warning("could not release advisory lock %d (released when the connection closes): %r", key, exc)

"""What a database error means for the rows that met it, decided by its SQLSTATE: wait, reject, or retry a little.

One function, :func:`classify`, is the rule every retry loop of the write path reads (the commit path, symbol
registration, the manager's start-up). Its answer is one of:

``WAIT``
    The database is away or not yet able to work, and waiting fixes it: the caller backs off and retries for as
    long as it takes, losing nothing. These are the socket and client errors (``OSError``, timeouts, asyncpg's
    ``InterfaceError`` and ``InternalClientError``, a connection lost mid-operation) and these SQLSTATEs:

    - class ``08`` (connection exception: 08000, 08001, 08003, 08004, 08006, 08007, 08P01);
    - ``57P01`` admin_shutdown, ``57P02`` crash_shutdown, ``57P03`` cannot_connect_now (starting up, in recovery);
    - ``57014`` query_canceled (a statement timeout, ``pg_cancel_backend``: nothing about the rows);
    - class ``53`` (insufficient resources: disk full, out of memory, too many connections), which an operator or
      the passing of a load peak fixes;
    - ``40001`` serialization_failure, ``40P01`` deadlock_detected, ``55P03`` lock_not_available, ``55006``
      object_in_use (a concurrent DDL such as a partition being attached or detached);
    - ``XX000`` when Citus says a worker was lost: ``failure on connection marked as essential``, ``could not
      connect to any active placements``, or libpq's own words for a dead connection (``SSL SYSCALL error``,
      ``server closed the connection unexpectedly``, ...) passed on from a worker connection lost under an open
      transaction. Citus raises these as internal errors, not class 08, and a worker restart or failover fixes
      them (its errors while connecting are 08006 already);
    - ``23514`` when it is "no partition of relation ... found for row" (retention dropped a partition under the
      writer; the retry creates it): fixed by the retry itself, so waited out, not held against the rows;
    - class ``28`` (the server refuses the login: a rotated password, ``pg_hba.conf``, a role made NOLOGIN) and
      ``3D000`` (the database is gone) met on a new connection (:func:`login_refused`): nothing about the rows, and
      only an operator fixes it. The write path keeps the rows (in memory, then in the spool) and says so at ERROR;
      start-up, where the settings are the mistake, fails at once on them instead.

``DATA``
    The server refused a value: class ``22`` (data exception: 22021 character_not_in_repertoire, 22P05
    untranslatable_character, 22003 numeric_value_out_of_range, ...) and class ``23`` (integrity constraint
    violation: a CHECK, NOT NULL, unique or foreign key). Retrying the same rows fails the same way, so the
    offending rows are found and rejected alone (counted, logged) and the others are stored.

``OTHER``
    Anything else (class 42 syntax, privilege and undefined-object errors, P0001 from a trigger, XX000 internal
    errors): the caller retries it a bounded number of times (:data:`MAX_OTHER_ATTEMPTS`), then gives up on the
    rows in question with a counted, logged rejection, so that nothing retries forever on an error retrying
    cannot fix. (A commit's temp staging table gone with its backend, 42P01, is created again by the next
    attempt, which then succeeds: one of these attempts, not a lost row.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg

from ..config import redact_dsn
from ..errors import DatabaseUnavailableError
from ..redact import redact

__all__ = ["WAIT", "DATA", "OTHER", "CATCH", "MAX_OTHER_ATTEMPTS", "classify", "sqlstate", "citus_worker_unreachable",
           "describe", "first_connect_fails", "first_connection", "login_refused"]

T = TypeVar("T")

WAIT: Final = "wait"
DATA: Final = "data"
OTHER: Final = "other"

#: Attempts given to an ``OTHER`` error before the rows in question are rejected.
MAX_OTHER_ATTEMPTS: Final = 5

#: What the write path catches around a database call and hands to :func:`classify` (anything from the server or
#: the socket). Anything else is a bug and propagates.
CATCH: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # Raised when a connection broken mid-operation is reset on release to the pool (seen under server restart).
    asyncpg.exceptions.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)

_WAIT_STATES = frozenset({"57P01", "57P02", "57P03", "57014", "40001", "40P01", "55P03", "55006"})
_WAIT_CLASSES = frozenset({"08", "53"})
_DATA_CLASSES = frozenset({"22", "23"})
#: Citus's XX000 errors that mean a worker was unreachable (see the module docstring): Citus's own, then libpq's.
_CITUS_UNREACHABLE = (
    "failure on connection marked as essential", "could not connect to any active placements",
    "SSL SYSCALL error", "SSL error", "server closed the connection unexpectedly", "could not receive data from server",
    "could not send data to server", "connection not open", "no connection to the server",
    "lost synchronization with server",
)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE an exception carries (asyncpg's server errors and its client-side ``DataError``), or None."""
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def login_refused(exc: BaseException) -> bool:
    """Whether the server refused to let a connection in: class ``28`` (invalid authorization: a wrong password, no
    pg_hba.conf entry, a role that may not log in) or ``3D000`` (no such database)."""
    state = sqlstate(exc)
    return state is not None and (state[:2] == "28" or state == "3D000")


def first_connect_fails(exc: BaseException) -> bool:
    """Whether a first connection (at start-up) should fail at once on ``exc`` rather than wait for the server: a
    login refused (:func:`login_refused`), or a DSN the client itself refuses (an unknown ``sslmode``, a certificate
    file that is missing). Later in a run the same errors wait, as any connection loss does: rows are never
    rejected for how the database is reached."""
    return login_refused(exc) or isinstance(exc, asyncpg.ClientConfigurationError)


def citus_worker_unreachable(exc: BaseException) -> bool:
    """Whether the server (a Citus coordinator) answered that it could not reach one of its workers: a class
    ``08`` error it sent about a remote node (``connection to the remote node ... failed``, ``could not establish
    any connections to the node ...`` after ``citus.node_connection_timeout``, ``could not connect to ... to get
    size of table``), or its ``XX000`` for a worker connection lost mid-statement. The coordinator itself
    is up; statements that need only the other workers' shards still work."""
    state = sqlstate(exc)
    if state is None or not isinstance(exc, asyncpg.PostgresError):
        return False
    text = str(exc)
    if state[:2] == "08":
        return any(words in text for words in ("remote node", "connections to the node", "could not connect to "))
    return state == "XX000" and any(words in text for words in _CITUS_UNREACHABLE)


def classify(exc: BaseException) -> str:
    """:data:`WAIT`, :data:`DATA` or :data:`OTHER` for an error met on a database call (see the module docstring)."""
    state = sqlstate(exc)
    if state is None:
        if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
                            asyncpg.exceptions.InternalClientError)):
            return WAIT
        return OTHER
    if state in _WAIT_STATES or state[:2] in _WAIT_CLASSES or login_refused(exc):
        return WAIT
    if state == "23514" and "no partition of relation" in str(exc):
        return WAIT
    if state == "XX000" and any(words in str(exc) for words in _CITUS_UNREACHABLE):
        return WAIT
    if state[:2] in _DATA_CLASSES:
        return DATA
    return OTHER


def describe(exc: BaseException, *, timeout: float | None = None) -> str:
    """An error met on the way to the database, for a user's eyes, secrets starred out: ``Type: message``, or,
    for a timeout that carries no message, ``no answer within N s`` (a bare ``TimeoutError:`` said nothing)."""
    text = redact(str(exc)).strip()
    if not text and isinstance(exc, asyncio.TimeoutError) and timeout is not None:
        return f"no answer within {timeout:g} s ({type(exc).__name__})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def first_connection(connect: Callable[[], Awaitable[T]], dsn: str, *, timeout: float) -> T:
    """``connect()``, a process's first connection (or pool) to ``dsn``: what waiting can cure (a server starting,
    refusing, full) is tried again for ``timeout`` seconds (``[database] connect_timeout``), with back-off up to
    2 s; what it cannot (:func:`first_connect_fails`, or no :data:`WAIT` error) is not. Gives up with one
    :class:`~hftdb.errors.DatabaseUnavailableError`, the DSN's password starred."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return await connect()
        except CATCH as exc:
            if classify(exc) != WAIT or first_connect_fails(exc) or time.monotonic() + delay > deadline:
                raise DatabaseUnavailableError(
                    f"cannot connect to {redact_dsn(dsn)}: {describe(exc, timeout=timeout)}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

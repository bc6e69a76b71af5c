"""Read routing: read pools on the primary and on any number of streaming replicas, with health checks.

Reads go to healthy replicas in rotation and fall back to the primary when every replica is down or lags more than
``reads.max_lag_ms``; a read that fails on a replica because the replica went away is retried on the next node,
so callers do not see the failure. Writes never come here: the batch writers use the manager's own pool.

Lag. Each health round samples the primary's WAL position (``pg_current_wal_lsn()``) and, on each replica, the
position it has replayed and the commit time of the last transaction it replayed. A replica that has replayed
the primary's newest sampled position lags by nothing (an idle primary does not make it look stale). Otherwise
its lag is the smaller of two upper bounds on how old its newest missing commit can be: the time since the primary
was at the position the replica has reached (from the samples), and ``now() - pg_last_xact_replay_timestamp()``.
The resolution is one health interval. When the primary cannot be sampled (it is restarting), the last samples
stand: a replica that replayed all of them stays in rotation and serves reads while the primary is away.

Read pools are asyncpg pools of their own: only hftdb's read statements run on them, which never change session
state, so they skip asyncpg's reset round trip on release, and they decode ``timestamptz`` as its raw int64
(microseconds) in C; the read SQL shifts it to the Unix epoch on the server (see :data:`hftdb.read.columnar.TO_UNIX`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Awaitable, Callable, TypeVar

import asyncpg

from ..db import dberrors
from ..config import DatabaseSettings, ReadSettings, redact_dsn
from ..errors import ClosedError, DatabaseUnavailableError

__all__ = ["ReadRouter", "ReadNode", "ReadPool", "NODE_DOWN", "init_read_connection"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that mean "this server is not answering" (down, restarting, shutting down, unreachable, too slow), as
#: opposed to an error in the statement: a read that fails with one of these is retried on the next node.
NODE_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, 57P03 cannot connect now, ...
    asyncpg.exceptions.TooManyConnectionsError,
)

_RECOVERY_CONFLICT = "40001"  # "canceling statement due to conflict with recovery" on a hot standby

_PRIMARY_LSN = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8"
_REPLICA_HEALTH = """
SELECT pg_is_in_recovery(),
       (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
"""


async def init_read_connection(conn: asyncpg.Connection) -> None:
    """Decode ``timestamptz`` as its wire int64 in C (PostgreSQL-epoch µs); read SQL shifts it to Unix µs."""
    await conn.set_builtin_type_codec("timestamptz", schema="pg_catalog", codec_name="int8")


async def _keep_session(conn: asyncpg.Connection) -> None:
    # Read statements leave no session state behind (asyncpg still rolls back a dangling transaction itself), so
    # the default RESET ALL / UNLISTEN * / CLOSE ALL round trip on every release would be pure latency.
    return None


class ReadPool:
    """An asyncpg pool, plus up to ``hold`` of its connections kept checked out for short reads.

    asyncpg releases a connection through a task shielded from cancellation: for a read of a few rows that is
    about a fifth of the client's CPU (~40 µs) and one more loop iteration before the caller resumes.
    :meth:`fetchval`, :meth:`fetch`, :meth:`fetchrow` and :meth:`run` take a held connection instead and keep it
    when the statement succeeded. A held connection found closed is handed back and a fresh one taken, as the pool's own
    acquire would; any failure (a broken connection, a timeout, a cancelled await) hands it back to the pool,
    whose release deals with it, and later reads refill the held set. ``close``, ``terminate`` and
    ``expire_connections`` hand the held connections back first. Every other attribute is the pool's own.
    """

    __slots__ = ("_pool", "_held", "_hold")

    def __init__(self, pool: asyncpg.Pool, *, hold: int = 2) -> None:
        self._pool = pool
        self._held: list[Any] = []
        self._hold = hold

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def __repr__(self) -> str:
        return f"ReadPool({self._pool!r}, held={len(self._held)})"

    async def _take(self) -> Any:
        held = self._held
        while held:
            con = held.pop()
            try:
                if not con.is_closed():
                    return con
            except asyncpg.InterfaceError:
                continue  # it closed and asyncpg already took it back into the pool
            await self._pool.release(con)
        return await self._pool.acquire()

    async def _keep(self, con: Any) -> None:
        if len(self._held) < self._hold and not self._pool.is_closing():
            self._held.append(con)
        else:
            await self._pool.release(con)

    async def _run(self, method: str, query: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await self.run(lambda con: getattr(con, method)(query, *args, **kwargs))

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(connection)`` on a held connection: kept when ``fn`` returns (it must leave no transaction open),
        handed back to the pool when it raises (a connection ``fn`` closed included)."""
        con = await self._take()
        try:
            result = await fn(con)
        except BaseException:
            await self._pool.release(con)
            raise
        await self._keep(con)
        return result

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        return await self._run("fetchval", query, args, {"column": column, "timeout": timeout})

    async def fetch(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:
        return await self._run("fetch", query, args, {"timeout": timeout, "record_class": record_class})

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:
        return await self._run("fetchrow", query, args, {"timeout": timeout, "record_class": record_class})

    async def _hand_back(self) -> None:
        held, self._held = self._held, []
        for con in held:
            try:
                await self._pool.release(con)
            except NODE_DOWN:
                pass  # the connection was broken; the pool has dropped it

    @property
    def held(self) -> int:
        """How many connections the pool holds for reads right now."""
        return len(self._held)

    async def close(self) -> None:
        await self._hand_back()
        await self._pool.close()

    def terminate(self) -> None:
        self._held = []
        self._pool.terminate()

    async def expire_connections(self) -> None:
        await self._hand_back()
        await self._pool.expire_connections()


class ReadNode:
    """One server reads can go to: the primary or a replica, with its health and counters."""

    __slots__ = ("name", "dsn", "primary", "pool", "healthy", "lag_s", "reads", "failovers", "last_error",
                 "checked_at")

    def __init__(self, dsn: str, *, primary: bool) -> None:
        self.dsn = dsn
        self.name = redact_dsn(dsn) or ""
        self.primary = primary
        self.pool: ReadPool | None = None
        # A replica enters the rotation only after a health check has seen it replaying and current.
        self.healthy = primary
        self.lag_s: float | None = 0.0 if primary else None
        self.reads = 0
        self.failovers = 0
        self.last_error: str | None = None
        self.checked_at: float | None = None

    def __repr__(self) -> str:
        role = "primary" if self.primary else "replica"
        return f"ReadNode({self.name!r}, {role}, healthy={self.healthy}, lag_s={self.lag_s})"

    def status(self) -> dict[str, Any]:
        """Health and counters, for ``DatabaseManager.read_status()``."""
        return {
            "dsn": self.name, "role": "primary" if self.primary else "replica", "healthy": self.healthy,
            "lag_ms": None if self.lag_s is None else self.lag_s * 1000, "reads": self.reads,
            "failovers": self.failovers, "last_error": self.last_error,
        }


class ReadRouter:
    """Routes reads over the primary's read pool and the replicas' pools; checks replica health in the background.

    >>> router = ReadRouter(primary_dsn, settings.reads, database=settings.database)
    >>> await router.start()
    >>> rows = await router.run(lambda pool: pool.fetch("SELECT 1"))
    >>> await router.close()
    """

    def __init__(self, primary_dsn: str, settings: ReadSettings, *, database: DatabaseSettings) -> None:
        if not isinstance(settings, ReadSettings):
            raise ValueError(f"settings must be hftdb.config.ReadSettings, got {type(settings).__name__}")
        self.settings = settings
        self._database = database
        self.primary = ReadNode(primary_dsn, primary=True)
        self.replicas = [ReadNode(dsn, primary=False) for dsn in settings.replicas]
        self._max_lag_s = settings.max_lag_ms / 1000
        self._interval_s = settings.health_interval_ms / 1000
        self._lsn_samples: collections.deque[tuple[float, int]] = collections.deque()
        self._next = 0
        self._state = "new"
        self._tasks: set[asyncio.Task[None]] = set()
        self._round_done = asyncio.Condition()
        self.rounds = 0

    def __repr__(self) -> str:
        healthy = sum(n.healthy for n in self.replicas)
        return f"ReadRouter(replicas={len(self.replicas)}, healthy={healthy}, state={self._state})"

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the primary's read pool, run one health round (usable replicas join at once), start the checker."""
        if self._state != "new":
            return
        self.primary.pool = await self._create_pool(self.primary.dsn)
        self._state = "open"
        if self.replicas:
            await self.check_now()
            task = asyncio.create_task(self._health_loop(), name="hftdb-read-health")
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("read health checker failed", exc_info=task.exception())

    async def close(self, *, timeout: float = 10.0) -> None:
        """Stop the checker and close every read pool (terminating them after ``timeout``). Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for node in (self.primary, *self.replicas):
            pool, node.pool = node.pool, None
            if pool is None:
                continue
            try:
                await asyncio.wait_for(pool.close(), timeout)
            except (asyncio.TimeoutError, *NODE_DOWN):
                pool.terminate()

    def terminate(self) -> None:
        """Close every read pool now."""
        self._state = "closed"
        for task in list(self._tasks):
            task.cancel()
        for node in (self.primary, *self.replicas):
            pool, node.pool = node.pool, None
            if pool is not None:
                pool.terminate()

    async def _create_pool(self, dsn: str) -> ReadPool:
        s = self.settings
        return ReadPool(await asyncpg.create_pool(
            dsn, min_size=s.pool_min_size, max_size=s.pool_max_size, init=init_read_connection, reset=_keep_session,
            command_timeout=self._database.command_timeout, timeout=self._database.connect_timeout,
        ))

    # -- routing ---------------------------------------------------------------------------------------------

    async def run(self, fn: Callable[[ReadPool], Awaitable[T]], *, primary: bool = False) -> T:
        """Run ``fn(pool)`` on a healthy replica (in rotation), else on the primary.

        A replica that fails with a :data:`NODE_DOWN` error is taken out of the rotation until a health check
        passes again, and the read moves on to the next node; the primary is the last resort, and a failure there
        raises :class:`DatabaseUnavailableError`. ``primary=True`` reads the primary only (read-your-writes).
        """
        if self._state != "open":
            raise ClosedError("the read router is closed")
        if not primary and self.replicas:
            healthy = [n for n in self.replicas if n.healthy]
            if healthy:
                start = self._next = (self._next + 1) % len(healthy)
                for i in range(len(healthy)):
                    node = healthy[(start + i) % len(healthy)]
                    pool = node.pool
                    if pool is None or not node.healthy:
                        continue
                    try:
                        result = await fn(pool)
                    except NODE_DOWN as exc:
                        self._mark_down(node, exc)
                        node.failovers += 1
                        continue
                    except asyncpg.PostgresError as exc:
                        if exc.sqlstate != _RECOVERY_CONFLICT:
                            raise
                        node.failovers += 1
                        logger.info("read cancelled on %s by a recovery conflict; retrying elsewhere", node.name)
                        continue
                    node.reads += 1
                    return result
        node = self.primary
        if node.pool is None:
            raise ClosedError("the read router is closed")
        try:
            result = await fn(node.pool)
        except (*NODE_DOWN, asyncpg.PostgresError) as exc:
            if dberrors.citus_worker_unreachable(exc):
                # The coordinator answered: one of its workers did not. Said as such, not as the primary down.
                raise DatabaseUnavailableError(
                    f"a Citus worker is unreachable from the coordinator ({' '.join(redact_dsn(str(exc)).split())}): a read that "
                    "needs its shards fails until it is back; reads of shards on other workers are answered"
                ) from exc
            if not isinstance(exc, NODE_DOWN):
                raise
            node.last_error = f"{type(exc).__name__}: {redact_dsn(str(exc))}"
            raise DatabaseUnavailableError(
                f"no server answered the read: every replica is down or lagging and the primary failed "
                f"({node.last_error})"
            ) from exc
        node.reads += 1
        return result

    def _mark_down(self, node: ReadNode, exc: BaseException | str) -> None:
        error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {redact_dsn(str(exc))}"
        if not isinstance(exc, str) and dberrors.login_refused(exc):
            # Its settings are wrong (a password, a role, a database), which no round fixes: said once at ERROR.
            error = f"{type(exc).__name__} [{dberrors.sqlstate(exc)}]: {redact_dsn(str(exc))}"
            if node.last_error != error:
                logger.error("read replica %s refuses hftdb's connection (%s): fix its DSN in [reads] replicas; "
                             "reads go elsewhere meanwhile", node.name, error)
        elif node.healthy or node.last_error is None:
            # (also a replica that never joined: its first failed check is said once)
            logger.warning("read replica %s out of rotation: %s", node.name, error)
        node.healthy = False
        node.last_error = error

    def status(self) -> list[dict[str, Any]]:
        """Health and counters of the primary and of every replica."""
        return [n.status() for n in (self.primary, *self.replicas)]

    # -- health ----------------------------------------------------------------------------------------------

    async def check_now(self) -> None:
        """Run one health round now: sample the primary's WAL position, then check every replica."""
        await self._sample_primary()
        await asyncio.gather(*(self._check(node) for node in self.replicas))
        async with self._round_done:
            self.rounds += 1
            self._round_done.notify_all()

    async def wait_round(self, *, timeout: float | None = None) -> None:
        """Wait until the next health round completes (for callers that must see a fresh status)."""
        async with self._round_done:
            target = self.rounds + 1
            await asyncio.wait_for(self._round_done.wait_for(lambda: self.rounds >= target), timeout)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_now()
            except Exception:
                # Each check handles what a server can answer; anything else is a bug, but a dead checker would
                # freeze every replica's state. Log it and keep checking.
                logger.exception("read health round failed; next round in %.0f ms", self._interval_s * 1000)

    async def _sample_primary(self) -> None:
        pool = self.primary.pool
        if pool is None:
            return
        try:
            lsn = await pool.fetchval(_PRIMARY_LSN, timeout=self.settings.health_timeout_s)
        except (*NODE_DOWN, asyncpg.PostgresError) as exc:
            # Down, restarting, or not a primary (in recovery): the last samples stand.
            self.primary.last_error = f"{type(exc).__name__}: {redact_dsn(str(exc))}"
            return
        now = time.monotonic()
        samples = self._lsn_samples
        samples.append((now, lsn))
        # Keep enough history to date any lag up to well past the bound; older samples only say "very late".
        horizon = now - max(4 * self._max_lag_s, 10 * self._interval_s)
        while len(samples) > 2 and samples[1][0] < horizon:
            samples.popleft()

    async def _check(self, node: ReadNode) -> None:
        timeout = self.settings.health_timeout_s
        try:
            async with asyncio.timeout(timeout):
                if node.pool is None:
                    node.pool = await self._create_pool(node.dsn)
                row = await node.pool.fetchrow(_REPLICA_HEALTH)
        except NODE_DOWN as exc:
            self._mark_down(node, exc)
            return
        except asyncpg.PostgresError as exc:
            self._mark_down(node, exc)
            return
        node.checked_at = time.monotonic()
        in_recovery, replay_lsn, replay_age = row
        if not in_recovery:
            self._mark_down(node, "not a standby (promoted, or not a replica): kept out of rotation")
            return
        lag = self._lag(replay_lsn, replay_age)
        node.lag_s = lag
        if lag > self._max_lag_s:
            self._mark_down(node, f"lags {lag * 1000:.0f} ms, over the {self.settings.max_lag_ms:.0f} ms bound")
            return
        if not node.healthy:
            logger.info("read replica %s back in rotation (lag %.0f ms)", node.name, lag * 1000)
        node.healthy = True
        node.last_error = None

    def _lag(self, replay_lsn: int | None, replay_age: float | None) -> float:
        samples = self._lsn_samples
        if replay_lsn is None:
            return float("inf")
        if not samples:
            # The primary has never answered a sample: all we know is the replica's own view.
            return 0.0 if replay_age is None else max(replay_age, 0.0)
        if replay_lsn >= samples[-1][1]:
            return 0.0
        for at, lsn in reversed(samples):
            if lsn <= replay_lsn:
                # The replica holds what the primary had then: the lag is at most the time since.
                lag = time.monotonic() - at
                return lag if replay_age is None else min(lag, max(replay_age, 0.0))
        # Behind every sample (the router has just started, or the replica is far behind): they give only a floor,
        # the age of the last commit replayed is the bound, and without one the lag is unknown.
        if replay_age is None:
            return float("inf")
        return max(time.monotonic() - samples[0][0], replay_age)

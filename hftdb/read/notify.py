"""Commit notifications: ``async for`` over the batches the writers commit, on a dedicated LISTEN connection.

Each committed writer batch sends one ``pg_notify('hftdb_<table>', payload)`` inside its own transaction, so a
notification arrives only for committed rows, once per batch, never per row. The payload names the table, the
row count, the newest receipt time and the symbol ids it touched (exchange ids for balances), or an id range
when it touched more than 200.

A :class:`Subscription` holds its own connection to the primary (not a pooled one: LISTEN is session state).
A dead connection is noticed two ways: asyncpg's termination callback (the server closed the socket) and a
keep-alive query every ``reads.listen_keepalive_s`` (a silent network). It then reconnects with capped, jittered
backoff, LISTENs again, and yields a synthetic *catch-up* notification (``catch_up=True``) in the place of the
gap: after every notification received before it (handed out without waiting for the reconnect), before any
received after it. Its ``since_ts`` says where to re-read from (``recv_ts >= since_ts``): the newest ``max_ts``
delivered before the gap, lowered to the oldest receipt time of any batch the ledger (``ingest_batches``) shows
committed around the gap, so a late batch (a spooled batch replayed, a producer with a backlog) is covered too.
The same happens when the consumer falls so far behind that the buffer (``max_pending``) overflows: the backlog
is dropped and one catch-up stands for it, its ledger lookup reaching back to when the oldest dropped
notification arrived.

Notifications are at-least-once: a catch-up may cover rows the consumer has already read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Any, Awaitable, Callable, Iterable

import asyncpg
import msgspec

from ..config import ReadSettings, redact_dsn
from ..errors import ClosedError, HftdbError, StateError, ValidationError
from ..models import now_us
from ..tablespec import TIME_SERIES

__all__ = ["Notification", "Subscription", "LatestMirror", "TABLES"]

logger = logging.getLogger(__name__)

#: The tables whose writers notify, and so the tables one can subscribe to.
TABLES = TIME_SERIES

_LISTEN_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError,
    asyncpg.exceptions.InternalClientError,
)


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """One committed batch (or, with ``catch_up``, a gap to re-read).

    ``ids`` are the symbol ids the batch touched (exchange ids for ``balances``), narrowed to the subscription's
    filter; ``None`` with ``id_range`` set when the batch touched more than 200 ids (then the range is all that is
    known), and ``None`` on a catch-up (anything may have changed). ``max_ts`` is the newest receipt time in the
    batch (Unix µs). A catch-up has ``rows == -1`` (unknown), ``max_ts is None`` and ``since_ts`` set.
    """

    table: str
    rows: int
    max_ts: int | None
    ids: tuple[int, ...] | None = None
    id_range: tuple[int, int] | None = None
    catch_up: bool = False
    since_ts: int | None = None


class _Payload(msgspec.Struct):
    table: str
    rows: int
    max_ts: int
    ids: list[int] | None = None
    id_range: tuple[int, int] | None = None


_decode = msgspec.json.Decoder(_Payload).decode

# The oldest receipt time among batches committed since the gap began (seconds ago, with slack): where a
# catch-up must re-read from. committed_at has a BRIN index; the ledger keeps days of batches.
_GAP_OLDEST = """
SELECT (extract(epoch FROM min(min_recv_ts)) * 1000000)::int8 FROM ingest_batches
WHERE table_name = $1 AND committed_at >= now() - make_interval(secs => $2)
"""
# A batch's committed_at is stamped by its transaction's last statement before COMMIT (clock_timestamp(), in
# hftdb.store.tables and hftdb.store.unit), however long the transaction was open: the slack covers the COMMIT's
# own round trip and a slow one.
_GAP_SLACK_S = 10.0


class _Gap:
    """Marks the place of a gap in the pending queue."""

    __slots__ = ("noticed_at", "since")

    def __init__(self, noticed_at: float, since: int) -> None:
        self.noticed_at = noticed_at
        self.since = since


class Filter:
    """Which notifications a subscription wants: ids (symbols, or exchanges for balances) and/or an exchange.

    ``exchange_of`` maps symbol ids to exchange ids (looking up unknown ones); it is needed only to filter a
    symbol table by exchange.
    """

    __slots__ = ("ids", "exchange_id", "exchange_of")

    def __init__(
        self,
        *,
        ids: Iterable[int] | None = None,
        exchange_id: int | None = None,
        exchange_of: Callable[[list[int]], Awaitable[dict[int, int]]] | None = None,
    ) -> None:
        self.ids = frozenset(ids) if ids is not None else None
        self.exchange_id = exchange_id
        if exchange_id is not None and exchange_of is None:
            raise ValueError("exchange_of is required to filter by exchange_id")
        self.exchange_of = exchange_of

    async def apply(self, note: Notification) -> Notification | None:
        """The notification narrowed to what the filter wants, or None when none of it matches."""
        if note.catch_up or (self.ids is None and self.exchange_id is None):
            return note
        if note.ids is None:
            if note.id_range is None:
                return note
            lo, hi = note.id_range
            if self.ids is not None and not any(lo <= i <= hi for i in self.ids):
                return None
            # More than 200 ids: the range is all we know. Deliver it; a false positive costs one read.
            return note
        ids: Iterable[int] = note.ids
        if self.ids is not None:
            ids = [i for i in ids if i in self.ids]
        if self.exchange_id is not None and self.exchange_of is not None:
            ids = list(ids)
            owners = await self.exchange_of(ids)
            ids = [i for i in ids if owners.get(i) == self.exchange_id]
        ids = tuple(ids)
        if not ids:
            return None
        return msgspec.structs.replace(note, ids=ids)


class Subscription:
    """Commit notifications of one table, filtered; use with ``async with``, then ``async for``.

    >>> async with db.notifications("book_tickers", exchange="binance_spot") as feed:
    ...     async for note in feed:
    ...         rows = await db.get_latest_book_tickers(symbol_ids=note.ids, primary=True) if note.ids else ...

    Read what a notification announces with ``primary=True``: a read replica may not have replayed the commit yet.

    Obtain it from ``DatabaseManager.notifications()``; no I/O happens before ``async with``.
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        settings: ReadSettings,
        prepare: Callable[[], Awaitable[Filter]] | None = None,
        connect_timeout: float = 10.0,
        max_pending: int = 100_000,
        on_close: Callable[[Subscription], None] | None = None,
    ) -> None:
        if table not in TABLES:
            raise ValueError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
        if type(max_pending) is not int or max_pending <= 0:
            raise ValidationError(f"max_pending must be a positive integer, got {max_pending!r}")
        self.table = table
        self.channel = f"hftdb_{table}"
        self._dsn = dsn
        self._settings = settings
        self._prepare = prepare
        self._filter = Filter()
        self._connect_timeout = connect_timeout
        self._max_pending = max_pending
        self._on_close = on_close
        self._conn: asyncpg.Connection | None = None
        # Each payload with the time.monotonic() it arrived at: a dropped backlog's catch-up reads the ledger from
        # when its oldest notification arrived.
        self._pending: collections.deque[tuple[float, str] | _Gap] = collections.deque()
        self._wakeup = asyncio.Event()
        self._lost = False
        self._last_max_ts: int | None = None
        self._state = "new"
        self._tasks: set[asyncio.Task[None]] = set()
        # The keep-alive and the catch-up's ledger lookup share the connection: one query at a time.
        self._query_lock = asyncio.Lock()
        self.reconnects = 0
        self.overflows = 0
        self.delivered = 0

    def __repr__(self) -> str:
        return (f"Subscription({self.table!r}, state={self._state}, pending={len(self._pending)}, "
                f"reconnects={self.reconnects})")

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the listening connection (to find it in ``pg_stat_activity``), if connected."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Resolve the filter, connect and LISTEN. Notifications committed from now on are delivered."""
        if self._state == "open":
            return
        if self._state != "new":
            raise ClosedError("this subscription is closed; create a new one")
        if self._prepare is not None:
            self._filter = await self._prepare()
        # Rows committed before the first notification were not asked for: a catch-up after an early
        # disconnect starts here.
        self._last_max_ts = now_us()
        await self._connect()
        self._state = "open"
        task = asyncio.create_task(self._keepalive(), name=f"hftdb-listen-{self.table}-keepalive")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s listener task failed", self.table, exc_info=task.exception())

    async def close(self) -> None:
        """Stop listening and close the connection; a pending ``async for`` ends. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._wakeup.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except (*_LISTEN_ERRORS, asyncio.TimeoutError):
                conn.terminate()
        if self._on_close is not None:
            self._on_close(self)

    # -- connection ------------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._lost = False

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if conn is not self._conn:
            return
        if len(self._pending) >= self._max_pending:
            # The consumer is far behind: drop the backlog, one catch-up re-read stands for all of it (and for
            # any gap marker in it). The gap is dated from its oldest item, not from now: a batch dropped with
            # the backlog committed before its notification arrived, perhaps long ago, and the catch-up's ledger
            # lookup must reach back to it (a late batch's rows are older than since).
            oldest = self._pending[0]  # the queue is in arrival order; a gap marker holds the earliest date
            earliest = oldest.noticed_at if isinstance(oldest, _Gap) else oldest[0]
            self._pending.clear()
            self.overflows += 1
            self._mark_gap(earliest)
            logger.warning("%s subscription overflowed %d notifications; the consumer gets a catch-up",
                           self.table, self._max_pending)
        else:
            self._pending.append((time.monotonic(), payload))
        self._wakeup.set()

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._conn and self._state == "open":
            self._lose("the server closed the connection")

    def _lose(self, why: str) -> None:
        if self._lost:
            return
        logger.warning("%s listener lost (%s); reconnecting", self.table, why)
        self._lost = True
        self._mark_gap()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
        self._wakeup.set()

    def _mark_gap(self, noticed_at: float | None = None) -> None:
        # Re-read from the newest max_ts consumed so far; the ledger lookup (_gap_since) lowers it to the oldest
        # receipt time of the batches committed since noticed_at, a late batch's among them.
        since = self._last_max_ts if self._last_max_ts is not None else now_us()
        self._pending.append(_Gap(time.monotonic() if noticed_at is None else noticed_at, since))

    async def _keepalive(self) -> None:
        interval = self._settings.listen_keepalive_s
        while True:
            await asyncio.sleep(interval)
            conn = self._conn
            if conn is None or self._lost:
                continue
            try:
                async with self._query_lock:
                    await conn.fetchval("SELECT 1", timeout=interval)
            except _LISTEN_ERRORS as exc:
                if conn is self._conn:
                    self._lose(f"keep-alive failed: {type(exc).__name__}: {redact_dsn(str(exc))}")

    async def _reconnect(self) -> None:
        delay = 0.05
        cap = self._settings.listen_retry_max_s
        attempts = 0
        while self._state == "open":
            try:
                await self._connect()
            except _LISTEN_ERRORS as exc:
                attempts += 1
                log = logger.warning if attempts % 20 == 1 else logger.debug
                log("%s listener reconnect failed (%s: %s); retrying in %.0f ms", self.table, type(exc).__name__,
                    redact_dsn(str(exc)), delay * 1000)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, cap)
                continue
            self.reconnects += 1
            logger.info("%s listener reconnected after %d failed attempt(s)", self.table, attempts)
            return

    # -- iteration -------------------------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Notification:
        if self._state == "new":
            raise StateError("use 'async with db.notifications(...) as feed' before iterating")
        while True:
            if self._state == "closed":
                raise StopAsyncIteration
            if self._lost and (not self._pending or isinstance(self._pending[0], _Gap)):
                # Only the catch-up needs the connection back: what arrived before the gap is handed out first,
                # also while the primary is down.
                await self._reconnect()
                continue
            if self._pending:
                item = self._pending.popleft()
                if isinstance(item, _Gap):
                    # The LISTEN is back (or the backlog was dropped): every later commit is notified again, and
                    # a re-read from since_ts covers what the gap hid.
                    self.delivered += 1
                    return Notification(table=self.table, rows=-1, max_ts=None, catch_up=True,
                                        since_ts=await self._gap_since(item))
                note = self._parse(item[1])
                if note is None:
                    continue
                if note.max_ts is not None and (self._last_max_ts is None or note.max_ts > self._last_max_ts):
                    self._last_max_ts = note.max_ts
                note = await self._filter.apply(note)
                if note is None:
                    continue
                self.delivered += 1
                return note
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _gap_since(self, gap: _Gap) -> int:
        since = min(gap.since, self._last_max_ts) if self._last_max_ts is not None else gap.since
        conn = self._conn
        if conn is None:
            return since
        lookback = time.monotonic() - gap.noticed_at + 2 * self._settings.listen_keepalive_s + _GAP_SLACK_S
        try:
            async with self._query_lock:
                oldest = await conn.fetchval(_GAP_OLDEST, self.table, lookback, timeout=self._connect_timeout)
        except _LISTEN_ERRORS as exc:
            # The ledger only sharpens the catch-up; without it the consumer still re-reads from since.
            logger.warning("%s catch-up: ledger lookup failed (%s: %s); re-reading from the last max_ts",
                           self.table, type(exc).__name__, redact_dsn(str(exc)))
            return since
        return since if oldest is None else min(since, oldest)

    def _parse(self, payload: str) -> Notification | None:
        try:
            p = _decode(payload)
        except msgspec.DecodeError:
            logger.warning("%s: unreadable notification payload %r", self.table, payload[:200])
            return None
        return Notification(table=p.table, rows=p.rows, max_ts=p.max_ts,
                            ids=tuple(p.ids) if p.ids is not None else None, id_range=p.id_range)


_LOAD_ERRORS: tuple[type[BaseException], ...] = (HftdbError, *_LISTEN_ERRORS)


class LatestMirror:
    """The latest book tickers or funding rates of a filter, held in memory and kept current by notifications.

    >>> async with db.latest_mirror("book_tickers", exchange="binance_usdm") as mirror:
    ...     quotes = mirror.snapshot()          # no I/O: the current record of every symbol
    ...     btc = mirror.get(symbol_id)

    It LISTENs first, then loads the latest table, so no commit falls between the two; then, for each commit
    notification, it re-reads from the primary the rows the batch touched (the whole filter after a catch-up or
    for an id range). A commit shows here one notification plus one small read after it commits. If a re-read
    fails (the primary restarting), it retries with backoff and then reloads the whole filter. Obtain it from
    ``DatabaseManager.latest_mirror()``.
    """

    def __init__(
        self,
        subscription: Subscription,
        load: Callable[[tuple[int, ...] | None], Awaitable[list[Any]]],
        *,
        retry_max_s: float = 5.0,
    ) -> None:
        self._sub = subscription
        self._load = load
        self._retry_max_s = retry_max_s
        self._rows: dict[int, Any] = {}
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._state = "new"
        self.version = 0
        self.reloads = 0

    def __repr__(self) -> str:
        return f"LatestMirror({self._sub.table!r}, rows={len(self._rows)}, version={self.version}, {self._state})"

    async def __aenter__(self) -> LatestMirror:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen, load the current rows, and follow the commits."""
        if self._state != "new":
            raise ClosedError("a LatestMirror starts once")
        await self._sub.start()
        try:
            await self._apply(await self._load(None), full=True)
        except BaseException:
            await self._sub.close()
            raise
        self._state = "open"
        task = asyncio.create_task(self._follow(), name=f"hftdb-mirror-{self._sub.table}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s mirror stopped following commits", self._sub.table, exc_info=task.exception())

    async def close(self) -> None:
        """Stop following commits (the last records stay readable). Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._sub.close()

    def snapshot(self) -> list[Any]:
        """Every current record, in no particular order. No I/O."""
        return list(self._rows.values())

    def get(self, symbol_id: int) -> Any | None:
        """The current record of one symbol id, or None. No I/O."""
        return self._rows.get(symbol_id)

    async def changed(self, *, timeout: float | None = None) -> int:
        """Wait for the next applied update; return the new :attr:`version`."""
        async with self._changed:
            seen = self.version
            await asyncio.wait_for(self._changed.wait_for(lambda: self.version > seen), timeout)
            return self.version

    async def _follow(self) -> None:
        async for note in self._sub:
            ids = None if note.catch_up or note.ids is None else note.ids
            delay = 0.05
            while True:
                try:
                    rows = await self._load(ids)
                except _LOAD_ERRORS as exc:
                    logger.warning("%s mirror: re-read failed (%s: %s); full reload in %.0f ms", self._sub.table,
                                   type(exc).__name__, redact_dsn(str(exc)), delay * 1000)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, self._retry_max_s)
                    ids = None  # notifications went on meanwhile: only a full reload is sure to cover them
                    continue
                await self._apply(rows, full=ids is None)
                break

    async def _apply(self, rows: list[Any], *, full: bool) -> None:
        if full:
            self._rows = {r.symbol_id: r for r in rows}
            self.reloads += 1
        else:
            for r in rows:
                self._rows[r.symbol_id] = r
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

"""Runs an adapter's streams: topics split into connections (*shards*), each kept alive by a supervisor.

* **Shards**: :meth:`ExchangeAdapter.plan_connections` splits the topics within the venue's per-connection
  limits; each shard has one live :class:`~hftdb.exchanges.session.Session` at a time.
* **Reconnect**: a lost, refused or stale connection is replaced after exponential back-off with jitter; the
  attempt count restarts once a connection delivers data. A refused upgrade's ``Retry-After`` (HTTP 429, 418,
  503...) is honoured: the next attempt waits at least that long, since retrying into a rate limit or a ban
  only prolongs it.
* **Handover** (make before break): before the venue's age limit (Binance ends connections at 24 h), when the
  venue announces a shutdown, or when the parser lost a book and needs a fresh snapshot, a successor is
  connected and subscribed while the old connection still streams; its rows are held until the old connection
  is closed and drained, then released. Each stream's frames are processed in order, so dropping rows whose
  update id (or exchange time) was already stored makes the overlap exact: nothing lost, nothing twice. The
  released rows reach the sink before any later row of the successor (and before its close returns).
* **Listing changes**: :meth:`StreamRunner.update` (called by the adapter's symbol sync) unsubscribes the
  topics no longer wanted on the connections carrying them, subscribes new ones on connections with room left
  (within the per-connection and per-message limits), and opens new connections for the rest. A connection
  left with no topic is closed, unless it is the last one. A change the venue does not acknowledge ends the
  connection with a handover, whose successor subscribes the shard's current topics.
* **Admission and the sink**: rows already stored by any connection are dropped (:meth:`StreamRunner.admit`,
  inlined on the hot path by :class:`~hftdb.exchanges.intake.Intake`), the rest go to the sink in one call
  per table per batch, retried a few times if the sink fails.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from ..errors import ExchangeError, StateError
from ..models import BookTicker, FeedRows, FundingRate
from ..tablespec import TABLES
from ..wire.books import BookTuples, PackedBooks
from .connection import ConnectionLost, Pacer, WsConnection
from .parsing import newer_funding
from .session import Session
from .sink import PackedSink

if TYPE_CHECKING:
    from .stream import StreamAdapter

__all__ = ["StreamRunner"]

logger = logging.getLogger(__name__)

# Per table: the FeedRows field, the sink's method that takes it, the FeedStats counter of the rows handed over.
_TABLES = tuple((t.name, t.insert, t.feed_rows) for t in TABLES)


class _Shard:
    """The topics one connection carries (changed by :meth:`StreamRunner.update`), its live session and the
    task supervising it. ``lock`` serializes opening, handing over and closing with subscription changes."""

    def __init__(self, index: int, topics: tuple[str, ...]) -> None:
        self.index = index
        self.topics = list(topics)
        self.session: Session | None = None
        self.lock = asyncio.Lock()
        self.task: asyncio.Task | None = None
        self.topics_added = asyncio.Event()  # wakes a shard left without topics (all refused, none trading)

    def __repr__(self) -> str:
        return f"<_Shard {self.index} topics={len(self.topics)}>"


class StreamRunner:
    """Runs an adapter's streams: one supervised shard per connection the topics need."""

    def __init__(self, adapter: StreamAdapter) -> None:
        self.adapter = adapter
        self.drop_unsequenced = adapter.drops_unsequenced_books
        # Asked once: an isinstance against a runtime Protocol tests every member (microseconds, too dear per push).
        self._packed_sink = isinstance(adapter.sink, PackedSink)
        self.next_id = itertools.count(1).__next__
        self.book_ids: dict[str, int] = {}
        self._book_times: dict[str, int] = {}
        self._funding_times: dict[str, int] = {}
        self._pushes: set[asyncio.Task] = set()
        self._connect_pacer = Pacer(adapter.connect_interval)
        self._shard_names = itertools.count(1)
        self._shards: list[_Shard] = []
        self._shard_index = itertools.count()
        self._tg: asyncio.TaskGroup | None = None
        self._update_lock = asyncio.Lock()
        self._retry_after: dict[int, float] = {}  # shard index -> seconds a refused handover asked to wait

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is streaming (so that :meth:`update` can change the topics)."""
        return self._tg is not None

    @property
    def topics(self) -> list[str]:
        """The topics currently streamed (or being subscribed), shard by shard."""
        return [t for shard in self._shards for t in shard.topics]

    async def run(self) -> None:
        """Stream every topic of the adapter until cancelled (see the module docstring for how)."""
        adapter = self.adapter
        shards = adapter.plan_connections(adapter.topics())
        if not shards:
            # Every symbol halted, delisted or refused: one shard waits for a symbol sync to give it topics.
            logger.warning("%s: nothing to stream until a symbol sync finds a symbol trading", adapter.venue.value)
            shards = [()]
        logger.info("%s: streaming %d topics over %d connection(s)", adapter.venue.value, sum(map(len, shards)), len(shards))
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for topics in shards:
                    self._start_shard(topics)
        except BaseExceptionGroup as group:
            # A shard gives up only with an ExchangeError; callers expect that error, not a group of them.
            first = next((e for e in group.exceptions if isinstance(e, ExchangeError)), None)
            if first is None:
                raise
            raise first from None
        finally:
            self._tg = None
            # Shielded: rows already admitted must reach the sink even if we are cancelled again, or they leave a
            # hole that no later message fills. The tasks stay owned by self._pushes meanwhile.
            if self._pushes:
                await asyncio.shield(asyncio.gather(*self._pushes, return_exceptions=True))

    def _start_shard(self, topics: tuple[str, ...]) -> _Shard:
        assert self._tg is not None
        shard = _Shard(next(self._shard_index), topics)
        self._shards.append(shard)
        name = f"{self.adapter.venue.value}-shard-{shard.index}"
        shard.task = self._tg.create_task(self._run_shard(shard), name=name)
        return shard

    async def update(self, topics: Sequence[str]) -> tuple[int, int]:
        """Stream exactly ``topics`` from now on: unsubscribe the ones no longer wanted, subscribe the new ones on
        connections with room left, open connections for the rest. Returns (added, removed). A change the venue
        does not acknowledge is logged and repaired by handing the connection over (see the module docstring)."""
        if not self.running:
            raise StateError(f"{self.adapter.venue.value}: the streams are not running")
        async with self._update_lock:
            wanted = list(dict.fromkeys(topics))
            keep = set(wanted)
            removed = 0
            for shard in list(self._shards):
                gone = [t for t in shard.topics if t not in keep]
                if not gone:
                    continue
                removed += len(gone)
                if len(gone) == len(shard.topics) and len(self._shards) > 1:
                    await self._stop_shard(shard)
                else:
                    await self._change(shard, gone, subscribe=False)
            current = set(self.topics)
            new = [t for t in wanted if t not in current]
            added = len(new)
            for shard in list(self._shards):
                if not new:
                    break
                take = self._fill(shard.topics, new)
                if take:
                    new = new[len(take):]
                    await self._change(shard, take, subscribe=True)
            for shard_topics in self.adapter.plan_connections(new):
                self._start_shard(shard_topics)
            if added or removed:
                logger.info("%s: %d topics added, %d removed; %d topics over %d connection(s)",
                            self.adapter.venue.value, added, removed, len(self.topics), len(self._shards))
            return added, removed

    def _fill(self, have: list[str], new: list[str]) -> list[str]:
        """The first of ``new`` that still fit on a connection carrying ``have``."""
        adapter = self.adapter
        limit_chars = adapter.max_topic_chars_per_connection
        room = adapter.topics_per_connection - len(have)
        chars = sum(map(len, have))
        take: list[str] = []
        for topic in new:
            if len(take) >= room or (limit_chars is not None and chars + len(topic) > limit_chars):
                break
            take.append(topic)
            chars += len(topic)
        return take

    async def _change(self, shard: _Shard, topics: list[str], *, subscribe: bool) -> None:
        async with shard.lock:
            if subscribe:
                shard.topics.extend(topics)
                shard.topics_added.set()
            else:
                gone = set(topics)
                shard.topics = [t for t in shard.topics if t not in gone]
            session = shard.session
            if session is None or session.ended.is_set():
                return  # the shard's next connection subscribes its topics as they are now
            try:
                await session.change(topics, subscribe=subscribe)
            except ConnectionLost as exc:
                if subscribe and exc.refusal is not None:
                    self._drop_refused(shard, exc.refusal)  # the successor subscribes the others only
                logger.warning("%s; handing the connection over to resubscribe", exc)
                session.end("resubscribe")
                return
        logger.info("%s: %s %d topics", session.conn.name, "subscribed" if subscribe else "unsubscribed", len(topics))

    def _drop_refused(self, shard: _Shard, refusal: str) -> bool:
        """Take the topics a refusal names off ``shard`` (the adapter logs and remembers them); whether it named
        any. A venue refuses a symbol it no longer lists as trading on every attempt: reconnecting with it only
        keeps the shard's other topics from streaming."""
        refused = self.adapter.refused_topics(refusal, shard.topics)
        if not refused:
            return False
        gone = set(refused)
        shard.topics = [t for t in shard.topics if t not in gone]
        self.adapter.refuse(refused, refusal)
        return True

    async def _stop_shard(self, shard: _Shard) -> None:
        # Its task closes the connection gracefully when cancelled: what was sent before is still stored.
        self._shards.remove(shard)
        async with shard.lock:
            shard.topics = []
            if shard.task is not None:
                shard.task.cancel()
        if shard.task is not None:
            await asyncio.gather(shard.task, return_exceptions=True)

    async def _open(self, index: int, topics: tuple[str, ...], *, hold: bool) -> Session:
        adapter = self.adapter
        await self._connect_pacer.wait()
        name = f"{adapter.venue.value}#{index}.{next(self._shard_names)}"
        conn = await WsConnection.open(adapter.ws_endpoint(), timeout=adapter.timeout, name=name)
        session = Session(self, conn, topics, hold=hold)
        session.start()
        adapter.stats.connections += 1
        try:
            await session.subscribe(self.next_id)
        except BaseException:
            adapter.stats.connections -= 1
            await session.close(graceful=False)
            raise
        logger.info("%s: subscribed %d topics", name, len(topics))
        adapter.notify()
        return session

    async def _close(self, session: Session, *, graceful: bool) -> None:
        await session.close(graceful=graceful)
        self.adapter.stats.connections -= 1
        self.adapter.notify()

    async def _run_shard(self, shard: _Shard) -> None:
        adapter = self.adapter
        stats = adapter.stats
        venue = adapter.venue.value
        index = shard.index
        failures = 0
        session: Session | None = None
        try:
            while True:
                if session is None:
                    while not shard.topics:  # nothing to subscribe: wait for update() to bring topics
                        shard.topics_added.clear()
                        await shard.topics_added.wait()
                    retry_after = self._retry_after.pop(index, None)
                    if retry_after is not None:  # a handover's successor was refused
                        await asyncio.sleep(retry_after)
                    try:
                        async with shard.lock:
                            session = shard.session = await self._open(index, tuple(shard.topics), hold=False)
                    except ConnectionLost as exc:
                        if exc.refusal is not None:
                            async with shard.lock:
                                dropped = self._drop_refused(shard, exc.refusal)
                            if dropped:
                                continue  # the others subscribe at once: retrying cannot fix the refused ones
                        failures += 1
                        if adapter.max_reconnect_attempts is not None and failures > adapter.max_reconnect_attempts:
                            raise ExchangeError(f"{venue}: giving up after {failures} failed connection attempts") from exc
                        delay = adapter.reconnect.delay(failures - 1)
                        if exc.retry_after is not None and exc.retry_after > delay:
                            delay = exc.retry_after
                            stats.retry_after_waits += 1
                            logger.warning("%s: %s; retrying in %.2fs, as Retry-After asks", venue, exc, delay)
                        else:
                            logger.warning("%s: %s; retrying in %.2fs", venue, exc, delay)
                        adapter.notify()
                        await asyncio.sleep(delay)
                        continue
                await session.ended.wait()
                if session.got_data:
                    failures = 0
                if session.reason in ("rollover", "reconnect", "resync", "resubscribe"):
                    if session.reason == "resync":
                        stats.resyncs += 1
                    async with shard.lock:
                        session = shard.session = await self._handover(index, tuple(shard.topics), session)
                    continue
                stats.reconnects += 1
                failures += 1
                logger.warning("%s: connection %s ended: %s; reconnecting", venue, session.conn.name, session.reason)
                async with shard.lock:
                    shard.session = None
                    await self._close(session, graceful=False)
                session = None
                await asyncio.sleep(adapter.reconnect.delay(failures - 1))
        finally:
            shard.session = None
            if session is not None:
                # Graceful even when cancelled: what the server sent before its close frame is still stored.
                await self._close(session, graceful=True)

    async def _handover(self, index: int, topics: tuple[str, ...], old: Session) -> Session | None:
        """Connect a successor, close ``old`` once the successor is subscribed, then let the successor stream."""
        adapter = self.adapter
        try:
            new = await self._open(index, topics, hold=True)
        except ConnectionLost as exc:
            # Keep nothing half-done: fall back to an ordinary reconnect.
            logger.warning("%s: handover failed (%s); reconnecting", adapter.venue.value, exc)
            adapter.stats.reconnects += 1
            if exc.retry_after is not None:
                adapter.stats.retry_after_waits += 1
                self._retry_after[index] = exc.retry_after
            await self._close(old, graceful=False)
            return None
        try:
            await self._close(old, graceful=True)
        finally:
            new.release()
        adapter.stats.rollovers += 1
        logger.info("%s: handed %s over to %s", adapter.venue.value, old.conn.name, new.conn.name)
        adapter.notify()
        return new

    # -- shared row admission --------------------------------------------------------------------------

    def restart_if_lower(self, symbol: str, update_id: int) -> None:
        """A snapshot on a live connection below the last stored id means the venue restarted its ids."""
        last = self.book_ids.get(symbol)
        if last is not None and update_id < last:
            logger.warning("%s %s: update ids restarted (%d after %d)", self.adapter.venue.value, symbol, update_id, last)
            self.book_ids[symbol] = update_id - 1

    def admit(self, books: list[BookTicker], funding: list[FundingRate]) -> tuple[list[BookTicker], list[FundingRate]]:
        """Drop rows already stored (same or older update id, else exchange time, per symbol)."""
        stats = self.adapter.stats
        out_books = books
        if books:
            ids, times = self.book_ids, self._book_times
            out_books = []
            for row in books:
                if row.update_id is not None:
                    key, last = row.update_id, ids
                elif row.exchange_ts is not None:
                    key, last = row.exchange_ts, times
                else:
                    out_books.append(row)
                    continue
                prev = last.get(row.symbol)
                if prev is not None and key <= prev:
                    stats.duplicates += 1
                    continue
                last[row.symbol] = key
                out_books.append(row)
        out_funding = newer_funding(funding, self._funding_times, stats) if funding else funding
        return out_books, out_funding

    async def push(self, batch: FeedRows) -> None:
        """Hand one batch of admitted rows to the sink, a call per table (the method :mod:`hftdb.tablespec`
        names), retrying a failing sink a few times before giving up on that table's rows (counted in
        ``sink_errors`` and ``dropped_rows``, and logged)."""
        adapter = self.adapter
        stats = adapter.stats
        sink = adapter.sink
        for table, method, counter in _TABLES:
            rows = getattr(batch, table)
            if not rows:
                continue
            # COPY tuples packed by the intake (BookTuples: the file replay's, without records)
            if (type(rows) is PackedBooks or type(rows) is BookTuples) and self._packed_sink:
                insert = cast(PackedSink, sink).insert_packed_book_tickers
            else:
                insert = getattr(sink, method)
            for attempt in range(4):
                try:
                    await insert(rows)
                except Exception as exc:  # the sink's own errors: the feed must outlive them
                    stats.sink_errors += 1
                    if attempt == 3:
                        stats.dropped_rows += len(rows)
                        logger.error("%s: sink refused %d rows, dropped: %s", adapter.venue.value, len(rows), exc)
                        break
                    delay = adapter.reconnect.delay(attempt)
                    logger.warning("%s: sink failed (%s); retrying in %.2fs", adapter.venue.value, exc, delay)
                    await asyncio.sleep(delay)
                else:
                    setattr(stats, counter, getattr(stats, counter) + len(rows))
                    break

    def spawn_push(self, batches: list[FeedRows]) -> asyncio.Task | None:
        """Push ``batches`` one after the other without waiting (for held rows released from synchronous code).
        The task is owned here (awaited when the streams stop); it is returned so that whoever pushes later rows
        can wait for it first: two pushes in flight at once may reach the sink in either order."""
        batches = [b for b in batches if b.has_rows()]
        if not batches:
            return None
        task = asyncio.create_task(self._push_in_order(batches))
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)
        return task

    async def _push_in_order(self, batches: list[FeedRows]) -> None:
        for batch in batches:
            await self.push(batch)

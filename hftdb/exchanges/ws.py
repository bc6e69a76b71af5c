"""Websocket streaming for every venue: picows connections, subscriptions, keep-alive, reconnects, handover.

picows was chosen by measurement (``benchmarks/ws_client_choice.py``): on loopback it receives about eight
times as many messages per second as ``websockets``. Its callbacks run in the event loop as each frame is
read; :class:`WsConnection` copies the payload with its receive time into a queue and pauses reading when the
queue is long, so a slow sink pushes back on the exchange through TCP instead of growing memory.

:class:`StreamRunner` splits an adapter's topics into connections (*shards*) and keeps each one alive:

* **Subscribe**: paced requests within the venue's per-message limits; the connection counts once every
  request is acknowledged.
* **Keep-alive**: the venue's ping (interval or when idle); protocol pings are answered at once. A connection
  with no frame at all for ``stale_after`` seconds is *stale* and replaced.
* **Reconnect**: a lost, refused or stale connection is replaced after exponential back-off with jitter;
  the attempt count restarts once a connection delivers data.
* **Handover** (make before break): before the venue's age limit (Binance ends connections at 24 h), when the
  venue announces a shutdown, or when the parser lost a book and needs a fresh snapshot, a successor is connected and subscribed while the old connection still
  streams; its rows are held until the old connection is closed and drained, then released. Each stream's
  frames are processed in order, so dropping rows whose update id (or exchange time) was already stored
  makes the overlap exact: nothing lost, nothing twice.
* **Listing changes**: :meth:`StreamRunner.update` (called by the adapter's symbol sync) unsubscribes the
  topics no longer wanted on the connections carrying them, subscribes new ones on connections with room left
  (within the per-connection and per-message limits), and opens new connections for the rest. A connection
  left with no topic is closed, unless it is the last one. A change the venue does not acknowledge ends the
  connection with a handover, whose successor subscribes the shard's current topics.
* **Sequence**: within one connection, an update id that jumps is a gap (counted, where the venue's ids are
  consecutive) and one that repeats or goes back is a duplicate (dropped). A snapshot may restart ids (Bybit
  sends ``u=1`` after a service restart): on a live connection it resets the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from picows import WSCloseCode, WSError, WSListener, WSMsgType, ws_connect

from ..errors import ExchangeError, FrameError, StateError
from ..models import Balance, BookTicker, FundingRate, now_us
from .parsing import (
    CONTROL_ERROR,
    CONTROL_PONG,
    CONTROL_RECONNECT,
    CONTROL_SNAPSHOT,
    CONTROL_SUBSCRIBED,
    CONTROL_UNSUBSCRIBED,
)

if TYPE_CHECKING:
    from .base import ExchangeAdapter

__all__ = ["WsConnection", "StreamRunner", "ConnectionLost"]

logger = logging.getLogger(__name__)

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_PING = WSMsgType.PING
_CLOSE = WSMsgType.CLOSE


class ConnectionLost(ExchangeError):
    """A stream connection could not be opened or subscribed, or ended."""


class _Listener(WSListener):
    def __init__(self, conn: WsConnection) -> None:
        super().__init__()
        self.conn = conn

    def on_ws_frame(self, transport, frame) -> None:  # noqa: ANN001 (picows types)
        conn = self.conn
        conn.last_frame_at = time.monotonic()
        kind = frame.msg_type
        if kind == _TEXT or kind == _BINARY:
            conn.push(frame.get_payload_as_bytes())
        elif kind == _PING:
            # Answered here rather than by picows so that a ping counts as a sign of life.
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind == _CLOSE:
            conn.close_code = frame.get_close_code()
            conn.close_reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:  # noqa: ANN001
        self.conn.on_disconnected()


class WsConnection:
    """One client websocket: frames go into a queue with their receive time (µs); reading pauses past
    ``max_pending`` queued frames and resumes below half of it."""

    def __init__(self, name: str, *, max_pending: int = 20_000) -> None:
        self.name = name
        self.max_pending = max_pending
        self.last_frame_at = time.monotonic()
        self.close_code: Any = None
        self.close_reason = ""
        self._transport: Any = None
        self._frames: deque[tuple[bytes, int]] = deque()
        self._ready = asyncio.Event()
        self._disconnected = False
        self._paused = False

    def __repr__(self) -> str:
        state = "closed" if self._disconnected else "open"
        return f"<WsConnection {self.name} {state} pending={len(self._frames)}>"

    @classmethod
    async def open(cls, url: str, *, timeout: float, name: str, max_pending: int = 20_000) -> WsConnection:
        """Connect to ``url``; raise :class:`ConnectionLost` if that fails within ``timeout`` seconds."""
        conn = cls(name, max_pending=max_pending)
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await ws_connect(
                    lambda: _Listener(conn),
                    url,
                    websocket_handshake_timeout=timeout,
                    enable_auto_pong=False,
                    max_frame_size=16 << 20,
                    logger_name="hftdb.exchanges.ws",  # one logger for all: names per connection would pile up
                )
        except (OSError, TimeoutError, WSError) as exc:
            raise ConnectionLost(f"{name}: cannot connect to {url}: {type(exc).__name__}: {exc}") from exc
        conn._transport = transport
        conn.last_frame_at = time.monotonic()
        return conn

    @property
    def disconnected(self) -> bool:
        """True once the TCP connection is gone (frames may still be queued)."""
        return self._disconnected

    def push(self, payload: bytes) -> None:
        """Queue one received payload with its receive time (called by the listener)."""
        self._frames.append((payload, now_us()))
        self._ready.set()
        if not self._paused and len(self._frames) >= self.max_pending and self._transport is not None:
            self._paused = True
            self._transport.underlying_transport.pause_reading()

    def on_disconnected(self) -> None:
        """The TCP connection is gone (called by the listener)."""
        self._disconnected = True
        self._ready.set()

    async def next_batch(self, limit: int = 4096) -> list[tuple[bytes, int]] | None:
        """The frames received so far (at most ``limit``), waiting for one; None once disconnected and drained."""
        frames = self._frames
        while not frames:
            if self._disconnected:
                return None
            self._ready.clear()
            await self._ready.wait()
        if len(frames) <= limit:
            batch = list(frames)
            frames.clear()
        else:
            batch = [frames.popleft() for _ in range(limit)]
        if self._paused and len(frames) <= self.max_pending // 2 and not self._disconnected:
            self._paused = False
            self._transport.underlying_transport.resume_reading()
        return batch

    def send_text(self, text: str) -> None:
        """Send one text frame (does nothing once disconnected)."""
        if not self._disconnected and self._transport is not None:
            self._transport.send(_TEXT, text.encode())

    async def close(self, *, timeout: float = 5.0) -> None:
        """Close gracefully: send a close frame and read on until the server answers, so that every frame it
        sent before its close frame is received. Disconnects hard after ``timeout`` seconds."""
        transport = self._transport
        if transport is None or self._disconnected:
            return
        transport.send_close(WSCloseCode.OK)
        if self._paused:
            self._paused = False
            transport.underlying_transport.resume_reading()
        try:
            async with asyncio.timeout(timeout):
                await transport.wait_disconnected()
        except TimeoutError:
            transport.disconnect(graceful=False)
        except WSError as exc:
            logger.debug("%s: %s while closing", self.name, exc)

    def abort(self) -> None:
        """Drop the connection at once."""
        if self._transport is not None:
            self._transport.disconnect(graceful=False)
        self._disconnected = True
        self._ready.set()


class _Pacer:
    """At most one message every ``interval`` seconds (Binance cuts a connection sending more than 5 a second)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0

    async def wait(self) -> None:
        if self.interval <= 0:
            return
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
            now = time.monotonic()
        self._next = max(now, self._next) + self.interval


class _Session:
    """One subscribed connection of a shard and its two tasks: the consumer and the watchdog."""

    def __init__(self, runner: StreamRunner, conn: WsConnection, topics: tuple[str, ...], *, hold: bool) -> None:
        adapter = runner.adapter
        self.runner = runner
        self.conn = conn
        self.topics = topics
        self.parser = adapter.new_parser()
        self.seq: dict[str, int] = {}
        self.expected_acks = 0
        self.acks = 0
        self.subscribe_error: str | None = None
        self.subscribed = asyncio.Event()
        self.holding = hold
        self.held: list[tuple[list[BookTicker], list[FundingRate], list[Balance]]] = []
        self.ended = asyncio.Event()
        self.reason = ""
        self.closing = False
        self.got_data = False
        self.opened_clock = adapter.clock()
        self.pacer = _Pacer(adapter.control_interval)
        self.tasks: list[asyncio.Task] = []

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()
            self.subscribed.set()  # wake a subscribe still waiting

    def start(self) -> None:
        name = self.conn.name
        self.tasks = [
            asyncio.create_task(self._consume(), name=f"{name}-consume"),
            asyncio.create_task(self._watch(), name=f"{name}-watch"),
        ]

    async def subscribe(self, next_id) -> None:  # noqa: ANN001
        adapter = self.runner.adapter
        messages = adapter.subscribe_messages(self.topics, next_id)
        self.expected_acks = sum(acks for _, acks in messages)
        if self.expected_acks == 0:
            self.subscribed.set()
        for text, _ in messages:
            await self.pacer.wait()
            self.conn.send_text(text)
        try:
            async with asyncio.timeout(adapter.subscribe_timeout):
                await self.subscribed.wait()
        except TimeoutError:
            raise ConnectionLost(f"{self.conn.name}: {self.acks}/{self.expected_acks} subscriptions acknowledged "
                                 f"after {adapter.subscribe_timeout}s") from None
        if self.subscribe_error is not None:
            raise ConnectionLost(f"{self.conn.name}: subscription refused: {self.subscribe_error}")
        if self.ended.is_set():
            raise ConnectionLost(f"{self.conn.name}: ended while subscribing ({self.reason})")

    async def change(self, topics: list[str], *, subscribe: bool) -> None:
        """Subscribe (or unsubscribe) ``topics`` on this live connection and wait for every acknowledgement;
        raise :class:`ConnectionLost` if the venue refuses, does not answer in time, or the connection ends."""
        adapter = self.runner.adapter
        make = adapter.subscribe_messages if subscribe else adapter.unsubscribe_messages
        messages = make(topics, self.runner.next_id)
        # Counted afresh: every earlier request was acknowledged (or the connection was handed over). A refusal
        # sets subscribe_error while the event is clear. (Binance answers its keep-alive query with an id too, so
        # one arriving now may count as an acknowledgement: at worst this returns a little early.)
        self.subscribed.clear()
        self.subscribe_error = None
        self.acks = 0
        self.expected_acks = sum(acks for _, acks in messages)
        if self.expected_acks == 0:
            self.subscribed.set()
        for text, _ in messages:
            await self.pacer.wait()
            self.conn.send_text(text)
        action = "subscribe" if subscribe else "unsubscribe"
        try:
            async with asyncio.timeout(adapter.subscribe_timeout):
                await self.subscribed.wait()
        except TimeoutError:
            raise ConnectionLost(f"{self.conn.name}: {action} of {len(topics)} topics not acknowledged "
                                 f"after {adapter.subscribe_timeout}s") from None
        finally:
            self.subscribed.set()  # so that a later error is logged, not taken for a refusal
        if self.subscribe_error is not None:
            error, self.subscribe_error = self.subscribe_error, None
            raise ConnectionLost(f"{self.conn.name}: {action} refused: {error}")
        if self.ended.is_set():
            raise ConnectionLost(f"{self.conn.name}: ended during {action} ({self.reason})")

    async def _consume(self) -> None:
        runner = self.runner
        conn = self.conn
        try:
            while True:
                batch = await conn.next_batch()
                if batch is None:
                    code = conn.close_code
                    self.end(f"closed by the server ({code}: {conn.close_reason})" if code is not None else "connection lost")
                    return
                books, funding, balances = self._process(batch)
                if self.holding:
                    if books or funding or balances:
                        self.held.append((books, funding, balances))
                else:
                    books, funding = runner.admit(books, funding)
                    await runner.push(books, funding, balances)
                runner.adapter.notify()
        except Exception as exc:  # a bug must end the connection loudly, not kill the feed
            logger.exception("%s: consumer failed", conn.name)
            self.end(f"consumer failed: {type(exc).__name__}: {exc}")

    def _process(self, batch: list[tuple[bytes, int]]) -> tuple[list[BookTicker], list[FundingRate], list[Balance]]:
        runner = self.runner
        adapter = runner.adapter
        stats = adapter.stats
        rejects = adapter.rejects
        parse = self.parser.parse
        books: list[BookTicker] = []
        funding: list[FundingRate] = []
        balances: list[Balance] = []
        for payload, recv_ts in batch:
            try:
                parsed = parse(payload, recv_ts)
            except FrameError as exc:
                rejects.add_error(exc)
                if exc.reason == "no_snapshot" and not self.ended.is_set():
                    # The parser lost a book (a corrupt frame): only a fresh subscription's snapshot restores it.
                    self.end("resync")
                continue
            except Exception as exc:  # a parser bug rejects the frame, never the feed
                rejects.add("parser_error", f"{type(exc).__name__}: {exc}")
                continue
            control = parsed.control
            if control is not None and control != CONTROL_SNAPSHOT:
                self._control(control, parsed.detail)
            if parsed.book_tickers:
                self._sequence(parsed.book_tickers, control == CONTROL_SNAPSHOT, books)
            if parsed.funding_rates:
                funding.extend(parsed.funding_rates)
            if parsed.balances:
                balances.extend(parsed.balances)
        stats.messages += len(batch)
        stats.last_message_us = batch[-1][1]
        if books or funding:
            self.got_data = True
        return books, funding, balances

    def _sequence(self, rows: list[BookTicker], snapshot: bool, out: list[BookTicker]) -> None:
        runner = self.runner
        stats = runner.adapter.stats
        seq = self.seq
        count_gaps = runner.adapter.count_gaps
        for row in rows:
            u = row.update_id
            if u is None:
                if not runner.drop_unsequenced:
                    out.append(row)
                continue
            symbol = row.symbol
            prev = seq.get(symbol)
            if snapshot or prev is None:
                if snapshot and not self.holding:
                    runner.restart_if_lower(symbol, u)
            elif u <= prev:
                stats.duplicates += 1
                continue
            elif count_gaps and u > prev + 1:
                stats.gaps += 1
                stats.missed_ids += u - prev - 1
            seq[symbol] = u
            out.append(row)

    def _control(self, control: str, detail: str | None) -> None:
        adapter = self.runner.adapter
        if control == CONTROL_PONG:
            return
        if control == CONTROL_SUBSCRIBED or control == CONTROL_UNSUBSCRIBED:
            self.acks += 1
            if self.acks >= self.expected_acks:
                self.subscribed.set()
            return
        if control == CONTROL_ERROR:
            adapter.stats.errors += 1
            if not self.subscribed.is_set():
                self.subscribe_error = detail or "error"
                self.subscribed.set()
            logger.warning("%s: the exchange answered with an error: %s", self.conn.name, detail)
            return
        if control == CONTROL_RECONNECT:
            logger.info("%s: the exchange announced the end of this connection (%s)", self.conn.name, detail)
            self.end("reconnect")

    async def _watch(self) -> None:
        adapter = self.runner.adapter
        conn = self.conn
        stale_after = adapter.stale_after
        ping_interval = adapter.ping_interval
        max_age = adapter.max_connection_age
        tick = min(1.0, stale_after / 5, ping_interval / 5)
        last_ping = time.monotonic()
        idle_mode = adapter.ping_mode == "idle"
        while not self.ended.is_set():
            await asyncio.sleep(tick)
            if self.closing:
                return
            now = time.monotonic()
            idle = now - conn.last_frame_at
            if idle > stale_after:
                adapter.stats.stale += 1
                logger.warning("%s: no frame for %.1fs: stale", conn.name, idle)
                self.end("stale")
                return
            if max_age is not None and adapter.clock() - self.opened_clock >= max_age:
                self.end("rollover")
                return
            due = now - last_ping >= ping_interval and (not idle_mode or idle >= ping_interval)
            if due:
                text = adapter.ping_message(self.runner.next_id)
                if text is not None:
                    await self.pacer.wait()
                    conn.send_text(text)
                last_ping = now

    def release(self) -> None:
        """Stop holding: admit the held rows (after the predecessor's) and stream live from now on."""
        held, self.held, self.holding = self.held, [], False
        runner = self.runner
        for books, funding, balances in held:
            books, funding = runner.admit(books, funding)
            runner.spawn_push(books, funding, balances)

    async def close(self, *, graceful: bool = True) -> None:
        """Close the connection (``graceful``: read on until the server's close frame; else drop it at once),
        then let the consumer store every frame already received before it stops."""
        self.closing = True
        if graceful:
            await self.conn.close(timeout=self.runner.adapter.timeout)
        else:
            self.conn.abort()
        if not self.tasks:
            return
        consumer, watcher = self.tasks
        watcher.cancel()
        # The consumer ends by itself once the closed connection's queue is drained. Cancelling it mid-push
        # would lose rows already admitted, a hole no later message fills; so it is only cancelled if stuck.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.runner.adapter.timeout):
                await asyncio.shield(consumer)
        consumer.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class _Shard:
    """The topics one connection carries (changed by :meth:`StreamRunner.update`), its live session and the
    task supervising it. ``lock`` serializes opening, handing over and closing with subscription changes."""

    def __init__(self, index: int, topics: tuple[str, ...]) -> None:
        self.index = index
        self.topics = list(topics)
        self.session: _Session | None = None
        self.lock = asyncio.Lock()
        self.task: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<_Shard {self.index} topics={len(self.topics)}>"


class StreamRunner:
    """Runs an adapter's streams: one supervised shard per connection the topics need."""

    def __init__(self, adapter: ExchangeAdapter) -> None:
        self.adapter = adapter
        self.drop_unsequenced = adapter.drops_unsequenced_books
        self.next_id = itertools.count(1).__next__
        self._book_ids: dict[str, int] = {}
        self._book_times: dict[str, int] = {}
        self._funding_times: dict[str, int] = {}
        self._pushes: set[asyncio.Task] = set()
        self._connect_pacer = _Pacer(adapter.connect_interval)
        self._shard_names = itertools.count(1)
        self._shards: list[_Shard] = []
        self._shard_index = itertools.count()
        self._tg: asyncio.TaskGroup | None = None
        self._update_lock = asyncio.Lock()

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
            raise ExchangeError(f"{adapter.venue.value}: nothing to stream (no symbols)")
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
            else:
                gone = set(topics)
                shard.topics = [t for t in shard.topics if t not in gone]
            session = shard.session
            if session is None or session.ended.is_set():
                return  # the shard's next connection subscribes its topics as they are now
            try:
                await session.change(topics, subscribe=subscribe)
            except ConnectionLost as exc:
                logger.warning("%s; handing the connection over to resubscribe", exc)
                session.end("resubscribe")
                return
        logger.info("%s: %s %d topics", session.conn.name, "subscribed" if subscribe else "unsubscribed", len(topics))

    async def _stop_shard(self, shard: _Shard) -> None:
        # Its task closes the connection gracefully when cancelled: what was sent before is still stored.
        self._shards.remove(shard)
        async with shard.lock:
            shard.topics = []
            if shard.task is not None:
                shard.task.cancel()
        if shard.task is not None:
            await asyncio.gather(shard.task, return_exceptions=True)

    async def _open(self, index: int, topics: tuple[str, ...], *, hold: bool) -> _Session:
        adapter = self.adapter
        await self._connect_pacer.wait()
        name = f"{adapter.venue.value}#{index}.{next(self._shard_names)}"
        conn = await WsConnection.open(adapter.ws_endpoint(), timeout=adapter.timeout, name=name)
        session = _Session(self, conn, topics, hold=hold)
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

    async def _close(self, session: _Session, *, graceful: bool) -> None:
        await session.close(graceful=graceful)
        self.adapter.stats.connections -= 1
        self.adapter.notify()

    async def _run_shard(self, shard: _Shard) -> None:
        adapter = self.adapter
        stats = adapter.stats
        venue = adapter.venue.value
        index = shard.index
        failures = 0
        session: _Session | None = None
        try:
            while True:
                if session is None:
                    try:
                        async with shard.lock:
                            session = shard.session = await self._open(index, tuple(shard.topics), hold=False)
                    except ConnectionLost as exc:
                        failures += 1
                        if adapter.max_reconnect_attempts is not None and failures > adapter.max_reconnect_attempts:
                            raise ExchangeError(f"{venue}: giving up after {failures} failed connection attempts") from exc
                        delay = adapter.reconnect.delay(failures - 1)
                        logger.warning("%s: %s; retrying in %.2fs", venue, exc, delay)
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

    async def _handover(self, index: int, topics: tuple[str, ...], old: _Session) -> _Session | None:
        """Connect a successor, close ``old`` once the successor is subscribed, then let the successor stream."""
        adapter = self.adapter
        try:
            new = await self._open(index, topics, hold=True)
        except ConnectionLost as exc:
            # Keep nothing half-done: fall back to an ordinary reconnect.
            logger.warning("%s: handover failed (%s); reconnecting", adapter.venue.value, exc)
            adapter.stats.reconnects += 1
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
        last = self._book_ids.get(symbol)
        if last is not None and update_id < last:
            logger.warning("%s %s: update ids restarted (%d after %d)", self.adapter.venue.value, symbol, update_id, last)
            self._book_ids[symbol] = update_id - 1

    def admit(self, books: list[BookTicker], funding: list[FundingRate]) -> tuple[list[BookTicker], list[FundingRate]]:
        """Drop rows already stored (same or older update id, else exchange time, per symbol)."""
        stats = self.adapter.stats
        out_books = books
        if books:
            ids, times = self._book_ids, self._book_times
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
        out_funding = funding
        if funding:
            times = self._funding_times
            out_funding = []
            for row in funding:
                key = row.exchange_ts
                if key is not None:
                    prev = times.get(row.symbol)
                    if prev is not None and key <= prev:
                        stats.duplicates += 1
                        continue
                    times[row.symbol] = key
                out_funding.append(row)
        return out_books, out_funding

    async def push(self, books: list[BookTicker], funding: list[FundingRate], balances: list[Balance]) -> None:
        """Hand one batch of admitted rows to the sink, retrying a failing sink a few times before giving up on
        the batch (counted in ``sink_errors`` and ``dropped_rows``, and logged)."""
        adapter = self.adapter
        stats = adapter.stats
        sink = adapter.sink
        for rows, insert, counter in (
            (books, sink.insert_book_ticker_snapshots, "book_rows"),
            (funding, sink.insert_funding_rates, "funding_rows"),
            (balances, sink.insert_balance_snapshots, "balance_rows"),
        ):
            if not rows:
                continue
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

    def spawn_push(self, books: list[BookTicker], funding: list[FundingRate], balances: list[Balance]) -> None:
        """Push without waiting (for held rows released from synchronous code); the task is owned here."""
        if not (books or funding or balances):
            return
        task = asyncio.create_task(self.push(books, funding, balances))
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)


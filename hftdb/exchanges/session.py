"""One subscribed connection of a shard: subscribe, consume, keep alive, close.

A :class:`Session` owns a :class:`~hftdb.exchanges.connection.WsConnection` and two tasks: the *consumer*,
which runs each batch of received frames through the session's :class:`~hftdb.exchanges.intake.Intake` and
hands the rows to the runner's sink, and the *watchdog*, which sends the venue's keep-alive and ends the
session when it goes stale (no frame at all for ``stale_after`` seconds) or reaches the venue's age limit.

* **Subscribe**: paced requests within the venue's per-message limits; the session counts once every request
  is acknowledged.
* **Hold**: a handover's successor parses and sequences from the start but holds its rows until
  :meth:`Session.release`, once its predecessor is closed and drained (see :mod:`hftdb.exchanges.runner`).
  The released rows are pushed in one task that the consumer (and :meth:`Session.close`) waits for before
  pushing a live row: two pushes in flight at once could reach the sink in either order.
* **End**: :meth:`Session.end` records why (``stale``, ``rollover``, ``reconnect``, ``resync``,
  ``resubscribe``, a close or a loss); the runner decides between a handover and a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..models import FeedRows
from .connection import ConnectionLost, Pacer, WsConnection
from .intake import Intake
from .parsing import CONTROL_ERROR, CONTROL_PONG, CONTROL_RECONNECT, CONTROL_SUBSCRIBED, CONTROL_UNSUBSCRIBED

if TYPE_CHECKING:
    from .stream import StreamOwner

__all__ = ["Session"]

logger = logging.getLogger(__name__)

_DETAIL_LIMIT = 300  # characters of an exchange's error or notice text that are logged


class Session:
    """One subscribed connection of a shard and its two tasks: the consumer and the watchdog."""

    def __init__(self, runner: StreamOwner, conn: WsConnection, topics: tuple[str, ...], *, hold: bool) -> None:
        adapter = runner.adapter
        self.runner = runner
        self.conn = conn
        self.topics = topics
        self.intake = Intake(runner, adapter.new_parser(), holding=hold, on_control=self._control,
                             on_lost_book=self._lost_book)
        self.expected_acks = 0
        self.acks = 0
        self.subscribe_error: str | None = None
        self.subscribed = asyncio.Event()
        self.held: list[FeedRows] = []
        self._released: asyncio.Task | None = None  # the push of the rows held until release()
        self.ended = asyncio.Event()
        self.reason = ""
        self.closing = False
        self.opened_clock = adapter.clock()
        self.pacer = Pacer(adapter.control_interval)
        self.tasks: list[asyncio.Task] = []

    def __repr__(self) -> str:
        return f"<Session {self.conn.name} topics={len(self.topics)} {'ended: ' + self.reason if self.reason else 'live'}>"

    @property
    def got_data(self) -> bool:
        """Whether the connection delivered any row."""
        return self.intake.got_data

    @property
    def holding(self) -> bool:
        """Whether rows are held until :meth:`release`."""
        return self.intake.holding

    def end(self, reason: str) -> None:
        """Mark the session over (its shard's supervisor wakes up), recording why."""
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()
            self.subscribed.set()  # wake a subscribe still waiting

    def start(self) -> None:
        """Start the consumer and the watchdog (owned by :attr:`tasks`)."""
        name = self.conn.name
        self.tasks = [
            asyncio.create_task(self._consume(), name=f"{name}-consume"),
            asyncio.create_task(self._watch(), name=f"{name}-watch"),
        ]

    async def subscribe(self, next_id: Callable[[], int]) -> None:
        """Send the subscribe requests of :attr:`topics` and wait for every acknowledgement; raise
        :class:`~hftdb.exchanges.connection.ConnectionLost` on a refusal, a timeout or the end of the session."""
        adapter = self.runner.adapter
        messages = adapter.subscribe_messages(self.topics, next_id)
        await self._send_counted(messages)
        try:
            async with asyncio.timeout(adapter.subscribe_timeout):
                await self.subscribed.wait()
        except TimeoutError:
            raise ConnectionLost(f"{self.conn.name}: {self.acks}/{self.expected_acks} subscriptions acknowledged "
                                 f"after {adapter.subscribe_timeout}s") from None
        if self.subscribe_error is not None:
            raise ConnectionLost(f"{self.conn.name}: subscription refused: {self.subscribe_error}",
                                 refusal=self.subscribe_error)
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
        await self._send_counted(messages)
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
            raise ConnectionLost(f"{self.conn.name}: {action} refused: {error}", refusal=error)
        if self.ended.is_set():
            raise ConnectionLost(f"{self.conn.name}: ended during {action} ({self.reason})")

    async def _send_counted(self, messages: list[tuple[str, int]]) -> None:
        # Each message comes with how many acknowledgements it earns; none expected means done already.
        self.expected_acks = sum(acks for _, acks in messages)
        if self.expected_acks == 0:
            self.subscribed.set()
        for text, _ in messages:
            await self.pacer.wait()
            self.conn.send_text(text)

    async def _consume(self) -> None:
        runner = self.runner
        conn = self.conn
        intake = self.intake
        notify = runner.adapter.notify
        try:
            while True:
                chunks = await conn.next_chunks()
                if chunks is None:
                    code = conn.close_code
                    self.end(f"closed by the server ({code}: {conn.close_reason})" if code is not None else "connection lost")
                    return
                holding = intake.holding  # process() admits only when not holding; no await in between
                batch = intake.process(chunks)
                if holding:
                    if batch.has_rows():
                        self.held.append(batch)
                elif batch.has_rows():
                    released = self._released
                    if released is not None:
                        # The held rows were admitted first and must reach the sink first: this batch was
                        # received while release() ran, or a failing sink keeps the released push retrying.
                        # asyncio.wait: the push is the runner's and goes on even if this task is cancelled.
                        if not released.done():
                            await asyncio.wait((released,))
                        self._released = None
                    await runner.push(batch)
                notify()
        except Exception as exc:  # a bug must end the connection loudly, not kill the feed
            logger.exception("%s: consumer failed", conn.name)
            self.end(f"consumer failed: {type(exc).__name__}: {exc}")

    def _lost_book(self) -> None:
        # The parser lost a book (a corrupt frame): only a fresh subscription's snapshot restores it.
        if not self.ended.is_set():
            self.end("resync")

    def _control(self, control: str, detail: str | None) -> None:
        adapter = self.runner.adapter
        if control == CONTROL_PONG:
            return
        if detail is not None and len(detail) > _DETAIL_LIMIT:
            # The venue's text, as sent (up to a frame's size): logged and kept only this long.
            detail = detail[:_DETAIL_LIMIT] + "..."
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
        held, self.held = self.held, []
        self.intake.holding = False
        runner = self.runner
        admitted = []
        for batch in held:
            books, funding = runner.admit(batch.book_tickers, batch.funding_rates)
            admitted.append(FeedRows(books, funding, batch.balances))
        # One task pushes them in order; the consumer waits for it before pushing any live row (see _consume).
        self._released = runner.spawn_push(admitted)

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
        released, self._released = self._released, None
        if released is not None:
            # Closed means stored: a successor released after this one must not overtake its held rows.
            await asyncio.wait((released,))

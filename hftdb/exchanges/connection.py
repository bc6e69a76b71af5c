"""One client websocket (picows): frames in with their receive time, paced control messages out.

picows was chosen by measurement (``benchmarks/ws_client_choice.py``): on loopback it receives about eight
times as many messages per second as ``websockets``. Its callback runs in the event loop for each frame as the
socket is read. :class:`WsConnection` keeps the payloads of one socket read together, stamped once with the
time of that read (the frames of one read arrived together; one clock call per read, not per frame, is a
measurable share of a frame's cost at 50k frames/s), and wakes the consumer once per read. Reading pauses when
too many frames wait, so a slow sink pushes back on the exchange through TCP instead of growing memory.

A refused upgrade (HTTP 429, 418, 503...) raises :class:`ConnectionLost` carrying the answer's status and its
``Retry-After`` in seconds, which the stream runner waits before connecting again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from picows import WSCloseCode, WSError, WSInvalidStatusError, WSListener, WSMsgType, ws_connect

from ..errors import ExchangeError
from ..models import now_us

__all__ = ["ConnectionLost", "WsConnection", "Pacer", "Chunk"]

logger = logging.getLogger(__name__)

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_PING = WSMsgType.PING
_CLOSE = WSMsgType.CLOSE

#: the payloads of one socket read and the time it returned (µs since the epoch)
Chunk = tuple[int, list[bytes]]


class ConnectionLost(ExchangeError):
    """A stream connection could not be opened or subscribed, or ended.

    ``status`` is the HTTP status of a refused upgrade (else None); ``retry_after`` the seconds its
    ``Retry-After`` header asked to wait (else None); ``refusal`` the venue's error text when it refused a
    subscription (else None).
    """

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 refusal: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.refusal = refusal


class _Listener(WSListener):
    def __init__(self, conn: WsConnection) -> None:
        super().__init__()
        self.conn = conn

    def on_ws_frame(self, transport, frame) -> None:  # noqa: ANN001 (picows types)
        kind = frame.msg_type
        if kind == _TEXT or kind == _BINARY:
            conn = self.conn
            current = conn._current
            if current is None:
                current = conn._start_read()
            current.append(frame.get_payload_as_bytes())
        elif kind == _PING:
            # Answered here rather than by picows so that a ping counts as a sign of life.
            self.conn.last_frame_at = time.monotonic()
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind == _CLOSE:
            conn = self.conn
            conn.close_code = frame.get_close_code()
            conn.close_reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:  # noqa: ANN001
        self.conn.on_disconnected()


class WsConnection:
    """One client websocket: the payloads of each socket read go into a queue as one :data:`Chunk`; reading
    pauses past ``max_pending`` queued frames and resumes below half of it."""

    def __init__(self, name: str, *, max_pending: int = 20_000) -> None:
        if max_pending <= 0:
            raise ValueError(f"max_pending must be > 0, got {max_pending!r}")
        self.name = name
        self.max_pending = max_pending
        self.last_frame_at = time.monotonic()
        self.close_code: Any = None
        self.close_reason = ""
        self._transport: Any = None
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[Chunk] = deque()
        self._current: list[bytes] | None = None
        self._pending = 0
        self._ready = asyncio.Event()
        self._disconnected = False
        self._paused = False

    def __repr__(self) -> str:
        state = "closed" if self._disconnected else "open"
        return f"<WsConnection {self.name} {state} pending={self._pending}>"

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
                    logger_name=__name__,  # one logger for all: names per connection would pile up
                )
        except WSInvalidStatusError as exc:
            status, retry_after = _refusal(exc)
            wait = f"; Retry-After {retry_after:g}s" if retry_after is not None else ""
            raise ConnectionLost(f"{name}: {url} refused the upgrade: HTTP {status}{wait}",
                                 status=status, retry_after=retry_after) from exc
        except (OSError, TimeoutError, WSError) as exc:
            raise ConnectionLost(f"{name}: cannot connect to {url}: {type(exc).__name__}: {exc}") from exc
        conn._transport = transport
        conn.last_frame_at = time.monotonic()
        return conn

    @property
    def disconnected(self) -> bool:
        """True once the TCP connection is gone (frames may still be queued)."""
        return self._disconnected

    def _start_read(self) -> list[bytes]:
        # The first data frame of a socket read: one receive time for all of them, and one wake-up after.
        current = self._current = []
        self._chunks.append((now_us(), current))
        self._loop.call_soon(self._end_read)
        return current

    def _end_read(self) -> None:
        current = self._current
        self._current = None
        self.last_frame_at = time.monotonic()
        self._ready.set()
        if current is not None:
            self._pending += len(current)
        if not self._paused and self._pending >= self.max_pending and self._transport is not None:
            self._paused = True
            self._transport.underlying_transport.pause_reading()

    def on_disconnected(self) -> None:
        """The TCP connection is gone (called by the listener)."""
        self._disconnected = True
        self._ready.set()

    async def next_chunks(self) -> list[Chunk] | None:
        """Every chunk received so far, waiting for one; None once disconnected and drained."""
        chunks = self._chunks
        while not chunks:
            if self._disconnected:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self._current is not None:
            # The last read is complete (a read's frames all arrive in one callback) but its end-of-read has not
            # run yet: count it now, or its frames would be counted as pending after they were taken.
            self._end_read()
        batch = list(chunks)
        chunks.clear()
        self._pending -= sum(len(p) for _, p in batch)
        if self._paused and self._pending <= self.max_pending // 2 and not self._disconnected:
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


def _refusal(exc: WSInvalidStatusError) -> tuple[int | None, float | None]:
    """The status and ``Retry-After`` (delta-seconds; an HTTP date is not parsed) of a refused upgrade."""
    response = exc.response
    if response is None:
        return None, None
    status = int(response.status)
    value = response.headers.get("Retry-After") if response.headers is not None else None  # case-insensitive
    try:
        retry_after = max(0.0, float(value)) if value is not None else None
    except ValueError:
        retry_after = None
    return status, retry_after


class Pacer:
    """At most one message every ``interval`` seconds (Binance cuts a connection sending more than 5 a second)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0

    async def wait(self) -> None:
        """Wait until the next message may be sent."""
        if self.interval <= 0:
            return
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
            now = time.monotonic()
        self._next = max(now, self._next) + self.interval

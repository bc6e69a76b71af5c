"""What every simulated exchange host shares: limits, faults, the server side of a websocket, the host base class.

A *host* is one exchange endpoint (``api.binance.com``/``stream.binance.com`` become one host here, as do
Bybit's spot and linear markets): one aiohttp application on its own port serving REST and websockets. Data
frames go through a per-connection queue and writer task, and are entered in the :class:`~.ledger.Ledger` only
once written to the socket, so the ledger counts exactly what a client could have received.

The writer frames a run of queued data messages itself (an unmasked, uncompressed text frame is two to ten
bytes of header before the payload) and hands the whole run to the socket in one write, waiting while the
socket's buffer is full: aiohttp's ``send_str`` costs a few µs per message, which at 50k messages a second
was most of a core. Control frames, pings and the close go through aiohttp, in queue order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from ..models import ExchangeName
from ..venues import VENUES
from .ledger import Ledger
from .market import Market

__all__ = ["Limits", "Credentials", "Faults", "HttpFault", "Session", "Host"]

logger = logging.getLogger(__name__)


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Protocol limits and timers, defaulting to what the venues document. Tests shrink them.

    Binance: 1024 streams per connection; 5 (spot) / 10 (USD-M) incoming messages per second, pings and pongs
    included, else the connection is closed; a ping every 20 s (spot) / 3 min (USD-M), disconnected after
    1 min / 10 min without the pong; every connection ends at 24 h. Bybit: at most 10 args per spot subscribe
    request, 21,000 characters of args per linear connection; cut after 10 min without ping or data; a level-1
    book unchanged for 3 s is pushed again as a snapshot with the same ``u``. OKX: 480 subscribe requests per
    connection per hour, 64 KB per request; cut after 30 s without anything pushed.
    """

    binance_spot_max_streams: int = 1024
    binance_usdm_max_streams: int = 1024
    binance_spot_max_incoming_per_s: int = 5
    binance_usdm_max_incoming_per_s: int = 10
    binance_spot_ping_interval: float = 20.0
    binance_spot_pong_timeout: float = 60.0
    binance_usdm_ping_interval: float = 180.0
    binance_usdm_pong_timeout: float = 600.0
    binance_max_connection_age: float = 86_400.0
    bybit_spot_max_args_per_request: int = 10
    bybit_linear_max_args_chars: int = 21_000
    bybit_idle_timeout: float = 600.0
    bybit_resnapshot_after: float = 3.0
    okx_max_requests_per_hour: int = 480
    okx_max_request_bytes: int = 65_536
    okx_idle_timeout: float = 30.0
    funding_interval: float = 1.0
    max_queue: int = 200_000


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """The one API key each simulated host accepts. The secret never appears in a repr."""

    api_key: str = "sim-api-key"
    api_secret: str = "sim-api-secret"
    passphrase: str = "sim-passphrase"

    def __repr__(self) -> str:
        return f"Credentials(api_key={self.api_key!r}, api_secret='***', passphrase='***')"


class HttpFault(msgspec.Struct):
    """One injected HTTP answer: ``status`` (and ``body``, else the venue's error body) for the next ``remaining``
    requests to ``path`` (None: any path) on a host, with an optional ``Retry-After``."""

    status: int
    path: str | None
    remaining: int
    retry_after: float | None
    body: bytes | None = None  # the answer's body as given (else the venue's error body)


class Faults:
    """Faults to inject, keyed by host name. Use through :class:`~hftdb.simulator.ExchangeSimulator`."""

    def __init__(self) -> None:
        self.stall_until: dict[str, float] = {}
        self.unstalled: dict[str, asyncio.Event] = {}
        self.http: dict[str, list[HttpFault]] = {}
        self.gaps: dict[ExchangeName, deque[tuple[str | None, int]]] = {}
        self.duplicates: dict[ExchangeName, deque[str | None]] = {}

    def stalled(self, host: str) -> bool:
        """Whether ``host`` is inside a stall."""
        until = self.stall_until.get(host)
        return until is not None and asyncio.get_running_loop().time() < until

    def unstalled_event(self, host: str) -> asyncio.Event:
        """An event set while ``host`` is not stalled."""
        ev = self.unstalled.get(host)
        if ev is None:
            ev = self.unstalled[host] = asyncio.Event()
            ev.set()
        return ev

    def take_http(self, host: str, path: str) -> HttpFault | None:
        """Consume one pending HTTP error for a request to ``path``, if any."""
        for fault in self.http.get(host, ()):
            if fault.remaining > 0 and (fault.path is None or path.startswith(fault.path)):
                fault.remaining -= 1
                return fault
        return None

    def take_gap(self, venue: ExchangeName, symbol: str) -> int:
        """Consume the next pending gap if it applies to ``symbol``: the ids to skip (0 if none)."""
        pending = self.gaps.get(venue)
        if pending:
            want, size = pending[0]
            if want is None or want == symbol:
                pending.popleft()
                return size
        return 0

    def take_duplicate(self, venue: ExchangeName, symbol: str) -> bool:
        """Consume the next pending duplicate if it applies to ``symbol``."""
        pending = self.duplicates.get(venue)
        if pending and (pending[0] is None or pending[0] == symbol):
            pending.popleft()
            return True
        return False


_DATA, _CONTROL, _PING, _CLOSE = range(4)

_RUN = 256  # data frames per socket write at most
_HIGH_WATER = 1 << 20  # bytes buffered in the socket before the writer waits for the client to read
_LOW_WATER = 1 << 18
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def _text_frame(payload: bytes) -> bytes:
    """The header of a final, unmasked text frame carrying ``payload`` (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n))
    if n < 65536:
        return _HEADER_16(0x81, 126, n)
    return _HEADER_64(0x81, 127, n)


class Session:
    """The server side of one websocket connection: subscriptions, an outgoing queue and its writer task."""

    def __init__(self, host: Host, ws: web.WebSocketResponse, request: web.Request, venue: ExchangeName | None) -> None:
        self.host = host
        self.ws = ws
        self.request = request
        self.venue = venue  # the market a path-per-market host (Bybit) serves on this connection
        self.conn_id = str(uuid.uuid4())
        self.subs: set[tuple[ExchangeName, str, str]] = set()
        self.opened_at = host.clock()
        loop = asyncio.get_running_loop()
        self.last_received = self.last_sent = self.last_client_ping = self.last_ping = loop.time()
        self.incoming: deque[float] = deque()
        self.requests: deque[float] = deque()
        self.pending_ping: tuple[bytes, float] | None = None
        self.combined = True  # Binance: {"stream", "data"} envelope
        self.snapshot_at: dict[tuple[ExchangeName, str, str], float] = {}  # Bybit: last snapshot per stream
        self.closing = False
        self._queue: deque[tuple] = deque()
        self._wakeup = asyncio.Event()
        self.drained = asyncio.Event()  # set while nothing is waiting to be written
        self.drained.set()

    def __repr__(self) -> str:
        return f"<Session {self.host.name} {self.conn_id[:8]} subs={len(self.subs)}>"

    @property
    def stalled(self) -> bool:
        """Whether this connection's host is stalled."""
        return self.host.faults.stalled(self.host.name)

    def send_data(self, text: str, stream: tuple[ExchangeName, str, str], key: int) -> None:
        """Queue a data frame; it is entered in the ledger when written."""
        self._put((_DATA, text, stream, key))

    def send_control(self, text: str) -> None:
        """Queue a response, pong or other non-data frame."""
        self._put((_CONTROL, text))

    def send_malformed(self, text: str | bytes) -> None:
        """Queue a malformed frame (counted in ``Ledger.malformed``, never as data): ``str`` goes as a text frame,
        ``bytes`` as a binary one (so that bytes that are not UTF-8 can be sent too)."""
        self._put((_CONTROL, text, "malformed"))

    def send_ping(self, payload: bytes) -> None:
        """Queue a protocol ping frame."""
        self._put((_PING, payload))

    def close(self, code: int = 1000, message: str = "") -> None:
        """Close after the frames already queued have been written (a graceful close)."""
        if not self.closing:
            self.closing = True
            self._put((_CLOSE, code, message), force=True)

    def abort(self) -> None:
        """Drop the TCP connection at once; queued frames are lost (and were never counted as sent)."""
        self.closing = True
        self._queue.clear()
        self.drained.set()
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def _put(self, item: tuple, *, force: bool = False) -> None:
        if self.closing and not force:
            return
        if len(self._queue) >= self.host.limits.max_queue:
            # A client this far behind would be cut by a real venue too.
            logger.warning("%r: client too slow, %d frames queued: dropping it", self, len(self._queue))
            self.abort()
            return
        queue = self._queue
        queue.append(item)
        if len(queue) == 1:  # it was empty: the writer may be waiting, and the queue is no longer drained
            self._wakeup.set()
            self.drained.clear()

    async def writer(self) -> None:
        """Write queued frames in order until closed; a data frame enters the ledger once written."""
        ws, ledger, faults, name = self.ws, self.host.ledger, self.host.faults, self.host.name
        tallies: dict[tuple[ExchangeName, str, str], Any] = {}  # this connection's streams' tallies
        generation = ledger.generation
        loop = asyncio.get_running_loop()
        queue = self._queue
        transport = self.request.transport
        while True:
            if not queue:
                self.drained.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if faults.stalled(name):
                await faults.unstalled_event(name).wait()
                continue
            if queue[0][0] == _DATA:
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("the client connection is closed")
                parts: list[bytes] = []
                run = []
                while queue and queue[0][0] == _DATA and len(run) < _RUN:
                    item = queue.popleft()
                    payload = item[1].encode()
                    parts.append(_text_frame(payload))
                    parts.append(payload)
                    run.append(item)
                transport.write(b"".join(parts))
                if ledger.generation != generation:
                    tallies.clear()
                    generation = ledger.generation
                for item in run:
                    stream = item[2]
                    tally = tallies.get(stream)
                    if tally is None:
                        venue, channel, symbol = stream
                        tally = tallies[stream] = ledger.tally(venue.value, channel, symbol)
                    tally.frames += 1
                    tally.keys.add(item[3])
                self.last_sent = loop.time()
                if transport.get_write_buffer_size() > _HIGH_WATER:
                    await self._drain(transport)
                continue
            item = queue.popleft()
            kind = item[0]
            if kind == _CONTROL:
                if type(item[1]) is bytes:
                    await ws.send_bytes(item[1])
                else:
                    await ws.send_str(item[1])
                if len(item) > 2:
                    ledger.malformed[name] = ledger.malformed.get(name, 0) + 1
                else:
                    ledger.control_frames[name] = ledger.control_frames.get(name, 0) + 1
            elif kind == _PING:
                await ws.ping(item[1])
            else:
                await ws.close(code=item[1], message=item[2].encode())
                return
            self.last_sent = loop.time()

    async def _drain(self, transport: asyncio.Transport) -> None:
        # The client reads slower than we write: wait until the socket's buffer is mostly sent (a real venue
        # would eventually cut such a client; max_queue does that here).
        while transport.get_write_buffer_size() > _LOW_WATER:
            if transport.is_closing():
                raise ConnectionResetError("the client connection is closed")
            await asyncio.sleep(0.001)


class Host:
    """One simulated exchange endpoint: REST and websocket routes on one aiohttp application.

    Subclasses add the venue's routes (:meth:`routes`), answer client frames (:meth:`on_text`), encode data
    (:meth:`encode`) and run their heartbeat rules (:meth:`housekeep`).
    """

    #: channels whose key is an update id (a gap there is visible to clients)
    id_channels: frozenset[str] = frozenset()

    def __init__(
        self,
        markets: dict[ExchangeName, Market],
        *,
        name: str,
        ledger: Ledger,
        faults: Faults,
        limits: Limits,
        credentials: Credentials,
        clock: Callable[[], float],
    ) -> None:
        #: the host's name: the venues' ``simulator_host`` in the registry (hftdb.venues)
        self.name = name
        self.markets = markets
        #: native channel names per market, (book channels, funding channels): the venue registry's
        self.channels: dict[ExchangeName, tuple[tuple[str, ...], tuple[str, ...]]] = {
            v.name: (v.book_channels, v.funding_channels) for v in VENUES if v.name in markets}
        self.ledger = ledger
        self.faults = faults
        self.limits = limits
        self.credentials = credentials
        self.clock = clock
        self.sessions: set[Session] = set()
        self.subscribers: dict[tuple[ExchangeName, str, str], set[Session]] = {}
        self.requests: dict[str, int] = {}
        self.port: int | None = None
        self.on_change: Callable[[], None] = lambda: None  # connections or subscriptions changed
        self.app = web.Application(middlewares=[self._middleware])
        self.app.add_routes(self.routes())

    # -- to override -------------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The host's REST and websocket routes."""
        raise NotImplementedError

    async def on_text(self, session: Session, text: str) -> None:
        """Answer one text frame from a client (subscribe, ping...)."""
        raise NotImplementedError

    def on_pong(self, session: Session, payload: bytes) -> None:
        """A client answered a ping frame."""

    def encode(self, venue: ExchangeName, channel: str, symbol: str, now_ms: int, *, snapshot: bool = False) -> tuple[str, int]:
        """The frame for the current state of ``symbol`` on ``channel``, and its ledger key."""
        raise NotImplementedError

    def housekeep(self, session: Session, now: float) -> None:
        """Called every ``tick`` seconds per connection: pings, idle and age limits."""

    def wrap(self, session: Session, channel: str, symbol: str, data: str) -> str:
        """The frame that carries ``data`` on this connection (Binance wraps it in a combined-stream envelope)."""
        return data

    def count_incoming(self, session: Session, now: float) -> bool:
        """Count one frame from the client; return False to stop reading (the connection is being closed)."""
        session.last_received = now
        return True

    def error_body(self, status: int, request: web.Request) -> dict[str, Any] | str:
        """The venue's error body for an injected HTTP error of ``status``."""
        raise NotImplementedError

    tick: float = 1.0

    # -- shared machinery --------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The simulator clock in milliseconds."""
        return int(self.clock() * 1000)

    def subscribe(self, session: Session, stream: tuple[ExchangeName, str, str]) -> None:
        """Send ``stream``'s messages to ``session`` from now on."""
        session.subs.add(stream)
        self.subscribers.setdefault(stream, set()).add(session)
        self.on_change()

    def unsubscribe(self, session: Session, stream: tuple[ExchangeName, str, str]) -> None:
        """Stop sending ``stream``'s messages to ``session``."""
        session.subs.discard(stream)
        subs = self.subscribers.get(stream)
        if subs is not None:
            subs.discard(session)
            if not subs:
                del self.subscribers[stream]
        self.on_change()

    def publish(self, venue: ExchangeName, channel: str, symbol: str, now_ms: int, *, gap: int, duplicate: bool) -> None:
        """Send the current state of ``symbol`` on ``channel`` to every connection subscribed to it."""
        stream = (venue, channel, symbol)
        targets = self.subscribers.get(stream)
        if not targets:
            return
        live = [s for s in targets if not s.closing]
        if not live or self.faults.stalled(self.name):
            return  # a stall sends nothing: these messages are lost, and never counted
        data, key = self.encode(venue, channel, symbol, now_ms)
        if gap or duplicate:
            tally = self.ledger.tally(venue.value, channel, symbol)
            if gap and channel in self.id_channels:
                tally.gaps += 1
            if duplicate:
                tally.duplicates += len(live)
        if len(live) == 1 and not duplicate:  # the common case: one subscriber, sent once
            s = live[0]
            s.send_data(self.wrap(s, channel, symbol, data), stream, key)
            return
        frames: dict[bool, str] = {}
        for _ in range(2 if duplicate else 1):
            for s in live:
                text = frames.get(s.combined)
                if text is None:
                    text = frames[s.combined] = self.wrap(s, channel, symbol, data)
                s.send_data(text, stream, key)

    @staticmethod
    def json(obj: Any) -> str:
        """Compact JSON, as the venues send it."""
        return json.dumps(obj, separators=(",", ":"))

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        self.requests[request.path] = self.requests.get(request.path, 0) + 1
        fault = self.faults.take_http(self.name, request.path)
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(int(fault.retry_after) if fault.retry_after == int(fault.retry_after) else fault.retry_after)
            if fault.body is not None:
                return web.Response(status=fault.status, body=fault.body, headers=headers,
                                    content_type="application/json")
            body = self.error_body(fault.status, request)
            if isinstance(body, str):
                return web.Response(status=fault.status, text=body, headers=headers)
            return web.json_response(body, status=fault.status, headers=headers, dumps=self.json)
        return await handler(request)

    async def serve_ws(self, request: web.Request, venue: ExchangeName | None = None, setup: Callable[[Session], Any] | None = None) -> web.WebSocketResponse:
        """Run one websocket connection to its end."""
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        session = Session(self, ws, request, venue)
        self.sessions.add(session)
        self.on_change()
        writer = asyncio.create_task(self._run_writer(session), name=f"sim-writer-{session.conn_id[:8]}")
        keeper = asyncio.create_task(self._housekeeper(session), name=f"sim-keeper-{session.conn_id[:8]}")
        try:
            if setup is not None:
                setup(session)
            await self._read(session)
        finally:
            for stream in list(session.subs):
                self.unsubscribe(session, stream)
            self.sessions.discard(session)
            self.on_change()
            keeper.cancel()
            if session.closing and not writer.done():
                # Let a graceful close finish writing what was queued before it.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), 5.0)
            writer.cancel()
            await asyncio.gather(writer, keeper, return_exceptions=True)
            if not ws.closed:
                await ws.close()
        return ws

    async def _run_writer(self, session: Session) -> None:
        try:
            await session.writer()
        except (ConnectionError, RuntimeError) as exc:
            # The client went away mid-write: what was not written was not sent.
            logger.debug("%r: write failed: %s", session, exc)

    async def _housekeeper(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        while not session.closing:
            await asyncio.sleep(self.tick)
            self.housekeep(session, loop.time())

    async def _read(self, session: Session) -> None:
        ws = session.ws
        loop = asyncio.get_running_loop()
        async for msg in ws:
            if not self.count_incoming(session, loop.time()):
                break
            if msg.type == WSMsgType.TEXT:
                await self.on_text(session, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self.on_text(session, msg.data.decode("utf-8", "replace"))
            elif msg.type == WSMsgType.PING:
                if not self.faults.stalled(self.name):
                    await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                self.on_pong(session, msg.data)

    async def close_all(self) -> None:
        """Close every connection gracefully (shutdown)."""
        for session in list(self.sessions):
            session.close(1001, "server shutting down")

"""The exchange simulator: the registry's exchange hosts on loopback ports, a quote generator per market, fault
injection."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from ..config import MAX_DEMO_SYMBOLS
from ..errors import ClosedError, StateError
from ..models import ExchangeName
from ..venues import VENUES
from .binance import BinanceHost
from .bybit import BybitHost
from .core import Credentials, Faults, Host, HttpFault, Limits
from .ledger import Ledger
from .market import Market
from .okx import OkxHost

__all__ = ["ExchangeSimulator", "HOST_OF", "MAX_RATE", "MAX_PORT", "argument_problem"]

logger = logging.getLogger(__name__)

#: which simulated host serves each venue (one port per host)
HOST_OF: dict[ExchangeName, str] = {v.name: v.simulator_host for v in VENUES}
# The host class speaking the protocol of each adapter (hftdb.venues.VenueSpec.adapter).
_HOST_CLASSES: dict[str, Callable[..., Host]] = {"BinanceAdapter": BinanceHost, "BybitAdapter": BybitHost,
                                                 "OkxAdapter": OkxHost}
_HOST_ORDER = tuple(dict.fromkeys(HOST_OF.values()))
#: The highest ``rate``: a tick's updates are drawn without yielding, so a much higher rate holds the event loop
#: (and Ctrl-C) for seconds at a time.
MAX_RATE = 1_000_000
#: The highest fixed ``port``: the hosts bind ``port`` and the next ones.
MAX_PORT = 65535 - (len(_HOST_ORDER) - 1)


def argument_problem(*, port: Any, rate: Any, symbols: Any, funding_interval: Any) -> tuple[str, str] | None:
    """The first of :class:`ExchangeSimulator`'s arguments out of range, as (its name, what is wrong, to follow the
    name); None when all are fine. Entry points check with it before anything is built (a huge ``symbols`` would
    take all the memory there is first) and put their own name for the argument in front."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0 <= rate <= MAX_RATE):
        return "rate", f"must be >= 0 and at most {MAX_RATE:,} book updates per second (a finite number), got {rate}"
    if not (type(symbols) is int and 0 < symbols <= MAX_DEMO_SYMBOLS):
        return "symbols", f"must be between 1 and {MAX_DEMO_SYMBOLS:,} instruments per venue, got {symbols}"
    if not (isinstance(funding_interval, (int, float)) and math.isfinite(funding_interval) and funding_interval > 0):
        return "funding_interval", f"must be > 0 seconds (a finite number), got {funding_interval}"
    if not (type(port) is int and 0 <= port <= MAX_PORT):
        return "port", (f"must be 0 (free ports) or at most {MAX_PORT} (the {len(_HOST_ORDER)} hosts bind "
                        f"PORT..PORT+{len(_HOST_ORDER) - 1}), got {port}")
    return None
_PRICE = re.compile(r'"(\d+\.\d+)"')


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class ExchangeSimulator:
    """Binance, Bybit and OKX as far as hftdb's adapters use them, over real HTTP and websockets on loopback.

    Each exchange host listens on its own port (``port=0`` picks free ones; a fixed ``port`` uses it and the
    next ones), one per ``simulator_host`` of the venue registry (hftdb.venues) in its order: binance_spot,
    binance_usdm, bybit, okx. Every market streams random-walk quotes of ``symbols`` instruments at ``rate`` book
    updates per second (all its symbols together), and perpetual markets a funding update per symbol every
    ``limits.funding_interval`` seconds. Only connections subscribed to a stream are sent its messages, and each
    frame written is entered in :attr:`ledger`.

    Listings change at runtime with :meth:`list_symbol` and :meth:`delist_symbol`: a delisted symbol stays in
    the instruments answer with the venue's halted status, is refused to new subscriptions, and is no longer
    generated (so nothing more is sent, or entered in the ledger, for it).

    Faults are injected with :meth:`drop_connections`, :meth:`stall`, :meth:`send_malformed`, :meth:`send_raw`,
    :meth:`inject_gap`, :meth:`inject_duplicate`, :meth:`http_error` and :meth:`http_body`. ``clock`` (wall
    seconds) drives server times, signature windows and the 24 h connection limit.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float = 200.0,
        symbols: int = 10,
        seed: int = 0,
        limits: Limits | None = None,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.time,
        tick: float = 0.01,
    ) -> None:
        problem = argument_problem(port=port, rate=rate, symbols=symbols,
                                   funding_interval=(limits or Limits()).funding_interval)
        if problem is not None:
            raise ValueError(" ".join(problem))
        if tick <= 0:
            raise ValueError(f"tick must be > 0 seconds, got {tick!r}")
        self.bind_host = host
        self.base_port = port
        self.rate = rate
        self.tick = tick
        self.limits = limits or Limits()
        self.credentials = credentials or Credentials()
        self.clock = clock
        self.ledger = Ledger()
        self.faults = Faults()
        self.markets = {venue: Market(venue, symbols, seed=seed) for venue in ExchangeName}
        common = dict(ledger=self.ledger, faults=self.faults, limits=self.limits, credentials=self.credentials, clock=clock)
        # The venue registry says which host serves each venue (hftdb.venues: simulator_host); the host's protocol
        # is that of the venue's adapter.
        served: dict[str, dict[ExchangeName, Market]] = {}
        adapter_of: dict[str, str] = {}
        for v in VENUES:
            served.setdefault(v.simulator_host, {})[v.name] = self.markets[v.name]
            adapter_of[v.simulator_host] = v.adapter
        self.hosts: dict[str, Host] = {
            host: _HOST_CLASSES[adapter_of[host]](markets, name=host, **common) for host, markets in served.items()
        }
        self._changed = asyncio.Event()
        for h in self.hosts.values():
            h.on_change = self._notify
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task] = set()
        self._running = asyncio.Event()
        self._stall_tasks: set[asyncio.Task] = set()
        self._state = _State.UNOPENED

    def __repr__(self) -> str:
        return f"<ExchangeSimulator {self._state.value} ports={self.ports} rate={self.rate}/s>"

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> ExchangeSimulator:
        """Bind the hosts and start streaming. Returns ``self``."""
        if self._state is not _State.UNOPENED:
            raise StateError(f"simulator already {self._state.value}")
        self._state = _State.OPENED
        try:
            for i, name in enumerate(_HOST_ORDER):
                host = self.hosts[name]
                runner = web.AppRunner(host.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, self.bind_host, self.base_port + i if self.base_port else 0)
                await site.start()
                host.port = runner.addresses[0][1]
            self._running.set()
            for market in self.markets.values():
                task = asyncio.create_task(self._generate(self.hosts[HOST_OF[market.venue]], market), name=f"sim-gen-{market.venue.value}")
                self._tasks.add(task)
        except BaseException:
            await self.close()
            raise
        logger.info("exchange simulator listening on %s", ", ".join(f"{n}={p}" for n, p in self.ports.items()))
        return self

    async def close(self) -> None:
        """Close every connection and stop serving. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        for task in self._tasks | self._stall_tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._stall_tasks, return_exceptions=True)
        for host in self.hosts.values():
            await host.close_all()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> ExchangeSimulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClosedError("simulator is closed")
        if self._state is _State.UNOPENED:
            raise StateError("simulator not started: call start() first")

    # -- addresses and state ---------------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        """Bound port per host name (binance_spot, binance_usdm, bybit, okx)."""
        return {name: h.port for name, h in self.hosts.items() if h.port is not None}

    def rest_url(self, venue: ExchangeName | str) -> str:
        """Base REST URL serving ``venue`` (``http://127.0.0.1:<port>``)."""
        self._check_open()
        return f"http://{self.bind_host}:{self.host(venue).port}"

    def ws_url(self, venue: ExchangeName | str) -> str:
        """Base websocket URL serving ``venue`` (``ws://127.0.0.1:<port>``); the adapter adds the venue's path."""
        self._check_open()
        return f"ws://{self.bind_host}:{self.host(venue).port}"

    def host(self, venue: ExchangeName | str) -> Host:
        """The host serving ``venue`` (a venue, or a host name: binance_spot, binance_usdm, bybit, okx)."""
        if isinstance(venue, str) and venue in self.hosts:
            return self.hosts[venue]
        try:
            return self.hosts[HOST_OF[ExchangeName(venue)]]
        except ValueError:
            raise ValueError(f"no venue or host named {venue!r}") from None

    def symbols(self, venue: ExchangeName | str) -> list[str]:
        """The native symbols ``venue`` lists as trading, in listing order."""
        return list(self.markets[ExchangeName(venue)].listed)

    def list_symbol(self, venue: ExchangeName | str, symbol: str, *, price: float = 1.0) -> None:
        """List ``symbol`` (native, USDT-quoted: ``ABCUSDT``, ``ABC-USDT``, ``ABC-USDT-SWAP``) on ``venue`` at
        about ``price``, or list a delisted one again: the instruments endpoint shows it trading, it can be
        subscribed, and its messages are generated from now on."""
        self.markets[ExchangeName(venue)].list_symbol(symbol, price=price)
        self._notify()

    def delist_symbol(self, venue: ExchangeName | str, symbol: str) -> None:
        """Stop trading ``symbol`` on ``venue``: the instruments endpoint shows it halted (Binance ``BREAK``,
        Bybit ``Closed``, OKX ``suspend``), new subscriptions to it are refused (unsubscribing still works), and
        no more of its messages are generated. Subscriptions already made stay until the client drops them."""
        self.markets[ExchangeName(venue)].delist_symbol(symbol)
        self._notify()

    def subscribed(self, venue: ExchangeName | str, symbol: str) -> int:
        """Subscriptions to any stream of ``symbol`` on ``venue``, over all open connections."""
        v = ExchangeName(venue)
        return sum(len(subs) for (sv, _, s), subs in self.host(v).subscribers.items() if sv is v and s == symbol)

    def connections(self, venue: ExchangeName | str | None = None) -> int:
        """Open websocket connections (to one venue's host, or to all)."""
        hosts = self.hosts.values() if venue is None else [self.host(venue)]
        return sum(len(h.sessions) for h in hosts)

    def subscriptions(self, venue: ExchangeName | str) -> int:
        """Streams of ``venue`` subscribed on open connections (a stream on two connections counts twice)."""
        v = ExchangeName(venue)
        return sum(len(subs) for (sv, _, _), subs in self.host(v).subscribers.items() if sv is v)

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever a connection or subscription changes;
        ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def reset(self) -> None:
        """Back to a clean state between tests sharing one simulator: connections dropped (aborted), faults
        cleared, ledger and request counts emptied, generation resumed."""
        for host in self.hosts.values():
            for session in list(host.sessions):
                session.abort()
            host.requests.clear()
        self.faults.http.clear()
        self.faults.gaps.clear()
        self.faults.duplicates.clear()
        self.faults.stall_until.clear()
        for event in self.faults.unstalled.values():
            event.set()
        self.ledger.clear()
        self.resume()

    def pause(self) -> None:
        """Stop generating messages (what is queued is still written)."""
        self._running.clear()

    def resume(self) -> None:
        """Generate messages again after :meth:`pause`."""
        self._running.set()

    async def quiesce(self, *, timeout: float = 10.0) -> None:
        """Pause, then wait until every frame queued so far has been written, so the ledger is final."""
        self.pause()
        async with asyncio.timeout(timeout):
            for host in self.hosts.values():
                for session in list(host.sessions):
                    await session.drained.wait()

    # -- faults ----------------------------------------------------------------------------------------

    def _hosts_of(self, venue: ExchangeName | str | None) -> list[Host]:
        return list(self.hosts.values()) if venue is None else [self.host(venue)]

    def drop_connections(self, venue: ExchangeName | str | None = None, *, graceful: bool = True) -> int:
        """Close every websocket connection (of ``venue``'s host, or all). Returns how many.

        ``graceful`` sends what is queued and a close frame (code 1001), so the ledger stays exact; otherwise
        the TCP connection is aborted and frames still in flight may be lost although counted as sent.
        """
        n = 0
        for host in self._hosts_of(venue):
            for session in list(host.sessions):
                if graceful:
                    session.close(1001, "going away")
                else:
                    session.abort()
                n += 1
        return n

    def stall(self, seconds: float, venue: ExchangeName | str | None = None) -> None:
        """Send nothing (data, pongs, pings) for ``seconds`` without closing anything; messages generated meanwhile
        are lost, never counted."""
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        loop = asyncio.get_running_loop()
        for host in self._hosts_of(venue):
            self.faults.stall_until[host.name] = loop.time() + seconds
            self.faults.unstalled_event(host.name).clear()
        task = asyncio.create_task(self._end_stall(seconds, [h.name for h in self._hosts_of(venue)]))
        self._stall_tasks.add(task)
        task.add_done_callback(self._stall_tasks.discard)

    async def _end_stall(self, seconds: float, names: list[str]) -> None:
        await asyncio.sleep(seconds)
        for name in names:
            if not self.faults.stalled(name):
                self.faults.unstalled_event(name).set()

    def send_malformed(self, venue: ExchangeName | str, count: int = 1, *, kind: str = "truncated") -> int:
        """Send ``count`` malformed frames to every connection of ``venue`` that has a subscription.

        ``kind``: ``truncated`` (a data frame cut in half), ``garbage`` (not JSON), ``bad_number`` (a data frame
        whose first price is ``1.2.3``). Returns the frames queued; :attr:`Ledger.malformed` counts those written,
        by host name.
        """
        if kind not in ("truncated", "garbage", "bad_number"):
            raise ValueError(f"kind must be truncated, garbage or bad_number, got {kind!r}")
        v = ExchangeName(venue)
        host = self.host(v)
        n = 0
        for session in list(host.sessions):
            streams = sorted(s for s in session.subs if s[0] is v)
            if not streams:
                continue
            _, channel, symbol = streams[0]
            # A frame of the current state, never counted as data: the ids it shows are not consumed.
            data, _ = host.encode(v, channel, symbol, host.now_ms(), snapshot=True)
            text = host.wrap(session, channel, symbol, data)
            for _ in range(count):
                if kind == "truncated":
                    bad = text[: len(text) // 2]
                elif kind == "garbage":
                    bad = "\x00\x01not json at all {"
                else:
                    bad = _PRICE.sub('"1.2.3"', text, count=1)
                session.send_malformed(bad)
                n += 1
        return n

    def send_raw(self, venue: ExchangeName | str, frames: Sequence[str | bytes]) -> int:
        """Send ``frames``, exactly as given and in order, to every connection of ``venue`` that has a
        subscription, between its data frames: for hostile input that :meth:`send_malformed` does not make (deep
        nesting, a NUL or a lone surrogate in a symbol, a null update id...). A ``str`` goes as a text frame, a
        ``bytes`` as a binary one. The frames are never data: :attr:`Ledger.malformed` counts those written, by
        host name. Returns the frames queued."""
        v = ExchangeName(venue)
        n = 0
        for session in list(self.host(v).sessions):
            if not any(s[0] is v for s in session.subs):
                continue
            for frame in frames:
                if not isinstance(frame, (str, bytes)):
                    raise TypeError(f"frames must be str or bytes, got {type(frame).__name__}")
                session.send_malformed(frame)
                n += 1
        return n

    def inject_gap(self, venue: ExchangeName | str, *, symbol: str | None = None, size: int = 1) -> None:
        """Skip ``size`` update ids before the next book update of ``symbol`` (or of any subscribed symbol)."""
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size!r}")
        self.faults.gaps.setdefault(ExchangeName(venue), deque()).append((symbol, size))

    def inject_duplicate(self, venue: ExchangeName | str, *, symbol: str | None = None) -> None:
        """Send the next book update of ``symbol`` (or of any subscribed symbol) twice."""
        self.faults.duplicates.setdefault(ExchangeName(venue), deque()).append(symbol)

    def http_error(
        self,
        venue: ExchangeName | str,
        status: int,
        *,
        path: str | None = None,
        count: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``count`` requests to ``venue``'s host (whose path starts with ``path``) with ``status``
        and the venue's error body, with a ``Retry-After`` header if given. Websocket upgrades count too."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status, got {status!r}")
        if count <= 0:
            raise ValueError(f"count must be > 0, got {count!r}")
        self.faults.http.setdefault(self.host(venue).name, []).append(HttpFault(status, path, count, retry_after))

    def http_body(self, venue: ExchangeName | str, body: str | bytes, *, path: str, count: int = 1) -> None:
        """Answer the next ``count`` requests to ``venue``'s host whose path starts with ``path`` with HTTP 200 and
        ``body`` exactly as given (hostile REST input: deep nesting, wrong types, a body that is not JSON)."""
        if count <= 0:
            raise ValueError(f"count must be > 0, got {count!r}")
        raw = body.encode() if isinstance(body, str) else bytes(body)
        self.faults.http.setdefault(self.host(venue).name, []).append(HttpFault(200, path, count, None, raw))

    # -- generation ------------------------------------------------------------------------------------

    async def _generate(self, host: Host, market: Market) -> None:
        loop = asyncio.get_running_loop()
        venue = market.venue
        books, funding = host.channels[venue]
        symbols = market.listed  # changed in place by listings: read at each draw
        interval = self.limits.funding_interval
        start = loop.time()
        due = {s: start + interval * (k + 1) / len(symbols) for k, s in enumerate(symbols)} if funding else {}
        version = market.version
        carry = 0.0
        last = start
        rand = market.rng.random
        take_gap, take_duplicate = self.faults.take_gap, self.faults.take_duplicate
        gaps, duplicates = self.faults.gaps, self.faults.duplicates
        publish = host.publish
        streams: dict[str, tuple[tuple[ExchangeName, str, str], ...]] = {}  # symbol -> its book streams
        while True:
            await asyncio.sleep(self.tick)
            if not self._running.is_set():
                await self._running.wait()
                last = loop.time()
                continue
            now = loop.time()
            carry = min(carry + (now - last) * self.rate, max(1.0, self.rate))  # no burst after a stalled loop
            last = now
            n = int(carry)
            carry -= n
            now_ms = host.now_ms()
            subscribers = host.subscribers
            if version != market.version:
                version = market.version
                if funding:
                    # A new listing's first funding update is one interval away; a delisted one's never comes.
                    due = {s: due.get(s, now + interval) for s in symbols}
            if not symbols:
                continue
            count = len(symbols)
            step = market.step_book
            for _ in range(n):
                symbol = symbols[int(rand() * count)]
                keys = streams.get(symbol)
                if keys is None:
                    keys = streams[symbol] = tuple((venue, ch, symbol) for ch in books)
                observed = False
                for key in keys:
                    if key in subscribers:
                        observed = True
                        break
                if not observed:
                    step(symbol)
                    continue
                gap = take_gap(venue, symbol) if gaps else 0
                dup = take_duplicate(venue, symbol) if duplicates else False
                step(symbol, skip=gap)
                for ch in books:
                    publish(venue, ch, symbol, now_ms, gap=gap, duplicate=dup)
            for symbol, when in due.items():
                if when <= now:
                    due[symbol] = max(when + interval, now)
                    market.step_funding(symbol, now_ms)
                    for ch in funding:
                        host.publish(venue, ch, symbol, now_ms, gap=0, duplicate=False)


"""What every exchange adapter shares: the :class:`Sink` it writes to, its counters, and the adapter base class.

An adapter turns one venue's REST and websocket APIs into calls on a :class:`Sink`: symbols are synced over
REST, quotes and funding stream over websockets (:mod:`hftdb.exchanges.runner` runs the connections), balances
are polled over signed REST, and funding can be polled over REST where the websocket does not give it
(:meth:`ExchangeAdapter.run_funding_poller`). The venue modules (``binance.py``, ``bybit.py``, ``okx.py``) only say how their
venue names streams, subscribes, pings, signs and paginates.

Adapters depend on nothing but :class:`Sink`, so they run against a :class:`~hftdb.manager.DatabaseManager`, or
against any object with the same seven methods.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from ..errors import (ClosedError, DatabaseUnavailableError, ExchangeError, ExchangeHTTPError, FrameError,
                      SignatureError, StateError)
from ..models import Balance, Exchange, ExchangeName, FundingRate, Symbol, now_us
from ..venues import VENUES, spec
from .connection import Pacer
from .intake import exchange_time_ok
from ..rejects import Rejects
from .parsing import name_ok, newer_funding
from .rest import RestClient
from .runner import StreamRunner
from .signing import Credentials
from .sink import Sink, SymbolIds
from .stream import Backoff, FeedStats

__all__ = ["ExchangeAdapter", "REFUSED_MAX_WAIT_S", "parse_rest"]

logger = logging.getLogger(__name__)


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


_DEFAULT = object()

#: the statuses of a listed symbol that is not streamed
_IDLE = frozenset({"halted", "delisted"})
#: the longest wait between balance polls while the venue keeps refusing the signature (seconds)
REFUSED_MAX_WAIT_S = 300.0


class ExchangeAdapter:
    """Base class of the venue adapters. Construct a venue's subclass, ``start()`` it (or ``async with``), then
    run :meth:`run_streams`, :meth:`run_symbol_sync` and :meth:`run_balance_poller` in your task group, or
    :meth:`run` for all three.

    ``symbols`` are native symbols to stream (``None``: every trading symbol of the last :meth:`sync_symbols`);
    ``channels`` are the venue's native channel names (default: the book ticker, plus funding on perpetuals).
    ``clock`` (wall seconds) stamps signed requests and measures connection age, so tests can move it.
    ``stale_after``: seconds without any frame before a connection is replaced; ``ping_interval``: seconds
    between the venue's keep-alive messages. Limits default to the venue's documented ones.
    """

    #: the venues this class serves
    venues: ClassVar[tuple[ExchangeName, ...]] = ()
    #: every venue's REST and websocket base URLs and default channels: the venue registry's (hftdb.venues),
    #: which a venue module never writes out
    default_rest_url: ClassVar[Mapping[ExchangeName, str]] = MappingProxyType({v.name: v.rest_url for v in VENUES})
    default_ws_url: ClassVar[Mapping[ExchangeName, str]] = MappingProxyType({v.name: v.ws_url for v in VENUES})
    default_channels: ClassVar[Mapping[ExchangeName, tuple[str, ...]]] = MappingProxyType(
        {v.name: v.default_channels for v in VENUES})
    #: the venue's own limits; ``None`` where it documents none
    max_topics_per_connection: ClassVar[int] = 1024
    max_topic_chars_per_connection: ClassVar[int | None] = None
    max_topics_per_message: ClassVar[int] = 200
    max_message_bytes: ClassVar[int | None] = None
    #: seconds between two control messages on one connection, and between two connection attempts
    control_interval: ClassVar[float] = 0.0
    connect_interval: ClassVar[float] = 0.0
    #: "interval": ping every ``ping_interval``; "idle": ping after ``ping_interval`` without a frame
    ping_mode: ClassVar[str] = "idle"
    default_ping_interval: ClassVar[float] = 20.0
    default_stale_after: ClassVar[float] = 60.0
    default_max_connection_age: ClassVar[float | None] = None
    #: whether update ids of the book channel are consecutive (so that a jump is a gap)
    consecutive_ids: ClassVar[bool] = False
    #: seconds between two REST funding requests (the venue's rate limit)
    funding_request_interval: ClassVar[float] = 0.0

    def __init__(
        self,
        venue: ExchangeName | str,
        sink: Sink,
        *,
        rest_url: str | None = None,
        ws_url: str | None = None,
        symbols: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
        credentials: Credentials | None = None,
        secrets_file: str | Path | None = None,
        account: str = "default",
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        stale_after: float | None = None,
        ping_interval: float | None = None,
        max_connection_age: float | None | object = _DEFAULT,
        reconnect: Backoff | None = None,
        max_reconnect_attempts: int | None = None,
        max_topics_per_connection: int | None = None,
        max_topics_per_message: int | None = None,
        count_gaps: bool | None = None,
        subscribe_timeout: float = 10.0,
        reject_log_interval: float = 60.0,
    ) -> None:
        try:
            venue = ExchangeName(venue)
        except ValueError:
            raise ValueError(f"venue must be one of {[v.value for v in ExchangeName]}, got {venue!r}") from None
        if venue not in self.venues:
            raise ValueError(f"venue: {type(self).__name__} serves {[v.value for v in self.venues]}, not {venue.value!r}")
        for name, value in (("timeout", timeout), ("subscribe_timeout", subscribe_timeout)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        for name, value in (("stale_after", stale_after), ("ping_interval", ping_interval)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if symbols is not None and (isinstance(symbols, str) or not all(isinstance(s, str) and s for s in symbols)):
            raise ValueError(f"symbols must be a sequence of non-empty native symbols, got {symbols!r}")
        channels = tuple(channels) if channels is not None else self.default_channels[venue]
        if not channels:
            raise ValueError("channels must name at least one channel")
        self.venue = venue
        self.sink = sink
        self.rest_url = (rest_url or self.default_rest_url[venue]).rstrip("/")
        self.ws_url = (ws_url or self.default_ws_url[venue]).rstrip("/")
        self.symbols = tuple(symbols) if symbols is not None else None
        self.channels = channels
        self.account = account
        self.clock = clock
        self.timeout = timeout
        self.stale_after = stale_after or self.default_stale_after
        self.ping_interval = ping_interval or self.default_ping_interval
        self.max_connection_age = (
            self.default_max_connection_age if max_connection_age is _DEFAULT else max_connection_age
        )
        self.reconnect = reconnect or Backoff()
        self.max_reconnect_attempts = max_reconnect_attempts
        self.topics_per_connection = min(max_topics_per_connection or self.max_topics_per_connection, self.max_topics_per_connection)
        self.topics_per_message = min(max_topics_per_message or self.max_topics_per_message, self.max_topics_per_message)
        self.count_gaps = self.consecutive_ids if count_gaps is None else count_gaps
        self.subscribe_timeout = subscribe_timeout
        self.rejects = Rejects(venue.value, interval=reject_log_interval)
        self.stats = FeedStats(venue.value, self.rejects)
        self._credentials = credentials
        self._secrets_file = secrets_file
        self._rest = RestClient(self.rest_url, name=venue.value, backoff=self.reconnect, timeout=timeout,
                                retry_statuses=self.rest_retry_statuses)
        self._synced: list[Symbol] | None = None
        self._runner: StreamRunner | None = None
        self._rest_funding_times: dict[str, int] = {}
        self._idle: dict[str, str] = {}  # given symbol -> its status, while the listing says it is not trading
        self._refused: dict[str, tuple[str, str]] = {}  # topic -> (its symbol, the venue's refusal)
        self._changed = asyncio.Event()
        self._state = _State.UNOPENED

    rest_retry_statuses: ClassVar[frozenset[int]] = frozenset()

    def __repr__(self) -> str:
        n = "synced" if self.symbols is None else len(self.symbols)
        return f"<{type(self).__name__} {self.venue.value} {self._state.value} symbols={n} channels={list(self.channels)}>"

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the REST session and load credentials (environment, then ``secrets_file``) if none were given."""
        if self._state is not _State.UNOPENED:
            raise StateError(f"{self!r} cannot be started twice")
        if self._credentials is None:
            self._credentials = Credentials.load(self.venue, secrets_file=self._secrets_file)
        await self._rest.start()
        self._state = _State.OPENED

    async def close(self) -> None:
        """Close the REST session. Idempotent. Cancel the ``run_*`` tasks first: they close their connections."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._rest.close()
        self.rejects.flush()

    async def __aenter__(self) -> ExchangeAdapter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClosedError(f"{self!r} is closed")
        if self._state is _State.UNOPENED:
            raise StateError(f"{self!r} not started: call start() or use 'async with'")

    # -- waiting on counters (for tests and health checks) ---------------------------------------------

    def notify(self) -> None:
        """Wake :meth:`wait_until` callers: the counters changed."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[FeedStats], bool], *, timeout: float) -> None:
        """Wait until ``predicate(self.stats)`` holds; raise ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate(self.stats):
                await self._changed.wait()

    def status_line(self) -> str:
        """One line of counters for a periodic status log."""
        return self.stats.status_line()

    # -- symbols ---------------------------------------------------------------------------------------

    async def fetch_symbols(self, exchange_id: int, *, timeout: float | None = None) -> list[Symbol]:
        """Every instrument the venue lists, as :class:`~hftdb.models.Symbol` records of ``exchange_id``."""
        self._check_open()
        path, query = self.symbols_request()
        body = await self._rest.get(path, query, timeout=timeout)
        parser = self.new_parser()
        return self.listed(parser, parse_rest(parser.parse_symbols, body, exchange_id, now_us()))

    def listed(self, parser: Any, symbols: list[Symbol]) -> list[Symbol]:
        """``symbols`` without those whose text cannot be a symbol (``bad_symbol``: a NUL, a control character...),
        each counted as a reject: such text must not reach the database. The listing itself says what the venue's
        market holds, so nothing in it is refused as ``wrong_market``."""
        out = []
        for symbol in symbols:
            try:
                parser.check_symbol(symbol.symbol)
            except FrameError as exc:
                if exc.reason == "bad_symbol":
                    self.rejects.add_error(exc)
                    continue
            out.append(symbol)
        return out

    async def sync_symbols(self, *, timeout: float | None = None) -> tuple[int, int]:
        """Fetch the venue's instruments and upsert them through the sink; return the sink's counts.

        While :meth:`run_streams` is running, the running streams follow the listing: with ``symbols=None``, new
        trading symbols are subscribed (on connections with room left, or new ones); with given ``symbols``, a
        given symbol the listing shows halted or delisted is unsubscribed (one WARNING), and subscribed again
        once a later sync lists it trading. Either way a topic the venue refused (:meth:`refuse`) is tried again
        when its symbol lists as trading."""
        self._check_open()
        exchange = await self.sink.insert_exchange(self.exchange_record())
        if exchange.id is None:
            raise ExchangeError(f"{self.venue.value}: the sink returned the exchange without an id")
        symbols = await self.fetch_symbols(exchange.id, timeout=timeout)
        result = await self.sink.sync_symbols(self.venue, symbols)
        self._synced = symbols
        logger.info("%s: synced %d symbols: %s", self.venue.value, len(symbols), result)
        self._follow_listing()
        runner = self._runner
        if runner is not None and runner.running:
            await runner.update(self.topics())
            self.notify()
        return result

    def _follow_listing(self) -> None:
        # Given symbols the listing shows not trading are left out of topics() (logged when that changes); refused
        # topics whose symbol lists as trading are tried again.
        venue = self.venue.value
        status = {s.symbol: s.status for s in self._synced or ()}
        if self.symbols is not None:
            idle = {s: status.get(s, "delisted") for s in self.symbols if status.get(s, "delisted") in _IDLE}
            for symbol, state in idle.items():
                if symbol not in self._idle:
                    logger.warning("%s: %s is %s: not streamed until a symbol sync lists it trading again", venue,
                                   symbol, state)
            for symbol in self._idle.keys() - idle.keys():
                logger.info("%s: %s is listed trading again: streamed again", venue, symbol)
            self._idle = idle
        for topic, (symbol, _) in list(self._refused.items()):
            if status.get(symbol) not in _IDLE and symbol in status:
                logger.info("%s: %s lists as trading: subscribing %s again", venue, symbol, topic)
                del self._refused[topic]

    def refused_topics(self, refusal: str, topics: Sequence[str]) -> list[str]:
        """Those of ``topics`` that the venue's refusal of a subscription (its error text, as the parser gives it)
        names. The venue modules override it where the text does not quote the topic as sent (OKX)."""
        return [t for t in topics if re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", refusal)]

    def refuse(self, topics: Sequence[str], refusal: str) -> None:
        """Stop streaming ``topics``, which the venue refused to subscribe: logged once, shown by
        :attr:`not_streamed`, and tried again when a symbol sync lists their symbol as trading."""
        by_topic = {self.topic(s, c): s for s in self._given_or_synced() for c in self.channels}
        for topic in topics:
            self._refused[topic] = (by_topic.get(topic, ""), refusal)
        logger.warning("%s: the venue refuses %s (%s): not streamed until a symbol sync lists %s trading; the "
                       "other topics stream on", self.venue.value, ", ".join(topics), refusal,
                       "it" if len(topics) == 1 else "them")
        self.notify()

    @property
    def not_streamed(self) -> dict[str, str]:
        """What this adapter would stream but does not, and why: a given symbol the listing shows halted or
        delisted, a topic the venue refused."""
        out = {symbol: f"{state} on {self.venue.value}" for symbol, state in self._idle.items()}
        out.update((topic, f"refused: {refusal}") for topic, (_, refusal) in self._refused.items())
        return out

    @property
    def streamed_topics(self) -> list[str]:
        """The topics the running streams carry (or are subscribing); empty when they are not running."""
        runner = self._runner
        return runner.topics if runner is not None and runner.running else []

    async def run_symbol_sync(self, interval: float, *, timeout: float | None = None) -> None:
        """Sync symbols now and every ``interval`` seconds until cancelled. A failed sync (the venue's REST, or
        the sink's database away: :class:`~hftdb.errors.DatabaseUnavailableError`) is counted (``rest_errors``)
        and logged, and tried again sooner, with back-off up to ``interval``; the streams go on meanwhile, so a
        database outage never cuts them. While failures repeat, they are logged at the 1st, 2nd, 4th, 8th...
        failure in a row, not on every try."""
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        failures = 0
        while True:
            wait = interval
            try:
                await self.sync_symbols(timeout=timeout)
            except (ExchangeError, FrameError, DatabaseUnavailableError) as exc:
                self.stats.rest_errors += 1
                self.notify()
                failures += 1
                wait = min(interval, self.reconnect.delay(failures - 1))
                if failures & (failures - 1) == 0:  # a power of two
                    logger.warning("%s: symbol sync failed (%d in a row; the streams go on; next try in %.1fs): %s",
                                   self.venue.value, failures, wait, exc)
            else:
                if failures:
                    logger.info("%s: symbol sync works again after %d failures", self.venue.value, failures)
                failures = 0
            await asyncio.sleep(wait)

    def exchange_record(self) -> Exchange:
        """The :class:`~hftdb.models.Exchange` row of this venue."""
        market = "spot" if self.venue.value.endswith("_spot") else "derivatives"
        return Exchange(name=self.venue.value, market=market)

    # -- streams ---------------------------------------------------------------------------------------

    def topics(self, symbols: Sequence[str] | None = None) -> list[str]:
        """The venue's stream names for ``symbols`` and its channels; by default this adapter's: its symbols (less
        those the last sync lists halted or delisted) or every trading symbol, less the topics the venue refused."""
        if symbols is not None:
            return [self.topic(symbol, channel) for symbol in symbols for channel in self.channels]
        refused = self._refused
        return [t for s in self._stream_symbols() for c in self.channels if (t := self.topic(s, c)) not in refused]

    def _given_or_synced(self) -> Sequence[str]:
        if self.symbols is not None:
            return self.symbols
        return [s.symbol for s in self._synced or ()]

    def _stream_symbols(self) -> Sequence[str]:
        if self.symbols is not None:
            return [s for s in self.symbols if s not in self._idle]
        if self._synced is None:
            raise StateError(f"{self.venue.value}: no symbols given and none synced: call sync_symbols() first")
        return [s.symbol for s in self._synced if s.status == "trading"]

    def plan_connections(self, topics: Sequence[str]) -> list[tuple[str, ...]]:
        """Split ``topics`` into the connections that will carry them, within the venue's limits."""
        shards: list[tuple[str, ...]] = []
        current: list[str] = []
        chars = 0
        limit_chars = self.max_topic_chars_per_connection
        for topic in topics:
            full = len(current) >= self.topics_per_connection
            if limit_chars is not None and chars + len(topic) > limit_chars:
                full = True
            if full and current:
                shards.append(tuple(current))
                current, chars = [], 0
            current.append(topic)
            chars += len(topic)
        if current:
            shards.append(tuple(current))
        return shards

    def batches(self, topics: Sequence[str]) -> list[list[str]]:
        """Split one connection's topics into subscribe requests, within the venue's per-message limits."""
        out: list[list[str]] = []
        current: list[str] = []
        size = 0
        for topic in topics:
            cost = len(topic) + 40  # JSON quoting and separators, generously
            if current and (len(current) >= self.topics_per_message or (self.max_message_bytes and size + cost > self.max_message_bytes)):
                out.append(current)
                current, size = [], 0
            current.append(topic)
            size += cost
        if current:
            out.append(current)
        return out

    async def run_streams(self) -> None:
        """Stream every topic until cancelled: as many connections as the limits need, each reconnected with
        back-off when lost or silent, and replaced before the venue's age limit. Raises
        :class:`~hftdb.errors.ExchangeError` only after ``max_reconnect_attempts`` consecutive failures."""
        self._check_open()
        if self.symbols is None and self._synced is None:
            await self.sync_symbols()
        runner = self._runner = StreamRunner(self)
        try:
            await runner.run()
        finally:
            if self._runner is runner:
                self._runner = None

    # -- balances --------------------------------------------------------------------------------------

    def _require_credentials(self) -> Credentials:
        if self._credentials is None:
            raise ExchangeError(
                f"{self.venue.value}: no API credentials (set {self.venue.value.upper()}_API_KEY/_API_SECRET, "
                "or pass credentials= or secrets_file=)"
            )
        return self._credentials

    async def fetch_balances(self, *, timeout: float | None = None) -> list[Balance]:
        """One signed balance request. Raises :class:`~hftdb.errors.SignatureError` if the venue refuses it."""
        self._check_open()
        credentials = self._require_credentials()
        path, query = self.balances_request()
        try:
            body = await self._rest.get(path, query, signer=lambda p, q: self.sign(credentials, p, q), timeout=timeout)
        except ExchangeHTTPError as exc:
            if self.is_auth_failure(exc.status, exc.body):
                raise SignatureError(str(exc), status=exc.status, body=exc.body) from exc
            raise
        text = body[:2000].decode("utf-8", "replace")
        if self.is_auth_failure(200, text):
            raise SignatureError(f"{self.venue.value} GET {path}: refused: {text[:300]}", status=200, body=text)
        balances = []
        for row in parse_rest(self.new_parser().parse_balances, body, now_us(), self.account):
            if name_ok(row.asset):
                balances.append(row)
            else:  # the row alone: the other assets of the answer are stored
                self.rejects.add("bad_symbol", f"balance asset {row.asset!r:.80}")
        return balances

    async def poll_balances(self, *, timeout: float | None = None) -> int:
        """Fetch balances and hand them to the sink; return how many the sink accepted."""
        rows = await self.fetch_balances(timeout=timeout)
        accepted = await self.sink.insert_balance_snapshots(rows)
        self.stats.balance_rows += len(rows)
        self.notify()
        return accepted

    async def run_balance_poller(self, interval: float, *, timeout: float | None = None) -> None:
        """Poll balances now and every ``interval`` seconds until cancelled. A refused signature or a failed
        request is counted (``rest_errors``) and logged, and polling goes on. A refused signature is not fixed by
        asking again (a wrong key or secret, a clock far off): while refusals repeat, the wait doubles up to
        :data:`REFUSED_MAX_WAIT_S` (or ``interval``, if longer) and the error is logged at the 1st, 2nd, 4th, 8th...
        refusal in a row, not on every poll."""
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        refused = 0
        while True:
            wait = interval
            try:
                await self.poll_balances(timeout=timeout)
            except SignatureError as exc:
                self.stats.rest_errors += 1
                self.notify()
                refused += 1
                wait = min(interval * 2 ** (refused - 1), max(interval, REFUSED_MAX_WAIT_S))
                if refused & (refused - 1) == 0:  # a power of two
                    logger.error("%s: balance request refused (check the API key and clock; %d in a row, next "
                                 "try in %.0fs): %s", self.venue.value, refused, wait, exc)
            except FrameError as exc:  # a body that does not parse: counted by reason, logged rate-limited
                self.stats.rest_errors += 1
                self.rejects.add_error(exc)
                self.notify()
            except ExchangeError as exc:
                self.stats.rest_errors += 1
                self.notify()
                logger.warning("%s: balance poll failed: %s", self.venue.value, exc)
            else:
                if refused:
                    logger.info("%s: balance requests accepted again after %d refusals", self.venue.value, refused)
                refused = 0
            await asyncio.sleep(wait)

    # -- funding over REST ------------------------------------------------------------------------------

    @property
    def has_funding(self) -> bool:
        """Whether the venue has funding rates (its perpetuals) that REST polling can fetch."""
        return bool(self.funding_requests(["_"]))

    @property
    def funding_channels(self) -> tuple[str, ...]:
        """The venue's channels that carry funding (its ``funding_channels`` in :data:`hftdb.venues.VENUES`)."""
        venue = spec(self.venue)
        return venue.funding_channels if venue is not None else ()

    @property
    def streams_funding(self) -> bool:
        """Whether the streams subscribe a channel that carries funding."""
        return any(channel in self.funding_channels for channel in self.channels)

    async def fetch_funding(self, *, timeout: float | None = None) -> list[FundingRate]:
        """The current funding rate of every streamed symbol, over REST (paced within the venue's limit)."""
        self._check_open()
        symbols = self._stream_symbols()
        requests = self.funding_requests(symbols)
        if not requests:
            raise ExchangeError(f"{self.venue.value} has no funding rates")
        wanted = set(symbols)
        parser = self.new_parser()
        pacer = Pacer(self.funding_request_interval)
        rows: list[FundingRate] = []
        for path, query in requests:
            await pacer.wait()
            body = await self._rest.get(path, query, timeout=timeout)
            try:
                parsed = parse_rest(parser.parse_funding, body, now_us())
            except FrameError as exc:  # this body alone is lost: the other requests' rows are kept
                self.stats.rest_errors += 1
                self.rejects.add_error(exc)
                continue
            for r in parsed:
                if r.symbol not in wanted:
                    continue
                if not exchange_time_ok(r.exchange_ts):  # it would pass admission as a duplicate, or block it
                    self.rejects.add("bad_time", f"{r.symbol}: exchange time {r.exchange_ts} µs")
                    continue
                rows.append(r)
        return rows

    async def poll_funding(self, *, timeout: float | None = None) -> int:
        """Fetch funding over REST and hand the rows not already stored (same or older exchange time per symbol,
        whether streamed or polled) to the sink; return how many the sink accepted."""
        rows = await self.fetch_funding(timeout=timeout)
        runner = self._runner
        if runner is not None and runner.running:
            _, rows = runner.admit([], rows)  # shared with the streams: a streamed update is not stored twice
        fresh = newer_funding(rows, self._rest_funding_times, self.stats)
        accepted = await self.sink.insert_funding_rates(fresh) if fresh else 0
        self.stats.rest_funding_rows += len(fresh)
        self.notify()
        return accepted

    async def run_funding_poller(self, interval: float, *, timeout: float | None = None) -> None:
        """Poll funding over REST every ``interval`` seconds wherever the websocket does not give it: always when
        no funding channel is streamed; when one is, only after an ``interval`` in which the streams delivered
        no funding row (the channel is down). Failures are counted (``rest_errors``) and logged; polling goes on
        until cancelled."""
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if not self.has_funding:
            raise ValueError(f"{self.venue.value} has no funding rates to poll")
        venue = self.venue.value
        while True:
            if self.streams_funding:
                before = self.stats.funding_rows
                await asyncio.sleep(interval)
                if self.stats.funding_rows != before:
                    continue  # the websocket delivers funding
                logger.warning("%s: no funding over the websocket for %.0fs: polling REST", venue, interval)
            try:
                await self.poll_funding(timeout=timeout)
            except FrameError as exc:
                self.stats.rest_errors += 1
                self.rejects.add_error(exc)
                self.notify()
            except ExchangeError as exc:
                self.stats.rest_errors += 1
                self.notify()
                logger.warning("%s: funding poll failed: %s", venue, exc)
            if not self.streams_funding:
                await asyncio.sleep(interval)

    async def run(self, *, symbol_sync_interval: float | None = 3600.0, balance_interval: float | None = None,
                  funding_interval: float | None = None) -> None:
        """Sync symbols, then run the streams, the periodic symbol sync and (given intervals) the balance poller
        and the REST funding fallback together until cancelled or one of them fails."""
        await self.sync_symbols()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.run_streams(), name=f"{self.venue.value}-streams")
            if symbol_sync_interval is not None:
                tg.create_task(self._sync_symbols_later(symbol_sync_interval), name=f"{self.venue.value}-symbols")
            if balance_interval is not None:
                tg.create_task(self.run_balance_poller(balance_interval), name=f"{self.venue.value}-balances")
            if funding_interval is not None and self.has_funding:
                tg.create_task(self.run_funding_poller(funding_interval), name=f"{self.venue.value}-funding")

    async def _sync_symbols_later(self, interval: float) -> None:
        await asyncio.sleep(interval)
        await self.run_symbol_sync(interval)

    # -- venue specifics (overridden by the venue modules) ---------------------------------------------

    def symbol_ids(self) -> Callable[[str, str], int | None] | None:
        """The sink's lookup of cached symbol ids for this adapter's parsers (a :class:`SymbolIds` sink's
        ``resolve_symbol_id``), or None: the sink then resolves the rows' symbols itself."""
        return self.sink.resolve_symbol_id if isinstance(self.sink, SymbolIds) else None

    def new_parser(self) -> Any:
        """A parser of this venue's payloads (one per connection: some hold book state)."""
        raise NotImplementedError

    def symbols_request(self) -> tuple[str, str]:
        """Path and query of the instruments request."""
        raise NotImplementedError

    def balances_request(self) -> tuple[str, str]:
        """Path and (unsigned) query of the balances request."""
        raise NotImplementedError

    def sign(self, credentials: Credentials, path: str, query: str) -> tuple[str, dict[str, str]]:
        """The final query and the headers of a signed request (called before each attempt)."""
        raise NotImplementedError

    def funding_requests(self, symbols: Sequence[str]) -> list[tuple[str, str]]:
        """Path and query of each REST request giving the current funding of ``symbols`` (rows of other symbols
        are dropped); empty on a venue without funding."""
        return []

    def is_auth_failure(self, status: int, body: str) -> bool:
        """Whether an answer means the venue refused our key, signature or timestamp."""
        raise NotImplementedError

    def ws_endpoint(self) -> str:
        """The URL each stream connection opens."""
        raise NotImplementedError

    def topic(self, symbol: str, channel: str) -> str:
        """The venue's name of one stream."""
        raise NotImplementedError

    def subscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """The subscribe requests for one connection's topics, each with the number of acks it will get."""
        raise NotImplementedError

    def unsubscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """The unsubscribe requests for ``topics`` of one connection, each with the number of acks it will get."""
        raise NotImplementedError

    def ping_message(self, next_id: Callable[[], int]) -> str | None:
        """The venue's application-level keep-alive, or None if the protocol-level ping frames suffice."""
        return None

    @property
    def drops_unsequenced_books(self) -> bool:
        """Whether book rows without an update id are dropped: true where a sequenced book channel already gives
        the same quotes (Bybit's ``tickers`` repeats ``orderbook.1``'s best bid and ask)."""
        return False


def parse_rest(parse: Callable[..., Any], body: bytes, *args: Any) -> Any:
    """``parse(body, *args)``, with any exception but a :class:`FrameError` turned into one (``too_deep`` or
    ``parser_error``), so that a hostile body is a counted reject of the poll, never the end of the poller."""
    try:
        return parse(body, *args)
    except FrameError:
        raise
    except RecursionError as exc:
        raise FrameError("JSON nested too deep", reason="too_deep") from exc
    except Exception as exc:
        logger.debug("REST body handling raised", exc_info=exc)
        raise FrameError(f"{type(exc).__name__}: {exc}", reason="parser_error") from exc

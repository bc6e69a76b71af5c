"""Bybit v5 spot and linear payloads into hftdb records.

Public websocket topics, one typed decode for all of them:

* ``orderbook.{depth}.{symbol}``: a ``snapshot``, then ``delta``s of ``[price, size]`` levels where size ``"0"``
  removes the level. Level 1 keeps just the top of each side: a delta's non-zero level replaces it, and a
  zero-size level removes it only if it is the level held (a stale removal must not erase a newer top). Deeper
  books are kept in full per side and the best level is taken from them. ``u`` is the update id; Bybit restarts
  it (``u=1``, with a snapshot) when its service restarts, which is why snapshots carry ``control="snapshot"``.
* ``tickers.{symbol}``: a ``snapshot``, then ``delta``s holding only the fields that changed. Deltas are merged
  into the last snapshot of the symbol; a ``BookTicker`` is emitted when a message touched the best bid/ask and
  both sides are known, a ``FundingRate`` when it touched the funding fields and the rate is known. Spot tickers
  carry neither (spot quotes come from ``orderbook.1``).
* private ``wallet``: balances per coin.

All Bybit times are milliseconds; ``exchange_ts`` is the message's ``ts`` (``creationTime`` on private topics).
The parser holds per-topic state, so use one instance per connection and call :meth:`BybitParser.reset` when
that connection is re-established.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from ..errors import FrameError
from ..models import MIN_TS_US, Balance, BookTicker, ExchangeName, FundingRate, Symbol, SymbolKind, SymbolStatus
from ..venues import served_by
from .parsing import (
    CONTROL_ERROR,
    CONTROL_IGNORED,
    CONTROL_LOGIN,
    CONTROL_NOTICE,
    CONTROL_PONG,
    CONTROL_SNAPSHOT,
    CONTROL_SUBSCRIBED,
    CONTROL_UNSUBSCRIBED,
    FloatCache,
    VenueParser,
    Parsed,
    decode_any,
    too_deep,
    bad_update_id,
    ms_to_us,
    to_decimal,
    to_float,
    validation_error,
)

__all__ = ["BybitParser"]

_VENUES = served_by("BybitParser")
# Inverse perpetuals (BTCUSD) and inverse futures (BTCUSDH25: a month code and a year) end so.
_INVERSE = re.compile(r"USD(?:[FGHJKMNQUVXZ]\d\d)?$")


class _Data(msgspec.Struct, gc=False):
    # The data object of both orderbook and tickers topics, merged so that one decode serves both. Ticker
    # fields default to None because in a delta "absent" means "unchanged", unlike "" which means "no value".
    s: str = ""
    b: list[list[str]] | None = None
    a: list[list[str]] | None = None
    u: int | None = None
    symbol: str = ""
    bid1Price: str | None = None
    bid1Size: str | None = None
    ask1Price: str | None = None
    ask1Size: str | None = None
    fundingRate: str | None = None
    nextFundingTime: str | None = None
    markPrice: str | None = None
    indexPrice: str | None = None


class _Coin(msgspec.Struct, gc=False):
    coin: str
    walletBalance: str = ""
    locked: str = ""
    free: str = ""


class _Wallet(msgspec.Struct, gc=False):
    coin: list[_Coin]
    accountType: str = ""


class _Frame(msgspec.Struct, gc=False):
    topic: str = ""
    type: str = ""
    ts: int = 0
    creationTime: int = 0
    data: _Data | list[_Wallet] | None = None
    # Command responses: {"success": true, "ret_msg": "", "op": "subscribe", ...}, {"op": "pong", ...}.
    op: str = ""
    success: bool | None = None
    ret_msg: str = ""


_FRAME_DECODER = msgspec.json.Decoder(_Frame)


# The hot path: an ``orderbook.1`` delta, levels decoded as float pairs in C (``strict=False`` turns "1.5"
# into the same correctly rounded float as float("1.5"); a test compares it with the general decode). Any frame
# that does not decode this way (another topic, a malformed level) takes the general decode, which names the
# reason. Bybit sends compact JSON, the topic first: a frame that does not start with an ``orderbook.1.`` topic
# is not tried here (a tickers frame would cost a failed decode; a frame spelled otherwise just goes general).
class _Level(msgspec.Struct, gc=False, array_like=True):
    # A ``[price, size]`` pair as a struct: decoded ~2x cheaper than a tuple (which the collector tracks).
    price: float
    size: float


class _Level1Data(msgspec.Struct, gc=False):
    s: str
    b: list[_Level]
    a: list[_Level]
    # An id outside 0 to 2**63 - 1 fails the decode (checked in C): the general decode rejects it, bad_update_id.
    u: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class _Level1(msgspec.Struct, gc=False, kw_only=True):
    topic: str
    type: str
    ts: Annotated[int, msgspec.Meta(le=((1 << 63) - 1) // 1000)] = 0  # past int8 in µs: the general decode (bad_time)
    data: _Level1Data


_LEVEL1_DECODER = msgspec.json.Decoder(_Level1, strict=False)
_MIN_MS = MIN_TS_US // 1000  # a time in ms below this is corrupt (before 2009)
_LEVEL1_PREFIX = b'{"topic":"orderbook.1.'
_LEVEL1_PREFIX_STR = _LEVEL1_PREFIX.decode()

_STORED_TOPICS = ("orderbook.", "tickers.", "wallet")
# Private topics an adapter may subscribe to without hftdb storing them.
_IGNORED_TOPICS = frozenset({"order", "execution", "execution.fast", "position", "greeks", "dcp"})

T = TypeVar("T")


class _Response(msgspec.Struct, Generic[T], gc=False):
    retCode: int
    result: T
    retMsg: str = ""
    time: int = 0


class _PriceFilter(msgspec.Struct, gc=False):
    tickSize: str = ""


class _LotSizeFilter(msgspec.Struct, gc=False):
    qtyStep: str = ""  # derivatives
    basePrecision: str = ""  # spot


class _Instrument(msgspec.Struct, gc=False):
    symbol: str
    status: str = ""
    contractType: str = ""
    baseCoin: str | None = None
    quoteCoin: str | None = None
    priceFilter: _PriceFilter | None = None
    lotSizeFilter: _LotSizeFilter | None = None


class _Instruments(msgspec.Struct, gc=False):
    category: str = ""
    items: list[_Instrument] = msgspec.field(default_factory=list, name="list")
    nextPageCursor: str = ""


class _Wallets(msgspec.Struct, gc=False):
    items: list[_Wallet] = msgspec.field(default_factory=list, name="list")


class _FundingRow(msgspec.Struct, gc=False):
    # /v5/market/tickers rows (current rate) and /v5/market/funding/history rows (settled rates).
    symbol: str
    fundingRate: str = ""
    nextFundingTime: str = ""
    markPrice: str = ""
    indexPrice: str = ""
    fundingRateTimestamp: str = ""


class _FundingRows(msgspec.Struct, gc=False):
    items: list[_FundingRow] = msgspec.field(default_factory=list, name="list")


_INSTRUMENTS_DECODER = msgspec.json.Decoder(_Response[_Instruments])
_WALLETS_DECODER = msgspec.json.Decoder(_Response[_Wallets])
_FUNDING_DECODER = msgspec.json.Decoder(_Response[_FundingRows])

_STATUS: dict[str, SymbolStatus] = {
    "Trading": "trading",
    "PreLaunch": "halted",
    "Delivering": "halted",
    "Settling": "halted",
    "Closed": "delisted",
}
_CONTRACT_KIND: dict[str, SymbolKind] = {
    "LinearPerpetual": "perpetual",
    "InversePerpetual": "perpetual",
    "LinearFutures": "future",
    "InverseFutures": "future",
}


class _Book:
    """Top of book of one ``orderbook.{depth}.{symbol}`` topic."""

    __slots__ = ("depth1", "bid", "ask", "bids", "asks")

    def __init__(self, depth1: bool) -> None:
        self.depth1 = depth1
        self.bid: tuple[float, float] | None = None
        self.ask: tuple[float, float] | None = None
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}

    def clear(self) -> None:
        self.bid = self.ask = None
        self.bids.clear()
        self.asks.clear()


class _Ticker:
    """The merged state of one ``tickers.{symbol}`` topic."""

    __slots__ = ("bid", "bid_qty", "ask", "ask_qty", "rate", "next_funding", "mark", "index")

    def __init__(self) -> None:
        self.bid: float | None = None
        self.bid_qty: float | None = None
        self.ask: float | None = None
        self.ask_qty: float | None = None
        self.rate: float | None = None
        self.next_funding: int | None = None
        self.mark: float | None = None
        self.index: float | None = None


def _replace_top(
    levels: list[list[str]], top: tuple[float, float] | None, prices: FloatCache
) -> tuple[float, float] | None:
    for level in levels:
        price = prices[level[0]]
        size = float(level[1])
        if size == 0.0:
            if top is not None and top[0] == price:
                top = None
        else:
            top = (price, size)
    return top


def _apply_levels(book: dict[float, float], levels: list[list[str]], prices: FloatCache) -> None:
    for level in levels:
        price = prices[level[0]]
        size = float(level[1])
        if size == 0.0:
            book.pop(price, None)
        else:
            book[price] = size


def _amount(value: str) -> Decimal:
    amount = to_decimal(value)
    if amount is None:
        raise FrameError("missing balance amount", reason="missing_field")
    return amount


def _rest_result(decoder: msgspec.json.Decoder, payload: bytes | str):
    try:
        response = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
    if response.retCode != 0:
        raise FrameError(f"Bybit error {response.retCode}: {response.retMsg}", reason="exchange_error")
    return response


class BybitParser(VenueParser):
    """Parse Bybit v5 spot (``BYBIT_SPOT``) or linear (``BYBIT_LINEAR``) payloads.

    Holds the order book and ticker state of the topics it has seen: one instance per connection. ``account``
    names the account of the balances parsed from the private ``wallet`` topic. ``symbol_ids`` (``(exchange,
    symbol) -> id or None``, e.g. :meth:`DatabaseManager.resolve_symbol_id`) lets book rows carry their
    ``symbol_id``, so the writer checks an id instead of resolving a name per row.
    """

    venues = _VENUES

    def __init__(self, venue: ExchangeName, **options: Any) -> None:
        super().__init__(venue, **options)  # account=, symbol_ids=: see VenueParser
        self._books: dict[str, _Book] = {}
        self._tickers: dict[str, _Ticker] = {}

    def in_market(self, symbol: str) -> bool:
        """Spot lists ``BTCUSDT``; linear lists USDT and USDC perpetuals (``BTCUSDT``, ``BTCPERP``) and linear
        dated futures (``BTCUSDT-28MAR25``, ``BTC-28MAR25``). Inverse contracts (``BTCUSD``, ``BTCUSDH25``) and
        options (``BTC-28MAR25-60000-C``) are other markets."""
        parts = symbol.split("-")
        if self.venue is ExchangeName.BYBIT_SPOT:
            return len(parts) == 1 and "_" not in symbol
        if len(parts) > 2:
            return False
        return _INVERSE.search(parts[0]) is None

    def reset(self) -> None:
        """Forget all order book and ticker state: call when the connection is re-established."""
        self._books.clear()
        self._tickers.clear()

    def book_ticker(self, raw: bytes | str, recv_ts: int) -> BookTicker | None:
        """The hot path: an ``orderbook.1`` delta that leaves both sides quoted, applied to its book, as its record;
        None for any other frame, which :meth:`parse_general` then handles (snapshots included: they restart the
        update ids; deltas before their snapshot, one-sided books and malformed levels too). The book is changed
        only when a row is returned. Same values as the general decode; a number sent as a JSON number instead
        of a string is taken as well (its value is the same)."""
        if not raw.startswith(_LEVEL1_PREFIX if type(raw) is bytes else _LEVEL1_PREFIX_STR):  # type: ignore[arg-type]
            return None
        try:
            frame = _LEVEL1_DECODER.decode(raw)
        except msgspec.DecodeError:
            return None
        if frame.type != "delta":
            return None
        book = self._books.get(frame.topic)
        data = frame.data
        symbol = data.s
        sid = self._ids.get(symbol)
        if book is None or not book.depth1 or (sid is None and symbol not in self._good):
            return None  # a symbol not yet checked goes the general decode, which checks it first
        # _replace_top, inlined, on levels already decoded to floats (the values FloatCache's float(text) gives).
        bid = book.bid
        for level in data.b:
            if level.size == 0.0:
                if bid is not None and bid[0] == level.price:
                    bid = None
            else:
                bid = (level.price, level.size)
        ask = book.ask
        for level in data.a:
            if level.size == 0.0:
                if ask is not None and ask[0] == level.price:
                    ask = None
            else:
                ask = (level.price, level.size)
        if bid is None or ask is None:
            return None
        book.bid = bid
        book.ask = ask
        ts = frame.ts
        if ts < _MIN_MS and ts:
            return None  # a corrupt time: the general decode rejects it (bad_time) before admission
        return BookTicker(self._exchange, symbol, bid[0], bid[1], ask[0], ask[1], recv_ts, ts * 1000 if ts else None,
                          data.u, sid if sid is not None else self._symbol_id(symbol))

    def parse_general(self, raw: bytes | str, recv_ts: int) -> Parsed:
        """:meth:`parse` without the ``orderbook.1`` hot path (for callers that tried :meth:`book_ticker` first)."""
        try:
            frame = _FRAME_DECODER.decode(raw)
        except msgspec.ValidationError as exc:
            return self._classify(raw, exc)
        except msgspec.DecodeError as exc:
            raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
        except RecursionError:
            raise too_deep() from None
        topic = frame.topic
        data = frame.data
        if topic.startswith("orderbook."):
            if type(data) is not _Data:
                raise FrameError("orderbook frame without a data object", reason="bad_type")
            return self._orderbook(frame, data, recv_ts)
        if topic.startswith("tickers."):
            if type(data) is not _Data:
                raise FrameError("tickers frame without a data object", reason="bad_type")
            return self._ticker(frame, data, recv_ts)
        if topic == "wallet":
            if type(data) is not list:
                raise FrameError("wallet frame without a data array", reason="bad_type")
            exchange_ts = ms_to_us(frame.creationTime or None)
            return Parsed(balances=self._wallet(data, recv_ts, exchange_ts, self.account))
        if topic:
            return _other_topic(topic)
        return _control(frame)

    def _orderbook(self, frame: _Frame, data: _Data, recv_ts: int) -> Parsed:
        topic = frame.topic
        symbol = data.s  # checked before the book changes: a refused frame leaves it as it was
        if not symbol:
            raise FrameError("orderbook frame without a symbol", reason="missing_field")
        if data.u is None:  # every orderbook frame carries u: without it the quote cannot be sequenced
            raise FrameError("orderbook frame without an update id", reason="missing_field")
        error = bad_update_id(data.u)
        if error is not None:
            raise error
        self.check_symbol(symbol)
        book = self._books.get(topic)
        snapshot = frame.type == "snapshot"
        if snapshot:
            if book is None:
                book = self._books[topic] = _Book(topic.startswith("orderbook.1."))
            else:
                book.clear()
        elif frame.type != "delta":
            raise FrameError(f"orderbook frame of type {frame.type!r}", reason="bad_envelope")
        elif book is None:
            raise FrameError(f"{topic} delta before its snapshot", reason="no_snapshot")
        prices = self._prices
        try:
            if book.depth1:
                if data.b:
                    book.bid = _replace_top(data.b, book.bid, prices)
                if data.a:
                    book.ask = _replace_top(data.a, book.ask, prices)
                bid = book.bid
                ask = book.ask
            else:
                if data.b:
                    _apply_levels(book.bids, data.b, prices)
                if data.a:
                    _apply_levels(book.asks, data.a, prices)
                bids = book.bids
                asks = book.asks
                bid = (best := max(bids), bids[best]) if bids else None
                ask = (best := min(asks), asks[best]) if asks else None
        except (ValueError, IndexError) as exc:
            # The book may now be half-updated: drop it so that nothing is quoted from it before a snapshot.
            del self._books[topic]
            if isinstance(exc, IndexError):
                raise FrameError("orderbook level without price and size", reason="missing_field") from None
            raise FrameError(f"bad orderbook level: {exc}", reason="bad_number") from None
        control = CONTROL_SNAPSHOT if snapshot else None
        if bid is None or ask is None:
            # One side of the book is empty: there is no quote to store.
            return Parsed(control=control)
        return Parsed(
            [
                BookTicker(
                    self._exchange,
                    symbol,
                    bid[0],
                    bid[1],
                    ask[0],
                    ask[1],
                    recv_ts,
                    frame.ts * 1000 if frame.ts else None,
                    data.u,
                    self._symbol_id(symbol),
                )
            ],
            control=control,
        )

    def _ticker(self, frame: _Frame, data: _Data, recv_ts: int) -> Parsed:
        symbol = data.symbol
        if not symbol:
            raise FrameError("tickers frame without a symbol", reason="missing_field")
        self.check_symbol(symbol)  # before the state changes: a refused frame leaves it as it was
        snapshot = frame.type == "snapshot"
        state = self._tickers.get(symbol)
        if state is None or snapshot:
            state = self._tickers[symbol] = _Ticker()
        prices = self._prices
        try:
            quote_changed = False
            if data.bid1Price is not None:
                state.bid, quote_changed = (prices[data.bid1Price] if data.bid1Price else None), True
            if data.bid1Size is not None:
                state.bid_qty, quote_changed = (float(data.bid1Size) if data.bid1Size else None), True
            if data.ask1Price is not None:
                state.ask, quote_changed = (prices[data.ask1Price] if data.ask1Price else None), True
            if data.ask1Size is not None:
                state.ask_qty, quote_changed = (float(data.ask1Size) if data.ask1Size else None), True
            funding_changed = False
            if data.fundingRate is not None:
                state.rate, funding_changed = to_float(data.fundingRate), True
            if data.nextFundingTime is not None:
                # "0" is how Bybit says "no next funding" (dated futures).
                state.next_funding, funding_changed = ms_to_us(data.nextFundingTime) or None, True
            if data.markPrice is not None:
                state.mark, funding_changed = to_float(data.markPrice), True
            if data.indexPrice is not None:
                state.index, funding_changed = to_float(data.indexPrice), True
        except (FrameError, ValueError) as exc:
            # A half-merged state must not be quoted: start again from the next snapshot.
            del self._tickers[symbol]
            if isinstance(exc, FrameError):
                raise
            raise FrameError(f"bad ticker number: {exc}", reason="bad_number") from None
        result = Parsed(control=CONTROL_SNAPSHOT if snapshot else None)
        exchange_ts = frame.ts * 1000 if frame.ts else None
        if (
            quote_changed
            and state.bid is not None
            and state.bid_qty is not None
            and state.ask is not None
            and state.ask_qty is not None
        ):
            result.book_tickers.append(
                BookTicker(
                    self._exchange, symbol, state.bid, state.bid_qty, state.ask, state.ask_qty, recv_ts, exchange_ts,
                    symbol_id=self._symbol_id(symbol),
                )
            )
        if funding_changed and state.rate is not None:
            result.funding_rates.append(
                FundingRate(
                    self._exchange,
                    symbol,
                    state.rate,
                    recv_ts,
                    exchange_ts,
                    state.next_funding,
                    state.mark,
                    state.index,
                )
            )
        return result

    def _wallet(self, wallets: list[_Wallet], recv_ts: int, exchange_ts: int | None, account: str) -> list[Balance]:
        # Unified accounts have no "free": ``walletBalance`` includes what open spot orders lock in ``locked``,
        # so free is the difference. Classic spot accounts send ``free`` themselves.
        balances = []
        for wallet in wallets:
            for coin in wallet.coin:
                locked = to_decimal(coin.locked)
                if locked is None:
                    locked = Decimal(0)
                free = to_decimal(coin.free)
                if free is None:
                    free = _amount(coin.walletBalance) - locked
                balances.append(
                    Balance(
                        exchange=self._exchange,
                        asset=coin.coin,
                        free=free,
                        locked=locked,
                        recv_ts=recv_ts,
                        exchange_ts=exchange_ts,
                        account=account,
                    )
                )
        return balances

    def _classify(self, raw: bytes | str, exc: msgspec.ValidationError) -> Parsed:
        obj = decode_any(raw)
        if not isinstance(obj, dict):
            raise FrameError(f"not a Bybit frame: {exc}", reason="bad_envelope")
        topic = obj.get("topic")
        if isinstance(topic, str) and topic and not topic.startswith(_STORED_TOPICS):
            return _other_topic(topic)
        raise validation_error(exc)

    def parse_symbols(self, payload: bytes | str, exchange_id: int, synced_ts: int) -> list[Symbol]:
        """Parse one page of ``GET /v5/market/instruments-info``; see :meth:`next_cursor` for the next one.

        Tick size is ``priceFilter.tickSize``; lot size is ``lotSizeFilter.qtyStep`` (derivatives) or
        ``basePrecision`` (spot). Linear quantities are in the base coin, so no contract size is set.
        """
        page = _rest_result(_INSTRUMENTS_DECODER, payload).result
        category = page.category or ("spot" if self.venue is ExchangeName.BYBIT_SPOT else "linear")
        symbols = []
        for item in page.items:
            if category == "spot":
                kind: SymbolKind = "spot"
            elif category == "option":
                kind = "option"
            else:
                kind = _CONTRACT_KIND.get(item.contractType, "unknown")
            lot = item.lotSizeFilter
            symbols.append(
                Symbol(
                    exchange_id=exchange_id,
                    symbol=item.symbol,
                    base=item.baseCoin or None,
                    quote=item.quoteCoin or None,
                    kind=kind,
                    status=_STATUS.get(item.status, "unknown"),
                    tick_size=to_decimal(item.priceFilter.tickSize) if item.priceFilter else None,
                    lot_size=to_decimal(lot.qtyStep or lot.basePrecision) if lot else None,
                    last_synced=synced_ts,
                )
            )
        return symbols

    def next_cursor(self, payload: bytes | str) -> str | None:
        """Return the ``nextPageCursor`` of an instruments-info page, or ``None`` on the last page."""
        return _rest_result(_INSTRUMENTS_DECODER, payload).result.nextPageCursor or None

    def parse_balances(self, payload: bytes | str, recv_ts: int, account: str = "default") -> list[Balance]:
        """Parse ``GET /v5/account/wallet-balance`` into balances (free and locked as on the ``wallet`` topic)."""
        response = _rest_result(_WALLETS_DECODER, payload)
        return self._wallet(response.result.items, recv_ts, ms_to_us(response.time or None), account)

    def parse_funding(self, payload: bytes | str, recv_ts: int) -> list[FundingRate]:
        """Parse ``GET /v5/market/tickers`` (linear) or ``GET /v5/market/funding/history`` into funding rates.

        A tickers row is the current rate, settled at ``nextFundingTime``, stamped with the response time; a
        history row is a settled rate stamped with its ``fundingRateTimestamp``. Rows without a rate (spot,
        dated futures) yield nothing.
        """
        response = _rest_result(_FUNDING_DECODER, payload)
        response_ts = ms_to_us(response.time or None)
        rates = []
        for row in response.result.items:
            rate = to_float(row.fundingRate)
            if rate is None:
                continue
            if row.fundingRateTimestamp:
                rates.append(
                    FundingRate(self._exchange, row.symbol, rate, recv_ts, ms_to_us(row.fundingRateTimestamp))
                )
            else:
                rates.append(
                    FundingRate(
                        self._exchange,
                        row.symbol,
                        rate,
                        recv_ts,
                        response_ts,
                        ms_to_us(row.nextFundingTime) or None,
                        to_float(row.markPrice),
                        to_float(row.indexPrice),
                    )
                )
        return rates


def _other_topic(topic: str) -> Parsed:
    if topic in _IGNORED_TOPICS:
        return Parsed(control=CONTROL_IGNORED, detail=topic)
    raise FrameError(f"unhandled Bybit topic {topic!r}", reason="unknown_channel")


def _control(frame: _Frame) -> Parsed:
    op = frame.op
    if op == "pong" or frame.ret_msg == "pong":
        # Public streams answer a ping with {"op": "ping", "ret_msg": "pong"}, private ones with {"op": "pong"}.
        return Parsed(control=CONTROL_PONG)
    if frame.success is False:
        return Parsed(control=CONTROL_ERROR, detail=f"{op}: {frame.ret_msg}")
    if op == "subscribe":
        return Parsed(control=CONTROL_SUBSCRIBED)
    if op == "unsubscribe":
        return Parsed(control=CONTROL_UNSUBSCRIBED)
    if op == "auth":
        return Parsed(control=CONTROL_LOGIN)
    if op:
        return Parsed(control=CONTROL_NOTICE, detail=op)
    raise FrameError("neither a topic message nor a command response", reason="bad_envelope")

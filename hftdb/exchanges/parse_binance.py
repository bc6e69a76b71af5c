"""Binance spot and USD-M futures payloads into hftdb records.

Websocket frames come in three envelopes, all handled by one typed decode:

* raw streams (``/ws/<stream>``): the event object itself, or an array of them (``!markPrice@arr``);
* combined streams (``/stream?streams=...``): ``{"stream": "<name>", "data": <event or array>}``;
* user data through the WebSocket API subscription: ``{"subscriptionId": N, "event": <event>}``.

Channels: ``<symbol>@bookTicker`` (spot has no event time; USD-M adds ``e``, ``E`` and ``T``),
``<symbol>@markPrice[@1s]`` and ``!markPrice@arr[@1s]`` (USD-M funding, mark and index price), and the user
data event ``outboundAccountPosition`` (spot balances). Other user-data events are acknowledged as ignored.

Times are milliseconds unless the stream was opened with ``timeUnit=MICROSECOND``; :func:`to_us` tells the two
apart by magnitude, so the parser does not need to know how the adapter connected.

The hot path (:meth:`BinanceParser.book_ticker`) decodes a combined-stream bookTicker frame with one typed
decoder built for it alone, with ``strict=False`` so that msgspec turns the price strings into floats in C
(the same correctly rounded value as ``float(text)``; a test checks every fixture value). A number sent as a
JSON number instead of a string is taken as well: its value is the same. Any other frame, or a bookTicker
that does not decode that way (an empty or malformed number), falls back to the general decode, which names
the reason.

For a feed whose sink takes packed rows, :meth:`BinanceParser.book_read` first hands each socket read to a C
module (``_binance_fast.c``, built by ``pip install`` where a C compiler is present, else skipped): it takes
the USD-M bookTicker frames it can take whole, in their usual shape, and hands back any other frame to the
Python loop, which decides exactly as before. About a quarter of the Python loop's CPU per frame; a test runs
generated, recorded and hostile frames through both and compares everything they produce.

``exchange_ts`` is the event time ``E``: every Binance event carries it (spot bookTicker excepted), so
``recv_ts - exchange_ts`` means the same thing on every channel. USD-M bookTicker's ``T`` (the matching
engine's transaction time) is earlier by the push latency, and exists on that one stream only.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from msgspec import field

from ..errors import FrameError
from ..models import MIN_TS_US, Balance, BookTicker, ExchangeName, FundingRate, Symbol, SymbolKind, SymbolStatus
from ..venues import served_by
from ..wire.books import PACK, BookTuples
from ..wire.copy import PG_EPOCH_US
from ..wire.loader import NATIVE
from ..wire.rules import book_fits
from .parsing import (
    VenueParser,
    CONTROL_ERROR,
    CONTROL_IGNORED,
    CONTROL_RECONNECT,
    CONTROL_SUBSCRIBED,
    Parsed,
    bad_float,
    bad_update_id,
    decode_any,
    too_deep,
    to_decimal,
    to_float,
    to_us,
    validation_error,
)

__all__ = ["BinanceParser"]

_VENUES = served_by("BinanceParser")
_MS_BELOW = 100_000_000_000_000  # below this an event time is in ms (see parsing.to_us)
_MIN_MS = MIN_TS_US // 1000  # an event time in ms below this is corrupt (before 2009)
_EPOCH = PG_EPOCH_US


class _Asset(msgspec.Struct, gc=False):
    asset: str = field(name="a")
    free: str = field(name="f")
    locked: str = field(name="l")


class _Event(msgspec.Struct, gc=False):
    # One struct for every event we store, so one decode serves all channels. Binance reuses letters across
    # events: ``T`` is bookTicker's transaction time but markPriceUpdate's next funding time, and ``B`` is the
    # best bid size of a bookTicker but the balance list of an outboundAccountPosition. Fields are declared in
    # bookTicker's key order: msgspec looks for the next key after the last one matched, so this saves ~15% of
    # the hot path's decode.
    event_type: str = field(default="", name="e")
    update_id: int | None = field(default=None, name="u")
    symbol: str = field(default="", name="s")
    bid: str = field(default="", name="b")
    bid_qty: str | list[_Asset] = field(default="", name="B")
    ask: str = field(default="", name="a")
    ask_qty: str = field(default="", name="A")
    time: int = field(default=0, name="T")
    event_time: int = field(default=0, name="E")
    mark_price: str = field(default="", name="p")
    index_price: str = field(default="", name="i")
    rate: str = field(default="", name="r")


class _Error(msgspec.Struct, gc=False):
    code: int | str = 0
    msg: str = ""


class _Frame(msgspec.Struct, gc=False):
    # The envelopes' fields first (a combined stream's "stream" and "data" lead its frames), then a raw
    # stream's event fields, the same as _Event's.
    stream: str = ""
    data: _Event | list[_Event] | None = None
    event_type: str = field(default="", name="e")
    update_id: int | None = field(default=None, name="u")
    symbol: str = field(default="", name="s")
    bid: str = field(default="", name="b")
    bid_qty: str | list[_Asset] = field(default="", name="B")
    ask: str = field(default="", name="a")
    ask_qty: str = field(default="", name="A")
    time: int = field(default=0, name="T")
    event_time: int = field(default=0, name="E")
    mark_price: str = field(default="", name="p")
    index_price: str = field(default="", name="i")
    rate: str = field(default="", name="r")
    event: _Event | None = None
    id: int | str | None = None
    result: Any = None
    code: int | str | None = None
    msg: str = ""
    error: _Error | None = None


_FRAME_DECODER = msgspec.json.Decoder(_Frame | list[_Event])

# The hot path: a combined-stream bookTicker, numbers decoded in C (``strict=False`` turns "1.5" into 1.5 with
# the same correctly rounded result as float("1.5")). The ``e`` tag must be "bookTicker" when present (spot
# frames have none), so a markPriceUpdate never decodes here. Decoding straight into a renamed BookTicker
# subclass was measured ~0.13 µs/frame cheaper, but its rows would not compare equal to (nor be of type)
# BookTicker: the record is built from this struct instead.
class _Book(msgspec.Struct, gc=False, kw_only=True, tag_field="e", tag="bookTicker"):
    # An id outside 0 to 2**63 - 1 fails the decode (checked in C): the general decode rejects it, bad_update_id.
    update_id: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)] = field(name="u")
    symbol: str = field(name="s")
    bid: float = field(name="b")
    bid_qty: float = field(name="B")
    ask: float = field(name="a")
    ask_qty: float = field(name="A")
    event_time: int = field(default=0, name="E")


class _Combined(msgspec.Struct, gc=False):
    data: _Book


_BOOK_DECODER = msgspec.json.Decoder(_Combined, strict=False)

_STORED_EVENTS = frozenset({"bookTicker", "markPriceUpdate", "outboundAccountPosition"})
# Valid user-data and market events that carry nothing hftdb stores: acknowledged, not rejected.
_IGNORED_EVENTS = frozenset(
    {
        "executionReport",
        "balanceUpdate",
        "listStatus",
        "externalLockUpdate",
        "ORDER_TRADE_UPDATE",
        "ACCOUNT_UPDATE",
        "ACCOUNT_CONFIG_UPDATE",
        "MARGIN_CALL",
        "TRADE_LITE",
        "STRATEGY_UPDATE",
        "GRID_UPDATE",
        "CONDITIONAL_ORDER_TRIGGER_REJECT",
    }
)
# Events announcing the end of the stream: the adapter should reconnect (or renew its listen key).
_RECONNECT_EVENTS = frozenset({"serverShutdown", "listenKeyExpired", "eventStreamTerminated"})


# REST payloads.


class _Filter(msgspec.Struct, gc=False):
    filterType: str
    tickSize: str = ""
    stepSize: str = ""


class _SymbolInfo(msgspec.Struct, gc=False):
    symbol: str
    status: str = ""
    baseAsset: str | None = None
    quoteAsset: str | None = None
    contractType: str = ""
    filters: list[_Filter] = []


class _ExchangeInfo(msgspec.Struct, gc=False):
    symbols: list[_SymbolInfo]


class _SpotBalance(msgspec.Struct, gc=False):
    asset: str
    free: str
    locked: str


class _SpotAccount(msgspec.Struct, gc=False):
    balances: list[_SpotBalance]
    updateTime: int = 0


class _FuturesBalance(msgspec.Struct, gc=False):
    asset: str
    balance: str
    availableBalance: str
    updateTime: int = 0


class _Funding(msgspec.Struct, gc=False):
    # /fapi/v1/premiumIndex rows carry lastFundingRate; /fapi/v1/fundingRate (history) rows carry fundingRate.
    symbol: str
    lastFundingRate: str | None = None
    nextFundingTime: int = 0
    time: int = 0
    fundingRate: str | None = None
    fundingTime: int = 0
    markPrice: str = ""
    indexPrice: str = ""


_EXCHANGE_INFO_DECODER = msgspec.json.Decoder(_ExchangeInfo)
_BALANCES_DECODER = msgspec.json.Decoder(_SpotAccount | list[_FuturesBalance])
_FUNDING_DECODER = msgspec.json.Decoder(_Funding | list[_Funding])

# Spot symbol statuses and USD-M contract statuses (the USD-M ``status`` field uses the contract set).
_STATUS: dict[str, SymbolStatus] = {
    "TRADING": "trading",
    "BREAK": "halted",
    "HALT": "halted",
    "PRE_TRADING": "halted",
    "POST_TRADING": "halted",
    "END_OF_DAY": "halted",
    "AUCTION_MATCH": "halted",
    "PENDING_TRADING": "halted",
    "PRE_DELIVERING": "halted",
    "DELIVERING": "halted",
    "PRE_SETTLE": "halted",
    "SETTLING": "halted",
    "DELIVERED": "delisted",
    "CLOSE": "delisted",
}


def _us(ts: int) -> int | None:
    # Binance sends 0 for "no such time" (e.g. a delivery contract's next funding time).
    return to_us(ts) if ts else None


def _amount(value: str) -> Decimal:
    amount = to_decimal(value)
    if amount is None:
        raise FrameError("missing balance amount", reason="missing_field")
    return amount


def _rest_error(payload: bytes | str, exc: msgspec.ValidationError) -> FrameError:
    obj = decode_any(payload)
    if isinstance(obj, dict) and "code" in obj and "msg" in obj:
        return FrameError(f"Binance error {obj['code']}: {obj['msg']}", reason="exchange_error")
    return validation_error(exc)


class BinanceParser(VenueParser):
    """Parse Binance spot (``BINANCE_SPOT``) or USD-M futures (``BINANCE_USDM``) payloads.

    Stateless apart from its venue and its symbol ids: one instance may serve any number of connections of that
    venue. ``account`` names the account of the balances parsed from user-data frames. ``symbol_ids``
    (``(exchange, symbol) -> id or None``, e.g. :meth:`DatabaseManager.resolve_symbol_id`) lets book rows
    carry their ``symbol_id``, remembered per native symbol, so the sink need not resolve them.
    """

    venues = _VENUES

    def __init__(self, venue: ExchangeName, **kwargs: Any) -> None:
        super().__init__(venue, **kwargs)
        # Spot bookTicker frames have no event time and are never packed: they go straight to the Python loop.
        self._usdm = venue is ExchangeName.BINANCE_USDM

    def in_market(self, symbol: str) -> bool:
        """Spot lists ``BTCUSDT``; USD-M lists USDT/USDC-margined perpetuals (``BTCUSDT``) and quarterlies
        (``BTCUSDT_250328``, in its exchangeInfo as ``CURRENT_QUARTER``). Coin-margined contracts
        (``BTCUSD_PERP``, ``BTCUSD_250328``) and options (``BTC-250328-60000-C``) are other markets."""
        if "-" in symbol:
            return False
        head, sep, tail = symbol.partition("_")
        if not sep:
            return True
        if self.venue is ExchangeName.BINANCE_SPOT:
            return False
        return len(tail) == 6 and tail.isdigit() and not head.endswith("USD")

    def book_ticker(self, raw: bytes | str, recv_ts: int) -> BookTicker | None:
        """The hot path: a combined-stream bookTicker frame as its record, or None for any other frame (which
        :meth:`parse` then handles, rejections included). Same values as :meth:`parse`, about 3x cheaper."""
        try:
            ev = _BOOK_DECODER.decode(raw).data
        except msgspec.DecodeError:
            return None
        symbol = ev.symbol
        if not symbol:
            return None
        event_time = ev.event_time
        if _MIN_MS <= event_time < _MS_BELOW:
            exchange_ts = event_time * 1000
        elif event_time and event_time < _MS_BELOW:
            return None  # a corrupt time (before 2009): the general decode rejects it (bad_time) before admission
        elif event_time >> 63:
            return None  # past int8: the general decode rejects it (bad_time) before admission
        else:
            exchange_ts = _us(event_time)
        sid = self._ids.get(symbol)
        return BookTicker(
            self._exchange, symbol, ev.bid, ev.bid_qty, ev.ask, ev.ask_qty, recv_ts, exchange_ts, ev.update_id,
            sid if sid is not None else self._symbol_id(symbol),
        )

    def book_read(
        self, payloads: list[bytes], i: int, recv_ts: int, ts_max: int, last_ids: dict[str, int],
        rows: list[BookTicker], buf: bytearray,
    ) -> tuple[int, int]:
        """The hot path over one socket read, for an intake whose sink takes packed rows (:mod:`hftdb.wire.books`).

        From ``payloads[i]`` on, each bookTicker frame is decoded as by :meth:`book_ticker`; one whose update id
        is not above ``last_ids[symbol]`` is skipped and counted (the intake's admission, done here so that a
        dropped frame costs no record), the others set ``last_ids[symbol]``, are appended to ``rows`` and, when
        the writer's per-row path would take them (``recv_ts`` already checked; ``ts_max`` bounds future times),
        get their COPY tuple appended to ``buf``. A row the writer would not take gets no tuple, so the call goes
        the public path, which rejects it with its reason. Stops at the first frame that is not a bookTicker, or
        whose symbol or event time the general decode would reject (so that it names the reason, before any
        admission).

        Returns (index of that frame or ``len(payloads)``, duplicates skipped).

        The C hot path (``_binance_fast``, built when a compiler was at hand) takes every frame it can take whole,
        with the same results; the loop here does each frame it hands back, then calls it again.
        """
        # The C hot path, where built and not turned off (hftdb.wire.loader); without it the same frames take the
        # Python loop below.
        scan = NATIVE.book_read if self._usdm else None
        duplicates = 0
        if scan is not None:
            # The usual read, every frame taken in C, returns here without the loop's setup (~0.9 us a read).
            i, duplicates = scan(payloads, i, recv_ts, ts_max, last_ids, self._ids, rows, buf, BookTicker,
                                 self._exchange, MIN_TS_US)
            if i == len(payloads):
                return i, duplicates
        # payloads[i] goes the Python way first (the C path, if any, stopped at it); then C is tried again.
        handed_back = scan is not None
        decode = _BOOK_DECODER.decode
        ids_get = self._ids.get
        good = self._good
        last_get = last_ids.get
        append = rows.append
        exchange = self._exchange
        recv_pg = recv_ts - _EPOCH
        n = len(payloads)
        while i < n:
            if handed_back:
                handed_back = False
            elif scan is not None:
                i, dups = scan(payloads, i, recv_ts, ts_max, last_ids, self._ids, rows, buf, BookTicker, exchange,
                               MIN_TS_US)
                duplicates += dups
                if i == n:
                    break
            try:
                ev = decode(payloads[i]).data
            except msgspec.DecodeError:
                break
            event_time = ev.event_time
            if _MIN_MS <= event_time < _MS_BELOW:
                exchange_ts = event_time * 1000
            elif event_time and event_time < _MS_BELOW:
                break  # a corrupt time: the general decode rejects it (bad_time), before any admission
            elif event_time >> 63:
                break  # past int8: the same
            else:
                exchange_ts = _us(event_time)
            symbol = ev.symbol
            sid = ids_get(symbol)
            if sid is None:
                if symbol not in good:
                    try:
                        self.check_symbol(symbol)
                    except FrameError:
                        break  # the general decode rejects it with its reason, before any admission
                try:
                    sid = self._symbol_id(symbol)
                except Exception:  # the resolver failed: the general decode meets it again and rejects the frame
                    break
            i += 1
            u = ev.update_id
            last = last_get(symbol)
            if last is not None and u <= last:
                duplicates += 1
                continue
            last_ids[symbol] = u
            bid, bid_qty, ask, ask_qty = ev.bid, ev.bid_qty, ev.ask, ev.ask_qty
            try:
                if book_fits(bid, bid_qty, ask, ask_qty, exchange_ts, ts_max):  # type: ignore[arg-type]
                    buf += PACK(sid, recv_pg, exchange_ts - _EPOCH, bid, bid_qty, ask, ask_qty, u)  # type: ignore[operator]
            except (TypeError, struct.error):  # no exchange time (spot), no symbol id, an id out of range
                pass
            append(BookTicker(exchange, symbol, bid, bid_qty, ask, ask_qty, recv_ts, exchange_ts, u, sid))
        return i, duplicates

    def book_tuples(self, recv_ts: int) -> BookTuples | None:
        """An empty :class:`~hftdb.wire.books.BookTuples` of rows received at ``recv_ts`` for :meth:`book_scan`
        to fill, or None when this parser has no scan (not USD-M, or the C hot path not in use): the caller then
        splits the lines and calls :meth:`book_read`."""
        if not self._usdm or NATIVE.book_scan is None:
            return None
        return BookTuples(recv_ts, self._exchange, self._ids)

    def book_scan(
        self, data: bytes, start: int, end: int, ts_max: int, last_ids: dict[str, int], tuples: BookTuples,
    ) -> tuple[int, int, int]:
        """:meth:`book_read` over a buffer of newline-separated frames (a file's block), packing tuples only.

        From offset ``start`` to ``end`` of ``data``, each line (stripped as by ``bytes.strip``; a blank line is
        no frame) that is a bookTicker frame :meth:`book_read` would take and pack is admitted against
        ``last_ids`` (a duplicate is counted and skipped) and its COPY tuple appended to ``tuples``; no record is
        built. Stops at the first line it cannot take so (any other frame, a row the writer would refuse, a
        symbol without an id yet) and returns (that line's offset or ``end``, frames taken, duplicates).
        ``tuples`` comes from :meth:`book_tuples` (which says whether there is a scan).
        """
        scan = NATIVE.book_scan
        if scan is None:  # turned off since book_tuples: every line goes back to the caller's path
            return start, 0, 0
        return scan(data, start, end, tuples.recv_ts, ts_max, last_ids, self._ids, tuples.buf,  # type: ignore[no-any-return]
                    MIN_TS_US)

    def parse_general(self, raw: bytes | str, recv_ts: int) -> Parsed:
        """:meth:`parse` without the bookTicker hot path (for callers that tried :meth:`book_ticker` first)."""
        try:
            frame = _FRAME_DECODER.decode(raw)
        except msgspec.ValidationError as exc:
            return self._classify(raw, exc)
        except msgspec.DecodeError as exc:
            raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
        except RecursionError:
            raise too_deep() from None
        if type(frame) is list:
            return self._events(frame, recv_ts)
        ev = frame.data  # combined stream
        if ev is None:
            ev = frame.event  # WebSocket API user data
            if ev is None:
                if not (frame.event_type or frame.symbol):
                    return self._control(frame)
                ev = frame  # raw stream
        elif type(ev) is list:
            return self._events(ev, recv_ts)
        kind = ev.event_type
        if kind == "bookTicker" or (not kind and ev.bid):  # the hot path, tested first
            return Parsed([self._book_ticker(ev, recv_ts)])
        return self._event(ev, recv_ts)

    def _event(self, ev: _Event | _Frame, recv_ts: int) -> Parsed:
        kind = ev.event_type
        # Spot bookTicker has no "e": it is the event with a best bid.
        if kind == "bookTicker" or (not kind and ev.bid):
            return Parsed([self._book_ticker(ev, recv_ts)])
        if kind == "markPriceUpdate":
            rate = self._funding_rate(ev, recv_ts)
            return Parsed(funding_rates=[rate] if rate is not None else [])
        if kind == "outboundAccountPosition":
            return Parsed(balances=self._balances(ev, recv_ts))
        return _other_event(kind)

    def _events(self, events: list[_Event], recv_ts: int) -> Parsed:
        result = Parsed()
        for ev in events:
            part = self._event(ev, recv_ts)
            result.book_tickers.extend(part.book_tickers)
            result.funding_rates.extend(part.funding_rates)
            result.balances.extend(part.balances)
        return result

    def _book_ticker(self, ev: _Event | _Frame, recv_ts: int) -> BookTicker:
        prices = self._prices
        try:
            bid = prices[ev.bid]
            bid_qty = float(ev.bid_qty)  # type: ignore[arg-type]
            ask = prices[ev.ask]
            ask_qty = float(ev.ask_qty)
        except (ValueError, TypeError):
            raise _bad_quote(ev) from None
        if not ev.symbol:
            raise FrameError("bookTicker without a symbol", reason="missing_field")
        if ev.update_id is None:  # every bookTicker carries u: without it the row cannot be told from a duplicate
            raise FrameError("bookTicker without an update id", reason="missing_field")
        error = bad_update_id(ev.update_id)
        if error is not None:
            raise error
        event_time = ev.event_time
        if event_time:
            # to_us() inlined for the common case (ms): the hot path's budget is ~1.5 µs.
            exchange_ts: int | None = event_time * 1000 if event_time < _MS_BELOW else to_us(event_time)
        else:
            exchange_ts = None  # spot bookTicker has no event time
        symbol = ev.symbol
        sid = self._ids.get(symbol)
        return BookTicker(
            self._exchange, symbol, bid, bid_qty, ask, ask_qty, recv_ts, exchange_ts, ev.update_id,
            sid if sid is not None else self._symbol_id(symbol),
        )

    def _funding_rate(self, ev: _Event | _Frame, recv_ts: int) -> FundingRate | None:
        if not ev.symbol:
            raise FrameError("markPriceUpdate without a symbol", reason="missing_field")
        rate = to_float(ev.rate)
        if rate is None:
            # Delivery contracts have no funding: Binance sends r="" and T=0. Nothing to store.
            return None
        return FundingRate(
            self._exchange,
            ev.symbol,
            rate,
            recv_ts,
            _us(ev.event_time),
            _us(ev.time),
            to_float(ev.mark_price),
            to_float(ev.index_price),
        )

    def _balances(self, ev: _Event | _Frame, recv_ts: int) -> list[Balance]:
        assets = ev.bid_qty
        if type(assets) is not list:
            raise FrameError("outboundAccountPosition without a balance list", reason="missing_field")
        exchange_ts = _us(ev.event_time)
        return [
            Balance(
                exchange=self._exchange,
                asset=a.asset,
                free=_amount(a.free),
                locked=_amount(a.locked),
                recv_ts=recv_ts,
                exchange_ts=exchange_ts,
                account=self.account,
            )
            for a in assets
        ]

    def _control(self, frame: _Frame) -> Parsed:
        if frame.error is not None:
            return Parsed(control=CONTROL_ERROR, detail=f"{frame.error.code}: {frame.error.msg}")
        if frame.code is not None:
            return Parsed(control=CONTROL_ERROR, detail=f"{frame.code}: {frame.msg}")
        if frame.id is not None:
            # {"result": null, "id": N} answers SUBSCRIBE / UNSUBSCRIBE; a non-null result answers a query.
            return Parsed(control=CONTROL_SUBSCRIBED, detail=str(frame.id))
        raise FrameError("neither a stream event nor a response", reason="bad_envelope")

    def _classify(self, raw: bytes | str, exc: msgspec.ValidationError) -> Parsed:
        # The typed decode failed. Events we do not store reuse letters with other types (executionReport's
        # "i" is an order id, depthUpdate's "b" a list): find out whether this is one of those, or a broken
        # frame of a channel we do store.
        obj = decode_any(raw)
        ev = obj
        if isinstance(obj, dict):
            inner = obj.get("data", obj.get("event"))
            if isinstance(inner, (dict, list)):
                ev = inner
        if isinstance(ev, list):
            ev = ev[0] if ev else None
        if not isinstance(ev, dict):
            raise FrameError(f"not a Binance frame: {exc}", reason="bad_envelope")
        kind = ev.get("e")
        if isinstance(kind, str) and kind and kind not in _STORED_EVENTS:
            return _other_event(kind)
        raise validation_error(exc)

    def parse_symbols(self, payload: bytes | str, exchange_id: int, synced_ts: int) -> list[Symbol]:
        """Parse ``GET /api/v3/exchangeInfo`` (spot) or ``GET /fapi/v1/exchangeInfo`` (USD-M) into symbols.

        Tick size is the ``PRICE_FILTER`` ``tickSize``, lot size the ``LOT_SIZE`` ``stepSize``. USD-M
        quantities are in the base asset, so no contract size is set.
        """
        try:
            info = _EXCHANGE_INFO_DECODER.decode(payload)
        except msgspec.ValidationError as exc:
            raise _rest_error(payload, exc) from None
        except msgspec.DecodeError as exc:
            raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
        spot = self.venue is ExchangeName.BINANCE_SPOT
        symbols = []
        for s in info.symbols:
            tick = lot = None
            for f in s.filters:
                if f.filterType == "PRICE_FILTER":
                    tick = to_decimal(f.tickSize)
                elif f.filterType == "LOT_SIZE":
                    lot = to_decimal(f.stepSize)
            symbols.append(
                Symbol(
                    exchange_id=exchange_id,
                    symbol=s.symbol,
                    base=s.baseAsset,
                    quote=s.quoteAsset,
                    kind="spot" if spot else _contract_kind(s.contractType),
                    status=_STATUS.get(s.status, "unknown"),
                    tick_size=tick,
                    lot_size=lot,
                    last_synced=synced_ts,
                )
            )
        return symbols

    def parse_balances(self, payload: bytes | str, recv_ts: int, account: str = "default") -> list[Balance]:
        """Parse ``GET /api/v3/account`` (spot) or ``GET /fapi/v2/balance`` (USD-M, an array) into balances.

        USD-M has no "locked" amount: ``free`` is ``availableBalance`` (what new orders may use) and ``locked``
        is the rest of the wallet ``balance``, floored at zero because unrealised profit can make the available
        amount exceed the wallet balance.
        """
        try:
            decoded = _BALANCES_DECODER.decode(payload)
        except msgspec.ValidationError as exc:
            raise _rest_error(payload, exc) from None
        except msgspec.DecodeError as exc:
            raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
        if type(decoded) is _SpotAccount:
            exchange_ts = _us(decoded.updateTime)
            return [
                Balance(
                    exchange=self._exchange,
                    asset=b.asset,
                    free=_amount(b.free),
                    locked=_amount(b.locked),
                    recv_ts=recv_ts,
                    exchange_ts=exchange_ts,
                    account=account,
                )
                for b in decoded.balances
            ]
        balances = []
        for b in decoded:
            total = _amount(b.balance)
            free = _amount(b.availableBalance)
            balances.append(
                Balance(
                    exchange=self._exchange,
                    asset=b.asset,
                    free=free,
                    locked=max(total - free, Decimal(0)),
                    recv_ts=recv_ts,
                    exchange_ts=_us(b.updateTime),
                    account=account,
                )
            )
        return balances

    def parse_funding(self, payload: bytes | str, recv_ts: int) -> list[FundingRate]:
        """Parse ``GET /fapi/v1/premiumIndex`` (one object or an array) or ``GET /fapi/v1/fundingRate`` (history).

        A premium-index row is the current rate, settled at ``nextFundingTime``; a history row is a settled
        rate whose ``exchange_ts`` is its ``fundingTime``. Delivery contracts (``lastFundingRate`` ``""``) yield
        no row.
        """
        try:
            decoded = _FUNDING_DECODER.decode(payload)
        except msgspec.ValidationError as exc:
            raise _rest_error(payload, exc) from None
        except msgspec.DecodeError as exc:
            raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
        rows = decoded if type(decoded) is list else [decoded]
        rates = []
        for row in rows:
            if row.lastFundingRate is not None:
                rate = to_float(row.lastFundingRate)
                if rate is None:
                    continue
                rates.append(
                    FundingRate(
                        self._exchange,
                        row.symbol,
                        rate,
                        recv_ts,
                        _us(row.time),
                        _us(row.nextFundingTime),
                        to_float(row.markPrice),
                        to_float(row.indexPrice),
                    )
                )
            elif row.fundingRate is not None:
                rate = to_float(row.fundingRate)
                if rate is None:
                    continue
                rates.append(
                    FundingRate(
                        self._exchange,
                        row.symbol,
                        rate,
                        recv_ts,
                        _us(row.fundingTime),
                        None,
                        to_float(row.markPrice),
                    )
                )
            else:
                raise FrameError("funding row without a rate", reason="missing_field")
        return rates


def _contract_kind(contract_type: str) -> SymbolKind:
    # PERPETUAL, and its variants (PERPETUAL_DELIVERING, TRADIFI_PERPETUAL); everything else dated delivers.
    if not contract_type:
        return "unknown"
    return "perpetual" if "PERPETUAL" in contract_type else "future"


def _other_event(kind: str) -> Parsed:
    if not kind:
        raise FrameError("an event with neither a type nor a quote", reason="bad_envelope")
    if kind in _IGNORED_EVENTS:
        return Parsed(control=CONTROL_IGNORED, detail=kind)
    if kind in _RECONNECT_EVENTS:
        return Parsed(control=CONTROL_RECONNECT, detail=kind)
    raise FrameError(f"unhandled Binance event {kind!r}", reason="unknown_channel")


def _bad_quote(ev: _Event | _Frame) -> FrameError:
    for value in (ev.bid, ev.bid_qty, ev.ask, ev.ask_qty):
        if type(value) is not str:
            return FrameError("bookTicker size is not a string", reason="bad_type")
        try:
            float(value)
        except ValueError:
            return bad_float(value)
    return FrameError("bad bookTicker quote", reason="bad_number")

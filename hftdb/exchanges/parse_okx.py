"""OKX v5 spot and swap payloads into hftdb records.

Pushes are ``{"arg": {"channel": ..., "instId": ...}, "data": [row, ...]}``; one typed decode serves every
channel handled here:

* ``tickers``: ``bidPx``/``bidSz``/``askPx``/``askSz``/``ts``. A side with no orders is sent as ``""``: such a
  row has no quote and yields nothing. Tickers carry no sequence id.
* ``bbo-tbt`` (and ``books5``, the same shape): ``bids``/``asks`` as ``[price, size, "0", orders]`` arrays,
  ``ts`` and ``seqId`` (the update id; a row without either is ``missing_field``, a ``seqId`` outside ``0`` to
  ``2**63 - 1`` is ``bad_update_id``). The instrument is named by
  ``arg.instId`` only.
* ``funding-rate``: ``fundingRate`` is the current period's rate, settled at ``fundingTime``, which is therefore
  the record's ``next_funding_ts``; ``nextFundingTime`` is the settlement after that and is not stored. Older API
  versions send no ``ts``: the row then has no exchange time (never the settlement time as one), and the
  runner's funding dedup tells its updates apart by settlement time and rate.
* private ``account``: ``details[]`` per currency: ``availBal`` is free, ``frozenBal`` locked.

Command responses are ``{"event": ...}`` objects (``subscribe``, ``login``, ``error`` with ``code``/``msg``,
``notice``...), and the answer to the text ping is the bare text ``pong``. OKX times are millisecond strings.

The hot path (:meth:`OkxParser.book_ticker`) decodes a one-row ``bbo-tbt`` push with a decoder built for it
alone, with ``strict=False`` so that msgspec turns the price and time strings into numbers in C (the same
values as ``float(text)`` and ``int(text)``; a number sent as a JSON number is taken at the same value).
Anything else, a one-sided book included, falls back to the general decode, which names the reject reason.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from ..errors import FrameError
from ..models import MIN_TS_US, Balance, BookTicker, ExchangeName, FundingRate, Symbol, SymbolKind, SymbolStatus
from ..venues import served_by
from .parsing import (
    VenueParser,
    CONTROL_ERROR,
    CONTROL_IGNORED,
    CONTROL_LOGIN,
    CONTROL_NOTICE,
    CONTROL_PONG,
    CONTROL_RECONNECT,
    CONTROL_SUBSCRIBED,
    CONTROL_UNSUBSCRIBED,
    Parsed,
    bad_update_id,
    decode_any,
    ms_to_us,
    too_deep,
    to_decimal,
    to_float,
    validation_error,
)

__all__ = ["OkxParser"]

_VENUES = served_by("OkxParser")


class _Arg(msgspec.Struct, gc=False):
    channel: str = ""
    instId: str = ""


class _Detail(msgspec.Struct, gc=False):
    ccy: str
    availBal: str = ""
    cashBal: str = ""
    frozenBal: str = ""
    uTime: str = ""


class _Row(msgspec.Struct, gc=False):
    # The fields of every channel handled, merged: a row decodes the same whatever its channel.
    instId: str = ""
    bidPx: str = ""
    bidSz: str = ""
    askPx: str = ""
    askSz: str = ""
    ts: str = ""
    bids: list[list[str]] | None = None
    asks: list[list[str]] | None = None
    seqId: int | None = None
    fundingRate: str = ""
    fundingTime: str = ""
    nextFundingTime: str = ""
    details: list[_Detail] | None = None
    uTime: str = ""


class _Frame(msgspec.Struct, gc=False):
    # A push ({"arg", "data"}), an event ({"event", "code", "msg"}) or a REST response ({"code", "msg", "data"}).
    arg: _Arg | None = None
    data: list[_Row] | None = None
    event: str = ""
    code: str = ""
    msg: str = ""


_FRAME_DECODER = msgspec.json.Decoder(_Frame)


# The hot path: a bbo-tbt push, numbers decoded in C. A level is [price, size, "0", orders].
class _BboArg(msgspec.Struct, gc=False):
    channel: Literal["bbo-tbt"]
    instId: str


class _BboRow(msgspec.Struct, gc=False):
    # Bounds checked in C by the decode, at no measurable cost: a time before 2009 or past int8 in µs, or an id
    # outside int8 or negative, fails it and goes the general decode, which names the reason.
    asks: list[tuple[float, float, Any, Any]]
    bids: list[tuple[float, float, Any, Any]]
    ts: Annotated[int, msgspec.Meta(ge=MIN_TS_US // 1000, le=((1 << 63) - 1) // 1000)]
    # Required here: a push without it (or with null) goes the general decode, which rejects it.
    seqId: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class _Bbo(msgspec.Struct, gc=False):
    arg: _BboArg
    data: list[_BboRow]


_BBO_DECODER = msgspec.json.Decoder(_Bbo, strict=False)

_BOOK_CHANNELS = frozenset({"bbo-tbt", "books5"})
_STORED_CHANNELS = frozenset({"tickers", "funding-rate", "account"}) | _BOOK_CHANNELS
# Private channels an adapter may subscribe to without hftdb storing them.
_IGNORED_CHANNELS = frozenset({"orders", "positions", "balance_and_position", "fills", "liquidation-warning"})
# The notice OKX sends before closing connections for a service upgrade.
_NOTICE_RECONNECT = "64008"


class _Instrument(msgspec.Struct, gc=False):
    instId: str
    instType: str = ""
    state: str = ""
    baseCcy: str = ""
    quoteCcy: str = ""
    instFamily: str = ""
    uly: str = ""
    tickSz: str = ""
    lotSz: str = ""
    ctVal: str = ""


class _Instruments(msgspec.Struct, gc=False):
    code: str
    data: list[_Instrument] = []
    msg: str = ""


_INSTRUMENTS_DECODER = msgspec.json.Decoder(_Instruments)

_STATUS: dict[str, SymbolStatus] = {
    "live": "trading",
    "suspend": "halted",
    "preopen": "halted",
    "expired": "delisted",
}
_KIND: dict[str, SymbolKind] = {
    "SPOT": "spot",
    "MARGIN": "spot",
    "SWAP": "perpetual",
    "FUTURES": "future",
    "OPTION": "option",
}


def _rest_error(code: str, msg: str) -> FrameError:
    return FrameError(f"OKX error {code}: {msg}", reason="exchange_error")


def _decode_rest(payload: bytes | str, decoder: msgspec.json.Decoder[Any] = _FRAME_DECODER) -> Any:
    """A REST response's body, checked: a bad body is a FrameError, a non-zero ``code`` the venue's error."""
    try:
        response = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
    if response.code != "0":
        raise _rest_error(response.code, response.msg)
    return response


class OkxParser(VenueParser):
    """Parse OKX v5 spot (``OKX_SPOT``) or swap (``OKX_SWAP``) payloads.

    Stateless apart from its venue, a memo of parsed prices and its symbol ids. ``account`` names the account of
    the balances parsed from the private ``account`` channel. ``symbol_ids`` (``(exchange, symbol) -> id or
    None``) lets bbo-tbt rows carry their ``symbol_id``, as :class:`~hftdb.exchanges.parse_binance.BinanceParser`
    does.
    """

    venues = _VENUES

    def in_market(self, symbol: str) -> bool:
        """Spot lists ``BTC-USDT``; swaps (``instType=SWAP``) list linear and inverse perpetual swaps
        (``BTC-USDT-SWAP``, ``BTC-USD-SWAP``). Dated futures (``BTC-USD-220527``) and options
        (``BTC-USD-220527-30000-C``) are other markets."""
        parts = symbol.split("-")
        if self.venue is ExchangeName.OKX_SPOT:
            return len(parts) == 2
        return len(parts) == 3 and parts[2] == "SWAP"

    def book_ticker(self, raw: bytes | str, recv_ts: int) -> BookTicker | None:
        """The hot path: a one-row ``bbo-tbt`` push with both sides as its record, or None for any other frame
        (which :meth:`parse` then handles, rejections included). Same values as :meth:`parse`."""
        try:
            push = _BBO_DECODER.decode(raw)
        except (msgspec.DecodeError, RecursionError):  # the general decode names the reason
            return None
        data = push.data
        symbol = push.arg.instId
        if len(data) != 1 or not symbol:
            return None
        row = data[0]
        bids = row.bids
        asks = row.asks
        if not bids or not asks:
            return None  # the general decode names the reason (bad_time, missing_field, bad_update_id...)
        bid = bids[0]
        ask = asks[0]
        sid = self._ids.get(symbol)
        return BookTicker(
            self._exchange, symbol, bid[0], bid[1], ask[0], ask[1], recv_ts, row.ts * 1000, row.seqId,
            sid if sid is not None else self._symbol_id(symbol),
        )

    def parse_general(self, raw: bytes | str, recv_ts: int) -> Parsed:
        """:meth:`parse` without the bbo-tbt hot path (for callers that tried :meth:`book_ticker` first)."""
        if (raw == "pong") if type(raw) is str else (raw == b"pong"):
            return Parsed(control=CONTROL_PONG)
        try:
            frame = _FRAME_DECODER.decode(raw)
        except msgspec.ValidationError as exc:
            return self._classify(raw, exc)
        except msgspec.DecodeError as exc:
            raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
        except RecursionError:
            raise too_deep() from None
        arg = frame.arg
        rows = frame.data
        if frame.event:
            return _event(frame)
        if arg is None or rows is None:
            raise FrameError("neither a push nor an event", reason="bad_envelope")
        channel = arg.channel
        if channel == "tickers":
            return Parsed(self._tickers(rows, recv_ts))
        if channel in _BOOK_CHANNELS:
            return Parsed(self._books(arg.instId, rows, recv_ts))
        if channel == "funding-rate":
            return Parsed(funding_rates=self._funding(rows, recv_ts, settled=False))
        if channel == "account":
            return Parsed(balances=self._balances(rows, recv_ts, self.account))
        return _other_channel(channel)

    def _tickers(self, rows: list[_Row], recv_ts: int) -> list[BookTicker]:
        prices = self._prices
        quotes = []
        for row in rows:
            if not (row.bidPx and row.bidSz and row.askPx and row.askSz):
                continue  # one side of the book is empty: no quote
            if not row.instId:
                raise FrameError("tickers row without instId", reason="missing_field")
            try:
                bid = prices[row.bidPx]
                bid_qty = float(row.bidSz)
                ask = prices[row.askPx]
                ask_qty = float(row.askSz)
            except ValueError as exc:
                raise FrameError(f"bad ticker number: {exc}", reason="bad_number") from None
            quotes.append(
                BookTicker(self._exchange, row.instId, bid, bid_qty, ask, ask_qty, recv_ts, ms_to_us(row.ts))
            )
        return quotes

    def _books(self, inst_id: str, rows: list[_Row], recv_ts: int) -> list[BookTicker]:
        if not inst_id:
            raise FrameError("book push without arg.instId", reason="missing_field")
        prices = self._prices
        quotes = []
        for row in rows:
            bids = row.bids
            asks = row.asks
            if bids is None or asks is None:
                raise FrameError("book row without bids/asks", reason="missing_field")
            if row.seqId is None:
                # Every bbo-tbt and books5 push carries its seqId: without it the row cannot be sequenced or
                # told from a duplicate.
                raise FrameError("book row without seqId", reason="missing_field")
            if not row.ts:
                # Every bbo-tbt and books5 push carries its ts (unlike older funding-rate pushes): a book row
                # without its exchange time is a broken frame, not a quote to store untimed.
                raise FrameError("book row without ts", reason="missing_field")
            error = bad_update_id(row.seqId)
            if error is not None:
                raise error
            if not bids or not asks:
                continue  # one side of the book is empty: no quote
            try:
                bid = prices[bids[0][0]]
                bid_qty = float(bids[0][1])
                ask = prices[asks[0][0]]
                ask_qty = float(asks[0][1])
            except ValueError as exc:
                raise FrameError(f"bad book level: {exc}", reason="bad_number") from None
            except IndexError:
                raise FrameError("book level without price and size", reason="missing_field") from None
            sid = self._ids.get(inst_id)
            quotes.append(
                BookTicker(
                    self._exchange, inst_id, bid, bid_qty, ask, ask_qty, recv_ts, ms_to_us(row.ts), row.seqId,
                    sid if sid is not None else self._symbol_id(inst_id),
                )
            )
        return quotes

    def _funding(self, rows: list[_Row], recv_ts: int, *, settled: bool | None = None) -> list[FundingRate]:
        # settled: False for the channel (always the current period), None for REST, told apart per row.
        rates = []
        for row in rows:
            rate = to_float(row.fundingRate)
            if rate is None:
                continue
            if not row.instId:
                raise FrameError("funding row without instId", reason="missing_field")
            if settled is False or row.ts or row.nextFundingTime:
                # The current period (channel, or GET /public/funding-rate): settles at fundingTime. Older API
                # versions send no ts: the row then has no exchange time, not its settlement time as one.
                exchange_ts, next_funding = ms_to_us(row.ts), ms_to_us(row.fundingTime)
            else:
                # GET /public/funding-rate-history: a settled rate, stamped with its settlement time.
                exchange_ts, next_funding = ms_to_us(row.fundingTime), None
            rates.append(FundingRate(self._exchange, row.instId, rate, recv_ts, exchange_ts, next_funding))
        return rates

    def _balances(self, rows: list[_Row], recv_ts: int, account: str) -> list[Balance]:
        balances = []
        for row in rows:
            if row.details is None:
                raise FrameError("account row without details", reason="missing_field")
            for d in row.details:
                free = to_decimal(d.availBal)
                locked = to_decimal(d.frozenBal)
                cash = to_decimal(d.cashBal)
                # Some account modes leave a field "": recover it from cashBal = availBal + frozenBal.
                if free is None:
                    if cash is None:
                        raise FrameError(f"no available balance for {d.ccy}", reason="missing_field")
                    free = cash - (locked or 0)
                if locked is None:
                    locked = cash - free if cash is not None else Decimal(0)
                balances.append(
                    Balance(
                        exchange=self._exchange,
                        asset=d.ccy,
                        free=free,
                        locked=locked,
                        recv_ts=recv_ts,
                        exchange_ts=ms_to_us(d.uTime or row.uTime),
                        account=account,
                    )
                )
        return balances

    def _classify(self, raw: bytes | str, exc: msgspec.ValidationError) -> Parsed:
        obj = decode_any(raw)
        if not isinstance(obj, dict):
            raise FrameError(f"not an OKX frame: {exc}", reason="bad_envelope")
        arg = obj.get("arg")
        channel = arg.get("channel") if isinstance(arg, dict) else None
        if isinstance(channel, str) and channel and channel not in _STORED_CHANNELS:
            return _other_channel(channel)
        raise validation_error(exc)

    def parse_symbols(self, payload: bytes | str, exchange_id: int, synced_ts: int) -> list[Symbol]:
        """Parse ``GET /api/v5/public/instruments`` into symbols.

        Tick size is ``tickSz``, lot size ``lotSz`` (in contracts for derivatives), contract size ``ctVal``
        (in ``ctValCcy``: the base currency of linear swaps, the quote currency of inverse ones). Base and quote
        of derivatives come from the instrument family (``BTC-USD`` for both ``BTC-USD-SWAP`` and its futures).
        """
        response = _decode_rest(payload, _INSTRUMENTS_DECODER)
        symbols = []
        for inst in response.data:
            base, quote = inst.baseCcy, inst.quoteCcy
            if not base:
                base, _, quote = (inst.instFamily or inst.uly).partition("-")
            symbols.append(
                Symbol(
                    exchange_id=exchange_id,
                    symbol=inst.instId,
                    base=base or None,
                    quote=quote or None,
                    kind=_KIND.get(inst.instType, "unknown"),
                    status=_STATUS.get(inst.state, "unknown"),
                    tick_size=to_decimal(inst.tickSz),
                    lot_size=to_decimal(inst.lotSz),
                    contract_size=to_decimal(inst.ctVal),
                    last_synced=synced_ts,
                )
            )
        return symbols

    def parse_balances(self, payload: bytes | str, recv_ts: int, account: str = "default") -> list[Balance]:
        """Parse ``GET /api/v5/account/balance`` into balances (free and locked as on the ``account`` channel)."""
        response = _decode_rest(payload)
        return self._balances(response.data or [], recv_ts, account)

    def parse_funding(self, payload: bytes | str, recv_ts: int) -> list[FundingRate]:
        """Parse ``GET /api/v5/public/funding-rate`` (current) or ``.../funding-rate-history`` (settled)."""
        response = _decode_rest(payload)
        return self._funding(response.data or [], recv_ts)


def _other_channel(channel: str) -> Parsed:
    if channel in _IGNORED_CHANNELS:
        return Parsed(control=CONTROL_IGNORED, detail=channel)
    raise FrameError(f"unhandled OKX channel {channel!r}", reason="unknown_channel")


def _event(frame: _Frame) -> Parsed:
    event = frame.event
    where = f"{frame.arg.channel}:{frame.arg.instId}" if frame.arg is not None else None
    if event == "error":
        return Parsed(control=CONTROL_ERROR, detail=f"{frame.code}: {frame.msg}")
    if event == "subscribe":
        return Parsed(control=CONTROL_SUBSCRIBED, detail=where)
    if event == "unsubscribe":
        return Parsed(control=CONTROL_UNSUBSCRIBED, detail=where)
    if event == "login":
        if frame.code not in ("", "0"):
            return Parsed(control=CONTROL_ERROR, detail=f"{frame.code}: {frame.msg}")
        return Parsed(control=CONTROL_LOGIN)
    if event == "notice" and frame.code == _NOTICE_RECONNECT:
        return Parsed(control=CONTROL_RECONNECT, detail=f"{frame.code}: {frame.msg}")
    if event.endswith("-error"):
        return Parsed(control=CONTROL_ERROR, detail=f"{event} {frame.code}: {frame.msg}")
    return Parsed(control=CONTROL_NOTICE, detail=f"{event} {frame.code}: {frame.msg}".rstrip(": "))

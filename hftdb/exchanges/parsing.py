"""What every venue parser shares: the :class:`Parsed` result, :class:`Rejects` counting, number and time helpers.

Exchanges send numbers as decimal strings so that no precision is lost on the wire; the helpers here keep it
that way. A price becomes ``float(text)`` (one correctly rounded conversion, never arithmetic on an
intermediate float), an amount of money becomes ``Decimal(text)``, and a time becomes integer microseconds by
integer arithmetic. ``""`` is how the exchanges say "no value": the helpers return ``None`` for it. Text that
is not a number raises :class:`~hftdb.errors.FrameError` with reason ``"bad_number"``.

Reasons carried by ``FrameError`` are short, stable strings, counted by :class:`Rejects`:

``invalid_json``     the payload is not JSON
``bad_envelope``     JSON, but not any envelope the venue sends
``unknown_channel``  a well-formed frame of a channel or event this parser does not handle
``missing_field``    a field the channel always carries is absent
``bad_type``         a field has the wrong JSON type
``bad_number``       a numeric string that does not parse
``no_snapshot``      an incremental update arrived before the snapshot it applies to
``exchange_error``   a REST payload that is the exchange's error answer
``frame_too_large``  a frame longer than :data:`MAX_FRAME_BYTES` (refused before it is decoded)
``too_deep``         JSON nested deeper than the decoder's recursion limit (msgspec raises ``RecursionError``
                     near a depth of 1,000, cleanly: the stack is never exhausted)
``bad_symbol``       a symbol that is empty, longer than :data:`MAX_SYMBOL_CHARS`, or holds a control character,
                     a NUL or a lone UTF-16 surrogate (such text cannot be stored and must not reach the database)
``wrong_market``     a well-formed symbol of an instrument the venue does not list (e.g. a coin-margined
                     ``BTCUSD_PERP`` on Binance USD-M, an option on OKX swaps): see ``VenueParser.in_market``
``bad_time``         an exchange time outside what the writers take (before 2009, or a day past the local clock):
                     refused before admission, where it would pass for a duplicate (or make later rows pass for
                     duplicates)
``bad_update_id``    an update id (a sequencing key: Binance ``u``, Bybit ``u``, OKX ``seqId``) outside ``0`` to
                     ``2**63 - 1``, what the writers store (int8) and exchanges send: refused before sequencing and
                     admission, where it would become the symbol's last id and drop every later frame
``parser_error``     any other exception raised while handling the frame (a parser bug): the frame alone is lost
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Collection

import msgspec

from ..errors import FrameError
from ..models import BookTicker, ExchangeName, FeedRows, FundingRate

from ..rejects import Rejects

__all__ = [
    "Parsed",
    "newer_funding",
    "FloatCache",
    "CONTROL_SUBSCRIBED",
    "CONTROL_UNSUBSCRIBED",
    "CONTROL_LOGIN",
    "CONTROL_PONG",
    "CONTROL_ERROR",
    "CONTROL_NOTICE",
    "CONTROL_RECONNECT",
    "CONTROL_SNAPSHOT",
    "CONTROL_IGNORED",
    "to_float",
    "to_decimal",
    "to_int",
    "ms_to_us",
    "to_us",
    "MAX_FRAME_BYTES",
    "MAX_SYMBOL_CHARS",
    "time_ok",
    "name_ok",
    "bad_update_id",
]

logger = logging.getLogger(__name__)

#: The longest frame the general decode takes (bytes). Real frames are at most a few tens of KB (``!markPrice@arr``
#: with every USD-M symbol is ~150 KB); the connection already refuses frames past 16 MiB.
MAX_FRAME_BYTES = 1 << 20
#: The longest symbol taken. Real ones are at most ~30 characters (OKX options: ``BTC-USD-250328-100000-C``).
MAX_SYMBOL_CHARS = 64

# Values of ``Parsed.control``. A frame with a control value and no rows needs no storing; ``snapshot`` is the one
# that comes *with* rows: it tells a sequence-gap counter that update ids restart here.
CONTROL_SUBSCRIBED = "subscribed"  # a subscribe (or other command) was acknowledged
CONTROL_UNSUBSCRIBED = "unsubscribed"
CONTROL_LOGIN = "login"  # authentication of a private stream was acknowledged
CONTROL_PONG = "pong"
CONTROL_ERROR = "error"  # the exchange answered with an error; ``detail`` holds its code and message
CONTROL_NOTICE = "notice"  # informational message from the exchange
CONTROL_RECONNECT = "reconnect"  # the exchange is about to end this stream (shutdown, expired listen key...)
CONTROL_SNAPSHOT = "snapshot"  # rows from a full snapshot: update ids may restart
CONTROL_IGNORED = "ignored"  # a valid frame of a channel hftdb knowingly does not store; ``detail`` names it


class Parsed(FeedRows, gc=False):
    """What one payload turned into: rows to store (a :class:`~hftdb.models.FeedRows`, one list per table), and/or
    a control signal for the adapter.

    ``gc=False`` is safe: a ``Parsed`` holds lists of scalar-only records and never refers back to itself.
    """

    control: str | None = None
    detail: str | None = None


class FloatCache(dict[str, float]):
    """``cache[text]`` is ``float(text)``, remembered: a bounded memo for the hot path's price strings.

    ``float(str)`` costs ~200 ns, a large share of a quote's parse. Prices near the touch recur constantly (the
    best bid moves a tick and back), so for prices a hit (one dict lookup) is the rule; sizes rarely recur, and a
    miss costs more than a plain ``float()``, so sizes are not cached. The value is the very ``float(text)`` the
    miss computed: caching changes no result. When full the cache is simply cleared, as an LRU would cost more
    per hit than the occasional refill. Text that ``float()`` refuses raises ``ValueError`` (``TypeError`` for a
    non-string), exactly as ``float()`` would.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int = 4096) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be > 0, got {limit!r}")
        super().__init__()
        self.limit = limit

    def __missing__(self, text: str) -> float:
        value = float(text)
        if len(self) >= self.limit:
            self.clear()
        self[text] = value
        return value


def _bad_number(value: object) -> FrameError:
    return FrameError(f"not a number: {value!r:.60}", reason="bad_number")


def to_float(value: str | int | float | None) -> float | None:
    """Return ``value`` as a float: ``float(text)`` for a decimal string, ``None`` for ``""`` or ``None``.

    NaN, infinities and negative values come through: judging values is the writer's job, not the parser's.
    """
    if type(value) is str:
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            raise _bad_number(value) from None
    if value is None:
        return None
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _bad_number(value)


def to_decimal(value: str | int | float | None) -> Decimal | None:
    """Return ``value`` as an exact ``Decimal(text)``; ``None`` for ``""`` or ``None``.

    A float is taken through its shortest ``repr`` (what the JSON said), not its binary expansion.
    """
    if type(value) is str:
        if not value:
            return None
        try:
            return Decimal(value)
        except InvalidOperation:
            raise _bad_number(value) from None
    if value is None:
        return None
    if type(value) is int:
        return Decimal(value)
    if type(value) is float:
        return Decimal(repr(value))
    raise _bad_number(value)


def to_int(value: str | int | None) -> int | None:
    """Return ``value`` as an int; ``None`` for ``""`` or ``None``. Only plain ASCII digits (and a sign) parse."""
    if type(value) is int:
        return value
    if type(value) is str:
        if not value:
            return None
        # int() would also take "1_000", " 12" and non-ASCII digits: none of them is a number an exchange sends.
        digits = value[1:] if value[0] in "+-" else value
        if digits.isascii() and digits.isdigit():
            return int(value)
        raise _bad_number(value)
    if value is None:
        return None
    raise _bad_number(value)


def ms_to_us(value: str | int | None) -> int | None:
    """Convert a millisecond timestamp (int or digit string) to integer microseconds; ``None`` for ``""``."""
    ms = to_int(value)
    return None if ms is None else ms * 1000


# A current time is ~1.7e12 in ms, ~1.7e15 in µs and ~1.7e18 in ns. Below 1e14 it can only be ms (µs that small
# would be 1973); below 1e17 only µs (ns that small would be 1973 too).
_MS_BELOW = 100_000_000_000_000
_US_BELOW = 100_000_000_000_000_000


def to_us(value: str | int | None) -> int | None:
    """Convert a timestamp in ms, µs or ns, told apart by magnitude, to integer microseconds.

    For streams whose unit is a connection option (Binance's ``timeUnit=MICROSECOND``), so that the parser does
    not depend on how the adapter connected. ``None`` for ``""`` or ``None``.
    """
    ts = to_int(value)
    if ts is None:
        return None
    if ts < _MS_BELOW:
        return ts * 1000
    if ts < _US_BELOW:
        return ts
    return ts // 1000


def decode_any(raw: bytes | str) -> Any:
    """Decode ``raw`` into plain Python objects (slow paths only); not JSON raises ``invalid_json``, JSON nested
    past the decoder's recursion limit ``too_deep``."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise FrameError(f"invalid JSON: {exc}", reason="invalid_json") from None
    except RecursionError:
        raise too_deep() from None


def too_deep() -> FrameError:
    """The error for JSON nested past the decoder's recursion limit (msgspec raises ``RecursionError`` there)."""
    return FrameError("JSON nested too deep", reason="too_deep")


def name_ok(text: object) -> bool:
    """Whether ``text`` can name a symbol or an asset: a non-empty ``str`` of at most :data:`MAX_SYMBOL_CHARS`
    printable characters (``isprintable()`` is False for every control character, NUL included, and every
    surrogate code point: text the database refuses or that hangs a lookup)."""
    return type(text) is str and 0 < len(text) <= MAX_SYMBOL_CHARS and text.isprintable()


def time_ok(ts: int | None, ts_min: int, ts_max: int) -> bool:
    """Whether an exchange time (µs, or None: none sent) lies within ``[ts_min, ts_max]`` (the writers' bounds,
    which the intake passes: this module does not import the write path)."""
    return ts is None or ts_min <= ts <= ts_max


def bad_update_id(u: object) -> FrameError | None:
    """The error for an update id the writers cannot store or that no exchange sends (negative, or past int8:
    ``u >> 63`` is non-zero exactly then), else None. Checked before sequencing and admission, which key on it."""
    if type(u) is int and not u >> 63:
        return None
    return FrameError(f"update id {u!r:.40} outside 0 to 2**63 - 1", reason="bad_update_id")


def validation_error(exc: msgspec.ValidationError) -> FrameError:
    """Translate a msgspec validation error of a frame we do handle into a ``FrameError`` with a stable reason."""
    message = str(exc)
    reason = "missing_field" if message.startswith("Object missing required field") else "bad_type"
    return FrameError(message, reason=reason)


def bad_float(value: str) -> FrameError:
    """The error for a price or size string that ``float()`` refused: ``""`` is a missing field, else a bad number."""
    if not value:
        return FrameError("missing price or size", reason="missing_field")
    return _bad_number(value)


def newer_funding(rows: list[FundingRate], last: dict[Any, Any], stats: Any) -> list[FundingRate]:
    """The funding rows newer than ``last`` (updated here); the others are counted in ``stats.duplicates``.

    A row with an exchange time is newer when its time is above the symbol's last one. A row without one (OKX's
    ``funding-rate`` push of API versions that send no ``ts``) is identified by its settlement time and rate: it
    is dropped only when the symbol's last such row had both the same, so a new rate within a funding period is
    stored. A row with neither time always passes."""
    out = []
    for row in rows:
        key = row.exchange_ts
        if key is not None:
            prev = last.get(row.symbol)
            if prev is not None and key <= prev:
                stats.duplicates += 1
                continue
            last[row.symbol] = key
        elif row.next_funding_ts is not None:
            # Keyed apart from the exchange times (a tuple never equals a symbol), one entry per symbol.
            slot = (row.symbol, "period")
            ident = (row.next_funding_ts, row.rate)
            if last.get(slot) == ident:
                stats.duplicates += 1
                continue
            last[slot] = ident
        out.append(row)
    return out


class VenueParser:
    """What a venue's parser holds besides its decoders: its venue and account, a memo of parsed prices, and the
    symbol ids its hot path stamps on rows (``symbol_ids``: ``(exchange, symbol) -> id or None``, e.g.
    :meth:`DatabaseManager.resolve_symbol_id`), remembered per native symbol once known."""

    #: The venues a subclass parses.
    venues: Collection[ExchangeName] = ()

    def __init__(
        self,
        venue: ExchangeName,
        *,
        account: str = "default",
        symbol_ids: Callable[[str, str], int | None] | None = None,
    ) -> None:
        if venue not in self.venues:
            raise ValueError(f"venue must be one of {[v.value for v in self.venues]}, got {venue!r}")
        self.venue = venue
        self.account = account
        self._exchange = venue.value
        self._prices = FloatCache()
        self._resolve = symbol_ids
        # Only symbols that passed check_symbol enter either: the C hot path takes a frame only when its symbol
        # is in _ids, so it never sees a symbol the Python path would refuse.
        self._ids: dict[str, int] = {}
        self._good: set[str] = set()

    def in_market(self, symbol: str) -> bool:
        """Whether ``symbol`` (well-formed text) can name an instrument of this venue's market, as its symbol
        listing (``parse_symbols``) would: the venue classes say by the symbol's shape. Default: any."""
        return True

    def check_symbol(self, symbol: str) -> None:
        """Raise :class:`FrameError` ``bad_symbol`` for text that cannot be a symbol (empty, too long, a control
        character, a NUL, a lone surrogate) and ``wrong_market`` for an instrument of another market
        (:meth:`in_market`); remember the symbols that pass, so that the next check is one set lookup."""
        if symbol in self._good:
            return
        if not name_ok(symbol):
            raise FrameError(f"bad symbol {symbol!r:.80}", reason="bad_symbol")
        if not self.in_market(symbol):
            raise FrameError(f"{symbol!r} is not an instrument of {self._exchange}", reason="wrong_market")
        if len(self._good) >= 100_000:  # a flood of distinct symbols must not grow this without bound
            self._good.clear()
        self._good.add(symbol)

    def _symbol_id(self, symbol: str) -> int | None:
        # Hot paths look in self._ids inline first and call this on a miss.
        sid = self._ids.get(symbol)
        if sid is None:
            if symbol not in self._good:
                self.check_symbol(symbol)
            if self._resolve is not None:
                sid = self._resolve(self._exchange, symbol)
                if sid is not None:
                    self._ids[symbol] = sid
        return sid

    def book_ticker(self, raw: bytes | str, recv_ts: int) -> BookTicker | None:
        """The venue's hot path: a book-ticker frame as its record, or None for any other frame."""
        return None

    def parse_general(self, raw: bytes | str, recv_ts: int) -> Parsed:
        """Parse any frame the hot path did not take."""
        raise NotImplementedError

    def parse(self, raw: bytes | str, recv_ts: int) -> Parsed:
        """Parse one websocket frame, exactly as received, into rows and/or a control signal: the hot path
        first, the general decode for anything else.

        Raises :class:`~hftdb.errors.FrameError` when the frame cannot be parsed.
        """
        row = self.book_ticker(raw, recv_ts)
        if row is not None:
            return Parsed([row])
        return self.parse_general(raw, recv_ts)

"""The acceptance rules of the time-series rows, with their reject reasons: written here once.

A row is taken when it passes these checks and rejected alone, with the reason named here, when it does not.
Every path that stores rows uses them: the writers (:mod:`hftdb.store.tables`), the book-ticker encoder
(:mod:`hftdb.store.vector`, through :func:`book_ok_columns`), the feeds' hot paths that pack rows while parsing
(:mod:`hftdb.exchanges.parse_binance`, :func:`book_fits`). The two C hot paths (``_binance_fast.c``,
``_vector_fast.c``) compile the same comparison; ``tests/test_wire_rules.py`` runs them and these functions on
the same inputs.

A book ticker is taken when ``0 < bid_price <= ask_price < inf``, both quantities are in ``(0, inf)``, and its
times are in ``[MIN_TS_US, ts_max]`` where ``ts_max`` is the local clock plus
:data:`~hftdb.models.FUTURE_SLACK_US`. The chained comparison is False for NaN and raises ``TypeError`` for a
value of the wrong type, so one expression settles the common case. A bool is a wrong type too, though Python,
``struct`` and numpy take True as 1: the packers refuse it (:mod:`hftdb.wire.books` looks for it; the C
packer takes floats and exact ints only) and the row is rejected alone.
"""

from __future__ import annotations

import math
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import numpy as np

from ..errors import ValidationError
from ..models import MIN_TS_US, Balance, BookTicker, FundingRate

__all__ = [
    "INF", "MAX_ASSET_LEN", "MAX_ACCOUNT_LEN", "NEXT_FUNDING_AHEAD_US",
    "book_fits", "book_ok_columns", "book_ticker_reason", "funding_fits", "funding_reason", "funding_reason_full",
    "balance_check", "account_reason", "bad_text",
    "ts_reason", "price_reason", "to_decimal", "NOT_A_RECORD", "row_list",
]

INF = math.inf
MAX_ASSET_LEN = 32
MAX_ACCOUNT_LEN = 64
#: The reason a write call's element that is not its table's record (a dict, None, another record) is rejected.
NOT_A_RECORD = {BookTicker: "not_a_book_ticker", FundingRate: "not_a_funding_rate", Balance: "not_a_balance"}


def row_list(rows: Any, record: type) -> list[Any]:
    """A write call's rows as a list (the list itself when given one); a ValidationError when the argument is no
    collection of rows at all (a record, None, a str, a dict, a number). Its elements are not looked at here."""
    if type(rows) is list:
        return rows
    if rows is None or isinstance(rows, (str, bytes, dict, msgspec.Struct)):
        raise ValidationError(f"expected a list (an iterable) of {record.__name__} records, got {_brief(rows)}")
    try:
        return list(rows)
    except TypeError:
        raise ValidationError(f"expected a list (an iterable) of {record.__name__} records, "
                              f"got {_brief(rows)}") from None


def _brief(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


#: The largest magnitude of an amount: a balance's history is read as float64 (numeric -> float8).
MAX_AMOUNT = Decimal(sys.float_info.max)
#: The most digits after the point a PostgreSQL numeric holds.
MAX_AMOUNT_SCALE = 16383
#: A funding row's next funding time is in the future by design: it may be up to a year past ``ts_max``.
NEXT_FUNDING_AHEAD_US = 365 * 86_400_000_000


_FLOAT_MAX_INT = int(sys.float_info.max)


def book_fits(bid_price: float, bid_qty: float, ask_price: float, ask_qty: float, exchange_ts: int,
              ts_max: int) -> bool:
    """Whether a book ticker with these values is taken (its receipt time checked apart, once per read).

    False for NaN; raises ``TypeError`` for a value of the wrong type (the caller's cue to name the reason with
    :func:`book_ticker_reason`)."""
    return (0.0 < bid_price <= ask_price < INF and 0.0 < bid_qty < INF and 0.0 < ask_qty < INF
            and MIN_TS_US <= exchange_ts <= ts_max)


def book_ok_columns(bp: Any, bq: Any, ap: Any, aq: Any, recv: Any, ex: Any, ts_max: int) -> Any:
    """:func:`book_fits` over numpy columns (float64 prices and quantities, int64 Unix µs times, ``ex`` None
    when the rows have no exchange time): a boolean array, True where the row is taken."""
    with np.errstate(invalid="ignore"):
        ok = (bp > 0) & (bp <= ap) & (ap < INF) & (bq > 0) & (bq < INF) & (aq > 0) & (aq < INF)
        ok &= (recv >= MIN_TS_US) & (recv <= ts_max)
        if ex is not None:
            ok &= (ex >= MIN_TS_US) & (ex <= ts_max)
    return ok


def bad_text(value: str) -> bool:
    """Whether a text value must not reach the database: it holds a character that is not printable.

    ``str.isprintable`` (one C pass) is False for NUL, which PostgreSQL text cannot hold (22021), for a lone
    surrogate, which UTF-8 cannot encode, and for control, format, private-use and unassigned characters and
    separators other than the space, none of which belong in a symbol, an asset or an account name. Such a value
    is rejected with its row (``<field>_bad_char``) before any query: sent, it would fail the statement.
    """
    return not value.isprintable()


def ts_reason(ts: Any, ts_max: int, what: str) -> str | None:
    """Why a time (Unix µs) is refused (``<what>_wrong_type``, ``<what>_out_of_range``), or None."""
    if type(ts) is not int:
        return f"{what}_wrong_type"
    if ts < MIN_TS_US or ts > ts_max:
        return f"{what}_out_of_range"
    return None


def price_reason(value: Any, what: str, *, allow_zero: bool = False) -> str | None:
    """Why a price or quantity is refused (``_wrong_type``, ``_nan``, ``_infinite``, ``_negative``, ``_zero``
    after ``what``), or None."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{what}_wrong_type"
    if value != value:
        return f"{what}_nan"
    if value in (INF, -INF):
        return f"{what}_infinite"
    if type(value) is int and not -_FLOAT_MAX_INT <= value <= _FLOAT_MAX_INT:
        return f"{what}_infinite"  # an int no float64 holds: as out of range as an infinite price
    if value < 0:
        return f"{what}_negative"
    if value == 0 and not allow_zero:
        return f"{what}_zero"
    return None


def book_ticker_reason(r: BookTicker, ts_max: int) -> str:
    """The reason a book ticker that :func:`book_fits` refused is rejected (``invalid`` if none more precise)."""
    for value, what in ((r.bid_price, "bid_price"), (r.ask_price, "ask_price")):
        reason = price_reason(value, what)
        if reason:
            return reason
    for value, what in ((r.bid_qty, "bid_qty"), (r.ask_qty, "ask_qty")):
        reason = price_reason(value, what, allow_zero=True)
        if reason:
            return reason
        if value == 0:
            return "empty_quote"
    if r.bid_price > r.ask_price:
        return "crossed_quote"
    reason = ts_reason(r.recv_ts, ts_max, "recv_ts")
    if reason:
        return reason
    if r.exchange_ts is not None:
        reason = ts_reason(r.exchange_ts, ts_max, "exchange_ts")
        if reason:
            return reason
    if r.update_id is not None and (type(r.update_id) is not int or not -(2**63) <= r.update_id < 2**63):
        return "update_id_invalid"
    return "invalid"


def funding_fits(r: FundingRate, ts_max: int) -> bool:
    """Whether a funding row with every field set, as a feed sends it (float rate and prices, int times), is taken:
    :func:`funding_reason`'s rule for that common shape in one expression (~0.2 µs against ~0.6), which
    :func:`funding_reason` asks first. False means only "look closer": rows of other shapes (an int rate, NULL
    fields) may be taken all the same."""
    rate, mark, index = r.rate, r.mark_price, r.index_price
    recv, ex, nxt = r.recv_ts, r.exchange_ts, r.next_funding_ts
    return (type(rate) is float and -INF < rate < INF and type(mark) is float and 0.0 < mark < INF
            and type(index) is float and 0.0 < index < INF and type(recv) is int and MIN_TS_US <= recv <= ts_max
            and type(ex) is int and MIN_TS_US <= ex <= ts_max and type(nxt) is int
            and MIN_TS_US <= nxt <= ts_max + NEXT_FUNDING_AHEAD_US)


def funding_reason(r: FundingRate, ts_max: int) -> str | None:
    """Why a funding row is rejected, or None when it is taken."""
    if funding_fits(r, ts_max):
        return None  # the common shape, settled in one expression
    return funding_reason_full(r, ts_max)


def funding_reason_full(r: FundingRate, ts_max: int) -> str | None:
    """:func:`funding_reason` without its shortcut (:func:`funding_fits`): every check in turn. The rule itself;
    ``tests/test_wire_rules.py`` holds the shortcut to it."""
    rate = r.rate
    if not isinstance(rate, (int, float)) or isinstance(rate, bool):
        return "rate_wrong_type"
    if (not -_FLOAT_MAX_INT <= rate <= _FLOAT_MAX_INT) if type(rate) is int else not math.isfinite(rate):
        return "rate_not_finite"
    for value, what in ((r.mark_price, "mark_price"), (r.index_price, "index_price")):
        if value is not None:
            reason = price_reason(value, what)
            if reason:
                return reason
    reason = ts_reason(r.recv_ts, ts_max, "recv_ts")
    if reason:
        return reason
    if r.exchange_ts is not None:
        reason = ts_reason(r.exchange_ts, ts_max, "exchange_ts")
        if reason:
            return reason
    if r.next_funding_ts is not None:
        reason = ts_reason(r.next_funding_ts, ts_max + NEXT_FUNDING_AHEAD_US, "next_funding_ts")
        if reason:
            return reason
    return None


def to_decimal(value: Any) -> Decimal | None:
    """An amount as an exact Decimal (a float by its shortest repr), or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return None
    return None


def account_reason(account: Any) -> str | None:
    """Why a balance row's account is refused (``account_invalid``: not 1 to :data:`MAX_ACCOUNT_LEN` characters;
    ``account_bad_char``: a character that is not printable), or None. Also checked up front where an account
    is given once for many rows (``hftdb ingest-file --account``)."""
    if not isinstance(account, str) or not 0 < len(account) <= MAX_ACCOUNT_LEN:
        return "account_invalid"
    if not account.isprintable():
        return "account_bad_char"
    return None


def balance_check(r: Balance, ts_max: int) -> tuple[str | None, Decimal, Decimal]:
    """(reason, free, locked): why a balance row is rejected (None when taken), and its amounts as Decimals."""
    zero = Decimal(0)
    if not isinstance(r.asset, str) or not 0 < len(r.asset) <= MAX_ASSET_LEN:
        return "asset_invalid", zero, zero
    if not r.asset.isprintable():
        return "asset_bad_char", zero, zero
    if reason := account_reason(r.account):
        return reason, zero, zero
    free, locked = to_decimal(r.free), to_decimal(r.locked)
    if free is None or locked is None:
        return "amount_wrong_type", zero, zero
    if not free.is_finite() or not locked.is_finite():
        return "amount_not_finite", zero, zero
    if (abs(free) > MAX_AMOUNT or abs(locked) > MAX_AMOUNT or free.as_tuple().exponent < -MAX_AMOUNT_SCALE
            or locked.as_tuple().exponent < -MAX_AMOUNT_SCALE):
        return "amount_out_of_range", zero, zero
    if locked < 0:
        return "locked_negative", zero, zero
    reason = ts_reason(r.recv_ts, ts_max, "recv_ts")
    if reason:
        return reason, zero, zero
    if r.exchange_ts is not None:
        reason = ts_reason(r.exchange_ts, ts_max, "exchange_ts")
        if reason:
            return reason, zero, zero
    return None, free, locked

"""The C hot paths hold to the one book-ticker rule of :mod:`hftdb.wire.rules`, on the same inputs.

``book_fits`` is the rule; ``book_ok_columns`` is its numpy form (the vectorized writer), ``_vector_fast``'s
``ok`` flag and ``_binance_fast``'s choice to take a frame are its two C forms. Each edge value of each field
(NaN, infinities, signs, zero, the smallest subnormal, the largest double; times at and past each bound) goes
through all of them.
"""

from __future__ import annotations

import itertools
import math

import msgspec
import numpy as np
import pytest

from hftdb.models import FUTURE_SLACK_US, MIN_TS_US, BookTicker, ExchangeName, FundingRate, now_us
from hftdb.wire.loader import NATIVE
from hftdb.wire.rules import NEXT_FUNDING_AHEAD_US, book_fits, book_ok_columns, book_ticker_reason, funding_fits, funding_reason, funding_reason_full

VALUES = [math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 5e-324, 1.0, 2.0, 1.7976931348623157e308]
NOW = now_us()
TS_MAX = NOW + FUTURE_SLACK_US
TIMES = [MIN_TS_US - 1, MIN_TS_US, NOW, TS_MAX, TS_MAX + 1]


def grid() -> list[tuple[float, float, float, float, int]]:
    return list(itertools.product(VALUES, VALUES, VALUES, VALUES, TIMES))


def test_the_numpy_form_is_the_rule():
    cases = grid()
    bp, bq, ap, aq, ex = (np.array(col) for col in zip(*cases))
    recv = np.full(len(cases), NOW, dtype=np.int64)
    expected = [book_fits(*case, TS_MAX) for case in cases]
    assert book_ok_columns(bp, bq, ap, aq, recv, ex.astype(np.int64), TS_MAX).tolist() == expected
    assert any(expected) and not all(expected)


def test_a_refused_row_has_a_precise_reason():
    for case in grid():
        if not book_fits(*case, TS_MAX):
            bp, bq, ap, aq, ex = case
            assert book_ticker_reason(BookTicker("x", "S", bp, bq, ap, aq, NOW, ex, 1, 1), TS_MAX) != "invalid"


def test_the_funding_shortcut_is_the_rule():
    # funding_fits settles the common shape (every field set, floats and ints) in one expression, before
    # funding_reason's checks: it must take a row of that shape exactly when the checks do, and never take a row of
    # another shape that they refuse.
    floats = [math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 5e-324, 1.0]
    odd = [None, 1, True, "1.0", np.float64(1.0)]
    nexts = TIMES + [TS_MAX + NEXT_FUNDING_AHEAD_US, TS_MAX + NEXT_FUNDING_AHEAD_US + 1]
    taken = 0
    for rate, mark, index, recv, ex, nxt in itertools.chain(
        itertools.product(floats, floats[3:], floats[3:], TIMES, TIMES[1:3], nexts[1:3]),
        itertools.product(floats[3:] + odd, floats + odd, [1.0], TIMES[1:3], TIMES + [None, 1.5], nexts + [None]),
        itertools.product([1e-4], [2.0], [2.0] + odd, TIMES + [True, NOW * 1.0], [NOW], nexts + [True]),
    ):
        r = FundingRate("x", "S", rate, recv, ex, nxt, mark, index, 1)
        reason = funding_reason_full(r, TS_MAX)
        assert funding_reason(r, TS_MAX) == reason
        if funding_fits(r, TS_MAX):
            assert reason is None, r
            taken += 1
        elif all(type(v) is float for v in (rate, mark, index)) and all(type(v) is int for v in (recv, ex, nxt)):
            assert reason is not None, r
    assert taken


@pytest.mark.skipif(NATIVE.pack_tickers is None, reason="hftdb built without its C packer (or HFTDB_NO_C set)")
def test_the_c_packer_is_held_to_the_rule():
    for case in grid():
        bp, bq, ap, aq, ex = case
        row = BookTicker("x", "S", bp, bq, ap, aq, NOW, ex, 1, 1)
        out = NATIVE.pack_tickers([row], BookTicker, True, True, True, MIN_TS_US, TS_MAX)
        assert out is not None
        assert out[2] is book_fits(*case, TS_MAX), case


# Plain JSON numbers as Binance sends them (no sign, no exponent, the usual lengths: a longer number is handed
# back to the Python loop whatever its value, which is a shape the C path leaves alone, not a rule).
PRICES = ["0", "0.0", "0.00000001", "1", "1.5", "2", "99999999.99999999"]


@pytest.mark.skipif(NATIVE.book_read is None, reason="hftdb built without its C hot path (or HFTDB_NO_C set)")
def test_the_binance_c_path_takes_a_frame_exactly_when_the_rule_does():
    ms = [MIN_TS_US // 1000, NOW // 1000, TS_MAX // 1000, TS_MAX // 1000 + 1]
    taken = refused = 0
    for b, bq, a, aq, e in itertools.product(PRICES, PRICES, PRICES, PRICES, ms):
        data = {"e": "bookTicker", "u": 7, "s": "SUSDT", "b": b, "B": bq, "a": a, "A": aq, "T": e, "E": e}
        frame = msgspec.json.encode({"stream": "susdt@bookTicker", "data": data})
        rows: list[BookTicker] = []
        buf = bytearray()
        i, _ = NATIVE.book_read([frame], 0, NOW, TS_MAX, {}, {"SUSDT": 1}, rows, buf, BookTicker,
                                ExchangeName.BINANCE_USDM, MIN_TS_US)
        fits = book_fits(float(b), float(bq), float(a), float(aq), e * 1000, TS_MAX)
        # Taken (one row, one tuple) exactly when the rule takes it; otherwise handed back to the Python loop.
        assert (i, len(rows), bool(buf)) == ((1, 1, True) if fits else (0, 0, False)), (b, bq, a, aq, e)
        taken += fits
        refused += not fits
    assert taken and refused

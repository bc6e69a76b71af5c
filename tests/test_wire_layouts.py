"""The wire layer's COPY layouts, written once, read back as the values they were given.

Each tuple is decoded with :func:`hftdb.wire.copy.decode_tuple` (the commit path's own decoder), so a field out
of place, a wrong length or a wrong NULL shows up here without a database; the writers' tests store the same
tuples in PostgreSQL.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from hftdb.models import Balance, FundingRate, now_us
from hftdb.wire.books import LAYOUTS, PackedBooks
from hftdb.wire.copy import PG_EPOCH_US, decode_tuple
from hftdb.wire.rows import balance_tuple, funding_tuple

T = now_us()


@pytest.mark.parametrize("pattern", sorted(LAYOUTS))
def test_a_book_tuple_is_the_same_row_by_row_or_by_template(pattern):
    has_e, has_u = pattern
    layout = LAYOUTS[pattern]
    values = [7, T - PG_EPOCH_US] + ([T - 5 - PG_EPOCH_US] if has_e else []) + [1.5, 2.0, 1.75, 3.0] + (
        [42] if has_u else [])
    row = layout.row.pack(8, 4, values[0], 8, values[1], *((8, values[2]) if has_e else (-1,)),
                          *(x for v in values[2 + has_e:6 + has_e] for x in (8, v)),
                          *((8, values[-1]) if has_u else (-1,)))
    recs = layout.empty(1)  # the template's constants, values filled in as the vectorized encoder does
    names = ["sid", "recv"] + (["ex"] if has_e else []) + ["bp", "bq", "ap", "aq"] + (["uid"] if has_u else [])
    for name, value in zip(names, values):
        recs[name] = value
    assert row == recs.tobytes()
    assert decode_tuple("ittddddq", row) == [7, T, T - 5 if has_e else None, 1.5, 2.0, 1.75, 3.0,
                                             42 if has_u else None]


def test_packed_books_are_the_rows_they_carry():
    books = PackedBooks([])
    assert books == [] and books.buf is None and books.ordered


@pytest.mark.parametrize("optional", [True, False])
def test_a_funding_tuple_reads_back(optional):
    r = FundingRate("binance_usdm", "BTCUSDT", 0.0001, T, T - 1 if optional else None,
                    T + 3_600_000_000 if optional else None, 65_000.5 if optional else None,
                    64_999.25 if optional else None)
    got = decode_tuple("ittdtdd", funding_tuple(3, r))
    assert got == [3, T, r.exchange_ts, 0.0001, r.next_funding_ts, r.mark_price, r.index_price]


def test_a_balance_tuple_reads_back():
    r = Balance(exchange="binance_spot", account="main", asset="USDT", free=Decimal("1.50"),
                locked=Decimal("0.000001"), recv_ts=T)
    got = decode_tuple("issttnn", balance_tuple(2, r, Decimal("1.50"), Decimal("0.000001")))
    assert got == [2, "main", "USDT", T, None, Decimal("1.50"), Decimal("0.000001")]

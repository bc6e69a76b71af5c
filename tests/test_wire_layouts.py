"""The wire layer's COPY layouts, written once, read back as the values they were given.

Each tuple is decoded with :func:`hftdb.wire.copy.decode_tuple` (the commit path's own decoder), so a field out
of place, a wrong length or a wrong NULL shows up here without a database; the writers' tests store the same
tuples in PostgreSQL.
"""

from __future__ import annotations

import random
import struct
from decimal import Decimal

import numpy as np
import pytest

from hftdb.models import Balance, FundingRate, now_us
from hftdb.wire.books import LAYOUTS, PACK, STORED, BookTuples, PackedBooks, read_stored
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


def test_book_tuples_repeats_are_the_rows_a_set_of_the_stored_rows_holds():
    # The replay's check of a block against stored rows (numpy hashes, then field by field) against the plain
    # definition: a row repeats a stored one when its (id, update id, four prices) tuple is in the set of theirs.
    rng = random.Random(3)
    values = [(rng.randrange(1, 50), rng.randrange(1, 400), *(rng.choice([1.5, 2.25, 3.0]) for _ in range(4)))
              for _ in range(3000)]
    stored_rows = rng.sample(values, 1200) + [(sid + 1, *rest) for sid, *rest in values[:100]]  # other ids
    stored_rows += [(sid, u, bp + 0.5, bq, ap, aq) for sid, u, bp, bq, ap, aq in values[100:200]]  # other prices
    stored_rows += stored_rows[:50]  # rows stored twice
    # Values a hash would get wrong: -0.0 against 0.0 (equal), NaN (equal to nothing, its own bits included).
    # (Two NaN objects: a tuple holding the same one would equal itself.)
    values += [(7, 1, 0.0, 1.0, -0.0, 1.0), (7, 2, float("nan"), 1.0, 2.0, 1.0)]
    stored_rows += [(7, 1, -0.0, 1.0, 0.0, 1.0), (7, 2, float("nan"), 1.0, 2.0, 1.0)]
    buf = bytearray()
    for sid, u, bp, bq, ap, aq in values:
        buf += PACK(sid, T - PG_EPOCH_US, T - 5 - PG_EPOCH_US, bp, bq, ap, aq, u)
    tuples = BookTuples(T, "binance_usdm", {}, buf)
    stored = np.zeros(len(stored_rows), STORED)
    for name, column in zip(("sid", "key", "bp", "bq", "ap", "aq"), zip(*stored_rows)):
        stored[name] = column
    expected = [v in set(stored_rows) for v in values]
    got = tuples.repeats(stored)
    assert got.tolist() == expected
    assert 1000 < sum(expected) < 3000 and expected[-2] and not expected[-1]
    assert not tuples.repeats(np.zeros(0, STORED)).any()


def test_stored_rows_are_read_only_from_tuples_of_their_layout():
    # The replay reads a window's stored rows back from a binary COPY; a tuple of another shape (a NULL column
    # shortens it by its value's 8 bytes) makes the whole read None, so that the block is checked as records.
    whole = struct.Struct("!hiiiqidididid")
    row = whole.pack(6, 4, 7, 8, 42, 8, 1.5, 8, 2.0, 8, 1.75, 8, 3.0)
    recs = read_stored(row * 3)
    assert recs is not None and recs["sid"].tolist() == [7] * 3 and recs["key"].tolist() == [42] * 3
    assert recs["aq"].tolist() == [3.0] * 3
    assert len(read_stored(b"")) == 0
    with_null = struct.pack("!hiiiqiididid", 6, 4, 7, 8, 42, -1, 8, 2.0, 8, 1.75, 8, 3.0)  # bid_price NULL
    assert read_stored(row + with_null) is None
    assert read_stored(row[:-1]) is None
    # Nine tuples of which one lacks 8 bytes and another has 8 more: the total fits the layout, the lengths do not.
    longer = struct.Struct("!hiiiqidididid").pack(7, 4, 7, 8, 42, 8, 1.5, 8, 2.0, 8, 1.75, 8, 3.0) + bytes(8)
    assert len(row * 7 + with_null + longer) % len(row) == 0
    assert read_stored(row * 7 + with_null + longer) is None

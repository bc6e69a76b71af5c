"""The C decoder of packed latest rows (``hftdb.wire._native._columnar_fast``) against ``PackedRows.decode``'s Python columns.

Both decode the same buffers, built as migration 0002's ``packed`` column lays rows out (big-endian symbol id,
NULL bitmask, fields), for book tickers and funding rates, with every NULL pattern, extreme values and ids missing
from the maps; the records and the errors must be the same.
"""

from __future__ import annotations

import contextlib
import math
import random
import struct

import pytest

from hftdb.read import columnar, reads
from hftdb.errors import DatabaseError
from hftdb.wire import loader
from hftdb.wire.loader import NATIVE

needs_c = pytest.mark.skipif(NATIVE.decode_packed is None, reason="hftdb built without its C decoders")


def both(packed: columnar.PackedRows, *args):
    """(C result or exception, Python result or exception)."""
    out = []
    for with_c in (True, False):
        with contextlib.nullcontext() if with_c else loader.disabled():
            try:
                out.append(packed.decode(*args))
            except Exception as exc:  # compared by type and message below
                out.append((type(exc), str(exc)))
    return out


def rows_buf(packed: columnar.PackedRows, n: int, rng: random.Random) -> tuple[bytes, dict, dict]:
    parts, ex, sym = [], {}, {}
    for i in range(n):
        # Ids the C decoder shares one int object for (under 2**20, its table grown past 4,096), and ones it does not.
        sid = rng.choice([i + 1, 5_000 + 7 * i, (1 << 20) - 1 - i, 2**31 - 1 - i, -(i + 1)])
        flags = 0
        words = []
        for kind, bit in packed.fields:
            if bit is not None and rng.random() < 0.3:
                flags |= bit
                words.append(b"\0" * 8)  # the migration's zero bytes for NULL
            elif kind == "f8":
                words.append(struct.pack(">d", rng.choice([rng.uniform(-1e6, 1e6), 0.0, -0.0, math.inf, 1e-310,
                                                           rng.random()])))
            else:
                words.append(struct.pack(">q", rng.choice([rng.randrange(-2**63, 2**63), 0, -1, 2**63 - 1])))
        parts.append(struct.pack(">qq", sid, flags) + b"".join(words))
        ex[sid] = rng.choice(["binance_usdm", "okx_swap"])
        sym[sid] = f"S{i}USDT"
    return b"".join(parts), ex, sym


@needs_c
@pytest.mark.parametrize("packed", [reads._BT_PACKED, reads._FR_PACKED], ids=["book_tickers", "funding_rates"])
@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_c_and_python_decode_the_same_records(packed, n):
    rng = random.Random(n)
    buf, ex, sym = rows_buf(packed, n, rng)
    for exchange in (None, "binance_usdm"):
        for data in (buf, bytearray(buf), memoryview(buf)):
            with_c, python = both(packed, data, ex, sym, exchange)
            assert repr(with_c) == repr(python)  # repr: NaN-free here, but -0.0 vs 0.0 shows
            assert len(with_c) == n


@needs_c
def test_nan_payloads_survive():
    packed = reads._BT_PACKED
    nan = struct.pack(">d", math.nan)
    word = struct.pack(">q", 5)
    buf = struct.pack(">qq", 1, 0) + nan * 4 + word * 3
    with_c, python = both(packed, buf, {1: "x"}, {1: "S"})
    assert all(math.isnan(v) for v in (with_c[0].bid_price, python[0].ask_qty))


@needs_c
@pytest.mark.parametrize("missing", ["exchange", "symbol"])
def test_missing_ids_raise_key_error_in_both(missing):
    packed = reads._BT_PACKED
    buf, ex, sym = rows_buf(packed, 20, random.Random(3))
    victim = next(iter(ex))
    (ex if missing == "exchange" else sym).pop(victim)
    with_c, python = both(packed, buf, ex, sym, None)
    assert with_c == python == (KeyError, str(KeyError(victim)))


@needs_c
def test_a_short_buffer_is_a_database_error_in_both():
    with_c, python = both(reads._BT_PACKED, b"\0" * 80, {}, {})
    assert with_c == python and with_c[0] is DatabaseError

"""The C packer of ``hftdb.store.vector.add_tickers`` (``hftdb.wire._native._vector_fast``) against its struct packing.

Two writers (no database) take the same calls, one with the C packer and one without; what each leaves behind
(the COPY bytes of its batches, the newest row per symbol, the rejects by reason, the rows taken or the refusal)
must be the same, over every NULL pattern, ids on the rows or given apart, bad values and odd types.
"""

from __future__ import annotations

import contextlib
import math
import random

import numpy as np
import pytest

from hftdb import BookTicker, now_us
from hftdb.store import vector
from hftdb.config import StorageSettings, WriterSettings
from hftdb.store.tables import BookTickerWriter
from hftdb.wire import loader
from hftdb.wire.books import LAYOUTS
from hftdb.wire.loader import NATIVE

needs_c = pytest.mark.skipif(NATIVE.pack_tickers is None, reason="hftdb built without its C packer")
IDS = set(range(1, 21))


def writer() -> BookTickerWriter:
    ws = WriterSettings(spool_dir=None, batch_max_rows=300, buffer_max_rows=100_000)
    return BookTickerWriter(None, settings=ws, storage=StorageSettings(), spool_dir=None)  # type: ignore[arg-type]


def state(w: BookTickerWriter, taken: int | None) -> tuple:
    batches = [bytes(b.buf) for b in w._queue] + [bytes(w.current.buf)]
    latest = {k: repr(v) for k, v in w.current.latest.items()}
    return taken, batches, latest, w.rejects.snapshot(), w.current.rows, w.current.min_ts, w.current.max_ts


def run(calls: list[tuple[list[BookTicker], list[int] | None]], *, c: bool) -> list[tuple]:
    with contextlib.nullcontext() if c else loader.disabled():
        w = writer()
        out = []
        for rows, sids in calls:
            out.append(state(w, w.add_fast(rows, IDS, sids)))
        return out


def ticker(rng: random.Random, t: int, has_e: bool, has_u: bool, *, named: bool) -> BookTicker:
    bid = rng.choice([rng.uniform(0.001, 5e4), 1.0, 1e-300])
    return BookTicker("binance_usdm", f"S{rng.randint(1, 20)}", bid, rng.uniform(0, 100), bid * rng.uniform(1, 1.01),
                      rng.uniform(0.001, 100), t + rng.randint(-5_000, 5_000),
                      t - rng.randint(0, 900) if has_e else None, rng.randint(0, 2**63 - 1) if has_u else None,
                      None if named else rng.randint(1, 20))


ODD = [
    ("bid_price", 10), ("bid_price", "10.5"), ("bid_price", np.float64(10.25)), ("bid_price", math.nan),
    ("ask_qty", math.inf), ("bid_qty", -1.0), ("recv_ts", 1.5e15), ("recv_ts", True), ("recv_ts", -2**63),
    ("recv_ts", 2**70), ("exchange_ts", None), ("exchange_ts", 0), ("update_id", None), ("update_id", 7),
    ("update_id", 2**63), ("symbol_id", 2**31), ("symbol_id", 999), ("symbol_id", None), ("ask_price", 0.5),
]


def calls_for(seed: int, has_e: bool, has_u: bool) -> list[tuple[list[BookTicker], list[int] | None]]:
    rng = random.Random(seed)
    t = now_us()
    calls = []
    for k in range(12):
        named = k % 3 == 2
        rows = [ticker(rng, t + 10_000 * k, has_e, has_u, named=named) for _ in range(vector.MIN_ROWS + k * 17)]
        if k % 2:  # one odd value in the call
            field, value = ODD[(seed + k) % len(ODD)]
            i = rng.randrange(len(rows))
            rows[i] = BookTicker(**{**{f: getattr(rows[i], f) for f in BookTicker.__struct_fields__}, field: value})
        calls.append((rows, [rng.randint(1, 20) for _ in rows] if named else None))
    return calls


@needs_c
@pytest.mark.parametrize("has_e", [True, False])
@pytest.mark.parametrize("has_u", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_c_and_struct_packing_leave_the_same_batches(has_e, has_u, seed):
    calls = calls_for(seed, has_e, has_u)
    with_c = run(calls, c=True)
    without = run(calls, c=False)
    assert with_c == without
    assert any(s[0] for s in with_c)  # some calls were taken


@needs_c
@pytest.mark.parametrize("field,value", ODD, ids=[f"{f}={v!r}" for f, v in ODD])
def test_each_odd_value_agrees(field, value):
    t = now_us()
    rng = random.Random(7)
    rows = [ticker(rng, t, True, True, named=False) for _ in range(vector.MIN_ROWS)]
    rows[3] = BookTicker(**{**{f: getattr(rows[3], f) for f in BookTicker.__struct_fields__}, field: value})
    calls = [(rows, None)]
    assert run(calls, c=True) == run(calls, c=False)


@needs_c
def test_the_c_packer_refuses_what_it_does_not_take():
    t = now_us()

    def pack(rows, has_e=True, has_u=True, with_id=True):
        return NATIVE.pack_tickers(rows, BookTicker, has_e, has_u, with_id, t - 10, t + 10)

    good = BookTicker("x", "S", 1.0, 2.0, 3.0, 4.0, t, t, 5, 6)
    data, ids, ok, lo, hi, ordered, rising = pack([good, good])
    assert len(data) == 2 * LAYOUTS[(True, True)].dtype.itemsize
    assert (ids, ok, lo, hi, ordered, rising) == ([6, 6], True, t, t, True, False)
    for field, value in [("bid_price", 1), ("recv_ts", True), ("exchange_ts", None), ("symbol_id", 2**31)]:
        odd = BookTicker(**{**{f: getattr(good, f) for f in BookTicker.__struct_fields__}, field: value})
        assert pack([good, odd]) is None
    assert pack([good], has_e=False) is None  # a value where the pattern has NULL
    with pytest.raises(TypeError):
        pack((good,))


@needs_c
def test_the_c_packer_reports_checks_range_and_order():
    t = now_us()

    def pack(rows):
        return NATIVE.pack_tickers(rows, BookTicker, True, True, False, t - 10, t + 10)[1:]

    def row(**kw):
        return BookTicker(**{**dict(exchange="x", symbol="S", bid_price=1.0, bid_qty=2.0, ask_price=3.0, ask_qty=4.0,
                                    recv_ts=t, exchange_ts=t, update_id=5), **kw})

    assert pack([row(recv_ts=t - 1), row(recv_ts=t + 2)]) == (None, True, t - 1, t + 2, True, True)
    assert pack([row(recv_ts=t + 2), row(recv_ts=t - 1)]) == (None, True, t - 1, t + 2, False, False)
    assert pack([row(recv_ts=t), row(recv_ts=t), row(recv_ts=t + 1)]) == (None, True, t, t + 1, True, False)
    assert pack([row(recv_ts=t), row(recv_ts=t + 2), row(recv_ts=t + 1)]) == (None, True, t, t + 2, False, False)
    for bad in (dict(bid_price=math.nan), dict(ask_qty=math.inf), dict(bid_price=3.5), dict(bid_qty=0.0),
                dict(recv_ts=t + 11), dict(recv_ts=t - 11), dict(exchange_ts=t + 11), dict(exchange_ts=t - 11)):
        assert pack([row(), row(**bad)])[1] is False, bad


def test_cached_ids_agrees_with_its_python_twin():
    # The C pass a huge call's names are looked up with, against its Python twin: every name cached, one symbol or
    # exchange missing, a row with an id among named ones, a row of another type, a name that is not a str.
    from hftdb.wire.books import cached_ids

    t = now_us()
    names = {"a": {"X": 1, "Y": 2}, "b": {"X": 3}}

    def row(exchange: object = "a", symbol: object = "X", sid: int | None = None) -> BookTicker:
        return BookTicker(exchange, symbol, 1.0, 1.0, 2.0, 1.0, t, symbol_id=sid)  # type: ignore[arg-type]

    class Other(BookTicker):
        pass

    cases = {
        "cached": ([row(), row(symbol="Y"), row("b")], [1, 2, 3]),
        "empty": ([], []),
        "symbol missing": ([row(), row(symbol="Z")], None),
        "exchange missing": ([row(), row("c")], None),
        "an id": ([row(), row(sid=1)], None),
        "another type": ([row(), Other("a", "X", 1.0, 1.0, 2.0, 1.0, t)], None),
        "not a str": ([row(), row(symbol=1)], None),
    }
    for what, (rows, expected) in cases.items():
        if NATIVE.cached_ids is not None:
            assert cached_ids(rows, names) == expected, what
        with loader.disabled():
            assert cached_ids(rows, names) == expected, what

"""Book-ticker encoding: the one encoder of ``book_tickers`` rows, a call's rows packed, checked and batched at once.

Every way a book ticker comes in is encoded here and handed to :meth:`hftdb.store.writer.BatchWriter.append` as
:class:`TickerRows`: a whole call (:func:`add_tickers`), ``(symbol_id, ticker)`` pairs from the resolver or a
unit of work (:func:`add_pairs`, the writer's ``add``), numpy columns (:func:`add_columns`) and the feeds' packed
calls (:mod:`hftdb.store.packed`). A call's rows become binary COPY tuples in a few C-level passes:

1. the C packer (``_vector_fast.c``) writes each row's COPY tuple straight from the record's slots, checks its
   values on the way and, for rows named by exchange and symbol, looks their ids up in the symbol catalog's names
   in the same pass; where it is not built (or refuses the call), each row's whole msgspec ``astuple`` is packed
   by one precompiled ``struct.Struct`` per NULL pattern, in BookTicker's field order, all driven from C
   (``starmap``), strict about types (a string price or a float time raises ``struct.error``); names, and the
   fields the pattern has as NULL, take one ignored byte each (``hftdb.wire.books`` ``_Whole``), and numpy moves those columns
   into COPY tuples made from a template that holds the constant field count and lengths;
2. numpy views of the tuples give the columns for validation (only when some row fails the C packer's check),
   the receipt-time range, the partitions the rows fall in and the newest row per symbol.

A call the packers cannot take whole (rows of several NULL patterns, a wrong type, an unregistered symbol id)
returns None from :func:`add_tickers`; the caller resolves its ids and hands it to :func:`add_pairs`, which cuts
it into runs of one NULL pattern and halves a refused run until each refused row stands alone, to be checked and
packed by itself or rejected with its reason. A call whose rows pack but fail a value check (NaN, crossed, out
of range...) stays whole: the failing rows are counted under their reasons (:mod:`hftdb.wire.rules`) and the
rest are taken.
"""

from __future__ import annotations

import struct
from itertools import repeat, starmap
from time import time_ns as _time_ns
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import msgspec
import numpy as np
from msgspec.structs import astuple

from ..models import FUTURE_SLACK_US, MIN_TS_US, BookTicker, now_us
from ..wire.books import LAYOUTS, Layout, ids_by_name
from ..wire.copy import PG_EPOCH_US
from ..wire.loader import NATIVE
from ..wire.rules import INF, book_ok_columns, book_ticker_reason

if TYPE_CHECKING:
    from .batch import Batch
    from .writer import BatchWriter

__all__ = ["TickerRows", "add_pairs", "add_tickers", "add_columns", "latest_of"]


_SYMBOL_ID = attrgetter("symbol_id")
_RECV_TS = attrgetter("recv_ts")

#: Calls smaller than this are not offered whole (``BookTickerWriter.add_fast``): the manager pairs their rows with
#: ids first (:mod:`hftdb.store.resolve`), then they are encoded here all the same (:func:`add_pairs`). Pairing a few rows
#: costs less than a failed whole-call attempt. Without the C packer (struct packing, a dozen numpy operations,
#: ~50 µs a call) only calls of about a hundred rows pay for the whole-call attempt.
MIN_ROWS = 8 if NATIVE.pack_tickers is not None else 128


class TickerRows(msgspec.Struct, gc=False):
    """Checked book-ticker COPY tuples of one :class:`Layout`, as :meth:`hftdb.store.writer.BatchWriter.append` takes
    them (the writer's :class:`~hftdb.store.batch.Encoded`).

    ``data`` holds the tuples (constants set), ``sids`` each row's symbol id and ``rows`` its ``BookTicker`` (the
    batch keeps the newest per symbol), or None for rows that came as columns (the newest are then built from the
    tuples). ``lo``/``hi``: the receipt-time range; ``ordered``: receipt times never decrease along the rows;
    ``rising``: no row can repeat an earlier one of them (receipt times rising strictly, or rows a feed's intake
    admitted in order). ``recv``: the receipt times as a numpy array (Unix µs) when the encoder has them, else read
    back from the tuples on first use.

    A msgspec Struct (not tracked by the garbage collector: it refers to no object that refers back), not a class
    with ``__slots__``: one is made per call, and making it cost ~0.35 µs against ~0.06 (a 1-row call costs ~1.4).
    """

    layout: Layout
    data: Any
    sids: Sequence[int]
    rows: Sequence[BookTicker] | None
    lo: int
    hi: int
    ordered: bool
    rising: bool
    recv: Any = None

    def __len__(self) -> int:
        """The number of rows."""
        return len(self.sids)

    def _recv_ts(self) -> Any:
        # Unix µs, read back from the tuples when the encoder did not keep them: only a call that crosses a batch
        # or partition boundary needs them.
        if self.recv is None:
            self.recv = np.frombuffer(self.data, self.layout.dtype)["recv"].astype(np.int64) + PG_EPOCH_US
        return self.recv

    def slice(self, start: int, end: int) -> TickerRows:
        """Rows ``start`` to ``end``."""
        size = self.layout.dtype.itemsize
        recv = self._recv_ts()[start:end]
        return TickerRows(
            self.layout, memoryview(self.data)[start * size:end * size], self.sids[start:end],
            None if self.rows is None else self.rows[start:end], int(recv.min()), int(recv.max()),
            ordered=self.ordered, rising=self.rising, recv=recv)

    def partition_starts(self, interval_us: int) -> list[int]:
        """The start of every partition the rows' receipt times fall in."""
        recv = self._recv_ts()
        return np.unique(recv - recv % interval_us).tolist()  # type: ignore[no-any-return]

    def append_to(self, batch: Batch) -> int:
        """Append the tuples to ``batch`` and keep its newest row per symbol, dropping exact repeats of its rows or
        of earlier ones of these; return the rows appended.

        Rows newer than the whole batch and rising strictly pay nothing more than the append. Otherwise a row not
        newer than its symbol's newest in the batch is compared with the batch's rows; rows in order pay only for
        the rows at the same receipt time as an earlier one of their symbol.
        """
        buf = batch.buf
        assert buf is not None
        if self.rows is None:
            return self._append_columns(batch)
        data, sids, rows = self.data, self.sids, self.rows
        if self.rising and self.lo > batch.max_ts:
            buf += data
            batch.latest.update(zip(sids, rows))  # latest_of(in_order=True), inlined: the small calls' path
            return len(rows)
        if self.ordered and self.lo > batch.max_ts:
            # Newer than the whole batch: only a row at the same time as an earlier one of the call may repeat it.
            latest_of(batch.latest, sids, rows, in_order=True)
            suspects = _equal_times(sids, rows)
        else:
            suspects = _latest_and_suspects(batch.latest, sids, rows)
        if suspects:
            drop = _repeated(batch, data, self.layout.dtype.itemsize, suspects)
            if drop:
                data, sids, rows = _without(drop, data, sids, rows)
        buf += data
        return len(rows)

    def _append_columns(self, batch: Batch) -> int:
        layout = self.layout
        recs = np.frombuffer(self.data, layout.dtype)
        sid, recv = np.asarray(self.sids, dtype=np.int64), self._recv_ts()
        if not (self.rising and self.lo > batch.max_ts):
            # Some row may repeat an earlier one (of the batch, or of the call): compare their tuples.
            drop = _repeated(batch, self.data, layout.dtype.itemsize, range(len(recs)))
            if drop:
                keep = np.ones(len(recs), dtype=bool)
                keep[drop] = False
                recs, sid, recv = recs[keep], sid[keep], recv[keep]
                if not len(recs):
                    return 0
        ex = recs["ex"].astype(np.int64) + PG_EPOCH_US if layout.has_e else None
        _latest_columns(batch.latest, recs, layout, sid, recv, ex)
        assert batch.buf is not None
        batch.buf += recs.tobytes() if len(recs) < len(self.sids) else self.data
        return len(recs)


def add_pairs(writer: BatchWriter, pairs: Iterable[tuple[int, BookTicker]]) -> int:
    """Take ``(symbol_id, ticker)`` pairs (ids already resolved and registered) into ``writer``'s batches, every
    row through the same encoder as a whole call (:func:`add_tickers`); return how many were taken.

    A call the packers refuse whole (rows of several NULL patterns, a value of a type they do not take) is cut
    into runs of one NULL pattern, and a run still refused is halved until each refused row stands alone: a bad
    row is rejected alone with its reason, and the rows beside it are taken in their order.
    """
    pairs = pairs if isinstance(pairs, list) else list(pairs)
    if not pairs:
        return 0
    if len(pairs) == 1:
        sid, row = pairs[0]
        sids, rows = [sid], [row]
    else:
        sids = [p[0] for p in pairs]
        rows = [p[1] for p in pairs]
    pack_tickers = NATIVE.pack_tickers
    if pack_tickers is not None:
        # add_tickers's C path for ids the caller gives, inlined: a call of a few rows (a feed's socket read, a
        # strategy's quote) pays per call, not per row, for every Python call on its way (measured: 1-row calls
        # 2.5 -> ~1.4 us, benchmarks/bench_calls.py), so this path makes as few as it can.
        first = rows[0]
        has_e, has_u = first.exchange_ts is not None, first.update_id is not None
        ts_max = _time_ns() // 1000 + FUTURE_SLACK_US
        fast = pack_tickers(rows, BookTicker, has_e, has_u, sids, MIN_TS_US, ts_max)
        if fast is not None:
            data, _, ok, lo, hi, ordered, rising = fast
            layout = LAYOUTS[(has_e, has_u)]
            if ok:
                return writer.append(TickerRows(layout, data, sids, rows, lo, hi, ordered, rising))
            return _take_failing(writer, layout, data, sids, rows, ts_max)
    return _add_known(writer, rows, sids)


def _add_known(writer: BatchWriter, rows: list[BookTicker], sids: list[int]) -> int:
    taken = add_tickers(writer, rows, None, sids)
    if taken is not None:
        return taken
    if len(rows) == 1:
        return _add_one(writer, sids[0], rows[0])
    runs = _null_runs(rows)
    if len(runs) > 1:
        return sum(_add_known(writer, rows[a:b], sids[a:b]) for a, b in runs)
    mid = len(rows) // 2
    return _add_known(writer, rows[:mid], sids[:mid]) + _add_known(writer, rows[mid:], sids[mid:])


def _null_runs(rows: Sequence[BookTicker]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive rows of one NULL pattern of (exchange_ts, update_id)."""
    runs = []
    start, pattern = 0, None
    for i, r in enumerate(rows):
        p = (r.exchange_ts is None, r.update_id is None)
        if p != pattern:
            if i:
                runs.append((start, i))
            start, pattern = i, p
    runs.append((start, len(rows)))
    return runs


def _add_one(writer: BatchWriter, sid: int, r: BookTicker) -> int:
    """One row neither packer takes (a value of an odd type, or not a BookTicker): checked by the same rules and
    packed alone by its layout's ``struct``, which takes what the packers' ``struct`` path takes; rejected with
    its reason otherwise."""
    ts_max = now_us() + FUTURE_SLACK_US
    bp, bq, ap, aq, recv, ex, uid = r.bid_price, r.bid_qty, r.ask_price, r.ask_qty, r.recv_ts, r.exchange_ts, r.update_id
    layout = LAYOUTS[(ex is not None, uid is not None)]
    try:
        if bool in {type(bp), type(bq), type(ap), type(aq), type(uid)}:
            raise TypeError  # (a bool is an int, and struct packs True as 1)
        if not (0.0 < bp <= ap < INF and 0.0 < bq < INF and 0.0 < aq < INF and MIN_TS_US <= recv <= ts_max):
            raise TypeError
        values = [8, 4, sid, 8, recv - PG_EPOCH_US]
        if ex is not None:
            if not MIN_TS_US <= ex <= ts_max:
                raise TypeError
            values += [8, ex - PG_EPOCH_US]
        else:
            values.append(-1)
        values += [8, bp, 8, bq, 8, ap, 8, aq] + ([8, uid] if uid is not None else [-1])
        data = layout.row.pack(*values)
    except (TypeError, OverflowError, struct.error):
        writer.rejects.add(book_ticker_reason(r, ts_max), f"{r.exchange}:{r.symbol} {r!r}")
        return 0
    return writer.append(TickerRows(layout, data, [sid], [r], recv, recv, ordered=True, rising=True))


def add_tickers(
    writer: BatchWriter, rows: Sequence[BookTicker], known_ids: set[int] | None, sids: list[int] | None = None,
    names: dict[str, dict[str, int]] | None = None,
) -> int | None:
    """Take ``rows`` into ``writer``'s batches: each carries a registered ``symbol_id``, or ``sids`` gives their
    ids, or (``names``, the symbol catalog's :meth:`~hftdb.db.catalog.SymbolCatalog.names`) every row is named by a
    cached exchange and symbol. ``known_ids``: the registered ids (None: ``sids`` are known to be). None if they
    can't all be taken this way (:func:`add_pairs` then sorts out each bad row)."""
    n = len(rows)
    if n == 0:
        return 0
    first = rows[0]
    layout = LAYOUTS[(first.exchange_ts is not None, first.update_id is not None)]
    pack_tickers = NATIVE.pack_tickers
    if pack_tickers is not None and type(rows) is list:
        # The C packer (_vector_fast.c) writes the COPY tuples straight from the records' slots and checks their
        # values on the way (and looks named rows' ids up in ``names``), or refuses the call (any row of another
        # type or NULL pattern, a value that is not a float or int, an int out of range, a name not cached) and
        # leaves it to the struct packing below, as before.
        ts_max = now_us() + FUTURE_SLACK_US
        ids_from: Any = (sids if type(sids) is list else False) if sids is not None else (
            names if names is not None else True)
        fast = pack_tickers(rows, BookTicker, layout.has_e, layout.has_u, ids_from, MIN_TS_US, ts_max)
        if fast is not None:
            data, ids, ok, lo, hi, ordered, rising = fast
            if known_ids is not None and not known_ids.issuperset(ids if sids is None else sids):
                return None
            if sids is not None:
                if ids is None:
                    np.frombuffer(data, layout.dtype)["sid"] = np.asarray(sids, dtype=np.int64)
                ids = sids
            if ok:
                # Every row valid: no numpy pass at all unless the call crosses a batch or partition boundary.
                return writer.append(TickerRows(layout, data, ids, rows, lo, hi, ordered, rising))
            return _take_failing(writer, layout, data, ids, rows, ts_max)
    if sids is None and names is not None:
        if list(map(_SYMBOL_ID, rows)).count(None) != n:
            return None
        sids = ids_by_name(rows, names)
        if sids is None:
            return None
    whole = layout.whole if sids is None else layout.whole_but_id
    try:
        packed = b"".join(starmap(whole.pack, map(astuple, rows)))
    except (struct.error, TypeError):
        # A wrong type, a None where the first row has a value, an out-of-range integer; a row that is not a
        # msgspec Struct (astuple's TypeError).
        return None
    src = np.frombuffer(packed, whole.dtype)
    if whole.nulls and not whole.nulls_hold(rows, src):
        return None  # a value where the first row has None
    if not whole.bools_absent(rows, src):
        return None  # a bool where a number goes, which struct took as 1 or 0
    sid = src["symbol_id"].astype(np.int64) if sids is None else np.asarray(sids, dtype=np.int64)
    if known_ids is not None and not known_ids.issuperset(sid.tolist()):
        return None
    recs = layout.empty(n)
    recs["sid"] = sid
    recv = src["recv_ts"].astype(np.int64)
    # Times come as Unix µs; the COPY wants µs since 2000-01-01.
    recs["recv"] = recv - PG_EPOCH_US
    ex = None
    if layout.has_e:
        ex = src["exchange_ts"].astype(np.int64)
        recs["ex"] = ex - PG_EPOCH_US
    for name, column in (("bp", "bid_price"), ("bq", "bid_qty"), ("ap", "ask_price"), ("aq", "ask_qty")):
        recs[name] = src[column]
    if layout.has_u:
        recs["uid"] = src["update_id"]
    return _take(writer, layout, recs, sid, recv, ex, rows)


def add_columns(
    writer: BatchWriter, sid: Any, bp: Any, bq: Any, ap: Any, aq: Any, recv: Any, ex: Any, uid: Any
) -> int:
    """Take book tickers given as numpy columns (ids already checked); return how many were taken."""
    layout = LAYOUTS[(ex is not None, uid is not None)]
    recs = layout.empty(len(sid))
    recs["sid"] = sid
    recs["recv"] = recv - PG_EPOCH_US
    if ex is not None:
        recs["ex"] = ex - PG_EPOCH_US
    recs["bp"], recs["bq"], recs["ap"], recs["aq"] = bp, bq, ap, aq
    if uid is not None:
        recs["uid"] = uid
    return _take(writer, layout, recs, sid.astype(np.int64), recv.astype(np.int64), ex, None)


def _take_failing(writer: BatchWriter, layout: Layout, data: Any, ids: Sequence[int], rows: Sequence[BookTicker],
                  ts_max: int) -> int:
    """:func:`_take` for the C packer's tuples of a call where some row failed its value check."""
    recs = np.frombuffer(data, layout.dtype)
    recv = recs["recv"].astype(np.int64) + PG_EPOCH_US
    ex = recs["ex"].astype(np.int64) + PG_EPOCH_US if layout.has_e else None
    return _take(writer, layout, recs, np.asarray(ids, dtype=np.int64), recv, ex, rows, ts_max)


def _take(
    writer: BatchWriter, layout: Layout, recs: Any, sid: Any, recv: Any, ex: Any,
    rows: Sequence[BookTicker] | None, ts_max: int | None = None,
) -> int:
    """Validate packed tuples, reject the bad ones by reason, and hand the rest to the writer."""
    if ts_max is None:
        ts_max = now_us() + FUTURE_SLACK_US
    bp, bq, ap, aq = (recs[k].astype(np.float64) for k in ("bp", "bq", "ap", "aq"))
    ok = book_ok_columns(bp, bq, ap, aq, recv, ex, ts_max)
    if not ok.all():
        bad = np.flatnonzero(~ok).tolist()
        for i in bad:
            r = rows[i] if rows is not None else _ticker_at(recs, layout, i, int(sid[i]), int(recv[i]), ex)
            writer.rejects.add(book_ticker_reason(r, ts_max), f"{r.exchange}:{r.symbol} id {r.symbol_id} {r!r}")
        keep = np.flatnonzero(ok)
        recs, sid, recv = recs[keep], sid[keep], recv[keep]
        if rows is not None:
            rows = [rows[i] for i in keep.tolist()]
    if not len(recs):
        return 0
    ordered = len(recv) < 2 or bool((recv[1:] >= recv[:-1]).all())
    encoded = TickerRows(layout, recs.tobytes(), sid.tolist() if rows is not None else sid, rows, int(recv.min()),
                         int(recv.max()), ordered=ordered, rising=_strictly_rising(recv), recv=recv)
    return writer.append(encoded)


def _strictly_rising(recv: Any) -> bool:
    return len(recv) < 2 or bool((recv[1:] > recv[:-1]).all())


def _could_repeat(prev: BookTicker, r: BookTicker) -> bool:
    # Not newer than the symbol's newest row: older, or at the same receipt time without a higher update id.
    return (r.recv_ts < prev.recv_ts or r.update_id is None or prev.update_id is None
            or r.update_id <= prev.update_id)


def _latest_and_suspects(latest: dict[int, Any], sids: Sequence[int], rows: Sequence[BookTicker]) -> list[int]:
    """:func:`latest_of` for rows out of order, which also returns the rows that may repeat an earlier one."""
    suspects = []
    get = latest.get
    for i, (s, r) in enumerate(zip(sids, rows)):
        prev = get(s)
        if prev is None or prev.recv_ts < r.recv_ts:
            latest[s] = r
        else:
            if _could_repeat(prev, r):
                suspects.append(i)
            if prev.recv_ts == r.recv_ts:
                latest[s] = r
    return suspects


def _equal_times(sids: Sequence[int], rows: Sequence[BookTicker]) -> list[int]:
    """The rows of an in-order call that may repeat an earlier one: those at the receipt time of an earlier row
    of their symbol (in the call, or the batch's newest) without a higher update id."""
    suspects = []
    last: dict[int, BookTicker] = {}
    for i, (s, r) in enumerate(zip(sids, rows)):
        prev = last.get(s)
        if prev is not None and prev.recv_ts == r.recv_ts and _could_repeat(prev, r):
            suspects.append(i)
        last[s] = r
    return suspects


def _repeated(batch: Any, data: Any, size: int, suspects: Sequence[int]) -> list[int]:
    """Which of the ``suspects`` (indices into ``data``'s tuples of ``size`` bytes) repeat a tuple of ``batch``
    or an earlier tuple of ``data``."""
    drop = []
    local: set[bytes] = set()
    j = 0
    for i in suspects:
        while j < i:
            local.add(bytes(data[j * size:(j + 1) * size]))
            j += 1
        t = bytes(data[i * size:(i + 1) * size])
        if t in local or batch.holds(t):
            drop.append(i)
        else:
            local.add(t)
        j = i + 1
    return drop


def _without(drop: list[int], data: Any, sids: Sequence[int], rows: Sequence[BookTicker]) -> tuple[Any, Any, Any]:
    size = len(data) // len(rows)
    gone = set(drop)
    keep = [i for i in range(len(rows)) if i not in gone]
    return (b"".join(bytes(data[i * size:(i + 1) * size]) for i in keep), [sids[i] for i in keep],
            [rows[i] for i in keep])


def latest_of(latest: dict[int, Any], sids: Sequence[int], rows: Sequence[BookTicker], *, in_order: bool) -> None:
    """Keep in ``latest`` the newest of ``rows`` per symbol id, as the per-row path does (a later row wins a tie
    on receipt time). ``in_order``: the rows are in receipt order and none is older than the batch's newest."""
    if in_order:
        # Each symbol's last row is its newest: a C-level dict update, no comparisons.
        latest.update(zip(sids, rows))
        return
    get = latest.get
    for s, r in zip(sids, rows):
        prev = get(s)
        if prev is None or prev.recv_ts <= r.recv_ts:
            latest[s] = r


def _latest_columns(latest: dict[int, Any], recs: Any, layout: Layout, sid: Any, recv: Any, ex: Any) -> None:
    # The newest row of each symbol (the last by receipt time), built as a BookTicker: one per symbol, not per row.
    if len(sid) and recv[0] == recv[-1] and (recv == recv[0]).all() and 0 <= sid.min() and sid.max() <= 0xFFFF:
        # One receipt time (a replayed block) and ids of 16 bits: a stable sort by id alone, which numpy does by
        # radix (~0.1 ms for a block's ~10k rows against ~1 ms for the two-key lexsort).
        order = np.argsort(sid.astype(np.uint16), kind="stable")
    else:
        order = np.lexsort((recv, sid))
    s_sorted = sid[order]
    last = order[np.append(s_sorted[1:] != s_sorted[:-1], True)]
    picked = recs[last]
    cols = [sid[last].tolist()] + [picked[k].astype(np.float64).tolist() for k in ("bp", "bq", "ap", "aq")]
    cols.append(recv[last].tolist())
    cols.append(ex[last].tolist() if ex is not None else [None] * len(last))
    cols.append(picked["uid"].astype(np.int64).tolist() if layout.has_u else [None] * len(last))
    if not latest or min(cols[5]) >= max(map(_RECV_TS, latest.values())):
        # Every row here at least as new as every kept one (a tie goes to the later row): no comparison per
        # symbol, and the records built and stored at C level (~10% of a replay's client CPU as a loop).
        latest.update(zip(cols[0], starmap(BookTicker, zip(repeat(""), repeat(""), *cols[1:], cols[0]))))
        return
    get = latest.get
    for s, bp, bq, ap, aq, rv, e, u in zip(*cols):
        prev = get(s)
        if prev is None or prev.recv_ts <= rv:
            latest[s] = BookTicker("", "", bp, bq, ap, aq, rv, e, u, s)


def _ticker_at(recs: Any, layout: Layout, i: int, sid: int, recv: int, ex: Any) -> BookTicker:
    rec = recs[i]
    return BookTicker(
        "", "", float(rec["bp"]), float(rec["bq"]), float(rec["ap"]), float(rec["aq"]), recv,
        None if ex is None else int(ex[i]), int(rec["uid"]) if layout.has_u else None, sid,
    )

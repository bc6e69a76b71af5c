"""Vectorized book-ticker encoding: a whole call's rows packed, checked and batched at once.

The per-row path in :mod:`hftdb.store.tables` spends about a microsecond of Python per row, as much as the server
spends storing it, so on a small machine the producer, not PostgreSQL, set the ingest rate. Here a call's rows
become binary COPY tuples in a few C-level passes:

1. each row's whole msgspec ``astuple`` is packed by one precompiled ``struct.Struct`` per NULL pattern, in
   BookTicker's field order, all driven from C (``starmap``), as strict about types as the per-row path (a
   string price or a float time raises ``struct.error``); names, and the fields the pattern has as NULL, take
   one ignored byte each (:class:`_Whole`);
2. numpy moves those columns into COPY tuples made from a template that holds the constant field count and
   lengths;
3. numpy views of the tuples give the columns for validation, the receipt-time range, the partitions the rows
   fall in and the newest row per symbol.

A call the fast path cannot take whole (a None where the first row has a value or the reverse, a wrong type, an
unregistered symbol id) returns None and goes through the per-row path, which rejects the bad rows one by one. A call whose
rows pack but fail a value check (NaN, crossed, out of range...) stays here: the failing rows are counted under
the per-row path's own reasons and the rest are taken.

The columnar API (:meth:`DatabaseManager.insert_book_ticker_columns`) shares steps 2-3.
"""

from __future__ import annotations

import struct
from itertools import starmap
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from msgspec.structs import astuple

from ..models import BookTicker, now_us
from ..wire.books import LAYOUTS, Layout
from ..wire.copy import PG_EPOCH_US
from ..wire.loader import NATIVE
from ..wire.rules import FUTURE_SLACK_US, MIN_TS_US, book_ok_columns, book_ticker_reason

if TYPE_CHECKING:
    from .batch import Batch
    from .writer import BatchWriter

__all__ = ["Layout", "LAYOUTS", "TickerRows", "add_tickers", "add_columns", "latest_of"]


#: Calls smaller than this go the per-row path. With the C packer a call that packs whole costs a few µs (the C
#: call, the id check, the append; no numpy pass), so it pays from about ten rows: measured on rising 1..1,000-row
#: calls of the same rows (busy 2-core machine), per-row ~1.5-4.5 µs/row at any size, C-packed 5-9 µs for one row,
#: ~1.5 µs/row at 10 rows, 0.3-0.6 µs/row at 100 rows and more. Without it (struct packing, a dozen numpy
#: operations, ~50 µs a call) only calls of about a hundred rows pay.
MIN_ROWS = 8 if NATIVE.pack_tickers is not None else 128


class TickerRows:
    """Checked book-ticker COPY tuples of one :class:`Layout`, as :meth:`hftdb.store.writer.BatchWriter.append` takes
    them (the writer's :class:`~hftdb.store.writer.Encoded`).

    ``data`` holds the tuples (constants set), ``sids`` each row's symbol id and ``rows`` its ``BookTicker`` (the
    batch keeps the newest per symbol), or None for rows that came as columns (the newest are then built from the
    tuples). ``lo``/``hi``: the receipt-time range; ``ordered``: receipt times never decrease along the rows;
    ``rising``: no row can repeat an earlier one of them (receipt times rising strictly, or rows a feed's intake
    admitted in order).
    """

    __slots__ = ("layout", "data", "sids", "rows", "lo", "hi", "ordered", "rising", "_recv")

    def __init__(self, layout: Layout, data: Any, sids: Sequence[int], rows: Sequence[BookTicker] | None, lo: int,
                 hi: int, *, ordered: bool, rising: bool, recv: Any = None) -> None:
        self.layout, self.data, self.sids, self.rows = layout, data, sids, rows
        self.lo, self.hi, self.ordered, self.rising = lo, hi, ordered, rising
        self._recv = recv

    def __len__(self) -> int:
        """The number of rows."""
        return len(self.sids)

    def _recv_ts(self) -> Any:
        # Unix µs, read back from the tuples when the encoder did not keep them: only a call that crosses a batch
        # or partition boundary needs them.
        if self._recv is None:
            self._recv = np.frombuffer(self.data, self.layout.dtype)["recv"].astype(np.int64) + PG_EPOCH_US
        return self._recv

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
            latest_of(batch.latest, sids, rows, in_order=True)
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


def add_tickers(
    writer: BatchWriter, rows: Sequence[BookTicker], known_ids: set[int], sids: list[int] | None = None,
) -> int | None:
    """Take ``rows`` into ``writer``'s batches: each carries a registered ``symbol_id``, or ``sids`` gives their
    ids (resolved from their names). None if they can't all be taken this way (the caller then uses the per-row
    path, which sorts out each bad row)."""
    n = len(rows)
    if n < MIN_ROWS:
        return None
    first = rows[0]
    layout = LAYOUTS[(first.exchange_ts is not None, first.update_id is not None)]
    pack_tickers = NATIVE.pack_tickers
    if pack_tickers is not None and type(rows) is list:
        # The C packer (_vector_fast.c) writes the COPY tuples straight from the records' slots and checks their
        # values on the way, or refuses the call (any row of another type or NULL pattern, a value that is not a
        # float or int, an int out of range) and leaves it to the struct packing below, as before.
        ts_max = now_us() + FUTURE_SLACK_US
        fast = pack_tickers(rows, BookTicker, layout.has_e, layout.has_u, sids is None, MIN_TS_US, ts_max)
        if fast is not None:
            data, ids, ok, lo, hi, ordered, rising = fast
            if not known_ids.issuperset(ids if sids is None else sids):
                return None
            if sids is not None:
                np.frombuffer(data, layout.dtype)["sid"] = np.asarray(sids, dtype=np.int64)
                ids = sids
            if ok:
                # Every row valid: no numpy pass at all unless the call crosses a batch or partition boundary.
                return writer.append(TickerRows(layout, data, ids, rows, lo, hi, ordered=ordered, rising=rising))
            recs = np.frombuffer(data, layout.dtype)
            recv = recs["recv"].astype(np.int64) + PG_EPOCH_US
            ex = recs["ex"].astype(np.int64) + PG_EPOCH_US if layout.has_e else None
            return _take(writer, layout, recs, np.asarray(ids, dtype=np.int64), recv, ex, rows, ts_max)
    whole = layout.whole if sids is None else layout.whole_but_id
    try:
        packed = b"".join(starmap(whole.pack, map(astuple, rows)))
    except struct.error:
        return None  # a wrong type, a None where the first row has a value, an out-of-range integer
    src = np.frombuffer(packed, whole.dtype)
    if whole.nulls and not whole.nulls_hold(rows, src):
        return None  # a value where the first row has None
    sid = src["symbol_id"].astype(np.int64) if sids is None else np.asarray(sids, dtype=np.int64)
    if not known_ids.issuperset(sid.tolist()):
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
    order = np.lexsort((recv, sid))
    s_sorted = sid[order]
    last = order[np.append(s_sorted[1:] != s_sorted[:-1], True)]
    picked = recs[last]
    cols = [sid[last].tolist()] + [picked[k].astype(np.float64).tolist() for k in ("bp", "bq", "ap", "aq")]
    cols.append(recv[last].tolist())
    cols.append(ex[last].tolist() if ex is not None else [None] * len(last))
    cols.append(picked["uid"].astype(np.int64).tolist() if layout.has_u else [None] * len(last))
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

"""The ``book_tickers`` binary COPY row layouts, and :class:`PackedBooks`, the rows a feed packed for the writer.

A ``book_tickers`` tuple has eight fields: symbol_id int4, recv_ts and exchange_ts timestamptz (int8 µs since
2000-01-01), four float8 prices and quantities, update_id int8; exchange_ts and update_id may be NULL, so there is
one :class:`Layout` per NULL pattern (:data:`LAYOUTS`). A layout packs a row with one precompiled ``struct`` and
gives the numpy dtype of its tuples and a template holding their constants (field count and lengths), from which
the vectorized encoder fills a whole call at a time.

**Packed books.** A feed that has a row's values in hand checks and packs it in the same loop that parses it
(:func:`hftdb.wire.rules.book_fits`, then :data:`PACK`), so the writer takes the whole call in a few C-level steps
instead of reading each row back. A row is packed only when it carries a symbol id, an exchange time and an update
id and passes the same checks as the writers' encoder; the writer takes the call only whole (every row packed,
every id registered, as many tuples as rows), and otherwise sends its rows down the public path, which stores,
rejects and counts exactly what it always did.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from ..models import BookTicker
from .copy import PG_EPOCH_US
from .loader import NATIVE

__all__ = ["COLUMNS", "BookTuples", "Layout", "LAYOUTS", "LAYOUT", "PACK", "SIZE", "STORED", "PackedBooks",
           "ids_by_name", "cached_ids", "read_stored", "repeats_of"]

_EXCHANGE = attrgetter("exchange")
_SYMBOL = attrgetter("symbol")
_SYMBOL_ID = attrgetter("symbol_id")


def ids_by_name(rows: Sequence[BookTicker], names: dict[str, dict[str, int]]) -> list[int] | None:
    """The symbol id of every row named by exchange and symbol, from ``names`` (``names[exchange][symbol]``, the
    symbol catalog's live names), or None when one is missing. The Python twin of the lookup ``pack_tickers``
    (``_vector_fast.c``) makes in its packing pass: calls of one exchange (nearly all) cost one C-level ``map``
    per column, no tuple key per row."""
    if not rows:
        return []
    exchanges = list(map(_EXCHANGE, rows))
    first = exchanges[0]
    if exchanges.count(first) == len(exchanges):
        by_symbol = names.get(first)
        if by_symbol is None:
            return None
        ids = list(map(by_symbol.get, map(_SYMBOL, rows)))
    else:
        empty: dict[str, int] = {}
        ids = [names.get(e, empty).get(s) for e, s in zip(exchanges, map(_SYMBOL, rows))]
    return None if None in ids else ids  # type: ignore[return-value]


def cached_ids(rows: list[BookTicker], names: dict[str, dict[str, int]]) -> list[int] | None:
    """Each row's symbol id when every row is a ``BookTicker`` named by exchange and symbol (``symbol_id`` None)
    whose id ``names`` holds (the symbol catalog's live names), else None. A huge call looks its names up once
    with it, then packs slice by slice with the ids, so no slice can miss. One C pass (``_vector_fast``'s
    ``cached_ids``, ~10x cheaper than :func:`ids_by_name`); without it, :func:`ids_by_name`."""
    look_up = NATIVE.cached_ids
    if look_up is not None:
        return look_up(rows, BookTicker, names)  # type: ignore[no-any-return]
    if all(type(r) is BookTicker for r in rows) and list(map(_SYMBOL_ID, rows)).count(None) == len(rows):
        return ids_by_name(rows, names)
    return None


#: ``book_tickers``' columns in COPY order, with their ``struct`` codes (int4, timestamptz as int8 µs since
#: 2000-01-01, float8, int8). exchange_ts and update_id may be NULL.
COLUMNS = (("symbol_id", "i"), ("recv_ts", "q"), ("exchange_ts", "q"), ("bid_price", "d"), ("bid_qty", "d"),
           ("ask_price", "d"), ("ask_qty", "d"), ("update_id", "q"))


def _format(has_e: bool, has_u: bool) -> str:
    # The tuple: a field count, then each field's length and, unless it is NULL, its value.
    null = ({"exchange_ts"} if not has_e else set()) | ({"update_id"} if not has_u else set())
    return "!h" + "".join("i" + ("" if name in null else code) for name, code in COLUMNS)


class Layout:
    """The binary COPY tuple of ``book_tickers`` for one NULL pattern of (exchange_ts, update_id)."""

    def __init__(self, has_e: bool, has_u: bool) -> None:
        self.has_e, self.has_u = has_e, has_u
        #: The whole tuple, one row at a time (a row the vectorized packers refuse, packed alone):
        #: ``row.pack(8, 4, symbol_id, 8, recv, [8, exchange_ts | -1], 8, bp, 8, bq, 8, ap, 8, aq, [8, uid | -1])``.
        self.row = struct.Struct(_format(has_e, has_u))
        # A row's values in COPY column order, picked from msgspec's astuple (a C-level copy of the fields, much
        # cheaper than eight attribute reads) by position in BookTicker's field order.
        index = {name: i for i, name in enumerate(BookTicker.__struct_fields__)}
        names = ["symbol_id", "recv_ts"] + (["exchange_ts"] if has_e else []) + [
            "bid_price", "bid_qty", "ask_price", "ask_qty"] + (["update_id"] if has_u else [])
        self.values: Callable[[Any], tuple[Any, ...]] = itemgetter(*(index[name] for name in names))
        #: The same without symbol_id, for rows whose ids were resolved from their names (prepended per row).
        self.values_but_id: Callable[[Any], tuple[Any, ...]] = itemgetter(*(index[name] for name in names[1:]))
        fields = [("nf", ">i2"), ("l_sid", ">i4"), ("sid", ">i4"), ("l_recv", ">i4"), ("recv", ">i8"), ("l_ex", ">i4")]
        if has_e:
            fields.append(("ex", ">i8"))
        for name in ("bp", "bq", "ap", "aq"):
            fields += [(f"l_{name}", ">i4"), (name, ">f8")]
        fields.append(("l_uid", ">i4"))
        if has_u:
            fields.append(("uid", ">i8"))
        self.dtype = np.dtype(fields)
        assert self.dtype.itemsize == self.row.size
        one = np.zeros(1, self.dtype)
        one["nf"] = 8
        for name in ("l_sid",):
            one[name] = 4
        for name in ("l_recv", "l_bp", "l_bq", "l_ap", "l_aq"):
            one[name] = 8
        one["l_ex"] = 8 if has_e else -1
        one["l_uid"] = 8 if has_u else -1
        self._one = one.view(np.uint8)
        self._template = np.tile(self._one, 1024)
        self.whole = _Whole(has_e, has_u, with_id=True)
        self.whole_but_id = _Whole(has_e, has_u, with_id=False)

    def template(self, n: int) -> Any:
        """The constant bytes of ``n`` tuples (field count and field lengths), zeros elsewhere (read-only)."""
        size = n * self.dtype.itemsize
        if len(self._template) < size:
            self._template = np.tile(self._one, max(n, 2 * len(self._template) // self.dtype.itemsize))
        return self._template[:size]

    def empty(self, n: int) -> Any:
        """``n`` tuples with their constants set, values to be filled in."""
        return self.template(n).copy().view(self.dtype)


#: 1.0 (key 0) and the integer 1 (key: its size in bytes) as a tuple holds them, big-endian, read as native
#: unsigned integers: what :meth:`_Whole.bools_absent` looks for.
_ONE_BITS = {0: np.frombuffer(struct.pack(">d", 1.0), np.uint64)[0],
             8: np.frombuffer(struct.pack(">q", 1), np.uint64)[0], 4: np.frombuffer(struct.pack(">i", 1), np.uint32)[0]}

#: struct codes and numpy types of BookTicker's fields for :class:`_Whole` (names and venues are skipped).
_FIELD_CODES = {
    "exchange": ("?", "u1"), "symbol": ("?", "u1"), "bid_price": ("d", ">f8"), "bid_qty": ("d", ">f8"),
    "ask_price": ("d", ">f8"), "ask_qty": ("d", ">f8"), "recv_ts": ("q", ">i8"), "exchange_ts": ("q", ">i8"),
    "update_id": ("q", ">i8"), "symbol_id": ("i", ">i4"),
}


class _Whole:
    """A row's whole ``astuple`` packed in BookTicker's field order, for one NULL pattern.

    Cheaper than picking the COPY columns out of each tuple first (an ``itemgetter`` call per row, ~85 ns of a
    ~340 ns encode, measured): ``?`` takes the exchange and symbol names (and any field the pattern has as NULL,
    or symbol_id when the ids come apart) as one ignored byte, and numpy moves the columns into COPY order. A
    field the pattern has as NULL must then be None in every row, checked apart (:meth:`nulls_hold`): ``?``
    would take any value.
    """

    def __init__(self, has_e: bool, has_u: bool, *, with_id: bool) -> None:
        null = ({"exchange_ts"} if not has_e else set()) | ({"update_id"} if not has_u else set())
        codes, fields = [], []
        for name in BookTicker.__struct_fields__:
            code, dtype = _FIELD_CODES[name]
            if name in null or (name == "symbol_id" and not with_id):
                code, dtype = "?", "u1"
            codes.append(code)
            fields.append((name, dtype))
        self.pack: Callable[..., bytes] = struct.Struct("!" + "".join(codes)).pack
        self.dtype = np.dtype(fields)
        assert struct.calcsize("!" + "".join(codes)) == self.dtype.itemsize
        self.nulls = [(name, attrgetter(name)) for name in sorted(null)]
        prices = ("bid_price", "bid_qty", "ask_price", "ask_qty")
        self._prices_at = self.dtype.fields["bid_price"][1]
        assert [self.dtype.fields[k][1] - self._prices_at for k in prices] == [0, 8, 16, 24]
        ints = [name for name in ("update_id", "symbol_id") if self.dtype.fields[name][0] != np.uint8]
        self._ints = [(name, _ONE_BITS[self.dtype.fields[name][0].itemsize]) for name in ints]
        self._numbers = attrgetter(*prices, *ints)

    def nulls_hold(self, rows: Sequence[BookTicker], src: Any) -> bool:
        """Whether every field the pattern has as NULL is None in every row (its ``?`` byte is 0 for None and for
        any falsy value, so the bytes only rule out the truthy ones cheaply; ``count`` settles the rest in C)."""
        n = len(rows)
        for name, getter in self.nulls:
            if src[name].any() or list(map(getter, rows)).count(None) != n:
                return False
        return True

    def bools_absent(self, rows: Sequence[BookTicker], src: Any) -> bool:
        """Whether no price, quantity, update id or symbol id of ``rows`` is a bool, which ``struct`` packs as 1
        or 0 (1.0, 0.0). A small call's values are looked at; a larger call's bytes first rule out every row
        without such a value. (A bool time packs as 0 or 1, which no time passes: its row is rejected anyway.)"""
        n = len(rows)
        if n < 64:  # (~60 ns a row, where the numpy below costs ~5 µs a call)
            b = bool
            for r in rows:
                if (type(r.bid_price) is b or type(r.bid_qty) is b or type(r.ask_price) is b or type(r.ask_qty) is b
                        or type(r.update_id) is b or type(r.symbol_id) is b):
                    return False
            return True
        # The prices' bytes, read as native integers: True is 1.0, False is 0.0, which no row passes anyway.
        prices = np.ndarray((n, 4), np.uint64, src, self._prices_at, (src.itemsize, 8))
        one = _ONE_BITS[0]
        hit = bool((prices == one).any())
        for name, int_one in self._ints:
            hit = hit or not (src[name].view(int_one.dtype) & ~int_one).all()  # (a 0 or a 1 somewhere)
        if not hit:
            return True
        maybe = (prices == one).any(axis=1)
        for name, int_one in self._ints:
            maybe |= (src[name].view(int_one.dtype) & ~int_one) == 0
        numbers = self._numbers
        return all(type(v) is not bool for i in np.flatnonzero(maybe).tolist() for v in numbers(rows[i]))


LAYOUTS = {(e, u): Layout(e, u) for e in (True, False) for u in (True, False)}

#: The one tuple layout a feed packs: symbol id, receipt time, exchange time, four prices, update id (the feeds
#: whose book rows carry both times and an id: Binance USD-M, OKX). Its tuples are packed whole, field counts
#: and lengths included, by :data:`PACK` and by the C hot paths alike, so the writer takes them as they are.
LAYOUT = LAYOUTS[(True, True)]
_ROW = LAYOUT.row.pack


def PACK(symbol_id: int, recv: int, exchange: int, bid: float, bid_qty: float, ask: float, ask_qty: float,
         update_id: int) -> bytes:
    """One whole :data:`LAYOUT` tuple, its field count and lengths too, as the C hot paths pack it (so the writer
    takes a call's tuples as they are): ``PACK(symbol_id, recv_ts - PG_EPOCH_US, exchange_ts - PG_EPOCH_US, bid,
    bid_qty, ask, ask_qty, update_id)``."""
    return _ROW(8, 4, symbol_id, 8, recv, 8, exchange, 8, bid, 8, bid_qty, 8, ask, 8, ask_qty, 8, update_id)


#: Bytes per packed tuple.
SIZE = LAYOUT.dtype.itemsize


class PackedBooks(list):  # type: ignore[type-arg]
    """One call's admitted ``BookTicker`` rows, in order, with their COPY tuples when every row could be packed.

    It *is* the list of rows (held rows, replay and every other sink use it as one); the packed tuples ride along.
    ``buf`` holds the whole :data:`LAYOUT` tuples of every row, or is None when some row could
    not be packed; ``lo``/``hi`` are the smallest and largest receipt times and ``ordered`` says whether receipt
    times never decrease along the rows. It must not be changed once handed over: the writer checks that there
    are as many tuples as rows, and a filtered copy is a plain list that goes the public path.
    """

    __slots__ = ("buf", "lo", "hi", "ordered")

    def __init__(self, rows: Iterable[BookTicker] = ()) -> None:
        super().__init__(rows)
        self.buf: bytearray | None = None
        self.lo = 0
        self.hi = 0
        self.ordered = True

    def exchange_span(self) -> tuple[int, int] | None:
        """The lowest and highest exchange time of the rows, in µs since the Unix epoch, read from the packed
        tuples (every packed row has one: a C-level pass, not one per row in Python); None when there are no rows
        or no tuples for them."""
        buf = self.buf
        if buf is None or not self or len(buf) != len(self) * SIZE:
            return None
        ex = np.frombuffer(buf, LAYOUT.dtype)["ex"]
        return int(ex.min()) + PG_EPOCH_US, int(ex.max()) + PG_EPOCH_US


#: A stored book row as a replay reads it back to find the rows it must not write again (a binary COPY tuple, no
#: column NULL): the symbol id, the row's key (its update id, else its exchange time in µs since the Unix epoch) and
#: the four prices. See :func:`read_stored` and :func:`repeats_of`.
STORED = np.dtype([("nf", ">i2"), ("l_sid", ">i4"), ("sid", ">i4"), ("l_key", ">i4"), ("key", ">i8"),
                   ("l_bp", ">i4"), ("bp", ">f8"), ("l_bq", ">i4"), ("bq", ">f8"), ("l_ap", ">i4"), ("ap", ">f8"),
                   ("l_aq", ">i4"), ("aq", ">f8")])


def read_stored(data: Any) -> Any:
    """``data`` (a binary COPY's tuples, without its header and trailer) as :data:`STORED` records, or None when
    they are not all of that layout (a NULL in a column, another column list): each tuple's field count and field
    lengths are checked, so a shorter tuple cannot shift the rest into place unnoticed."""
    if len(data) % STORED.itemsize:
        return None
    recs = np.frombuffer(data, STORED)
    lengths_ok = (recs["nf"] == 6) & (recs["l_sid"] == 4)
    for name in ("l_key", "l_bp", "l_bq", "l_ap", "l_aq"):
        lengths_ok &= recs[name] == 8
    return recs if lengths_ok.all() else None


def repeats_of(columns: Sequence[Any], stored: Any) -> Any:
    """Which rows of ``columns`` (numpy arrays: symbol id, key, bid, bid qty, ask, ask qty) equal a row of ``stored``
    (:data:`STORED` records): the same six values, compared as values (``-0.0`` equals ``0.0``, NaN nothing), as a
    set of the stored rows' tuples would compare them. Numpy bool, one per row.

    Both sides' rows are hashed to 64 bits and the hashes matched in one sorted pass; a row whose hash matches is
    compared field by field with the stored row of that hash, and one that is not equal to it (two stored rows
    sharing a hash, or a NaN) is settled against every stored row. A block of a million rows costs tens of
    milliseconds, against ~1.5 s through a set of Python tuples."""
    theirs = tuple(columns)
    ours = (stored["sid"], stored["key"], stored["bp"], stored["bq"], stored["ap"], stored["aq"])
    h_rows, h_stored = _row_hashes(theirs), _row_hashes(ours)
    order = np.argsort(h_stored, kind="stable")
    sorted_h = h_stored[order]
    cand = np.flatnonzero(np.isin(h_rows, sorted_h))
    mask = np.zeros(len(theirs[0]), dtype=bool)
    if not len(cand):
        return mask
    first = order[np.searchsorted(sorted_h, h_rows[cand])]
    same = np.ones(len(cand), dtype=bool)
    for mine, other in zip(theirs, ours):
        same &= mine[cand] == other[first]
    mask[cand[same]] = True
    unsure = cand[~same]
    if len(unsure):
        every = set(zip(*(col.tolist() for col in ours)))
        for i in unsure.tolist():
            mask[i] = tuple(col[i].item() for col in theirs) in every
    return mask


class BookTuples:
    """Admitted book rows as their COPY tuples alone, without a record per row: the file replay's bulk form
    (:meth:`hftdb.exchanges.intake.Intake.process_lines`), which the writer takes as columns.

    ``buf`` holds whole :data:`LAYOUT` tuples of rows all received at ``recv_ts``, in
    admission order (no row repeats an earlier one). ``exchange`` and ``ids`` (symbol -> id, a map that only
    grows) name the rows when records are wanted after all (:meth:`records`). Not changed once handed over.
    """

    __slots__ = ("buf", "recv_ts", "exchange", "ids")

    def __init__(self, recv_ts: int, exchange: str, ids: dict[str, int], buf: bytearray | None = None) -> None:
        self.buf = bytearray() if buf is None else buf
        self.recv_ts = recv_ts
        self.exchange = exchange
        self.ids = ids

    def __len__(self) -> int:
        """The number of rows."""
        return len(self.buf) // SIZE

    def __repr__(self) -> str:
        return f"BookTuples({len(self)} rows, recv_ts={self.recv_ts})"

    def sids(self) -> Any:
        """The rows' symbol ids (numpy int64)."""
        return np.frombuffer(self.buf, LAYOUT.dtype)["sid"].astype(np.int64)

    def exchange_span(self) -> tuple[int, int] | None:
        """The lowest and highest exchange time of the rows (µs since the Unix epoch); None without rows."""
        if not self.buf:
            return None
        ex = np.frombuffer(self.buf, LAYOUT.dtype)["ex"]
        return int(ex.min()) + PG_EPOCH_US, int(ex.max()) + PG_EPOCH_US

    def columns(self) -> Any:
        """The tuples as a numpy record array of :data:`LAYOUT` (a view: read only)."""
        return np.frombuffer(self.buf, LAYOUT.dtype)

    def repeats(self, stored: Any) -> Any:
        """Which rows (numpy bool, one per row) equal a row of ``stored`` (:data:`STORED` records), as
        :func:`repeats_of` compares them (their update id is their key)."""
        recs = self.columns()
        return repeats_of((recs["sid"], recs["uid"], recs["bp"], recs["bq"], recs["ap"], recs["aq"]), stored)

    def select(self, keep: Any) -> BookTuples:
        """The rows where ``keep`` (numpy bool, one per row) is true, as new tuples."""
        return BookTuples(self.recv_ts, self.exchange, self.ids, bytearray(self.columns()[keep].tobytes()))

    def records(self) -> PackedBooks:
        """The rows as records (the same values a parser builds), with these tuples: a :class:`PackedBooks`."""
        recs = np.frombuffer(self.buf, LAYOUT.dtype)
        names = {sid: symbol for symbol, sid in self.ids.items()}
        recv, exchange = self.recv_ts, self.exchange
        rows = PackedBooks(
            BookTicker(exchange, names[sid], bp, bq, ap, aq, recv, ex + PG_EPOCH_US, uid, sid)
            for sid, ex, bp, bq, ap, aq, uid in zip(
                recs["sid"].tolist(), recs["ex"].tolist(), recs["bp"].tolist(), recs["bq"].tolist(),
                recs["ap"].tolist(), recs["aq"].tolist(), recs["uid"].tolist()))
        rows.buf = self.buf
        rows.lo = rows.hi = recv if rows else 0
        return rows


_HASH_MULTIPLIERS = [np.uint64(m) for m in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                                            0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53)]


def _row_hashes(columns: Sequence[Any]) -> Any:
    # A 64-bit hash of each row's values (ints by value, floats by their bits after +0.0, so -0.0 hashes as 0.0):
    # wrapping multiplications mixed with shifts. Equal rows hash equal; repeats_of settles collisions.
    h = np.zeros(len(columns[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col, mult in zip(columns, _HASH_MULTIPLIERS):
            if col.dtype.kind == "f":
                bits = (col.astype(np.float64) + 0.0).view(np.uint64)
            else:
                bits = col.astype(np.int64).view(np.uint64)
            h ^= bits * mult
            h ^= h >> np.uint64(31)
    return h

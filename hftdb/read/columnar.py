"""Columnar history: ``COPY (SELECT ...) TO STDOUT (FORMAT binary)`` decoded straight into columns.

A binary COPY row is an int16 field count, then per field an int32 length and the value in its binary send
format. When every field has a fixed width and is never NULL, every row has the same size and the whole stream
is one array of identical records: ``numpy.frombuffer`` with a big-endian structured dtype reads it without a
parse loop, and ``struct.iter_unpack`` does the same without numpy. The SELECT list is built so that this holds:

- timestamps are shifted to the Unix epoch on the server (``+ interval '946684800 seconds'``), so the int64 on
  the wire is already Unix microseconds; a NULL timestamp becomes ``-infinity`` (int64 min, which is also
  numpy's ``NaT``);
- a NULL float becomes ``NaN`` (hftdb never stores NaN: its writers reject it);
- a NULL integer becomes 0 beside a boolean ``IS NULL`` flag column.

:func:`copy_out_pieces` hands the same numpy columns to a sink a piece at a time, for results larger than memory
(the archiver's). :func:`to_numpy` returns ``{name: ndarray}`` (timestamps as ``datetime64[us]``, NULL as NaT; nullable floats with
NaN; nullable integers as ``numpy.ma.MaskedArray``). :func:`to_lists` returns ``{name: list}`` of Python values,
timestamps as integer Unix microseconds and NULL as ``None``. numpy is a dependency of hftdb.

:class:`PackedRows` decodes the latest tables' ``packed`` column (migration 0002): rows of big-endian 8-byte
fields, aggregated by the server into one bytea, turned into records column by column with the array module.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import operator
import struct
import sys
from array import array
from typing import Any, Awaitable, Callable, NamedTuple, Sequence

import asyncpg

from ..errors import DatabaseError, ValidationError
from ..wire.copy import HEADER, TRAILER
from ..wire.loader import NATIVE

__all__ = ["Column", "Layout", "FORMATS", "TO_UNIX", "copy_out", "copy_out_pieces", "to_lists", "to_numpy",
           "check_format", "PackedRows"]

#: The ``format=`` values of the history reads.
FORMATS = ("objects", "columns", "numpy")

#: ``timestamptz + this`` carries PostgreSQL-epoch microseconds to Unix-epoch microseconds, in C on the server. An
#: interval of pure seconds has no day or month part, so the addition never consults the time zone.
TO_UNIX = "+ interval '946684800 seconds'"

_NEG_INF = -(2**63)
# kind -> (struct code, numpy dtype, width)
_KINDS = {"ts": ("q", ">i8", 8), "f8": ("d", ">f8", 8), "i8": ("q", ">i8", 8), "i4": ("i", ">i4", 4)}
# Decode every ~4 MB of rows while the rest streams in; unpack at most this many rows per struct call.
_PIECE_BYTES = 4 << 20
_UNPACK_ROWS = 16_384


class Column(NamedTuple):
    """One output column: its name, the SQL expression over the table (a fixed string), its kind and nullability."""

    name: str
    expr: str
    kind: str
    nullable: bool = False


class Layout:
    """The fixed-width row layout of a SELECT over ``columns``, and how to decode it."""

    __slots__ = ("columns", "select_list", "fields", "row", "row_size", "dtype_spec")

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = tuple(columns)
        exprs: list[str] = []
        # (name, struct code, numpy dtype, width) per field on the wire
        fields: list[tuple[str, str, str, int]] = []
        for c in self.columns:
            if c.kind not in _KINDS:
                raise ValueError(f"column {c.name}: unknown kind {c.kind!r}")
            code, dtype, width = _KINDS[c.kind]
            expr = f"({c.expr}) {TO_UNIX}" if c.kind == "ts" else c.expr
            if c.nullable:
                if c.kind == "ts":
                    expr = f"coalesce({expr}, '-infinity')"
                elif c.kind == "f8":
                    expr = f"coalesce({expr}, 'NaN')"
                else:
                    expr = f"coalesce({expr}, 0)"
            exprs.append(expr)
            fields.append((c.name, code, dtype, width))
            if c.nullable and c.kind in ("i8", "i4"):
                exprs.append(f"({c.expr}) IS NULL")
                fields.append((c.name + "__null", "?", "?", 1))
        self.select_list = ", ".join(exprs)
        self.fields = tuple(fields)
        self.row = struct.Struct("!h" + "".join("i" + f[1] for f in fields))
        self.row_size = self.row.size
        self.dtype_spec = [("_n", ">i2")]
        for i, (name, _, dtype, _) in enumerate(fields):
            self.dtype_spec += [(f"_l{i}", ">i4"), (name, dtype)]


async def copy_out(conn: asyncpg.Connection, layout: Layout, query: str, *args: Any, format: str,
                   sort_by: str | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run ``COPY (query) TO STDOUT (FORMAT binary)`` and decode its rows of ``layout`` into columns.

    ``format`` is ``"columns"`` (lists) or ``"numpy"``. Rows are decoded in pieces of a few MB as they arrive, so
    decoding overlaps the server producing the rest. ``sort_by`` names a column to order by on the client (the
    query then needs no ORDER BY: rows usually come in that order already, and checking costs far less than a
    server-side sort of a large result). Arguments are inlined by asyncpg's own server-side quoting
    (``copy_from_query`` mogrifies them with ``quote_literal``), never by string formatting here.
    """
    decoder: _Decoder = _NumpyDecoder(layout) if format == "numpy" else _ListDecoder(layout)
    await conn.copy_from_query(query, *args, output=decoder.feed, format="binary", timeout=timeout)
    return decoder.finish(sort_by)


async def copy_out_pieces(conn: asyncpg.Connection, layout: Layout, query: str, *args: Any, piece_rows: int,
                          sink: Callable[[dict[str, Any]], Awaitable[None]], timeout: float | None = None) -> int:
    """Run ``COPY (query) TO STDOUT (FORMAT binary)`` and hand its rows to ``sink`` in pieces of about
    ``piece_rows`` rows, in the stream's order, as numpy columns (as :func:`copy_out` gives them for ``"numpy"``);
    return the number of rows. At most one piece is held here: while ``sink`` runs, asyncpg stops reading the
    socket, so the server waits and a result of any size streams through bounded memory."""
    if piece_rows < 1:
        raise ValueError(f"piece_rows must be positive, got {piece_rows}")
    decoder = _NumpyDecoder(layout)
    decoder._piece = piece_rows * layout.row_size
    rows = 0

    async def feed(chunk: bytes) -> None:
        nonlocal rows
        decoder.feed_sync(chunk)
        if decoder._pieces:
            cols = decoder._columns(None)
            rows += len(cols[layout.columns[0].name])
            await sink(cols)

    await conn.copy_from_query(query, *args, output=feed, format="binary", timeout=timeout)
    cols = decoder.finish(None)
    n = len(cols[layout.columns[0].name])
    if n:
        rows += n
        await sink(cols)
    return rows


class _Decoder:
    """Accumulates a binary COPY stream; decodes whole rows every ``_PIECE_BYTES``."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._buf = bytearray()
        self._header = False
        self._ended = False
        self._piece = max(1, _PIECE_BYTES // layout.row_size) * layout.row_size

    async def feed(self, chunk: bytes) -> None:
        """The ``output`` callable of ``copy_from_query``."""
        self.feed_sync(chunk)

    def feed_sync(self, chunk: bytes | bytearray | memoryview) -> None:
        buf = self._buf
        buf += chunk
        if not self._header:
            if len(buf) < len(HEADER):
                return
            if buf[:len(HEADER)] != HEADER:
                raise DatabaseError("malformed binary COPY stream (header)")
            del buf[:len(HEADER)]
            self._header = True
        if len(buf) >= self._piece + len(TRAILER):
            n = (len(buf) - len(TRAILER)) // self.layout.row_size * self.layout.row_size
            self._decode(memoryview(buf)[:n])
            del buf[:n]

    def finish(self, sort_by: str | None) -> dict[str, Any]:
        buf = self._buf
        if not self._header or len(buf) < len(TRAILER) or buf[-len(TRAILER):] != TRAILER:
            raise DatabaseError("malformed binary COPY stream (header or trailer)")
        body = memoryview(buf)[:-len(TRAILER)]
        if len(body) % self.layout.row_size:
            # A NULL or a variable-width value would change the row size: the SELECT list must prevent both.
            raise DatabaseError(f"binary COPY rows are not {self.layout.row_size} bytes each")
        if len(body):
            self._decode(body)
        return self._columns(sort_by)

    def _decode(self, rows: memoryview) -> None:
        raise NotImplementedError

    def _columns(self, sort_by: str | None) -> dict[str, Any]:
        raise NotImplementedError


class _ListDecoder(_Decoder):
    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self._raw: list[list[Any]] = [[] for _ in layout.fields]

    def _decode(self, rows: memoryview) -> None:
        layout = self.layout
        nf = len(layout.fields)
        size = layout.row_size
        step = _UNPACK_ROWS * size
        for off in range(0, len(rows), step):
            piece = rows[off:off + step]
            n = len(piece) // size
            # A NULL or a wider value anywhere shifts every row after it: checking the framing of the first and
            # the last row catches it without unpacking every length word.
            _check_framing(layout, layout.row.unpack_from(piece, 0))
            _check_framing(layout, layout.row.unpack_from(piece, (n - 1) * size))
            # One flat unpack of the values per piece and a slice per column: C loops, no per-row tuple.
            flat = _flat_struct(layout, n).unpack(piece)
            for i in range(nf):
                self._raw[i] += flat[i::nf]

    def _columns(self, sort_by: str | None) -> dict[str, list[Any]]:
        layout = self.layout
        by_name = {f[0]: self._raw[i] for i, f in enumerate(layout.fields)}
        if sort_by is not None:
            key = by_name[sort_by]
            if not all(map(operator.le, key, itertools.islice(key, 1, None))):
                order = sorted(range(len(key)), key=key.__getitem__)
                by_name = {name: [col[i] for i in order] for name, col in by_name.items()}
        out: dict[str, list[Any]] = {}
        for c in layout.columns:
            values = by_name[c.name]
            if c.nullable:
                if c.kind == "ts":
                    if _NEG_INF in values:
                        values = [None if v == _NEG_INF else v for v in values]
                elif c.kind == "f8":
                    if any(map(math.isnan, values)):
                        values = [None if v != v else v for v in values]
                else:
                    nulls = by_name[c.name + "__null"]
                    if any(nulls):
                        values = [None if n else v for v, n in zip(values, nulls)]
            out[c.name] = values
        return out


class _NumpyDecoder(_Decoder):
    def __init__(self, layout: Layout) -> None:
        try:
            import numpy as np
        except ImportError:
            raise ValidationError("format='numpy' needs numpy: pip install 'hftdb[numpy]'") from None
        super().__init__(layout)
        self._np = np
        self._dtype = np.dtype(layout.dtype_spec)
        self._pieces: list[dict[str, Any]] = []

    def _decode(self, rows: memoryview) -> None:
        np = self._np
        arr = np.frombuffer(rows, dtype=self._dtype)
        layout = self.layout
        if not (arr["_n"] == len(layout.fields)).all():
            raise DatabaseError("binary COPY row with an unexpected field count")
        piece = {}
        for i, (name, _, dtype, width) in enumerate(layout.fields):
            if not (arr[f"_l{i}"] == width).all():
                raise DatabaseError(f"unexpected NULL or width in column {name}")
            # astype copies the strided big-endian field into a contiguous native array.
            piece[name] = arr[name].astype(dtype.replace(">", "<"))
        self._pieces.append(piece)

    def _columns(self, sort_by: str | None) -> dict[str, Any]:
        np = self._np
        layout = self.layout
        if self._pieces:
            cols = {name: np.concatenate([p[name] for p in self._pieces]) if len(self._pieces) > 1
                    else self._pieces[0][name] for name, *_ in layout.fields}
        else:
            cols = {name: np.empty(0, dtype.replace(">", "<")) for name, _, dtype, _ in layout.fields}
        self._pieces = []
        if sort_by is not None and len(cols[sort_by]) > 1:
            key = cols[sort_by]
            if not (key[1:] >= key[:-1]).all():
                order = np.argsort(key, kind="stable")
                cols = {name: col[order] for name, col in cols.items()}
        out: dict[str, Any] = {}
        for c in layout.columns:
            col = cols[c.name]
            if c.kind == "ts":
                # int64 min is both PostgreSQL's -infinity (our NULL) and numpy's NaT.
                out[c.name] = col.view("datetime64[us]")
            elif c.nullable and c.kind in ("i8", "i4"):
                out[c.name] = np.ma.MaskedArray(col, mask=cols[c.name + "__null"])
            else:
                out[c.name] = col
        return out


def _check_framing(layout: Layout, row: tuple[Any, ...]) -> None:
    if row[0] != len(layout.fields):
        raise DatabaseError("binary COPY row with an unexpected field count")
    for i, (name, _, _, width) in enumerate(layout.fields):
        if row[1 + 2 * i] != width:
            raise DatabaseError(f"unexpected NULL or width in column {name}")


_flat_structs: dict[tuple[int, int], struct.Struct] = {}


def _flat_struct(layout: Layout, n: int) -> struct.Struct:
    """A struct that unpacks ``n`` rows of ``layout``, skipping the field count and length words."""
    key = (id(layout), n)
    st = _flat_structs.get(key)
    if st is None:
        values = "2x" + "".join("4x" + code for _, code, _, _ in layout.fields)
        st = struct.Struct("!" + values * n)
        if n == _UNPACK_ROWS:  # only full pieces recur; a result's last piece has any size
            _flat_structs[key] = st
    return st


def to_lists(layout: Layout, buf: bytes | bytearray | memoryview) -> dict[str, list[Any]]:
    """Decode a complete binary COPY stream of ``layout`` rows into Python lists, NULL as ``None``."""
    decoder = _ListDecoder(layout)
    decoder.feed_sync(buf)
    return decoder.finish(None)


def to_numpy(layout: Layout, buf: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a complete binary COPY stream of ``layout`` rows into numpy arrays (see the module docstring)."""
    decoder = _NumpyDecoder(layout)
    decoder.feed_sync(buf)
    return decoder.finish(None)


def check_format(format: str) -> str:
    """Validate a ``format=`` argument (before any I/O: ``"numpy"`` needs the extra installed)."""
    if format not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    if format == "numpy":
        if importlib.util.find_spec("numpy") is None:
            raise ValidationError("format='numpy' needs numpy: pip install 'hftdb[numpy]'")
    return format


# -- packed latest rows -----------------------------------------------------------------------------------------

_SWAP = sys.byteorder == "little"  # the packed fields are big-endian



class PackedRows:
    """Records from the ``packed`` column of a latest table, as ``string_agg(packed, NULL)`` returns it.

    Each row is ``2 + len(fields)`` big-endian 8-byte fields: symbol_id, a NULL bitmask, then the record's fields
    in its positional order after ``exchange`` and ``symbol`` (see ``migrations/0002_latest_packed.up.sql``;
    0004 moved the column, not its layout).
    ``fields`` gives each field's kind (``"f8"``, or ``"i8"``, timestamps included: the migration stores them as
    Unix µs) and its NULL bit, or None when it is never NULL. Every field is sliced out of the buffer as a column
    in C; only a column that holds a NULL takes a Python loop; records are built by ``map``, which calls the
    record type in C. That is about 0.3 µs a row, against about 0.5 µs for asyncpg's rows plus building records
    from them, and the server sends one value instead of eight a row (its per-value output was the larger cost).
    """

    __slots__ = ("record", "fields", "width", "_has_f8", "_kinds", "_bits")

    def __init__(self, record: type, fields: Sequence[tuple[str, int | None]]) -> None:
        for kind, _ in fields:
            if kind not in ("f8", "i8"):
                raise ValueError(f"unknown packed field kind {kind!r}")
        self.record = record
        self.fields = tuple(fields)
        self.width = 2 + len(self.fields)
        self._has_f8 = any(kind == "f8" for kind, _ in self.fields)
        self._kinds = "".join(kind[0] for kind, _ in self.fields).encode()
        self._bits = tuple(bit or 0 for _, bit in self.fields)

    def ids(self, buf: bytes) -> list[int]:
        """The symbol ids of the rows in ``buf``."""
        return self._ints(buf)[0::self.width].tolist()

    def without(self, buf: bytes, drop: set[int]) -> bytes:
        """``buf`` without the rows whose symbol id is in ``drop``."""
        size = 8 * self.width
        return b"".join([buf[k * size:(k + 1) * size] for k, i in enumerate(self.ids(buf)) if i not in drop])

    def _check_length(self, buf: bytes) -> None:
        if len(buf) % (8 * self.width):
            raise DatabaseError(f"packed latest rows: {len(buf)} bytes is not a multiple of {8 * self.width}; "
                                "is the schema at migration 0002?")

    def _ints(self, buf: bytes) -> array:
        self._check_length(buf)
        q = array("q")
        q.frombytes(buf)
        if _SWAP:
            q.byteswap()
        return q

    def decode(self, buf: bytes, exchange_of: dict[int, str], symbol_of: dict[int, str],
               exchange: str | None = None) -> list[Any]:
        """The records in ``buf``, named from the id maps (KeyError for an id missing from them).

        ``exchange`` names every row's exchange when the read was filtered to one, and skips a lookup per row.
        """
        fast = NATIVE.decode_packed
        if fast is not None:
            # The C decoder (_columnar_fast.c, where built and not turned off: hftdb.wire.loader). One pass in C, a
            # record at a time: about half the CPU of the columns below (1,000 book tickers), and no column lists
            # to build and free. A test runs both on the same rows.
            self._check_length(buf)
            return fast(buf, self._kinds, self._bits, self.record, exchange, exchange_of, symbol_of)
        w = self.width
        q = self._ints(buf)
        # Strided views of the one host-order buffer: tolist() reads each column straight out of it, with no
        # intermediate copy per column; the doubles are the same 8 bytes reinterpreted.
        m = memoryview(q)
        md = m.cast("B").cast("d") if self._has_f8 else m
        ids = m[0::w].tolist()
        flags = q[1::w]
        nulls = 0 if flags.count(0) == len(flags) else functools.reduce(operator.or_, set(flags), 0)
        cols: list[Any] = []
        for i, (kind, bit) in enumerate(self.fields, 2):
            col = (md if kind == "f8" else m)[i::w].tolist()
            if bit is not None and nulls & bit:
                col = [None if f & bit else v for v, f in zip(col, flags)]
            cols.append(col)
        names = itertools.repeat(exchange) if exchange is not None else map(exchange_of.__getitem__, ids)
        return list(map(self.record, names, map(symbol_of.__getitem__, ids), *cols, ids))

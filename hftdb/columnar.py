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

:func:`to_numpy` returns ``{name: ndarray}`` (timestamps as ``datetime64[us]``, NULL as NaT; nullable floats with
NaN; nullable integers as ``numpy.ma.MaskedArray``). :func:`to_lists` returns ``{name: list}`` of Python values,
timestamps as integer Unix microseconds and NULL as ``None``. numpy is an optional extra (``hftdb[numpy]``).
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple, Sequence

import asyncpg

from .copy import HEADER, TRAILER
from .errors import DatabaseError, ValidationError

__all__ = ["Column", "Layout", "FORMATS", "TO_UNIX", "copy_out", "to_lists", "to_numpy", "check_format"]

#: The ``format=`` values of the history reads.
FORMATS = ("objects", "columns", "numpy")

#: ``timestamptz + this`` carries PostgreSQL-epoch microseconds to Unix-epoch microseconds, in C on the server. An
#: interval of pure seconds has no day or month part, so the addition never consults the time zone.
TO_UNIX = "+ interval '946684800 seconds'"

_NEG_INF = -(2**63)
# kind -> (struct code, numpy dtype, width)
_KINDS = {"ts": ("q", ">i8", 8), "f8": ("d", ">f8", 8), "i8": ("q", ">i8", 8), "i4": ("i", ">i4", 4)}
_CHUNK_ROWS = 65_536


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

    def body(self, buf: bytes | bytearray | memoryview) -> memoryview:
        """The rows of a complete binary COPY stream, checked for framing; raises DatabaseError if malformed."""
        view = memoryview(buf)
        hlen = len(HEADER)
        if len(view) < hlen + len(TRAILER) or view[:hlen] != HEADER or view[-len(TRAILER):] != TRAILER:
            raise DatabaseError("malformed binary COPY stream (header or trailer)")
        body = view[hlen:-len(TRAILER)]
        if len(body) % self.row_size:
            # A NULL or a variable-width value would change the row size: the SELECT list must prevent both.
            raise DatabaseError(f"binary COPY rows are not {self.row_size} bytes each ({len(body)} bytes)")
        return body


async def copy_out(conn: asyncpg.Connection, query: str, *args: Any, timeout: float | None = None) -> bytearray:
    """Run ``COPY (query) TO STDOUT (FORMAT binary)`` and return the whole stream.

    Arguments are inlined by asyncpg's own server-side quoting (``copy_from_query`` mogrifies them with
    ``quote_literal``), never by string formatting here.
    """
    buf = bytearray()

    async def sink(chunk: bytes) -> None:
        buf.extend(chunk)

    await conn.copy_from_query(query, *args, output=sink, format="binary", timeout=timeout)
    return buf


def to_lists(layout: Layout, buf: bytes | bytearray | memoryview) -> dict[str, list[Any]]:
    """Decode a binary COPY stream of ``layout`` rows into Python lists, NULL as ``None``."""
    body = layout.body(buf)
    nf = len(layout.fields)
    raw: list[list[Any]] = [[] for _ in range(nf)]
    step = _CHUNK_ROWS * layout.row_size
    # In chunks, so the per-row tuples of only one chunk are alive at a time.
    for off in range(0, len(body), step):
        cols = list(zip(*layout.row.iter_unpack(body[off:off + step])))
        if set(cols[0]) != {nf}:
            raise DatabaseError("binary COPY row with an unexpected field count")
        for i, (_, _, _, width) in enumerate(layout.fields):
            if set(cols[1 + 2 * i]) != {width}:
                raise DatabaseError(f"unexpected NULL or width in column {layout.fields[i][0]}")
            raw[i].extend(cols[2 + 2 * i])
    by_name = {f[0]: raw[i] for i, f in enumerate(layout.fields)}
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


def to_numpy(layout: Layout, buf: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a binary COPY stream of ``layout`` rows into numpy arrays (see the module docstring)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ValidationError("format='numpy' needs numpy: pip install 'hftdb[numpy]'") from None
    body = layout.body(buf)
    rows = np.frombuffer(body, dtype=np.dtype(layout.dtype_spec))
    if len(rows):
        if not (rows["_n"] == len(layout.fields)).all():
            raise DatabaseError("binary COPY row with an unexpected field count")
        for i, (name, _, _, width) in enumerate(layout.fields):
            if not (rows[f"_l{i}"] == width).all():
                raise DatabaseError(f"unexpected NULL or width in column {name}")
    out: dict[str, Any] = {}
    for c in layout.columns:
        col = rows[c.name]
        if c.kind == "ts":
            # int64 min is both PostgreSQL's -infinity (our NULL) and numpy's NaT.
            out[c.name] = col.astype("<i8").view("datetime64[us]")
        elif c.kind == "f8":
            out[c.name] = col.astype("<f8")
        else:
            values = col.astype("<i8" if c.kind == "i8" else "<i4")
            if c.nullable:
                values = np.ma.MaskedArray(values, mask=rows[c.name + "__null"].astype(bool))
            out[c.name] = values
    return out


def check_format(format: str) -> str:
    """Validate a ``format=`` argument."""
    if format not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    return format

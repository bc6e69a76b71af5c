"""PostgreSQL binary COPY encoding.

A binary COPY stream is a fixed header, then one tuple per row (an int16 field count, then each field as an
int32 byte length, -1 for NULL, and the value in the type's binary send format), then an int16 -1 trailer.
hftdb packs each row with one precompiled ``struct.Struct`` per NULL pattern, so the hot path is one ``pack``
call and one ``bytearray`` append per row: no datetime objects, no per-field Python calls.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np

__all__ = [
    "HEADER",
    "TRAILER",
    "PG_EPOCH_US",
    "encode_numeric",
    "encode_text",
    "split_tuples",
    "decode_tuple",
    "copy_columns",
]

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)

#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC); timestamptz is int64 µs since the latter.
PG_EPOCH_US = 946_684_800_000_000

_NUMERIC_HEAD = struct.Struct("!hhhh")
_NUMERIC_POS = 0x0000
_NUMERIC_NEG = 0x4000


def encode_numeric(value: Decimal) -> bytes:
    """Encode a finite Decimal in numeric's binary format (base-10000 digits, weight, sign, display scale)."""
    sign, digits, exp = value.as_tuple()
    if not isinstance(exp, int):
        raise ValueError(f"numeric value must be finite, got {value}")
    text = "".join(map(str, digits))
    if exp > 0:
        text += "0" * exp
        exp = 0
    dscale = -exp
    if len(text) <= dscale:
        text = "0" * (dscale - len(text) + 1) + text
    int_part = text[: len(text) - dscale] if dscale else text
    frac_part = text[len(text) - dscale:] if dscale else ""
    int_part = int_part.lstrip("0")
    pad = (-len(int_part)) % 4
    int_part = "0" * pad + int_part
    frac_part = frac_part + "0" * ((-len(frac_part)) % 4)
    groups = [int(int_part[i:i + 4]) for i in range(0, len(int_part), 4)]
    weight = len(groups) - 1
    groups += [int(frac_part[i:i + 4]) for i in range(0, len(frac_part), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    head = _NUMERIC_HEAD.pack(len(groups), weight, _NUMERIC_NEG if sign else _NUMERIC_POS, dscale)
    return head + struct.pack(f"!{len(groups)}H", *groups)


def encode_text(value: str) -> bytes:
    """Encode a text field's value (UTF-8 bytes, no terminator)."""
    return value.encode("utf-8")


_I2 = struct.Struct("!h")
_I4 = struct.Struct("!i")
_DECODERS = {
    "i": struct.Struct("!i").unpack, "q": struct.Struct("!q").unpack, "d": struct.Struct("!d").unpack,
    "t": struct.Struct("!q").unpack,
}


def split_tuples(
    payload: bytes | bytearray | memoryview, start: int | None = None, end: int | None = None,
) -> list[bytes]:
    """The tuples of a whole binary COPY stream (header and trailer dropped), each as its own bytes; or of the
    tuples between byte offsets ``start`` and ``end`` of a stream being written.

    Not for the hot path (a Python step per field): the commit path uses it to take a batch apart when the
    server refused one of its rows, the writers to look for a repeated row where one may be.
    """
    end = len(payload) - len(TRAILER) if end is None else end
    pos = len(HEADER) if start is None else start
    out = []
    # Released on return (a bytearray with a live view cannot grow, and the writers' batches do).
    with memoryview(payload) as view:
        while pos < end:
            (nfields,) = _I2.unpack_from(view, pos)
            p = pos + 2
            for _ in range(nfields):
                (length,) = _I4.unpack_from(view, p)
                p += 4 + max(length, 0)
            out.append(bytes(view[pos:p]))
            pos = p
    return out


def decode_tuple(kinds: str, data: bytes) -> list[object]:
    """One binary COPY tuple's values, one kind per field: ``i`` int4, ``q`` int8, ``d`` float8, ``t`` timestamptz
    (as Unix µs), ``s`` text, ``n`` numeric (as Decimal); NULL is None."""
    out: list[object] = []
    pos = 2
    for kind in kinds:
        (length,) = _I4.unpack_from(data, pos)
        pos += 4
        if length < 0:
            out.append(None)
            continue
        raw = data[pos:pos + length]
        pos += length
        if kind == "s":
            out.append(raw.decode("utf-8"))
        elif kind == "n":
            out.append(_decode_numeric(raw))
        else:
            (value,) = _DECODERS[kind](raw)
            out.append(value + PG_EPOCH_US if kind == "t" else value)
    return out


def _decode_numeric(raw: bytes) -> Decimal:
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(raw)
    if not ndigits:
        return Decimal(0)
    text = "".join(f"{g:04d}" for g in struct.unpack_from(f"!{ndigits}H", raw, 8))
    # Built from its digits and exponent: exact, whatever the decimal context's precision.
    return Decimal((1 if sign == _NUMERIC_NEG else 0, tuple(map(int, text)), 4 * (weight - ndigits + 1)))


#: numpy type of each column kind of :func:`copy_columns`: int4, int8, float8, and timestamptz given as Unix µs.
_KINDS = {"i": ">i4", "q": ">i8", "d": ">f8", "t": ">i8"}
_COLUMN_DTYPES: dict[str, Any] = {}


def copy_columns(kinds: str, columns: Sequence[Sequence[Any]]) -> bytes:
    """A whole binary COPY stream (header, one tuple per row, trailer) of rows given as columns, one kind per
    column (``i`` int4, ``q`` int8, ``d`` float8, ``t`` timestamptz as Unix µs); None is NULL.

    The rows are laid out at full width by numpy; a column holding None gets length -1 there and its value bytes
    are dropped by one boolean mask. About 0.3 ms for 1,000 rows of eight columns, where the same columns as text
    array literals cost ~2 ms (``repr`` of every float).
    """
    dtype = _COLUMN_DTYPES.get(kinds)
    if dtype is None:
        fields = [("nf", ">i2")]
        for k, kind in enumerate(kinds):
            fields += [(f"l{k}", ">i4"), (f"v{k}", _KINDS[kind])]
        dtype = _COLUMN_DTYPES[kinds] = np.dtype(fields)
    n = len(columns[0])
    recs = np.empty(n, dtype)
    recs["nf"] = len(kinds)
    keep = None
    for k, (kind, col) in enumerate(zip(kinds, columns)):
        lengths = recs[f"l{k}"]
        value, offset = dtype.fields[f"v{k}"][:2]
        lengths[:] = value.itemsize
        if None in col:
            null = np.array([v is None for v in col], dtype=bool)
            col = [0 if v is None else v for v in col]
            lengths[null] = -1
            if keep is None:
                keep = np.ones((n, dtype.itemsize), dtype=bool)
            keep[null, offset:offset + value.itemsize] = False
        values = np.array(col, dtype=np.float64 if kind == "d" else np.int64)
        if kind == "t":
            values -= PG_EPOCH_US
        recs[f"v{k}"] = values
    raw = recs.view(np.uint8).reshape(n, dtype.itemsize)
    return HEADER + (raw if keep is None else raw[keep]).tobytes() + TRAILER

"""PostgreSQL binary COPY encoding.

A binary COPY stream is a fixed header, then one tuple per row (an int16 field count, then each field as an
int32 byte length, -1 for NULL, and the value in the type's binary send format), then an int16 -1 trailer.
hftdb packs each row with one precompiled ``struct.Struct`` per NULL pattern, so the hot path is one ``pack``
call and one ``bytearray`` append per row: no datetime objects, no per-field Python calls.
"""

from __future__ import annotations

import struct
from decimal import Decimal

__all__ = [
    "HEADER",
    "TRAILER",
    "PG_EPOCH_US",
    "encode_numeric",
    "encode_text",
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

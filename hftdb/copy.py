"""Kept for the modules that still import it here: binary COPY framing lives in :mod:`hftdb.wire.copy`."""

from __future__ import annotations

from .wire.copy import HEADER, PG_EPOCH_US, TRAILER, decode_tuple, encode_numeric, encode_text, split_tuples

__all__ = ["HEADER", "TRAILER", "PG_EPOCH_US", "encode_numeric", "encode_text", "split_tuples", "decode_tuple"]

from typing import Any

def pack_tickers(
    rows: list[Any], record_type: type, has_e: bool, has_u: bool, ids_from: bool | list[int] | dict[str, dict[str, int]], min_ts: int, ts_max: int, /,
) -> tuple[bytearray, list[int] | None, bool, int, int, bool, bool] | None:
    """A call's rows as COPY tuples: (tuples, ids, ok, lo, hi, ordered, rising), or None when some row cannot be
    taken whole. ``ids_from``: True (each row's symbol_id), a list (one id per row), a dict (``ids_from[exchange][symbol]``, the rows named)
    or False (the caller fills the ids in)."""

def cached_ids(rows: list[Any], record_type: type, names: dict[str, dict[str, int]], /) -> list[int] | None:
    """Each row's id from ``names[exchange][symbol]`` when every row is a ``record_type`` named by a cached exchange
    and symbol (symbol_id None), else None."""

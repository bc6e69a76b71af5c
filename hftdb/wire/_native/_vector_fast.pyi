from typing import Any

def pack_tickers(
    rows: list[Any], record_type: type, has_e: bool, has_u: bool, with_id: bool, min_ts: int, ts_max: int, /,
) -> tuple[bytearray, list[int] | None, bool, int, int, bool, bool] | None:
    """A call's rows as COPY tuples: (tuples, ids, ok, lo, hi, ordered, rising), or None when some row cannot be
    taken whole."""

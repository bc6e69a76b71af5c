from typing import Any

def book_read(
    payloads: list[bytes], i: int, recv_ts: int, ts_max: int, last_ids: dict[str, int], ids: dict[str, int],
    rows: list[Any], buf: bytearray, book_type: type, exchange: Any, min_ts: int, /,
) -> tuple[int, int]:
    """USD-M bookTicker frames from ``payloads[i]`` on into ``rows`` and COPY tuples in ``buf``; returns (index of
    the first frame handed back to the Python loop, duplicates dropped)."""

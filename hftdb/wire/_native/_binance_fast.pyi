from typing import Any

def book_read(
    payloads: list[bytes], i: int, recv_ts: int, ts_max: int, last_ids: dict[str, int], ids: dict[str, int],
    rows: list[Any], buf: bytearray, book_type: type, exchange: Any, min_ts: int, /,
) -> tuple[int, int]:
    """USD-M bookTicker frames from ``payloads[i]`` on into ``rows`` and COPY tuples in ``buf``; returns (index of
    the first frame handed back to the Python loop, duplicates dropped)."""

def book_scan(
    data: bytes, start: int, end: int, recv_ts: int, ts_max: int, last_ids: dict[str, int], ids: dict[str, int],
    buf: bytearray, min_ts: int, /,
) -> tuple[int, int, int]:
    """The lines of ``data[start:end]`` from ``start`` on: USD-M bookTicker frames admitted and packed into ``buf``
    (no records); returns (offset of the first line handed back to the Python path, frames taken, duplicates)."""

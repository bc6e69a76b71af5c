"""Book tickers a feed hands over already encoded: binary COPY tuples packed while its frames were parsed.

On the public path a feed's row is looked at three times: the parser builds a ``BookTicker``, then the writer's
per-row path (:meth:`hftdb.tables.BookTickerWriter.add`) reads its fields back, checks them and packs a COPY
tuple, after pairing it with its symbol id. For a live feed that is about half the client's CPU per frame. Here
the intake (:mod:`hftdb.exchanges.intake`), which has the values in hand, checks and packs each admitted row
in the same loop that parses it, and the writer takes the whole call in a few C-level steps.

**As strict as the public path, by construction.** A row is packed only when it carries a symbol id, an
exchange time and an update id, passes the same comparisons as the per-row path (:func:`fits`, with a bound on
future times computed *earlier* than the writer's, so never looser) and packs without ``struct.error``. The
writer then takes the call only whole: every row packed, every symbol id registered, the tuples as many as the
rows. Anything else, a single NaN or an unknown id, sends the call's ``BookTicker`` rows down
:meth:`DatabaseManager.insert_book_ticker_snapshots`, which stores, rejects and counts exactly what it always
did. A test runs the same frames (fixtures and hostile ones) through both paths and compares rows and rejects.

A :class:`PackedBooks` *is* the list of ``BookTicker`` rows (held rows, replay and every other sink use it as
one); the packed tuples ride along. It must not be changed once handed over: the writer checks that there are
as many tuples as rows, and a filtered copy is a plain list that goes the public path.
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import TYPE_CHECKING, Iterable

import numpy as np

from .copy import PG_EPOCH_US
from .models import BookTicker
from .tables import MIN_TS_US
from .vector import LAYOUTS, append_rows

if TYPE_CHECKING:
    from .tables import BookTickerWriter

__all__ = ["PackedBooks", "LAYOUT", "PACK", "SIZE", "fits", "add_packed", "exchange_span"]

INF = math.inf

#: The one tuple layout packed here: symbol id, receipt time, exchange time, four prices, update id (the feeds
#: whose book rows carry both times and an id: Binance USD-M, OKX). Field counts and lengths are left as zero
#: bytes and OR-ed in from the layout's template when the writer takes the call.
LAYOUT = LAYOUTS[(True, True)]
#: ``PACK(symbol_id, recv_ts - PG_EPOCH_US, exchange_ts - PG_EPOCH_US, bid, bid_qty, ask, ask_qty, update_id)``.
PACK = LAYOUT.pack
#: Bytes per packed tuple.
SIZE = LAYOUT.dtype.itemsize
_SYMBOL_ID = attrgetter("symbol_id")


def fits(bid_price: float, bid_qty: float, ask_price: float, ask_qty: float, exchange_ts: int, ts_max: int) -> bool:
    """Whether the per-row path would take a row with these values (receipt time checked apart, per read).

    The same chained comparison as :meth:`BookTickerWriter.add`; it is False for NaN. The intake inlines it (a
    call per row would cost a tenth of the saving); a test keeps the two in step with the writer.
    """
    return (0.0 < bid_price <= ask_price < INF and 0.0 < bid_qty < INF and 0.0 < ask_qty < INF
            and MIN_TS_US <= exchange_ts <= ts_max)


class PackedBooks(list):  # type: ignore[type-arg]
    """One call's admitted ``BookTicker`` rows, in order, with their COPY tuples when every row could be packed.

    ``buf`` holds :data:`LAYOUT` tuples (constants not yet OR-ed in) of every row, or is None when some row
    could not be packed; ``lo``/``hi`` are the smallest and largest receipt times and ``ordered`` says whether
    receipt times never decrease along the rows.
    """

    __slots__ = ("buf", "lo", "hi", "ordered")

    def __init__(self, rows: Iterable[BookTicker] = ()) -> None:
        super().__init__(rows)
        self.buf: bytearray | None = None
        self.lo = 0
        self.hi = 0
        self.ordered = True


def exchange_span(rows: list[BookTicker]) -> tuple[int, int] | None:
    """The lowest and highest exchange time of a :class:`PackedBooks` call read from its tuples (every packed
    row has one), in µs since the Unix epoch; None for rows without tuples (their fields tell)."""
    if not isinstance(rows, PackedBooks) or rows.buf is None or not rows or len(rows.buf) != len(rows) * SIZE:
        return None
    ex = np.frombuffer(rows.buf, LAYOUT.dtype)["ex"]
    return int(ex.min()) + PG_EPOCH_US, int(ex.max()) + PG_EPOCH_US


def add_packed(writer: BookTickerWriter, rows: PackedBooks, known_ids: set[int]) -> int | None:
    """Append a packed call to ``writer``'s batches as the per-row path would have; return the rows taken (exact
    repeats of a batch's rows are dropped and counted, as there), or None when the call must go the public path
    (not every row packed, an unregistered id, a changed list).

    The caller has reserved room for the rows and calls ``writer.submitted`` after.
    """
    buf = rows.buf
    n = len(rows)
    if buf is None or n == 0 or len(buf) != n * SIZE:
        return None
    sids = list(map(_SYMBOL_ID, rows))  # (the tuples hold the same ids: the parser packed these)
    if not known_ids.issuperset(sids):
        return None
    data = (np.frombuffer(buf, np.uint8) | LAYOUT.template(n)).tobytes()
    max_rows = writer._max_rows
    start = taken = 0
    while start < n:
        b = writer.current
        end = min(n, start + max_rows - b.rows)
        if start == 0 and end == n:
            part, part_sids, lo, hi, ordered = rows, sids, rows.lo, rows.hi, rows.ordered
        else:  # the call straddles a batch boundary: each batch gets its own rows' range and latest
            part, part_sids = rows[start:end], sids[start:end]
            if rows.ordered:
                # Receipt times never decrease along the call, so a slice's range is its ends'. A replay's calls
                # (a block of a file, ~6,000 rows) straddle most batches: a pass per row here was ~12% of its CPU.
                lo, hi, ordered = part[0].recv_ts, part[-1].recv_ts, True
            else:
                recv = [r.recv_ts for r in part]
                lo, hi = min(recv), max(recv)
                ordered = all(a <= c for a, c in zip(recv, recv[1:]))
        if not (b.part_lo <= lo and hi < b.part_hi):
            for ts in sorted({r.recv_ts for r in part}):
                if not b.part_lo <= ts < b.part_hi:
                    writer._note_partition(b, ts)
        # The intake admitted these rows (a repeated update id is dropped there): in order and newer than the
        # batch, none can repeat another; otherwise append_rows looks.
        taken += append_rows(writer, data[start * SIZE:end * SIZE], part_sids, part, lo, hi, ordered=ordered,
                             fresh=ordered and lo > b.max_ts)
        start = end
    return taken



"""Book tickers a feed hands over already encoded: the writer's side of :class:`~hftdb.wire.books.PackedBooks`.

The feed (:mod:`hftdb.exchanges.intake`) checks and packs each admitted row while parsing it (see
:mod:`hftdb.wire.books`); :func:`add_packed` appends such a call to a writer's batches, whole or not at all. A
test runs the same frames (fixtures and hostile ones) through both paths and compares rows and rejects.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from .vector import append_rows
# PackedBooks stays importable from here for the manager.
from .wire.books import LAYOUT, SIZE, PackedBooks

if TYPE_CHECKING:
    from .tables import BookTickerWriter

__all__ = ["PackedBooks", "add_packed"]

_SYMBOL_ID = attrgetter("symbol_id")


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



"""Book tickers a feed hands over already encoded: the writer's side of :class:`~hftdb.wire.books.PackedBooks`.

The feed (:mod:`hftdb.exchanges.intake`) checks and packs each admitted row while parsing it (see
:mod:`hftdb.wire.books`); :func:`add_packed` appends such a call to a writer's batches, whole or not at all. A
test runs the same frames (fixtures and hostile ones) through both paths and compares rows and rejects.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from .vector import TickerRows
# PackedBooks stays importable from here for the manager.
from ..wire.books import LAYOUT, SIZE, BookTuples, PackedBooks

if TYPE_CHECKING:
    from .tables import BookTickerWriter

__all__ = ["add_packed", "add_tuples"]

_SYMBOL_ID = attrgetter("symbol_id")


def add_packed(writer: BookTickerWriter, rows: PackedBooks, known_ids: set[int]) -> int | None:
    """Append a packed call to ``writer``'s batches as the writer's ``add`` would have; return the rows taken (exact
    repeats of a batch's rows are dropped and counted, as there), or None when the call must go the public path
    (not every row packed, an unregistered id, a changed list).

    The caller has reserved room for the rows and calls ``writer.submitted`` after; the rows reach the writer
    through :meth:`hftdb.store.writer.BatchWriter.append`, as every encoded book ticker does.
    """
    buf = rows.buf
    n = len(rows)
    if buf is None or n == 0 or len(buf) != n * SIZE:
        return None
    sids = list(map(_SYMBOL_ID, rows))  # (the tuples hold the same ids: the parser packed these)
    if not known_ids.issuperset(sids):
        return None
    data = bytes(buf)
    # The intake admitted these rows (a repeated update id is dropped there): in order and newer than the batch,
    # none can repeat another; otherwise the writer's batch looks (TickerRows.append_to).
    return writer.append(TickerRows(LAYOUT, data, sids, rows, rows.lo, rows.hi, ordered=rows.ordered,
                                    rising=rows.ordered))


def add_tuples(writer: BookTickerWriter, rows: BookTuples, known_ids: set[int]) -> int | None:
    """:func:`add_packed` for rows without records (:class:`~hftdb.wire.books.BookTuples`): the writer keeps each
    symbol's newest row from the tuples themselves. None when an id is not registered (the caller then sends
    ``rows.records()`` down the public path)."""
    n = len(rows)
    if n == 0:
        return 0
    sids = rows.sids()
    if not known_ids.issuperset(np.unique(sids).tolist()):
        return None
    data = bytes(rows.buf)
    # Admitted by the intake in order, all received at one time: none can repeat another (see add_packed).
    return writer.append(TickerRows(LAYOUT, data, sids, None, rows.recv_ts, rows.recv_ts, ordered=True,
                                    rising=True))

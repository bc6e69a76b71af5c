"""A writer's batch and what goes into it: :class:`Batch` (one batch's COPY payload, row count, receipt-time range,
partitions and newest row per key), :class:`Encoded` (the rows an encoder hands to
:meth:`~hftdb.store.writer.BatchWriter.append`) and :class:`WriterStats` (the writer's counters).

Their own module, below both :mod:`hftdb.store.writer` and :mod:`hftdb.store.commit`: the writer fills batches and
counts, its :class:`~hftdb.store.commit.Committer` commits the batches and counts too, and neither imports the other
to name them.
"""

from __future__ import annotations

import collections
import math
import uuid
from pathlib import Path
from typing import Any, Iterable, Protocol

from ..wire.copy import HEADER, split_tuples

__all__ = ["Batch", "Encoded", "WriterStats"]


class Batch:
    """One batch of a writer: its COPY payload so far, row count, receipt-time range, partitions and newest row per
    key. Encoders add to the writer's current batch only through :meth:`Encoded.append_to`."""

    __slots__ = ("seq", "id", "buf", "rows", "min_ts", "max_ts", "latest", "born", "spool_path", "nbytes", "uncertain",
                 "sent", "parts", "part_lo", "part_hi", "seen", "seen_upto")

    def __init__(self, seq: int, born: float) -> None:
        self.seq = seq
        self.id = uuid.uuid4()
        self.buf: bytearray | None = bytearray(HEADER)
        self.rows = 0
        self.min_ts = math.inf
        self.max_ts = -math.inf
        self.latest: Any = {}
        self.born = born
        self.spool_path: Path | None = None
        self.nbytes = 0
        self.uncertain = False
        #: Whether this writer has sent the batch whole in a commit whose rows it has not counted: found in the ledger
        #: afterwards, it was stored by this writer (an answer lost), not by the process whose spool it replays.
        self.sent = False
        #: Start (µs) of every partition this batch's rows fall in, and the range of the last one seen, so a
        #: row in the same partition as the one before costs two comparisons.
        self.parts: set[int] = set()
        self.part_lo = 0
        self.part_hi = 0
        #: The batch's tuples up to byte ``seen_upto`` of ``buf``, built only when a row that could repeat an
        #: earlier one arrives (see :meth:`holds`); None until then.
        self.seen: set[bytes] | None = None
        self.seen_upto = 0

    def holds(self, row: bytes | memoryview) -> bool:
        """Whether ``row`` (one COPY tuple) equals a tuple already in this batch: an exact duplicate.

        Asked only of a row that could repeat an earlier one, i.e. one not newer than its key's newest row in the
        batch (a row newer by receipt time cannot equal any earlier row of its key), so a stream of rows in receipt
        order never pays for it. The set of the batch's tuples is built on the first such row and extended from
        where it stopped on the next, never rebuilt: each tuple is read once per batch at most.
        """
        seen = self.seen
        if seen is None:
            seen = self.seen = set()
            self.seen_upto = len(HEADER)
        assert self.buf is not None
        end = len(self.buf)
        if self.seen_upto < end:
            seen.update(split_tuples(self.buf, self.seen_upto, end))
            self.seen_upto = end
        return row in seen


class Encoded(Protocol):
    """Rows of one table, checked and packed as binary COPY tuples, as an encoder hands them to
    :meth:`BatchWriter.append`. ``lo``/``hi``: the smallest and largest receipt time (Unix µs)."""

    lo: int
    hi: int

    def __len__(self) -> int:
        """The number of rows."""
        ...

    def slice(self, start: int, end: int) -> Encoded:
        """Rows ``start`` to ``end`` (the writer cuts a call at a batch boundary)."""
        ...

    def partition_starts(self, interval_us: int) -> Iterable[int]:
        """The start of every partition (``interval_us`` wide) the rows' receipt times fall in."""
        ...

    def append_to(self, batch: Batch) -> int:
        """Append the tuples to ``batch``'s payload and keep its newest row per key, dropping rows that exactly
        repeat one of the batch's or an earlier one of these; return how many were appended. Row count and time
        range are the writer's to update."""
        ...


class WriterStats:
    """Counters and recent commit timings of one writer."""

    __slots__ = (
        "rows_accepted", "rows_committed", "rows_duplicate", "batches_committed", "commits", "duplicates_skipped", "retries",
        "batches_spooled", "batches_replayed", "rows_dropped", "commit_seconds", "batch_rows", "last_commit_at",
        "last_error",
    )

    def __init__(self) -> None:
        self.rows_accepted = 0
        self.rows_committed = 0
        #: Rows dropped as exact duplicates of an earlier row of the same batch.
        self.rows_duplicate = 0
        self.batches_committed = 0
        #: Commit transactions (a commit takes a group of sealed batches).
        self.commits = 0
        self.duplicates_skipped = 0
        self.retries = 0
        self.batches_spooled = 0
        self.batches_replayed = 0
        self.rows_dropped = 0
        self.commit_seconds: collections.deque[float] = collections.deque(maxlen=2048)
        self.batch_rows: collections.deque[int] = collections.deque(maxlen=2048)
        self.last_commit_at: float | None = None
        self.last_error: str | None = None

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of recent commit durations, in seconds."""
        if not self.commit_seconds:
            return None
        data = sorted(self.commit_seconds)
        return data[min(len(data) - 1, int(q * len(data)))]

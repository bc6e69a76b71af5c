"""Group-commit batch writers: rows in, binary COPY transactions out, exactly once.

The path of a row::

    producer ──encode──▶ current batch (bytearray of COPY tuples)
                           │ sealed when the flusher can start a commit (group commit), at batch_max_rows,
                           │ or at batch_max_age_ms by the age timer
                           ▼
                         queue of sealed batches ──(while commits fail: oldest first)──▶ spool files
                           │
                           ▼ flusher: the sealed batches at the head, up to commit_max_rows, as one group
                         BEGIN; COPY ... FROM STDIN (BINARY); ledger rows + latest upsert + NOTIFY; COMMIT
                         (the writer's hftdb.store.commit.Committer; the next group's COPY starts while this one finishes)

Encoders hand the writer rows already checked and packed as COPY tuples through one method,
:meth:`BatchWriter.append` (anything that implements :class:`Encoded`: hftdb.store.vector's book tickers, whichever way
they came in); the writer cuts them at batch boundaries, notes their partitions and receipt-time range, and seals
full batches.

Rows are encoded as they are accepted, so encoding overlaps the COPY in flight. When no COPY is in flight the
flusher seals and sends at once (low latency when quiet); while one is in flight rows accumulate (big batches
under load). Memory is bounded: past buffer_max_rows the producer blocks, or the oldest batch is dropped, or
it gets BufferFullError (``full_policy``).

While commits fail, sealed batches go to the spool as they are sealed, oldest first, the head batch being
retried included (only the ``memory_max_batches`` newest may stay in memory). Spooled batches thus always precede
in-memory ones in the queue, and what is committed or spooled is a prefix of what was accepted: a process killed
during an outage loses only its newest rows (the current batch, the batch being spooled, the ``memory_max_batches``
kept), never a stretch in the middle. While commits succeed nothing is spooled.

Exactly-once: every batch carries a uuid written to ``ingest_batches`` in the transaction that commits it. After a
failure whose outcome is unknown, the retry first looks the ids up in the ledger and skips what did commit.
Spooled batches keep their id, so a replay after a crash is caught the same way.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import asyncpg

from .commit import RETRYABLE, CommitSpec, Committer, InFlight
from ..config import StorageSettings, WriterSettings
from ..wire.copy import TRAILER
from ..errors import BufferFullError, ClosedError
from ..rejects import Rejects
from .spool import Spool, SpooledBatch
from .batch import Batch, Encoded, WriterStats

__all__ = ["COPIES_WHILE_PRODUCING", "DROPPED_BATCH", "BatchWriter"]

logger = logging.getLogger(__name__)

#: How many COPYs may run at once while a producer keeps this process busy (:meth:`BatchWriter.producing`): one on
#: a host of two CPUs or fewer, two otherwise. There the producer holds one CPU, and a second COPY would share the
#: other with the first: on PostgreSQL 16 two backends inserting into one partition with a BRIN index also contend
#: for its metapage and range map on every row (server CPU per row 0.60-0.62 µs on one backend, 0.68-0.76 on two at
#: once; no difference without the index). One at a time, a 500k-row call's rate over copy_records_to_table's went
#: from medians of 1.91-1.96x to 2.00-2.04x in three windows (BENCHMARKS.md, "Session 10"). Once the producer is
#: done, two COPYs run again.
def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may run on
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


COPIES_WHILE_PRODUCING = 1 if _cpus() <= 2 else 2
#: The reject reason counted once for each batch the drop_oldest policy drops (its rows count as dropped).
DROPPED_BATCH = "buffer_full_dropped"

class BatchWriter:
    """Buffers encoded rows of one table and commits them in group-commit batches (by its :class:`Committer`).

    Subclasses (in :mod:`hftdb.store.tables`) define ``table``, ``columns``, ``latest_sql``, how rows are
    validated and encoded (their ``add``, which hands the encoded rows to :meth:`append`) and the latest rows'
    arguments (``_latest_args_of``). Producers call :meth:`reserve`, hand the rows over (through the subclass's
    ``add``, or already encoded straight to :meth:`append`), then :meth:`submitted`.
    """

    table: str = ""
    columns: tuple[str, ...] = ()
    #: The kind of each COPY column (see :class:`hftdb.store.commit.CommitSpec`).
    row_kinds: str = ""
    latest_sql: str = ""
    #: The temp table (and its DDL) that a commit's newest rows are COPied into before ``latest_sql`` reads them,
    #: and the kinds of its columns (see :func:`hftdb.wire.copy.copy_columns`); empty for a table whose ``latest_sql``
    #: takes the column arrays as parameters.
    latest_stage: str = ""
    latest_stage_ddl: str = ""
    latest_kinds: str = ""
    #: How the latest-row arguments are keyed (leading columns) and which column holds the receipt time.
    latest_key_cols: int = 1
    latest_ts_col: int = 1

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        settings: WriterSettings,
        storage: StorageSettings,
        spool_dir: str | Path | None,
        notify: bool = True,
        command_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        #: Called once a group of batches has committed (the manager empties its latest cache).
        self._on_commit = on_commit
        self.settings = settings
        self.storage = storage
        self._notify = notify
        #: Bound on each statement of a commit, so a connection that dies silently cannot stall the writer.
        self.command_timeout = command_timeout
        self._clock = clock
        self._max_rows = settings.batch_max_rows
        self._max_age = settings.batch_max_age_ms / 1000.0
        self._linger = settings.linger_ms / 1000.0
        self._seq = 0
        self.current = self._new_batch()
        self._queue: collections.deque[Batch] = collections.deque()
        self._mem_rows = 0
        self._pending_rows = 0
        self._committed_seq = 0
        self._inflight: list[Batch] = []
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._progress = asyncio.Condition()
        self._spool = Spool(Path(spool_dir) / self.table, max_bytes=settings.spool_max_bytes) if spool_dir else None
        self._spool_error_logged = -math.inf
        self._interval_us = storage.partition_interval_s * 1_000_000
        self._tasks: set[asyncio.Task[None]] = set()
        self._state = "new"
        self._producers = 0
        #: Batches drop_oldest dropped whose commit may have gone through (id -> (rows, sent by this writer)): the
        #: ledger settles them after the next commit (:meth:`_settle_dropped`).
        self._dropped_unsure: dict[uuid.UUID, tuple[int, bool]] = {}
        #: The flusher waits for rows (it could start a commit but has none ready), not for a commit in flight.
        self._flusher_idle = True
        self.stats = WriterStats()
        self.rejects = Rejects(self.table, noun="row", interval=settings.reject_log_interval_s, log=logger)
        spec = CommitSpec(
            self.table, columns=self.columns, row_kinds=self.row_kinds, latest_sql=self.latest_sql,
            latest_stage=self.latest_stage, latest_stage_ddl=self.latest_stage_ddl, latest_kinds=self.latest_kinds,
            latest_key_cols=self.latest_key_cols, latest_ts_col=self.latest_ts_col,
            latest_args_of=self._latest_args_of, decode_latest=self._decode_latest)
        self._committer = Committer(
            pool, spec, settings=settings, storage=storage, spool=self._spool, stats=self.stats, rejects=self.rejects,
            notify=notify, command_timeout=command_timeout, on_failure=self._commit_failed, wake=self._wakeup.set)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(table={self.table!r}, state={self._state}, pending_rows={self._pending_rows}, "
            f"queued_batches={len(self._queue)})"
        )

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load spooled batches from an earlier run (they go first) and start the flusher and age timer."""
        if self._state != "new":
            return
        try:
            await self._load_spool()
            await self._committer.warm()
        except BaseException:
            if self._spool is not None:
                self._spool.close()  # (not started: nothing of this writer holds the directory)
            raise
        self._state = "open"
        for coro in (self._flusher(), self._ager()):
            task = asyncio.create_task(coro, name=f"hftdb-{self.table}-{coro.__name__}")
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        if self._queue:
            self._wakeup.set()

    async def _load_spool(self) -> None:
        if self._spool is not None:
            for path in await asyncio.to_thread(self._spool.open):
                batch = self._new_batch()
                spooled = self._spool.read(path)
                batch.id = uuid.UUID(bytes=spooled.batch_id)
                batch.rows = spooled.rows
                batch.buf = None
                batch.spool_path = path
                batch.nbytes = len(spooled.payload)
                batch.uncertain = True  # it may have committed just before the process stopped
                self._queue.append(batch)
                self._pending_rows += batch.rows
                self.stats.batches_replayed += 1
            self.current = self._new_batch()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s writer task %s failed", self.table, task.get_name(), exc_info=task.exception())

    async def close(self, *, timeout: float = 30.0) -> None:
        """Commit everything accepted; what cannot be committed within ``timeout`` is spooled. Idempotent."""
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            return
        self._state = "closing"
        self._seal()
        self._wakeup.set()
        waiting = asyncio.ensure_future(self._wait_committed(self._seq))
        try:
            # Shielded: a cancelled close() must not cancel the final flush half way through a COPY.
            await asyncio.wait_for(asyncio.shield(waiting), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            waiting.cancel()  # (only a wait: left pending, it would outlive the writer)
            await self._stop_tasks()
            self._spill_all()
            self._closed()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        await self._stop_tasks()
        self._closed()

    async def terminate(self) -> None:
        """Stop now: batches not committed are spooled (or, with no spool, logged as lost). Idempotent."""
        if self._state == "closed":
            return
        self._state = "closing"
        self._seal()
        await self._stop_tasks()
        self._spill_all()
        self._closed()

    def _closed(self) -> None:
        self._state = "closed"
        if self._spool is not None:
            self._spool.close()  # the next writer on this spool_dir may start

    async def _stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClosedError(f"the {self.table} writer is {self._state}")

    # -- producer side ---------------------------------------------------------------------------------------

    def _new_batch(self) -> Batch:
        self._seq += 1
        return Batch(self._seq, self._clock())

    async def reserve(self, n: int) -> None:
        """Wait (or act per ``full_policy``) until ``n`` more rows fit in the in-memory buffer."""
        self._check_open()
        limit = self.settings.buffer_max_rows
        while self._mem_rows + n > limit and self._mem_rows > 0:
            # Spill only while commits are failing: a slow but healthy database gets backpressure instead.
            if self._committer.failing and self._spill_one():
                continue
            policy = self.settings.full_policy
            if policy == "raise":
                raise BufferFullError(
                    f"{self.table} writer buffer is full ({self._mem_rows} rows in memory, limit {limit})"
                )
            if policy == "drop_oldest" and self._drop_oldest():
                continue
            self._space.clear()
            await self._space.wait()
            self._check_open()

    def submitted(self, added: int) -> None:
        """Account for ``added`` rows appended to :attr:`current`, sealing it when full, and wake the flusher."""
        if added:
            self.stats.rows_accepted += added
            self._mem_rows += added
            self._pending_rows += added
            if self.current.rows >= self._max_rows:
                self._seal()
            if self._flusher_idle and (not self._inflight or len(self._queue) > len(self._inflight)):
                # With a commit in flight the flusher only takes sealed batches (a second commit starts on a
                # backlog), and while it waits for a commit (two in flight, or the COPY limit reached) the commit
                # wakes it: waking it for rows it cannot take yet would cost a loop turn per call for nothing
                # (~14 us per 100-row call, profiled; during a backlog nine calls in ten woke it).
                self._wakeup.set()

    @contextlib.contextmanager
    def producing(self) -> Iterator[None]:
        """Mark a stretch in which the caller keeps this process's CPU busy handing rows over (a big call packed
        slice by slice, yielding only between slices): meanwhile at most :data:`COPIES_WHILE_PRODUCING` commits
        COPY at once. No I/O."""
        self._producers += 1
        try:
            yield
        finally:
            self._producers -= 1
            self._wakeup.set()

    @property
    def copy_limit(self) -> int:
        """How many commits may COPY at once now (two, or :data:`COPIES_WHILE_PRODUCING` while
        :meth:`producing`)."""
        return COPIES_WHILE_PRODUCING if self._producers else 2

    def vectorizes(self, n: int) -> bool:
        """Whether :meth:`add_fast` is worth offering a call of ``n`` rows (never, unless the table has a
        vectorized path)."""
        return False

    def add_fast(self, rows: list[Any], known_ids: set[int] | None, sids: list[int] | None = None,
                 names: dict[str, dict[str, int]] | None = None) -> int | None:
        """Take a whole call's rows at once where the table has a vectorized path (rows carrying ids, ``sids``
        giving them, or rows named by a name in ``names``); None means use ``add``. ``known_ids``: the registered
        ids the rows' own are checked against (None: ``sids`` are registered ones)."""
        return None

    def append(self, rows: Encoded) -> int:
        """Take encoded, checked rows into the current batch (and the next ones, sealing each as it fills); return
        how many were taken: all but exact repeats of a batch's rows, which are dropped and counted
        (``rows_duplicate``). Every way in ends here (the writers' ``add``, hftdb.store.vector's whole calls and
        columns, hftdb.store.packed, units of work); the caller has reserved room (:meth:`reserve`) and calls
        :meth:`submitted` after."""
        n = len(rows)
        max_rows = self._max_rows
        b = self.current
        lo, hi = rows.lo, rows.hi
        if b.rows + n < max_rows and b.part_lo <= lo and hi < b.part_hi:
            # The common case of a small call: the rows fit the current batch and its last partition, so there is
            # nothing to cut, note or seal (the loop below costs ~0.3 us more a call, measured on 1-row calls).
            added = rows.append_to(b)
            if added < n:
                self.stats.rows_duplicate += n - added
            if lo < b.min_ts:
                b.min_ts = lo
            if hi > b.max_ts:
                b.max_ts = hi
            b.rows += added
            return added
        start = taken = 0
        while start < n:
            b = self.current
            end = min(n, start + max_rows - b.rows)
            part = rows if start == 0 and end == n else rows.slice(start, end)
            lo, hi = part.lo, part.hi
            if not (b.part_lo <= lo and hi < b.part_hi):
                interval = self._interval_us
                if hi - hi % interval == lo - lo % interval:  # one partition (nearly always): no pass over the rows
                    self._note_partition(b, lo)
                else:
                    for ts in part.partition_starts(interval):
                        self._note_partition(b, ts)
            added = part.append_to(b)
            if added < end - start:
                self.stats.rows_duplicate += end - start - added
            if lo < b.min_ts:
                b.min_ts = lo
            if hi > b.max_ts:
                b.max_ts = hi
            b.rows += added
            taken += added
            start = end
            if b.rows >= max_rows:
                self._seal()
        return taken

    def _note_partition(self, batch: Batch, ts: int) -> None:
        interval = self._interval_us
        lo = ts - ts % interval
        batch.parts.add(lo)
        batch.part_lo, batch.part_hi = lo, lo + interval

    # -- batching --------------------------------------------------------------------------------------------

    def _seal(self) -> None:
        batch = self.current
        if batch.rows == 0:
            return
        assert batch.buf is not None
        batch.buf += TRAILER
        batch.nbytes = len(batch.buf)
        batch.seen = None  # no row joins a sealed batch
        self._queue.append(batch)
        self.current = self._new_batch()
        if self._committer.failing:
            # Commits fail: the batch goes to disk now (after every older one), not when memory runs short, so a
            # crash during an outage loses at most the newest batches (see _spill_excess).
            self._spill_excess()

    async def _ager(self) -> None:
        # Seals a batch once its first row is batch_max_age_ms old, even if no row arrives after it: while a
        # commit is slow or failing this keeps batches (and spool files) bounded in time.
        while True:
            batch = self.current
            if batch.rows == 0:
                await asyncio.sleep(self._max_age)
                continue
            delay = batch.born + self._max_age - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if batch is self.current:
                self._seal()
                self._wakeup.set()

    async def _flusher(self) -> None:
        # Up to two commits are in flight: once a group's COPY is handed to its connection, the next group starts
        # its own COPY on another connection, beside it and beside the first one's latest upsert and COMMIT (the
        # server never waits for the loop to form and hand over the next group, and the WAL flush overlaps). A later group never commits before an
        # earlier one: it waits for the earlier outcome before its latest upsert, and rolls back if that failed.
        inflight: collections.deque[InFlight] = collections.deque()
        try:
            while True:
                self._wakeup.clear()
                while inflight and inflight[0].task.done():
                    if await self._reap(inflight.popleft()):
                        if self._dropped_unsure:
                            await self._settle_dropped()
                    else:
                        # Failed: the later group rolls back (it saw the failure); then back off once and re-form.
                        while inflight:
                            later = inflight.popleft()
                            await asyncio.wait([later.task])
                            await self._reap(later)
                        await asyncio.sleep(self._committer.backoff())
                timeout = None
                pipeline = 1 if self._committer.failing else 2
                can_start = (len(inflight) < pipeline and (not inflight or inflight[-1].copied.is_set())
                             and sum(not c.copy_ended for c in inflight) < self.copy_limit)
                if can_start:
                    # A second commit starts only on a backlog of sealed batches: sealing a few rows early just to
                    # fill the pipeline would make commits small and many, and each pays the latest upsert.
                    ready = self._ready_group(seal=not inflight)
                    if isinstance(ready, list):
                        prev = inflight[-1] if inflight else None
                        inflight.append(self._start_commit(ready, prev))
                        continue
                    timeout = ready
                # Otherwise what it waits for is a commit's progress (its COPY handed over or ended, its end, the
                # end of a producing stretch), each of which wakes it; rows arriving meanwhile need not.
                self._flusher_idle = can_start
                await _wait(self._wakeup, timeout)
        finally:
            # Cancelled (close/terminate): stop what is in flight. A commit cut short may or may not have
            # committed: its batches stay queued, marked for a ledger check before they are sent again.
            for c in inflight:
                c.task.cancel()
                for b in c.group:
                    b.uncertain = True
            if inflight:
                await asyncio.gather(*(c.task for c in inflight), return_exceptions=True)
            self._inflight = []

    def _ready_group(self, *, seal: bool = True) -> list[Batch] | float | None:
        """The next group to commit, or how long to linger first (seconds), or None when there is nothing (or, with
        ``seal`` false, no sealed batch yet)."""
        if len(self._queue) <= len(self._inflight):
            if self.current.rows == 0 or not seal:
                return None
            if self._linger:
                remaining = self.current.born + self._linger - self._clock()
                if remaining > 0 and self.current.rows < self._max_rows:
                    return remaining
            self._seal()
        return self._take_group()

    def _start_commit(self, group: list[Batch], prev: InFlight | None) -> InFlight:
        self._inflight = self._inflight + group
        commit = self._committer.start(group, prev)
        # Wake the flusher when this commit's COPY is handed over (the next group may start) and when it ends.
        commit.task.add_done_callback(lambda _: self._wakeup.set())
        return commit

    async def _reap(self, commit: InFlight) -> bool:
        """Account for a finished commit, in queue order; True if it committed."""
        try:
            ok = commit.task.result()
        except Exception:
            # The committer retries everything it knows; anything else is a bug, but if the flusher died every row
            # behind it would sit uncommitted forever. Log it, keep the group at the head, try again.
            self.stats.retries += 1
            logger.exception("%s writer: unexpected error committing %d batch(es); retrying",
                             self.table, len(commit.group))
            self._committer.failing = True
            ok = False
        self._inflight = self._inflight[len(commit.group):]
        if not ok:
            return False
        for batch in commit.group:
            popped = self._queue.popleft()
            assert popped is batch
            self._release(batch)
        if self._on_commit is not None:
            self._on_commit()
        async with self._progress:
            self._committed_seq = commit.group[-1].seq
            self._progress.notify_all()
        return True

    def _take_group(self) -> list[Batch]:
        """The sealed batches at the head of the queue that one transaction will commit.

        Group commit proper: while a commit was in flight, several batches may have been sealed; committing them
        together pays the per-transaction costs (latest upsert, ledger, NOTIFY, fsync) once, which is what lets
        throughput grow under load. Each batch keeps its own ledger id and spool file.
        """
        first = len(self._inflight)  # the batches before it are in an earlier commit still in flight
        group = [self._queue[first]]
        if self._committer.failing:
            # While commits fail, retry only the head: the rest stays spillable.
            return group
        rows = group[0].rows
        limit = self.settings.commit_max_rows
        for batch in itertools.islice(self._queue, first + 1, None):
            if rows + batch.rows > limit:
                break
            group.append(batch)
            rows += batch.rows
        return group

    def _release(self, batch: Batch) -> None:
        if batch.buf is not None:
            self._mem_rows -= batch.rows
        self._pending_rows -= batch.rows
        if batch.spool_path is not None and self._spool is not None:
            self._spool.remove(batch.spool_path)
        batch.buf = None
        batch.latest = None
        self._space.set()

    async def flush(self, *, timeout: float | None = None) -> None:
        """Return once every row accepted before the call is committed."""
        self._check_open()
        target = self.current.seq if self.current.rows else self.current.seq - 1
        self._seal()
        self._wakeup.set()
        await asyncio.wait_for(self._wait_committed(target), timeout)

    async def _wait_committed(self, target: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self._committed_seq >= target or not self._has_pending(target))

    def _has_pending(self, target: int) -> bool:
        return any(b.seq <= target for b in self._queue) or (self.current.rows > 0 and self.current.seq <= target)

    # -- memory bound and spool ------------------------------------------------------------------------------

    def _sealed_in_memory(self) -> list[Batch]:
        """The sealed batches still held in memory, oldest first (those in flight included)."""
        # Spooled batches always precede in-memory ones in the queue (replayed ones come first, spills go oldest
        # first), so the in-memory ones are the tail after the last spooled batch.
        tail: list[Batch] = []
        for batch in reversed(self._queue):
            if batch.buf is None:
                break
            tail.append(batch)
        tail.reverse()
        return tail

    def _spill_one(self) -> bool:
        """Move the oldest in-memory sealed batch (sealing the current one if none) to the spool; False when
        nothing can be spilled."""
        if self._spool is None:
            return False
        sealed = self._sealed_in_memory()
        if not sealed:
            if not self.current.rows:
                return False
            spooled = self.stats.batches_spooled
            self._seal()  # while commits fail this spools it already
            if self.stats.batches_spooled > spooled:
                return True
            sealed = self._sealed_in_memory()
            if not sealed:
                return False
        if not self._spool.has_room(sealed[0].nbytes):
            return False
        return self._spill(sealed[0])

    def _spill(self, batch: Batch) -> bool:
        """Write ``batch`` to the spool; False (logged, the batch stays in memory) when the spool cannot be
        written."""
        assert self._spool is not None and batch.buf is not None
        spooled = SpooledBatch(
            table=self.table, batch_id=batch.id.bytes, rows=batch.rows, min_ts=int(batch.min_ts),
            max_ts=int(batch.max_ts), latest=self._encode_latest(self._latest_args(batch)), payload=bytes(batch.buf),
            parts=sorted(batch.parts),
        )
        # Durable (fsynced file and directory) before the rows stop counting as held in memory. A batch still in
        # flight keeps its payload in that commit; if the commit lands, _release removes the file, and if the
        # process dies first the replay finds the batch in the ledger.
        try:
            batch.spool_path = self._spool.write(spooled)
        except OSError as exc:
            # Disk full, directory gone: the batch waits in memory like any that does not fit (this runs inside
            # producers' calls and the age timer, which must not die of it).
            now = self._clock()
            if now >= self._spool_error_logged + self.settings.reject_log_interval_s:
                self._spool_error_logged = now
                logger.error("%s writer could not write to the spool in %s (%s); batches stay in memory",
                             self.table, self._spool.directory, exc)
            return False
        self._mem_rows -= batch.rows
        batch.buf = None
        batch.latest = None
        self.stats.batches_spooled += 1
        self._space.set()
        return True

    def _commit_failed(self) -> None:
        # After a failed attempt: what must go to disk now goes, and producers blocked on a full buffer re-check
        # (now that commits fail, they may spill instead).
        self._spill_excess()
        self._space.set()

    def _spill_excess(self) -> None:
        """While commits fail: spool sealed batches, oldest first, until at most ``memory_max_batches`` of them
        (the newest) and at most ``buffer_max_rows`` rows are left in memory.

        Oldest first, the head batch being retried included, so that what is committed or spooled is always a
        prefix of what was accepted: a crash loses only the newest rows, never a stretch in the middle.
        """
        if self._spool is None:
            return
        sealed = self._sealed_in_memory()
        keep = self.settings.memory_max_batches
        for i, batch in enumerate(sealed):
            if len(sealed) - i <= keep and self._mem_rows <= self.settings.buffer_max_rows:
                return
            if not self._spool.has_room(batch.nbytes) or not self._spill(batch):
                # A later (maybe smaller) batch is not spooled in its place: that would leave a hole.
                return

    def _spill_all(self) -> None:
        self._seal()
        lost = spilled = 0
        full = False
        for batch in list(self._queue):
            if batch.buf is None:
                continue
            # Once one batch does not fit, none after it is spooled either: the spool holds a prefix.
            if not full and self._spool is not None and self._spool.has_room(batch.nbytes) and self._spill(batch):
                spilled += 1
            else:
                full = True
                lost += batch.rows
                self._queue.remove(batch)
                self._mem_rows -= batch.rows
                self._pending_rows -= batch.rows
        if lost:
            self.stats.rows_dropped += lost
            logger.error("%s writer closed with %d uncommitted rows and no room to spool them", self.table, lost)
        elif spilled:
            logger.warning("%s writer closed with uncommitted batches spooled to %s; they replay on next start",
                           self.table, self._spool.directory if self._spool else None)

    def _drop_oldest(self) -> bool:
        for batch in self._queue:
            if batch in self._inflight or batch.buf is None:
                continue
            self._queue.remove(batch)
            self._mem_rows -= batch.rows
            self._pending_rows -= batch.rows
            self.stats.rows_dropped += batch.rows
            self.rejects.add(DROPPED_BATCH, f"dropped a batch of {batch.rows} rows (policy drop_oldest)")
            if batch.uncertain:
                self._dropped_unsure[batch.id] = (batch.rows, batch.sent)
            return True
        return False

    async def _settle_dropped(self) -> None:
        """Dropped batches whose commit had gone through after all (the ledger holds them): their rows are stored,
        so they are not counted as dropped; those this writer had sent count as committed."""
        unsure, self._dropped_unsure = self._dropped_unsure, {}
        try:
            stored = await self._committer.stored_rows(list(unsure))
        except RETRYABLE:
            self._dropped_unsure.update(unsure)  # asked again after the next commit
            return
        for batch_id, rows in stored.items():
            self.stats.rows_dropped -= rows
            if unsure[batch_id][1]:
                self.stats.rows_committed += rows
        if stored:
            logger.info("%s: %d rows of %d dropped batch(es) had been committed after all (the ledger holds them):"
                        " counted as committed, not dropped", self.table, sum(stored.values()), len(stored))

    # -- per-table hooks ---------------------------------------------------------------------------------------

    def _latest_args(self, batch: Batch) -> list[Any]:
        return self._latest_args_of(batch.latest)

    def _latest_args_of(self, latest: dict[Any, Any]) -> list[Any]:
        """The latest-table upsert's column arrays for a {key: newest row} dict."""
        raise NotImplementedError

    def _encode_latest(self, args: list[Any]) -> list[Any]:
        return args

    def _decode_latest(self, stored: list[Any]) -> list[Any]:
        return stored

    # -- units of work -----------------------------------------------------------------------------------------

    async def write_in(self, conn: asyncpg.Connection) -> tuple[int, list[uuid.UUID]]:
        """Write every row added so far on ``conn`` inside the caller's transaction (used by units of work, whose
        writer is their own: nothing else is queued on it). Returns the rows written and their batches' ledger ids."""
        self._seal()
        group = list(self._queue)
        self._queue.clear()
        if not group:
            return 0, []
        if self.latest_stage:
            # In the caller's transaction, which may roll back and take a new table with it: not remembered by the
            # committer. The same transaction may have staged rows already (two writes in one unit).
            await conn.execute(f"{self.latest_stage_ddl}; TRUNCATE pg_temp.{self.latest_stage}",
                               timeout=self.command_timeout)
        await self._committer.write(conn, group, [(b.buf, b.latest) for b in group])
        return sum(b.rows for b in group), [b.id for b in group]

    def forget_partitions(self) -> None:
        """Forget which partitions exist (after retention or a schema change dropped some)."""
        self._committer.forget_partitions()

    # -- introspection -----------------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether the writer takes rows (started, and not closing or closed)."""
        return self._state == "open"

    @property
    def pending_rows(self) -> int:
        """Rows accepted and not yet committed (in memory or spooled)."""
        return self._pending_rows

    def snapshot(self) -> dict[str, Any]:
        """Counters for ``get_database_stats`` and the status line."""
        s = self.stats
        p50, p99 = s.percentile(0.5), s.percentile(0.99)
        return {
            "rows_accepted": s.rows_accepted,
            "rows_committed": s.rows_committed,
            "rows_duplicate": s.rows_duplicate,
            "rows_pending": self._pending_rows,
            "rows_in_memory": self._mem_rows,
            "rows_unsealed": self.current.rows,
            "batches_committed": s.batches_committed,
            "commits": s.commits,
            "batches_queued": len(self._queue),
            "batches_spooled": s.batches_spooled,
            "batches_replayed": s.batches_replayed,
            "spool_bytes": self._spool.bytes_used if self._spool else 0,
            "duplicates_skipped": s.duplicates_skipped,
            "retries": s.retries,
            "rows_dropped": s.rows_dropped,
            "rejects": self.rejects.snapshot(),
            "commit_p50_ms": None if p50 is None else p50 * 1000,
            "commit_p99_ms": None if p99 is None else p99 * 1000,
            "mean_batch_rows": (sum(s.batch_rows) / len(s.batch_rows)) if s.batch_rows else None,
            "last_error": s.last_error,
        }


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    if timeout is None:
        await event.wait()
        return
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass

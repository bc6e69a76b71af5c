"""Committing a group of sealed batches: one transaction, exactly once, in order.

The body of a commit is ``BEGIN; COPY ... FROM STDIN (BINARY); COPY of the newest row per symbol into a temp
staging table; ledger rows + latest-table upsert (from that table) + NOTIFY; COMMIT``. Every batch carries a uuid
written to ``ingest_batches`` in that transaction; after a failure whose outcome is unknown (the connection died
around COMMIT) the next attempt looks the ids up first and skips what did commit. Two groups may be in flight: the
later one sends its COPY as soon as the earlier one's is handed over (the two COPYs run side by side on two
backends), but waits for the earlier outcome before its own ledger/latest step and rolls back if that failed, so
commits land in queue order and never deadlock on the latest table's rows.

A :class:`Committer` belongs to one :class:`hftdb.store.writer.BatchWriter`, which hands it at construction everything
it works with (the pool, the table's :class:`CommitSpec`, the spool, the writer's statistics and rejects) and calls
:meth:`Committer.start` with each group of sealed batches. The committer owns what only commits need: which
partitions exist, which backends hold the staging table, which batches are being taken apart, and whether commits
are failing (:attr:`Committer.failing`, with the backoff :meth:`Committer.backoff`). A commit's latest rows go to
the staging table packed by :func:`hftdb.wire.copy.copy_columns`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import random
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

import asyncpg
import orjson

from ..db import dberrors, partitions
from ..config import StorageSettings, WriterSettings
from ..wire.copy import HEADER, TRAILER, decode_tuple, split_tuples
from ..rejects import Rejects
from .spool import Spool
from ..wire.copy import copy_columns

if TYPE_CHECKING:
    from .batch import Batch, WriterStats

__all__ = ["COPY_MESSAGE_BYTES", "RETRYABLE", "CommitSpec", "Committer", "InFlight", "copy_in_messages", "stage_latest"]

logger = logging.getLogger("hftdb.store.writer")

#: What a commit attempt catches (anything from the server or the socket); :func:`hftdb.db.dberrors.classify` then
#: says what it means: wait for the database (retried with backoff for as long as it takes), a row the server
#: refused (the batch is taken apart, see :meth:`Committer._isolate`), or something else (retried
#: ``MAX_OTHER_ATTEMPTS`` times, then taken apart the same way).
RETRYABLE: tuple[type[BaseException], ...] = dberrors.CATCH

#: How long :meth:`Committer.warm` waits for a connection and for each of its steps before leaving them to the
#: first commits (a writer may start beside a database that is slow to answer).
_WARM_TIMEOUT_S = 5.0

#: The batches of a group the ledger holds whole (``whole``), or only parts of, committed when an earlier attempt
#: took the batch apart: each part's id is the batch's first ten bytes and a node number (:func:`_part_id`), so one
#: range scan of the ledger's primary key finds them.
_LEDGER_CHECK = """
SELECT r.id, bool_or(i.batch_id = r.id) AS whole
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS r(id, lo, hi)
JOIN ingest_batches i ON i.batch_id BETWEEN r.lo AND r.hi
GROUP BY r.id"""

#: Rows the ledger holds for each batch id: the batch's own row, or its parts' rows when it was taken apart.
_LEDGER_ROWS = """
SELECT r.id, sum(i.row_count)::int8
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS r(id, lo, hi)
JOIN ingest_batches i ON i.batch_id BETWEEN r.lo AND r.hi
GROUP BY r.id"""

#: Socket send buffer asked for on the connections that carry a commit's COPY (the kernel grants at most twice
#: net.core.wmem_max). With the default (~208 kB, ~2,000 rows) the server's COPY drains the socket in ~2 ms and then
#: waits for the event loop to write more, which it does only between callbacks (a producer's call, a commit's
#: Python); with most of a commit's payload in the kernel the server reads at its own pace.
_COPY_SNDBUF = 16 << 20

#: The WHERE of the COPY into a staging table: true for every row, but volatile, and a COPY with a volatile WHERE
#: inserts its rows one at a time. Otherwise it buffers up to 1,000 rows, each in a tuple slot of its own, and
#: every slot pins the table's descriptor in the statement's resource owner, whose array (PostgreSQL up to 16)
#: adds and removes the same pointer 1,000 times in quadratic time: perf found over half of the staging COPY's
#: server CPU in ResourceArrayAdd/Enlarge/Remove. One at a time, the staging step of a 1,000-symbol commit took
#: 0.74 ms of the backend's CPU against 1.6 ms (BENCHMARKS.md, "Session 9").
_ONE_AT_A_TIME = "pg_catalog.random() >= 0"


async def stage_latest(conn: asyncpg.Connection, stage: str, kinds: str, latest_args: list[Any], *,
                       timeout: float | None = None) -> None:
    """COPY a commit's newest rows (column arrays, of ``kinds``, see :func:`hftdb.wire.copy.copy_columns`) into
    the temp staging table ``stage`` on ``conn``, in the transaction that then runs the latest statement over them."""
    await conn.copy_to_table(stage, schema_name="pg_temp", source=memoryview(copy_columns(kinds, latest_args)),
                             format="binary", where=_ONE_AT_A_TIME, timeout=timeout)



class CommitSpec:
    """What committing needs to know of a table: its COPY columns, its latest-row statement and how to build that
    statement's arguments from a batch's newest rows (the table's writer, in :mod:`hftdb.store.tables`, supplies them)."""

    __slots__ = ("table", "columns", "row_kinds", "latest_sql", "latest_stage", "latest_stage_ddl", "latest_kinds",
                 "latest_key_cols", "latest_ts_col", "latest_args_of", "decode_latest")

    def __init__(
        self, table: str, *, columns: Sequence[str], row_kinds: str, latest_sql: str, latest_stage: str = "",
        latest_stage_ddl: str = "", latest_kinds: str = "", latest_key_cols: int = 1, latest_ts_col: int = 1,
        latest_args_of: Callable[[Any], list[Any]], decode_latest: Callable[[list[Any]], list[Any]],
    ) -> None:
        if not table:
            raise ValueError("table must be named")
        self.table = table
        self.columns = tuple(columns)
        #: The kind of each column of the table's COPY tuples (see :func:`hftdb.wire.copy.decode_tuple`), in the order
        #: of the latest-row arguments, so that a batch taken apart can build its parts' latest rows from them.
        self.row_kinds = row_kinds
        self.latest_sql = latest_sql
        #: The temp table (and its DDL) a commit's newest rows are COPied into before ``latest_sql`` reads them,
        #: and the kinds of its columns (:func:`hftdb.wire.copy.copy_columns`); empty for a table whose
        #: ``latest_sql`` takes the column arrays as parameters.
        self.latest_stage = latest_stage
        self.latest_stage_ddl = latest_stage_ddl
        self.latest_kinds = latest_kinds
        #: How the latest-row arguments are keyed (leading columns) and which column holds the receipt time.
        self.latest_key_cols = latest_key_cols
        self.latest_ts_col = latest_ts_col
        #: The latest upsert's column arrays for a batch's {key: newest row} dict.
        self.latest_args_of = latest_args_of
        #: The latest column arrays of a spooled batch as read back from its file.
        self.decode_latest = decode_latest


class Committer:
    """The commit path of one batch writer (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        spec: CommitSpec,
        *,
        settings: WriterSettings,
        storage: StorageSettings,
        spool: Spool | None,
        stats: WriterStats,
        rejects: Rejects,
        notify: bool = True,
        command_timeout: float = 60.0,
        on_failure: Callable[[], None] = lambda: None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        if command_timeout <= 0:
            raise ValueError(f"command_timeout must be > 0, got {command_timeout!r}")
        self._pool = pool
        self.spec = spec
        self.table = spec.table
        self.settings = settings
        self.storage = storage
        self._spool = spool
        self.stats = stats
        self.rejects = rejects
        self._notify = notify
        #: Bound on each statement of a commit, so a connection that dies silently cannot stall the writer.
        self.command_timeout = command_timeout
        #: Called after each failed attempt (the writer spools what it must and wakes blocked producers).
        self._on_failure = on_failure
        #: Called as a commit's COPY is handed over, so the writer can start the next group beside it.
        self._wake = wake
        #: Whether the last attempt failed: the writer then spools sealed batches and retries only the head.
        self.failing = False
        self._delay = settings.retry_initial_ms / 1000.0
        self._interval_us = storage.partition_interval_s * 1_000_000
        self._covered: list[tuple[int, int]] = []
        #: Backends (by pid) known to hold this table's staging table; a connection to any other creates it first.
        self._staged: set[int] = set()
        #: Batches (by id) that a data error, or too many other errors, sent to :meth:`_isolate`.
        self._suspect: set[uuid.UUID] = set()
        #: Failed attempts per batch (by id) on errors that are neither an outage nor a refused row.
        self._other_failures: dict[uuid.UUID, int] = {}
        #: Rows (tree nodes) of a batch being taken apart that are rejected already: an outage midway must not
        #: count them twice when the batch is taken apart again.
        self._rejected_nodes: dict[uuid.UUID, set[int]] = {}
        #: Parts (tree nodes) of a batch being taken apart whose commit this writer sent and whose outcome it never
        #: heard (an outage cut the answer off): found in the ledger later, they were stored by this writer and
        #: count as committed.
        self._unanswered_nodes: dict[uuid.UUID, set[int]] = {}
        #: Batches :meth:`_isolate` finished (every row committed or rejected, and counted) in a pass that an
        #: outage then cut short: the next pass skips them instead of taking them apart and counting again.
        self._isolated: set[uuid.UUID] = set()
        #: Whether the ERROR that the server refuses our connection was logged since the last commit.
        self._refused_said = False

    async def warm(self, connections: int = 2) -> None:
        """Ready up to ``connections`` pooled connections (a writer has two commits in flight) for this table's
        commits, before the first one: the staging table created, the latest statement prepared (asyncpg's
        statement cache, the lookups of its parameters' types, the server's parse), and today's partition known. A
        commit pays for each of these in round trips otherwise, and a big call's first commits wait for every one
        of them while the producer holds the loop between slices (timed on a 500k-row call: the first COPY started
        ~42 ms in, ~32 with this). Best effort: on a database that does not answer, the first commits do it."""
        try:
            async with contextlib.AsyncExitStack() as held:
                conns = [await held.enter_async_context(self._pool.acquire(timeout=_WARM_TIMEOUT_S))
                         for _ in range(min(connections, self._pool.get_max_size()))]
                # (every one to its end before the connections go back: one failing must not leave another's
                # transaction open, which the pool resets with an ERROR line that says nothing to the user)
                done = await asyncio.wait_for(asyncio.gather(*(self._warm_one(c) for c in conns),
                                                             return_exceptions=True), _WARM_TIMEOUT_S)
                for result in done:
                    if isinstance(result, BaseException):
                        raise result
                now = time.time_ns() // 1000
                await asyncio.wait_for(self._ensure_partitions(conns[0], now, now), _WARM_TIMEOUT_S)
        except (*RETRYABLE, TimeoutError) as exc:
            logger.debug("%s: connections not readied for commits (%s); the first commits do it", self.table,
                         type(exc).__name__)

    async def _warm_one(self, conn: asyncpg.Connection) -> None:
        spec = self.spec
        if spec.latest_stage and conn.get_server_pid() not in self._staged:
            await conn.execute(spec.latest_stage_ddl)
            self._staged.add(conn.get_server_pid())
        # The statement with no rows (no ledger row, no latest row, no NOTIFY), rolled back all the same.
        latest = [] if spec.latest_stage else spec.latest_args_of({})
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(spec.latest_sql, *latest, [], [], [], [], None)
        finally:
            await tx.rollback()

    async def stored_rows(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """How many rows of each of these batches the ledger holds (batches it holds nothing of are left out)."""
        async with self._pool.acquire(timeout=self.settings.retry_max_ms / 1000.0 + 5) as conn:
            found = await conn.fetch(_LEDGER_ROWS, ids, [_part_id(i, 0) for i in ids],
                                     [_part_id(i, (1 << 48) - 1) for i in ids], timeout=self.command_timeout)
        return {r[0]: r[1] for r in found}

    def backoff(self) -> float:
        """How long to wait before retrying after a failed commit (jittered), doubling the next wait up to
        ``retry_max_ms``."""
        delay = self._delay * random.uniform(0.5, 1.5)
        self._delay = min(self._delay * 2, self.settings.retry_max_ms / 1000.0)
        return delay

    def _succeeded_now(self) -> None:
        self._refused_said = False
        self.failing = False
        self._delay = self.settings.retry_initial_ms / 1000.0

    def start(self, group: list[Batch], prev: InFlight | None) -> InFlight:
        """Start one attempt at committing ``group`` (after ``prev``, the attempt still in flight before it, if
        any) as a task; its :class:`InFlight` tells when its COPY is handed over and whether it committed."""
        commit = InFlight(group)
        commit.task = asyncio.create_task(self._commit(group, prev, commit), name=f"hftdb-{self.table}-commit")
        return commit

    async def _commit(self, group: list[Batch], prev: InFlight | None, commit: InFlight) -> bool:
        """One attempt at committing ``group``; False if it failed (the flusher backs off and re-forms)."""
        try:
            if self._suspect and any(b.id in self._suspect for b in group):
                return await self._isolate(group, prev)
            parts = [self._materialize(b) for b in group]
            rows = sum(b.rows for b in group)
            started = time.perf_counter()
            skipped = await self._attempt(group, parts, prev, commit, check_ledger=any(b.uncertain for b in group))
        except _EarlierFailed:
            return False  # rolled back before COMMIT was sent: the outcome is known, nothing to check
        except _PartlyCommitted as exc:
            # An earlier run took these batches apart and committed some parts: only _isolate knows which rest
            # to send. The flusher comes back at once (nothing failed).
            self._suspect.update(exc.ids)
            return False
        except RETRYABLE as exc:
            self._failed(group, exc)
            return False
        finally:
            commit.copied.set()
            commit.copy_ended = True
        elapsed = time.perf_counter() - started
        self._succeeded_now()
        if self._other_failures:
            for b in group:
                self._other_failures.pop(b.id, None)
        if skipped:
            self.stats.duplicates_skipped += len(skipped)
            logger.info("%s: %d batch(es) were already committed by an earlier attempt; not sent again",
                        self.table, len(skipped))
        # (A skipped batch this writer had sent was stored by it, its answer lost: committed, and counted so. One
        # replayed from the spool and never sent was stored by the process before.)
        theirs = [b for b in group if b.id in skipped and not b.sent]
        committed = rows - sum(b.rows for b in theirs)
        self.stats.commits += 1
        self.stats.commit_seconds.append(elapsed)
        self.stats.batch_rows.append(committed)
        self.stats.rows_committed += committed
        self.stats.batches_committed += len(group) - len(theirs)
        self.stats.last_commit_at = time.time()
        self.stats.last_error = None
        return True

    def _failed(self, group: list[Batch], exc: BaseException) -> None:
        """Account for a failed attempt at ``group``, by what its error means (:func:`hftdb.db.dberrors.classify`)."""
        kind = dberrors.classify(exc)
        if _is_missing_partition(exc):
            self._covered.clear()
        for b in group:
            # The attempt may have committed (the connection can die after COMMIT is sent): look in the
            # ledger before sending these rows again.
            b.uncertain = True
        if kind == dberrors.DATA:
            # The server refused a value: sent again, the same rows fail the same way. The next attempt takes
            # these batches apart (_isolate) instead.
            self._suspect.update(b.id for b in group)
        elif kind == dberrors.OTHER:
            for b in group:
                tries = self._other_failures.get(b.id, 0) + 1
                self._other_failures[b.id] = tries
                if tries >= dberrors.MAX_OTHER_ATTEMPTS:
                    self._suspect.add(b.id)
        self.failing = True
        self.stats.retries += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        rows = sum(b.rows for b in group)
        if dberrors.login_refused(exc):
            log = logger.error if not self._refused_said or self.stats.retries % 20 == 1 else logger.debug
            self._refused_said = True
            log("%s: the server refuses hftdb's connection (%s [%s]: %s): fix the role, its password in [database] "
                "dsn or pg_hba.conf; %d rows wait (in memory, then in the spool) and are sent once it lets us in",
                self.table, type(exc).__name__, dberrors.sqlstate(exc), exc, rows)
        elif kind == dberrors.WAIT:
            log = logger.warning if self.stats.retries % 20 == 1 else logger.debug
            log("%s commit of %d rows failed (%s: %s); retrying in about %.0f ms",
                self.table, rows, type(exc).__name__, exc, self._delay * 1000)
        else:
            logger.warning("%s commit of %d rows failed (%s [%s]: %s); %s", self.table, rows, type(exc).__name__,
                           dberrors.sqlstate(exc), exc,
                           "finding the refused rows" if kind == dberrors.DATA else "retrying a few times")
        # The writer spools what now must go to disk, and producers blocked on a full buffer re-check: now that
        # commits fail, they may spill instead.
        self._on_failure()

    async def _isolate(self, group: list[Batch], prev: InFlight | None) -> bool:
        """Commit ``group`` batch by batch, taking apart each batch the server refuses: True once every row is
        committed or rejected, False on an outage (the flusher backs off and comes back).

        A batch is tried whole, under its own ledger id; refused, it is cut in two halves, each tried under an
        id of its own, and so on down to single rows, which are rejected (``db_<sqlstate>``, counted, logged).
        The cut is always at the middle of the batch's tuples, and a part's id is derived from the batch's id and
        its place in that tree (:func:`_part_id`), so a batch taken apart again (after an outage midway, or after
        a crash, from the spool) gets the same parts and ids: the ledger shows which are committed, and only the
        rest are sent. A part is never sent whole if any part under it was committed. Exactly once holds across
        crashes, as for whole batches. Cost: about 2·log2(rows) small transactions per refused row.
        """
        if prev is not None and not await _succeeded(prev):
            return False
        started = time.perf_counter()
        committed = _Tally()  # (added to as each part commits: an outage midway keeps the count of those before it)
        for b in group:
            if b.id in self._isolated:
                continue
            payload, _ = self._materialize(b)
            try:
                async with self._pool.acquire(timeout=self.settings.retry_max_ms / 1000.0 + 5) as conn:
                    found = await conn.fetch(
                        "SELECT batch_id FROM ingest_batches WHERE batch_id BETWEEN $1 AND $2",
                        _part_id(b.id, 0), _part_id(b.id, (1 << 48) - 1), timeout=self.command_timeout)
                done = {r[0] for r in found}
                unanswered = self._unanswered_nodes.get(b.id, ())
                sent_whole = b.sent or 1 in unanswered
                stored_before = b.id in done and not sent_whole  # (by the process whose spool this writer replays)
                if b.id in done:
                    self.stats.duplicates_skipped += 1
                    if sent_whole:
                        committed.rows += b.rows  # stored whole by this writer, its answer lost: as in _commit
                else:
                    # (_bisect raises only what classify calls WAIT: it rejects what it cannot commit.)
                    tuples = split_tuples(payload)
                    nodes = {int.from_bytes(i.bytes[10:], "big") for i in done}
                    await self._bisect(b, tuples, 1, 0, len(tuples), nodes, committed)
            except RETRYABLE as exc:
                # An outage midway: what committed is in the ledger under its batch's or part's id, and every
                # batch of the group is marked for a ledger check, so the next run skips it however the group
                # is formed again.
                self.stats.rows_committed += committed.rows
                self._failed(group, exc)
                return False
            self.stats.batches_committed += 0 if stored_before else 1
            b.sent = False  # (its rows are counted: found stored again after an outage later in the group, not twice)
            self._suspect.discard(b.id)
            self._other_failures.pop(b.id, None)
            self._rejected_nodes.pop(b.id, None)
            self._unanswered_nodes.pop(b.id, None)
            self._isolated.add(b.id)
        self._isolated.difference_update(b.id for b in group)
        self._succeeded_now()
        self.stats.commits += 1
        self.stats.commit_seconds.append(time.perf_counter() - started)
        self.stats.batch_rows.append(committed.rows)
        self.stats.rows_committed += committed.rows
        self.stats.last_commit_at = time.time()
        self.stats.last_error = None
        return True

    async def _bisect(
        self, batch: Batch, tuples: list[bytes], node: int, lo: int, hi: int, done: set[int], committed: _Tally,
    ) -> None:
        """Commit ``tuples[lo:hi]`` of ``batch`` as tree node ``node`` (1 is the whole batch), cutting it in two
        where the server refuses it; add the rows committed now to ``committed`` as each part commits. ``done``:
        the nodes the ledger holds."""
        unanswered = self._unanswered_nodes.setdefault(batch.id, set())
        if node > 1 and node in done:
            if node in unanswered:  # stored by this writer's attempt whose answer was lost
                unanswered.discard(node)
                committed.rows += hi - lo
            return
        rejected = self._rejected_nodes.setdefault(batch.id, set())
        if node in rejected:
            return
        if any(_under(d, node) for d in done):
            # Some part below was committed already: sending this node whole would store those rows twice.
            mid = (lo + hi) // 2
            await self._bisect(batch, tuples, 2 * node, lo, mid, done, committed)
            await self._bisect(batch, tuples, 2 * node + 1, mid, hi, done, committed)
            return
        ours = node in unanswered  # (sent before by this writer, the outcome unknown)
        try:
            unanswered.add(node)  # (until the answer comes: an outage in between leaves the outcome unknown)
            await self._commit_part(batch, tuples[lo:hi], batch.id if node == 1 else _part_id(batch.id, node))
            unanswered.discard(node)
            committed.rows += hi - lo
            return
        except RETRYABLE as exc:
            if dberrors.classify(exc) == dberrors.WAIT:
                raise
            unanswered.discard(node)
            if _in_ledger(exc):
                # The ledger holds this part's id, written in the transaction that stored its rows (by an attempt
                # of this writer whose answer was lost, or by the process whose spool it replays): they are
                # stored. Cut in two and sent again under new ids, they would be stored twice.
                self.stats.duplicates_skipped += 1
                committed.rows += hi - lo if ours else 0
                return
            if hi - lo == 1:
                rejected.add(node)
                state = dberrors.sqlstate(exc)
                self.rejects.add(f"db_{state}" if state else "db_error",
                                 f"{decode_tuple(self.spec.row_kinds, tuples[lo])}: {type(exc).__name__}: {exc}")
                return
        mid = (lo + hi) // 2
        await self._bisect(batch, tuples, 2 * node, lo, mid, done, committed)
        await self._bisect(batch, tuples, 2 * node + 1, mid, hi, done, committed)

    async def _commit_part(self, batch: Batch, tuples: list[bytes], part_id: uuid.UUID) -> None:
        """One transaction for some tuples of ``batch``, under ledger id ``part_id``: rows, ledger, latest rows
        (built from the tuples themselves), NOTIFY."""
        spec = self.spec
        rows = [decode_tuple(spec.row_kinds, t) for t in tuples]
        key_cols, ts_col = spec.latest_key_cols, spec.latest_ts_col
        newest: dict[Any, list[Any]] = {}
        for row in rows:
            key = row[0] if key_cols == 1 else tuple(row[:key_cols])
            prev = newest.get(key)
            if prev is None or prev[ts_col] <= row[ts_col]:  # (a later row wins a tie, as in the writers)
                newest[key] = row
        latest_args = [list(col) for col in zip(*newest.values())]
        part = _Part(part_id, len(rows), min(r[ts_col] for r in rows), max(r[ts_col] for r in rows), batch.parts)
        payload = HEADER + b"".join(tuples) + TRAILER
        async with self._pool.acquire(timeout=self.settings.retry_max_ms / 1000.0 + 5) as conn:
            if spec.latest_stage and conn.get_server_pid() not in self._staged:
                await conn.execute(spec.latest_stage_ddl, timeout=self.command_timeout)
                self._staged.add(conn.get_server_pid())
            async with conn.transaction():
                await self.write(conn, [part], [(payload, latest_args)])

    def _materialize(self, batch: Batch) -> tuple[Any, Any]:
        """A batch's COPY payload and its latest rows: the {key: row} dict in memory, or column arrays spooled."""
        if batch.buf is not None:
            return batch.buf, batch.latest
        assert batch.spool_path is not None and self._spool is not None
        spooled = self._spool.read(batch.spool_path)
        batch.min_ts, batch.max_ts = spooled.min_ts, spooled.max_ts
        batch.parts = set(spooled.parts)
        return spooled.payload, self.spec.decode_latest(spooled.latest)

    async def _attempt(
        self, group: list[Batch], parts: list[tuple[Any, list[Any]]], prev: InFlight | None, commit: InFlight,
        *, check_ledger: bool,
    ) -> set[uuid.UUID]:
        """One try at committing ``group``; returns the ids of its batches the ledger showed as committed."""
        skipped: set[uuid.UUID] = set()
        async with self._pool.acquire(timeout=self.settings.retry_max_ms / 1000.0 + 5) as conn:
            _widen_send_buffer(conn)
            if self.spec.latest_stage and conn.get_server_pid() not in self._staged:
                # Outside the transaction: created inside one that then failed, the table would go with it.
                await conn.execute(self.spec.latest_stage_ddl, timeout=self.command_timeout)
                self._staged.add(conn.get_server_pid())
            if check_ledger:
                found = await conn.fetch(_LEDGER_CHECK, [b.id for b in group], [_part_id(b.id, 0) for b in group],
                                         [_part_id(b.id, (1 << 48) - 1) for b in group])
                partly = [r[0] for r in found if not r[1]]
                if partly:
                    raise _PartlyCommitted(partly)
                skipped = {r[0] for r in found}
                if skipped:
                    keep = [i for i, b in enumerate(group) if b.id not in skipped]
                    group = [group[i] for i in keep]
                    parts = [parts[i] for i in keep]
                    if not group:
                        if prev is not None and not await _succeeded(prev):
                            raise _EarlierFailed
                        return skipped
            for b in group:
                b.sent = True
            async with conn.transaction():
                await self._write_rows(conn, group, parts, commit)
                if prev is not None and not await _succeeded(prev):
                    raise _EarlierFailed
                await self._write_latest(conn, group, parts)
        return skipped

    async def write(self, conn: asyncpg.Connection, group: Sequence[Any], parts: list[tuple[Any, Any]]) -> None:
        """The body of a commit's transaction on ``conn`` (the caller's): partitions, one COPY of ``group``'s
        payloads, then ledger rows + latest upsert + NOTIFY. ``parts``: each batch's payload and latest rows."""
        await self._write_rows(conn, group, parts)
        await self._write_latest(conn, group, parts)

    async def _write_rows(
        self, conn: asyncpg.Connection, group: list[Batch], parts: list[tuple[Any, list[Any]]],
        commit: InFlight | None = None,
    ) -> None:
        starts: set[int] = set()
        for b in group:
            starts |= b.parts
        for start in sorted(starts):
            await self._ensure_partitions(conn, start, start + self._interval_us - 1)
        if commit is not None:
            # The next group may start now, its COPY beside this one on its own backend: were it to wait for
            # this COPY to end, the server's COPY stopped for ~10-15 ms per commit while the loop formed and
            # handed over the next group (timed per commit; see BENCHMARKS.md).
            commit.copied.set()
            self._wake()
        await copy_in_messages(conn, self.table, [p[0] for p in parts], self.spec.columns, self.command_timeout)
        if commit is not None:
            # The server holds the rows: a writer that lets one COPY run at a time may start the next.
            commit.copy_ended = True
            self._wake()

    async def _write_latest(
        self, conn: asyncpg.Connection, group: list[Batch], parts: list[tuple[Any, list[Any]]]
    ) -> None:
        hi = int(max(b.max_ts for b in group))
        spec = self.spec
        latest_args = self._group_latest(group, [p[1] for p in parts])
        if spec.latest_stage:
            try:
                await stage_latest(conn, spec.latest_stage, spec.latest_kinds, latest_args,
                                   timeout=self.command_timeout)
            except asyncpg.UndefinedTableError:
                # Dropped under us (DISCARD TEMP), or a new backend that reused a known pid: the retry creates it.
                self._staged.discard(conn.get_server_pid())
                raise
        await conn.execute(
            # (A staged table's statement reads the staging table; another takes the column arrays.)
            spec.latest_sql, *([] if spec.latest_stage else latest_args),
            [b.id for b in group], [b.rows for b in group],
            [int(b.min_ts) for b in group], [int(b.max_ts) for b in group],
            self._notify_payload(sum(b.rows for b in group), hi, latest_args) if self._notify else None,
            timeout=self.command_timeout,
        )

    def _group_latest(self, group: list[Batch], latests: list[Any]) -> list[Any]:
        """The latest-table arrays of a group: one row per key, the newest by receipt time."""
        if all(type(x) is dict for x in latests):
            if len(latests) == 1:
                return self.spec.latest_args_of(latests[0])
            if all(group[i + 1].min_ts >= group[i].max_ts for i in range(len(group) - 1)):
                # Batches in receipt order (the usual case): a later batch's row is the newer, so C-level dict
                # updates merge them with no per-key comparison.
                merged: dict[Any, Any] = {}
                for latest in latests:
                    merged.update(latest)
                return self.spec.latest_args_of(merged)
        return self._merge_latest([self.spec.latest_args_of(x) if type(x) is dict else x for x in latests])

    def _merge_latest(self, args_list: list[list[Any]]) -> list[Any]:
        """One latest row per key across batches: the newest by receipt time (later batch wins a tie)."""
        if len(args_list) == 1:
            return args_list[0]
        ncols = len(args_list[0])
        key_cols, ts_col = self.spec.latest_key_cols, self.spec.latest_ts_col
        best: dict[Any, tuple[int, int, int]] = {}
        for bi, args in enumerate(args_list):
            keys = args[0] if key_cols == 1 else list(zip(*args[:key_cols]))
            for ri, (key, ts) in enumerate(zip(keys, args[ts_col])):
                prev = best.get(key)
                if prev is None or prev[0] <= ts:
                    best[key] = (ts, bi, ri)
        return [[args_list[bi][c][ri] for _, bi, ri in best.values()] for c in range(ncols)]

    async def _ensure_partitions(self, conn: asyncpg.Connection, lo: int, hi: int) -> None:
        for c_lo, c_hi in self._covered:
            if c_lo <= lo and hi < c_hi:
                return
        interval_us = self._interval_us
        created = await partitions.ensure_partitions(
            conn, self.table, lo, hi, interval_s=self.storage.partition_interval_s, hot_index=self.storage.hot_index
        )
        if created:
            # Made inside this commit's transaction: other connections cannot see them until it commits, so the
            # next commit must look again (and wait on the creation lock until then), not COPY straight in.
            return
        start = lo - lo % interval_us
        end = hi - hi % interval_us + interval_us
        self._covered.append((start, end))
        self._covered = _merge(self._covered)

    def forget_partitions(self) -> None:
        """Forget which partitions exist (after retention or a schema change dropped some)."""
        self._covered.clear()

    def _notify_payload(self, rows: int, max_ts: int, latest_args: list[Any]) -> str:
        keys = latest_args[0]
        body: dict[str, Any] = {"table": self.table, "rows": rows, "max_ts": max_ts}
        if len(keys) <= 200:
            body["ids"] = sorted(set(keys))
        else:
            body["id_range"] = [min(keys), max(keys)]
        return orjson.dumps(body).decode()


class InFlight:
    """A group's commit attempt in flight: ``task`` says whether it committed, ``copied`` is set as its COPY is
    handed to the connection (or once the attempt ended), ``copy_ended`` once that COPY has ended (or the attempt
    did)."""

    __slots__ = ("group", "copied", "copy_ended", "task")

    def __init__(self, group: list[Batch]) -> None:
        self.group = group
        self.copied = asyncio.Event()
        self.copy_ended = False
        self.task: asyncio.Task[bool]


class _Tally:
    """The rows an isolating pass has committed so far (see :meth:`Committer._isolate`)."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows = 0


class _Part:
    """The ledger and partition facts of some tuples of a batch taken apart, committed on their own."""

    __slots__ = ("id", "rows", "min_ts", "max_ts", "parts")

    def __init__(self, part_id: uuid.UUID, rows: int, min_ts: int, max_ts: int, parts: set[int]) -> None:
        self.id, self.rows, self.min_ts, self.max_ts, self.parts = part_id, rows, min_ts, max_ts, parts


class _EarlierFailed(Exception):
    """The commit before this one failed; this one rolls back so commits stay in order."""


class _PartlyCommitted(Exception):
    """The ledger holds parts of these batches (an earlier attempt took them apart): they go to ``_isolate``."""

    def __init__(self, ids: list[uuid.UUID]) -> None:
        super().__init__(f"{len(ids)} batch(es) partly committed")
        self.ids = ids


def _in_ledger(exc: BaseException) -> bool:
    """Whether ``exc`` is the ledger's primary key refusing a batch or part id it already holds."""
    return (isinstance(exc, asyncpg.UniqueViolationError)
            and (exc.constraint_name or "").startswith("ingest_batches_pkey"))


def _part_id(batch_id: uuid.UUID, node: int) -> uuid.UUID:
    """The ledger id of tree node ``node`` of a batch taken apart: the batch id's first ten bytes, then the node
    number (node 1, the whole batch, keeps the batch's own id)."""
    return uuid.UUID(bytes=batch_id.bytes[:10] + node.to_bytes(6, "big"))


def _under(descendant: int, node: int) -> bool:
    """Whether tree node ``descendant`` lies strictly below ``node`` (children of k are 2k and 2k+1)."""
    shift = descendant.bit_length() - node.bit_length()
    return shift > 0 and descendant >> shift == node


async def _succeeded(commit: InFlight) -> bool:
    # Shielded: this attempt being cancelled must not cancel the earlier one it is waiting on.
    try:
        return await asyncio.shield(commit.task)
    except Exception:
        return False


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    ranges.sort()
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _is_missing_partition(exc: BaseException) -> bool:
    # 23514: "no partition of relation ... found for row" (a partition was dropped under us by retention).
    return getattr(exc, "sqlstate", None) == "23514"


def _widen_send_buffer(conn: asyncpg.Connection) -> None:
    # asyncpg has no public handle on its socket; the transport's is the connection's own. Best effort: a
    # transport without one, or a kernel that refuses, leaves the default.
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < _COPY_SNDBUF:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _COPY_SNDBUF)
    except (OSError, ValueError):  # a closed socket: the commit will fail and retry on another connection
        pass


async def copy_in_messages(conn: asyncpg.Connection, table: str, payloads: list[Any], columns: Sequence[str],
                           timeout: float | None) -> None:
    """COPY ``payloads`` (each a binary COPY stream: header, tuples, trailer) into ``table`` as one stream, sent in
    CopyData messages of at most :data:`COPY_MESSAGE_BYTES`, straight from the payloads (no concatenation).

    asyncpg sends a buffer as one message, and the server reads a message whole before its COPY parses any of it:
    a commit's ~8 MB then crossed the socket while the backend parsed nothing, and its copy into one message cost
    the client ~0.1 µs a row. In messages, the backend parses one while the next arrives (BENCHMARKS.md,
    "Session 11"). asyncpg waits for the socket to drain before each message, a wait that nothing ends if the
    connection is lost meanwhile: a termination listener cancels the COPY then, and it fails as a lost connection
    (retried as one) instead of waiting forever."""
    task = asyncio.current_task()
    assert task is not None
    active, lost = True, False

    def on_lost(_conn: Any) -> None:
        nonlocal lost
        if active:  # (called soon after the loss, not at it: the COPY may have ended meanwhile)
            lost = True
            task.cancel()

    messages = _messages(payloads)
    conn.add_termination_listener(on_lost)
    try:
        await conn.copy_to_table(table, source=messages, columns=columns, format="binary", timeout=timeout)
    except asyncio.CancelledError:
        if lost and task.uncancel() == 0:
            raise asyncpg.ConnectionDoesNotExistError(f"the connection was lost during the COPY into {table}") from None
        raise
    finally:
        active = False
        conn.remove_termination_listener(on_lost)
        await messages.aclose()  # (releases its views of the payloads now, not when collected)


#: The largest CopyData message :func:`copy_in_messages` sends: big enough that the per-message work is noise
#: (asyncpg's wait for the socket, a message header, ~360 of them per 500k book-ticker rows), small enough that a
#: message is parsed while the next one is on its way (64 kB to 1 MB came within ~7% of one another, BENCHMARKS.md
#: "Session 11").
COPY_MESSAGE_BYTES = 128 << 10


async def _messages(payloads: list[Any]) -> AsyncIterator[memoryview]:
    # Views into the payloads: the first one's header, every payload's tuples, the last one's trailer.
    last = len(payloads) - 1
    for i, payload in enumerate(payloads):
        with memoryview(payload) as view:
            start = 0 if i == 0 else len(HEADER)
            end = len(view) if i == last else len(view) - len(TRAILER)
            for pos in range(start, end, COPY_MESSAGE_BYTES):
                with view[pos:min(pos + COPY_MESSAGE_BYTES, end)] as chunk:
                    yield chunk

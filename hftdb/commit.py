"""Committing a group of sealed batches: one transaction, exactly once, in order.

The body of a commit is ``BEGIN; COPY ... FROM STDIN (BINARY); COPY of the newest row per symbol into a temp
staging table; ledger rows + latest-table upsert (from that table) + NOTIFY; COMMIT``. Every batch carries a uuid
written to ``ingest_batches`` in that transaction; after a failure whose outcome is unknown (the connection died
around COMMIT) the next attempt looks the ids up first and skips what did commit. Two groups may be in flight: the
later one sends its COPY as soon as the earlier one's is handed over (the two COPYs run side by side on two
backends), but waits for the earlier outcome before its own ledger/latest step and rolls back if that failed, so
commits land in queue order and never deadlock on the latest table's rows.

:class:`Committing` is the committing half of :class:`hftdb.writer.BatchWriter`, kept here so each module does
one job; it works on the writer's queue, pool, spool and counters.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from . import partitions
from .copy import HEADER, TRAILER

if TYPE_CHECKING:
    from .writer import _Batch

__all__ = ["RETRYABLE", "Committing"]

logger = logging.getLogger("hftdb.writer")

#: What a commit attempt may fail with and still be retried. Anything from the server or the socket: a row
#: never leaves the buffer except by commit, so even an unexpected server error is retried (and logged) rather
#: than dropped; the bounded buffer and the spool keep memory in check meanwhile.
RETRYABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # Raised when a connection broken mid-operation is reset on release to the pool (seen under server restart).
    asyncpg.exceptions.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)

_LEDGER_CHECK = "SELECT batch_id FROM ingest_batches WHERE batch_id = ANY($1::uuid[])"

#: Socket send buffer asked for on the connections that carry a commit's COPY (the kernel grants at most twice
#: net.core.wmem_max). With the default (~208 kB, ~2,000 rows) the server's COPY drains the socket in ~2 ms and then
#: waits for the event loop to write more, which it does only between callbacks (a producer's call, a commit's
#: Python); with most of a commit's payload in the kernel the server reads at its own pace.
_COPY_SNDBUF = 16 << 20
#: Largest concatenation buffer kept for the next commit (~300k book-ticker rows); a bigger one is let go.
_SPARE_MAX_BYTES = 32 << 20



class Committing:
    """Mixin: the commit path of a batch writer (see the module docstring)."""

    async def _commit(self, group: list[_Batch], prev: _Commit | None, copied: asyncio.Event) -> bool:
        """One attempt at committing ``group``; False if it failed (the flusher backs off and re-forms)."""
        try:
            parts = [self._materialize(b) for b in group]
            rows = sum(b.rows for b in group)
            started = time.perf_counter()
            skipped = await self._attempt(group, parts, prev, copied, check_ledger=any(b.uncertain for b in group))
        except _EarlierFailed:
            return False  # rolled back before COMMIT was sent: the outcome is known, nothing to check
        except RETRYABLE as exc:
            if _is_missing_partition(exc):
                self._covered.clear()
            for b in group:
                # The attempt may have committed (the connection can die after COMMIT is sent): look in the
                # ledger before sending these rows again.
                b.uncertain = True
            self._failing = True
            self.stats.retries += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log = logger.warning if self.stats.retries % 20 == 1 else logger.debug
            log("%s commit of %d rows failed (%s: %s); retrying in about %.0f ms",
                self.table, rows, type(exc).__name__, exc, self._delay * 1000)
            self._spill_excess()
            # Producers blocked on a full buffer re-check: now that commits fail, they may spill instead.
            self._space.set()
            return False
        finally:
            copied.set()
        elapsed = time.perf_counter() - started
        self._failing = False
        self._delay = self.settings.retry_initial_ms / 1000.0
        if skipped:
            self.stats.duplicates_skipped += len(skipped)
            logger.info("%s: %d batch(es) were already committed by an earlier attempt; not sent again",
                        self.table, len(skipped))
        committed = rows - sum(b.rows for b in group if b.id in skipped)
        self.stats.commit_seconds.append(elapsed)
        self.stats.batch_rows.append(committed)
        self.stats.rows_committed += committed
        self.stats.batches_committed += len(group) - len(skipped)
        self.stats.last_commit_at = time.time()
        self.stats.last_error = None
        return True

    def _materialize(self, batch: _Batch) -> tuple[Any, Any]:
        """A batch's COPY payload and its latest rows: the {key: row} dict in memory, or column arrays spooled."""
        if batch.buf is not None:
            return batch.buf, batch.latest
        assert batch.spool_path is not None and self._spool is not None
        spooled = self._spool.read(batch.spool_path)
        batch.min_ts, batch.max_ts = spooled.min_ts, spooled.max_ts
        batch.parts = set(spooled.parts)
        return spooled.payload, self._decode_latest(spooled.latest)

    async def _attempt(
        self, group: list[_Batch], parts: list[tuple[Any, list[Any]]], prev: _Commit | None, copied: asyncio.Event,
        *, check_ledger: bool,
    ) -> set[uuid.UUID]:
        """One try at committing ``group``; returns the ids of its batches the ledger showed as committed."""
        skipped: set[uuid.UUID] = set()
        async with self._pool.acquire(timeout=self.settings.retry_max_ms / 1000.0 + 5) as conn:
            _widen_send_buffer(conn)
            if self.latest_stage and conn.get_server_pid() not in self._staged:
                # Outside the transaction: created inside one that then failed, the table would go with it.
                await conn.execute(self.latest_stage_ddl, timeout=self.command_timeout)
                self._staged.add(conn.get_server_pid())
            if check_ledger:
                skipped = {r[0] for r in await conn.fetch(_LEDGER_CHECK, [b.id for b in group])}
                if skipped:
                    keep = [i for i, b in enumerate(group) if b.id not in skipped]
                    group = [group[i] for i in keep]
                    parts = [parts[i] for i in keep]
                    if not group:
                        if prev is not None and not await _succeeded(prev):
                            raise _EarlierFailed
                        return skipped
            async with conn.transaction():
                await self._write_rows(conn, group, parts, copied)
                if prev is not None and not await _succeeded(prev):
                    raise _EarlierFailed
                await self._write_latest(conn, group, parts)
        return skipped

    async def _write(self, conn: asyncpg.Connection, group: list[_Batch], parts: list[tuple[Any, list[Any]]]) -> None:
        """The body of a commit's transaction: partitions, one COPY, then ledger rows + latest upsert + NOTIFY."""
        await self._write_rows(conn, group, parts)
        await self._write_latest(conn, group, parts)

    async def _write_rows(
        self, conn: asyncpg.Connection, group: list[_Batch], parts: list[tuple[Any, list[Any]]],
        copied: asyncio.Event | None = None,
    ) -> None:
        starts: set[int] = set()
        for b in group:
            starts |= b.parts
        for start in sorted(starts):
            await self._ensure_partitions(conn, start, start + self._interval_us - 1)
        # A memoryview, never bytes: asyncpg treats a bytes source as a file *path* (os.fspath accepts bytes).
        # One contiguous buffer, not an async iterator: asyncpg's iterator path can wait forever for a dead socket.
        spare = None
        if len(parts) == 1:
            source = memoryview(parts[0][0])
        else:
            # Into a buffer kept from an earlier commit: touching ~10 MB of fresh memory per commit cost more in
            # page faults than the copy itself.
            spare = self._spare_payloads.pop() if self._spare_payloads else bytearray()
            source = _concat_into(spare, [p[0] for p in parts])
        try:
            if copied is not None:
                # The next group may start now, its COPY beside this one on its own backend: were it to wait for
                # this COPY to end, the server's COPY stopped for ~10-15 ms per commit while the loop formed,
                # concatenated and handed over the next group (timed per commit; see BENCHMARKS.md).
                copied.set()
                self._wakeup.set()
            await conn.copy_to_table(
                self.table, source=source, columns=self.columns, format="binary", timeout=self.command_timeout)
        finally:
            # asyncpg copied the buffer into its own message before its first wait on the server: ours is free.
            try:
                source.release()
            except BufferError:  # still exported somewhere: let that buffer go rather than write over it
                spare = None
            if spare is not None and len(spare) <= _SPARE_MAX_BYTES and len(self._spare_payloads) < 2:
                self._spare_payloads.append(spare)

    async def _write_latest(
        self, conn: asyncpg.Connection, group: list[_Batch], parts: list[tuple[Any, list[Any]]]
    ) -> None:
        hi = int(max(b.max_ts for b in group))
        latest_args = self._group_latest(group, [p[1] for p in parts])
        if self.latest_stage:
            try:
                await conn.copy_to_table(
                    self.latest_stage, schema_name="pg_temp", source=memoryview(self._latest_payload(latest_args)),
                    format="binary", timeout=self.command_timeout)
            except asyncpg.UndefinedTableError:
                # Dropped under us (DISCARD TEMP), or a new backend that reused a known pid: the retry creates it.
                self._staged.discard(conn.get_server_pid())
                raise
        await conn.execute(
            self.latest_sql, *self._latest_params(latest_args), [b.id for b in group], [b.rows for b in group],
            [int(b.min_ts) for b in group], [int(b.max_ts) for b in group],
            self._notify_payload(sum(b.rows for b in group), hi, latest_args) if self._notify else None,
            timeout=self.command_timeout,
        )

    def _group_latest(self, group: list[_Batch], latests: list[Any]) -> list[Any]:
        """The latest-table arrays of a group: one row per key, the newest by receipt time."""
        if all(type(x) is dict for x in latests):
            if len(latests) == 1:
                return self._latest_args_of(latests[0])
            if all(group[i + 1].min_ts >= group[i].max_ts for i in range(len(group) - 1)):
                # Batches in receipt order (the usual case): a later batch's row is the newer, so C-level dict
                # updates merge them with no per-key comparison.
                merged: dict[Any, Any] = {}
                for latest in latests:
                    merged.update(latest)
                return self._latest_args_of(merged)
        return self._merge_latest([self._latest_args_of(x) if type(x) is dict else x for x in latests])

    def _merge_latest(self, args_list: list[list[Any]]) -> list[Any]:
        """One latest row per key across batches: the newest by receipt time (later batch wins a tie)."""
        if len(args_list) == 1:
            return args_list[0]
        ncols = len(args_list[0])
        key_cols, ts_col = self.latest_key_cols, self.latest_ts_col
        best: dict[Any, tuple[int, int, int]] = {}
        for bi, args in enumerate(args_list):
            keys = args[0] if key_cols == 1 else list(zip(*args[:key_cols]))
            for ri, (key, ts) in enumerate(zip(keys, args[ts_col])):
                prev = best.get(key)
                if prev is None or prev[0] <= ts:
                    best[key] = (ts, bi, ri)
        return [[args_list[bi][c][ri] for _, bi, ri in best.values()] for c in range(ncols)]

    async def write_in(self, conn: asyncpg.Connection) -> int:
        """Write every row added so far on ``conn`` inside the caller's transaction (used by units of work, whose
        writer is their own: nothing else is queued on it)."""
        self._seal()
        group = list(self._queue)
        self._queue.clear()
        if not group:
            return 0
        if self.latest_stage:
            # In the caller's transaction, which may roll back and take a new table with it: not remembered. The
            # same transaction may have staged rows already (two writes in one unit).
            await conn.execute(f"{self.latest_stage_ddl}; TRUNCATE pg_temp.{self.latest_stage}",
                               timeout=self.command_timeout)
        await self._write(conn, group, [(b.buf, b.latest) for b in group])
        return sum(b.rows for b in group)

    async def _ensure_partitions(self, conn: asyncpg.Connection, lo: int, hi: int) -> None:
        for c_lo, c_hi in self._covered:
            if c_lo <= lo and hi < c_hi:
                return
        interval_us = self.storage.partition_interval_s * 1_000_000
        await partitions.ensure_partitions(
            conn, self.table, lo, hi, interval_s=self.storage.partition_interval_s, hot_index=self.storage.hot_index
        )
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


class _Commit:
    """A group's commit attempt in flight; ``copied`` is set as its COPY is handed to the connection (or once
    the attempt ended)."""

    __slots__ = ("group", "copied", "task")

    def __init__(self, group: list[_Batch]) -> None:
        self.group = group
        self.copied = asyncio.Event()
        self.task: asyncio.Task[bool]


class _EarlierFailed(Exception):
    """The commit before this one failed; this one rolls back so commits stay in order."""


async def _succeeded(commit: _Commit) -> bool:
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


def _concat_into(out: bytearray, payloads: list[Any]) -> memoryview:
    """Several batches' COPY payloads as one in ``out`` (grown if short): one header, every batch's tuples, one
    trailer; returns a view of the bytes written, to be released before ``out`` is used again."""
    bodies = [memoryview(p)[len(HEADER):-len(TRAILER)] for p in payloads]
    size = len(HEADER) + sum(map(len, bodies)) + len(TRAILER)
    if len(out) < size:
        out.extend(bytes(size - len(out)))
    with memoryview(out) as view:
        view[:len(HEADER)] = HEADER
        pos = len(HEADER)
        for body in bodies:
            view[pos:pos + len(body)] = body
            pos += len(body)
            body.release()
        view[pos:size] = TRAILER
        return view[:size]

"""How fast does hftdb's writer ingest book tickers, next to the server's own COPY and to plain asyncpg?

Every method loads the SAME rows (``--rows`` book tickers over ``--symbols`` symbols, realistic prices, with
exchange_ts and update_id) into ``book_tickers`` of a fresh database (migrations applied, exchange and symbols
registered, partitions pre-created with hftdb.db.partitions.ensure_partitions), after a CHECKPOINT:

  server-binary   ``COPY book_tickers (...) FROM '<file>' (FORMAT binary)``: the server reads a file that
                  hftdb's own encoder wrote (HEADER + rows + TRAILER). The ceiling for the schema.
  server-text     the same rows as a text-format file.
  writer          ``DatabaseManager.insert_book_ticker_snapshots`` in ``--chunk``-row calls, then ``flush()``;
                  timed from the first insert to the return of flush. The BookTicker objects (symbol_id set) are
                  built before timing. The producer yields to the loop after each call, as a feed handler does.
                  Each batch also carries the ledger row, the latest-table upsert and a NOTIFY.
  writer-small    the same as ``writer``, in ``--small-chunk``-row calls (default 100) of rows named by exchange and
                  symbol (symbol_id None, resolved by the writer's cache): a feed that hands over a socket read at a
                  time.
  writer-huge     the same rows named by exchange and symbol, in ONE call, then ``flush()``: a backfill. The call
                  must not hold the loop for its whole encode (the first COPY starts while the rest is encoded).
  copy_records    asyncpg ``copy_records_to_table`` of all rows in one call. The records (tuples with aware
                  datetimes for timestamptz, which asyncpg's default codec needs) are built before timing: only
                  the call is timed, which favours it.
  executemany     asyncpg ``executemany`` of an INSERT, on ``--executemany-rows`` rows, scaled to rows/s.

Diagnostics, only with ``--methods`` (they reach into the writer's private API, to split its cost):

  writer-drain    the writer's own commit path (group commit, two commits in flight) draining a queue of batches
                  encoded before timing: the writer with a free producer, so the database side alone.
  writer-db       the writer's per-batch transaction (COPY + ledger + latest upsert + NOTIFY, BatchWriter._write)
                  on batches encoded before timing, committed back to back on one connection: the writer with a
                  free producer.
  batched-copy    only the binary COPY of those same batches, one transaction each, each batch sent as one CopyData
                  message (asyncpg's way with a buffer).
  batched-messages the same, each batch in 128 kB CopyData messages (the writer's way since session 11,
                  hftdb.store.commit.copy_in_messages): with ``--batch-max-rows 83334``, six COPYs of a commit's size.
  parallel-copy   the same, on two connections at once (alternate batches each), as the writer's two commits in
                  flight COPY side by side: with ``--cpu-by-process``, what two backends inserting into one partition
                  cost the server per row against one (batched-copy), with the BRIN index and with ``--no-indexes``.
  encode          BookTickerWriter.add alone, on ``--chunk``-row lists of (symbol_id, ticker) pairs built inside
                  the timing as the manager builds them: the per-row path's encoding cost, no database.
  encode-vector   BookTickerWriter.add_fast alone on the same ``--chunk``-row calls: the vectorized path the
                  writer takes for rows that carry their symbol_id (hftdb.store.vector), no database.
  latest-upsert   the commit's latest step alone as the writer sends it: the newest rows by binary COPY into the
                  staging table, then the ledger + latest-table upsert + NOTIFY statement (BookTickerWriter.latest_sql),
                  every symbol once per statement, ``--upserts`` times in a transaction each, on one connection;
                  rows/s counts latest rows, and the line adds the server CPU per statement (that backend's, from
                  /proc).
  latest-compare  the same step two ways in one run, alternating in blocks of ``--block`` upserts on one connection:
                  ``binary`` (the writer's, as latest-upsert) and ``text`` (the statement hftdb sent before, the rows
                  as eight text array literals); medians of client CPU per upsert (build + send) and of the
                  backend's CPU per upsert (whole transactions, per block, from /proc).

The default variant keeps the indexes hftdb.db.schema gives the hot partition (BRIN on recv_ts); ``--no-indexes``
drops every index on the partitions first. ``--runs`` runs of each method, in rotating order; medians are
reported. The server is an embedded PostgreSQL in a temp dir, or ``HFTDB_BENCH_DSN`` (a superuser, or a role
with CREATEDB and pg_read_server_files, on this host: the server must read the COPY files; its CPU is measured
from /proc as the embedded one's is).

    .venv/bin/python benchmarks/bench_writer.py --rows 1000000 --runs 3
    .venv/bin/python benchmarks/bench_writer.py --rows 1000000 --runs 3 --no-indexes
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec

# Run from a checkout: import this tree's hftdb whatever the state of the venv's (editable) install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hftdb import BookTicker, DatabaseManager, DatabaseSettings, Settings, StorageSettings, WriterSettings, now_us
from hftdb.db import partitions, schema
from hftdb.wire.copy import TRAILER
from hftdb.manager import init_connection
from hftdb.db.server import EmbeddedServer
from hftdb.store.commit import copy_in_messages, stage_latest
from hftdb.store.tables import BookTickerWriter, update_then_insert_sql

COLUMNS = BookTickerWriter.columns
EXCHANGE = "binance_spot"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INSERT = (
    f"INSERT INTO book_tickers ({', '.join(COLUMNS)}) VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))})"
)
METHODS = ("server-binary", "server-text", "writer", "writer-small", "writer-huge", "writer-columns", "copy_records",
           "executemany")
DIAGNOSTICS = ("writer-drain", "writer-db", "batched-copy", "batched-messages", "parallel-copy", "encode", "encode-vector",
               "latest-upsert", "latest-compare")


# -- data ----------------------------------------------------------------------------------------------------------


def make_tickers(n: int, n_symbols: int, *, seed: int, start_us: int, span_us: int) -> list[BookTicker]:
    """``n`` book tickers over ``n_symbols`` symbols (ids 1..n_symbols), recv_ts rising from ``start_us``.

    Each symbol has a log-uniform price level (0.001 to 60,000), a tick of ~7 significant digits, a random-walk
    mid and a spread of 1 to 20 ticks; exchange_ts precedes recv_ts by 0.2 to 5 ms; update_id rises per symbol.
    """
    rng = random.Random(seed)
    mids, ticks, qty_scale, uids = [], [], [], []
    for _ in range(n_symbols):
        level = 10 ** rng.uniform(-3, math.log10(60_000))
        tick = 10 ** (math.floor(math.log10(level)) - 6)
        mids.append(level)
        ticks.append(tick)
        qty_scale.append(2_000 / level)
        uids.append(rng.randrange(10**9, 10**11))
    step = span_us / n
    out = []
    for i in range(n):
        s = rng.randrange(n_symbols)
        tick = ticks[s]
        mid = mids[s] = mids[s] * (1 + rng.gauss(0, 1e-4))
        bid = round(mid / tick) * tick
        ask = bid + tick * rng.randint(1, 20)
        dec = max(0, -math.floor(math.log10(tick)))
        recv = start_us + int(i * step)
        uids[s] += rng.randint(1, 50)
        out.append(BookTicker(
            EXCHANGE, f"S{s + 1:05d}USDT",
            round(bid, dec), round(rng.expovariate(1 / qty_scale[s]) + 0.001, 3),
            round(ask, dec), round(rng.expovariate(1 / qty_scale[s]) + 0.001, 3),
            recv, recv - rng.randint(200, 5_000), uids[s], symbol_id=s + 1,
        ))
    return out


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def as_records(tickers: list[BookTicker]) -> list[tuple[Any, ...]]:
    """The rows as asyncpg records in COLUMNS order, timestamptz as aware datetimes."""
    return [
        (t.symbol_id, _dt(t.recv_ts), _dt(t.exchange_ts), t.bid_price, t.bid_qty, t.ask_price, t.ask_qty, t.update_id)
        for t in tickers
    ]


def write_binary_file(path: Path, tickers: list[BookTicker]) -> None:
    """Encode the rows with hftdb's own BookTickerWriter into one binary COPY stream (HEADER + rows + TRAILER)."""
    ws = WriterSettings(batch_max_rows=len(tickers) + 1, buffer_max_rows=len(tickers) + 1, spool_dir=None)
    enc = BookTickerWriter(None, settings=ws, storage=StorageSettings(), spool_dir=None)  # type: ignore[arg-type]
    added = enc.add([(t.symbol_id, t) for t in tickers])
    if added != len(tickers):
        raise SystemExit(f"the encoder rejected {len(tickers) - added} rows: {enc.rejects.snapshot()}")
    assert enc.current.buf is not None
    path.write_bytes(bytes(enc.current.buf) + TRAILER)


def write_text_file(path: Path, tickers: list[BookTicker]) -> None:
    """The same rows in COPY text format; float repr round-trips exactly through float8 input."""
    with path.open("w") as f:
        for t in tickers:
            f.write(
                f"{t.symbol_id}\t{_dt(t.recv_ts).isoformat()}\t{_dt(t.exchange_ts).isoformat()}\t"
                f"{t.bid_price!r}\t{t.bid_qty!r}\t{t.ask_price!r}\t{t.ask_qty!r}\t{t.update_id}\n"
            )


# -- databases -----------------------------------------------------------------------------------------------------


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


class Databases:
    """Creates a fresh database per measurement: migrated, symbols registered, partitions pre-created."""

    def __init__(self, admin_dsn: str, *, n_symbols: int, ts_range: tuple[int, int], no_indexes: bool) -> None:
        self.admin_dsn = admin_dsn
        self.n_symbols = n_symbols
        self.ts_range = ts_range
        self.no_indexes = no_indexes

    async def create(self) -> tuple[str, str]:
        name = "hftdb_bench_" + uuid.uuid4().hex[:12]
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')  # name is ours: hex digits
        finally:
            await admin.close()
        dsn = with_database(self.admin_dsn, name)
        conn = await asyncpg.connect(dsn)
        try:
            await schema.migrate(conn)
            storage = StorageSettings()
            # The partitions the writer's start-up would make (now .. now + partitions_ahead), and any the rows
            # need beyond them, so that no method pays for partition creation inside its timing.
            await partitions.maintain(conn, storage, now_us(), retention=False)
            await partitions.ensure_partitions(conn, "book_tickers", *self.ts_range,
                                           interval_s=storage.partition_interval_s, hot_index=storage.hot_index)
            await conn.execute("INSERT INTO exchanges (id, name, market) VALUES (1, $1, 'spot')", EXCHANGE)
            await conn.execute(
                "INSERT INTO symbols (id, exchange_id, symbol, kind, status)"
                " SELECT i, 1, 'S' || lpad(i::text, 5, '0') || 'USDT', 'spot', 'trading'"
                " FROM generate_series(1, $1::int) AS i",
                self.n_symbols,
            )
            await conn.execute("SELECT setval(pg_get_serial_sequence('symbols', 'id'), $1::int)", self.n_symbols)
            await conn.execute("SELECT setval(pg_get_serial_sequence('exchanges', 'id'), 1)")
            if self.no_indexes:
                for (index,) in await conn.fetch(
                    "SELECT i.relname FROM pg_inherits h JOIN pg_index x ON x.indrelid = h.inhrelid"
                    " JOIN pg_class i ON i.oid = x.indexrelid WHERE h.inhparent = 'book_tickers'::regclass"
                ):
                    await conn.execute(f'DROP INDEX "{index}"')  # names read from the catalog, of our partitions
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()
        return name, dsn

    async def drop(self, name: str) -> None:
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def index_names(self, dsn: str) -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return [r[0] for r in await conn.fetch(
                "SELECT i.relname || ' (' || am.amname || ')' FROM pg_inherits h"
                " JOIN pg_index x ON x.indrelid = h.inhrelid JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_am am ON am.oid = i.relam WHERE h.inhparent = 'book_tickers'::regclass ORDER BY 1"
            )]
        finally:
            await conn.close()


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM book_tickers")
    finally:
        await conn.close()


# -- methods -------------------------------------------------------------------------------------------------------

#: WriterSettings overrides from the command line (--commit-max-rows), applied to every writer method.
_WRITER_OVERRIDES: dict[str, Any] = {}


def writer_settings(batch_max_rows: int | None, **extra: Any) -> WriterSettings:
    if batch_max_rows is not None:
        extra["batch_max_rows"] = batch_max_rows
    return WriterSettings(spool_dir=None, **{**_WRITER_OVERRIDES, **extra})


#: The embedded server's postmaster pid, when the benchmark runs its own server: its process tree's CPU time is
#: read from /proc so each method's server-side cost per row can be told apart from hftdb's Python cost.
_PG_PID: int | None = None
#: --cpu-by-process: also split the server's CPU by process (each backend, walwriter, checkpointer...).
_BY_PROCESS = False


async def _local_postmaster(dsn: str) -> int | None:
    """The pid of ``dsn``'s postmaster (its backends' parent, seen in /proc), so that the server's CPU is measured
    too; None when the backend is not a process of this machine."""
    conn = await asyncpg.connect(dsn)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        # (Read while the backend lives.)
        with open(f"/proc/{backend}/cmdline", "rb") as f:
            if not f.read().startswith(b"postgres"):
                return None  # a pid of this machine, but not the server's backend
        with open(f"/proc/{backend}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None
    finally:
        await conn.close()


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its child processes (Linux /proc)."""
    return sum(cpu for cpu, _ in _tree_procs(root).values())


def _tree_procs(root: int) -> dict[int, tuple[float, str]]:
    """{pid: (CPU seconds so far, process title)} of ``root`` and its children (the server's backends, walwriter,
    checkpointer...), for ``--cpu-by-process``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(entry) != root and int(fields[1]) != root:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        out[int(entry)] = ((int(fields[11]) + int(fields[12])) / tick, title)
    return out


def _by_process(before: dict[int, tuple[float, str]], after: dict[int, tuple[float, str]]) -> dict[str, float]:
    """CPU seconds per server process between two snapshots, backends told apart by pid (titles change)."""
    out: dict[str, float] = {}
    for pid, (cpu, title) in after.items():
        used = cpu - before.get(pid, (0.0, ""))[0]
        if used <= 0:
            continue
        name = title.split(" ")[1].rstrip(":") if title.startswith("postgres: ") else title
        name = f"backend {pid}" if "[local]" in title or "@" in title or name.startswith("postgres") else name
        out[name] = out.get(name, 0.0) + used
    return out


class Timing:
    """Wall time of a timed section, plus the CPU it cost this process and the server (if ours)."""

    def __init__(self) -> None:
        self.procs0 = _tree_procs(_PG_PID) if _PG_PID and _BY_PROCESS else None
        self.pg0 = _tree_cpu(_PG_PID) if _PG_PID else None
        self.py0 = time.process_time()
        self.t0 = time.perf_counter()

    def stop(self, extra: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
        elapsed = time.perf_counter() - self.t0
        out = dict(extra or {})
        out["py_cpu_s"] = time.process_time() - self.py0
        if self.pg0 is not None:
            out["pg_cpu_s"] = _tree_cpu(_PG_PID) - self.pg0  # type: ignore[arg-type]
        if self.procs0 is not None:
            out["pg_cpu_by_process"] = _by_process(self.procs0, _tree_procs(_PG_PID))  # type: ignore[arg-type]
        return elapsed, out


async def bench_server_copy(dsn: str, path: Path, fmt: str) -> tuple[float, dict[str, Any]]:
    # COPY FROM takes its file name as a literal, never a parameter; the path is our own temp file.
    if "'" in str(path):
        raise SystemExit(f"temp path {path} has a quote")
    sql = f"COPY book_tickers ({', '.join(COLUMNS)}) FROM '{path}' WITH (FORMAT {fmt})"
    conn = await asyncpg.connect(dsn)
    try:
        timing = Timing()
        await conn.execute(sql)
        return timing.stop()
    finally:
        await conn.close()


async def bench_writer(
    dsn: str, tickers: list[BookTicker], chunk: int, batch_max_rows: int | None, profile: cProfile.Profile | None
) -> tuple[float, dict[str, Any]]:
    writer = writer_settings(batch_max_rows)
    settings = Settings(database=DatabaseSettings(dsn=dsn), writer=writer)
    chunks = [tickers[i:i + chunk] for i in range(0, len(tickers), chunk)]
    async with DatabaseManager(dsn, settings=settings) as db:
        if profile is not None:
            profile.enable()
        timing = Timing()
        for part in chunks:
            await db.insert_book_ticker_snapshots(part)
            await asyncio.sleep(0)  # a feed handler yields between messages; lets the flusher run
        await db.flush()
        elapsed, extra = timing.stop()
        if profile is not None:
            profile.disable()
        w = (await db.get_database_stats())["writers"]["book_tickers"]
    if w["rows_committed"] != len(tickers) or w["rejects"]:
        raise SystemExit(f"writer committed {w['rows_committed']} of {len(tickers)} rows; rejects {w['rejects']}")
    return elapsed, {
        "mean_batch_rows": w["mean_batch_rows"], "batches": w["batches_committed"],
        "commit_p50_ms": w["commit_p50_ms"], "commit_p99_ms": w["commit_p99_ms"], **extra,
    }


async def bench_writer_columns(
    dsn: str, tickers: list[BookTicker], chunk: int, batch_max_rows: int | None
) -> tuple[float, dict[str, Any]]:
    """The columnar path: the same rows as numpy columns (built before timing), in ``chunk``-row calls."""
    import numpy as np

    cols = {
        name: np.array([getattr(t, name) for t in tickers])
        for name in ("symbol_id", "bid_price", "bid_qty", "ask_price", "ask_qty", "recv_ts", "exchange_ts", "update_id")
    }
    writer = writer_settings(batch_max_rows)
    settings = Settings(database=DatabaseSettings(dsn=dsn), writer=writer)
    async with DatabaseManager(dsn, settings=settings) as db:
        timing = Timing()
        for i in range(0, len(tickers), chunk):
            part = {k: v[i:i + chunk] for k, v in cols.items()}
            await db.insert_book_ticker_columns(
                part["symbol_id"], part["bid_price"], part["bid_qty"], part["ask_price"], part["ask_qty"],
                part["recv_ts"], exchange_ts=part["exchange_ts"], update_id=part["update_id"])
            await asyncio.sleep(0)
        await db.flush()
        elapsed, extra = timing.stop()
        w = (await db.get_database_stats())["writers"]["book_tickers"]
    if w["rows_committed"] != len(tickers) or w["rejects"]:
        raise SystemExit(f"writer-columns committed {w['rows_committed']} of {len(tickers)}; rejects {w['rejects']}")
    return elapsed, {
        "mean_batch_rows": w["mean_batch_rows"], "batches": w["batches_committed"],
        "commit_p50_ms": w["commit_p50_ms"], "commit_p99_ms": w["commit_p99_ms"], **extra,
    }


async def bench_copy_records(dsn: str, records: list[tuple[Any, ...]]) -> tuple[float, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        timing = Timing()
        await conn.copy_records_to_table("book_tickers", records=records, columns=COLUMNS)
        return timing.stop()
    finally:
        await conn.close()


async def bench_executemany(dsn: str, records: list[tuple[Any, ...]]) -> tuple[float, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        timing = Timing()
        await conn.executemany(_INSERT, records)
        return timing.stop()
    finally:
        await conn.close()


def encode_batches(tickers: list[BookTicker], batch_max_rows: int | None) -> tuple[BookTickerWriter, list[Any]]:
    """The rows sealed into the writer's own batches, as its flusher would take them (private API)."""
    ws = WriterSettings(spool_dir=None, buffer_max_rows=len(tickers) + 1,
                        batch_max_rows=batch_max_rows or WriterSettings().batch_max_rows)
    enc = BookTickerWriter(None, settings=ws, storage=StorageSettings(), spool_dir=None)  # type: ignore[arg-type]
    enc.add([(t.symbol_id, t) for t in tickers])
    enc._seal()
    return enc, list(enc._queue)


async def bench_drain(dsn: str, tickers: list[BookTicker], batch_max_rows: int | None) -> tuple[float, dict[str, Any]]:
    ws = writer_settings(batch_max_rows, buffer_max_rows=len(tickers) + 1)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4, init=init_connection)
    try:
        enc = BookTickerWriter(pool, settings=ws, storage=StorageSettings(), spool_dir=None)
        enc.add([(t.symbol_id, t) for t in tickers])
        enc.submitted(len(tickers))
        timing = Timing()
        await enc.start()
        await enc.flush()
        elapsed, extra = timing.stop()
        await enc.close()
        snap = enc.snapshot()
        return elapsed, {"mean_batch_rows": snap["mean_batch_rows"], "batches": snap["batches_committed"],
                         "commit_p50_ms": snap["commit_p50_ms"], "commit_p99_ms": snap["commit_p99_ms"], **extra}
    finally:
        await pool.close()


async def bench_batches(
    dsn: str, enc: BookTickerWriter, batches: list[Any], *, full: bool, messages: bool = False
) -> tuple[float, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        if full:
            await conn.execute(enc.latest_stage_ddl)  # the commit path creates it once per backend
        timing = Timing()
        started = time.perf_counter()
        cpu = time.process_time()
        for b in batches:
            async with conn.transaction():
                if full:
                    await enc._committer.write(conn, [b], [(b.buf, b.latest)])
                elif messages:
                    await copy_in_messages(conn, "book_tickers", [b.buf], COLUMNS, None)
                else:
                    await conn.copy_to_table("book_tickers", source=b.buf, columns=COLUMNS, format="binary")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        _, extra = timing.stop()
        return elapsed, {**extra, "batches": len(batches),
                         "python_cpu_us_per_row": cpu / sum(b.rows for b in batches) * 1e6}
    finally:
        await conn.close()


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _latest_setup(
    dsn: str, tickers: list[BookTicker]
) -> tuple[BookTickerWriter, dict[int, BookTicker], asyncpg.Connection, int, int]:
    """For the latest-statement benchmarks: an encoder (no database), every symbol's newest row, a connection with
    the staging table, its backend's pid and the newest receipt time."""
    enc = BookTickerWriter(None, settings=writer_settings(None), storage=StorageSettings(),  # type: ignore[arg-type]
                           spool_dir=None)
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        await conn.execute(enc.latest_stage_ddl)
        backend = await conn.fetchval("SELECT pg_backend_pid()")
    except BaseException:
        await conn.close()
        raise
    return enc, {t.symbol_id: t for t in tickers}, conn, backend, max(t.recv_ts for t in tickers)


async def bench_latest_upsert(
    dsn: str, tickers: list[BookTicker], n_symbols: int, upserts: int
) -> tuple[float, dict[str, Any]]:
    """The per-commit latest statement alone, each upsert carrying every symbol's newest row (see the docstring)."""
    enc, newest, conn, backend, base = await _latest_setup(dsn, tickers)
    try:
        cpu0 = _proc_cpu(backend)
        timing = Timing()
        for k in range(upserts):
            latest = {sid: msgspec.structs.replace(t, recv_ts=base + k) for sid, t in newest.items()}
            async with conn.transaction():
                await _send_latest(conn, enc, latest, ([uuid.uuid4()], [len(latest)], [base + k], [base + k], "{}"),
                                   text=False)
        elapsed, extra = timing.stop()
        cpu = _proc_cpu(backend) - cpu0
        stored = await conn.fetchval("SELECT count(*) FROM book_tickers_latest WHERE recv_ts = $1", base + upserts - 1)
        if stored != n_symbols:
            raise SystemExit(f"latest-upsert: {stored} latest rows of the last upsert, expected {n_symbols}")
        return elapsed, {"upsert_server_ms": cpu / upserts * 1e3, **extra}
    finally:
        await conn.close()


def array_text(kind: str, values: list[object]) -> str:
    """``values`` as an array literal for a ``$n::text::<type>[]`` parameter (None as NULL): how hftdb sent the
    latest rows before the staging table (``repr`` of a float reads back as the same float; ints are exact)."""
    num = float if kind == "d" else int
    return "{" + ",".join(["NULL" if v is None else repr(num(v)) for v in values]) + "}"


#: The latest statement as hftdb sent it before the staging table, for latest-compare: the newest rows as eight
#: text array literals (array_text), unnested and converted by the server (since session 9 twice, by the UPDATE
#: and by the INSERT, which read their source directly).
_TEXT_LATEST_SQL = update_then_insert_sql(
    "book_tickers",
    "unnest($1::text::int4[], $2::text::int8[], $3::text::int8[], $4::text::float8[], $5::text::float8[],"
    " $6::text::float8[], $7::text::float8[], $8::text::int8[])"
    " AS u(symbol_id, recv_us, exchange_us, bid_price, bid_qty, ask_price, ask_qty, update_id)",
    {"recv_ts": "(timestamptz 'epoch' + u.recv_us * interval '1 microsecond')",
     "exchange_ts": "(timestamptz 'epoch' + u.exchange_us * interval '1 microsecond')", "bid_price": "u.bid_price",
     "bid_qty": "u.bid_qty", "ask_price": "u.ask_price", "ask_qty": "u.ask_qty", "update_id": "u.update_id"},
    nargs=8,
)


async def _send_latest(conn: asyncpg.Connection, enc: BookTickerWriter, latest: dict[int, BookTicker],
                       ledger: tuple[Any, ...], *, text: bool) -> None:
    """One latest statement of ``latest``'s rows: the writer's (staging table), or the text-array one before it."""
    args = enc._latest_args_of(latest)
    if text:
        await conn.execute(_TEXT_LATEST_SQL, *(array_text(k, col) for k, col in zip("iqqddddq", args)), *ledger)
        return
    await stage_latest(conn, enc.latest_stage, enc.latest_kinds, args)
    await conn.execute(enc.latest_sql, *ledger)


async def bench_latest_compare(
    dsn: str, tickers: list[BookTicker], n_symbols: int, upserts: int, block: int
) -> tuple[float, dict[str, Any]]:
    """The per-commit latest step two ways, alternating in blocks of ``block`` upserts on one connection:
    ``binary`` (the writer's: a binary COPY of the newest rows into the staging table, then the statement reading
    it) and ``text`` (the statement sent before, the column arrays as text array literals). Every symbol once per
    upsert; client CPU per upsert (build + send, inside the transaction) and the backend's CPU per block (whole
    transactions, BEGIN and COMMIT included, from /proc)."""
    enc, newest, conn, backend, base = await _latest_setup(dsn, tickers)
    try:
        client: dict[str, list[float]] = {"text": [], "binary": []}
        wall: dict[str, list[float]] = {"text": [], "binary": []}
        server: dict[str, list[float]] = {"text": [], "binary": []}
        k = 0
        started = time.perf_counter()
        for rep in range(upserts // block):
            for variant in (("text", "binary") if rep % 2 == 0 else ("binary", "text")):
                cpu0 = _proc_cpu(backend)
                for _ in range(block):
                    k += 1
                    latest = {sid: msgspec.structs.replace(t, recv_ts=base + k) for sid, t in newest.items()}
                    ledger = ([uuid.uuid4()], [len(latest)], [base + k], [base + k], "{}")
                    async with conn.transaction():
                        c0, w0 = time.process_time(), time.perf_counter()
                        await _send_latest(conn, enc, latest, ledger, text=variant == "text")
                        client[variant].append(time.process_time() - c0)
                        wall[variant].append(time.perf_counter() - w0)
                server[variant].append((_proc_cpu(backend) - cpu0) / block)
                stored = await conn.fetchval("SELECT count(*) FROM book_tickers_latest WHERE recv_ts = $1", base + k)
                if stored != n_symbols:
                    raise SystemExit(f"latest-compare {variant}: {stored} latest rows, expected {n_symbols}")
        elapsed = time.perf_counter() - started
        med = statistics.median
        out: dict[str, Any] = {}
        for v in ("text", "binary"):
            out[f"{v}_client_ms"] = med(client[v]) * 1e3
            out[f"{v}_wall_ms"] = med(wall[v]) * 1e3
            out[f"{v}_server_ms"] = med(server[v]) * 1e3
        return elapsed, out
    finally:
        await conn.close()


async def bench_encode(tickers: list[BookTicker], chunk: int, *, vector: bool = False) -> tuple[float, dict[str, Any]]:
    ws = WriterSettings(spool_dir=None, buffer_max_rows=len(tickers) + 1)
    enc = BookTickerWriter(None, settings=ws, storage=StorageSettings(), spool_dir=None)  # type: ignore[arg-type]
    chunks = [tickers[i:i + chunk] for i in range(0, len(tickers), chunk)]
    known = {t.symbol_id for t in tickers}
    enc.add_fast(chunks[0][:1], known)  # the first call imports numpy; not what is measured
    started = time.perf_counter()
    for part in chunks:
        if vector:
            if enc.add_fast(part, known) != len(part):
                raise SystemExit("encode-vector: the vectorized path refused a call")
        else:
            enc.add([(t.symbol_id, t) for t in part])
    return time.perf_counter() - started, {}


# -- driver --------------------------------------------------------------------------------------------------------


async def bench_parallel_batches(dsn: str, batches: list[Any]) -> tuple[float, dict[str, Any]]:
    conns = [await asyncpg.connect(dsn) for _ in range(2)]
    try:
        async def copy_all(conn: asyncpg.Connection, mine: list[Any]) -> None:
            for b in mine:
                async with conn.transaction():
                    await conn.copy_to_table("book_tickers", source=b.buf, columns=COLUMNS, format="binary")

        timing = Timing()
        await asyncio.gather(*(copy_all(c, batches[i::2]) for i, c in enumerate(conns)))
        elapsed, extra = timing.stop()
        return elapsed, {**extra, "batches": len(batches)}
    finally:
        for c in conns:
            await c.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.commit_max_rows:
        _WRITER_OVERRIDES["commit_max_rows"] = args.commit_max_rows
    global _BY_PROCESS
    _BY_PROCESS = args.cpu_by_process
    tmp = Path(tempfile.mkdtemp(prefix="hftdb-bench-"))
    # The server runs as its own OS user (pgserver drops root): it must be able to read the COPY files.
    tmp.chmod(0o755)
    server = None
    try:
        admin_dsn = os.environ.get("HFTDB_BENCH_DSN")
        global _PG_PID
        if not admin_dsn:
            server = EmbeddedServer(tmp / "pg")
            admin_dsn = await server.start()
            _PG_PID = server.pid
        else:
            _PG_PID = await _local_postmaster(admin_dsn)
        return await _run(args, admin_dsn, tmp)
    finally:
        if server is not None:
            await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _run(args: argparse.Namespace, admin_dsn: str, tmp: Path) -> dict[str, Any]:
    # recv_ts from now onwards (within the writer's future slack), so every row lands in partitions that the
    # writer's start-up creates anyway and none of them is "sealed" (which would get a btree at start-up).
    start_us = now_us()
    span_us = args.span_s * 1_000_000
    log(f"generating {args.rows:,} book tickers over {args.symbols:,} symbols ...")
    tickers = make_tickers(args.rows, args.symbols, seed=args.seed, start_us=start_us, span_us=span_us)
    records = as_records(tickers)
    # The same rows named by exchange and symbol, as a feed without the ids at hand hands them over.
    named = [msgspec.structs.replace(t, symbol_id=None) for t in tickers]
    em_records = records[: args.executemany_rows]
    # The data is built once and lives for the whole run: keep the cycle collector from rescanning it during
    # every method's timing.
    gc.collect()
    gc.freeze()
    bin_path, text_path = tmp / "book_tickers.bin", tmp / "book_tickers.txt"
    write_binary_file(bin_path, tickers)
    write_text_file(text_path, tickers)
    for p in (bin_path, text_path):
        p.chmod(0o644)
    log(f"COPY files: binary {bin_path.stat().st_size / 1e6:.1f} MB, text {text_path.stat().st_size / 1e6:.1f} MB")

    ts_range = (tickers[0].recv_ts, tickers[-1].recv_ts)
    dbs = Databases(admin_dsn, n_symbols=args.symbols, ts_range=ts_range, no_indexes=args.no_indexes)
    profile = cProfile.Profile() if args.profile else None

    runners: dict[str, Callable[[str], Awaitable[tuple[float, dict[str, Any]]]]] = {
        "server-binary": lambda dsn: bench_server_copy(dsn, bin_path, "binary"),
        "server-text": lambda dsn: bench_server_copy(dsn, text_path, "text"),
        "writer": lambda dsn: bench_writer(dsn, tickers, args.chunk, args.batch_max_rows, profile),
        "writer-small": lambda dsn: bench_writer(dsn, named, args.small_chunk, args.batch_max_rows, profile),
        "writer-huge": lambda dsn: bench_writer(dsn, named, len(named), args.batch_max_rows, profile),
        "writer-columns": lambda dsn: bench_writer_columns(dsn, tickers, args.column_chunk, args.batch_max_rows),
        "copy_records": lambda dsn: bench_copy_records(dsn, records),
        "executemany": lambda dsn: bench_executemany(dsn, em_records),
    }
    if set(DIAGNOSTICS) & set(args.methods):
        enc, batches = encode_batches(tickers, args.batch_max_rows)
        runners["writer-db"] = lambda dsn: bench_batches(dsn, enc, batches, full=True)
        runners["writer-drain"] = lambda dsn: bench_drain(dsn, tickers, args.batch_max_rows)
        runners["batched-copy"] = lambda dsn: bench_batches(dsn, enc, batches, full=False)
        runners["batched-messages"] = lambda dsn: bench_batches(dsn, enc, batches, full=False, messages=True)
        runners["parallel-copy"] = lambda dsn: bench_parallel_batches(dsn, batches)
    runners["latest-upsert"] = lambda dsn: bench_latest_upsert(dsn, tickers, args.symbols, args.upserts)
    runners["latest-compare"] = lambda dsn: bench_latest_compare(dsn, tickers, args.symbols, args.upserts, args.block)
    runners["encode"] = lambda dsn: bench_encode(tickers, args.chunk)
    runners["encode-vector"] = lambda dsn: bench_encode(tickers, args.chunk, vector=True)
    methods = [m for m in METHODS + DIAGNOSTICS if m in args.methods]
    rows_of = {m: (len(em_records) if m == "executemany" else len(tickers)) for m in methods}
    if "latest-upsert" in rows_of:
        rows_of["latest-upsert"] = args.upserts * args.symbols
    if "latest-compare" in rows_of:
        rows_of["latest-compare"] = 2 * (args.upserts // args.block) * args.block * args.symbols
    results: dict[str, list[float]] = {m: [] for m in methods}
    extras: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    indexes: list[str] | None = None
    for run in range(args.runs):
        order = methods[run % len(methods):] + methods[: run % len(methods)]
        for method in order:
            name, dsn = await dbs.create()
            try:
                if indexes is None:
                    indexes = await dbs.index_names(dsn)
                elapsed, extra = await runners[method](dsn)
                count = rows_of[method] if method.startswith(("encode", "latest")) else await _count(dsn)
                if count != rows_of[method]:
                    raise SystemExit(f"{method}: {count} rows in book_tickers, expected {rows_of[method]}")
            finally:
                await dbs.drop(name)
            rate = rows_of[method] / elapsed
            results[method].append(rate)
            extras[method].append(extra)
            log(f"run {run + 1}/{args.runs} {method:14s} {rows_of[method]:>9,} rows {elapsed:8.3f} s "
                f"{rate:>12,.0f} rows/s {_fmt_extra(extra, rows_of[method])}")

    if profile is not None:
        profile.dump_stats(args.profile)
        log(f"writer profile written to {args.profile}")
    return _report(args, results, extras, indexes or [], admin_dsn)


def _fmt_extra(extra: dict[str, Any], rows: int) -> str:
    out = []
    if "py_cpu_s" in extra:
        cpu = f"cpu/row: python {extra['py_cpu_s'] / rows * 1e6:.2f} us"
        if "pg_cpu_s" in extra:
            cpu += f", server {extra['pg_cpu_s'] / rows * 1e6:.2f} us"
        if "pg_cpu_by_process" in extra:
            cpu += " (" + ", ".join(f"{k} {v / rows * 1e6:.2f}" for k, v in sorted(
                extra["pg_cpu_by_process"].items(), key=lambda kv: -kv[1])) + ")"
        out.append(cpu)
    if "text_client_ms" in extra:
        out.append(", ".join(f"{v}: client {extra[f'{v}_client_ms']:.2f} ms, server {extra[f'{v}_server_ms']:.2f} ms, "
                             f"wall {extra[f'{v}_wall_ms']:.2f} ms" for v in ("text", "binary")) + " per upsert (medians)")
    if "upsert_server_ms" in extra:
        out.append(f"server cpu per upsert {extra['upsert_server_ms']:.2f} ms (that backend)")
    if "python_cpu_us_per_row" in extra:
        out.append(f"batches {extra['batches']}, python cpu {extra['python_cpu_us_per_row']:.2f} us/row")
    elif "mean_batch_rows" in extra:
        out.append(f"batches {extra['batches']} mean {extra['mean_batch_rows']:.0f} rows, "
                   f"commit p50 {extra['commit_p50_ms']:.1f} ms p99 {extra['commit_p99_ms']:.1f} ms")
    return "; ".join(out)


def _report(
    args: argparse.Namespace, results: dict[str, list[float]], extras: dict[str, list[dict[str, Any]]],
    indexes: list[str], admin_dsn: str,
) -> dict[str, Any]:
    med = {m: statistics.median(v) for m, v in results.items()}
    variant = "no-indexes" if args.no_indexes else "default"
    print()
    print(f"book_tickers ingest, variant {variant} (partition indexes: {', '.join(indexes) or 'none'})")
    print(f"{args.rows:,} rows, {args.symbols:,} symbols, {args.runs} runs, median rows/s "
          f"(executemany on {args.executemany_rows:,} rows); loop {_loop_name()}; writer batch_max_rows "
          f"{args.batch_max_rows or WriterSettings().batch_max_rows:,}, {args.chunk:,} rows per insert call")
    print(f"{'method':16s} {'median rows/s':>14s}   runs")
    for m, v in results.items():
        print(f"{m:16s} {med[m]:>14,.0f}   {', '.join(f'{x:,.0f}' for x in v)}")
    summary: dict[str, Any] = {"variant": variant, "rows": args.rows, "symbols": args.symbols, "runs": args.runs,
                               "median_rows_per_s": med, "all_rows_per_s": results, "indexes": indexes}
    if "writer" in med:
        w = extras["writer"]
        summary["writer"] = {k: statistics.median(e[k] for e in w) for k in w[0] if not isinstance(w[0][k], dict)}
        print(f"writer batches: median of runs: {summary['writer']['batches']:.0f} batches, mean "
              f"{summary['writer']['mean_batch_rows']:.0f} rows/batch, commit p50 "
              f"{summary['writer']['commit_p50_ms']:.1f} ms, p99 {summary['writer']['commit_p99_ms']:.1f} ms")
    ratios = {}
    for mine in ("writer", "writer-small", "writer-huge", "writer-columns"):
        if mine not in med:
            continue
        for other, target in (("server-binary", 0.85), ("server-text", None), ("copy_records", 2.0),
                              ("executemany", None)):
            if other in med:
                r = med[mine] / med[other]
                ratios[f"{mine}/{other}"] = r
                verdict = "" if target is None else f"  target >= {target:g}x: {'MET' if r >= target else 'NOT MET'}"
                print(f"{mine:14s} / {other:14s} {r:6.2f}x{verdict}")
    summary["ratios"] = ratios
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows per method and run (default 1,000,000)")
    p.add_argument("--symbols", type=int, default=1_000, help="distinct symbols (default 1,000)")
    p.add_argument("--runs", type=int, default=3, help="runs of each method; medians are reported (default 3)")
    p.add_argument("--no-indexes", action="store_true", help="drop every index on the book_tickers partitions")
    p.add_argument("--chunk", type=int, default=1_000, help="rows per insert_book_ticker_snapshots call")
    p.add_argument("--batch-max-rows", type=int, help="writer batch_max_rows (default: hftdb's, 10,000)")
    p.add_argument("--commit-max-rows", type=int, help="writer commit_max_rows (default: hftdb's, 100,000)")
    p.add_argument("--executemany-rows", type=int, default=50_000, help="rows for executemany (default 50,000)")
    p.add_argument("--span-s", type=int, default=600, help="recv_ts span of the rows in seconds (default 600)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--small-chunk", type=int, default=100, help="rows per call of writer-small (default 100)")
    p.add_argument("--column-chunk", type=int, default=10_000, help="rows per insert_book_ticker_columns call")
    p.add_argument("--methods", default=",".join(METHODS), type=lambda s: s.split(","),
                   help=f"comma-separated, of {','.join(METHODS + DIAGNOSTICS)} (default: all but the diagnostics)")
    p.add_argument("--profile", metavar="FILE", help="cProfile the timed sections of the writer methods run into FILE (pstats)")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--upserts", type=int, default=200, help="statements timed by latest-upsert (default 200)")
    p.add_argument("--block", type=int, default=20,
                   help="latest-compare: upserts per block, the two variants alternating by block (default 20)")
    p.add_argument("--cpu-by-process", action="store_true",
                   help="split each method's server CPU per row by server process (backends, walwriter, ...)")
    args = p.parse_args(argv)
    unknown = set(args.methods) - set(METHODS) - set(DIAGNOSTICS)
    if unknown:
        p.error(f"unknown methods: {', '.join(sorted(unknown))}")
    if args.executemany_rows > args.rows:
        args.executemany_rows = args.rows
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(arguments))
    else:
        uvloop.run(main(arguments))

"""What does each index on a book_tickers partition cost at ingest, and what does it buy at query time?

A day of synthetic top-of-book updates (``--rows`` rows, ``--symbols`` symbols chosen uniformly, recv_ts
increasing through the day as the writers produce it) is written once as a PostgreSQL binary COPY file. For each
index layout the day's partition is recreated empty, the file is loaded with a server-side
``COPY book_tickers FROM '<file>' (FORMAT binary)`` (timed, after a CHECKPOINT so no run inherits another's
dirty pages), the partition is VACUUM ANALYZEd, and a one-hour history query for one symbol is timed (median of
``--queries`` executions, warm cache). The median of ``--runs`` runs is reported.

Layouts: ``brin`` (recv_ts, pages_per_range 32: hftdb's hot partition), ``btree`` (symbol_id, recv_ts),
``brin+btree`` (hot_index="btree", or a sealed partition after index_cold_partitions) and ``none``.

    .venv/bin/python benchmarks/index_tradeoff.py --rows 1000000 --runs 3

The server is the embedded one in a scratch directory unless ``--dsn`` names another (it must be able to read
the file: superuser or pg_read_server_files, on the same host). The file goes to ``/tmp`` with mode 0644 because
the embedded server runs as the ``pgserver`` user when this process is root.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import struct
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import asyncpg

from hftdb.db.partitions import ensure_partitions, partition_name
from hftdb.db.schema import migrate
from hftdb.db.server import EmbeddedServer

_DAY_US = 86_400_000_000
_DAY_START_US = int(datetime(2026, 11, 22, tzinfo=timezone.utc).timestamp()) * 1_000_000
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix µs: where binary timestamptz counts from
_PARTITION = partition_name("book_tickers", _DAY_START_US, interval_s=86_400)
_LAYOUTS = ("brin", "btree", "brin+btree", "none")

# One binary COPY tuple of book_tickers: 8 fields, each an int32 length then the big-endian value.
_ROW = struct.Struct(">h" + "i i i q i q i d i d i d i d i q".replace(" ", ""))
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)

_QUERY = """
    SELECT recv_ts, bid_price, bid_qty, ask_price, ask_qty
    FROM book_tickers
    WHERE symbol_id = $1 AND recv_ts >= $2 AND recv_ts < $3
    ORDER BY recv_ts
"""


def write_copy_file(path: Path, *, rows: int, symbols: int, seed: int = 7) -> None:
    """Write ``rows`` book ticker updates spread over one day as a binary COPY file."""
    rng = random.Random(seed)
    mids = [rng.uniform(0.01, 60_000.0) for _ in range(symbols + 1)]
    step = _DAY_US / rows
    with path.open("wb") as out:
        out.write(_HEADER)
        chunk = []
        for i in range(rows):
            sid = rng.randint(1, symbols)
            recv = _DAY_START_US + int(i * step) - _PG_EPOCH_US
            mid = mids[sid] = mids[sid] * (1.0 + rng.gauss(0.0, 1e-4))
            half = mid * 5e-5
            chunk.append(_ROW.pack(
                8, 4, sid, 8, recv, 8, recv - rng.randint(500, 5_000), 8, mid - half, 8, rng.uniform(0.1, 50.0),
                8, mid + half, 8, rng.uniform(0.1, 50.0), 8, i,
            ))
            if len(chunk) == 10_000:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))
        out.write(_TRAILER)
    path.chmod(0o644)


async def reset_partition(conn: asyncpg.Connection, layout: str) -> None:
    """Recreate the day's partition empty, with ``layout``'s indexes."""
    await conn.execute(f'DROP TABLE IF EXISTS "{_PARTITION}"')
    hot = "btree" if "btree" in layout else "brin"
    await ensure_partitions(conn, "book_tickers", _DAY_START_US, _DAY_START_US, interval_s=86_400, hot_index=hot)
    if "brin" not in layout:
        await conn.execute(f'DROP INDEX "{_PARTITION}_brin"')


async def run_once(conn: asyncpg.Connection, layout: str, copy_path: Path, *, rows: int, queries: int, symbols: int,
                   ) -> tuple[float, float, str, int]:
    """Load the file into a fresh partition and query it; return (rows/s, query ms, plan, index bytes)."""
    await reset_partition(conn, layout)
    await conn.execute("CHECKPOINT")
    started = time.perf_counter()
    status = await conn.execute(f"COPY book_tickers FROM '{copy_path}' WITH (FORMAT binary)")
    elapsed = time.perf_counter() - started
    assert status == f"COPY {rows}", status
    await conn.execute(f'VACUUM ANALYZE "{_PARTITION}"')
    symbol = symbols // 2
    lo = datetime.fromtimestamp((_DAY_START_US + 12 * 3_600_000_000) / 1e6, timezone.utc)
    hi = datetime.fromtimestamp((_DAY_START_US + 13 * 3_600_000_000) / 1e6, timezone.utc)
    stmt = await conn.prepare(_QUERY)
    await stmt.fetch(symbol, lo, hi)  # warm-up
    times = []
    for _ in range(queries):
        t0 = time.perf_counter()
        await stmt.fetch(symbol, lo, hi)
        times.append((time.perf_counter() - t0) * 1000)
    plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + _QUERY, symbol, lo, hi)
    index_bytes = await conn.fetchval("SELECT pg_indexes_size($1::regclass)", _PARTITION)
    return rows / elapsed, statistics.median(times), _scan_kind(plan), index_bytes


def _scan_kind(plan_json: str) -> str:
    nodes = re.findall(r'"Node Type": "([^"]+)"', plan_json)
    names = re.findall(r'"Index Name": "([^"]+)"', plan_json)
    return "/".join(n for n in nodes if "Scan" in n) + (f" ({names[0].rsplit('_', 1)[-1]})" if names else "")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="hftdb_bench_", dir="/tmp"))
    scratch.chmod(0o755)
    copy_path = scratch / "book_tickers.bin"
    if re.fullmatch(r"[A-Za-z0-9_./-]+", str(copy_path)) is None:  # it goes into COPY as a literal
        raise SystemExit(f"unsafe scratch path {copy_path}")
    t0 = time.perf_counter()
    write_copy_file(copy_path, rows=args.rows, symbols=args.symbols)
    print(f"wrote {args.rows:,} rows ({copy_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")

    server = None
    dsn = args.dsn
    if dsn is None:
        server = EmbeddedServer(scratch / "pg")
        dsn = await server.start()
    conn = await asyncpg.connect(dsn)
    try:
        database = f"hftdb_bench_{os.getpid()}"
        await conn.execute(f'CREATE DATABASE "{database}"')
        bench = await asyncpg.connect(dsn, database=database)
        try:
            await migrate(bench)
            results: dict[str, list[tuple[float, float, str, int]]] = {layout: [] for layout in _LAYOUTS}
            for run in range(args.runs):
                for layout in _LAYOUTS[run % 4:] + _LAYOUTS[:run % 4]:  # rotate: no layout always goes first
                    result = await run_once(bench, layout, copy_path, rows=args.rows, queries=args.queries,
                                            symbols=args.symbols)
                    results[layout].append(result)
                    print(f"run {run + 1} {layout:<11} {result[0]:>10,.0f} rows/s  {result[1]:8.3f} ms  {result[2]}")
        finally:
            await bench.close()
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
        if server is not None:
            await server.stop()
        copy_path.unlink(missing_ok=True)

    base = statistics.median(r[0] for r in results["brin"])
    print(f"\nmedian of {args.runs} runs, {args.rows:,} rows, {args.symbols} symbols, 1-hour query for one symbol")
    print(f"{'layout':<11} {'COPY rows/s':>12} {'vs brin':>8} {'query ms':>9} {'index MB':>9}  plan")
    for layout, rs in results.items():
        speed = statistics.median(r[0] for r in rs)
        query = statistics.median(r[1] for r in rs)
        print(f"{layout:<11} {speed:>12,.0f} {speed / base:>7.2f}x {query:>9.3f} {rs[-1][3] / 1e6:>9.2f}  {rs[-1][2]}")


if __name__ == "__main__":
    asyncio.run(main())

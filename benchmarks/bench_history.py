"""History reads of 1M book tickers: rows/s per ``format=`` against plain asyncpg ``fetch``, in one run.

One symbol holds ``--rows`` book tickers over the last hour (1 in 7 without exchange_ts, 1 in 5 without update_id,
so the NULL paths are exercised). Each method reads all of them, oldest first, in the same process and database:

  asyncpg-fetch     ``conn.fetch`` of the same columns on a plain asyncpg connection (Records; timestamps as
                    aware datetimes, asyncpg's default codec)
  asyncpg-fetch-us  the same with hftdb's pool codec (timestamps as integer Unix µs, decoded in Python)
  objects           ``get_book_ticker_history(format="objects")``: list[BookTicker] (read pool, fetch)
  columns           ``format="columns"``: dict of lists, from ``COPY ... (FORMAT binary)`` via struct.iter_unpack
  numpy             ``format="numpy"``: dict of numpy arrays, from the same COPY via numpy.frombuffer

``--runs`` runs of each, in rotating order; the median is reported. The server is an embedded PostgreSQL in a temp
dir, or ``HFTDB_BENCH_DSN``. The machine is shared and noisy: compare medians, not single figures.

    .venv/bin/python benchmarks/bench_history.py --rows 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg

# Run from a checkout: import this tree's hftdb whatever the state of the venv's (editable) install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hftdb import DatabaseManager, DatabaseSettings, ExchangeName, Settings, Symbol, WriterSettings, now_us  # noqa: E402
from hftdb.manager import init_connection  # noqa: E402
from hftdb.db.server import EmbeddedServer  # noqa: E402

EXCHANGE = ExchangeName.BINANCE_SPOT
SYMBOL = "BTCUSDT"
HOUR_US = 3_600_000_000
_SELECT = """SELECT recv_ts, exchange_ts, bid_price, bid_qty, ask_price, ask_qty, update_id FROM book_tickers
             WHERE symbol_id = $1 AND recv_ts >= $2 AND recv_ts < $3 ORDER BY recv_ts"""


async def _fill(db: DatabaseManager, rows: int, start: int) -> int:
    ex = await db.insert_exchange(EXCHANGE)
    sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol=SYMBOL, kind="spot", status="trading"))  # type: ignore[arg-type]
    step = HOUR_US // rows
    async with db.connection() as conn:
        # Generated on the server: loading is not what is measured here. Timestamps are bound as Unix µs (the
        # pool's codec); the arithmetic stays in microseconds.
        await conn.execute(
            """INSERT INTO book_tickers (symbol_id, recv_ts, exchange_ts, bid_price, bid_qty, ask_price, ask_qty,
                                         update_id)
               SELECT $1, $2::timestamptz + make_interval(secs => g * $3::float8 / 1e6),
                      CASE WHEN g % 7 = 0 THEN NULL
                           ELSE $2::timestamptz + make_interval(secs => (g * $3::float8 - 250) / 1e6) END,
                      60000 + (g % 1000) * 0.01, 0.001 * (1 + g % 50), 60000.01 + (g % 1000) * 0.01,
                      0.002 * (1 + g % 30), CASE WHEN g % 5 = 0 THEN NULL ELSE 10000000000 + g END
               FROM generate_series(0, $4::int - 1) AS g""",
            sym.id, start, step, rows,
        )
        await conn.execute("ANALYZE book_tickers")
        await conn.execute("CHECKPOINT")
    return sym.id  # type: ignore[return-value]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = None
    admin = os.environ.get("HFTDB_BENCH_DSN")
    tmp = None
    if admin is None:
        tmp = tempfile.mkdtemp(prefix="hftdb-bench-history-")
        server = EmbeddedServer(Path(tmp) / "pg")
        admin = await server.start()
    name = "hftdb_bench_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')  # name is ours: hex digits
    await conn.close()
    dsn = urlunsplit(urlsplit(admin)._replace(path="/" + name))
    settings = Settings(database=DatabaseSettings(dsn=dsn), writer=WriterSettings(spool_dir=None))
    results: dict[str, list[float]] = {}
    try:
        async with DatabaseManager(dsn, settings=settings) as db:
            start = now_us() - HOUR_US
            sid = await _fill(db, args.rows, start)
            end = now_us() + 1
            plain = await asyncpg.connect(dsn)
            micro = await asyncpg.connect(dsn)
            await init_connection(micro)
            from datetime import datetime, timezone

            lo_dt = datetime.fromtimestamp(start / 1e6, timezone.utc)
            hi_dt = datetime.fromtimestamp(end / 1e6, timezone.utc)

            def history(fmt: str) -> Callable[[], Awaitable[Any]]:
                return lambda: db.get_book_ticker_history(EXCHANGE, SYMBOL, start=start, end=end, format=fmt)

            methods: dict[str, Callable[[], Awaitable[Any]]] = {
                "asyncpg-fetch": lambda: plain.fetch(_SELECT, sid, lo_dt, hi_dt),
                "asyncpg-fetch-us": lambda: micro.fetch(_SELECT, sid, start, end),
                "objects": history("objects"),
                "columns": history("columns"),
                "numpy": history("numpy"),
            }
            names = [m for m in methods if m in args.methods]
            for run in range(args.runs):
                order = names[run % len(names):] + names[:run % len(names)]
                for m in order:
                    gc.collect()
                    began = time.perf_counter()
                    out = await methods[m]()
                    elapsed = time.perf_counter() - began
                    n = len(out) if isinstance(out, list) else len(next(iter(out.values())))
                    if n != args.rows:
                        raise SystemExit(f"{m} returned {n} rows, expected {args.rows}")
                    del out
                    results.setdefault(m, []).append(elapsed)
                    print(f"run {run + 1} {m:17s} {elapsed:7.3f} s  {args.rows / elapsed:12,.0f} rows/s", flush=True)
            await plain.close()
            await micro.close()
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
        if server is not None:
            await server.stop()
    summary = {m: {"median_s": statistics.median(t), "rows_per_s": args.rows / statistics.median(t)}
               for m, t in results.items()}
    base = summary.get("asyncpg-fetch", {}).get("rows_per_s")
    print(f"\n{args.rows:,} rows, median of {args.runs} run(s):")
    for m, s in summary.items():
        ratio = f"  x{s['rows_per_s'] / base:5.2f} vs asyncpg-fetch" if base else ""
        print(f"  {m:17s} {s['median_s']:7.3f} s  {s['rows_per_s']:12,.0f} rows/s{ratio}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", default="asyncpg-fetch,asyncpg-fetch-us,objects,columns,numpy",
                        type=lambda s: s.split(","))
    parser.add_argument("--json", help="write the summary here")
    a = parser.parse_args()
    import uvloop

    summary = uvloop.run(main(a))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))

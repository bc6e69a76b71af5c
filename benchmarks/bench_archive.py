"""The Parquet tier, in one run: bytes per row in each tier, archive throughput, history reads from each tier.

Two data sets, loaded through ``insert_book_ticker_columns`` (the real ingest path) into days of their own:

  quotes    ``--rows`` book tickers of ``--symbols`` symbols at ``--rate`` msg/s, 40 days back: per symbol a random
            walk on an exchange-like tick (0.1 for a 60,000 price, 0.0001 for a 1.0 one: four significant digits
            below the price's own), spreads of 1-3 ticks, quantities in lot steps, activity Zipf-like over
            symbols, exchange times in whole ms 1-40 ms before receipt, update ids rising 1-20 per update.
  one-symbol  ``--read-rows`` rows of one symbol within one hour, twice: 30 days back (archived) and 20 days back
            (kept in PostgreSQL, sealed with its btree). Reads of both alternate, ``--runs`` times each.

Reported: heap and total bytes/row of the quotes' partition hot (BRIN only) and sealed (btree added), Parquet
bytes/row of its archive; archive rows/s (fetch, write, verify, rename, detach, drop: the whole command) and
the archive's peak RSS above the process's when it starts (VmHWM, Linux);
history rows/s per format from each tier (medians); and a sweep of row-group sizes and zstd levels over the
archived quotes: file bytes/row, write seconds, and the time to read one symbol's 10 % time window.

    .venv/bin/python benchmarks/bench_archive.py --rows 2000000 --read-rows 1000000 --runs 5
    .venv/bin/python benchmarks/bench_archive.py --rows 2000000 --only-archive --copy-archive /tmp/a  # A/B runs

The server is an embedded PostgreSQL in a temp dir, or ``HFTDB_BENCH_DSN``. The machine is shared and noisy:
compare medians, not single figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hftdb import DatabaseManager, DatabaseSettings, ExchangeName, Settings, Symbol, WriterSettings, now_us  # noqa: E402
from hftdb.read import archive
from hftdb.db import partitions  # noqa: E402
from hftdb.config import ArchiveSettings, StorageSettings  # noqa: E402
from hftdb.db.server import EmbeddedServer  # noqa: E402

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000


def _quotes(rng: np.random.Generator, n: int, symbols: int, rate: float, start: int) -> dict[str, np.ndarray]:
    # Price levels spread over six decades like a venue's listings; tick = 10^(digits - 5): 4-5 significant
    # digits of price movement, as exchanges set them.
    level = np.exp(rng.uniform(np.log(0.01), np.log(60_000), symbols))
    tick = 10.0 ** (np.floor(np.log10(level)) - 4)
    lot = 10.0 ** -np.clip(np.floor(np.log10(level)), 0, 5)  # dearer coins trade in finer lots
    weight = 1.0 / np.arange(1, symbols + 1) ** 0.8
    sym = rng.choice(symbols, size=n, p=weight / weight.sum())
    gaps = rng.exponential(1e6 / rate, n)
    recv = start + np.cumsum(gaps).astype(np.int64)
    exch = (recv - rng.integers(1_000, 40_000, n)) // 1000 * 1000
    # Per symbol, in time order: a walk of -1/0/+1 ticks (mostly 0: most updates change a size, not a price).
    order = np.lexsort((recv, sym))
    steps = rng.choice([-1, 0, 1], size=n, p=[0.15, 0.7, 0.15])
    s_sorted = sym[order]
    first = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    walk = np.cumsum(steps)
    base_walk = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    ticks_sorted = walk - walk[base_walk]
    ticks = np.empty(n, dtype=np.int64)
    ticks[order] = ticks_sorted
    base_ticks = np.round(level / tick).astype(np.int64)
    bid_ticks = base_ticks[sym] + ticks
    spread = rng.choice([1, 2, 3], size=n, p=[0.7, 0.2, 0.1])
    # Prices as a feed parses them: the decimal text's nearest double (tick multiples rounded to the tick's digits).
    digits = (-np.log10(tick)).round().astype(int).clip(0, 12)
    bid = np.round(bid_ticks * tick[sym], 12)
    ask = np.round((bid_ticks + spread) * tick[sym], 12)
    bid = np.array([round(b, d) for b, d in zip(bid.tolist(), digits[sym].tolist())])
    ask = np.array([round(a, d) for a, d in zip(ask.tolist(), digits[sym].tolist())])
    qty_lots = lambda: np.maximum(1, rng.geometric(0.02, n))  # noqa: E731
    ldig = (-np.log10(lot)).round().astype(int)
    bq = np.array([round(q * lt, d) for q, lt, d in zip(qty_lots().tolist(), lot[sym].tolist(), ldig[sym].tolist())])
    aq = np.array([round(q * lt, d) for q, lt, d in zip(qty_lots().tolist(), lot[sym].tolist(), ldig[sym].tolist())])
    uid = np.empty(n, dtype=np.int64)
    inc = rng.integers(1, 21, n)
    cs = np.cumsum(inc[order])
    uid_sorted = cs - np.where(first, cs - inc[order], 0)[base_walk] + 1_000_000_000 * s_sorted
    uid[order] = uid_sorted
    return {"sym": sym, "bid": bid, "bq": bq, "ask": ask, "aq": aq, "recv": recv, "exch": exch, "uid": uid}


async def _load(db: DatabaseManager, ids: np.ndarray, cols: dict[str, np.ndarray]) -> None:
    chunk = 200_000
    for i in range(0, len(cols["recv"]), chunk):
        s = slice(i, i + chunk)
        await db.insert_book_ticker_columns(ids[cols["sym"][s]], cols["bid"][s], cols["bq"][s], cols["ask"][s],
                                            cols["aq"][s], cols["recv"][s], exchange_ts=cols["exch"][s],
                                            update_id=cols["uid"][s])
    await db.flush()


async def _sizes(conn: asyncpg.Connection, name: str) -> dict[str, int]:
    r = await conn.fetchrow(
        "SELECT pg_relation_size($1::regclass) AS heap, pg_total_relation_size($1::regclass) AS total,"
        " (SELECT count(*) FROM " + f'"{name}"' + ") AS rows", name)
    return dict(r)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = None
    admin = os.environ.get("HFTDB_BENCH_DSN")
    tmp = Path(tempfile.mkdtemp(prefix="hftdb-bench-archive-"))
    if admin is None:
        server = EmbeddedServer(tmp / "pg")
        admin = await server.start()
    dbname = "bench_archive_" + uuid.uuid4().hex[:8]
    c = await asyncpg.connect(admin)
    await c.execute(f'CREATE DATABASE "{dbname}"')
    await c.close()
    dsn = urlunsplit(urlsplit(admin)._replace(path="/" + dbname))
    root = tmp / "archive"
    settings = Settings(database=DatabaseSettings(data_dir=str(tmp / "unused")),
                        writer=WriterSettings(spool_dir=None), storage=StorageSettings(cold_btree=False),
                        archive=ArchiveSettings(root=str(root), row_group_rows=args.row_group_rows,
                                                compression_level=args.level, **(
                                                    {"piece_rows": args.piece_rows} if args.piece_rows else {})))
    out: dict[str, Any] = {"args": vars(args)}
    rng = np.random.default_rng(args.seed)
    today = now_us() // DAY_US * DAY_US
    try:
        async with DatabaseManager(dsn, settings=settings) as db:
            ex = await db.insert_exchange(ExchangeName.BINANCE_USDM)
            syms = [Symbol(exchange_id=ex.id, symbol=f"S{i:04d}USDT", kind="perpetual", status="trading")  # type: ignore[arg-type]
                    for i in range(args.symbols)]
            await db.sync_symbols(ExchangeName.BINANCE_USDM, syms)
            ids = np.array([(await db.get_symbol(ExchangeName.BINANCE_USDM, s.symbol)).id for s in syms])
            t0 = time.perf_counter()
            quotes = _quotes(rng, args.rows, args.symbols, args.rate, today - 40 * DAY_US + HOUR_US)
            out["generate_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            await _load(db, ids, quotes)
            out["load_rows_per_s"] = args.rows / (time.perf_counter() - t0)
            # The one-symbol read set, twice: archived (30 days back) and kept (20 days back).
            for back in (30, 20):
                n = args.read_rows
                start = today - back * DAY_US + HOUR_US
                recv = start + np.arange(n, dtype=np.int64) * (HOUR_US // n)
                cols = {"sym": np.zeros(n, dtype=np.int64), "bid": 60_000 + (np.arange(n) % 1000) * 0.1,
                        "bq": 0.001 * (1 + np.arange(n) % 50), "ask": 60_000.1 + (np.arange(n) % 1000) * 0.1,
                        "aq": 0.002 * (1 + np.arange(n) % 30), "recv": recv, "exch": recv - 250,
                        "uid": 10_000_000_000 + np.arange(n)}
                await _load(db, ids, cols)
            async with db.connection() as conn:
                name = partitions.partition_name("book_tickers", today - 40 * DAY_US + HOUR_US, interval_s=86_400)
                await conn.execute("VACUUM ANALYZE book_tickers")
                hot = await _sizes(conn, name)
                await partitions.index_cold_partitions(conn, "book_tickers", today - 10 * DAY_US)
                sealed = await _sizes(conn, name)
            out["pg_hot"] = {"heap_bytes_per_row": hot["heap"] / hot["rows"],
                             "total_bytes_per_row": hot["total"] / hot["rows"], "rows": hot["rows"]}
            out["pg_sealed"] = {"heap_bytes_per_row": sealed["heap"] / sealed["rows"],
                                "total_bytes_per_row": sealed["total"] / sealed["rows"]}
            del quotes
            gc.collect()
            archive.require_pyarrow()  # its import is not the archive's memory
            sampler = _RssSampler()
            t0 = time.perf_counter()
            with sampler:
                rep = (await db.archive_partitions(35, tables=["book_tickers"]))["book_tickers"]
            secs = time.perf_counter() - t0
            if args.copy_archive:
                shutil.copytree(root, args.copy_archive, dirs_exist_ok=True)
            files = list((root / "book_tickers").rglob("*.parquet"))
            pq_bytes = sum(f.stat().st_size for f in files)
            out["archive"] = {"rows": rep.rows, "seconds": secs, "rows_per_s": rep.rows / secs,
                              "parquet_bytes": pq_bytes, "parquet_bytes_per_row": pq_bytes / rep.rows,
                              "vs_heap": sealed["heap"] / pq_bytes, "vs_sealed_total": sealed["total"] / pq_bytes,
                              "rss_before_mb": sampler.before / 2**20, "peak_rss_growth_mb": sampler.growth / 2**20}
            print(json.dumps(out, indent=1), flush=True)
            if args.only_archive:
                return out
            out["sweep"] = _sweep(root, files[0], args)
            print(json.dumps(out["sweep"], indent=1), flush=True)
            await db.archive_partitions(25, tables=["book_tickers"])
            out["reads"] = await _reads(db, today, args)
    finally:
        if server is not None:
            await server.stop()
    return out


class _RssSampler:
    """The process's peak resident set while the block runs, above what it was when it started: the kernel's
    high-water mark (VmHWM), reset to the current resident set on entry (/proc/self/clear_refs, Linux)."""

    def __init__(self) -> None:
        self.before = self.peak = 0

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) * 1024

    def __enter__(self) -> _RssSampler:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.before = self._status("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = self._status("VmHWM")

    @property
    def growth(self) -> int:
        return self.peak - self.before


async def _reads(db: DatabaseManager, today: int, args: argparse.Namespace) -> dict[str, Any]:
    sym = "S0000USDT"
    times: dict[str, list[float]] = {}
    for run in range(args.runs):
        for fmt in ("numpy", "columns", "objects"):
            for tier, back in (("parquet", 30), ("postgres", 20)) if run % 2 == 0 else (("postgres", 20), ("parquet", 30)):
                lo = today - back * DAY_US
                t0 = time.perf_counter()
                got = await db.get_book_ticker_history(ExchangeName.BINANCE_USDM, sym, start=lo, end=lo + DAY_US,
                                                       format=fmt)  # type: ignore[arg-type]
                dt = time.perf_counter() - t0
                n = len(got) if fmt == "objects" else len(got["recv_ts"])
                assert n == args.read_rows, (tier, fmt, n)
                times.setdefault(f"{tier} {fmt}", []).append(dt)
                del got
    return {k: {"median_s": statistics.median(v), "rows_per_s": args.read_rows / statistics.median(v),
                "all_s": [round(x, 3) for x in v]} for k, v in times.items()}


def _sweep(root: Path, path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Row-group sizes and zstd levels over the archived quotes: bytes/row, write time, one-symbol window read."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    n = table.num_rows
    sid = table.column("symbol_id").to_numpy()
    recv = table.column("recv_ts").cast("int64").to_numpy()
    lo_t, hi_t = int(recv.min()), int(recv.max())
    # A mid-activity symbol and a 10 % time window in the middle of the data.
    counts = np.bincount(sid)
    target = int(np.argsort(counts)[-50])
    lo = lo_t + (hi_t - lo_t) * 45 // 100
    hi = lo_t + (hi_t - lo_t) * 55 // 100
    rel = path.relative_to(root / "book_tickers")
    date_dir, file_rel = rel.parts[0], "/".join(rel.parts[1:])
    results = []
    for rg, level in [(16_384, 9), (65_536, 9), (262_144, 9), (1_048_576, 9), (262_144, 1), (262_144, 3),
                      (262_144, 15)]:
        sroot = root.parent / f"sweep-{rg}-{level}"
        target_path = sroot / "book_tickers" / date_dir / file_rel
        target_path.parent.mkdir(parents=True, exist_ok=True)
        s = ArchiveSettings(root=str(sroot), row_group_rows=rg, compression_level=level)
        t0 = time.perf_counter()
        archive._write_parquet(None, table, target_path, s, archive.SPECS["book_tickers"])
        write_s = time.perf_counter() - t0
        entry = archive.FileEntry(path=file_rel, exchange="binance_usdm", exchange_id=1, rows=n,
                                  bytes=target_path.stat().st_size, checksum="", min_recv_us=lo_t, max_recv_us=hi_t)
        m = archive.Manifest(hftdb_version="bench", table="book_tickers", partition="x", generation=0,
                             date=date_dir.split("=")[1], lower_us=lo_t // DAY_US * DAY_US,
                             upper_us=lo_t // DAY_US * DAY_US + DAY_US, rows=n, checksum="0", min_recv_us=lo_t,
                             max_recv_us=hi_t, files=[entry], state="dropped")
        tier = archive.ArchiveTier(sroot)
        reads = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            got = tier.read([m], "book_tickers", exchange="binance_usdm", lo=lo, hi=hi, symbol_id=target)
            reads.append(time.perf_counter() - t0)
        results.append({"row_group_rows": rg, "zstd_level": level,
                        "bytes_per_row": target_path.stat().st_size / n, "write_s": round(write_s, 3),
                        "window_read_ms": round(statistics.median(reads) * 1000, 2),
                        "window_rows": int(len(got["recv_ts"])), "symbol_rows": int(counts[target])})
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--symbols", type=int, default=1000)
    p.add_argument("--rate", type=float, default=50_000.0, help="messages per second of the quotes (all symbols)")
    p.add_argument("--read-rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--row-group-rows", type=int, default=ArchiveSettings().row_group_rows)
    p.add_argument("--level", type=int, default=ArchiveSettings().compression_level)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--piece-rows", type=int, help="[archive] piece_rows (default: its default)")
    p.add_argument("--only-archive", action="store_true", help="stop after the archive (no sweep, no reads)")
    p.add_argument("--copy-archive", metavar="DIR", help="copy the archived files here (to compare two versions)")
    a = p.parse_args()
    result = asyncio.run(main(a))
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))

"""Book-ticker ingest on a Citus cluster against a single PostgreSQL server, in the same run, and where the CPU goes.

Starts, from a PostgreSQL installation with the citus extension installed (``$HFTDB_CITUS_PG_BIN`` or found as
tests/citus_cluster.py finds it), a Citus cluster (a coordinator and ``--workers`` workers on loopback) and one
more server of the same installation without Citus (``single``). Each run writes the same ``--rows`` book
tickers over ``--symbols`` symbols through hftdb's writer (``DatabaseManager.insert_book_ticker_snapshots``,
``--chunk`` rows a call, as a feed does) into a fresh database, ``single`` and ``citus`` alternating, and reports
medians of rows/s and of the CPU seconds per million rows of: this process (``client``), the coordinator's
process tree, the workers' (all of them), and the single server's. Every run checks that every row was committed,
none rejected.

On one machine the nodes share its cores, so the cluster cannot be faster here; the per-node CPU per row is what
the capacity model of docs/SCALE-OUT.md is built from.

    .venv/bin/python benchmarks/bench_citus.py --rows 300000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from hftdb import DatabaseManager, ExchangeName
from hftdb.config import DatabaseSettings, Settings, StorageSettings

from bench_writer import _tree_cpu, make_tickers, writer_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from citus_cluster import CitusCluster, Node, find_citus_bin  # noqa: E402


def _postmaster(node: Node) -> int:
    return int((node.data_dir / "postmaster.pid").read_text().split()[0])


def _cpu(nodes: list[Node]) -> float:
    return sum(_tree_cpu(_postmaster(n)) for n in nodes)


async def _ingest(dsn: str, tickers: list[Any], chunk: int, *, distribute: bool, nodes: dict[str, list[Node]]
                  ) -> dict[str, float]:
    settings = Settings(database=DatabaseSettings(dsn=dsn), writer=writer_settings(None),
                        storage=StorageSettings(distribute=distribute))
    async with DatabaseManager(dsn, settings=settings) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        # Register the symbols first: the timed section is the ingest, not the first sight of each name.
        first: dict[str, Any] = {}
        for t in tickers:
            first.setdefault(t.symbol, t)
        await db.insert_book_ticker_snapshots(list(first.values()))
        await db.flush()
        warm = {id(t) for t in first.values()}
        rest = [t for t in tickers if id(t) not in warm]
        parts = [rest[i:i + chunk] for i in range(0, len(rest), chunk)]
        cpu0 = {k: _cpu(v) for k, v in nodes.items()}
        py0 = time.process_time()
        t0 = time.perf_counter()
        for part in parts:
            await db.insert_book_ticker_snapshots(part)
            await asyncio.sleep(0)
        await db.flush()
        elapsed = time.perf_counter() - t0
        py = time.process_time() - py0
        cpu = {k: _cpu(v) - cpu0[k] for k, v in nodes.items()}
        w = (await db.get_database_stats())["writers"]["book_tickers"]
    if w["rows_committed"] != len(tickers) or w["rejects"]:
        raise SystemExit(f"committed {w['rows_committed']} of {len(tickers)} rows; rejects {w['rejects']}")
    per_m = 1e6 / len(rest)
    return {"rows_s": len(rest) / elapsed, "client": py * per_m, **{k: v * per_m for k, v in cpu.items()},
            "mean_batch_rows": w["mean_batch_rows"]}


async def main(args: argparse.Namespace) -> None:
    bin_dir, why = find_citus_bin()
    if bin_dir is None:
        raise SystemExit(why)
    cluster = CitusCluster(bin_dir, workers=args.workers)
    single: Node | None = None
    try:
        await cluster.start()
        single = await cluster.add_plain_node("single")
        t0 = 1_796_000_000_000_000
        tickers = make_tickers(args.rows, args.symbols, seed=1, start_us=t0, span_us=600_000_000)
        for t in tickers:
            t.symbol_id = None
            t.exchange = "binance_usdm"
        results: dict[str, list[dict[str, float]]] = {"single": [], "citus": []}
        for run in range(args.runs):
            for kind in (("single", "citus") if run % 2 == 0 else ("citus", "single")):
                if kind == "single":
                    name = f"bench_{run}"
                    await single.execute(f'CREATE DATABASE "{name}"')
                    r = await _ingest(single.dsn(name), tickers, args.chunk, distribute=False,
                                      nodes={"server": [single]})
                else:
                    dsn = await cluster.new_database()
                    r = await _ingest(dsn, tickers, args.chunk, distribute=True,
                                      nodes={"coordinator": [cluster.coordinator], "workers": cluster.workers})
                    conn = await asyncpg.connect(dsn)
                    try:
                        spread = await conn.fetch(
                            "SELECT nodeport, count(*) AS shards FROM citus_shards WHERE table_name::text LIKE "
                            "'book_tickers_p%' GROUP BY 1 ORDER BY 1")
                    finally:
                        await conn.close()
                    r["shard_nodes"] = len(spread)
                results[kind].append(r)
                print(f"run {run + 1} {kind:<7} " + "  ".join(
                    f"{k} {v:,.0f}" if k == "rows_s" else f"{k} {v:.2f}" for k, v in r.items()), flush=True)
        print(f"\nmedians of {args.runs} runs, {args.rows:,} rows over {args.symbols:,} symbols, "
              f"{args.workers} workers; CPU seconds per million rows")
        for kind, rs in results.items():
            keys = [k for k in rs[0] if k not in ("mean_batch_rows", "shard_nodes")]
            print(f"  {kind:<7} " + "  ".join(
                f"{k} {statistics.median(r[k] for r in rs):,.0f}" if k == "rows_s"
                else f"{k} {statistics.median(r[k] for r in rs):.2f}" for k in keys))
    finally:
        await cluster.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000, help="book tickers per run (default 300,000)")
    p.add_argument("--symbols", type=int, default=1_000, help="distinct symbols (default 1,000)")
    p.add_argument("--chunk", type=int, default=1_000, help="rows per insert call (default 1,000)")
    p.add_argument("--runs", type=int, default=3, help="runs of each, alternating (default 3)")
    p.add_argument("--workers", type=int, default=2, help="Citus workers (default 2)")
    asyncio.run(main(p.parse_args()))

"""The feed side of frames-to-rows without a database: ``Intake.process`` then ``StreamRunner.push`` into a sink
whose inserts return at once. 200k generated USD-M bookTicker frames (``bench_e2e``'s generator), 100 frames a call
in reads of 10, symbol ids known, rows packed as for a DatabaseManager's feed sink. Prints this process's CPU time
per frame (``time.process_time``), in µs, for ``--runs`` runs.

For an A/B against an older tree, run it from a ``git archive`` of that commit with ``PYTHONPATH`` pointing there
(and the built ``.so`` files copied into its ``hftdb/wire/_native/``): before ``FeedRows`` the runner's ``push``
took the intake's ``(book_tickers, funding_rates, balances)`` triple, and the script passes whichever it takes.

    .venv/bin/python benchmarks/bench_feed_push.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e  # noqa: E402

from hftdb.models import now_us  # noqa: E402


class NullSink:
    """A sink that takes packed rows and knows every symbol's id; its inserts keep nothing."""

    def __init__(self, n_symbols: int) -> None:
        self.ids = {name: i for i, name in enumerate(bench_e2e.symbol_names(n_symbols), 1)}

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        return self.ids.get(symbol)

    async def insert_exchange(self, exchange: Any) -> Any: ...
    async def get_exchange_by_enum(self, name: Any) -> Any: ...
    async def sync_symbols(self, exchange: Any, symbols: Any) -> Any: ...
    async def insert_funding_rates(self, rows: Any) -> int: return len(rows)
    async def insert_balance_snapshots(self, rows: Any) -> int: return len(rows)
    async def flush(self) -> None: ...

    async def insert_book_ticker_snapshots(self, rows: Any) -> int:
        return len(rows)

    async def insert_packed_book_tickers(self, rows: Any) -> int:
        return len(rows)


async def main(args: argparse.Namespace) -> None:
    frames = bench_e2e.make_frames(args.frames, args.symbols, seed=1)
    chunks = [bench_e2e.reads_of(frames[i:i + 100], 10) for i in range(0, len(frames), 100)]
    out = []
    for _ in range(args.runs):
        intake, runner = bench_e2e.client_intake(NullSink(args.symbols), args.symbols)
        typed = runner.push.__code__.co_argcount == 2  # push(self, batch): FeedRows
        process, push = intake.process, runner.push
        gc.collect()
        cpu = time.process_time()
        for reads in chunks:
            got = process([(now_us(), payloads) for payloads in reads])
            await (push(got) if typed else push(*got))
        out.append((time.process_time() - cpu) / len(frames) * 1e6)
        if runner.adapter.stats.book_rows != len(frames):
            raise SystemExit(f"pushed {runner.adapter.stats.book_rows} rows of {len(frames)}")
    print(" ".join(f"{x:.3f}" for x in out))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--symbols", type=int, default=1_000)
    p.add_argument("--runs", type=int, default=5)
    asyncio.run(main(p.parse_args()))

"""What does one writer call cost, by call size? The encoder alone, no database.

``BookTickerWriter.add`` and ``FundingRateWriter.add`` (the ``(symbol_id, row)`` pairs every call of a known
symbol reaches after the manager's name resolution, small calls included), on ``--rows`` rows in calls of n rows
each, for every n of ``--sizes``: Python CPU (``time.process_time``) per row, the minimum of ``--runs`` runs (each on
a fresh writer; the pairs are built before timing). The writers are never started: rows are encoded into their
batches (sealed at ``batch_max_rows`` as usual) and nothing is committed. The minimum, not the median, because the
machine is shared: a run can only be slowed by other load, never sped up.

    .venv/bin/python benchmarks/bench_calls.py                       # sizes 1,4,8,100; book tickers and funding
    .venv/bin/python benchmarks/bench_calls.py --sizes 1,2,100,10000 --tables book_tickers
    .venv/bin/python benchmarks/bench_calls.py --names 500000     # also: a huge named call's check before slice 1

``--names N``: what a call of N book tickers named by exchange and symbol (1,000 symbols) costs the manager before
its first slice is packed: resolving every name in Python (``ids_by_name``, what it did up to session 8) against
looking them up in one C pass (``cached_ids``); CPU ms, min of ``--runs``. Only on a tree that has both.

A/B against another tree: run this script from one tree with ``PYTHONPATH`` pointing at each tree in turn.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

# Run from a checkout: this tree's hftdb unless PYTHONPATH names another (it comes first: A/B from one script).
sys.path.append(str(Path(__file__).resolve().parents[1]))

from hftdb import BookTicker, FundingRate, StorageSettings, WriterSettings, now_us  # noqa: E402
try:
    from hftdb.store.tables import BookTickerWriter, FundingRateWriter  # noqa: E402
except ImportError:  # a tree from before the layer move (session 8's 6fb2fde), for A/B against it
    from hftdb.tables import BookTickerWriter, FundingRateWriter  # type: ignore[no-redef]  # noqa: E402


def make_rows(table: str, n: int, n_symbols: int) -> list[tuple[int, Any]]:
    """``n`` valid rows of ``table`` over ``n_symbols`` symbols, receipt times rising, as (symbol_id, row) pairs."""
    start = now_us() - 600_000_000
    out: list[tuple[int, Any]] = []
    for i in range(n):
        sid = i % n_symbols + 1
        recv = start + i * 10
        if table == "book_tickers":
            bid = 100.0 + (i % 97) * 0.01
            out.append((sid, BookTicker("binance_spot", f"S{sid:05d}USDT", bid, 1.5, bid + 0.01, 2.5, recv, recv - 300,
                                        10**9 + i, symbol_id=sid)))
        else:
            out.append((sid, FundingRate("binance_usdm", f"S{sid:05d}USDT", 0.0001, recv, recv - 300,
                                         recv + 3_600_000_000, 100.0, 100.01, symbol_id=sid)))
    return out


def writer_for(table: str, rows: int) -> Any:
    ws = WriterSettings(spool_dir=None, buffer_max_rows=rows + 1)
    cls = BookTickerWriter if table == "book_tickers" else FundingRateWriter
    return cls(None, settings=ws, storage=StorageSettings(), spool_dir=None)  # type: ignore[arg-type]


def run_once(table: str, pairs: list[tuple[int, Any]], n: int) -> float:
    """Python CPU seconds for ``pairs`` in calls of ``n``, on a fresh writer."""
    writer = writer_for(table, len(pairs))
    calls = [pairs[i:i + n] for i in range(0, len(pairs), n)]
    add: Callable[[list[tuple[int, Any]]], int] = writer.add
    writer.add(calls[0][:1])  # first-call imports; then a fresh writer for the timed part
    writer = writer_for(table, len(pairs))
    add = writer.add
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        taken = 0
        for part in calls:
            taken += add(part)
        elapsed = time.process_time() - started
    finally:
        gc.enable()
    if taken != len(pairs):
        raise SystemExit(f"{table}: took {taken} of {len(pairs)} rows: {writer.rejects.snapshot()}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000, help="rows per run (default 20,000)")
    p.add_argument("--symbols", type=int, default=100, help="distinct symbols (default 100)")
    p.add_argument("--runs", type=int, default=5, help="runs per size; the minimum is reported (default 5)")
    p.add_argument("--sizes", default="1,4,8,100", help="rows per call, comma-separated (default 1,4,8,100)")
    p.add_argument("--tables", default="book_tickers,funding_rates", help="book_tickers and/or funding_rates")
    p.add_argument("--names", type=int, default=0, metavar="N", help="also time a huge call's name check on N rows")
    args = p.parse_args(argv)
    import hftdb
    print(f"hftdb from {Path(hftdb.__file__).parent}", file=sys.stderr)
    sizes = [int(s) for s in args.sizes.split(",")]
    for table in args.tables.split(","):
        pairs = make_rows(table, args.rows, args.symbols)
        cells = []
        for n in sizes:
            best = min(run_once(table, pairs, n) for _ in range(args.runs))
            cells.append(f"n={n} {best / len(pairs) * 1e6:.2f}")
        print(f"{table:<14} us/row (Python CPU, min of {args.runs}): " + "  ".join(cells), flush=True)
    if args.names:
        names_check(args.names, args.runs)


def names_check(n: int, runs: int) -> None:
    """Print the CPU a huge named call's name check costs before its first slice, both ways."""
    from hftdb.wire.books import cached_ids, ids_by_name

    symbols = [f"S{i:05d}USDT" for i in range(1_000)]
    names = {"binance_spot": {s: i + 1 for i, s in enumerate(symbols)}}
    t = now_us()
    # Each row's symbol its own str object, as rows decoded from a file or a socket have (hash not yet cached).
    rows = [BookTicker("binance_spot", "".join(symbols[i % 1_000]), 1.0, 1.0, 2.0, 1.0, t + i) for i in range(n)]
    for name, check in (("ids_by_name (Python)", lambda: ids_by_name(rows, names) is not None),
                        ("cached_ids (C)", lambda: cached_ids(rows, names) is not None)):
        best = math.inf
        for _ in range(runs):
            fresh = [BookTicker(r.exchange, "".join(r.symbol), 1.0, 1.0, 2.0, 1.0, r.recv_ts) for r in rows]
            rows[:] = fresh
            started = time.process_time()
            assert check()
            best = min(best, time.process_time() - started)
        print(f"{n:,} named rows, {name}: {best * 1e3:.1f} ms ({best / n * 1e9:.0f} ns/row)", flush=True)


if __name__ == "__main__":
    main()

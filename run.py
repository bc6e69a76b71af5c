"""hftdb's main job. Until the daemon lands (issue 4), a short demo through the public API on the embedded database:
register an exchange, stream synthetic book tickers through the batch writer, and read them back."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time

from hftdb import BookTicker, DatabaseManager, ExchangeName, HftdbError, now_us


async def demo(rows: int) -> None:
    async with DatabaseManager() as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        symbols = [f"DEMO{i}USDT" for i in range(20)]
        mids = {s: 100.0 * (i + 1) for i, s in enumerate(symbols)}
        started = time.perf_counter()
        sent = 0
        while sent < rows:
            chunk = []
            for _ in range(min(1_000, rows - sent)):
                s = random.choice(symbols)
                mids[s] *= 1 + random.gauss(0, 1e-4)
                mid = mids[s]
                chunk.append(BookTicker("binance_spot", s, round(mid * 0.9999, 4), 1.0, round(mid * 1.0001, 4), 1.0,
                                        now_us()))
            sent += await db.insert_book_ticker_snapshots(chunk)
        await db.flush()
        elapsed = time.perf_counter() - started
        latest = await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT, symbols[:3])
        stats = await db.get_database_stats()
        w = stats["writers"]["book_tickers"]
        print(f"wrote {w['rows_committed']:,} book tickers in {elapsed:.2f}s "
              f"({w['rows_committed'] / elapsed:,.0f} rows/s, {w['batches_committed']} batches, "
              f"commit p99 {w['commit_p99_ms']:.1f} ms)")
        for t in latest:
            print(f"  {t.exchange} {t.symbol}: bid {t.bid_price} / ask {t.ask_price}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="book tickers to write (default 100000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is not available on Windows
        runner = asyncio.run
    try:
        runner(demo(args.rows))
    except HftdbError as exc:
        print(f"hftdb: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

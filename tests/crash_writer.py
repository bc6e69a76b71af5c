"""A writer process for tests/test_crash_prefix.py: it ingests numbered book tickers until it is killed.

Run as ``python crash_writer.py DSN CONFIG_JSON``. Rows get update ids 1, 2, 3, ... in the order the writer
accepts them. After every insert call it prints one line to stdout::

    progress <accepted> <durable> <batches_spooled> <retries>

where ``durable`` counts the rows the writer holds committed or in fsynced spool files (accepted minus the rows it
still holds in memory). ``full`` is printed when an insert call got ``BufferFullError``. With
``stall_spool_write: k`` in the config, the k-th spool file stalls in its fsync (a very slow disk) after printing
``stalled``, so the parent can kill the process while a spool file is half made.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hftdb import BufferFullError, DatabaseManager, ExchangeName  # noqa: E402

from helpers import settings, tickers  # noqa: E402


def _stall_spool_fsync(at: int) -> None:
    real_fsync = os.fsync
    seen = 0

    def fsync(fd: int) -> None:
        nonlocal seen
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            seen += 1
            if seen == at:
                print("stalled", flush=True)
                time.sleep(3600)  # blocks the event loop too: nothing moves until the parent kills us
        real_fsync(fd)

    os.fsync = fsync


async def main(dsn: str, config: dict) -> None:
    if config.get("stall_spool_write"):
        _stall_spool_fsync(config["stall_spool_write"])
    cfg = settings(Path(config["tmp"]), **config["writer"])
    chunk = config["chunk"]
    db = DatabaseManager(dsn, settings=cfg)
    await db.initialize()
    await db.insert_exchange(ExchangeName.BINANCE_SPOT)
    sent = 0
    while True:
        try:
            sent += await db.insert_book_ticker_snapshots(tickers(chunk, start_id=sent + 1))
        except BufferFullError:
            print("full", flush=True)
        snap = db.writer_stats("book_tickers")
        durable = snap["rows_accepted"] - snap["rows_in_memory"]
        print("progress", sent, durable, snap["batches_spooled"], snap["retries"], flush=True)
        # Paced so that batches seal by age as well as by size, as they do under a live feed.
        await asyncio.sleep(config["pause_s"])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))

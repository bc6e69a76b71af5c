"""The exchange simulator's own cost per frame: can one simulator process offer a rate honestly?

The simulator runs in its own process (uvloop) with only its binance_usdm market generating, ``--symbols``
instruments at ``--rate`` book updates a second. A bare picows client in this process subscribes every
``<symbol>@bookTicker`` and only counts frames. After a 2 s warm-up, for ``--seconds``: frames the simulator's
ledger says it wrote, frames the client received, and the simulator process's CPU time (``process_time``), so
CPU per frame = simulator CPU seconds / frames written.

    .venv/bin/python benchmarks/bench_simulator.py --rate 50000 --seconds 5 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hftdb.models import ExchangeName  # noqa: E402

USDM = ExchangeName.BINANCE_USDM


def _simulator_proc(rate: float, n_symbols: int, conn: Any) -> None:
    import uvloop

    from hftdb.simulator import ExchangeSimulator

    async def main() -> None:
        sim = ExchangeSimulator(rate=rate, symbols=n_symbols, seed=7)
        sim.markets = {USDM: sim.markets[USDM]}  # nobody subscribes to the other venues
        loop = asyncio.get_running_loop()
        async with sim:
            conn.send((sim.ws_url(USDM), sim.symbols(USDM)))
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                conn.send((time.process_time(), sim.ledger.frames(USDM.value, "bookTicker")))
                if msg == "stop":
                    return

    uvloop.run(main())


async def run_once(rate: float, n_symbols: int, seconds: float) -> dict[str, float]:
    from picows import WSListener, WSMsgType, ws_connect

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_simulator_proc, args=(rate, n_symbols, child), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    try:
        url, symbols = await loop.run_in_executor(None, parent.recv)
        received = [0]

        class Counter(WSListener):
            def on_ws_frame(self, transport, frame) -> None:  # noqa: ANN001
                received[0] += 1

        transport, _ = await ws_connect(Counter, url + "/stream")
        streams = [f"{s.lower()}@bookTicker" for s in symbols]
        for i in range(0, len(streams), 200):
            request = {"method": "SUBSCRIBE", "params": streams[i:i + 200], "id": i + 1}
            transport.send(WSMsgType.TEXT, json.dumps(request).encode())
            await asyncio.sleep(0.15)  # within the venue's 10 messages a second
        await asyncio.sleep(2.0)

        async def mark() -> tuple[float, int, float, int]:
            parent.send("mark")
            cpu, frames = await loop.run_in_executor(None, parent.recv)
            return cpu, frames, time.time(), received[0]

        c0, f0, t0, n0 = await mark()
        await asyncio.sleep(seconds)
        c1, f1, t1, n1 = await mark()
        transport.disconnect()
        parent.send("stop")
        await loop.run_in_executor(None, parent.recv)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return {"written": (f1 - f0) / (t1 - t0), "received": (n1 - n0) / (t1 - t0), "cpu": (c1 - c0) / (t1 - t0),
            "us_per_frame": (c1 - c0) / max(1, f1 - f0) * 1e6}


async def main(args: argparse.Namespace) -> None:
    runs = []
    for i in range(args.runs):
        r = await run_once(args.rate, args.symbols, args.seconds)
        runs.append(r)
        print(f"run {i + 1}: written {r['written']:,.0f}/s, received {r['received']:,.0f}/s, simulator CPU "
              f"{r['cpu'] * 100:.0f}% of a core, {r['us_per_frame']:.2f} us/frame", flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median of {args.runs}: offered {args.rate:,.0f}/s, written {med['written']:,.0f}/s, CPU "
          f"{med['cpu'] * 100:.0f}%, {med['us_per_frame']:.2f} us/frame")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=50_000.0, help="offered book updates per second (default 50,000)")
    p.add_argument("--symbols", type=int, default=1_000, help="instruments (default 1,000)")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window (default 5)")
    p.add_argument("--runs", type=int, default=3, help="runs; medians (default 3)")
    import uvloop

    uvloop.run(main(p.parse_args()))

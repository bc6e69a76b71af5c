"""``python -m hftdb.simulator``: run the exchange simulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from .core import Limits
from .server import ExchangeSimulator, argument_problem


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hftdb.simulator", description="Local Binance/Bybit/OKX simulator on loopback.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="first port: hosts bind PORT..PORT+3 (default 0: free ports)")
    p.add_argument("--rate", type=float, default=200.0, help="book updates per second per market (default 200)")
    p.add_argument("--symbols", type=int, default=10, help="instruments per market (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--funding-interval", type=float, default=1.0, help="seconds between funding updates per symbol")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return p


def _problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, checked before anything is built (a huge --symbols would take all
    memory first); None if nothing."""
    problem = argument_problem(port=args.port, rate=args.rate, symbols=args.symbols,
                               funding_interval=args.funding_interval)
    return None if problem is None else f"--{problem[0].replace('_', '-')} {problem[1]}"


async def _main(args: argparse.Namespace) -> None:
    sim = ExchangeSimulator(
        host=args.host, port=args.port, rate=args.rate, symbols=args.symbols, seed=args.seed,
        limits=Limits(funding_interval=args.funding_interval),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with sim:
        for name, port in sim.ports.items():
            print(f"{name:<13} http://{args.host}:{port}  ws://{args.host}:{port}", flush=True)
        c = sim.credentials
        print(f"api key {c.api_key!r}, secret {c.api_secret!r}, passphrase {c.passphrase!r}", flush=True)
        await stop.wait()
        print(f"sent {sim.ledger.messages()} data messages", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m hftdb.simulator``."""
    parser = _parser()
    args = parser.parse_args(argv)
    problem = _problem(args)
    if problem is not None:
        parser.error(problem)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()

"""hftdb's daemon: stream the exchanges into PostgreSQL until SIGINT or SIGTERM.

    python run.py              live exchanges (Binance, Bybit, OKX) per config/default.toml
    python run.py --demo       the same daemon against a local exchange simulator (no internet needed)

Configuration: --config PATH, else $HFTDB_CONFIG, else ./config/default.toml; every key can be overridden by
HFTDB_<SECTION>_<KEY>. With no DSN, PostgreSQL is embedded in ./data/postgres. The first SIGINT/SIGTERM stops
the feeds, flushes every writer and exits 0 with a one-line summary; a second one forces the stop. The work is
done by hftdb.service.daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from hftdb.config import load_settings, locate_config
from hftdb.service.daemon import serve
from hftdb.errors import HftdbError
from hftdb.service.logsetup import configure_logging, report_fatal


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", help="TOML settings (default: $HFTDB_CONFIG, else ./config/default.toml)")
    p.add_argument("--demo", action="store_true", help="stream from the in-process exchange simulator, into [demo] database")
    p.add_argument("--ledger", metavar="PATH",
                   help="with --demo: write what the simulator sent to this JSON file at exit "
                   "(checked before the start; exit 1 if it cannot be written)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Load the configuration, run the daemon under uvloop, print its summary; the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ledger and not args.demo:
        parser.error("--ledger needs --demo")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is not available on Windows
        runner = asyncio.run
    try:
        settings = load_settings(locate_config(args.config))
        configure_logging(settings.logging)
        # serve() installs the signal handlers and closes everything it started, also on error, before returning.
        summary = runner(serve(settings, demo=args.demo, ledger_file=args.ledger))
    except HftdbError as exc:
        report_fatal(str(exc))  # into the configured log too (as JSON, into the file), and one line on stderr
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("hftdb: stop forced; uncommitted rows were spooled for the next start", file=sys.stderr)
        return 130
    print(summary.line())
    return 1 if summary.ledger_error else 0  # the ledger asked for is missing


if __name__ == "__main__":
    sys.exit(main())

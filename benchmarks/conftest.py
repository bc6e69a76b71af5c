"""Fixtures of the pytest-benchmark suites in benchmarks/ (outside the default test run: testpaths = ["tests"]).

Run from the checkout root, so pyproject.toml's pytest settings (asyncio_mode, loop scopes, filterwarnings)
apply::

    .venv/bin/python -m pytest benchmarks/bench_cache.py --benchmark-only

The database is an embedded PostgreSQL in a temp dir, or ``HFTDB_BENCH_DSN``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Import this checkout's hftdb whatever the state of the venv's (editable) install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hftdb import DatabaseManager, DatabaseSettings, ExchangeName, Settings, Symbol, WriterSettings  # noqa: E402
from hftdb.db.server import EmbeddedServer  # noqa: E402

WARM_SYMBOLS = 10_000


def symbol_name(i: int) -> str:
    return f"S{i:05d}USDT"


@pytest.fixture(scope="session")
async def bench_dsn(tmp_path_factory):
    env = os.environ.get("HFTDB_BENCH_DSN")
    if env:
        yield env
        return
    server = EmbeddedServer(tmp_path_factory.mktemp("benchpg") / "data")
    dsn = await server.start()
    try:
        yield dsn
    finally:
        await server.stop()


@pytest.fixture(scope="session")
async def warm_db(bench_dsn):
    """A DatabaseManager whose symbol cache holds WARM_SYMBOLS symbols of binance_spot."""
    settings = Settings(database=DatabaseSettings(dsn=bench_dsn), writer=WriterSettings(spool_dir=None))
    async with DatabaseManager(bench_dsn, settings=settings) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.sync_symbols(
            ExchangeName.BINANCE_SPOT,
            [Symbol(exchange_id=ex.id, symbol=symbol_name(i)) for i in range(WARM_SYMBOLS)],  # type: ignore[arg-type]
        )
        yield db

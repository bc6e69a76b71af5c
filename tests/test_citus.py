"""hftdb on a real Citus cluster (a coordinator and two workers the tests start, see tests/citus_cluster.py).

Skipped, with the reason, where no PostgreSQL with the citus extension is installed (CI): the default suite runs
on the embedded server, which has no Citus.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from hftdb import citus
from hftdb.schema import migrate

from citus_cluster import CitusCluster, find_citus_bin

CITUS_BIN, WHY_NOT = find_citus_bin()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CITUS_BIN is None, reason=WHY_NOT)]

WAIT = 60.0


@pytest.fixture(scope="session")
async def citus_cluster():
    cluster = CitusCluster(CITUS_BIN)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def citus_dsn(citus_cluster):
    """The coordinator's DSN of a fresh database with the citus extension and two workers."""
    dsn = await citus_cluster.new_database(workers=2)
    try:
        yield dsn
    finally:
        await citus_cluster.drop_database(dsn.rsplit("/", 1)[1])


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=30)


async def _until(condition, what: str, *, timeout: float = WAIT) -> None:
    """Wait until ``condition()`` (awaitable of a bool) holds, polling; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


async def test_migrate_and_distribute_lays_out_the_tables(citus_dsn):
    conn = await _connect(citus_dsn)
    try:
        await migrate(conn)
        assert await citus.layout_problems(conn) is None  # nothing distributed yet
        report = await citus.distribute(conn)
        assert report.reference == ["exchanges", "symbols"]
        assert sorted(report.distributed) == sorted(citus.LAYOUT)
        assert await citus.layout_problems(conn) == []
        again = await citus.distribute(conn)
        assert not again.changed
        kinds = {r["t"]: r["k"] for r in await conn.fetch(
            "SELECT table_name::text AS t, citus_table_type AS k FROM citus_tables")}
        assert "ingest_batches" not in kinds
        history = await conn.fetchval("SELECT colocation_id FROM citus_tables WHERE table_name = 'book_tickers'::regclass")
        latest = await conn.fetchval(
            "SELECT colocation_id FROM citus_tables WHERE table_name = 'book_tickers_latest'::regclass")
        assert history != latest
    finally:
        await conn.close()

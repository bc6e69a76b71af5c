"""Shared fixtures: one real PostgreSQL per session, a fresh database per test.

The server is the embedded one (pgserver) unless ``HFTDB_TEST_DSN`` names another; that role needs CREATEDB.
Fault tests that restart or kill a server use ``fault_server``, a private embedded server of their own.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from hftdb.db.server import EmbeddedServer

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "exchanges"


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointing at ``database`` instead of its own."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        # Skipped, not failed: a clone on its own runs every test that does not replay a recorded payload.
        pytest.skip(f"exchange fixtures not found at {FIXTURES}: the shared/ folder must sit beside the checkout")
    return FIXTURES


@pytest.fixture(scope="session")
async def pg_admin_dsn(tmp_path_factory):
    env = os.environ.get("HFTDB_TEST_DSN")
    if env:
        yield env
        return
    server = EmbeddedServer(tmp_path_factory.mktemp("pg") / "data")
    dsn = await server.start()
    try:
        yield dsn
    finally:
        await server.stop()


async def _create_database(admin_dsn: str) -> tuple[str, str]:
    name = "hftdb_t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, with_database(admin_dsn, name)


async def _drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def dsn(pg_admin_dsn):
    """DSN of a fresh, empty database, dropped after the test."""
    name, test_dsn = await _create_database(pg_admin_dsn)
    try:
        yield test_dsn
    finally:
        await _drop_database(pg_admin_dsn, name)


@pytest.fixture
async def fault_server(tmp_path):
    """A private embedded server that the test may restart, kill and start again."""
    server = EmbeddedServer(tmp_path / "faultpg")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()

"""ReadPool: the read pools' held connections, against a real server.

A held connection must behave like a freshly acquired one: a dead one is replaced, a failed or cancelled statement
hands its connection back to the pool, concurrent reads each get their own connection, and closing the pool hands
every held connection back first (asyncpg's close waits for checked-out connections, so a leak would hang it).
"""

import asyncio

import asyncpg
import pytest

from hftdb.read.replicas import ReadPool

CLOSE_WAIT = 30.0  # a hang guard, not a timing assertion


async def _pool(dsn: str, size: int = 3) -> ReadPool:
    return ReadPool(await asyncpg.create_pool(dsn, min_size=0, max_size=size), hold=2)


async def test_reads_reuse_one_held_connection(dsn):
    pool = await _pool(dsn)
    try:
        pids = {await pool.fetchval("SELECT pg_backend_pid()") for _ in range(20)}
        assert len(pids) == 1
        assert pool.held == 1
        assert (await pool.fetch("SELECT g FROM generate_series(1, 3) g"))[2][0] == 3
        assert (await pool.fetchrow("SELECT 7 AS x"))["x"] == 7
        assert pool.held == 1
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_WAIT)
    assert pool.held == 0
    assert pool.is_closing()


async def test_a_terminated_held_connection_is_replaced(dsn):
    pool = await _pool(dsn)
    try:
        first = await pool.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the server's FATAL message and EOF reach the connection: it is now closed
        second = await pool.fetchval("SELECT pg_backend_pid()")  # on a fresh connection, as acquire would give
        assert second != first
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_WAIT)


async def test_a_failed_statement_hands_the_connection_back(dsn):
    pool = await _pool(dsn)
    try:
        await pool.fetchval("SELECT 1")
        assert pool.held == 1
        with pytest.raises(asyncpg.DivisionByZeroError):
            await pool.fetchval("SELECT 1 / 0")
        assert pool.held == 0
        assert await pool.fetchval("SELECT 2") == 2
        assert pool.held == 1
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_WAIT)


async def test_a_cancelled_read_hands_the_connection_back(dsn):
    pool = await _pool(dsn)
    try:
        task = asyncio.create_task(pool.fetchval("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.held == 0
        # The pool's release waited out the cancellation: the next read answers, on a clean connection.
        assert await pool.fetchval("SELECT 3") == 3
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_WAIT)


async def test_concurrent_reads_get_their_own_connections(dsn):
    pool = await _pool(dsn, size=4)
    try:
        pids = await asyncio.gather(*(pool.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.2)") for _ in range(4)))
        assert len(set(pids)) == 4
        assert pool.held == 2  # the rest went back to the pool
        assert pool.get_idle_size() == 2
    finally:
        await asyncio.wait_for(pool.close(), CLOSE_WAIT)

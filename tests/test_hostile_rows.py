"""Hostile rows on every public write path: text the database cannot hold, values it refuses, exact duplicates.

A bad row is rejected alone, counted by reason, and the call returns promptly with the good rows beside it stored
exactly once. Every call is bounded by ``asyncio.wait_for``: before the fix, a NUL in a symbol made registration
fail with a server encoding error that was taken for an outage and retried forever.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from hftdb import Balance, BookTicker, DatabaseManager, ExchangeName, FundingRate, Symbol, ValidationError, now_us
from hftdb import dberrors

from helpers import settings, tickers

#: Bound on a call that must return at once (generous: the machine is shared). Not a timing assertion: a hang
#: fails the test instead of stalling it until the suite's timeout.
BOUND = 20.0

BAD_TEXT = {"nul": "BAD\x00USDT", "surrogate": "BAD\ud800USDT", "control": "BAD\x07USDT", "newline": "BAD\nUSDT"}


async def _count(db: DatabaseManager, sql: str, *args: object) -> int:
    async with db.pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


def _bad_tickers(t: int) -> list[BookTicker]:
    return [BookTicker("binance_spot", sym, 1.0, 1.0, 1.1, 1.0, t + i, update_id=10_000 + i)
            for i, sym in enumerate(BAD_TEXT.values())]


@pytest.mark.parametrize("size", [20, 400])  # the per-row path, and a call big enough to be offered to vector.py
async def test_bad_symbols_are_rejected_and_good_rows_stored(dsn, tmp_path, size):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        good = tickers(size, symbols=5)
        rows = good[: size // 2] + _bad_tickers(good[0].recv_ts) + good[size // 2:]
        taken = await asyncio.wait_for(db.insert_book_ticker_snapshots(rows), BOUND)
        assert taken == size
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == size
        assert await _count(db, "SELECT count(DISTINCT update_id) FROM book_tickers") == size
        assert db.writer("book_tickers").rejects.counts == {"symbol_bad_char": len(BAD_TEXT)}
        assert await _count(db, "SELECT count(*) FROM symbols") == 5
        # The writer goes on: a later call (cached names, vectorized when big) is stored too.
        more = tickers(size, start_id=size, symbols=5)
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(more), BOUND) == size
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == 2 * size


async def test_bad_exchange_names_are_rejected_alone(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        good = tickers(10, symbols=2)
        t = good[0].recv_ts
        bad = [BookTicker("binance\x00spot", "BTCUSDT", 1.0, 1.0, 1.1, 1.0, t),
               BookTicker("binance\udfffspot", "BTCUSDT", 1.0, 1.0, 1.1, 1.0, t)]
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(good + bad), BOUND) == 10
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == 10
        assert db.writer("book_tickers").rejects.counts == {"exchange_bad_char": 2}
        with pytest.raises(ValidationError):
            await db.insert_exchange("bad\x00name")


async def test_bad_funding_symbols_are_rejected(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        t = now_us()
        good = [FundingRate("binance_usdm", f"S{i % 3}USDT", 0.0001, t + i) for i in range(9)]
        bad = [FundingRate("binance_usdm", sym, 0.0001, t) for sym in BAD_TEXT.values()]
        assert await asyncio.wait_for(db.insert_funding_rates(good[:4] + bad + good[4:]), BOUND) == 9
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM funding_rates") == 9
        assert db.writer("funding_rates").rejects.counts == {"symbol_bad_char": len(BAD_TEXT)}


async def test_bad_balance_text_is_rejected(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        good = [Balance(exchange="binance_spot", account="main", asset=f"A{i}", free=Decimal(i), locked=Decimal(0),
                        recv_ts=t + i) for i in range(6)]
        bad = [Balance(exchange="binance_spot", account="main", asset=v, free=Decimal(1), locked=Decimal(0),
                       recv_ts=t) for v in ("U\x00SDT", "U\ud800SDT", "U\x1bSDT")]
        bad += [Balance(exchange="binance_spot", account=v, asset="USDT", free=Decimal(1), locked=Decimal(0),
                        recv_ts=t) for v in ("ma\x00in", "ma\udc80in")]
        bad += [Balance(exchange="binance\x00spot", account="main", asset="USDT", free=Decimal(1),
                        locked=Decimal(0), recv_ts=t)]
        taken = await asyncio.wait_for(db.insert_balance_snapshots(good[:3] + bad + good[3:]), BOUND)
        assert taken == 6
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM balances") == 6
        assert await _count(db, "SELECT count(*) FROM balances_latest") == 6
        assert db.writer("balances").rejects.counts == {
            "asset_bad_char": 3, "account_bad_char": 2, "exchange_bad_char": 1}


async def test_units_of_work_refuse_bad_text_with_a_validation_error(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        for bad in BAD_TEXT.values():
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await asyncio.wait_for(uow.insert_book_ticker_snapshots(
                        [BookTicker("binance_spot", bad, 1.0, 1.0, 1.1, 1.0, t)]), BOUND)
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol=bad))
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await uow.insert_balance_snapshots([Balance(
                        exchange="binance_spot", account=bad, asset="USDT", free=Decimal(1), locked=Decimal(0),
                        recv_ts=t)])
        # A clean unit still commits after all that.
        async with db.transaction() as uow:
            sym = await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol="GOODUSDT"))
            assert await uow.insert_book_ticker_snapshots(
                [BookTicker("binance_spot", "GOODUSDT", 1.0, 1.0, 1.1, 1.0, t + 1, symbol_id=sym.id)]) == 1
        assert await _count(db, "SELECT count(*) FROM book_tickers") == 1
        assert await _count(db, "SELECT count(*) FROM symbols") == 1


async def test_columns_path_beside_bad_rows(dsn, tmp_path):
    np = pytest.importorskip("numpy")
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()
        await asyncio.wait_for(db.insert_book_ticker_snapshots(_bad_tickers(t)), BOUND)
        n = 300
        ids = np.full(n, sym.id)
        ids[7] = 2**31 + 5  # no symbol has it (outside int4): rejected, not a failed lookup
        taken = await asyncio.wait_for(db.insert_book_ticker_columns(
            ids, np.full(n, 1.0), np.full(n, 2.0), np.full(n, 1.5), np.full(n, 3.0), np.arange(n) + t,
            update_id=np.arange(n)), BOUND)
        assert taken == n - 1
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _count(db, "SELECT count(*) FROM book_tickers") == n - 1
        assert db.writer("book_tickers").rejects.counts == {"symbol_bad_char": len(BAD_TEXT),
                                                            "unknown_symbol_id": 1}


def test_classify_by_sqlstate():
    assert dberrors.classify(asyncpg.exceptions.AdminShutdownError("x")) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.CannotConnectNowError("x")) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.ConnectionFailureError("x")) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.TooManyConnectionsError("x")) == dberrors.WAIT
    assert dberrors.classify(ConnectionResetError()) == dberrors.WAIT
    assert dberrors.classify(asyncio.TimeoutError()) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.CharacterNotInRepertoireError("x")) == dberrors.DATA
    assert dberrors.classify(asyncpg.exceptions.UntranslatableCharacterError("x")) == dberrors.DATA
    assert dberrors.classify(asyncpg.exceptions.NumericValueOutOfRangeError("x")) == dberrors.DATA
    assert dberrors.classify(asyncpg.exceptions.CheckViolationError("violates check constraint")) == dberrors.DATA
    assert dberrors.classify(asyncpg.exceptions.CheckViolationError(
        'no partition of relation "book_tickers" found for row')) == dberrors.WAIT
    assert dberrors.classify(asyncpg.exceptions.InsufficientPrivilegeError("x")) == dberrors.OTHER
    assert dberrors.classify(ValueError("x")) == dberrors.OTHER

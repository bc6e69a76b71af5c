"""Misuse of the write API: an element that is not a record, a value no column holds, an argument of the wrong kind.

A bad element is rejected alone and counted by reason; the good rows of the call are stored. An argument that is
not a collection of rows at all, or a bad option, is a ValidationError, never a bare Python exception.
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import msgspec
import pytest

from hftdb import Balance, BookTicker, DatabaseManager, ExchangeName, FundingRate, ValidationError, now_us
from hftdb.wire import loader

from helpers import settings, sql, tickers

BOUND = 20.0
NOT_RECORDS = [{"bid_price": 1.0}, None, ("binance_spot", "SYM0USDT"), "SYM0USDT"]


async def _stored(db: DatabaseManager, table: str) -> int:
    await asyncio.wait_for(db.flush(), BOUND)
    return await sql(db).fetchval(f"SELECT count(*) FROM {table}")  # table: from the tests' own fixed names


def _funding(n: int, t: int) -> list[FundingRate]:
    return [FundingRate("binance_usdm", f"S{i % 3}USDT", 0.0001, t + i) for i in range(n)]


def _balances(n: int, t: int) -> list[Balance]:
    return [Balance(exchange="binance_spot", asset=f"A{i}", free=Decimal(i + 1), locked=Decimal(0), recv_ts=t + i)
            for i in range(n)]


@pytest.mark.parametrize("size", [4, 40, 600])  # per row; offered to the vectorized path; sliced (batch 250)
@pytest.mark.parametrize("named", [True, False])
async def test_non_records_among_book_tickers_are_rejected_alone(dsn, tmp_path, size, named):
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=250)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        good = tickers(size, symbols=3)
        if not named:
            await db.insert_book_ticker_snapshots(good[:3])
            ids = {s.symbol: s.id for s in await db.get_symbols_by_exchange("binance_spot")}
            good = [BookTicker(r.exchange, r.symbol, r.bid_price, r.bid_qty, r.ask_price, r.ask_qty, r.recv_ts,
                               exchange_ts=r.exchange_ts, update_id=r.update_id, symbol_id=ids[r.symbol])
                    for r in good]
        bad = NOT_RECORDS + [FundingRate("binance_spot", "SYM0USDT", 0.0001, now_us())]
        rows = [bad[0]] + good[: size // 2] + bad[1:] + good[size // 2:]
        before = await _stored(db, "book_tickers")
        assert await asyncio.wait_for(db.insert_book_ticker_snapshots(rows), BOUND) == size
        assert await _stored(db, "book_tickers") - before == size
        assert db.writer_stats("book_tickers")["rejects"] == {"not_a_book_ticker": len(bad)}


async def test_non_records_among_funding_rates_and_balances_are_rejected_alone(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        ticker = tickers(1)[0]
        assert await db.insert_funding_rates(_funding(5, t) + NOT_RECORDS + [ticker]) == 5
        assert await _stored(db, "funding_rates") == 5
        assert db.writer_stats("funding_rates")["rejects"] == {"not_a_funding_rate": len(NOT_RECORDS) + 1}
        assert await db.insert_balance_snapshots(_balances(5, t) + NOT_RECORDS + [ticker]) == 5
        assert await _stored(db, "balances") == 5
        assert db.writer_stats("balances")["rejects"] == {"not_a_balance": len(NOT_RECORDS) + 1}


@pytest.mark.parametrize("arg", ["record", None, 5, "text", {"a": 1}])
async def test_a_write_call_wants_a_collection_of_records(dsn, tmp_path, arg):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        t = now_us()
        calls = [(db.insert_book_ticker_snapshots, tickers(1)[0]), (db.insert_funding_rates, _funding(1, t)[0]),
                 (db.insert_balance_snapshots, _balances(1, t)[0])]
        for insert, record in calls:
            with pytest.raises(ValidationError, match="list"):
                await insert(record if arg == "record" else arg)


async def test_values_no_column_holds_are_rejected_alone(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        huge = 10 ** 400
        rates = _funding(3, t) + [FundingRate("binance_usdm", "S0USDT", huge, t),
                                  FundingRate("binance_usdm", "S0USDT", 0.1, t, mark_price=huge)]
        assert await db.insert_funding_rates(rates) == 3
        assert db.writer_stats("funding_rates")["rejects"] == {"rate_not_finite": 1, "mark_price_infinite": 1}
        assert await _stored(db, "funding_rates") == 3
        amounts = [Decimal("1e131072"), Decimal("1e1000"), Decimal("-1e400"), Decimal("1e-20000")]
        balances = _balances(3, t) + [Balance(exchange="binance_spot", asset="X", free=a, locked=Decimal(0), recv_ts=t)
                                      for a in amounts]
        assert await db.insert_balance_snapshots(balances) == 3
        assert db.writer_stats("balances")["rejects"] == {"amount_out_of_range": len(amounts)}
        assert await _stored(db, "balances") == 3
        good = tickers(3)
        bad = [BookTicker("binance_spot", "SYM0USDT", huge, 1.0, 1.0, 1.0, t),
               BookTicker("binance_spot", "SYM0USDT", huge, 1.0, huge, 1.0, t)]
        assert await db.insert_book_ticker_snapshots(good + bad) == 3
        assert db.writer_stats("book_tickers")["rejects"] == {"bid_price_infinite": 2}
        assert await _stored(db, "book_tickers") == 3


@pytest.mark.parametrize("exchange", [None, 1])
async def test_an_exchange_of_the_wrong_type_rejects_its_row_alone(dsn, tmp_path, exchange):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        bt = tickers(3) + [BookTicker(exchange, "SYM0USDT", 1.0, 1.0, 1.1, 1.0, t)]  # type: ignore[arg-type]
        assert await db.insert_book_ticker_snapshots(bt) == 3
        fr = _funding(3, t) + [FundingRate(exchange, "S0USDT", 0.1, t)]  # type: ignore[arg-type]
        assert await db.insert_funding_rates(fr) == 3
        bal = _balances(3, t) + [Balance(exchange=exchange, asset="X", free=Decimal(1),  # type: ignore[arg-type]
                                         locked=Decimal(0), recv_ts=t)]
        assert await db.insert_balance_snapshots(bal) == 3
        for table in ("book_tickers", "funding_rates", "balances"):
            assert db.writer_stats(table)["rejects"] == {"exchange_wrong_type": 1}
            assert await _stored(db, table) == 3


async def test_columns_of_the_wrong_shape_or_type_are_validation_errors(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        t = now_us()
        prices = [1.0, 1.0]
        with pytest.raises(ValidationError, match="symbol_ids"):
            await db.insert_book_ticker_columns([[1, 2]], prices, prices, prices, prices, [t, t])
        with pytest.raises(ValidationError, match="symbol_ids"):
            await db.insert_book_ticker_columns(1, prices, prices, prices, prices, [t, t])
        with pytest.raises(ValidationError, match="recv_ts"):
            await db.insert_book_ticker_columns([1, 1], prices, prices, prices, prices, [t, 2 ** 64])
        # numpy would take True as 1.0 and cut a float time to an int: a column of bools, or a time or id column of
        # floats, is a mistake in the call.
        with pytest.raises(ValidationError, match="bid_qty"):
            await db.insert_book_ticker_columns([1, 1], prices, [True, True], prices, prices, [t, t])
        with pytest.raises(ValidationError, match="recv_ts"):
            await db.insert_book_ticker_columns([1, 1], prices, prices, prices, prices, [t + 0.5, t + 1.5])
        with pytest.raises(ValidationError, match="update_id"):
            await db.insert_book_ticker_columns([1, 1], prices, prices, prices, prices, [t, t], update_id=[1.0, 2.0])
        with pytest.raises(ValidationError, match="symbol_ids"):
            await db.insert_book_ticker_columns([True, True], prices, prices, prices, prices, [t, t])


@pytest.mark.parametrize("days", [float("nan"), float("inf"), 1e300, 10 ** 400, -1, 0],
                         ids=["nan", "inf", "1e300", "10**400", "-1", "0"])
async def test_day_counts_out_of_range_are_validation_errors(dsn, tmp_path, days):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        with pytest.raises(ValidationError, match="retention"):
            await db.cleanup_old_data(days, dry_run=True)
        with pytest.raises(ValidationError, match="older_than"):
            await db.archive_partitions(days, dry_run=True)


@pytest.mark.parametrize("tables", [5, "book_tickers", b"x"])
async def test_archive_tables_must_be_a_list_of_names(dsn, tmp_path, tables):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        with pytest.raises(ValidationError, match="list of table names"):
            await db.archive_partitions(1, tables=tables, dry_run=True)


@pytest.mark.parametrize("timeout", ["x", -1, float("nan"), float("inf"), True])
async def test_a_bad_timeout_is_a_validation_error(dsn, tmp_path, timeout):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        with pytest.raises(ValidationError, match="timeout"):
            await db.flush(timeout=timeout)
        with pytest.raises(ValidationError, match="timeout"):
            await db.health_check(timeout=timeout)
        with pytest.raises(ValidationError, match="timeout"):
            await db.close(timeout=timeout)


async def test_a_flush_that_times_out_says_how_many_rows_are_pending(dsn, tmp_path):
    # A writer that waits a minute before committing: a 0 s flush cannot finish, whatever the machine's speed.
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_age_ms=60_000.0)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(5))
        with pytest.raises(TimeoutError, match=r"\d+ row\(s\) still pending"):
            await db.flush(timeout=0)
        await asyncio.wait_for(db.flush(), BOUND)
        assert await _stored(db, "book_tickers") == 5


_BOOK_NUMBERS = ("bid_price", "bid_qty", "ask_price", "ask_qty", "update_id", "recv_ts", "exchange_ts")


@pytest.mark.parametrize("size", [1, 40, 600])  # alone; offered to the vectorized path; sliced (batch 250)
@pytest.mark.parametrize("native", [True, False])
async def test_a_bool_where_a_number_goes_is_rejected_alone(dsn, tmp_path, size, native):
    # bool is an int in Python, and struct and numpy take True as 1 (1.0): a row holding one was once stored with
    # a price of 1.0. The rules name it a wrong type; its row goes alone, on every path.
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=250)) as db:
        for exchange in (ExchangeName.BINANCE_SPOT, ExchangeName.BINANCE_USDM):
            await db.insert_exchange(exchange)
        t = now_us()
        await db.insert_book_ticker_snapshots(tickers(3, start_id=2, symbols=3))
        with contextlib.nullcontext() if native else loader.disabled():
            for k, field in enumerate(_BOOK_NUMBERS):
                for value in (True, False):
                    good = tickers(size, start_id=10_000 * (2 * k + value + 1), symbols=3)
                    bad = msgspec.structs.replace(good[0], **{field: value})
                    rows = good[: size // 2] + [bad] + good[size // 2:]
                    assert await asyncio.wait_for(db.insert_book_ticker_snapshots(rows), BOUND) == size
            rates = [FundingRate("binance_usdm", "S0USDT", True, t), FundingRate("binance_usdm", "S0USDT", 0.1, t,
                     mark_price=True), FundingRate("binance_usdm", "S0USDT", 0.1, t, index_price=False)]
            assert await db.insert_funding_rates(_funding(3, t) + rates) == 3
            balances = [Balance(exchange="binance_spot", asset="X", free=True, locked=Decimal(0), recv_ts=t),
                        Balance(exchange="binance_spot", asset="X", free=Decimal(1), locked=False, recv_ts=t)]
            assert await db.insert_balance_snapshots(_balances(3, t) + balances) == 3
        assert await _stored(db, "book_tickers") == 3 + 2 * len(_BOOK_NUMBERS) * size
        expected = {f"{f}_wrong_type": 2 for f in _BOOK_NUMBERS if f != "update_id"} | {"update_id_invalid": 2}
        assert db.writer_stats("book_tickers")["rejects"] == expected
        assert db.writer_stats("funding_rates")["rejects"] == {"rate_wrong_type": 1, "mark_price_wrong_type": 1,
                                                               "index_price_wrong_type": 1}
        assert db.writer_stats("balances")["rejects"] == {"amount_wrong_type": 2}
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers WHERE update_id IN (0, 1)") == 0

"""Misuse of the read path and the catalog: every mistake a caller can make is a typed hftdb error, raised before
any query, and a bad row already stored never fails a read with a bare exception."""

import logging
import math
from decimal import Decimal

import pytest

from hftdb import (Balance, BookTicker, DatabaseManager, ExchangeName, FundingRate, UnknownExchangeError,
                   UnknownSymbolError, ValidationError, now_us)

from helpers import settings, sql

try:
    import numpy as np
except ImportError:  # the numpy extra is optional
    np = None

HOUR_US = 3_600_000_000
#: PostgreSQL's timestamp range in Unix µs: Julian day 0 (4714-11-24 BC) up to, not including, 294277-01-01.
PG_TS_MIN_US = -210_866_803_200_000_000
PG_TS_END_US = 9_224_318_016_000_000_000

BAD_NAMES = ["bin\x00", "bin\ud800"]
NOT_NAMES = [5, ["a"], None]


async def _seed(db: DatabaseManager) -> tuple[int, int]:
    """One book ticker on binance_spot BTCUSDT and one funding rate on binance_usdm BTCUSDT; their symbol ids."""
    await db.insert_exchange(ExchangeName.BINANCE_SPOT)
    await db.insert_exchange(ExchangeName.BINANCE_USDM)
    t = now_us() - 1_000_000
    await db.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 100.0, 1.0, 100.5, 2.0, t)])
    await db.insert_funding_rates([FundingRate("binance_usdm", "BTCUSDT", 0.0001, t, next_funding_ts=t + HOUR_US)])
    await db.flush()
    return db.resolve_symbol_id("binance_spot", "BTCUSDT"), db.resolve_symbol_id("binance_usdm", "BTCUSDT")


async def test_names_no_name_can_hold_or_of_the_wrong_type_are_validation_errors(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        for bad in BAD_NAMES:
            with pytest.raises(ValidationError, match="printable"):
                await db.get_exchange_by_enum(bad)
            with pytest.raises(ValidationError, match="printable"):
                await db.get_latest_book_tickers(bad)
            with pytest.raises(ValidationError, match="printable"):
                await db.get_symbol("binance_spot", "BTC" + bad)
            with pytest.raises(ValidationError, match="printable"):
                await db.get_book_ticker_history("binance_spot", bad, hours=1)
            with pytest.raises(ValidationError, match="printable"):
                await db.get_funding_rate_history("binance_usdm", bad, hours=1)
            with pytest.raises(ValidationError, match="printable"):
                await db.get_latest_book_tickers("binance_spot", [bad])
        for bad in NOT_NAMES:
            with pytest.raises(ValidationError, match="symbol must be"):
                await db.get_symbol("binance_spot", bad)
            with pytest.raises(ValidationError, match="symbol must be"):
                await db.get_book_ticker_history("binance_spot", bad, hours=1)
            with pytest.raises(ValidationError, match="symbol must be"):
                await db.get_latest_funding_rates("binance_usdm", [bad])
        with pytest.raises(ValidationError, match="must be strings"):
            db.resolve_symbol_id("binance_spot", ["BTCUSDT"])
        # A printable name that is not there is simply unknown.
        with pytest.raises(UnknownExchangeError):
            await db.get_exchange_by_enum("nowhere")
        with pytest.raises(UnknownSymbolError):
            await db.get_symbol("binance_spot", "NOPE")
        assert (await db.get_symbol("binance_spot", "BTCUSDT")).symbol == "BTCUSDT"


async def test_symbol_status_filter_takes_the_schema_statuses_only(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        for bad in ("bogus", 5, ["trading"]):
            with pytest.raises(ValidationError, match="'trading', 'halted', 'delisted', 'unknown'"):
                await db.get_symbols_by_exchange("binance_spot", status=bad)
        assert [s.symbol for s in await db.get_symbols_by_exchange("binance_spot", status="unknown")] == ["BTCUSDT"]
        assert await db.get_symbols_by_exchange("binance_spot", status="trading") == []


async def test_symbol_ids_no_int4_holds_are_not_found(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        spot, usdm = await _seed(db)
        for sid in (2**31, 2**63, 0, -1):
            with pytest.raises(UnknownSymbolError):
                await db.get_symbol_by_id(sid)
        with pytest.raises(ValidationError, match="must be an int"):
            await db.get_symbol_by_id(True)
        assert await db.get_latest_book_tickers(symbol_ids=[2**31]) == []
        assert await db.get_latest_funding_rates(symbol_ids=[2**63, -2**63]) == []
        assert [r.symbol_id for r in await db.get_latest_book_tickers(symbol_ids=[2**31, spot, -1])] == [spot]
        async with db.latest_mirror("funding_rates", symbol_ids=[2**31, usdm]) as mirror:
            assert [r.symbol_id for r in mirror.snapshot()] == [usdm]


async def test_symbol_ids_that_are_no_list_of_ints_are_validation_errors(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        spot, _ = await _seed(db)
        for bad in (1, "12", [True], [1.0], [str(spot)], [None]):
            with pytest.raises(ValidationError, match="symbol_ids must be a list of integer ids"):
                await db.get_latest_book_tickers(symbol_ids=bad)
            with pytest.raises(ValidationError, match="symbol_ids must be a list of integer ids"):
                await db.get_latest_funding_rates(symbol_ids=bad)
        assert [r.symbol_id for r in await db.get_latest_book_tickers(symbol_ids=(spot,))] == [spot]


async def test_balance_accounts_and_assets_no_text_column_holds_are_validation_errors(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        for bad in [*NOT_NAMES[:2], *BAD_NAMES]:
            with pytest.raises(ValidationError, match="account must"):
                await db.get_latest_balances(account=bad)
            with pytest.raises(ValidationError, match="account must"):
                await db.get_balance_history("binance_spot", "BTC", account=bad, hours=1)
            with pytest.raises(ValidationError, match="asset must"):
                await db.get_balance_history("binance_spot", bad, hours=1)
        with pytest.raises(ValidationError, match="asset must"):
            await db.get_balance_history("binance_spot", None, hours=1)
        assert await db.get_latest_balances(account="default") == []
        assert await db.get_balance_history("binance_spot", "BTC", hours=1) == []


@pytest.mark.parametrize("kwargs, names", [
    ({"hours": math.nan}, "hours"),
    ({"hours": math.inf}, "hours"),
    ({"hours": True}, "hours"),
    ({"hours": 1e12}, "hours"),
    ({"hours": 1e300}, "hours"),
    ({"hours": 1, "end": "x"}, "end"),
    ({"hours": 1, "end": 9.4e18}, "end"),
    ({"start": -2**62}, "start"),
    ({"start": PG_TS_MIN_US - 1}, "start"),
    ({"start": 0, "end": 9_400_000_000_000_000_000}, "end"),
    ({"start": 0, "end": PG_TS_END_US}, "end"),
    ({"hours": 1, "limit": 2**63}, "limit"),
])
@pytest.mark.parametrize("fmt", ["objects", "numpy"])
async def test_history_windows_and_limits_outside_what_the_server_takes(dsn, tmp_path, kwargs, names, fmt):
    if fmt == "numpy" and np is None:
        pytest.skip("numpy is not installed")
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        reads = [
            db.get_book_ticker_history("binance_spot", "BTCUSDT", format=fmt, **kwargs),
            db.get_funding_rate_history("binance_usdm", "BTCUSDT", format=fmt, **kwargs),
            db.get_balance_history("binance_spot", "BTC", format=fmt, **kwargs),
        ]
        for read in reads:
            with pytest.raises(ValidationError, match=names):
                await read


@pytest.mark.parametrize("fmt", ["objects", "columns", "numpy"])
async def test_history_windows_end_where_the_server_range_ends(dsn, tmp_path, fmt):
    if fmt == "numpy" and np is None:
        pytest.skip("numpy is not installed")
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await _seed(db)
        for start, end in ((PG_TS_MIN_US - 1, 0), (0, PG_TS_END_US)):
            with pytest.raises(ValidationError, match="outside PostgreSQL's timestamp range"):
                await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=start, end=end, format=fmt)
        # Just inside, the server takes them.
        rows = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=PG_TS_MIN_US,
                                                end=PG_TS_END_US - 1, limit=2**63 - 1, format=fmt)
        assert len(rows if fmt == "objects" else rows["recv_ts"]) == 1
        rows = await db.get_balance_history("binance_spot", "BTC", start=PG_TS_MIN_US, end=PG_TS_END_US - 1,
                                            format=fmt)
        assert len(rows if fmt == "objects" else rows["recv_ts"]) == 0


async def test_a_latest_row_of_an_unregistered_symbol_id_is_skipped_not_raised(dsn, tmp_path, caplog):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        spot, usdm = await _seed(db)
        await sql(db).execute("INSERT INTO book_tickers_latest (symbol_id, recv_ts, bid_price, bid_qty, ask_price, "
                              "ask_qty) VALUES (99999, now(), 1, 1, 2, 1)")
        await sql(db).execute("INSERT INTO funding_rates_latest (symbol_id, recv_ts, rate) VALUES (99999, now(), 0)")
        with caplog.at_level(logging.WARNING, logger="hftdb"):
            for _ in range(3):  # every later read too, not just the first
                assert [r.symbol_id for r in await db.get_latest_book_tickers()] == [spot]
                assert [r.symbol_id for r in await db.get_latest_funding_rates()] == [usdm]
                assert await db.get_latest_book_tickers(symbol_ids=[99999]) == []
                got = await db.get_latest_book_tickers(symbol_ids=[99999, spot], primary=True)
                assert [r.symbol_id for r in got] == [spot]
        logged = [r.getMessage() for r in caplog.records if "99999" in r.getMessage()]
        assert len(logged) == 1, logged  # once, not once a read
        async with db.latest_mirror("book_tickers") as mirror:
            assert [r.symbol_id for r in mirror.snapshot()] == [spot]
        # A symbol registered elsewhere (not in this manager's directory) is still looked up and named.
        ex = await db.get_exchange_by_enum("binance_spot")
        sid = await sql(db).fetchval("INSERT INTO symbols (exchange_id, symbol) VALUES ($1, 'ETHUSDT') RETURNING id",
                                     ex.id)
        await sql(db).execute("INSERT INTO book_tickers_latest (symbol_id, recv_ts, bid_price, bid_qty, ask_price, "
                              "ask_qty) VALUES ($1, now(), 1, 1, 2, 1)", sid)
        got = await db.get_latest_book_tickers(symbol_ids=[sid])
        assert [(r.exchange, r.symbol, r.symbol_id) for r in got] == [("binance_spot", "ETHUSDT", sid)]


@pytest.mark.skipif(np is None, reason="numpy is not installed")
async def test_a_stored_amount_beyond_float64_fails_a_numpy_read_with_a_typed_error(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us() - 1_000_000
        await db.insert_balance_snapshots([Balance(exchange="binance_spot", asset="BTC", free=Decimal("1"),
                                                   locked=Decimal("0"), recv_ts=t)])
        await db.flush()
        ex = await db.get_exchange_by_enum("binance_spot")
        # Stored before the write path refused such amounts: put there by hand.
        await sql(db).execute("INSERT INTO balances (exchange_id, account, asset, recv_ts, free, locked) "
                              "VALUES ($1, 'default', 'BTC', now(), 1e1000, 0)", ex.id)
        with pytest.raises(ValidationError, match="float64"):
            await db.get_balance_history("binance_spot", "BTC", hours=1, format="numpy")
        exact = await db.get_balance_history("binance_spot", "BTC", hours=1, format="columns")
        assert exact["free"] == [Decimal("1"), Decimal("1e1000")]


async def test_notifications_max_pending_must_be_a_positive_int(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        for bad in (0, -1, "x", 1.5, None):
            with pytest.raises(ValidationError, match="max_pending"):
                db.notifications("book_tickers", max_pending=bad)

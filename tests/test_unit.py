"""Units of work as a strategy sees them: all of a unit or none of it, in the tables, the caches and the notifications."""

import asyncio
from decimal import Decimal

import msgspec
import pytest

from hftdb import (Balance, BookTicker, CacheSettings, DatabaseManager, DatabaseUnavailableError, ExchangeName, Symbol,
                   ValidationError, now_us)

from helpers import settings, sql, tickers


async def test_a_balance_set_is_one_snapshot_invisible_until_commit(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BYBIT_SPOT)
        t = now_us()
        assets = {"BTC": Decimal("0.5"), "ETH": Decimal("12.25"), "USDT": Decimal("1000.000001")}
        async with db.connection() as other:
            async with db.transaction() as uow:
                assert await uow.insert_balance_snapshots([
                    Balance(exchange="bybit_spot", asset=a, free=f, locked=Decimal(0), recv_ts=t, account="main")
                    for a, f in assets.items()]) == 3
                # Another session sees none of the set while the unit is open.
                assert await other.fetchval("SELECT count(*) FROM balances_latest") == 0
            assert await other.fetchval("SELECT count(*) FROM balances_latest") == 3
        got = await db.get_latest_balances("bybit_spot", account="main", primary=True)
        assert {b.asset: b.free for b in got} == assets and {b.recv_ts for b in got} == {t}


async def test_a_symbol_and_its_first_snapshot_reach_the_caches_only_on_commit(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.OKX_SWAP)
        t = now_us()
        with pytest.raises(ValidationError):
            async with db.transaction() as uow:
                sym = await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol="ETH-USDT-SWAP"))  # type: ignore[arg-type]
                await uow.insert_book_ticker_snapshots([BookTicker("okx_swap", "ETH-USDT-SWAP", 2, 1, 1, 1, t,
                                                                   symbol_id=sym.id)])  # crossed: fails the unit
        assert db.resolve_symbol_id("okx_swap", "ETH-USDT-SWAP") is None
        assert await sql(db).fetchval("SELECT count(*) FROM symbols") == 0

        async with db.transaction() as uow:
            sym = await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol="ETH-USDT-SWAP"))  # type: ignore[arg-type]
            await uow.insert_book_ticker_snapshots([BookTicker("okx_swap", "ETH-USDT-SWAP", 1, 1, 2, 1, t,
                                                               symbol_id=sym.id)])
        assert db.resolve_symbol_id("okx_swap", "ETH-USDT-SWAP") == sym.id
        (quote,) = await db.get_latest_book_tickers("okx_swap", ["ETH-USDT-SWAP"], primary=True)
        assert (quote.exchange, quote.symbol, quote.recv_ts) == ("okx_swap", "ETH-USDT-SWAP", t)


async def test_a_unit_commit_empties_the_latest_cache(dsn, tmp_path):
    # With the latest cache on, a read after a unit's commit sees the unit's rows, not a quote cached before it.
    cfg = msgspec.structs.replace(settings(tmp_path), cache=CacheSettings(latest_ttl_ms=600_000.0))
    async with DatabaseManager(dsn, settings=cfg) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        await db.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 1, 1, 2, 1, t, update_id=1)])
        await db.flush()
        assert [q.update_id for q in await db.get_latest_book_tickers("binance_spot")] == [1]  # cached now
        async with db.transaction() as uow:
            await uow.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 1, 1, 2, 1, t + 1,
                                                               update_id=2)])
        assert [q.update_id for q in await db.get_latest_book_tickers("binance_spot")] == [2]


async def test_nested_blocks_roll_back_alone_and_outer_writes_stand(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()

        def quote(i: int) -> BookTicker:
            return BookTicker("binance_spot", "BTCUSDT", 1, 1, 2, 1, t + i, update_id=i)

        await db.insert_book_ticker_snapshots([quote(0)])
        await db.flush()
        async with db.transaction() as uow:
            await uow.insert_book_ticker_snapshots([quote(1)])
            with pytest.raises(KeyError):
                async with uow.transaction():
                    await uow.insert_book_ticker_snapshots([quote(2)])
                    async with uow.transaction():
                        await uow.insert_book_ticker_snapshots([quote(3)])
                    raise KeyError("inner block fails after its own nested block succeeded")
            async with uow.transaction():
                await uow.insert_book_ticker_snapshots([quote(4)])
        ids = await sql(db).fetch("SELECT update_id FROM book_tickers ORDER BY update_id")
        assert [r[0] for r in ids] == [0, 1, 4]
        (latest,) = await db.get_latest_book_tickers(primary=True)
        assert latest.update_id == 4


async def test_units_notify_on_commit_only(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 1, 1, 2, 1, now_us())])
        await db.flush()
        sid = db.resolve_symbol_id("binance_spot", "BTCUSDT")
        async with db.notifications("book_tickers") as feed:
            t = now_us()
            with pytest.raises(RuntimeError):
                async with db.transaction() as uow:
                    await uow.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 1, 1, 2, 1, t)])
                    raise RuntimeError("rolled back: its NOTIFY goes with it")
            async with db.transaction() as uow:
                await uow.insert_book_ticker_snapshots([
                    BookTicker("binance_spot", "BTCUSDT", 1, 1, 2, 1, t + 1, symbol_id=sid),
                    BookTicker("binance_spot", "BTCUSDT", 1, 1, 2, 1, t + 2, symbol_id=sid)])
            # Notifications arrive in commit order: the first one is the committed unit's.
            note = await asyncio.wait_for(feed.__anext__(), 30)
            assert (note.rows, note.max_ts, note.ids) == (2, t + 2, (sid,))


async def test_a_unit_larger_than_a_batch_writes_every_row(dsn, tmp_path):
    # A unit of work's rows can span several of the writer's batches (batch_max_rows): all of them are written.
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=1_000)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()
        for n in (2_500, 3_000):  # the second ends exactly on a batch boundary
            async with db.transaction() as uow:
                rows = [BookTicker("binance_spot", "BTCUSDT", 10.0, 1.0, 10.5, 1.0, t + i, update_id=t + i,
                                   symbol_id=sym.id) for i in range(n)]
                assert await uow.insert_book_ticker_snapshots(rows) == n
            t += n
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 5_500
        assert await sql(db).fetchval("SELECT count(DISTINCT update_id) FROM book_tickers") == 5_500
        latest = await sql(db).fetchval("SELECT update_id FROM book_tickers_latest WHERE symbol_id = $1", sym.id)
        assert latest == t - 1


async def test_a_unit_checks_ids_and_values_as_the_writers_do(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us()
        await db.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 1, 1, 2, 1, t)])
        await db.flush()
        sid = db.resolve_symbol_id("binance_spot", "BTCUSDT")
        assert sid is not None

        def quote(symbol_id: object, bid: object = 1.0) -> BookTicker:
            return BookTicker("binance_spot", "BTCUSDT", bid, 1.0, 2.0, 1.0, t + 1,  # type: ignore[arg-type]
                              symbol_id=symbol_id)  # type: ignore[arg-type]

        bad = [quote(sid + 1000), quote(2 ** 40), quote(str(sid)), quote(True)]
        for row in bad:
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await uow.insert_book_ticker_snapshots([quote(sid), row])
        for rows in ([{"bid_price": 1.0}], [None], None, 5, quote(sid)):
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await uow.insert_book_ticker_snapshots(rows)  # type: ignore[arg-type]
        for name in (None, ""):
            with pytest.raises(ValidationError):
                async with db.transaction() as uow:
                    await uow.insert_exchange(name)  # type: ignore[arg-type]
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 1
        assert await sql(db).fetchval("SELECT count(*) FROM exchanges") == 1
        # A symbol registered by another session, not yet in this manager's caches, is found in the database.
        async with db.connection() as conn:
            other = await conn.fetchval("INSERT INTO symbols (exchange_id, symbol) SELECT id, 'ETHUSDT' FROM exchanges "
                                        "RETURNING id")
        async with db.transaction() as uow:
            assert await uow.insert_book_ticker_snapshots([quote(sid), quote(other)]) == 2
        assert len(await db.get_latest_book_tickers("binance_spot", primary=True)) == 2


async def test_a_row_repeated_in_a_unit_is_dropped_and_counted_as_in_the_writers(dsn, tmp_path):
    # The writers drop a row repeated inside a call (rows_duplicate); a unit raised "1 invalid row(s): {}".
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(1))  # (registers the symbol)
        await db.flush()
        row = tickers(1, start_id=7)[0]
        async with db.transaction() as uow:
            assert await uow.insert_book_ticker_snapshots([row, row]) == 1
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers WHERE update_id = 7") == 1


async def test_a_unit_whose_connection_is_lost_raises_database_unavailable(dsn, tmp_path):
    # The backend ended under an open unit: it rolled back, and the caller got asyncpg's InterfaceError ("cannot
    # call Transaction.__aexit__(): the underlying connection is closed"), no hftdb error.
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(10))  # (registers the symbols)
        await db.flush()
        with pytest.raises(DatabaseUnavailableError, match="rolled back"):
            async with db.transaction() as uow:
                await uow.insert_book_ticker_snapshots(tickers(5, start_id=100))
                pid = uow.connection.get_server_pid()
                await sql(db).execute("SELECT pg_terminate_backend($1)", pid)
                await uow.insert_book_ticker_snapshots(tickers(5, start_id=200))
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 10

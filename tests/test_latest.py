"""The writers' latest-table upsert: an UPDATE of the rows that exist, an INSERT of the missing ones only.

Each commit must leave, per symbol, the newest row by receipt time, whichever of the two paths it took: a row
older than the stored one changes nothing, a row deleted by hand comes back, and a row inserted by hand with no
``exchange_id`` gets it (the meaning 0003 gives the column), with ``packed`` recomputed on every change.
"""

from typing import Any

from hftdb import BookTicker, DatabaseManager, ExchangeName, FundingRate, now_us

from helpers import settings, sql


async def _latest(conn: Any, table: str) -> dict[int, tuple]:
    rows = await conn.fetch(f"SELECT symbol_id, exchange_id, recv_ts, packed FROM {table}")  # table: fixed names
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_book_ticker_latest_keeps_the_newest_row_through_update_and_insert(dsn, tmp_path):
    t = now_us()
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        spot = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        okx = await db.insert_exchange(ExchangeName.OKX_SPOT)

        def bt(ex: str, sym: str, price: float, ts: int, uid: int | None = None) -> BookTicker:
            return BookTicker(ex, sym, price, 1.0, price + 0.5, 2.0, ts, ts - 3, uid)

        # First commit: every row is missing, so the INSERT half takes them all (exchange_id from symbols).
        await db.insert_book_ticker_snapshots([bt("binance_spot", "A", 10.0, t), bt("okx_spot", "B-C", 20.0, t)])
        await db.flush()
        # Second commit: A newer (UPDATE), B older than stored (nothing), D new (INSERT) in the same statement.
        await db.insert_book_ticker_snapshots([
            bt("binance_spot", "A", 11.0, t + 10, 5), bt("okx_spot", "B-C", 19.0, t - 10), bt("binance_spot", "D", 30.0, t),
        ])
        await db.flush()
        got = {(r.exchange, r.symbol): r for r in await db.get_latest_book_tickers()}
        assert (got[("binance_spot", "A")].bid_price, got[("binance_spot", "A")].update_id) == (11.0, 5)
        assert (got[("okx_spot", "B-C")].bid_price, got[("okx_spot", "B-C")].recv_ts) == (20.0, t)
        assert got[("binance_spot", "D")].bid_price == 30.0
        assert {r.symbol for r in await db.get_latest_book_tickers(ExchangeName.OKX_SPOT)} == {"B-C"}
        assert {r.symbol for r in await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)} == {"A", "D"}

        # Rows changed by hand: A deleted, D's exchange_id cleared (as a row inserted by other SQL has it).
        ids = {r.symbol: r.symbol_id for r in got.values()}
        await sql(db).execute("DELETE FROM book_tickers_latest WHERE symbol_id = $1", ids["A"])
        await sql(db).execute("UPDATE book_tickers_latest SET exchange_id = NULL WHERE symbol_id = $1", ids["D"])
        await db.insert_book_ticker_snapshots([bt("binance_spot", "A", 12.0, t + 20), bt("binance_spot", "D", 31.0, t + 20)])
        await db.flush()
        stored = await _latest(sql(db), "book_tickers_latest")
        assert stored[ids["A"]][0] == spot.id and stored[ids["D"]][0] == spot.id
        assert stored[ids["B-C"]][0] == okx.id
        got = {r.symbol: r for r in await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)}
        assert (got["A"].bid_price, got["A"].recv_ts, got["D"].bid_price) == (12.0, t + 20, 31.0)
        # packed (read by reads.py) follows every change: it is the generated column of the stored values.
        assert len({v[2] for v in stored.values()}) == 3


async def test_funding_rate_latest_keeps_the_newest_row_through_update_and_insert(dsn, tmp_path):
    t = now_us()
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_USDM)

        def fr(sym: str, rate: float, ts: int) -> FundingRate:
            return FundingRate("binance_usdm", sym, rate, ts, exchange_ts=ts - 1, next_funding_ts=ts + 3_600_000_000,
                               mark_price=100.0, index_price=None)

        await db.insert_funding_rates([fr("X", 0.001, t)])
        await db.flush()
        await db.insert_funding_rates([fr("X", 0.002, t - 5), fr("Y", 0.003, t)])
        await db.flush()
        got = {r.symbol: r for r in await db.get_latest_funding_rates(ExchangeName.BINANCE_USDM)}
        assert (got["X"].rate, got["X"].recv_ts, got["Y"].rate) == (0.001, t, 0.003)
        await sql(db).execute("UPDATE funding_rates_latest SET exchange_id = NULL")
        await db.insert_funding_rates([fr("X", 0.004, t + 5), fr("Y", 0.005, t + 5)])
        await db.flush()
        stored = await _latest(sql(db), "funding_rates_latest")
        assert {v[0] for v in stored.values()} == {ex.id}
        got = {r.symbol: r for r in await db.get_latest_funding_rates(ExchangeName.BINANCE_USDM)}
        assert (got["X"].rate, got["Y"].rate, got["X"].index_price) == (0.004, 0.005, None)

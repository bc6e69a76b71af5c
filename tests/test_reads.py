"""Strategy-side reads: latest rows without joins, history as objects, lists and numpy columns."""

import asyncio
import random
import sys
import time
from decimal import Decimal

import asyncpg
import pytest

from hftdb import Balance, BookTicker, DatabaseManager, ExchangeName, FundingRate, Symbol, ValidationError, now_us
from hftdb.read import columnar, reads
from hftdb.errors import DatabaseError
from hftdb.db.schema import Migrator
from hftdb.wire.copy import HEADER, TRAILER

from helpers import settings

try:
    import numpy as np
except ImportError:  # the numpy extra is optional: its checks run where it is installed
    np = None

HOUR_US = 3_600_000_000


async def _seed_tickers(db: DatabaseManager, t: int) -> list[BookTicker]:
    """Three symbols on two exchanges; some rows without exchange_ts or update_id (NULLs on the wire)."""
    await db.insert_exchange(ExchangeName.BINANCE_SPOT)
    await db.insert_exchange(ExchangeName.OKX_SPOT)
    rows = []
    for i in range(300):
        ex, sym = (("binance_spot", "BTCUSDT"), ("binance_spot", "ETHUSDT"), ("okx_spot", "BTC-USDT"))[i % 3]
        rows.append(BookTicker(ex, sym, 100.0 + i, 0.5 + i, 100.25 + i, 1.5, t + i,
                               exchange_ts=None if i % 7 == 0 else t + i - 3,
                               update_id=None if i % 5 == 0 else 10_000 + i))
    assert await db.insert_book_ticker_snapshots(rows) == len(rows)
    await db.flush()
    return rows


def _newest(rows: list[BookTicker]) -> dict[tuple[str, str], BookTicker]:
    out = {}
    for r in rows:
        out[(r.exchange, r.symbol)] = r
    return out


async def test_latest_book_tickers_by_exchange_symbols_ids_and_all(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        t = now_us() - 1_000_000
        rows = await _seed_tickers(db, t)
        want = _newest(rows)
        everything = await db.get_latest_book_tickers()
        assert len(everything) == 3
        for got in everything:
            w = want[(got.exchange, got.symbol)]
            assert (got.bid_price, got.bid_qty, got.ask_price, got.ask_qty, got.recv_ts, got.exchange_ts,
                    got.update_id) == (w.bid_price, w.bid_qty, w.ask_price, w.ask_qty, w.recv_ts, w.exchange_ts,
                                       w.update_id)
            assert got.symbol_id == db.resolve_symbol_id(got.exchange, got.symbol)
        binance = await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)
        assert {r.symbol for r in binance} == {"BTCUSDT", "ETHUSDT"}
        few = await db.get_latest_book_tickers("okx_spot", ["BTC-USDT"])
        assert [(r.exchange, r.symbol) for r in few] == [("okx_spot", "BTC-USDT")]
        by_id = await db.get_latest_book_tickers(symbol_ids=[few[0].symbol_id])
        assert by_id == few
        assert await db.get_latest_book_tickers(symbol_ids=[]) == []
        with pytest.raises(ValidationError):
            await db.get_latest_book_tickers(symbol_ids=["1"])  # type: ignore[list-item]


async def test_latest_reads_name_symbols_registered_by_another_process(dsn, tmp_path):
    """Records are built from an id -> name map, not a join: ids this process never saw are looked up once."""
    async with DatabaseManager(dsn, settings=settings(tmp_path / "reader")) as reader:
        await reader.insert_exchange(ExchangeName.BYBIT_LINEAR)
        async with DatabaseManager(dsn, settings=settings(tmp_path / "writer")) as writer:
            t = now_us()
            await writer.insert_book_ticker_snapshots([BookTicker("bybit_linear", "SOLUSDT", 20.0, 1.0, 20.1, 1.0, t)])
            await writer.insert_funding_rates([FundingRate("bybit_linear", "SOLUSDT", 0.0001, t)])
            await writer.flush()
        assert reader.resolve_symbol_id("bybit_linear", "SOLUSDT") is None
        (bt,) = await reader.get_latest_book_tickers(ExchangeName.BYBIT_LINEAR)
        assert (bt.exchange, bt.symbol, bt.recv_ts) == ("bybit_linear", "SOLUSDT", t)
        (fr,) = await reader.get_latest_funding_rates()
        assert (fr.exchange, fr.symbol, fr.rate, fr.mark_price, fr.next_funding_ts) == (
            "bybit_linear", "SOLUSDT", 0.0001, None, None)


async def test_latest_funding_rates_nulls_and_exchanges_apart(dsn, tmp_path):
    """Every NULL pattern of the packed rows, two exchanges kept apart by the rows' own exchange_id."""
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.OKX_SWAP)
        await db.insert_exchange(ExchangeName.BYBIT_LINEAR)
        t = now_us() - 1_000_000
        rates = [
            FundingRate("okx_swap", f"S{i}-USDT-SWAP", 0.0001 * i, t + i,
                        exchange_ts=None if i & 1 else t - i, next_funding_ts=None if i & 2 else t + HOUR_US,
                        mark_price=None if i & 4 else 100.5 + i, index_price=None if i & 8 else 99.5 - i)
            for i in range(16)
        ] + [FundingRate("bybit_linear", "SOLUSDT", -0.0002, t, t - 1, t + HOUR_US, 20.5, 20.4)]
        await db.insert_funding_rates(rates)
        await db.flush()

        def fields(r: FundingRate) -> tuple:
            return (r.exchange, r.symbol, r.rate, r.recv_ts, r.exchange_ts, r.next_funding_ts, r.mark_price,
                    r.index_price)

        okx = await db.get_latest_funding_rates("okx_swap")
        assert sorted(map(fields, okx)) == sorted(map(fields, rates[:16]))
        assert all(r.symbol_id == db.resolve_symbol_id(r.exchange, r.symbol) for r in okx)
        (sol,) = await db.get_latest_funding_rates(ExchangeName.BYBIT_LINEAR)
        assert fields(sol) == fields(rates[16])
        assert len(await db.get_latest_funding_rates()) == 17
        few = await db.get_latest_funding_rates("okx_swap", ["S3-USDT-SWAP", "S12-USDT-SWAP"])
        assert sorted(map(fields, few)) == sorted(map(fields, [rates[3], rates[12]]))
        assert await db.get_latest_funding_rates(symbol_ids=[]) == []


async def test_latest_rows_written_before_migration_0002_keep_their_exchange(dsn, tmp_path):
    """Migration 0002 fills exchange_id and packed for rows already there; the writers fill it for new ones."""
    conn = await asyncpg.connect(dsn)
    try:
        await Migrator(conn).up(1)
        await conn.execute("INSERT INTO exchanges (name) VALUES ('binance_spot'), ('okx_spot')")
        await conn.execute("INSERT INTO symbols (exchange_id, symbol) VALUES (1, 'BTCUSDT'), (2, 'BTC-USDT')")
        await conn.execute(
            """INSERT INTO book_tickers_latest (symbol_id, recv_ts, exchange_ts, bid_price, bid_qty, ask_price,
                                                ask_qty, update_id)
               VALUES (1, '2026-01-02 03:04:05.678901+00', NULL, 1.5, 2, 1.75, 3, 7),
                      (2, '2026-01-02 03:04:05+00', '2026-01-02 03:04:04.5+00', 10, 1, 11, 1, NULL)""")
    finally:
        await conn.close()
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        t0 = 1767323045678901
        (btc,) = await db.get_latest_book_tickers("binance_spot")
        assert btc == BookTicker("binance_spot", "BTCUSDT", 1.5, 2.0, 1.75, 3.0, t0, None, 7, btc.symbol_id)
        (okx,) = await db.get_latest_book_tickers("okx_spot")
        assert (okx.recv_ts, okx.exchange_ts, okx.update_id) == (t0 - 678901, t0 - 1178901, None)
        await db.insert_book_ticker_snapshots([BookTicker("okx_spot", "ETH-USDT", 2.0, 1.0, 2.5, 1.0, now_us())])
        await db.flush()
        assert {r.symbol for r in await db.get_latest_book_tickers("okx_spot")} == {"BTC-USDT", "ETH-USDT"}


async def test_migration_0004_puts_packed_second_and_keeps_every_row(dsn):
    """0004 rebuilds the latest tables with packed right after symbol_id; its down file restores 0003's order."""
    async def state(conn: asyncpg.Connection, table: str) -> tuple[list[str], list[dict], list[str], list[str]]:
        columns = [r[0] for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum", table)]
        rows = [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY symbol_id")]  # fixed names
        indexes = [r[0] for r in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname", table)]
        options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = $1::regclass", table)
        return columns, rows, indexes, options

    conn = await asyncpg.connect(dsn)
    try:
        migrator = Migrator(conn)
        await migrator.up(3)
        await conn.execute("INSERT INTO exchanges (name) VALUES ('binance_usdm')")
        await conn.execute("INSERT INTO symbols (exchange_id, symbol) VALUES (1, 'BTCUSDT'), (1, 'ETHUSDT')")
        await conn.execute(
            """INSERT INTO book_tickers_latest (symbol_id, exchange_id, recv_ts, exchange_ts, bid_price, bid_qty,
                                                ask_price, ask_qty, update_id)
               VALUES (1, 1, '2026-01-02 03:04:05.678901+00', NULL, 1.5, 2, 1.75, 3, 7),
                      (2, 1, '2026-01-02 03:04:05+00', '2026-01-02 03:04:04.5+00', 10, 1, 11, 1, NULL)""")
        await conn.execute(
            """INSERT INTO funding_rates_latest (symbol_id, exchange_id, recv_ts, exchange_ts, rate, next_funding_ts,
                                                 mark_price, index_price)
               VALUES (1, 1, '2026-01-02 03:04:05+00', NULL, 0.0001, '2026-01-02 08:00:00+00', 1.5, NULL),
                      (2, 1, '2026-01-02 03:04:06+00', '2026-01-02 03:04:05+00', -0.0002, NULL, NULL, 10.5)""")
        for table in ("book_tickers_latest", "funding_rates_latest"):
            columns, rows, indexes, options = await state(conn, table)
            assert columns[-2:] == ["exchange_id", "packed"]
            await migrator.up(4)
            columns4, rows4, indexes4, options4 = await state(conn, table)
            assert columns4[:3] == ["symbol_id", "packed", "exchange_id"]
            assert sorted(columns4) == sorted(columns)
            assert rows4 == rows  # every value, the generated packed included
            assert (indexes4, options4) == (indexes, options) == (indexes, ["fillfactor=50"])
            await migrator.down(3)
            assert await state(conn, table) == (columns, rows, indexes, options)
    finally:
        await conn.close()


def test_packed_rows_reject_a_buffer_of_another_width():
    with pytest.raises(DatabaseError, match="migration 0002"):
        reads._BT_PACKED.decode(b"\0" * 80, {}, {})


async def test_book_ticker_history_in_every_format_agrees(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        t = now_us() - 1_000_000
        rows = [r for r in await _seed_tickers(db, t) if r.symbol == "BTCUSDT"]
        objects = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=t)
        assert [(r.recv_ts, r.exchange_ts, r.update_id, r.bid_price) for r in objects] == [
            (r.recv_ts, r.exchange_ts, r.update_id, r.bid_price) for r in rows]
        assert {(r.exchange, r.symbol) for r in objects} == {("binance_spot", "BTCUSDT")}
        assert any(r.exchange_ts is None for r in objects) and any(r.update_id is None for r in objects)

        cols = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=t, format="columns")
        assert list(cols) == ["recv_ts", "exchange_ts", "bid_price", "bid_qty", "ask_price", "ask_qty", "update_id"]
        for name in cols:
            assert cols[name] == [getattr(r, name) for r in rows], name

        # Window, limit, the empty result and bad arguments.
        window = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=rows[3].recv_ts,
                                                  end=rows[6].recv_ts, format="columns")
        assert window["recv_ts"] == [r.recv_ts for r in rows[3:6]]
        limited = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=t, limit=4, format="columns")
        assert limited["update_id"] == [r.update_id for r in rows[:4]]
        assert await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=t - 10, end=t) == []
        empty = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=t - 10, end=t, format="columns")
        assert empty == {name: [] for name in cols}
        with pytest.raises(ValidationError):
            await db.get_book_ticker_history("binance_spot", "BTCUSDT", hours=1, format="arrow")  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await db.get_book_ticker_history("binance_spot", "BTCUSDT", hours=1, limit=0)

        if np is None:
            return
        arrays = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=t, format="numpy")
        assert arrays["recv_ts"].dtype == np.dtype("datetime64[us]")
        assert arrays["recv_ts"].view("int64").tolist() == [r.recv_ts for r in rows]
        ex_ts = arrays["exchange_ts"]
        assert np.isnat(ex_ts).tolist() == [r.exchange_ts is None for r in rows]
        assert ex_ts[~np.isnat(ex_ts)].view("int64").tolist() == [r.exchange_ts for r in rows if r.exchange_ts]
        assert arrays["bid_price"].tolist() == [r.bid_price for r in rows]
        assert arrays["ask_qty"].dtype == np.float64 and arrays["ask_qty"].flags["C_CONTIGUOUS"]
        uid = arrays["update_id"]
        assert isinstance(uid, np.ma.MaskedArray) and uid.dtype == np.int64
        assert uid.tolist() == [r.update_id for r in rows]  # masked entries come back as None
        limited = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=t, limit=4, format="numpy")
        assert limited["update_id"].tolist() == [r.update_id for r in rows[:4]]
        empty_np = await db.get_book_ticker_history("binance_spot", "BTCUSDT", start=t - 10, end=t, format="numpy")
        assert all(len(a) == 0 for a in empty_np.values())


async def test_funding_history_nulls_in_every_format(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.OKX_SWAP)
        t = now_us() - 1_000_000
        rates = [
            FundingRate("okx_swap", "BTC-USDT-SWAP", -0.0375, t, exchange_ts=t - 3, next_funding_ts=t + 8 * HOUR_US,
                        mark_price=11794.15, index_price=11784.62659091),
            FundingRate("okx_swap", "BTC-USDT-SWAP", 0.0001, t + 1),
        ]
        await db.insert_funding_rates(rates)
        await db.flush()
        objects = await db.get_funding_rate_history("okx_swap", "BTC-USDT-SWAP", hours=1)
        assert [(r.rate, r.exchange_ts, r.next_funding_ts, r.mark_price, r.index_price) for r in objects] == [
            (r.rate, r.exchange_ts, r.next_funding_ts, r.mark_price, r.index_price) for r in rates]
        cols = await db.get_funding_rate_history("okx_swap", "BTC-USDT-SWAP", hours=1, format="columns")
        assert cols == {
            "recv_ts": [t, t + 1], "exchange_ts": [t - 3, None], "rate": [-0.0375, 0.0001],
            "next_funding_ts": [t + 8 * HOUR_US, None], "mark_price": [11794.15, None],
            "index_price": [11784.62659091, None],
        }
        if np is None:
            return
        arrays = await db.get_funding_rate_history("okx_swap", "BTC-USDT-SWAP", hours=1, format="numpy")
        assert np.isnan(arrays["mark_price"]).tolist() == [False, True]
        assert np.isnat(arrays["next_funding_ts"]).tolist() == [False, True]
        assert arrays["rate"].tolist() == [-0.0375, 0.0001]


async def test_balances_latest_and_history_keep_decimals(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us() - 1_000_000
        amounts = [Decimal("4723846.89208129"), Decimal("0.00000001"), Decimal("1.5")]
        await db.insert_balance_snapshots([
            Balance(exchange="binance_spot", asset="BTC", free=a, locked=Decimal("0.25"), recv_ts=t + i,
                    exchange_ts=None if i == 1 else t + i - 2)
            for i, a in enumerate(amounts)])
        await db.flush()
        (latest,) = await db.get_latest_balances(ExchangeName.BINANCE_SPOT)
        assert (latest.free, latest.recv_ts, latest.exchange_ts) == (Decimal("1.5"), t + 2, t)
        objects = await db.get_balance_history("binance_spot", "BTC", hours=1)
        assert [b.free for b in objects] == amounts and objects[1].exchange_ts is None
        cols = await db.get_balance_history("binance_spot", "BTC", hours=1, format="columns")
        assert cols["free"] == amounts and cols["exchange_ts"] == [t - 2, None, t]
        assert await db.get_balance_history("binance_spot", "ETH", hours=1, format="columns") == {
            "recv_ts": [], "exchange_ts": [], "free": [], "locked": []}
        if np is not None:
            arrays = await db.get_balance_history("binance_spot", "BTC", hours=1, format="numpy")
            assert arrays["free"].tolist() == [float(a) for a in amounts]
            assert np.isnat(arrays["exchange_ts"]).tolist() == [False, True, False]


async def test_reads_on_the_primary_on_request(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_USDM)
        await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))  # type: ignore[arg-type]
        t = now_us()
        await db.insert_book_ticker_snapshots([BookTicker("binance_usdm", "BTCUSDT", 1.0, 1.0, 2.0, 1.0, t)])
        await db.flush()
        (row,) = await db.get_latest_book_tickers(symbol_ids=[db.resolve_symbol_id("binance_usdm", "BTCUSDT")],
                                                  primary=True)
        assert row.recv_ts == t
        (primary,) = db.read_status()
        assert primary["role"] == "primary" and primary["reads"] >= 1 and primary["healthy"]


def test_layout_rejects_a_stream_with_a_null_or_bad_framing():
    layout = columnar.Layout([columnar.Column("v", "v", "f8")])
    good = HEADER + (1).to_bytes(2, "big") + (8).to_bytes(4, "big") + b"\x3f\xf0" + bytes(6) \
        + TRAILER
    assert columnar.to_lists(layout, good) == {"v": [1.0]}
    decoders = [columnar.to_lists]
    if np is not None:
        assert columnar.to_numpy(layout, good)["v"].tolist() == [1.0]
        decoders.append(columnar.to_numpy)
    null = HEADER + (1).to_bytes(2, "big") + (-1).to_bytes(4, "big", signed=True) + bytes(8) \
        + TRAILER
    for decode in decoders:
        with pytest.raises(Exception, match="NULL or width"):
            decode(layout, null)
        with pytest.raises(Exception, match="header or trailer"):
            decode(layout, good[:-2])


async def test_history_without_limit_is_ordered_even_when_stored_out_of_order(dsn, tmp_path):
    """Without a LIMIT the client orders the rows: a late batch (older receipt times, committed last) included."""
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        t = now_us() - 10_000_000
        for base in (t + 1_000, t):  # the later rows first, then the earlier ones
            await db.insert_book_ticker_snapshots(
                [BookTicker("binance_spot", "BTCUSDT", 1.0, 1.0, 2.0, 1.0, base + i, update_id=base + i)
                 for i in range(5)])
            await db.flush()
        want = [t + i for i in range(5)] + [t + 1_000 + i for i in range(5)]
        objects = await db.get_book_ticker_history("binance_spot", "BTCUSDT", hours=1)
        assert [r.recv_ts for r in objects] == want
        cols = await db.get_book_ticker_history("binance_spot", "BTCUSDT", hours=1, format="columns")
        assert cols["recv_ts"] == want and cols["update_id"] == want
        if np is None:
            return
        arrays = await db.get_book_ticker_history("binance_spot", "BTCUSDT", hours=1, format="numpy")
        assert arrays["recv_ts"].view("int64").tolist() == want and arrays["update_id"].tolist() == want
        oldest = await db.get_book_ticker_history("binance_spot", "BTCUSDT", hours=1, limit=3, format="numpy")
        assert oldest["recv_ts"].view("int64").tolist() == want[:3]


async def test_numpy_format_without_the_extra_says_how_to_get_it(dsn, tmp_path, monkeypatch):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))  # type: ignore[arg-type]
        monkeypatch.setitem(sys.modules, "numpy", None)
        with pytest.raises(ValidationError, match=r"hftdb\[numpy\]"):
            await db.get_book_ticker_history("binance_spot", "BTCUSDT", hours=1, format="numpy")


async def test_history_reads_timed_out_mid_copy_leave_other_reads_unharmed(dsn, tmp_path):
    # A columnar history read (a COPY) whose deadline passes as a chunk of its rows arrives: asyncpg may then leave
    # the connection in the middle of the COPY (asyncpg issue #784). Handed back to the read pool, the next read on
    # it failed ("cannot switch to state ...; another operation is in progress", as DatabaseUnavailableError): a
    # helper's sweep saw ~8% of the reads nobody cancelled fail. Deadlines drawn around the read's own duration,
    # rounds of three timed reads and three untimed ones: every untimed read answers, and a timed one ends in its
    # TimeoutError or its rows.
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_USDM)
        t = now_us() - 1_000_000_000
        await db.insert_funding_rates([FundingRate("binance_usdm", "BTCUSDT", 0.0001, t + i) for i in range(20_000)])
        await db.flush()

        async def history(fmt: str = "numpy") -> int:
            cols = await db.get_funding_rate_history("binance_usdm", "BTCUSDT", hours=1, format=fmt)
            return len(cols["rate"])

        took = []
        for _ in range(10):
            start = time.perf_counter()
            assert await history() == 20_000
            took.append(time.perf_counter() - start)
        took.sort()
        typical = took[len(took) // 2]
        draw = random.Random(784)

        async def timed(fmt: str) -> int:
            async with asyncio.timeout(draw.uniform(0, 1.5 * typical)):
                return await history(fmt)

        outcomes: dict[str, int] = {}
        for i in range(120):
            fmt = ("numpy", "columns")[i % 2]
            for r in await asyncio.gather(*(timed(fmt) for _ in range(3)), return_exceptions=True):
                key = "rows" if r == 20_000 else type(r).__name__
                outcomes[key] = outcomes.get(key, 0) + 1
            latest_a, latest_b, rows = await asyncio.gather(
                db.get_latest_funding_rates("binance_usdm"), db.get_latest_funding_rates("binance_usdm"), history())
            assert (len(latest_a), len(latest_b), rows) == (1, 1, 20_000)
        assert set(outcomes) <= {"rows", "TimeoutError"}, outcomes
        assert outcomes.get("TimeoutError", 0) > 0  # (the deadlines did land, some mid-read)
        assert db.read_status()[0]["last_error"] is None

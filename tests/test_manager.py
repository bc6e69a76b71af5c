import asyncio
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest

import hftdb
from hftdb import (
    Balance,
    BookTicker,
    ClosedError,
    ConfigError,
    DatabaseError,
    DatabaseManager,
    DatabaseUnavailableError,
    ExchangeName,
    FundingRate,
    StateError,
    Symbol,
    UnknownExchangeError,
    UnknownSymbolError,
    ValidationError,
    now_us,
)
from hftdb.db import dberrors
from hftdb.db.cache import TTLCache
from hftdb.db.schema import MIGRATION_LOCK_KEY

from helpers import settings, sql, tickers


def test_public_surface_is_explicit():
    assert set(hftdb.__all__) == {
        "DatabaseManager", "FeedSink", "UnitOfWork", "Notification", "Subscription", "LatestMirror", "Exchange", "ExchangeName",
        "Symbol", "BookTicker", "FundingRate", "Balance", "now_us", "Settings", "DatabaseSettings", "WriterSettings",
        "CacheSettings", "StorageSettings", "ReadSettings", "ArchiveSettings", "load_settings", "HftdbError",
        "ConfigError", "ValidationError", "UnknownExchangeError", "UnknownSymbolError", "StateError", "ClosedError",
        "DatabaseError", "DatabaseUnavailableError", "MigrationError", "BufferFullError", "ExchangeError", "FrameError",
    }
    assert len(hftdb.__all__) == len(set(hftdb.__all__))
    for name in hftdb.__all__:
        assert hasattr(hftdb, name), name
    assert not hasattr(hftdb, "BatchWriter")


#: DatabaseManager's documented API (README.md, "The whole API"): nothing else on it is public.
MANAGER_API = {
    "initialize", "close", "settings", "dsn",
    "insert_exchange", "get_exchange_by_enum", "get_all_exchanges", "insert_symbol", "sync_symbols", "get_symbol",
    "get_symbol_by_id", "get_symbols_by_exchange", "resolve_symbol_id", "invalidate_caches",
    "insert_book_ticker_snapshots", "insert_book_ticker_columns", "insert_funding_rates", "insert_balance_snapshots",
    "flush", "transaction", "writer_stats", "feed_sink",
    "get_latest_book_tickers", "get_latest_funding_rates", "get_latest_balances", "get_book_ticker_history",
    "get_funding_rate_history", "get_balance_history", "notifications", "latest_mirror", "read_status",
    "check_reads", "connection",
    "get_database_stats", "health_check", "cleanup_old_data", "run_maintenance", "archive_partitions",
    "restore_archive", "distribute",
}


def test_manager_public_members_are_the_documented_api(tmp_path):
    db = DatabaseManager("postgresql://u@127.0.0.1:1/x", settings=settings(tmp_path))
    public = {name for name in dir(db) if not name.startswith("_")}
    assert public == MANAGER_API
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("**The whole API**"):]
    section = section[:section.index("\n\n")]
    for name in MANAGER_API:
        assert f"`{name}" in section, name


async def test_no_io_in_constructor_and_use_before_open(tmp_path):
    db = DatabaseManager("postgresql://u:topsecret@127.0.0.1:1/x", settings=settings(tmp_path))
    assert "topsecret" not in repr(db)
    with pytest.raises(StateError):
        await db.get_all_exchanges()
    with pytest.raises(ValueError):
        DatabaseManager(12)  # type: ignore[arg-type]


def test_an_empty_dsn_given_in_code_is_refused_not_taken_for_the_embedded_server(tmp_path):
    # DatabaseManager("") silently started the embedded server, while HFTDB_DSN= (empty) was already refused.
    for empty in ("", "   "):
        with pytest.raises(ConfigError, match="the DSN is empty"):
            DatabaseManager(empty, settings=settings(tmp_path))
    assert "embedded:" in repr(DatabaseManager(None, settings=settings(tmp_path)))


async def test_exchanges_and_symbols_round_trip(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_USDM)
        assert ex.id is not None and ex.market == "derivatives"
        assert await db.get_exchange_by_enum(ExchangeName.BINANCE_USDM) == ex
        assert await db.get_exchange_by_enum("binance_usdm") == ex
        assert [e.name for e in await db.get_all_exchanges()] == ["binance_usdm"]
        with pytest.raises(UnknownExchangeError):
            await db.get_exchange_by_enum("nope")
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT", base="BTC", quote="USDT",
                                            kind="perpetual", status="trading", tick_size=Decimal("0.10")))
        assert (await db.get_symbol_by_id(sym.id)).tick_size == Decimal("0.10")
        assert [s.symbol for s in await db.get_symbols_by_exchange(ExchangeName.BINANCE_USDM)] == ["BTCUSDT"]
        with pytest.raises(UnknownSymbolError):
            await db.get_symbol_by_id(987654)
        with pytest.raises(ValidationError):
            await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="X" * 65))
        up, delisted = await db.sync_symbols(ExchangeName.BINANCE_USDM, [
            Symbol(exchange_id=ex.id, symbol="ETHUSDT", kind="perpetual", status="trading")])
        assert (up, delisted) == (1, 1)
        assert (await db.get_symbol(ExchangeName.BINANCE_USDM, "BTCUSDT")).status == "delisted"


async def test_write_and_read_every_table(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        rows = tickers(500, symbols=5)
        assert await db.insert_book_ticker_snapshots(rows) == 500
        t = now_us()
        await db.insert_funding_rates([FundingRate("binance_spot", "SYM1USDT", -0.0375, t, exchange_ts=t - 3,
                                                   next_funding_ts=t + 8 * 3600 * 10**6, mark_price=11794.15,
                                                   index_price=11784.62659091)])
        await db.insert_balance_snapshots([
            Balance(exchange="binance_spot", asset="BTC", free=Decimal("4723846.89208129"), locked=Decimal("0.00000000"),
                    recv_ts=t),
            Balance(exchange="binance_spot", asset="BTC", free=Decimal("1.5"), locked=Decimal("0.25"), recv_ts=t + 1),
        ])
        await db.flush()
        latest = await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT)
        assert len(latest) == 5
        newest = {r.symbol: r for r in rows}  # later rows of a symbol win
        for got in latest:
            want = newest[got.symbol]
            assert (got.bid_price, got.ask_price, got.recv_ts, got.exchange_ts, got.update_id) == (
                want.bid_price, want.ask_price, want.recv_ts, want.exchange_ts, want.update_id)
        only = await db.get_latest_book_tickers(ExchangeName.BINANCE_SPOT, ["SYM3USDT"])
        assert [r.symbol for r in only] == ["SYM3USDT"]
        hist = await db.get_book_ticker_history("binance_spot", "SYM2USDT", hours=1)
        assert [r.update_id for r in hist] == [r.update_id for r in rows if r.symbol == "SYM2USDT"]
        window = await db.get_book_ticker_history("binance_spot", "SYM2USDT", start=rows[0].recv_ts,
                                                  end=rows[100].recv_ts)
        assert all(rows[0].recv_ts <= r.recv_ts < rows[100].recv_ts for r in window) and window
        (fr,) = await db.get_latest_funding_rates()
        assert (fr.rate, fr.mark_price, fr.index_price) == (-0.0375, 11794.15, 11784.62659091)
        (bal,) = await db.get_latest_balances(ExchangeName.BINANCE_SPOT)
        assert (bal.free, bal.locked) == (Decimal("1.5"), Decimal("0.25"))
        hist = await db.get_balance_history("binance_spot", "BTC", hours=1)
        assert [b.free for b in hist] == [Decimal("4723846.89208129"), Decimal("1.5")]
        stats = await db.get_database_stats()
        assert stats["writers"]["book_tickers"]["rows_committed"] == 500
        assert stats["caches"]["symbol_ids"]["hits"] > 0
        health = await db.health_check()
        assert health["ok"] is True
        assert [(n["role"], n["healthy"]) for n in health["reads"]] == [("primary", True)]


async def test_unknown_symbol_is_registered_unknown_exchange_raises(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange("okx_swap")
        t = now_us()
        assert await db.insert_book_ticker_snapshots([BookTicker("okx_swap", "NEW-USDT-SWAP", 1, 1, 2, 1, t)]) == 1
        sym = await db.get_symbol("okx_swap", "NEW-USDT-SWAP")
        assert sym.status == "unknown"
        with pytest.raises(UnknownExchangeError):
            await db.insert_book_ticker_snapshots([
                BookTicker("okx_swap", "NEW-USDT-SWAP", 1, 1, 2, 1, t + 1),
                BookTicker("nowhere", "X", 1, 1, 2, 1, t)])
        await db.flush()
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 1


BAD = {
    "bid_price_nan": dict(bid_price=float("nan")),
    "ask_price_infinite": dict(ask_price=float("inf")),
    "bid_price_negative": dict(bid_price=-1.0),
    "crossed_quote": dict(bid_price=101.0, ask_price=100.0),
    "empty_quote": dict(bid_qty=0.0),
    "bid_price_wrong_type": dict(bid_price="100"),
    "recv_ts_out_of_range": dict(recv_ts=1_600_000),
    "recv_ts_wrong_type": dict(recv_ts=1.5e15),
    "exchange_ts_out_of_range": dict(exchange_ts=now_us() + 10 * 86_400_000_000),
}


async def test_each_bad_row_is_rejected_alone_and_counted(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BYBIT_LINEAR)
        t = now_us()
        good = lambda i: dict(exchange="bybit_linear", symbol="BTCUSDT", bid_price=100.0, bid_qty=1.0,  # noqa: E731
                              ask_price=100.5, ask_qty=1.0, recv_ts=t + i, update_id=i)
        rows = []
        for i, override in enumerate(BAD.values()):
            rows.append(BookTicker(**good(2 * i)))
            rows.append(BookTicker(**{**good(2 * i + 1), **override}))
        rows.append(BookTicker(**{**good(1000), "symbol": "S" * 65}))
        accepted = await db.insert_book_ticker_snapshots(rows)
        assert accepted == len(BAD)
        await db.flush()
        rejects = db.writer_stats("book_tickers")["rejects"]
        for reason in BAD:
            assert rejects.get(reason) == 1, (reason, rejects)
        assert rejects["symbol_too_long"] == 1
        ids = [r["update_id"] for r in await sql(db).fetch("SELECT update_id FROM book_tickers ORDER BY 1")]
        assert ids == list(range(0, 2 * len(BAD), 2))
        with pytest.raises(ValidationError):
            await db.get_book_ticker_history("bybit_linear", "BTCUSDT", hours=-1)
        with pytest.raises(ValidationError):
            await db.get_book_ticker_history("bybit_linear", "BTCUSDT")


async def test_bad_balances_and_funding_rejected(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange("okx_spot")
        t = now_us()
        ok = dict(exchange="okx_spot", asset="USDT", free=Decimal("1"), locked=Decimal("0"), recv_ts=t)
        n = await db.insert_balance_snapshots([
            Balance(**ok), Balance(**{**ok, "free": Decimal("NaN")}), Balance(**{**ok, "locked": Decimal("-1")}),
            Balance(**{**ok, "asset": ""}), Balance(**{**ok, "free": object()})])
        assert n == 1
        assert db.writer_stats("balances")["rejects"] == {
            "amount_not_finite": 1, "locked_negative": 1, "asset_invalid": 1, "amount_wrong_type": 1}
        n = await db.insert_funding_rates([
            FundingRate("okx_spot", "BTC-USDT", 0.0001, t), FundingRate("okx_spot", "BTC-USDT", float("nan"), t),
            FundingRate("okx_spot", "BTC-USDT", 0.0001, t, mark_price=-5.0)])
        assert n == 1


async def test_transaction_commits_together_and_rolls_back(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(ExchangeName.OKX_SWAP)
        t = now_us()
        async with db.transaction() as uow:
            sym = await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTC-USDT-SWAP", kind="perpetual"))
            await uow.insert_book_ticker_snapshots([BookTicker("okx_swap", "BTC-USDT-SWAP", 1, 1, 2, 1, t,
                                                               symbol_id=sym.id)])
        assert (await db.get_latest_book_tickers(symbol_ids=[sym.id]))[0].bid_price == 1
        with pytest.raises(RuntimeError):
            async with db.transaction() as uow:
                sym2 = await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol="ETH-USDT-SWAP"))
                await uow.insert_book_ticker_snapshots([BookTicker("okx_swap", "ETH-USDT-SWAP", 1, 1, 2, 1, t,
                                                                   symbol_id=sym2.id)])
                raise RuntimeError("boom")
        assert await sql(db).fetchval("SELECT count(*) FROM symbols WHERE symbol = 'ETH-USDT-SWAP'") == 0
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 1
        # An invalid row fails the whole unit.
        with pytest.raises(ValidationError):
            async with db.transaction() as uow:
                await uow.insert_balance_snapshots([
                    Balance(exchange="okx_swap", asset="USDT", free=Decimal(5), locked=Decimal(0), recv_ts=t),
                    Balance(exchange="okx_swap", asset="USDT", free=Decimal(5), locked=Decimal(-1), recv_ts=t)])
        assert await sql(db).fetchval("SELECT count(*) FROM balances") == 0
        # Nested blocks are savepoints.
        async with db.transaction() as uow:
            await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol="KEEP"))
            with pytest.raises(KeyError):
                async with uow.transaction():
                    await uow.insert_symbol(Symbol(exchange_id=ex.id, symbol="DROP"))
                    raise KeyError("inner")
        names = {s.symbol for s in await db.get_symbols_by_exchange(ExchangeName.OKX_SWAP)}
        assert "KEEP" in names and "DROP" not in names


async def test_close_flushes_is_idempotent_and_blocks_use(dsn, tmp_path):
    db = DatabaseManager(dsn, settings=settings(tmp_path, batch_max_age_ms=10_000.0, linger_ms=5_000.0))
    await db.initialize()
    await db.insert_exchange(ExchangeName.BINANCE_SPOT)
    assert await db.insert_book_ticker_snapshots(tickers(2_345)) == 2_345
    await db.close()
    await db.close()
    with pytest.raises(ClosedError):
        await db.insert_book_ticker_snapshots(tickers(1))
    with pytest.raises(ClosedError):
        await db.initialize()
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db2:
        assert await sql(db2).fetchval("SELECT count(DISTINCT update_id) FROM book_tickers") == 2_345


async def test_a_close_cancelled_twice_still_ends_closed(dsn, tmp_path):
    # close() cancelled (a caller's timeout) and cancelled again while it stops (the caller's own shutdown), with
    # commits in flight: it used to stop half way, the manager left "closing" with its pool's connections open.
    # The teardown now runs to its end before the cancellation goes on; what was not committed is in the spool,
    # and the next manager stores every row once.
    async def backends(conn: asyncpg.Connection) -> int:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                   " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")

    n, total = 200_000, 0
    others = asyncio.all_tasks()  # (tasks of other fixtures sharing this loop)
    watch = await asyncpg.connect(dsn)
    try:
        for i, gap in enumerate((0.005, 0.02, 0.05)):
            db = DatabaseManager(dsn, settings=settings(tmp_path))
            await db.initialize()
            await db.insert_exchange(ExchangeName.BINANCE_SPOT)
            assert await db.insert_book_ticker_snapshots(tickers(n, start_id=total, symbols=50)) == n
            total += n
            closing = asyncio.ensure_future(db.close())
            await asyncio.sleep(0.05)
            closing.cancel()
            await asyncio.sleep(gap)
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            assert "state=closed" in repr(db), (gap, repr(db))
            for _ in range(100):  # (a hang guard: the server ends a backend soon after its socket closes)
                if await backends(watch) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await backends(watch) == 0, gap
            with pytest.raises(ClosedError):
                await db.initialize()
            # Nothing of it left running (a writer's wait for its commits outlived the close: "Task was destroyed
            # but it is pending!" at the loop's end).
            assert [t for t in asyncio.all_tasks() - others if t is not asyncio.current_task()] == [], gap
        async with DatabaseManager(dsn, settings=settings(tmp_path)) as db2:
            await db2.flush()
            assert await sql(db2).fetchval("SELECT count(*) FROM book_tickers") == total
            assert await sql(db2).fetchval("SELECT count(DISTINCT update_id) FROM book_tickers") == total
    finally:
        await watch.close()


def test_ttl_cache_expires_and_invalidates():
    now = [0.0]
    cache = TTLCache[str, int](300, clock=lambda: now[0])
    cache.set("a", 1)
    assert cache.get("a") == 1
    now[0] = 299.9
    assert cache.get("a") == 1
    now[0] = 300.0
    assert cache.get("a") is None
    assert cache.stats() == {"size": 0, "hits": 2, "misses": 1, "expirations": 1}
    cache.set("b", 2)
    cache.invalidate("b")
    assert cache.get("b") is None
    cache.set("c", 3)
    cache.invalidate()
    assert len(cache) == 0
    # A value read before an invalidate (a write or a commit meanwhile) is not stored; one read after is.
    generation = cache.generation
    cache.invalidate("x")
    assert cache.set("d", 4, generation=generation) == now[0] and cache.get("d") is None
    cache.set("d", 4, generation=cache.generation)
    assert cache.get("d") == 4


async def test_symbol_cache_expiry_reads_database_again(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(3, symbols=1))
        assert db.resolve_symbol_id("binance_spot", "SYM0USDT") is not None
        db.invalidate_caches()
        assert db.resolve_symbol_id("binance_spot", "SYM0USDT") is None
        assert (await db.get_symbol("binance_spot", "SYM0USDT")).symbol == "SYM0USDT"
        assert db.resolve_symbol_id("binance_spot", "SYM0USDT") is not None


async def test_maintenance_and_retention_through_the_manager(dsn, tmp_path):
    from hftdb.db import partitions

    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        old = now_us() - 40 * 86_400_000_000  # a backfill from 40 days ago creates its partition on demand
        await db.insert_book_ticker_snapshots(tickers(10, base_ts=old))
        await db.insert_book_ticker_snapshots(tickers(10, start_id=10))
        await db.flush()
        async with db.connection() as conn:
            before = [p.name for p in await partitions.list_partitions(conn, "book_tickers")]
        assert len(before) >= 2
        assert await db.cleanup_old_data(30, dry_run=True) == {
            "book_tickers": [before[0]], "funding_rates": [], "balances": []}
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 20
        dropped = await db.cleanup_old_data(30)
        assert dropped["book_tickers"] == [before[0]]
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 10
        # The writer forgot the dropped partition: another old row recreates it instead of failing.
        await db.insert_book_ticker_snapshots(tickers(1, start_id=99, base_ts=old))
        await db.flush()
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 11
        with pytest.raises(ValidationError):
            await db.cleanup_old_data(-1)
        # Periodic upkeep applies the configured 30-day retention itself, and trims nothing recent from the ledger.
        report = await db.run_maintenance()
        assert report.dropped == [before[0]]
        assert report.ledger_rows_deleted == 0
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 10


async def test_a_backfill_reaching_new_days_commits_without_a_failed_attempt(dsn, tmp_path, caplog):
    # Two commits in flight reach a day that has no partition yet: the first creates it inside its transaction, so
    # the second must wait for that commit, not COPY into a partition it cannot see yet (found in a benchmark: a
    # failed attempt, a retry and a warning for each new day a backfill reached).
    day = 86_400_000_000
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=500, commit_max_rows=1000)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        for back in (50, 49, 48):
            base = (now_us() // day - back) * day + 3_600_000_000
            assert await db.insert_book_ticker_snapshots(tickers(5000, start_id=back * 10_000, base_ts=base)) == 5000
        await db.flush()
        stats = db.writer_stats("book_tickers")
        assert (stats["rows_committed"], stats["retries"], stats["last_error"]) == (15000, 0, None)
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == 15000
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


@pytest.mark.timeout(120)
async def test_a_connection_error_waiting_cannot_cure_fails_at_once(dsn, tmp_path):
    # A missing role (as a wrong password or a missing database) is not retried until connect_timeout runs out:
    # before, DatabaseManager retried it for the whole 600 s asked for here, and this test's timeout failed it.
    parts = urlsplit(dsn)
    bad = urlunsplit(parts._replace(netloc="nosuchuser@" + parts.netloc.rsplit("@", 1)[-1]))
    s = settings(tmp_path)
    s = msgspec.structs.replace(s, database=msgspec.structs.replace(s.database, connect_timeout=600.0))
    with pytest.raises(DatabaseUnavailableError, match='role "nosuchuser" does not exist'):
        async with DatabaseManager(bad, settings=s):
            pass


@pytest.fixture
async def unprivileged_dsn(dsn):
    """``dsn`` for a fresh LOGIN role that may not create anything in schema public (dropped after the test)."""
    role = "hftdb_np_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE ROLE "{role}" LOGIN')  # a name made above, not a value
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        await conn.close()
    parts = urlsplit(dsn)
    try:
        yield urlunsplit(parts._replace(netloc=role + "@" + parts.netloc.rsplit("@", 1)[-1]))
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
            await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()


@pytest.mark.timeout(120)
async def test_a_server_error_at_start_up_is_one_database_error_line(unprivileged_dsn, tmp_path):
    # initialize() let asyncpg's InsufficientPrivilegeError through, and run.py (which catches HftdbError) printed
    # a 30-line traceback for a role that may not create the schema.
    with pytest.raises(DatabaseError, match="permission denied") as info:
        async with DatabaseManager(unprivileged_dsn, settings=settings(tmp_path)):
            pass
    assert "\n" not in str(info.value) and not isinstance(info.value, asyncpg.PostgresError)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTDB_")}
    env.update(HFTDB_DSN=unprivileged_dsn, HFTDB_WRITER_SPOOL_DIR=str(tmp_path / "spool"),
               HFTDB_METRICS_ENABLED="false")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve().parent.parent / "run.py"), cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode == 1, err
    assert "Traceback" not in out.decode() + err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("hftdb: ") and "permission denied" in last, err


def test_a_timeout_is_described_not_left_blank():
    # "cannot connect to ...: TimeoutError: " (or nothing at all after the colon) told a user nothing.
    assert dberrors.describe(asyncio.TimeoutError(), timeout=10.0) == "no answer within 10 s (TimeoutError)"
    assert dberrors.describe(OSError("refused"), timeout=10.0) == "OSError: refused"
    assert dberrors.describe(asyncio.TimeoutError()) == "TimeoutError"


async def test_age_timer_seals_a_batch_with_no_new_rows(dsn, tmp_path):
    # linger holds the idle flusher back; only the age timer can seal this batch.
    async with DatabaseManager(dsn, settings=settings(tmp_path, linger_ms=60_000.0, batch_max_age_ms=30.0)) as db:
        await db.insert_exchange(ExchangeName.BINANCE_SPOT)
        await db.insert_book_ticker_snapshots(tickers(5))
        while db.writer_stats("book_tickers")["rows_committed"] < 5:
            await asyncio.sleep(0.005)
        assert db.writer_stats("book_tickers")["batches_committed"] == 1


async def test_columnar_insert_matches_the_row_path(dsn, tmp_path):
    np = pytest.importorskip("numpy")
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=700)) as db:
        ex = await db.insert_exchange(ExchangeName.BINANCE_USDM)
        syms = [await db.insert_symbol(Symbol(exchange_id=ex.id, symbol=f"S{i}USDT")) for i in range(5)]
        n = 3_000
        t = now_us()
        sid = np.array([syms[i % 5].id for i in range(n)])
        bp = 100.0 + np.arange(n) % 7 + 0.125
        recv = t + np.arange(n)
        exts = recv - 3
        uid = np.arange(n) + 10**12
        bp[17] = np.nan                     # rejected: nan
        exts[18] = 5                        # rejected: exchange_ts out of range
        sid[19] = 999_999                   # rejected: unknown id
        taken = await db.insert_book_ticker_columns(sid, bp, np.full(n, 1.5), bp + 0.5, np.full(n, 2.5), recv,
                                                    exchange_ts=exts, update_id=uid)
        assert taken == n - 3
        await db.flush()
        rejects = db.writer_stats("book_tickers")["rejects"]
        assert rejects == {"bid_price_nan": 1, "exchange_ts_out_of_range": 1, "unknown_symbol_id": 1}
        rows = await sql(db).fetch(
            "SELECT symbol_id, recv_ts, exchange_ts, bid_price, bid_qty, ask_price, ask_qty, update_id"
            " FROM book_tickers ORDER BY update_id")
        keep = [i for i in range(n) if i not in (17, 18, 19)]
        assert [tuple(r) for r in rows] == [
            (int(sid[i]), int(recv[i]), int(exts[i]), float(bp[i]), 1.5, float(bp[i]) + 0.5, 2.5, int(uid[i]))
            for i in keep]
        latest = {r.symbol_id: r for r in await db.get_latest_book_tickers(ExchangeName.BINANCE_USDM)}
        for s in syms:
            last = max(i for i in keep if sid[i] == s.id)
            assert (latest[s.id].recv_ts, latest[s.id].update_id) == (int(recv[last]), int(uid[last]))
        with pytest.raises(ValidationError):
            await db.insert_book_ticker_columns(sid[:3], bp, bp, bp, bp, recv)


async def test_distribute_on_plain_postgresql_says_why(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        with pytest.raises(StateError, match="the citus extension is not created in this database"):
            await db.distribute()


async def test_a_huge_named_call_is_taken_whole_or_not_at_all_as_a_small_one(dsn, tmp_path):
    # A call of more than two batches named by exchange and symbol is taken slice by slice (its names looked up
    # once, each slice packed with its ids) only when every name is cached; a call with a new
    # symbol, an unknown exchange or a bad name is handled as a small call is: the new symbol registered, the
    # unknown exchange raising before any row of the call is taken, the bad name's row rejected alone.
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=50)) as db:
        ex = await db.insert_exchange(ExchangeName.BYBIT_LINEAR)
        for i in range(3):
            await db.insert_symbol(Symbol(exchange_id=ex.id, symbol=f"S{i}USDT"))
        t = now_us()
        count = 0

        def call(last: BookTicker) -> list[BookTicker]:
            nonlocal t
            rows = [BookTicker("bybit_linear", f"S{i % 3}USDT", 100.0, 1.0, 100.5, 1.0, t + i, update_id=i)
                    for i in range(399)]
            t += 1_000
            return rows + [last]

        async def stored() -> int:
            await db.flush()
            return await sql(db).fetchval("SELECT count(*) FROM book_tickers")

        hits = (await db.get_database_stats())["caches"]["symbol_ids"]["hits"]
        assert await db.insert_book_ticker_snapshots(call(BookTicker("bybit_linear", "S0USDT", 1, 1, 2, 1, t))) == 400
        assert (await db.get_database_stats())["caches"]["symbol_ids"]["hits"] - hits == 400
        count += 400
        assert await stored() == count
        assert await db.insert_book_ticker_snapshots(call(BookTicker("bybit_linear", "NEWUSDT", 1, 1, 2, 1, t))) == 400
        count += 400
        assert await stored() == count
        assert (await db.get_symbol("bybit_linear", "NEWUSDT")).status == "unknown"
        with pytest.raises(UnknownExchangeError):
            await db.insert_book_ticker_snapshots(call(BookTicker("nowhere", "X", 1, 1, 2, 1, t)))
        assert await stored() == count
        before = db.writer_stats("book_tickers")["rejects"].get("symbol_bad_char", 0)
        assert await db.insert_book_ticker_snapshots(call(BookTicker("bybit_linear", "B\x00D", 1, 1, 2, 1, t))) == 399
        assert db.writer_stats("book_tickers")["rejects"]["symbol_bad_char"] == before + 1
        count += 399
        assert await stored() == count


async def test_a_role_that_may_only_read_starts_without_error_lines(dsn, tmp_path, caplog):
    # The writers ready two connections each at start; a role that may not write failed one of them while the
    # other still had its transaction open, and asyncpg logged "Resetting connection with an active transaction"
    # at ERROR, three times, with nothing to say what it meant.
    async with DatabaseManager(dsn, settings=settings(tmp_path / "admin")):
        pass  # (the schema and today's partitions)
    role = "hftdb_ro_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')  # a name made above, not a value
        await admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        parts = urlsplit(dsn)
        reader = urlunsplit(parts._replace(netloc=role + "@" + parts.netloc.rsplit("@", 1)[-1]))
        async with DatabaseManager(reader, settings=settings(tmp_path)) as db:
            assert await db.get_latest_book_tickers() == []
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert errors == []
    finally:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_a_reader_beside_a_writer_opens_with_no_spool_and_the_refusal_says_how(dsn, tmp_path):
    # docs/READS.md's intro, run beside the daemon, failed with "in use by another writer" and no way out named.
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as daemon:  # holds tmp_path/spool
        await daemon.insert_exchange(ExchangeName.BINANCE_SPOT)
        assert await daemon.insert_book_ticker_snapshots(tickers(10)) == 10
        await daemon.flush()
        second = DatabaseManager(dsn, settings=settings(tmp_path))
        with pytest.raises(ConfigError) as caught:
            await second.initialize()
        message = str(caught.value)
        assert "in use by another writer" in message and 'DatabaseManager(spool_dir="")' in message
        assert "HFTDB_WRITER_SPOOL_DIR" in message and "DatabaseManager(spool_dir=...)" in message
        async with DatabaseManager(dsn, settings=settings(tmp_path), spool_dir="") as reader:
            assert len(await reader.get_latest_book_tickers("binance_spot")) == 10
    assert not list((tmp_path / "spool").rglob("*.spool"))


async def test_a_backend_ended_under_a_start_up_step_is_one_database_unavailable_error(dsn, tmp_path):
    # Terminated while it applied the migrations (a server restart, pg_terminate_backend), the start-up ended in
    # asyncpg's ConnectionDoesNotExistError and, from run.py, a traceback. Made deterministic: the test holds the
    # migration lock, and ends the backend that waits for it.
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        db = DatabaseManager(dsn, settings=settings(tmp_path))
        start = asyncio.create_task(db.initialize())
        waiting = None
        async with asyncio.timeout(60):
            while waiting is None:
                await asyncio.sleep(0.02)
                waiting = await holder.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'advisory'")
        await holder.execute("SELECT pg_terminate_backend($1)", waiting)
        with pytest.raises(DatabaseUnavailableError, match="went away while applying the migrations") as caught:
            await start
        assert "start again" in str(caught.value)
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        async with DatabaseManager(dsn, settings=settings(tmp_path)) as again:  # starting again resumes
            assert await again.health_check()
    finally:
        await holder.close()

"""The vectorized book-ticker path (hftdb.store.vector) stores, rejects and keeps latest exactly like the per-row path.

Rows that carry a registered ``symbol_id`` take the vectorized path; the same rows named by exchange and symbol
take the per-row path. Both get the same mix of good and bad values, and the database must end up the same.
"""

import asyncio
import random
import threading

import asyncpg
import msgspec
import pytest

from hftdb import BookTicker, CacheSettings, DatabaseManager, ExchangeName, Symbol, now_us
from hftdb.store import vector
from hftdb.db.cache import TTLCache
from hftdb.store.tables import BookTickerWriter
from hftdb.store.writer import COPIES_WHILE_PRODUCING

from helpers import settings, sql

N_SYMBOLS = 12
EXCHANGE = ExchangeName.BINANCE_USDM


def _values(n: int, seed: int) -> list[dict]:
    """``n`` ticker value sets: mostly good, with every kind of bad value and out-of-order receipt times."""
    rnd = random.Random(seed)
    t = now_us()
    out = []
    for i in range(n):
        bp = 100.0 + rnd.randrange(1000) / 8
        v = dict(bid_price=bp, bid_qty=1.0 + rnd.random(), ask_price=bp + 0.125, ask_qty=2.0 + rnd.random(),
                 recv_ts=t + i * 10 + rnd.randrange(5), exchange_ts=t + i * 10 - 7, update_id=10**12 + i)
        if rnd.random() < 0.05:
            v["recv_ts"] -= 50_000  # out of receipt order: latest must still pick the newest
        k = rnd.random()
        if k < 0.015:
            v["bid_price"] = float("nan")
        elif k < 0.03:
            v["ask_qty"] = float("inf")
        elif k < 0.045:
            v["bid_price"] = -v["bid_price"]
        elif k < 0.06:
            v["bid_qty"] = 0.0
        elif k < 0.075:
            v["bid_price"], v["ask_price"] = v["ask_price"] + 1, v["bid_price"]
        elif k < 0.09:
            v["recv_ts"] = 1_600_000
        elif k < 0.1:
            v["exchange_ts"] = t + 10 * 86_400_000_000
        out.append(v)
    return out


def _typed_oddities(t: int) -> list[dict]:
    """Values the fast path can't pack (wrong types, a NULL pattern differing from the first row's)."""
    good = dict(bid_price=10.0, bid_qty=1.0, ask_price=10.5, ask_qty=1.0, recv_ts=t, exchange_ts=t - 1,
                update_id=None)
    return [
        dict(good, update_id=1),
        dict(good, bid_price="100"),
        dict(good, recv_ts=1.5e15),
        dict(good, exchange_ts=None, update_id=2),
        dict(good, update_id=3),
    ]


async def _rows(db: DatabaseManager, table: str, ids: list[int]) -> list[tuple]:
    """``table``'s rows of the symbols ``ids``, with each id replaced by its position (to compare two sets)."""
    assert table in ("book_tickers", "book_tickers_latest")
    rows = await sql(db).fetch(
        "SELECT symbol_id, recv_ts, exchange_ts, bid_price, bid_qty, ask_price, ask_qty, update_id"
        f" FROM {table} WHERE symbol_id = ANY($1::int4[])", ids)
    index = {sid: i for i, sid in enumerate(ids)}
    return sorted((index[r[0]], *r[1:]) for r in rows)


@pytest.mark.parametrize("chunk", [vector.MIN_ROWS, 100, 250, 1_000, 3_000])  # 3,000: one call, taken in slices
async def test_vectorized_path_matches_row_path(dsn, tmp_path, chunk, monkeypatch):
    # The same values three times, each on its own symbols: through the per-row path (the vectorized one switched
    # off), vectorized with ids on the rows, and vectorized with ids resolved from the rows' names.
    values = _values(chunk * (3_000 // chunk), seed=chunk)  # whole calls only: a short last one goes per row
    taken_fast: list[int | None] = []
    real = vector.add_tickers
    enabled = False

    def spy(*args):
        taken_fast.append(real(*args) if enabled else None)
        return taken_fast[-1]

    monkeypatch.setattr(vector, "add_tickers", spy)
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=700)) as db:
        ex = await db.insert_exchange(EXCHANGE)
        sets = {how: [await db.insert_symbol(Symbol(exchange_id=ex.id, symbol=f"{how[0].upper()}{i}USDT"))
                      for i in range(N_SYMBOLS)] for how in ("rows", "ids", "names")}

        async def insert(how: str) -> dict[str, int]:
            before = db.writer_stats("book_tickers")["rejects"]
            syms = sets[how]
            rows = [BookTicker(EXCHANGE.value, syms[i % N_SYMBOLS].symbol, **v,
                               symbol_id=syms[i % N_SYMBOLS].id if how == "ids" else None)
                    for i, v in enumerate(values)]
            taken_fast.clear()
            taken = 0
            for i in range(0, len(rows), chunk):
                taken += await db.insert_book_ticker_snapshots(rows[i:i + chunk])
            await db.flush()
            after = db.writer_stats("book_tickers")["rejects"]
            return {"taken": taken, **{k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}}

        by_row = await insert("rows")
        assert by_row["taken"] < len(values)  # the mix really holds bad rows
        enabled = True
        for how in ("ids", "names"):
            vectorized = await insert(how)
            assert sum(n or 0 for n in taken_fast) == vectorized["taken"]  # every call took the vectorized path
            assert vectorized == by_row
            ids, ref = [s.id for s in sets[how]], [s.id for s in sets["rows"]]
            assert await _rows(db, "book_tickers", ids) == await _rows(db, "book_tickers", ref)
            latest = await _rows(db, "book_tickers_latest", ids)
            assert latest == await _rows(db, "book_tickers_latest", ref)
            assert len(latest) == N_SYMBOLS


async def test_small_calls_take_the_per_row_path(dsn, tmp_path):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(EXCHANGE)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()
        rows = [BookTicker(EXCHANGE.value, "BTCUSDT", 10.0, 1.0, 10.5, 1.0, t + i, symbol_id=sym.id)
                for i in range(vector.MIN_ROWS)]
        # A writer like the manager's (never started: units of work use one so), asked alone.
        async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
            writer = BookTickerWriter(pool, settings=db.settings.writer, storage=db.settings.storage, spool_dir=None)
            assert writer.add_fast(rows[:-1], {sym.id}) is None  # below MIN_ROWS: not worth its fixed cost
        assert await db.insert_book_ticker_snapshots(rows[:-1]) == vector.MIN_ROWS - 1
        await db.flush()
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == vector.MIN_ROWS - 1


async def test_vectorized_path_falls_back_per_row_on_odd_types(dsn, tmp_path, monkeypatch):
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(EXCHANGE)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()
        rows = [BookTicker(EXCHANGE.value, "BTCUSDT", **v, symbol_id=sym.id) for v in _typed_oddities(t)]
        rows.append(BookTicker(EXCHANGE.value, "BTCUSDT", 10.0, 1.0, 10.5, 1.0, t, symbol_id=987_654))
        monkeypatch.setattr(vector, "MIN_ROWS", 1)  # so this small call is offered to the vectorized path
        assert await db.insert_book_ticker_snapshots(rows) == 3
        await db.flush()
        assert db.writer_stats("book_tickers")["rejects"] == {
            "bid_price_wrong_type": 1, "recv_ts_wrong_type": 1, "unknown_symbol_id": 1}
        stored = await sql(db).fetch("SELECT exchange_ts, update_id FROM book_tickers ORDER BY update_id")
        assert [tuple(r) for r in stored] == [(t - 1, 1), (None, 2), (t - 1, 3)]


def test_ttl_cache_get_many_honours_expiry_and_counts():
    now = [0.0]
    cache = TTLCache[str, int](10, clock=lambda: now[0])
    cache.set("a", 1)
    now[0] = 5.0
    cache.set("b", 2)
    assert cache.get_many(["a", "b", "c"]) == [1, 2, None]
    now[0] = 10.0  # "a" expires at 10, "b" at 15
    assert cache.get_many(iter(["a", "b"])) == [None, 2]
    assert (cache.hits, cache.misses) == (3, 2)


@pytest.mark.parametrize("has_e", [True, False])
@pytest.mark.parametrize("has_u", [True, False])
def test_whole_tuple_packing_matches_the_row_path_and_refuses_values_where_the_first_row_has_none(has_e, has_u):
    # No database: the bytes and latest rows each path leaves in a batch. The vectorized path packs BookTicker's
    # whole astuple, taking a NULL-pattern field as an ignored byte, so it must refuse a value there, even 0.
    from hftdb.config import StorageSettings, WriterSettings
    from hftdb.store.tables import BookTickerWriter

    def writer() -> BookTickerWriter:
        ws = WriterSettings(spool_dir=None, batch_max_rows=100_000, buffer_max_rows=100_000)
        return BookTickerWriter(None, settings=ws, storage=StorageSettings(), spool_dir=None)  # type: ignore[arg-type]

    t = now_us()
    rows = [BookTicker("binance_usdm", f"S{i % 7}", 10.0 + i % 5, 1.0 + i, 10.5 + i % 5, 2.0, t + i,
                       t + i - 3 if has_e else None, 10**9 + i if has_u else None, symbol_id=1 + i % 7)
            for i in range(vector.MIN_ROWS + 3)]
    by_row, fast, by_name = writer(), writer(), writer()
    assert by_row.add([(r.symbol_id, r) for r in rows]) == len(rows)
    assert fast.add_fast(rows, set(range(1, 8))) == len(rows)
    named = [BookTicker(r.exchange, r.symbol, r.bid_price, r.bid_qty, r.ask_price, r.ask_qty, r.recv_ts,
                        r.exchange_ts, r.update_id) for r in rows]
    assert by_name.add_fast(named, set(range(1, 8)), [r.symbol_id for r in rows]) == len(rows)
    for other in (fast, by_name):
        assert bytes(other.current.buf) == bytes(by_row.current.buf)
    assert fast.current.latest == by_row.current.latest
    for field, has in (("exchange_ts", has_e), ("update_id", has_u)):
        if not has:
            for value in (t, 0):
                odd = list(rows)
                odd[5] = BookTicker(**{**{f: getattr(rows[5], f) for f in BookTicker.__struct_fields__}, field: value})
                assert writer().add_fast(odd, set(range(1, 8))) is None


async def test_columns_path_invalidates_the_latest_cache_like_the_others(dsn, tmp_path):
    # With the latest cache on, a read after a flush must see the columns just written, as after any other insert.
    cfg = msgspec.structs.replace(settings(tmp_path), cache=CacheSettings(latest_ttl_ms=600_000.0))
    async with DatabaseManager(dsn, settings=cfg) as db:
        ex = await db.insert_exchange(EXCHANGE)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()
        await db.insert_book_ticker_columns([sym.id], [10.0], [1.0], [10.5], [1.0], [t])
        await db.flush()
        assert [r.bid_price for r in await db.get_latest_book_tickers(symbol_ids=[sym.id])] == [10.0]  # cached now
        await db.insert_book_ticker_columns([sym.id], [11.0], [1.0], [11.5], [1.0], [t + 1])
        await db.flush()
        assert [r.bid_price for r in await db.get_latest_book_tickers(symbol_ids=[sym.id])] == [11.0]


async def test_a_read_between_a_call_and_its_commit_does_not_pin_the_old_row_in_the_latest_cache(dsn, tmp_path):
    # The cache forgets on a call; a read before that call's commit then cached the old row again, and it stood
    # for the whole TTL: after flush() (read-your-writes), with primary=True, and for a LatestMirror, which reloads
    # through the primary once the commit is announced and then held the old row.
    cfg = msgspec.structs.replace(settings(tmp_path, linger_ms=300.0), cache=CacheSettings(latest_ttl_ms=600_000.0))
    async with DatabaseManager(dsn, settings=cfg) as db:
        ex = await db.insert_exchange(EXCHANGE)
        sym = await db.insert_symbol(Symbol(exchange_id=ex.id, symbol="BTCUSDT"))
        t = now_us()

        async def bid(**kw) -> list[float]:
            return [r.bid_price for r in await db.get_latest_book_tickers(symbol_ids=[sym.id], **kw)]

        for price, i in ((10.0, 0), (11.0, 1)):
            committed = db.writer_stats("book_tickers")["rows_committed"]
            row = BookTicker(EXCHANGE.value, "BTCUSDT", price, 1.0, price + 0.5, 1.0, t + i)
            await db.insert_book_ticker_snapshots([row])
            assert await bid() == ([] if i == 0 else [10.0])  # before the commit: the old row, cached
            while db.writer_stats("book_tickers")["rows_committed"] == committed:  # committed, no flush
                await asyncio.sleep(0.01)
            assert await bid(primary=True) == [price]
            assert await bid() == [price]  # the commit emptied the cache
        await db.insert_book_ticker_snapshots([BookTicker(EXCHANGE.value, "BTCUSDT", 12.0, 1.0, 12.5, 1.0, t + 2)])
        assert await bid() == [11.0]
        await db.flush()
        assert await bid() == [12.0]


async def test_a_big_call_does_not_hold_the_loop_for_its_whole_encode(dsn, tmp_path):
    # A call of many batches is encoded a batch at a time, yielding between: another task runs while the call is
    # under way, and sees part of its rows accepted already. Every row is then stored once.
    async with DatabaseManager(dsn, settings=settings(tmp_path, batch_max_rows=500)) as db:
        ex = await db.insert_exchange(EXCHANGE)
        syms = [await db.insert_symbol(Symbol(exchange_id=ex.id, symbol=f"S{i}USDT")) for i in range(3)]
        t = now_us()
        rows = [BookTicker(EXCHANGE.value, syms[i % 3].symbol, 10.0, 1.0, 10.5, 1.0, t + i, update_id=i)
                for i in range(5_000)]
        seen: list[int] = []
        call = asyncio.ensure_future(db.insert_book_ticker_snapshots(rows))
        while not call.done():
            seen.append(db.writer_stats("book_tickers")["rows_accepted"])
            await asyncio.sleep(0)
        assert await call == len(rows)
        assert any(0 < n < len(rows) for n in seen)
        await db.flush()
        assert await sql(db).fetchval("SELECT count(DISTINCT update_id) FROM book_tickers") == len(rows)
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == len(rows)


async def test_a_big_call_cancelled_half_way_takes_its_rows_whole(dsn, tmp_path):
    # A call cancelled after its first slice was taken (the caller's timeout, a task cancelled) takes the rest of
    # its rows before the cancellation goes on: a call is taken whole or not at all, so the caller, who cannot learn
    # a count from the CancelledError, never has to guess which of its rows are in. Cancelled while it waits for
    # room in the buffer, it takes none. The latest cache forgets what it held, as after any call that took rows.
    cfg = msgspec.structs.replace(settings(tmp_path, batch_max_rows=500), cache=CacheSettings(latest_ttl_ms=600_000.0))
    async with DatabaseManager(dsn, settings=cfg) as db:
        ex = await db.insert_exchange(EXCHANGE)
        syms = [await db.insert_symbol(Symbol(exchange_id=ex.id, symbol=f"S{i}USDT")) for i in range(3)]
        t = now_us()
        rows = [BookTicker(EXCHANGE.value, syms[i % 3].symbol, 10.0, 1.0, 10.5, 1.0, t + i, update_id=i)
                for i in range(5_000)]
        assert await db.get_latest_book_tickers(symbol_ids=[s.id for s in syms]) == []  # cached now
        call = asyncio.ensure_future(db.insert_book_ticker_snapshots(rows))
        while db.writer_stats("book_tickers")["rows_accepted"] == 0:
            await asyncio.sleep(0)
        assert not call.done()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert db.writer_stats("book_tickers")["rows_accepted"] == len(rows)
        await db.flush()  # (room in the buffer: the next call starts taking rows at once)
        latest = await db.get_latest_book_tickers(symbol_ids=[s.id for s in syms])
        assert sorted(r.update_id for r in latest) == [4_997, 4_998, 4_999]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await db.insert_book_ticker_snapshots([*rows[:2_000], *rows[:2_000]])
        assert db.writer_stats("book_tickers")["rows_accepted"] == len(rows) + 4_000
        await db.flush()
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == len(rows) + 4_000
        assert await sql(db).fetchval("SELECT count(DISTINCT update_id) FROM book_tickers") == len(rows)


class _CopyWatch:
    """Counts, from a thread and a connection of its own (the test's loop is busy packing), the book_tickers COPYs
    the server is running, sample after sample."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[int] = []
        self.ready, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(),))

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.stop.is_set():
                n = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                                        " AND query LIKE 'COPY \"book_tickers\"%'")
                self.samples.append(n)
                self.ready.set()
        finally:
            await conn.close()


async def test_a_big_call_copies_one_group_at_a_time_on_a_small_host(dsn, tmp_path):
    # While a big call packs its slices, its commits COPY at most COPIES_WHILE_PRODUCING groups at once (one on a
    # host of two CPUs, where the packing holds one of them); once it has returned, the backlog it left is
    # committed two COPYs at a time. The server's own view (pg_stat_activity) counts the COPYs; every row is
    # stored once.
    async with DatabaseManager(dsn, settings=settings(tmp_path)) as db:
        ex = await db.insert_exchange(EXCHANGE)
        syms = [await db.insert_symbol(Symbol(exchange_id=ex.id, symbol=f"S{i}USDT")) for i in range(200)]
        t = now_us()
        n = 600_000
        rows = [BookTicker(EXCHANGE.value, syms[i % 200].symbol, 10.0, 1.0, 10.5, 1.0, t + i, update_id=i)
                for i in range(n)]
        watch = _CopyWatch(dsn)
        watch.thread.start()
        try:
            assert await asyncio.to_thread(watch.ready.wait, 30)
            assert await db.insert_book_ticker_snapshots(rows) == n
            # (No commit has started since the call returned: this task has not given the loop up yet, so every
            # sample counted so far saw the call's stretch.)
            during = len(watch.samples)
            await db.flush()
        finally:
            watch.stop.set()
            await asyncio.to_thread(watch.thread.join)
        # It did look while the call ran. (A sample takes the GIL twice, from a call that holds it between its
        # slices: 7 samples in one CI run on this machine, more in others; three are enough for the bound.)
        assert during >= 3
        assert max(watch.samples[:during]) <= COPIES_WHILE_PRODUCING
        assert max(watch.samples[during:]) == 2  # and two at once after it: the sampler does see them
        assert await sql(db).fetchval("SELECT count(DISTINCT update_id) FROM book_tickers") == n
        assert await sql(db).fetchval("SELECT count(*) FROM book_tickers") == n

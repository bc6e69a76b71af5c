"""Packed book rows (``hftdb.store.packed``): the intake packs COPY tuples while parsing, and the writer takes them whole.

The same frames go once through the packed path (the sink is a ``DatabaseManager``) and once through the public
path (the same manager behind a proxy without ``insert_packed_book_tickers``), each into its own database. The
stored rows, the latest rows, the writer's rejects by reason and the feed's counters must be identical, on the
recorded fixtures, generated frames and frames built to be rejected (NaN, infinite, negative, zero, crossed,
times out of range, an update id out of int8, an unknown symbol, malformed and duplicated frames).
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest

from hftdb import DatabaseManager, now_us
from hftdb.config import StorageSettings, WriterSettings, load_settings
from hftdb.exchanges.binance import BinanceAdapter
from hftdb.exchanges.intake import Intake
from hftdb.exchanges.runner import StreamRunner
from hftdb.models import FUTURE_SLACK_US, BookTicker, ExchangeName, Symbol
from hftdb.store.tables import BookTickerWriter
from hftdb.store.packed import add_packed
from hftdb.wire.books import PackedBooks
from hftdb.wire.rules import book_fits

USDM = ExchangeName.BINANCE_USDM
SYMBOLS = [f"S{i:03d}USDT" for i in range(1, 41)]
BIG_ID = "BIGIDUSDT"  # sends an update id beyond int8 (rejected bad_update_id before admission): kept apart
BAD = "BADQUOTEUSDT"  # the refused quotes' symbol, so that the generated ones never make theirs duplicates
REGISTERED = SYMBOLS + [BIG_ID, BAD, "SUSHIUSDT", "CTKUSDT", "AKROUSDT", "KEEPUSDT", "NKNUSDT", "LRCBTC"]


def settings(max_rows: int):
    base = load_settings(environ={})
    return msgspec.structs.replace(
        base, writer=msgspec.structs.replace(base.writer, spool_dir=None, batch_max_rows=max_rows))


class PublicPath:
    """The manager as a sink that does not take packed rows: every call goes the public insert path."""

    def __init__(self, db: DatabaseManager) -> None:
        self._db = db

    def __getattr__(self, name: str):
        if name == "insert_packed_book_tickers":
            raise AttributeError(name)
        return getattr(self._db, name)


def frame(symbol: str, u: int, b: str, bq: str, a: str, aq: str, e: int | None = 1_700_000_000_123) -> bytes:
    event = {"e": "bookTicker", "u": u, "s": symbol, "b": b, "B": bq, "a": a, "A": aq, "T": 1_700_000_000_100}
    if e is not None:
        event["E"] = e
    return msgspec.json.encode({"stream": f"{symbol.lower()}@bookTicker", "data": event})


class Frames:
    """Generated USD-M bookTicker frames with rising update ids."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.u = 1_000_000

    def next_u(self) -> int:
        self.u += self.rng.randint(1, 9)
        return self.u

    def good(self, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            bid = round(self.rng.uniform(1, 1000), 3)
            out.append(frame(self.rng.choice(SYMBOLS), self.next_u(), f"{bid:.3f}", str(self.rng.randint(1, 500)),
                             f"{bid + 0.001 * self.rng.randint(1, 5):.3f}", str(self.rng.randint(1, 500))))
        return out

    def bad(self) -> list[tuple[bytes, bool]]:
        """Frames refused by the writer or by the parser, and a few awkward ones that are fine; with each, whether
        a call holding it (among good frames) is still taken packed."""
        s = BAD
        n = self.next_u
        future_ms = (now_us() + 2 * FUTURE_SLACK_US) // 1000
        return [
            (frame(s, n(), "NaN", "1", "2", "1"), False),
            (frame(s, n(), "1", "nan", "2", "1"), False),
            (frame(s, n(), "1", "1", "inf", "1"), False),
            (frame(s, n(), "-inf", "1", "2", "1"), False),
            (frame(s, n(), "-1", "1", "2", "1"), False),
            (frame(s, n(), "0", "1", "2", "1"), False),
            (frame(s, n(), "1", "0", "2", "1"), False),
            (frame(s, n(), "1", "1", "2", "-0.0"), False),
            (frame(s, n(), "1", "1", "2", "-2"), False),
            (frame(s, n(), "3", "1", "2", "1"), False),  # crossed
            (frame(s, n(), "1", "1", "2", "1", e=future_ms), False),
            (frame(s, n(), "1", "1", "2", "1", e=None), False),  # no event time (spot-shaped): stored, not packed
            (frame("NEWLISTUSDT", n(), "1", "1", "2", "1"), False),  # unregistered: registered on first sight
            (frame(s, n(), "1", "1", "1", "1"), True),  # bid == ask: stored
            # Frames the parser refuses or stores elsewhere add no book row: the call stays whole.
            (frame(s, n(), "1", "1", "2", "1", e=5), True),  # 5 ms after 1970: the intake's reject (bad_time)
            (frame(BIG_ID, 2**63, "1", "1", "2", "1"), True),  # update id beyond int8: the intake's (bad_update_id)
            (b'{"stream":"s001usdt@bookTicker","data":{"e":"bookTicker","u":5,"s":"S001USDT","b":"1"}}', True),
            (b'{"stream":"s001usdt@bookTicker","data":{"e":"bookTicker","u":6,"s":"S001USDT","b":"x","B":"1",'
             b'"a":"2","A":"1","E":1700000000000}}', True),
            (b"not json", True),
            (b'{"stream":"s003usdt@markPrice","data":{"e":"markPriceUpdate","E":1700000000000,"s":"S003USDT",'
             b'"p":"11.5","i":"11.4","P":"11.6","r":"0.0001","T":1700003600000}}', True),
        ]


def build_calls(fixtures_dir) -> tuple[list[list[tuple[int, list[bytes]]]], list[bool]]:
    """Calls (lists of socket reads) and whether each must be taken packed."""
    gen = Frames(seed=3)
    t = now_us()
    calls: list[list[tuple[int, list[bytes]]]] = []
    clean: list[bool] = []

    def add(frames: list[bytes], *, per_read: int = 10, packed: bool, step: int = 1) -> None:
        nonlocal t
        reads = []
        for i in range(0, len(frames), per_read):
            t += step
            reads.append((t, frames[i:i + per_read]))
        calls.append(reads)
        clean.append(packed)

    add(gen.good(100), packed=True)
    add(gen.good(250), per_read=25, packed=True)
    for bad, packs in gen.bad():
        good = gen.good(6)
        add(good[:3] + [bad] + good[3:], packed=packs)
    add(gen.good(30) + [f for f, _ in gen.bad()] + gen.good(30), packed=False)
    dup = gen.good(5)
    add(dup + dup[2:4], packed=True)  # duplicates are dropped before packing: the call stays whole
    # Receipt times that go back between reads of one call (a wall clock stepped back).
    add(gen.good(40), packed=True, step=-3)
    before = t
    add(gen.good(20), packed=False, step=2 * FUTURE_SLACK_US)  # receipt times out of range
    t = before
    for name in ("binance_usdm_bookTicker_combined_recorded.jsonl", "binance_spot_bookTicker_combined_recorded.jsonl"):
        lines = [line.encode() for line in (fixtures_dir / name).read_text().splitlines() if line.strip()]
        add(lines, per_read=4, packed="usdm" in name)
    add(gen.good(100), packed=True)
    return calls, clean


async def run(dsn: str, calls, *, packed: bool, max_rows: int):
    async with DatabaseManager(dsn, settings=settings(max_rows)) as db:
        ex = await db.insert_exchange(USDM)
        await db.sync_symbols(USDM, [Symbol(exchange_id=ex.id, symbol=s, kind="perpetual", status="trading")
                                     for s in REGISTERED])
        sink = db.feed_sink() if packed else PublicPath(db)
        adapter = BinanceAdapter(USDM, sink, symbols=REGISTERED, channels=("bookTicker",))
        runner = StreamRunner(adapter)
        intake = Intake(runner, adapter.new_parser())
        taken_packed = []
        for chunks in calls:
            batch = intake.process(chunks)
            books = batch.book_tickers
            taken_packed.append(type(books) is PackedBooks and books.buf is not None)
            await runner.push(batch)
        await db.flush()
        writer = (await db.get_database_stats())["writers"]["book_tickers"]
        feed = adapter.stats.as_dict()
    conn = await asyncpg.connect(dsn)
    try:
        rows = [tuple(r) for r in await conn.fetch(
            "SELECT s.symbol, b.recv_ts, b.exchange_ts, b.bid_price, b.bid_qty, b.ask_price, b.ask_qty, b.update_id"
            " FROM book_tickers b JOIN symbols s ON s.id = b.symbol_id ORDER BY 1, 8, 2")]
        latest = [tuple(r) for r in await conn.fetch(
            "SELECT s.symbol, l.recv_ts, l.exchange_ts, l.bid_price, l.bid_qty, l.ask_price, l.ask_qty, l.update_id"
            " FROM book_tickers_latest l JOIN symbols s ON s.id = l.symbol_id ORDER BY 1")]
        funding = await conn.fetchval("SELECT count(*) FROM funding_rates")
    finally:
        await conn.close()
    counters = {k: feed[k] for k in ("messages", "duplicates", "book_rows", "funding_rows", "rejects_by_reason")}
    return {"rows": rows, "latest": latest, "funding": funding, "rejects": writer["rejects"],
            "committed": writer["rows_committed"], "feed": counters}, taken_packed


@pytest.fixture
async def other_dsn(pg_admin_dsn):
    """A second fresh database, for the public path's run."""
    name = "hftdb_t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')  # name: hex digits of ours
    finally:
        await admin.close()
    try:
        parts = urlsplit(pg_admin_dsn)
        yield urlunsplit(parts._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.mark.parametrize("max_rows", [10_000, 7], ids=["one-batch", "calls-straddle-batches"])
async def test_packed_and_public_paths_store_the_same_rows_and_rejects(dsn, other_dsn, fixtures_dir, max_rows):
    calls, clean = build_calls(fixtures_dir)
    fast, taken = await run(dsn, calls, packed=True, max_rows=max_rows)
    public, never = await run(other_dsn, calls, packed=False, max_rows=max_rows)
    assert taken == clean  # the clean calls went the packed path, every other one the public path
    assert not any(never)
    assert fast == public
    # The input did exercise the writer's checks and the parser's.
    assert set(fast["rejects"]) >= {
        "bid_price_nan", "bid_qty_nan", "ask_price_infinite", "bid_price_infinite", "bid_price_negative",
        "bid_price_zero", "empty_quote", "ask_qty_negative", "crossed_quote", "exchange_ts_out_of_range",
        "recv_ts_out_of_range",
    }, fast["rejects"]
    assert {"bad_update_id", "bad_time"} <= set(fast["feed"]["rejects_by_reason"])
    assert fast["feed"]["duplicates"] >= 2
    assert fast["feed"]["rejects_by_reason"]
    assert fast["committed"] == len(fast["rows"]) > 500
    assert fast["funding"] >= 1


def test_fits_agrees_with_the_per_row_writer():
    """``hftdb.wire.rules.book_fits`` (inlined in the per-row writer) takes exactly what the writer's per-row
    path takes, over every combination of edge values."""
    writer = BookTickerWriter(None, settings=WriterSettings(spool_dir=None), storage=StorageSettings(),  # type: ignore[arg-type]
                              spool_dir=None)
    now = now_us()
    ts_max = now + FUTURE_SLACK_US
    values = [math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 5e-324, 1.0, 2.0, 1.7976931348623157e308]
    times = [0, 1_230_767_999_999_999, 1_230_768_000_000_000, now, ts_max, ts_max + 1_000_000_000]
    seen = {True: 0, False: 0}
    for bp, bq, ap, aq, ex in itertools.product(values, values, values, values, times):
        row = BookTicker("binance_usdm", "X", bp, bq, ap, aq, now, ex, 1, 1)
        before = writer.rejects.total
        assert writer.add([(1, row)]) in (0, 1)
        took = writer.rejects.total == before
        assert book_fits(bp, bq, ap, aq, ex, ts_max) is took, row
        seen[took] += 1
    assert seen[True] and seen[False]


class _Ids:
    """A sink that takes packed rows and knows every symbol; the intake never calls it here."""

    def __init__(self) -> None:
        self.ids = {s: i for i, s in enumerate(REGISTERED, 1)}

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        return self.ids.get(symbol)

    # The rest of the PackedSink protocol (hftdb.exchanges.sink), so that the intake packs for it.
    async def insert_exchange(self, exchange): ...
    async def get_exchange_by_enum(self, name): ...
    async def sync_symbols(self, exchange, symbols): ...
    async def insert_book_ticker_snapshots(self, rows): ...
    async def insert_funding_rates(self, rows): ...
    async def insert_balance_snapshots(self, rows): ...
    async def flush(self): ...

    async def insert_packed_book_tickers(self, rows):
        raise AssertionError("not called")


def test_exchange_span_and_straddled_batches_read_the_packed_call():
    """``PackedBooks.exchange_span`` gives a packed call's exchange-time range from its tuples, and a call in
    receipt order that straddles batches gives each batch the range of its own rows (read from the slice's
    ends)."""
    sink = _Ids()
    adapter = BinanceAdapter(USDM, sink, symbols=REGISTERED, channels=("bookTicker",))  # type: ignore[arg-type]
    intake = Intake(StreamRunner(adapter), adapter.new_parser())
    gen = Frames(seed=5)
    t = now_us()
    frames = [frame(f"S{1 + i % 40:03d}USDT", gen.next_u(), "1.5", "2", "1.6", "3", e=1_700_000_000_000 + i * 7)
              for i in range(108)]
    first = intake.process([(t, frames[:13])]).book_tickers
    books = intake.process([(t + 1 + i, frames[13 + i * 10:23 + i * 10]) for i in range(10)]).book_tickers
    assert type(books) is PackedBooks and books.buf is not None and books.ordered and len(books) == 95
    assert books.exchange_span() == (min(r.exchange_ts for r in books), max(r.exchange_ts for r in books))
    assert PackedBooks(books).exchange_span() is None and PackedBooks().exchange_span() is None

    writer = BookTickerWriter(None, settings=WriterSettings(spool_dir=None, batch_max_rows=20),  # type: ignore[arg-type]
                              storage=StorageSettings(), spool_dir=None)
    ids = set(sink.ids.values())
    assert add_packed(writer, first, ids) == 13
    assert add_packed(writer, books, ids) == 95  # 7 rows fill the first batch, then 20 a batch
    batches = [*writer._queue, writer.current]
    assert [b.rows for b in batches] == [20, 20, 20, 20, 20, 8]
    recv = [r.recv_ts for r in (*first, *books)]
    assert [(b.min_ts, b.max_ts) for b in batches] == [
        (min(recv[lo:lo + 20]), max(recv[lo:lo + 20])) for lo in range(0, 108, 20)]

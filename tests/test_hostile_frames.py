"""Hostile frames cost only themselves (issue 12, the frame side).

Every path that takes raw frames (a live connection's intake, the file replay, the REST pollers) turns whatever
one frame does (deep nesting, an oversized frame, a NUL or a control character in a symbol, an instrument of
another market, a corrupt time, a null update id, arrays for objects, a parser that raises) into one counted
reject with a stable reason, and goes on with the next frame of the same read and the same connection.

The frames go through the adapters' own intake in memory first (exact reasons, exact rows), then through the
simulator over real sockets into a real database: the connection stays up and every good frame's row is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence

import asyncpg
import msgspec
import pytest

from hftdb import DatabaseManager
from hftdb.config import load_settings
from hftdb.exchanges.base import ExchangeAdapter
from hftdb.exchanges.intake import Intake
from hftdb.exchanges.parse_binance import BinanceParser
from hftdb.exchanges.parsing import MAX_FRAME_BYTES
from hftdb.exchanges.registry import create_adapter, create_parser
from hftdb.exchanges.runner import StreamRunner
from hftdb.exchanges.signing import Credentials
from hftdb.exchanges.stream import Backoff
from hftdb.models import Balance, BookTicker, Exchange, ExchangeName as E, FundingRate, Symbol, now_us
from hftdb.wire import loader
from hftdb.wire.books import PackedBooks
from hftdb.ops.replay import ingest_file
from hftdb.simulator import ExchangeSimulator, Limits

MS = 1_700_000_000_000  # a plausible exchange time (2023), in ms
DEEP = "[" * 5000 + "]" * 5000  # far past msgspec's recursion limit (~1,000)


class MemorySink:
    """A sink that keeps nothing (the in-memory tests only look at what the intake returns); it resolves symbol
    ids, so that the hot paths stamp them."""

    def __init__(self, ids: dict[str, int] | None = None, *, fail_on: str | None = None) -> None:
        self.ids = ids or {}
        self.fail_on = fail_on

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        if symbol == self.fail_on:
            raise RuntimeError(f"resolver failed on {symbol} (on purpose)")
        return self.ids.get(symbol)

    async def insert_exchange(self, exchange: Exchange | E | str) -> Exchange: ...
    async def get_exchange_by_enum(self, name: E | str) -> Exchange: ...
    async def sync_symbols(self, exchange: E | str, symbols: Sequence[Symbol]) -> tuple[int, int]: ...
    async def insert_book_ticker_snapshots(self, rows: Iterable[BookTicker]) -> int: ...
    async def insert_funding_rates(self, rows: Iterable[FundingRate]) -> int: ...
    async def insert_balance_snapshots(self, rows: Iterable[Balance]) -> int: ...
    async def flush(self) -> None: ...


class PackedSink(MemorySink):
    """A sink that takes packed rows: Binance USD-M frames then take the packed hot path, its C module included."""

    async def insert_packed_book_tickers(self, rows: Iterable[BookTicker]) -> int: ...


# -- hostile frames per venue: (frame, reason), reason None for a good frame ----------------------------------


def binance_book(symbol: str = "BTCUSDT", u: int | None = 1, event_ms: int | None = MS) -> str:
    data = {"e": "bookTicker", "u": u, "s": symbol, "b": "1.5", "B": "2", "a": "1.6", "A": "3", "T": event_ms,
            "E": event_ms}
    return json.dumps({"stream": f"{symbol.lower()}@bookTicker", "data": data}, separators=(",", ":"))


def binance_frames() -> list[tuple[str, str | None]]:
    return [
        (binance_book(u=1), None),
        ('{"stream":"btcusdt@bookTicker","data":%s}' % DEEP, "too_deep"),
        (DEEP, "too_deep"),
        (binance_book("BTC\x00USDT", 2), "bad_symbol"),  # json.dumps escapes it: "BTC\u0000USDT"
        (binance_book("BTC\x1bUSDT", 3), "bad_symbol"),
        (binance_book("A" * 100, 4), "bad_symbol"),
        # A lone surrogate escape is not valid JSON to msgspec: refused before any symbol is made of it.
        (binance_book(u=5).replace('"s":"BTCUSDT"', '"s":"BTC\\ud800"'), "invalid_json"),
        (binance_book(u=6), None),
        # Update ids the writers cannot store (past int8) or no exchange sends: admitted, they became BTCUSDT's
        # last id and every later frame of it (u=10, u=12 below) was dropped as a duplicate.
        (binance_book(u=2**63), "bad_update_id"),
        (binance_book(u=10**30), "bad_update_id"),
        (binance_book(u=-1), "bad_update_id"),
        (binance_book(u=7, event_ms=10**30), "bad_time"),  # past int8 in µs (and ms)
        ('{"stream":"btcusdt@markPrice","data":{"e":"markPriceUpdate","E":%d,"s":"BTCUSDT","p":"1",'
         '"r":"0.0001","T":1700003600000}}' % 10**30, "bad_time"),
        (binance_book("BTCUSD_PERP", 7), "wrong_market"),  # coin-margined: not a USD-M instrument
        (binance_book("BTC-250328-60000-C", 8), "wrong_market"),  # an option
        (binance_book(u=None), "missing_field"),
        (binance_book(u=9, event_ms=170_000_000_000), "bad_time"),  # 12 digits of ms: 1975
        ('{"stream":"btcusdt@markPrice","data":{"e":"markPriceUpdate","E":170000000000,"s":"BTCUSDT","p":"1",'
         '"r":"0.0001","T":1700003600000}}', "bad_time"),
        ('{"x":"' + "a" * MAX_FRAME_BYTES + '"}', "frame_too_large"),
        ("null", "bad_envelope"),
        ("[1,2]", "bad_envelope"),
        ('{"stream":"x","data":[[1]]}', "bad_envelope"),
        (binance_book(u=10), None),
        (binance_book("BTCUSDT_250328", 11), None),  # a USD-M quarterly: listed by /fapi/v1/exchangeInfo
        (binance_book(u=12), None),
    ]


def okx_bbo(symbol: str = "BTC-USDT-SWAP", seq: int | None = 1, ts: str = str(MS), *, drop_seq: bool = False,
            drop_ts: bool = False, channel: str = "bbo-tbt") -> str:
    row: dict = {"asks": [["2", "1", "0", "1"]], "bids": [["1", "1", "0", "1"]], "ts": ts, "seqId": seq}
    if drop_seq:
        del row["seqId"]
    if drop_ts:
        del row["ts"]
    return json.dumps({"arg": {"channel": channel, "instId": symbol}, "data": [row]}, separators=(",", ":"))


def okx_frames() -> list[tuple[str, str | None]]:
    return [
        (okx_bbo(seq=1), None),
        (okx_bbo(seq=None), "missing_field"),  # after a normal one: was a TypeError in the intake
        (okx_bbo(drop_seq=True), "missing_field"),
        (okx_bbo(seq=2), None),
        (okx_bbo(seq=2**63), "bad_update_id"),  # admitted, it dropped seq 9 below as a duplicate
        (okx_bbo(seq=-1), "bad_update_id"),
        # Every bbo-tbt and books5 push carries ts: one without it is broken, not a quote to store untimed.
        (okx_bbo(seq=3, drop_ts=True), "missing_field"),
        (okx_bbo(seq=3, ts=""), "missing_field"),
        (okx_bbo(seq=3, drop_ts=True, channel="books5"), "missing_field"),
        (okx_bbo(seq=3, ts=str(10**30)), "bad_time"),  # past int8 in µs
        (okx_bbo("BTC-USD-220527", 3), "wrong_market"),  # a dated future
        (okx_bbo("BTC-USD-220527-30000-C", 4), "wrong_market"),  # an option
        (okx_bbo("BTC-USD-SWAP", 5), None),  # an inverse swap: listed by instType=SWAP
        (okx_bbo("BTC\x01-USDT-SWAP", 6), "bad_symbol"),
        (okx_bbo(seq=7, ts="165245922300"), "bad_time"),
        ('{"arg":{"channel":"bbo-tbt","instId":"BTC-USDT-SWAP"},"data":[{"asks":%s,"bids":[],"ts":"1","seqId":8}]}'
         % DEEP, "too_deep"),
        ('{"arg":{"channel":"tickers","instId":"BTC-USDT-SWAP"},"data":[{"instId":"BTC-USDT-SWAP","bidPx":"1",'
         '"bidSz":"1","askPx":"2","askSz":"1","ts":"170000000000"}]}', "bad_time"),  # time-keyed: not a duplicate
        ('{"arg":[],"data":{}}', "bad_type"),
        (okx_bbo(seq=9), None),
    ]


def bybit_book(symbol: str = "BTCUSDT", u: int | None = 1, kind: str = "delta", ts: int = MS) -> str:
    frame = {"topic": f"orderbook.1.{symbol}", "type": kind, "ts": ts,
             "data": {"s": symbol, "b": [["1", "1"]], "a": [["2", "1"]], "u": u, "seq": 1}}
    return json.dumps(frame, separators=(",", ":"))


def bybit_frames() -> list[tuple[str, str | None]]:
    return [
        (bybit_book(u=1, kind="snapshot"), None),
        (bybit_book(u=2), None),
        (bybit_book(u=None), "missing_field"),
        (bybit_book(u=3).replace('"s":"BTCUSDT"', '"s":"BTC\\u0000USDT"'), "bad_symbol"),
        (bybit_book("BTCUSD", 1, "snapshot"), "wrong_market"),  # inverse perpetual
        (bybit_book("BTC-28MAR25-60000-C", 1, "snapshot"), "wrong_market"),  # option
        (bybit_book(u=4, ts=170_000_000_000), "bad_time"),
        (bybit_book(u=2**63), "bad_update_id"),  # admitted, it dropped u=5 below as a duplicate
        (bybit_book(u=-1), "bad_update_id"),
        (bybit_book(u=4, ts=10**30), "bad_time"),  # past int8 in µs
        ('{"topic":"orderbook.1.BTCUSDT","type":"delta","ts":1,"data":%s}' % DEEP, "too_deep"),
        (bybit_book(u=5), None),
    ]


FRAMES = {E.BINANCE_USDM: binance_frames, E.OKX_SWAP: okx_frames, E.BYBIT_LINEAR: bybit_frames}


def reasons(frames: list[tuple[str, str | None]]) -> Counter:
    return Counter(reason for _, reason in frames if reason is not None)


def intake_of(venue: E, sink: MemorySink) -> tuple[ExchangeAdapter, Intake]:
    adapter = create_adapter(venue, sink)
    return adapter, Intake(StreamRunner(adapter), adapter.new_parser())


@pytest.mark.parametrize("per_read", [1, 4, 1000], ids=lambda n: f"{n}-per-read")
@pytest.mark.parametrize("venue", list(FRAMES), ids=str)
def test_each_hostile_frame_is_rejected_alone_with_its_reason(venue, per_read):
    frames = FRAMES[venue]()
    adapter, intake = intake_of(venue, PackedSink({"BTCUSDT": 1, "BTCUSDT_250328": 2}))
    raw = [f.encode() for f, _ in frames]
    t = now_us()
    books: list[BookTicker] = []
    for start in range(0, len(raw), per_read):
        batch = intake.process([(t, raw[start:start + per_read])])
        got, funding = batch.book_tickers, batch.funding_rates
        books.extend(got)
        assert funding == []
    good = [json.loads(f) for f, reason in frames if reason is None]
    assert [(b.symbol, b.update_id) for b in books] == [_key(venue, g) for g in good]
    assert adapter.rejects.counts == reasons(frames)
    assert adapter.stats.duplicates == 0
    assert adapter.stats.messages == len(frames)


def _key(venue: E, frame: dict) -> tuple[str, int]:
    if venue is E.OKX_SWAP:
        return frame["arg"]["instId"], frame["data"][0]["seqId"]
    data = frame["data"]
    return data["s"], data["u"]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "public"])
def test_a_frame_whose_handling_raises_costs_only_itself(packed):
    # The symbol-id resolver is outside the parser: when it raises on one symbol, that frame is rejected
    # (parser_error) and the frames after it in the same read are still taken, packed or not.
    sink = (PackedSink if packed else MemorySink)({"BTCUSDT": 1, "ETHUSDT": 2}, fail_on="SOLUSDT")
    adapter, intake = intake_of(E.BINANCE_USDM, sink)
    frames = [binance_book("BTCUSDT", 1), binance_book("SOLUSDT", 2), binance_book("ETHUSDT", 3),
              binance_book("SOLUSDT", 4), binance_book("BTCUSDT", 5)]
    books = intake.process([(now_us(), [f.encode() for f in frames])]).book_tickers
    assert [(b.symbol, b.update_id) for b in books] == [("BTCUSDT", 1), ("ETHUSDT", 3), ("BTCUSDT", 5)]
    assert adapter.rejects.counts == {"parser_error": 2}
    assert adapter.stats.duplicates == 0


class _RaisingReader(BinanceParser):
    """A parser whose packed hot path raises at a marked frame after taking the frames before it in that read:
    where, the intake cannot tell (the resolver case above is handed back instead; this is the last resort)."""

    def book_read(self, payloads, i, *args):  # noqa: ANN001, ANN201 (a test double of one method)
        marked = [k for k in range(i, len(payloads)) if b"BOOM" in payloads[k]]
        if not marked:
            return super().book_read(payloads, i, *args)
        taken, _ = super().book_read(payloads[:marked[0]], i, *args)
        if taken < marked[0]:
            return taken, _
        raise RuntimeError("book_read failed (on purpose)")


def test_a_packed_read_that_raises_midway_loses_only_the_frame_that_raises():
    sink = PackedSink({"BTCUSDT": 1, "ETHUSDT": 2})
    adapter = create_adapter(E.BINANCE_USDM, sink)
    intake = Intake(StreamRunner(adapter), _RaisingReader(E.BINANCE_USDM, symbol_ids=sink.resolve_symbol_id))
    # A frame of the general decode (a balance: nothing admits those) right before the book frames of the call
    # that raises: it must not be redone.
    position = {"e": "outboundAccountPosition", "E": MS, "u": MS, "B": [{"a": "BTC", "f": "1", "l": "0"}]}
    frames = [binance_book("BTCUSDT", 1), json.dumps(position), binance_book("ETHUSDT", 2),
              binance_book("BOOMUSDT", 3), binance_book("ETHUSDT", 4), binance_book("BTCUSDT", 5)]
    batch = intake.process([(now_us(), [f.encode() for f in frames])])
    books, balances = batch.book_tickers, batch.balances
    assert [(b.symbol, b.update_id) for b in books] == [("BTCUSDT", 1), ("ETHUSDT", 2), ("ETHUSDT", 4),
                                                         ("BTCUSDT", 5)]
    assert [b.asset for b in balances] == ["BTC"]
    assert adapter.rejects.counts == {"parser_error": 1}
    assert type(books) is PackedBooks and books.buf is not None  # every row still has its tuple
    # The frame it had taken before raising (ETHUSDT 2) was redone and dropped by admission: not a duplicate of
    # the feed, so not counted as one.
    assert adapter.stats.duplicates == 0


@pytest.mark.parametrize("c_path", [True, False], ids=["c", "python"])
def test_a_deep_frame_inside_a_packed_read_counts_no_duplicate(c_path):
    with contextlib.nullcontext() if c_path else loader.disabled():
        _a_deep_frame_inside_a_packed_read_counts_no_duplicate()


def _a_deep_frame_inside_a_packed_read_counts_no_duplicate():
    # The deep frame raises inside book_read (RecursionError), after it took the two frames before it; the
    # intake redoes the read from where that call began and must not count those two as duplicates. A frame
    # the feed did repeat (BTCUSDT 2 again) is still counted, once.
    adapter, intake = intake_of(E.BINANCE_USDM, PackedSink({"BTCUSDT": 1, "ETHUSDT": 2}))
    deep = '{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","x":%s}}' % DEEP
    frames = [binance_book("BTCUSDT", 1), binance_book("ETHUSDT", 2), deep, binance_book("BTCUSDT", 3)]
    books = intake.process([(now_us(), [f.encode() for f in frames])]).book_tickers
    assert [(b.symbol, b.update_id) for b in books] == [("BTCUSDT", 1), ("ETHUSDT", 2), ("BTCUSDT", 3)]
    assert adapter.rejects.counts == {"too_deep": 1}
    assert adapter.stats.duplicates == 0
    frames = [binance_book("ETHUSDT", 4), binance_book("BTCUSDT", 3), deep, binance_book("ETHUSDT", 5)]
    books = intake.process([(now_us(), [f.encode() for f in frames])]).book_tickers
    assert [(b.symbol, b.update_id) for b in books] == [("ETHUSDT", 4), ("ETHUSDT", 5)]
    assert adapter.rejects.counts == {"too_deep": 2}
    assert adapter.stats.duplicates == 1


def _spot_book(u: int) -> bytes:
    data = {"u": u, "s": "BTCUSDT", "b": "1.5", "B": "2", "a": "1.6", "A": "3"}
    return json.dumps({"stream": "btcusdt@bookTicker", "data": data}).encode()


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "public"])
def test_an_update_id_out_of_range_does_not_block_its_spot_symbol(packed):
    adapter, intake = intake_of(E.BINANCE_SPOT, (PackedSink if packed else MemorySink)({"BTCUSDT": 1}))
    frames = [_spot_book(1), _spot_book(2**63), _spot_book(-2), _spot_book(2), _spot_book(2**64), _spot_book(3)]
    books = intake.process([(now_us(), frames[:3]), (now_us(), frames[3:])]).book_tickers
    assert [b.update_id for b in books] == [1, 2, 3]
    assert adapter.rejects.counts == {"bad_update_id": 3}
    assert adapter.stats.duplicates == 0


def test_a_balance_time_past_int8_is_rejected_bad_time():
    adapter, intake = intake_of(E.BINANCE_SPOT, MemorySink())
    frames = []
    for event_ms in (MS, 10**30, MS + 1):
        event = {"e": "outboundAccountPosition", "E": event_ms, "u": event_ms,
                 "B": [{"a": "BTC", "f": "1", "l": "0"}]}
        frames.append(json.dumps({"subscriptionId": 0, "event": event}).encode())
    balances = intake.process([(now_us(), frames)]).balances
    assert [b.exchange_ts for b in balances] == [MS * 1000, (MS + 1) * 1000]
    assert adapter.rejects.counts == {"bad_time": 1}


def test_a_balance_asset_that_cannot_be_stored_is_rejected_alone():
    adapter, intake = intake_of(E.BINANCE_SPOT, MemorySink())
    event = {"e": "outboundAccountPosition", "E": MS, "u": MS, "B": [
        {"a": "BTC", "f": "1", "l": "0"}, {"a": "E\u0000TH", "f": "1", "l": "0"}, {"a": "\u001b[31m", "f": "1", "l": "0"},
        {"a": "USDT", "f": "2", "l": "1"}]}
    balances = intake.process([(now_us(), [json.dumps({"subscriptionId": 0, "event": event}).encode()])]).balances
    assert [b.asset for b in balances] == ["BTC", "USDT"]
    assert adapter.rejects.counts == {"bad_symbol": 2}


def test_okx_funding_without_ts_keeps_the_settlement_time_and_each_new_rate():
    adapter, intake = intake_of(E.OKX_SWAP, MemorySink())

    def push(rate: str, settle: int) -> bytes:
        row = {"instId": "BTC-USDT-SWAP", "fundingRate": rate, "fundingTime": str(settle)}
        return json.dumps({"arg": {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"}, "data": [row]}).encode()

    period, next_period = MS + 3_600_000, MS + 3_600_000 + 28_800_000
    pushes = [push("0.0001", period), push("0.0001", period), push("0.0002", period), push("0.0001", period),
              push("0.0003", next_period)]
    funding = intake.process([(now_us(), pushes)]).funding_rates
    assert [(f.rate, f.exchange_ts, f.next_funding_ts) for f in funding] == [
        (0.0001, None, period * 1000), (0.0002, None, period * 1000), (0.0001, None, period * 1000),
        (0.0003, None, next_period * 1000)]
    assert adapter.stats.duplicates == 1  # the repeated push alone
    # The history endpoint's settled rates keep their settlement time as the exchange time.
    history = {"code": "0", "msg": "", "data": [{"instId": "BTC-USDT-SWAP", "fundingRate": "0.0001",
                                                  "realizedRate": "0.0001", "fundingTime": str(period)}]}
    (settled,) = create_parser(E.OKX_SWAP).parse_funding(json.dumps(history), now_us())
    assert (settled.exchange_ts, settled.next_funding_ts) == (period * 1000, None)


# -- over real sockets, into a real database ------------------------------------------------------------------


def _settings():
    base = load_settings(environ={})
    return msgspec.structs.replace(base, writer=msgspec.structs.replace(base.writer, spool_dir=None))


@pytest.fixture
async def sim() -> AsyncIterator[ExchangeSimulator]:
    async with ExchangeSimulator(rate=300, symbols=4, seed=12, limits=Limits(funding_interval=0.2)) as s:
        yield s


def _adapter(sim: ExchangeSimulator, venue: E, sink, **kwargs) -> ExchangeAdapter:
    c = sim.credentials
    kwargs.setdefault("credentials", Credentials(api_key=c.api_key, api_secret=c.api_secret, passphrase=c.passphrase))
    return create_adapter(venue, sink, rest_url=sim.rest_url(venue), ws_url=sim.ws_url(venue),
                          reconnect=Backoff(initial=0.02, maximum=0.2), timeout=5.0, **kwargs)


@contextlib.asynccontextmanager
async def streaming(adapter: ExchangeAdapter) -> AsyncIterator[None]:
    task = asyncio.create_task(adapter.run_streams())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(15):
                await task


LIVE_CHANNELS = {E.BINANCE_USDM: ("bookTicker",), E.OKX_SWAP: ("bbo-tbt",), E.BYBIT_LINEAR: ("orderbook.1",)}


def live_frames(venue: E) -> list[tuple[str, str | None]]:
    # The hostile frames only: a good one would be a row the simulator's ledger does not know.
    return [(f, reason) for f, reason in FRAMES[venue]() if reason is not None]


async def stored_keys(dsn: str, venue: E) -> set[tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT s.symbol, b.update_id FROM book_tickers b JOIN symbols s ON s.id = b.symbol_id"
            " JOIN exchanges e ON e.id = s.exchange_id WHERE e.name = $1", venue.value)
        return {(r["symbol"], r["update_id"]) for r in rows}
    finally:
        await conn.close()


def sent_keys(sim: ExchangeSimulator, venue: E) -> set[tuple[str, int]]:
    return {(symbol, key) for (_, _, symbol), tally in sim.ledger.streams(venue).items() for key in tally.keys}


@pytest.mark.parametrize("venue", list(LIVE_CHANNELS), ids=str)
async def test_hostile_frames_on_a_live_connection_cost_nothing_else(dsn, sim, venue):
    hostile = live_frames(venue)
    async with DatabaseManager(dsn, settings=_settings()) as db:
        adapter = _adapter(sim, venue, db, symbols=sim.symbols(venue)[:3], channels=LIVE_CHANNELS[venue])
        async with adapter:
            await adapter.sync_symbols()
            async with streaming(adapter):
                await adapter.wait_until(lambda s: s.book_rows >= 30, timeout=10)
                sent = sim.send_raw(venue, [f for f, _ in hostile])
                assert sent == len(hostile)  # one connection
                await adapter.wait_until(lambda s: s.rejected == sent, timeout=10)
                after = adapter.stats.book_rows
                await adapter.wait_until(lambda s: s.book_rows >= after + 30, timeout=10)
                await sim.quiesce()
                expected = sent_keys(sim, venue)
                await wait_stored(db, dsn, venue, expected)  # every good frame sent is stored, each once
            assert adapter.rejects.counts == reasons(hostile)
            assert adapter.stats.reconnects == 0 and adapter.stats.resyncs == 0
            assert sim.ledger.malformed[sim.host(venue).name] == sent
            assert adapter.stats.dropped_rows == 0 and adapter.stats.sink_errors == 0
    assert len(expected) >= 60  # 30 rows before the hostile frames, 30 after


async def wait_stored(db: DatabaseManager, dsn: str, venue: E, expected: set[tuple[str, int]]) -> None:
    """Wait until the database holds exactly ``expected`` (symbol, update id) book rows of ``venue``."""
    try:
        async with asyncio.timeout(10):
            while True:
                await db.flush()
                if await stored_keys(dsn, venue) == expected:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        got = await stored_keys(dsn, venue)
        pytest.fail(f"stored {len(got)} rows, sent {len(expected)}: missing {sorted(expected - got)[:5]}, "
                    f"unexpected {sorted(got - expected)[:5]}")


async def test_a_hostile_rest_body_is_a_reject_and_the_poller_goes_on(dsn, sim):
    # OKX swap funding over REST: a body nested past the decoder's limit, then one of the wrong shape, then good.
    venue = E.OKX_SWAP
    async with DatabaseManager(dsn, settings=_settings()) as db:
        adapter = _adapter(sim, venue, db, symbols=sim.symbols(venue)[:2], channels=("bbo-tbt",))
        async with adapter:
            await adapter.sync_symbols()
            path = "/api/v5/public/funding-rate"
            sim.http_body(venue, '{"code":"0","x":%s,"data":[]}' % DEEP, path=path)
            sim.http_body(venue, '{"code":"0","data":[[1]]}', path=path)
            poller = asyncio.create_task(adapter.run_funding_poller(0.05))
            try:
                await adapter.wait_until(lambda s: s.rest_funding_rows >= 2, timeout=10)
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            # Both requests of the first poll were refused, each alone; the next poll stored both symbols' rates.
            assert adapter.rejects.counts == {"too_deep": 1, "bad_type": 1}
            assert adapter.stats.rest_errors == 2
        await db.flush()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM funding_rates") >= 2
    finally:
        await conn.close()


async def test_ingest_file_stores_the_good_frames_around_hostile_ones(dsn, tmp_path):
    frames = okx_frames()
    path = tmp_path / "capture.jsonl"
    path.write_text("\n".join(f for f, _ in frames) + "\n")
    async with DatabaseManager(dsn, settings=_settings()) as db:
        result = await ingest_file(db, path, exchange="okx_swap", channels=["bbo-tbt"])
    assert result.committed["book_tickers"] == sum(1 for _, reason in frames if reason is None)
    assert result.rejects == dict(reasons(frames))
    good = {(json.loads(f)["arg"]["instId"], json.loads(f)["data"][0]["seqId"]) for f, r in frames if r is None}
    assert await stored_keys(dsn, E.OKX_SWAP) == good

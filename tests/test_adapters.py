"""The adapters against the exchange simulator, over real loopback sockets.

The sink here is an in-memory recorder: these tests are about the network side (subscriptions, reconnects,
handover, sequencing, signing), and the simulator's ledger says exactly what was sent, so the recorder can be
checked for "every message sent after (re)subscription arrived exactly once". The database side of the same
path is tested against a real PostgreSQL elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import pytest

from hftdb.errors import (
    ClosedError, ConfigError, ExchangeError, ExchangeHTTPError, SignatureError, StateError, UnknownExchangeError,
)
from hftdb.exchanges.base import ExchangeAdapter
from hftdb.exchanges.sink import Sink
from hftdb.exchanges.stream import Backoff
from hftdb.exchanges.binance import BinanceAdapter
from hftdb.exchanges.bybit import BybitAdapter
from hftdb.exchanges.connection import WsConnection
from hftdb.exchanges.okx import OkxAdapter
from hftdb.exchanges.registry import ADAPTERS, adapter_class, create_adapter, create_parser
from hftdb.exchanges.runner import StreamRunner
from hftdb.exchanges.session import Session
from hftdb.exchanges.signing import Credentials
from hftdb.models import Balance, BookTicker, Exchange, ExchangeName as E, FundingRate, Symbol
from hftdb.simulator import ExchangeSimulator, Limits
from hftdb import venues

pytestmark = pytest.mark.timeout(90)

N_SYMBOLS = 6
FUNDING_CHANNELS = frozenset(c for v in venues.VENUES for c in v.funding_channels)
PERPETUALS = tuple(v.name for v in venues.VENUES if v.market == "derivatives")
ONE_PER_EXCHANGE = (E.BINANCE_SPOT, E.BYBIT_LINEAR, E.OKX_SWAP)


class RecordingSink:
    """An in-memory :class:`Sink` that keeps everything it is given, and can fail on demand."""

    def __init__(self) -> None:
        self.exchanges: dict[str, Exchange] = {}
        self.symbols: dict[str, list[Symbol]] = {}
        self.books: list[BookTicker] = []
        self.funding: list[FundingRate] = []
        self.balances: list[Balance] = []
        self.fail_next = 0
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def insert_exchange(self, exchange: Exchange | E | str) -> Exchange:
        name = exchange.name if isinstance(exchange, Exchange) else str(E(exchange))
        if name not in self.exchanges:
            market = exchange.market if isinstance(exchange, Exchange) else "spot"
            self.exchanges[name] = Exchange(name=name, id=len(self.exchanges) + 1, market=market)
        return self.exchanges[name]

    async def get_exchange_by_enum(self, name: E | str) -> Exchange:
        try:
            return self.exchanges[str(E(name))]
        except KeyError:
            raise UnknownExchangeError(f"no exchange {name!r}") from None

    async def sync_symbols(self, exchange: E | str, symbols: Sequence[Symbol]) -> tuple[int, int]:
        name = str(E(exchange))
        before = {s.symbol for s in self.symbols.get(name, [])}
        self.symbols[name] = list(symbols)
        return len(symbols), len(before - {s.symbol for s in symbols})

    def _take(self, store: list, rows: Iterable) -> int:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("sink unavailable (on purpose)")
        rows = list(rows)
        store.extend(rows)
        self._notify()
        return len(rows)

    async def insert_book_ticker_snapshots(self, rows: Iterable[BookTicker]) -> int:
        return self._take(self.books, rows)

    async def insert_funding_rates(self, rows: Iterable[FundingRate]) -> int:
        return self._take(self.funding, rows)

    async def insert_balance_snapshots(self, rows: Iterable[Balance]) -> int:
        return self._take(self.balances, rows)

    async def flush(self) -> None:
        return None


class FakeClock:
    """Wall time plus an offset the test moves."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="session")
async def shared_sim() -> AsyncIterator[ExchangeSimulator]:
    sim = ExchangeSimulator(rate=300, symbols=N_SYMBOLS, seed=11, limits=Limits(funding_interval=0.2))
    async with sim:
        yield sim


@pytest.fixture
async def sim(shared_sim: ExchangeSimulator) -> ExchangeSimulator:
    shared_sim.reset()
    return shared_sim


@pytest.fixture
async def make_sim():
    sims: list[ExchangeSimulator] = []

    async def make(**kwargs) -> ExchangeSimulator:
        kwargs.setdefault("symbols", N_SYMBOLS)
        kwargs.setdefault("rate", 300)
        kwargs.setdefault("limits", Limits(funding_interval=0.2))
        s = ExchangeSimulator(**kwargs)
        await s.start()
        sims.append(s)
        return s

    yield make
    for s in sims:
        await s.close()


@pytest.fixture
async def adapters():
    """Build started adapters pointed at a simulator; closed after the test."""
    made: list[ExchangeAdapter] = []

    async def make(sim: ExchangeSimulator, venue: E, sink: Sink, **kwargs) -> ExchangeAdapter:
        c = sim.credentials
        kwargs.setdefault("credentials", Credentials(api_key=c.api_key, api_secret=c.api_secret, passphrase=c.passphrase))
        kwargs.setdefault("reconnect", Backoff(initial=0.02, maximum=0.2))
        kwargs.setdefault("timeout", 5.0)
        adapter = create_adapter(venue, sink, rest_url=sim.rest_url(venue), ws_url=sim.ws_url(venue), **kwargs)
        await adapter.start()
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.close()


@contextlib.asynccontextmanager
async def streaming(adapter: ExchangeAdapter) -> AsyncIterator[asyncio.Task]:
    """Run the adapter's streams for the body of the block, then cancel them (an error in them fails the test)."""
    task = asyncio.create_task(adapter.run_streams())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(15):
                await task


def _book_key(row: BookTicker) -> int:
    return row.update_id if row.update_id is not None else row.exchange_ts // 1000


def mismatches(sim: ExchangeSimulator, sink: RecordingSink, venue: E) -> list[str]:
    """Every difference between what the simulator sent on ``venue`` and what reached the sink."""
    got: dict[tuple[str, str], list[int]] = {}
    for row in sink.books:
        if row.exchange == venue.value:
            got.setdefault(("book", row.symbol), []).append(_book_key(row))
    for row in sink.funding:
        if row.exchange == venue.value:
            got.setdefault(("funding", row.symbol), []).append(row.exchange_ts // 1000)
    problems = []
    expected_streams = set()
    for (_, channel, symbol), tally in sim.ledger.streams(venue).items():
        kind = "funding" if channel in FUNDING_CHANNELS else "book"
        expected_streams.add((kind, symbol))
        received = sorted(got.get((kind, symbol), []))
        sent = sorted(tally.keys)
        if received != sent:
            missing = sorted(set(sent) - set(received))
            extra = sorted(set(received) - set(sent))
            twice = len(received) - len(set(received))
            problems.append(f"{channel} {symbol}: sent {len(sent)}, received {len(received)}; missing {missing[:5]}, "
                            f"unexpected {extra[:5]}, {twice} twice")
    for stream in set(got) - expected_streams:
        problems.append(f"rows for {stream} that the simulator never sent")
    return problems


async def assert_exactly_once(sim: ExchangeSimulator, sink: RecordingSink, venue: E, *, timeout: float = 10.0) -> None:
    """Stop the simulator's generation, let everything in flight arrive, and compare with the ledger."""
    await sim.quiesce()
    try:
        await sink.wait_until(lambda: not mismatches(sim, sink, venue), timeout=timeout)
    except TimeoutError:
        pytest.fail("not exactly once:\n" + "\n".join(mismatches(sim, sink, venue)[:10]))


def n_books(sink: RecordingSink) -> Callable[[], int]:
    return lambda: len(sink.books)


# -- the main path ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", list(E), ids=str)
async def test_sync_stream_drop_reconnect_exactly_once(sim, adapters, venue):
    sink = RecordingSink()
    adapter = await adapters(sim, venue, sink)  # no symbols given: stream everything the sync finds
    inserted, delisted = await adapter.sync_symbols()
    assert (inserted, delisted) == (N_SYMBOLS, 0)
    assert [s.symbol for s in sink.symbols[venue.value]] == sim.symbols(venue)
    assert sink.exchanges[venue.value].market == ("spot" if venue.value.endswith("_spot") else "derivatives")

    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 100)
        assert sim.drop_connections(venue) == 1
        await adapter.wait_until(lambda s: s.reconnects == 1 and s.connections == 1, timeout=10)
        after = len(sink.books)
        await sink.wait_until(lambda: len(sink.books) >= after + 100)
        await assert_exactly_once(sim, sink, venue)
    stats = adapter.stats
    assert stats.connections == 0 and stats.gaps == 0 and stats.rejected == 0
    assert stats.book_rows == len(sink.books)
    assert {r.exchange for r in sink.books} == {venue.value}
    if venue in PERPETUALS:
        assert sink.funding and stats.funding_rows == len(sink.funding)
    assert venue.value in adapter.status_line()


async def test_streams_are_sharded_within_the_connection_limit(make_sim, adapters):
    s = await make_sim(symbols=8, limits=Limits(binance_spot_max_streams=3))
    sink = RecordingSink()
    adapter = await adapters(s, E.BINANCE_SPOT, sink, symbols=s.symbols(E.BINANCE_SPOT), max_topics_per_connection=3)
    assert [len(shard) for shard in adapter.plan_connections(adapter.topics())] == [3, 3, 2]
    async with streaming(adapter):
        await s.wait_until(lambda: s.subscriptions(E.BINANCE_SPOT) == 8, timeout=10)
        assert s.connections(E.BINANCE_SPOT) == 3
        await sink.wait_until(lambda: {r.symbol for r in sink.books} == set(s.symbols(E.BINANCE_SPOT)))
        await assert_exactly_once(s, sink, E.BINANCE_SPOT)
    assert adapter.stats.errors == 0


async def test_a_limit_the_adapter_does_not_know_is_reported_not_hidden(make_sim, adapters):
    s = await make_sim(symbols=5, limits=Limits(binance_spot_max_streams=3))
    sink = RecordingSink()
    adapter = await adapters(s, E.BINANCE_SPOT, sink, symbols=s.symbols(E.BINANCE_SPOT), subscribe_timeout=1.0)
    async with streaming(adapter):
        # The venue refuses the subscription ("Too many subscriptions"): counted, logged, retried with back-off.
        await adapter.wait_until(lambda st: st.errors >= 2, timeout=10)
        assert not sink.books


async def test_bybit_spot_subscribes_ten_args_at_a_time(make_sim, adapters):
    s = await make_sim(symbols=25)
    sink = RecordingSink()
    adapter = await adapters(s, E.BYBIT_SPOT, sink, symbols=s.symbols(E.BYBIT_SPOT))
    assert [len(b) for b in adapter.batches(adapter.topics())] == [10, 10, 5]
    async with streaming(adapter):
        await s.wait_until(lambda: s.subscriptions(E.BYBIT_SPOT) == 25, timeout=10)
        await sink.wait_until(lambda: len({r.symbol for r in sink.books}) == 25)
        await assert_exactly_once(s, sink, E.BYBIT_SPOT)
    assert adapter.stats.errors == 0 and adapter.stats.connections == 0


async def test_binance_subscribe_requests_are_paced_under_five_a_second(sim, adapters):
    sink = RecordingSink()
    symbols = sim.symbols(E.BINANCE_SPOT)
    adapter = await adapters(sim, E.BINANCE_SPOT, sink, symbols=symbols, max_topics_per_message=1)
    start = time.monotonic()
    async with streaming(adapter):
        await sim.wait_until(lambda: sim.subscriptions(E.BINANCE_SPOT) == len(symbols), timeout=10)
        # One request per stream, none faster than the venue allows: the connection survives.
        assert time.monotonic() - start >= 0.3 * (len(symbols) - 1)
        await sink.wait_until(lambda: len(sink.books) >= 50)
    assert adapter.stats.reconnects == 0 and adapter.stats.errors == 0


# -- signed REST -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", list(E), ids=str)
async def test_signed_balance_poll_and_refused_signature(sim, adapters, venue, caplog):
    sink = RecordingSink()
    adapter = await adapters(sim, venue, sink, account="main")
    assert await adapter.poll_balances() == len(sink.balances) > 0
    assert {b.exchange for b in sink.balances} == {venue.value} and {b.account for b in sink.balances} == {"main"}
    assert adapter.stats.balance_rows == len(sink.balances)

    c = sim.credentials
    secret = "not-the-secret-0123456789"
    bad = await adapters(sim, venue, sink, credentials=Credentials(api_key=c.api_key, api_secret=secret, passphrase=c.passphrase))
    with pytest.raises(SignatureError) as info:
        await bad.fetch_balances()
    assert info.value.status in (200, 400, 401)
    skewed = await adapters(sim, venue, sink, clock=FakeClock(-120))
    with pytest.raises(SignatureError):
        await skewed.fetch_balances()

    caplog.set_level(logging.DEBUG)
    poller = asyncio.create_task(bad.run_balance_poller(0.01))
    try:
        await bad.wait_until(lambda s: s.rest_errors >= 6, timeout=10)
        assert not poller.done()  # a refused signature is logged and counted, and polling goes on
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "balance request refused" in logged
    # Asking again does not fix a refused signature: logged at the 1st, 2nd, 4th... refusal in a row, not each poll.
    refusals = bad.stats.rest_errors
    lines = [r for r in caplog.records if "balance request refused" in r.getMessage()]
    assert len(lines) == refusals.bit_length() < refusals
    assert secret not in logged and secret not in repr(bad) and secret not in repr(bad._credentials)


async def test_balance_poll_without_credentials_says_what_to_set(sim, adapters, monkeypatch):
    for name in ("OKX_API_KEY", "OKX_API_SECRET", "OKX_SWAP_API_KEY", "OKX_SWAP_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    adapter = await adapters(sim, E.OKX_SWAP, RecordingSink(), credentials=None)
    with pytest.raises(ExchangeError, match="OKX_SWAP_API_KEY"):
        await adapter.fetch_balances()


def test_credentials_from_environment_and_secrets_file(tmp_path):
    env = {"BYBIT_API_KEY": "k1", "BYBIT_API_SECRET": "s1", "BYBIT_LINEAR_API_KEY": "k2", "BYBIT_LINEAR_API_SECRET": "s2"}
    assert Credentials.load(E.BYBIT_SPOT, environ=env).api_key == "k1"
    assert Credentials.load(E.BYBIT_LINEAR, environ=env).api_key == "k2"  # the venue's own wins
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[okx]\napi_key = "ok"\napi_secret = "os"\npassphrase = "pp"\n')
    creds = Credentials.load(E.OKX_SWAP, environ={}, secrets_file=secrets)
    assert (creds.api_key, creds.api_secret, creds.passphrase) == ("ok", "os", "pp")
    assert "os" not in repr(creds).replace("api_secret", "") and "pp" not in repr(creds)
    assert Credentials.load(E.BINANCE_SPOT, environ={}, secrets_file=secrets) is None
    with pytest.raises(ValueError, match="BINANCE_API_SECRET"):
        Credentials.load(E.BINANCE_SPOT, environ={"BINANCE_API_KEY": "only-a-key"})


@pytest.mark.parametrize(("text", "message"), [
    # A misspelt table or key once left the venue without keys, silently, until its first signed call.
    ('[okx]\napi_key = "ok"\napi_secert = "hunter2"\n',
     "[okx] has no key 'api_secert' (keys: api_key, api_secret, passphrase)"),
    ('[okex]\napi_key = "ok"\napi_secret = "hunter2"\n', "unknown table [okex] (tables: binance, binance_spot, "),
    ('okx = "hunter2"\n', "okx must be a table ([okx]) with api_key and api_secret"),
    # Where the TOML breaks, and never the line itself, which may hold a secret.
    ('[okx]\napi_key = "ok"\napi_secret = "hunter2\n', "is not valid TOML at line 3, column 22"),
])
def test_a_bad_secrets_file_says_where_without_a_secret(tmp_path, text, message):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(text)
    with pytest.raises(ConfigError) as info:
        Credentials.load(E.OKX_SWAP, environ={}, secrets_file=secrets)
    assert message in str(info.value) and "hunter2" not in str(info.value)


# -- REST faults -----------------------------------------------------------------------------------------


async def test_rest_retries_rate_limits_as_told_and_gives_up_on_a_ban(sim, adapters):
    sink = RecordingSink()
    adapter = await adapters(sim, E.BINANCE_USDM, sink)
    host = sim.host(E.BINANCE_USDM)
    sim.http_error(E.BINANCE_USDM, 429, path="/fapi/v1/exchangeInfo", count=2, retry_after=0.05)
    assert (await adapter.sync_symbols())[0] == N_SYMBOLS
    assert host.requests["/fapi/v1/exchangeInfo"] == 3
    sim.http_error(E.BINANCE_USDM, 418, path="/fapi/v1/exchangeInfo", retry_after=120)
    with pytest.raises(ExchangeHTTPError) as info:
        await adapter.sync_symbols()
    assert info.value.status == 418 and "-1003" in info.value.body
    assert host.requests["/fapi/v1/exchangeInfo"] == 4  # a ban longer than we wait is not retried
    sim.http_error(E.BINANCE_USDM, 503, path="/fapi/v1/exchangeInfo", count=10)
    with pytest.raises(ExchangeHTTPError) as info:
        await adapter.sync_symbols()
    assert info.value.status == 503 and host.requests["/fapi/v1/exchangeInfo"] == 8  # 4 attempts


async def test_bybit_symbol_sync_follows_the_cursor(make_sim, adapters):
    s = await make_sim(symbols=2500)
    sink = RecordingSink()
    adapter = await adapters(s, E.BYBIT_LINEAR, sink)
    assert (await adapter.sync_symbols())[0] == 2500
    assert [x.symbol for x in sink.symbols["bybit_linear"]] == s.symbols(E.BYBIT_LINEAR)
    assert s.host(E.BYBIT_LINEAR).requests["/v5/market/instruments-info"] == 3  # limit=1000 per page


async def test_refused_websocket_upgrades_are_retried_with_backoff(sim, adapters):
    sink = RecordingSink()
    adapter = await adapters(sim, E.OKX_SPOT, sink, symbols=sim.symbols(E.OKX_SPOT)[:2])
    sim.http_error(E.OKX_SPOT, 503, path="/ws/v5/public", count=3)
    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 20)
    assert sim.host(E.OKX_SPOT).requests["/ws/v5/public"] == 4


@pytest.mark.parametrize(("venue", "path", "status"), [
    (E.BINANCE_USDM, "/stream", 429), (E.BINANCE_SPOT, "/stream", 418), (E.BYBIT_LINEAR, "/v5/public/linear", 503),
    (E.OKX_SWAP, "/ws/v5/public", 429)], ids=str)
async def test_a_refused_upgrade_waits_what_retry_after_asks(sim, adapters, caplog, venue, path, status):
    # The back-off alone would retry after 20 ms; the refusal asks for 1 s, and the next attempt waits that long.
    sink = RecordingSink()
    adapter = await adapters(sim, venue, sink, symbols=sim.symbols(venue)[:2], channels=adapter_class(venue).default_channels[venue][:1])
    sim.http_error(venue, status, path=path, count=1, retry_after=1)
    caplog.set_level(logging.WARNING, logger="hftdb.exchanges.runner")
    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 5, timeout=20)
    assert adapter.stats.retry_after_waits == 1
    assert sim.host(venue).requests[path] == 2  # the refused upgrade, then the one after the wait
    waits = [r.getMessage() for r in caplog.records if "as Retry-After asks" in r.getMessage()]
    assert len(waits) == 1 and f"HTTP {status}" in waits[0] and "retrying in 1.00s" in waits[0]


async def test_a_retry_after_shorter_than_the_back_off_leaves_the_back_off(sim, adapters):
    sink = RecordingSink()
    adapter = await adapters(sim, E.BINANCE_USDM, sink, symbols=sim.symbols(E.BINANCE_USDM)[:2], channels=["bookTicker"],
                             reconnect=Backoff(initial=0.2, maximum=0.2, jitter=0))
    sim.http_error(E.BINANCE_USDM, 429, path="/stream", count=1, retry_after=0)
    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 5, timeout=20)
    assert adapter.stats.retry_after_waits == 0 and sim.host(E.BINANCE_USDM).requests["/stream"] == 2


async def test_run_streams_gives_up_after_max_reconnect_attempts(sim, adapters):
    adapter = await adapters(sim, E.BYBIT_SPOT, RecordingSink(), symbols=["BTCUSDT"], max_reconnect_attempts=2)
    sim.http_error(E.BYBIT_SPOT, 503, path="/v5/public/spot", count=100)
    with pytest.raises(ExchangeError, match="giving up after 3"):
        async with asyncio.timeout(10):
            await adapter.run_streams()


# -- liveness: staleness and the 24 h limit --------------------------------------------------------------


@pytest.mark.parametrize("venue", ONE_PER_EXCHANGE, ids=str)
async def test_a_stalled_connection_is_detected_and_replaced(sim, adapters, venue):
    sink = RecordingSink()
    adapter = await adapters(sim, venue, sink, symbols=sim.symbols(venue)[:3], stale_after=0.4, ping_interval=0.1,
                             subscribe_timeout=0.5)
    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 20)
        sim.stall(1.2, venue)
        await adapter.wait_until(lambda s: s.stale >= 1, timeout=10)
        await adapter.wait_until(lambda s: s.reconnects >= 1 and s.connections == 1, timeout=10)
        after = len(sink.books)
        await sink.wait_until(lambda: len(sink.books) >= after + 20)
        await assert_exactly_once(sim, sink, venue)


@pytest.mark.parametrize("venue", ONE_PER_EXCHANGE, ids=str)
async def test_connections_are_handed_over_before_the_24h_limit(sim, adapters, venue):
    clock = FakeClock()
    sink = RecordingSink()
    adapter = await adapters(sim, venue, sink, symbols=sim.symbols(venue)[:4], clock=clock, max_connection_age=23.5 * 3600)
    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 50)
        assert sim.connections(venue) == 1
        clock.offset = 24 * 3600
        await adapter.wait_until(lambda s: s.rollovers == 1, timeout=10)
        assert adapter.stats.connections == 1
        after = len(sink.books)
        await sink.wait_until(lambda: len(sink.books) >= after + 50)
        await assert_exactly_once(sim, sink, venue)
    # Made before broken: never a reconnect, and nothing lost or doubled across the overlap.
    assert adapter.stats.reconnects == 0 and adapter.stats.rollovers == 1


def test_binance_hands_over_before_24h_by_default():
    adapter = BinanceAdapter(E.BINANCE_SPOT, RecordingSink())
    assert adapter.max_connection_age is not None and adapter.max_connection_age < 24 * 3600
    assert BybitAdapter(E.BYBIT_SPOT, RecordingSink()).max_connection_age is None


# -- sequencing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", [E.BYBIT_SPOT, E.BYBIT_LINEAR], ids=str)
async def test_gaps_are_counted_and_duplicates_stored_once(sim, adapters, venue):
    sink = RecordingSink()
    adapter = await adapters(sim, venue, sink, symbols=["BTCUSDT", "ETHUSDT"])
    async with streaming(adapter):
        await sink.wait_until(lambda: {r.symbol for r in sink.books} == {"BTCUSDT", "ETHUSDT"})
        sim.inject_gap(venue, symbol="BTCUSDT", size=3)
        sim.inject_gap(venue, symbol="ETHUSDT", size=2)
        sim.inject_duplicate(venue, symbol="BTCUSDT")
        await adapter.wait_until(lambda s: s.gaps == 2 and s.duplicates >= 1, timeout=10)
        await assert_exactly_once(sim, sink, venue)
    assert sim.ledger.gaps(venue) == 2 and adapter.stats.missed_ids == 5
    assert sim.ledger.duplicates(venue) == 1


async def test_gap_counting_follows_the_venue_semantics(sim, adapters):
    # Binance's bookTicker ids are not consecutive on the real venue: jumps are not gaps unless asked.
    for count_gaps, expected in ((None, 0), (True, 1)):
        sim.reset()
        sink = RecordingSink()
        adapter = await adapters(sim, E.BINANCE_SPOT, sink, symbols=["BTCUSDT"], count_gaps=count_gaps)
        async with streaming(adapter):
            await sink.wait_until(lambda: len(sink.books) >= 10)
            sim.inject_gap(E.BINANCE_SPOT, symbol="BTCUSDT", size=7)
            after = len(sink.books)
            await sink.wait_until(lambda: len(sink.books) >= after + 10)
            await assert_exactly_once(sim, sink, E.BINANCE_SPOT)
        assert sim.ledger.gaps(E.BINANCE_SPOT) == 1
        assert adapter.stats.gaps == expected


# -- malformed frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", [E.BINANCE_USDM, E.BYBIT_LINEAR, E.OKX_SWAP], ids=str)
async def test_malformed_frames_are_counted_not_fatal(sim, adapters, venue):
    sink = RecordingSink()
    adapter = await adapters(sim, venue, sink, symbols=sim.symbols(venue)[:3])
    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 20)
        sent = sim.send_malformed(venue, 3, kind="truncated") + sim.send_malformed(venue, 2, kind="garbage")
        if venue is not E.BYBIT_LINEAR:  # (a bad number in a Bybit book is the resync test's business)
            sent += sim.send_malformed(venue, 2, kind="bad_number")
        await adapter.wait_until(lambda s: s.rejected == sent, timeout=10)
        after = len(sink.books)
        await sink.wait_until(lambda: len(sink.books) >= after + 20)
        await assert_exactly_once(sim, sink, venue)
    expected = {"invalid_json": 5} if venue is E.BYBIT_LINEAR else {"invalid_json": 5, "bad_number": 2}
    assert adapter.rejects.counts == expected
    assert sim.ledger.malformed[sim.host(venue).name] == sent
    assert adapter.stats.reconnects == 0


async def test_a_corrupt_bybit_book_is_resynced(sim, adapters):
    sink = RecordingSink()
    adapter = await adapters(sim, E.BYBIT_SPOT, sink, symbols=["BTCUSDT"])
    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 20)
        sim.send_malformed(E.BYBIT_SPOT, 1, kind="bad_number")  # the parser drops the book: deltas cannot apply
        await adapter.wait_until(lambda s: s.resyncs == 1 and s.connections == 1, timeout=10)
        after = len(sink.books)
        await sink.wait_until(lambda: len(sink.books) >= after + 50)
    ids = [r.update_id for r in sink.books]
    assert len(ids) == len(set(ids)) and ids == sorted(ids)  # whatever was stored, once and in order
    assert adapter.rejects.counts.get("bad_number") == 1 and adapter.stats.reconnects == 0


class _FailsOnceOn(RecordingSink):
    """Refuses, once, the first book batch that holds a row with one of ``ids`` (its push retries later)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[int] = set()

    async def insert_book_ticker_snapshots(self, rows: Iterable[BookTicker]) -> int:
        rows = list(rows)
        if self.ids and any(r.update_id in self.ids for r in rows):
            self.ids = set()
            raise RuntimeError("sink unavailable (on purpose)")
        return self._take(self.books, rows)


@contextlib.asynccontextmanager
async def _released_session(sim, adapters, sink: _FailsOnceOn) -> AsyncIterator[tuple[Session, list[int]]]:
    """A handover's successor on its own (Bybit spot, BTCUSDT), released once it holds rows, the push of which
    the sink refuses once (retried after 0.25-0.5 s); yields it and the held update ids, closes it after."""
    adapter = await adapters(sim, E.BYBIT_SPOT, sink, symbols=["BTCUSDT"], reconnect=Backoff(initial=0.5, maximum=0.5))
    runner = StreamRunner(adapter)
    conn = await WsConnection.open(adapter.ws_endpoint(), timeout=adapter.timeout, name="successor")
    session = Session(runner, conn, tuple(adapter.topics()), hold=True)
    session.start()
    try:
        await session.subscribe(runner.next_id)
        await adapter.wait_until(lambda s: session.held, timeout=10)
        held = [r.update_id for batch in session.held for r in batch.book_tickers]
        sink.ids = set(held)
        session.release()
        yield session, held
    finally:
        await session.close()
    assert adapter.stats.sink_errors == 1


async def test_released_rows_reach_the_sink_before_later_live_rows(sim, adapters):
    # A successor admits its held rows first on release, but they went to the sink in a task of their own: a live
    # batch pushed while that task was in flight (received in the same loop turn as the release, or, as forced
    # here, while the sink's refusal kept the task retrying) was stored before them.
    sink = _FailsOnceOn()
    async with _released_session(sim, adapters, sink) as (_, held):
        await sink.wait_until(lambda: set(held) <= {r.update_id for r in sink.books}
                              and len(sink.books) >= len(held) + 5)
    ids = [r.update_id for r in sink.books]
    assert len(ids) == len(set(ids)) and ids == sorted(ids)


async def test_closing_a_released_session_stores_its_held_rows_first(sim, adapters):
    # Closed means stored: a successor released after this one must not overtake its held rows either.
    sink = _FailsOnceOn()
    async with _released_session(sim, adapters, sink) as (_, held):
        pass
    assert set(held) <= {r.update_id for r in sink.books}


# -- the sink, cancellation, construction ----------------------------------------------------------------


async def test_a_failing_sink_is_retried_not_fatal(sim, adapters):
    sink = RecordingSink()
    adapter = await adapters(sim, E.OKX_SWAP, sink, symbols=["BTC-USDT-SWAP"])
    async with streaming(adapter):
        await sink.wait_until(lambda: len(sink.books) >= 10)
        sink.fail_next = 2
        await adapter.wait_until(lambda s: s.sink_errors == 2, timeout=10)
        await assert_exactly_once(sim, sink, E.OKX_SWAP)
    assert adapter.stats.dropped_rows == 0


async def test_cancelling_the_streams_closes_every_connection(sim, adapters):
    adapter = await adapters(sim, E.BINANCE_USDM, RecordingSink(), max_topics_per_connection=4)
    await adapter.sync_symbols()
    async with streaming(adapter):
        await adapter.wait_until(lambda s: s.connections == 3, timeout=10)
    assert adapter.stats.connections == 0
    await sim.wait_until(lambda: sim.connections(E.BINANCE_USDM) == 0, timeout=10)


async def test_lifecycle_and_argument_errors(sim, adapters):
    sink = RecordingSink()
    with pytest.raises(ValueError, match="venue"):
        BinanceAdapter(E.OKX_SPOT, sink)
    with pytest.raises(ValueError, match="timeout"):
        OkxAdapter(E.OKX_SPOT, sink, timeout=0)
    with pytest.raises(ValueError, match="symbols"):
        OkxAdapter(E.OKX_SPOT, sink, symbols="BTC-USDT")
    adapter = OkxAdapter(E.OKX_SPOT, sink, rest_url=sim.rest_url(E.OKX_SPOT))
    with pytest.raises(StateError):
        await adapter.sync_symbols()
    await adapter.start()
    await adapter.close()
    await adapter.close()  # idempotent
    with pytest.raises(ClosedError):
        await adapter.sync_symbols()


def test_registry_and_sink_protocol():
    assert set(ADAPTERS) == set(E)
    assert adapter_class("bybit_linear") is BybitAdapter
    with pytest.raises(ValueError):
        adapter_class("kraken")
    assert create_parser(E.OKX_SWAP).venue is E.OKX_SWAP
    assert isinstance(RecordingSink(), Sink)
    from hftdb.manager import DatabaseManager

    for name in ("insert_exchange", "get_exchange_by_enum", "sync_symbols", "insert_book_ticker_snapshots",
                 "insert_funding_rates", "insert_balance_snapshots", "flush"):
        assert asyncio.iscoroutinefunction(getattr(DatabaseManager, name)), name


def test_connection_planning_respects_each_venue_limit():
    sink = RecordingSink()
    symbols = [f"S{i:04d}USDT" for i in range(3000)]
    binance = BinanceAdapter(E.BINANCE_SPOT, sink, symbols=symbols)
    assert [len(s) for s in binance.plan_connections(binance.topics())] == [1024, 1024, 952]
    bybit = BybitAdapter(E.BYBIT_LINEAR, sink, symbols=symbols, channels=["orderbook.1"])
    shards = bybit.plan_connections(bybit.topics())
    assert all(sum(map(len, shard)) <= 21_000 for shard in shards) and sum(map(len, shards)) == 3000
    okx = OkxAdapter(E.OKX_SPOT, sink, symbols=symbols)
    for shard in okx.plan_connections(okx.topics()):
        for text, acks in okx.subscribe_messages(shard, iter(range(1, 10**6)).__next__):
            assert len(text.encode()) <= 65_536 and acks == text.count("instId")


# -- listings changing under running streams ---------------------------------------------------------------


def _rows_of(sink: RecordingSink, symbol: str) -> int:
    return sum(r.symbol == symbol for r in sink.books) + sum(r.symbol == symbol for r in sink.funding)


@pytest.mark.parametrize("venue", [E.BINANCE_USDM, E.BYBIT_LINEAR, E.OKX_SWAP], ids=str)
async def test_symbol_sync_subscribes_new_listings_and_unsubscribes_delisted_ones(make_sim, adapters, venue):
    s = await make_sim()
    sink = RecordingSink()
    adapter = await adapters(s, venue, sink)  # symbols=None: follow the listing
    await adapter.sync_symbols()
    new = "NEW-USDT-SWAP" if venue is E.OKX_SWAP else "NEWUSDT"
    old = s.symbols(venue)[0]
    n_channels = len(adapter.channels)
    async with streaming(adapter):
        await sink.wait_until(lambda: {r.symbol for r in sink.books} == set(s.symbols(venue)))

        s.list_symbol(venue, new)
        await adapter.sync_symbols()
        assert {x.symbol: x.status for x in sink.symbols[venue.value]}[new] == "trading"
        await s.wait_until(lambda: s.subscribed(venue, new) == n_channels, timeout=10)
        await sink.wait_until(lambda: any(r.symbol == new for r in sink.books))
        await sink.wait_until(lambda: any(r.symbol == new for r in sink.funding))

        s.delist_symbol(venue, old)
        await adapter.sync_symbols()
        assert {x.symbol: x.status for x in sink.symbols[venue.value]}[old] != "trading"
        await s.wait_until(lambda: s.subscribed(venue, old) == 0, timeout=10)
        assert not [t for t in adapter.streamed_topics if old in t]
        # Everything the simulator sent for it went before the acknowledged unsubscribe: nothing more comes.
        sent_old = sum(t.frames for (_, _, sym), t in s.ledger.streams(venue).items() if sym == old)
        after = len(sink.books)
        await sink.wait_until(lambda: len(sink.books) >= after + 100)
        await assert_exactly_once(s, sink, venue)
        assert sum(t.frames for (_, _, sym), t in s.ledger.streams(venue).items() if sym == old) == sent_old
        assert _rows_of(sink, old) == sent_old  # no duplicates were injected: one frame, one row
        assert s.ledger.messages(venue) > 0 and any(sym == new for (_, _, sym) in s.ledger.streams(venue))
    stats = adapter.stats
    # Done on the live connection through the venue's own (un)subscribe requests, not by reconnecting.
    assert (stats.reconnects, stats.rollovers, stats.errors, stats.rejected) == (0, 0, 0, 0)


async def test_a_new_listing_opens_a_connection_when_the_shard_is_full(make_sim, adapters):
    s = await make_sim(symbols=3, limits=Limits(binance_spot_max_streams=3))
    sink = RecordingSink()
    adapter = await adapters(s, E.BINANCE_SPOT, sink, max_topics_per_connection=3)
    await adapter.sync_symbols()
    async with streaming(adapter):
        await s.wait_until(lambda: s.subscriptions(E.BINANCE_SPOT) == 3, timeout=10)
        assert s.connections(E.BINANCE_SPOT) == 1

        s.list_symbol(E.BINANCE_SPOT, "NEWUSDT")
        await adapter.sync_symbols()
        await s.wait_until(lambda: s.connections(E.BINANCE_SPOT) == 2 and s.subscribed(E.BINANCE_SPOT, "NEWUSDT") == 1,
                           timeout=10)
        await adapter.wait_until(lambda st: st.connections == 2, timeout=10)
        await sink.wait_until(lambda: any(r.symbol == "NEWUSDT" for r in sink.books))

        # Its connection carries nothing else once it is delisted: it is closed, the full one stays.
        s.delist_symbol(E.BINANCE_SPOT, "NEWUSDT")
        await adapter.sync_symbols()
        await s.wait_until(lambda: s.connections(E.BINANCE_SPOT) == 1, timeout=10)
        assert s.subscriptions(E.BINANCE_SPOT) == 3 and s.subscribed(E.BINANCE_SPOT, "NEWUSDT") == 0
        after = len(sink.books)
        await sink.wait_until(lambda: len(sink.books) >= after + 50)
        await assert_exactly_once(s, sink, E.BINANCE_SPOT)
    assert (adapter.stats.errors, adapter.stats.reconnects, adapter.stats.rollovers) == (0, 0, 0)


async def test_new_listings_are_subscribed_within_the_per_message_limit(make_sim, adapters):
    s = await make_sim(symbols=2)
    sink = RecordingSink()
    adapter = await adapters(s, E.BYBIT_SPOT, sink)
    await adapter.sync_symbols()
    new = [f"N{i:02d}USDT" for i in range(12)]
    async with streaming(adapter):
        await s.wait_until(lambda: s.subscriptions(E.BYBIT_SPOT) == 2, timeout=10)
        for symbol in new:
            s.list_symbol(E.BYBIT_SPOT, symbol)
        await adapter.sync_symbols()
        # The venue refuses more than 10 args a request: 12 new topics must go as two requests on the same connection.
        await s.wait_until(lambda: s.subscriptions(E.BYBIT_SPOT) == 14, timeout=10)
        assert s.connections(E.BYBIT_SPOT) == 1
        await sink.wait_until(lambda: {r.symbol for r in sink.books} >= set(new))
        await assert_exactly_once(s, sink, E.BYBIT_SPOT)
    assert (adapter.stats.errors, adapter.stats.reconnects, adapter.stats.rollovers) == (0, 0, 0)


async def test_simulator_listing_changes_show_in_rest_and_subscriptions(make_sim, adapters):
    s = await make_sim(symbols=2)
    with pytest.raises(ValueError, match="symbol"):
        s.list_symbol(E.OKX_SWAP, "NEW-USDT")  # a spot name on the swap market
    with pytest.raises(ValueError, match="already listed"):
        s.list_symbol(E.BINANCE_USDM, s.symbols(E.BINANCE_USDM)[0])
    with pytest.raises(ValueError, match="not trading"):
        s.delist_symbol(E.BINANCE_USDM, "NOPEUSDT")
    sink = RecordingSink()
    adapter = await adapters(s, E.OKX_SWAP, sink, symbols=["BTC-USDT-SWAP"], max_reconnect_attempts=0)
    s.delist_symbol(E.OKX_SWAP, "BTC-USDT-SWAP")
    assert s.symbols(E.OKX_SWAP) == ["ETH-USDT-SWAP"]
    await adapter.sync_symbols()
    assert {x.symbol: x.status for x in sink.symbols[E.OKX_SWAP.value]} == {"BTC-USDT-SWAP": "halted", "ETH-USDT-SWAP": "trading"}
    # A suspended instrument cannot be subscribed: it is left out, and said so, not retried until giving up.
    assert adapter.topics() == [] and "BTC-USDT-SWAP" in adapter.not_streamed
    s.list_symbol(E.OKX_SWAP, "BTC-USDT-SWAP")  # listed again
    assert s.symbols(E.OKX_SWAP) == ["ETH-USDT-SWAP", "BTC-USDT-SWAP"]


@pytest.mark.parametrize("how", ["reconnect", "sync"])
@pytest.mark.parametrize("venue", [E.BINANCE_SPOT, E.BYBIT_SPOT, E.OKX_SPOT], ids=str)
async def test_a_given_symbol_delisted_is_dropped_while_the_others_stream_on(make_sim, adapters, venue, how, caplog):
    # A given symbol delisted at runtime: either a reconnect's subscription is refused (Binance's "invalid stream
    # name", Bybit's success=false, OKX's 60018) or a symbol sync lists it halted first. Either way it alone is
    # dropped, with one warning, the other symbol streams on, and it is subscribed again once listed again.
    s = await make_sim(symbols=2)
    sink = RecordingSink()
    gone, kept = s.symbols(venue)
    adapter = await adapters(s, venue, sink, symbols=[gone, kept], max_reconnect_attempts=3)
    await adapter.sync_symbols()
    async with streaming(adapter) as task:
        await sink.wait_until(lambda: {r.symbol for r in sink.books} == {gone, kept})
        s.delist_symbol(venue, gone)
        if how == "reconnect":
            s.drop_connections(venue)
        else:
            await adapter.sync_symbols()
        await s.wait_until(lambda: s.subscribed(venue, gone) == 0 and s.subscribed(venue, kept) == 1, timeout=10)
        after = _rows_of(sink, kept)
        await sink.wait_until(lambda: _rows_of(sink, kept) >= after + 50)
        assert not task.done()
        assert list(adapter.not_streamed) == [adapter.topic(gone, adapter.channels[0]) if how == "reconnect" else gone]
        assert not [t for t in adapter.streamed_topics if gone in t]

        s.list_symbol(venue, gone)
        await adapter.sync_symbols()
        await s.wait_until(lambda: s.subscribed(venue, gone) == 1, timeout=10)
        before = _rows_of(sink, gone)
        await sink.wait_until(lambda: _rows_of(sink, gone) >= before + 20)
        assert adapter.not_streamed == {}
        await assert_exactly_once(s, sink, venue)
    warnings = [m for r in caplog.records if r.levelname == "WARNING" and gone.lower() in (m := r.getMessage()).lower()
                and ("refuses" in m or "not streamed" in m)]
    assert len(warnings) == 1, warnings

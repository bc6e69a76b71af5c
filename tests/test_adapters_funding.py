"""REST funding polling, the fallback where a venue's websocket funding is not subscribed or has gone quiet:
Binance ``/fapi/v1/premiumIndex``, Bybit ``/v5/market/tickers?category=linear``, OKX
``/api/v5/public/funding-rate``, each against the simulator over real sockets."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from hftdb.exchanges.registry import adapter_class
from hftdb.models import ExchangeName as E
from hftdb.simulator import Limits
from test_adapters import RecordingSink, adapters, make_sim, streaming  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(90)

FUNDING_PATHS = {
    E.BINANCE_USDM: "/fapi/v1/premiumIndex",
    E.BYBIT_LINEAR: "/v5/market/tickers",
    E.OKX_SWAP: "/api/v5/public/funding-rate",
}
PERPETUALS = tuple(FUNDING_PATHS)


def book_channel(venue: E) -> str:
    return adapter_class(venue).default_channels[venue][0]


@contextlib.asynccontextmanager
async def polling(adapter, interval: float):
    task = asyncio.create_task(adapter.run_funding_poller(interval, timeout=5.0))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("venue", PERPETUALS, ids=str)
async def test_funding_is_polled_over_rest_when_not_streamed(make_sim, adapters, venue):
    sim = await make_sim(symbols=4)
    sink = RecordingSink()
    symbols = sim.symbols(venue)[:3]
    adapter = await adapters(sim, venue, sink, symbols=symbols, channels=[book_channel(venue)])
    assert adapter.has_funding and not adapter.streams_funding
    async with polling(adapter, 0.05):
        await sink.wait_until(lambda: len({r.symbol for r in sink.funding}) == 3 and len(sink.funding) >= 6)
    assert {r.symbol for r in sink.funding} == set(symbols)  # the fourth symbol is not ours
    market = sim.markets[venue]
    for row in sink.funding:
        assert row.exchange == venue.value and row.exchange_ts is not None and row.next_funding_ts is not None
        assert -0.00375 <= row.rate <= 0.00375
        assert row.next_funding_ts == market.quotes[row.symbol].next_funding_ms * 1000 or market.quotes[row.symbol].next_funding_ms == 0
    # Each symbol's rows have rising exchange times: a poll that finds nothing new stores nothing.
    for symbol in symbols:
        times = [r.exchange_ts for r in sink.funding if r.symbol == symbol]
        assert times == sorted(set(times))
    assert adapter.stats.rest_funding_rows == len(sink.funding)
    requests = sim.host(venue).requests[FUNDING_PATHS[venue]]
    assert requests >= (6 if venue is E.OKX_SWAP else 2)  # OKX takes one instrument per request


@pytest.mark.parametrize("venue", PERPETUALS, ids=str)
async def test_rest_takes_over_when_streamed_funding_goes_quiet(make_sim, adapters, venue):
    # The funding channel is subscribed, but the venue pushes no funding (an interval far beyond the test).
    sim = await make_sim(symbols=3, limits=Limits(funding_interval=3600.0))
    sink = RecordingSink()
    adapter = await adapters(sim, venue, sink, symbols=sim.symbols(venue)[:2])
    assert adapter.streams_funding
    async with streaming(adapter), polling(adapter, 0.3):
        # (Bybit's tickers snapshot on subscribe carries funding once; then the channel is quiet.)
        await adapter.wait_until(lambda s: s.rest_funding_rows >= 2 and s.book_rows > 0, timeout=20)
    assert sim.host(venue).requests[FUNDING_PATHS[venue]] >= 1
    assert adapter.stats.rest_funding_rows + adapter.stats.funding_rows == len(sink.funding)


async def test_streamed_funding_leaves_rest_alone(make_sim, adapters):
    sim = await make_sim(symbols=2, limits=Limits(funding_interval=0.05))
    sink = RecordingSink()
    adapter = await adapters(sim, E.BINANCE_USDM, sink, symbols=sim.symbols(E.BINANCE_USDM))
    async with streaming(adapter), polling(adapter, 0.2):
        # 80 streamed updates of 2 symbols at 20 a second each take ~2 s: ten polling intervals.
        await adapter.wait_until(lambda s: s.funding_rows >= 80, timeout=30)
    assert adapter.stats.rest_funding_rows == 0
    assert sim.host(E.BINANCE_USDM).requests.get(FUNDING_PATHS[E.BINANCE_USDM], 0) == 0


async def test_a_failing_funding_poll_is_counted_and_polling_goes_on(make_sim, adapters):
    sim = await make_sim(symbols=2)
    sink = RecordingSink()
    adapter = await adapters(sim, E.BYBIT_LINEAR, sink, symbols=sim.symbols(E.BYBIT_LINEAR), channels=["orderbook.1"])
    sim.http_error(E.BYBIT_LINEAR, 400, path="/v5/market/tickers", count=1)
    async with polling(adapter, 0.05):
        await sink.wait_until(lambda: len(sink.funding) >= 2)
    assert adapter.stats.rest_errors == 1


async def test_spot_venues_have_no_funding_to_poll(make_sim, adapters):
    sim = await make_sim(symbols=2)
    adapter = await adapters(sim, E.BINANCE_SPOT, RecordingSink(), symbols=sim.symbols(E.BINANCE_SPOT))
    assert not adapter.has_funding
    with pytest.raises(ValueError, match="no funding"):
        await adapter.run_funding_poller(1.0)

"""Protocol conformance of the exchange simulator, checked with an independent client (aiohttp) over loopback.

Each venue's REST endpoints, signature checks, subscriptions and acknowledgements, heartbeats, limits, faults
and the ledger's exact counts. Where the project's parsers exist, the simulator's payloads are also run through
them: what the simulator sends must be what the parsers accept.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from hftdb.exchanges.parse_binance import BinanceParser
from hftdb.exchanges.parse_bybit import BybitParser
from hftdb.exchanges.parse_okx import OkxParser
from hftdb.exchanges.signing import binance_signature, bybit_signature, okx_signature, okx_timestamp
from hftdb.models import ExchangeName as E
from hftdb.simulator import ExchangeSimulator, IdRanges, Limits

pytestmark = pytest.mark.timeout(60)

N_SYMBOLS = 8


@pytest.fixture(scope="session")
async def shared_sim() -> AsyncIterator[ExchangeSimulator]:
    sim = ExchangeSimulator(rate=400, symbols=N_SYMBOLS, seed=7, limits=Limits(funding_interval=0.2))
    async with sim:
        yield sim


@pytest.fixture
async def sim(shared_sim: ExchangeSimulator) -> ExchangeSimulator:
    """The session's simulator, reset to a clean state for this test."""
    shared_sim.reset()
    return shared_sim


@pytest.fixture
async def make_sim():
    """A private simulator with its own limits or clock, closed after the test."""
    sims: list[ExchangeSimulator] = []

    async def make(**kwargs) -> ExchangeSimulator:
        kwargs.setdefault("symbols", 4)
        kwargs.setdefault("rate", 200)
        s = ExchangeSimulator(**kwargs)
        await s.start()
        sims.append(s)
        return s

    yield make
    for s in sims:
        await s.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, object, aiohttp.ClientResponse]:
    async with http.get(url, **kwargs) as resp:
        return resp.status, json.loads(await resp.text()), resp


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def recv_until(ws: aiohttp.ClientWebSocketResponse, pred, *, timeout: float = 5.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            obj = await recv_json(ws, timeout)
            if pred(obj):
                return obj


async def wait_closed(ws: aiohttp.ClientWebSocketResponse, *, timeout: float = 5.0) -> aiohttp.WSMessage:
    """Read until the server closes; return the close message."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return msg


# -- REST ------------------------------------------------------------------------------------------------


async def test_binance_exchange_info_parses_into_every_symbol(sim, http):
    for venue, path in ((E.BINANCE_SPOT, "/api/v3/exchangeInfo"), (E.BINANCE_USDM, "/fapi/v1/exchangeInfo")):
        async with http.get(sim.rest_url(venue) + path) as resp:
            assert resp.status == 200
            body = await resp.read()
        symbols = BinanceParser(venue).parse_symbols(body, 1, 0)
        assert [s.symbol for s in symbols] == sim.symbols(venue)
        assert all(s.status == "trading" and s.tick_size and s.lot_size for s in symbols)
        assert {s.kind for s in symbols} == ({"spot"} if venue is E.BINANCE_SPOT else {"perpetual"})
    status, one, _ = await get_json(http, sim.rest_url(E.BINANCE_SPOT) + "/api/v3/exchangeInfo?symbol=ETHUSDT")
    assert status == 200 and [s["symbol"] for s in one["symbols"]] == ["ETHUSDT"]
    status, err, _ = await get_json(http, sim.rest_url(E.BINANCE_SPOT) + "/api/v3/exchangeInfo?symbol=NOPE")
    assert (status, err) == (400, {"code": -1121, "msg": "Invalid symbol."})


async def test_binance_premium_index_one_and_all(sim, http):
    url = sim.rest_url(E.BINANCE_USDM) + "/fapi/v1/premiumIndex"
    status, rows, _ = await get_json(http, url)
    assert status == 200 and [r["symbol"] for r in rows] == sim.symbols(E.BINANCE_USDM)
    async with http.get(url + "?symbol=BTCUSDT") as resp:
        rates = BinanceParser(E.BINANCE_USDM).parse_funding(await resp.read(), 1)
    assert len(rates) == 1 and rates[0].symbol == "BTCUSDT" and rates[0].next_funding_ts


async def test_bybit_instruments_linear_paginates_spot_does_not(sim, http):
    base = sim.rest_url(E.BYBIT_LINEAR) + "/v5/market/instruments-info?category=linear&limit=3"
    parser = BybitParser(E.BYBIT_LINEAR)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = base if cursor is None else f"{base}&cursor={cursor}"
        async with http.get(url) as resp:
            body = await resp.read()
        pages += 1
        seen += [s.symbol for s in parser.parse_symbols(body, 1, 0)]
        cursor = parser.next_cursor(body)
        if cursor is None:
            break
    assert pages == -(-N_SYMBOLS // 3)
    assert seen == sim.symbols(E.BYBIT_LINEAR)
    # Spot ignores limit and cursor, as documented: one page with everything.
    async with http.get(sim.rest_url(E.BYBIT_SPOT) + "/v5/market/instruments-info?category=spot&limit=2") as resp:
        body = await resp.read()
    spot = BybitParser(E.BYBIT_SPOT)
    assert [s.symbol for s in spot.parse_symbols(body, 1, 0)] == sim.symbols(E.BYBIT_SPOT)
    assert spot.next_cursor(body) is None
    status, bad, _ = await get_json(http, sim.rest_url(E.BYBIT_LINEAR) + "/v5/market/instruments-info?category=linear&limit=0")
    assert status == 200 and bad["retCode"] == 10001
    status, bad, _ = await get_json(http, sim.rest_url(E.BYBIT_LINEAR) + "/v5/market/instruments-info?category=linear&cursor=zz")
    assert bad["retCode"] == 10001


async def test_okx_instruments_and_funding(sim, http):
    for venue, inst_type in ((E.OKX_SPOT, "SPOT"), (E.OKX_SWAP, "SWAP")):
        async with http.get(sim.rest_url(venue) + f"/api/v5/public/instruments?instType={inst_type}") as resp:
            symbols = OkxParser(venue).parse_symbols(await resp.read(), 1, 0)
        assert [s.symbol for s in symbols] == sim.symbols(venue)
    swap = symbols[0]
    assert swap.kind == "perpetual" and swap.contract_size and swap.base == "BTC"
    status, err, _ = await get_json(http, sim.rest_url(E.OKX_SPOT) + "/api/v5/public/instruments")
    assert status == 400 and err["code"] == "50014"
    async with http.get(sim.rest_url(E.OKX_SWAP) + "/api/v5/public/funding-rate?instId=BTC-USDT-SWAP") as resp:
        rates = OkxParser(E.OKX_SWAP).parse_funding(await resp.read(), 1)
    assert [r.symbol for r in rates] == ["BTC-USDT-SWAP"]


# -- signed requests -------------------------------------------------------------------------------------


def binance_query(secret: str, *, ts: int | None = None, recv_window: int = 5000) -> str:
    q = f"recvWindow={recv_window}&timestamp={ts if ts is not None else int(time.time() * 1000)}"
    return f"{q}&signature={binance_signature(secret, q)}"


async def test_binance_signed_account_accepts_good_and_refuses_bad(sim, http):
    c = sim.credentials
    for venue, path in ((E.BINANCE_SPOT, "/api/v3/account"), (E.BINANCE_USDM, "/fapi/v2/balance")):
        url = sim.rest_url(venue) + path
        async with http.get(f"{url}?{binance_query(c.api_secret)}", headers={"X-MBX-APIKEY": c.api_key}) as resp:
            assert resp.status == 200
            balances = BinanceParser(venue).parse_balances(await resp.read(), 1)
        assert balances
        cases = [
            ({"X-MBX-APIKEY": c.api_key}, binance_query("wrong-secret"), 400, -1022),
            ({}, binance_query(c.api_secret), 401, -2014),
            ({"X-MBX-APIKEY": "someone-else"}, binance_query(c.api_secret), 401, -2015),
            ({"X-MBX-APIKEY": c.api_key}, binance_query(c.api_secret, ts=int(time.time() * 1000) - 10_000), 400, -1021),
            ({"X-MBX-APIKEY": c.api_key}, "timestamp=1", 400, -1102),
        ]
        for headers, query, status, code in cases:
            got_status, body, _ = await get_json(http, f"{url}?{query}", headers=headers)
            assert (got_status, body["code"]) == (status, code), body


async def test_binance_signature_must_cover_the_query_as_sent(sim, http):
    c = sim.credentials
    q = f"recvWindow=5000&timestamp={int(time.time() * 1000)}"
    sig = binance_signature(c.api_secret, q)
    # Same parameters, another order: a different string, so a different signature.
    reordered = f"timestamp={q.split('timestamp=')[1]}&recvWindow=5000&signature={sig}"
    status, body, _ = await get_json(http, sim.rest_url(E.BINANCE_SPOT) + f"/api/v3/account?{reordered}", headers={"X-MBX-APIKEY": c.api_key})
    assert (status, body["code"]) == (400, -1022)


def bybit_headers(key: str, secret: str, query: str, *, ts: int | None = None) -> dict[str, str]:
    ts = ts if ts is not None else int(time.time() * 1000)
    return {
        "X-BAPI-API-KEY": key,
        "X-BAPI-TIMESTAMP": str(ts),
        "X-BAPI-RECV-WINDOW": "5000",
        "X-BAPI-SIGN": bybit_signature(secret, ts, key, 5000, query),
    }


async def test_bybit_signed_wallet_balance(sim, http):
    c = sim.credentials
    q = "accountType=UNIFIED"
    url = sim.rest_url(E.BYBIT_LINEAR) + f"/v5/account/wallet-balance?{q}"
    async with http.get(url, headers=bybit_headers(c.api_key, c.api_secret, q)) as resp:
        assert resp.status == 200
        balances = BybitParser(E.BYBIT_LINEAR).parse_balances(await resp.read(), 1)
    assert {b.asset for b in balances} == {"USDT", "BTC"}
    # Bybit refuses with HTTP 200 and a retCode.
    for headers, code in (
        (bybit_headers(c.api_key, "wrong", q), 10004),
        (bybit_headers("nobody", c.api_secret, q), 10003),
        (bybit_headers(c.api_key, c.api_secret, q, ts=int(time.time() * 1000) - 60_000), 10002),
    ):
        status, body, _ = await get_json(http, url, headers=headers)
        assert (status, body["retCode"]) == (200, code), body


def okx_headers(c, path: str, *, secret: str | None = None, passphrase: str | None = None, when: float | None = None) -> dict[str, str]:
    ts = okx_timestamp(time.time() if when is None else when)
    return {
        "OK-ACCESS-KEY": c.api_key,
        "OK-ACCESS-SIGN": okx_signature(secret or c.api_secret, ts, "GET", path),
        "OK-ACCESS-TIMESTAMP": ts,
        "OK-ACCESS-PASSPHRASE": passphrase or c.passphrase,
    }


async def test_okx_signed_balance(sim, http):
    c = sim.credentials
    path = "/api/v5/account/balance?ccy=USDT,BTC"
    url = sim.rest_url(E.OKX_SPOT) + path
    async with http.get(url, headers=okx_headers(c, path)) as resp:
        assert resp.status == 200
        balances = OkxParser(E.OKX_SPOT).parse_balances(await resp.read(), 1)
    assert {b.asset for b in balances} == {"USDT", "BTC"}
    # The signature covers the query: signing the bare path does not do.
    for headers, code in (
        (okx_headers(c, "/api/v5/account/balance"), "50113"),
        (okx_headers(c, path, secret="wrong"), "50113"),
        (okx_headers(c, path, passphrase="wrong"), "50105"),
        (okx_headers(c, path, when=time.time() - 120), "50102"),
        ({**okx_headers(c, path), "OK-ACCESS-KEY": "nobody"}, "50111"),
    ):
        status, body, _ = await get_json(http, url, headers=headers)
        assert (status, body["code"]) == (401, code), body


def test_okx_signature_matches_an_independent_computation():
    ts = "2020-12-08T09:08:57.715Z"
    expected = base64.b64encode(hmac.new(b"secret", f"{ts}GET/api/v5/account/balance?ccy=BTC".encode(), hashlib.sha256).digest()).decode()
    assert okx_signature("secret", ts, "get", "/api/v5/account/balance?ccy=BTC") == expected
    assert okx_timestamp(1607418537.715) == ts


def test_binance_signature_doc_example():
    # The worked example of Binance's "SIGNED endpoint security" documentation.
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    assert binance_signature(secret, query) == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


# -- websockets: subscriptions, envelopes, heartbeats, limits --------------------------------------------


async def test_binance_subscribe_ack_then_combined_stream(sim, http):
    async with http.ws_connect(sim.ws_url(E.BINANCE_SPOT) + "/stream") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker", "ethusdt@bookTicker"], "id": 7})
        assert await recv_json(ws) == {"result": None, "id": 7}
        frame = await recv_json(ws)
        assert frame["stream"] in ("btcusdt@bookTicker", "ethusdt@bookTicker")
        assert set(frame["data"]) == {"u", "s", "b", "B", "a", "A"}
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 8})
        listing = await recv_until(ws, lambda o: o.get("id") == 8)
        assert listing["result"] == ["btcusdt@bookTicker", "ethusdt@bookTicker"]
        await ws.send_json({"method": "SUBSCRIBE", "params": ["nope@bookTicker"], "id": 9})
        err = await recv_until(ws, lambda o: o.get("id") == 9)
        assert err["error"]["code"] == 2
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": -1})
        err = await recv_until(ws, lambda o: "error" in o)
        assert "unsigned integer" in err["error"]["msg"]


async def test_binance_raw_and_url_streams(sim, http):
    async with http.ws_connect(sim.ws_url(E.BINANCE_USDM) + "/ws/btcusdt@markPrice@1s") as ws:
        event = await recv_json(ws)
        assert event["e"] == "markPriceUpdate" and event["s"] == "BTCUSDT"
        assert BinanceParser(E.BINANCE_USDM).parse(json.dumps(event), 1).funding_rates
    async with http.ws_connect(sim.ws_url(E.BINANCE_USDM) + "/stream?streams=ethusdt@bookTicker/btcusdt@markPrice@1s") as ws:
        streams = set()
        async with asyncio.timeout(5):
            while len(streams) < 2:
                streams.add((await recv_json(ws))["stream"])
        assert streams == {"ethusdt@bookTicker", "btcusdt@markPrice@1s"}


async def test_binance_stream_limit_per_connection(make_sim, http):
    s = await make_sim(limits=Limits(binance_spot_max_streams=3))
    async with http.ws_connect(s.ws_url(E.BINANCE_SPOT) + "/stream") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": [f"{x.lower()}@bookTicker" for x in s.symbols(E.BINANCE_SPOT)[:3]], "id": 1})
        assert await recv_json(ws) == {"result": None, "id": 1}
        await ws.send_json({"method": "SUBSCRIBE", "params": [f"{s.symbols(E.BINANCE_SPOT)[3].lower()}@bookTicker"], "id": 2})
        err = await recv_until(ws, lambda o: o.get("id") == 2)
        assert err["error"] == {"code": 4, "msg": "Too many subscriptions"}
        await wait_closed(ws)
        assert ws.close_code == 1008


async def test_binance_closes_a_connection_sending_more_than_5_messages_a_second(sim, http):
    async with http.ws_connect(sim.ws_url(E.BINANCE_SPOT) + "/stream") as ws:
        for i in range(6):
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": i})
        msg = await wait_closed(ws)
        assert ws.close_code == 1008, msg


async def test_binance_pings_and_drops_a_client_that_does_not_pong(make_sim, http):
    s = await make_sim(limits=Limits(binance_spot_ping_interval=0.1, binance_spot_pong_timeout=0.3))
    url = s.ws_url(E.BINANCE_SPOT) + "/stream"
    # A client that echoes each ping's payload stays connected through several pings.
    async with http.ws_connect(url, autoping=False) as ws:
        for _ in range(4):
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.PING
            await ws.pong(msg.data)
    # An unsolicited or wrong pong does not count: the connection is closed.
    async with http.ws_connect(url, autoping=False) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.PING
        await ws.pong(b"not the payload")
        await wait_closed(ws)
        assert ws.close_code == 1008


class FakeClock:
    """Wall time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_binance_ends_connections_at_24h(make_sim, http):
    clock = FakeClock()
    s = await make_sim(clock=clock, limits=Limits(binance_spot_ping_interval=0.2))
    async with http.ws_connect(s.ws_url(E.BINANCE_SPOT) + "/stream", autoping=True) as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 1})
        await recv_json(ws)
        clock.offset = 24 * 3600
        await wait_closed(ws)
        assert ws.close_code == 1000


async def test_bybit_subscribe_snapshot_delta_and_ping(sim, http):
    async with http.ws_connect(sim.ws_url(E.BYBIT_LINEAR) + "/v5/public/linear") as ws:
        await ws.send_json({"op": "subscribe", "args": ["orderbook.1.BTCUSDT", "tickers.BTCUSDT"], "req_id": "r1"})
        ack = await recv_json(ws)
        assert ack["success"] is True and ack["op"] == "subscribe" and ack["req_id"] == "r1" and ack["conn_id"]
        parser = BybitParser(E.BYBIT_LINEAR)
        kinds: dict[str, list[str]] = {}
        last_u = None
        async with asyncio.timeout(5):
            while len(kinds.get("orderbook.1.BTCUSDT", [])) < 5 or "tickers.BTCUSDT" not in kinds:
                frame = await recv_json(ws)
                kinds.setdefault(frame["topic"], []).append(frame["type"])
                parsed = parser.parse(json.dumps(frame), 1)
                if frame["topic"].startswith("orderbook"):
                    u = frame["data"]["u"]
                    assert last_u is None or u == last_u + 1  # consecutive on level 1
                    last_u = u
                    assert parsed.book_tickers[0].update_id == u
        assert kinds["orderbook.1.BTCUSDT"][0] == "snapshot" and set(kinds["orderbook.1.BTCUSDT"][1:]) == {"delta"}
        assert kinds["tickers.BTCUSDT"][0] == "snapshot"
        await ws.send_json({"op": "ping", "req_id": "p"})
        pong = await recv_until(ws, lambda o: o.get("op") == "ping")
        assert pong["ret_msg"] == "pong" and pong["success"] is True
        assert parser.parse(json.dumps(pong), 1).control == "pong"


async def test_bybit_subscribe_errors(sim, http):
    async with http.ws_connect(sim.ws_url(E.BYBIT_SPOT) + "/v5/public/spot") as ws:
        await ws.send_json({"op": "subscribe", "args": [f"orderbook.1.{s}" for s in sim.symbols(E.BYBIT_SPOT)[:8]] + ["orderbook.1.X", "orderbook.1.Y", "orderbook.1.Z"]})
        err = await recv_json(ws)
        assert err == {"success": False, "ret_msg": "args size >10", "conn_id": err["conn_id"], "op": "subscribe"}
        await ws.send_json({"op": "subscribe", "args": ["orderbook.1.NOPEUSDT"]})
        err = await recv_json(ws)
        assert not err["success"] and err["ret_msg"] == "Invalid symbol :[orderbook.1.NOPEUSDT]"
        await ws.send_json({"op": "subscribe", "args": ["tickers.BTCUSDT"]})  # spot tickers are not served here
        err = await recv_json(ws)
        assert not err["success"] and "handler not found" in err["ret_msg"]


async def test_bybit_linear_args_length_limit(make_sim, http):
    s = await make_sim(limits=Limits(bybit_linear_max_args_chars=40))
    async with http.ws_connect(s.ws_url(E.BYBIT_LINEAR) + "/v5/public/linear") as ws:
        await ws.send_json({"op": "subscribe", "args": ["orderbook.1.BTCUSDT", "orderbook.1.ETHUSDT"]})  # 38 chars
        assert (await recv_json(ws))["success"] is True
        await ws.send_json({"op": "subscribe", "args": ["tickers.BTCUSDT"]})
        err = await recv_until(ws, lambda o: o.get("op") == "subscribe")
        assert err["success"] is False


async def test_bybit_resends_an_unchanged_level1_book_as_a_snapshot(make_sim, http):
    s = await make_sim(rate=0.0001, limits=Limits(bybit_resnapshot_after=0.2))
    async with http.ws_connect(s.ws_url(E.BYBIT_SPOT) + "/v5/public/spot") as ws:
        await ws.send_json({"op": "subscribe", "args": ["orderbook.1.BTCUSDT"]})
        await recv_json(ws)
        first = await recv_json(ws)
        again = await recv_json(ws)
        assert first["type"] == again["type"] == "snapshot"
        assert first["data"]["u"] == again["data"]["u"]


async def test_okx_subscribe_acks_per_arg_ping_and_errors(sim, http):
    async with http.ws_connect(sim.ws_url(E.OKX_SWAP) + "/ws/v5/public") as ws:
        args = [{"channel": "bbo-tbt", "instId": "BTC-USDT"}, {"channel": "funding-rate", "instId": "ETH-USDT-SWAP"},
                {"channel": "tickers", "instId": "SOL-USDT-SWAP"}]
        await ws.send_json({"id": "1", "op": "subscribe", "args": args})
        acks = [await recv_json(ws) for _ in args]
        assert [a["arg"] for a in acks] == args
        assert all(a["event"] == "subscribe" and a["id"] == "1" for a in acks)
        assert len({a["connId"] for a in acks}) == 1
        parsers = {E.OKX_SPOT: OkxParser(E.OKX_SPOT), E.OKX_SWAP: OkxParser(E.OKX_SWAP)}
        channels = set()
        async with asyncio.timeout(5):
            while len(channels) < 3:
                frame = await recv_json(ws)
                channel = frame["arg"]["channel"]
                channels.add(channel)
                venue = E.OKX_SWAP if frame["arg"]["instId"].endswith("-SWAP") else E.OKX_SPOT
                parsed = parsers[venue].parse(json.dumps(frame), 1)
                assert parsed.book_tickers or parsed.funding_rates
                if channel == "bbo-tbt":
                    assert parsed.book_tickers[0].update_id == frame["data"][0]["seqId"]
        await ws.send_str("ping")
        async with asyncio.timeout(5):
            while (await ws.receive()).data != "pong":
                pass
        await ws.send_json({"op": "subscribe", "args": [{"channel": "funding-rate", "instId": "BTC-USDT"}]})
        err = await recv_until(ws, lambda o: o.get("event") == "error")
        assert err["code"] == "60018"
        await ws.send_json({"op": "bogus"})
        err = await recv_until(ws, lambda o: o.get("event") == "error")
        assert err["code"] == "60019"


async def test_okx_closes_a_silent_connection(make_sim, http):
    s = await make_sim(limits=Limits(okx_idle_timeout=0.3))
    async with http.ws_connect(s.ws_url(E.OKX_SPOT) + "/ws/v5/public") as ws:
        await wait_closed(ws)  # nothing subscribed, nothing pushed
        assert ws.close_code == 4004


async def test_okx_request_rate_limit(make_sim, http):
    s = await make_sim(limits=Limits(okx_max_requests_per_hour=2))
    async with http.ws_connect(s.ws_url(E.OKX_SPOT) + "/ws/v5/public") as ws:
        for inst in ("BTC-USDT", "ETH-USDT", "SOL-USDT"):
            await ws.send_json({"op": "subscribe", "args": [{"channel": "tickers", "instId": inst}]})
        err = await recv_until(ws, lambda o: o.get("event") == "error")
        assert err["code"] == "60014"


# -- faults ----------------------------------------------------------------------------------------------


async def test_drop_connections_closes_gracefully(sim, http):
    async with http.ws_connect(sim.ws_url(E.BINANCE_SPOT) + "/stream?streams=btcusdt@bookTicker") as ws:
        await recv_json(ws)
        assert sim.connections(E.BINANCE_SPOT) == 1
        assert sim.drop_connections(E.BINANCE_SPOT) == 1
        await wait_closed(ws)
        assert ws.close_code == 1001


async def test_stall_sends_nothing_then_resumes(sim, http):
    async with http.ws_connect(sim.ws_url(E.OKX_SPOT) + "/ws/v5/public") as ws:
        await ws.send_json({"op": "subscribe", "args": [{"channel": "bbo-tbt", "instId": "BTC-USDT"}]})
        await recv_until(ws, lambda o: "data" in o)
        sim.stall(0.5, E.OKX_SPOT)
        start = time.monotonic()
        arrivals = [start]
        async with asyncio.timeout(5):
            while arrivals[-1] - start < 0.8:
                await recv_json(ws)
                arrivals.append(time.monotonic())
        # One silence as long as the stall (frames already in flight may land just after it began), then data.
        assert max(b - a for a, b in zip(arrivals, arrivals[1:])) >= 0.4
        assert len(arrivals) > 2


async def test_malformed_frames_are_sent_and_counted(sim, http):
    async with http.ws_connect(sim.ws_url(E.BINANCE_SPOT) + "/stream?streams=btcusdt@bookTicker") as ws:
        await recv_json(ws)
        parser = BinanceParser(E.BINANCE_SPOT)
        reasons = []
        for kind, n in (("truncated", 2), ("garbage", 1), ("bad_number", 3)):
            assert sim.send_malformed(E.BINANCE_SPOT, n, kind=kind) == n
        async with asyncio.timeout(5):
            while len(reasons) < 6:
                msg = await ws.receive()
                try:
                    parser.parse(msg.data, 1)
                except ValueError as exc:
                    reasons.append(exc.reason)
        assert sorted(reasons) == sorted(["invalid_json"] * 3 + ["bad_number"] * 3)
        assert sim.ledger.malformed["binance_spot"] == 6


async def test_injected_gap_and_duplicate(sim, http):
    async with http.ws_connect(sim.ws_url(E.BYBIT_SPOT) + "/v5/public/spot") as ws:
        await ws.send_json({"op": "subscribe", "args": ["orderbook.1.ETHUSDT"]})
        await recv_json(ws)
        ids = [(await recv_json(ws))["data"]["u"] for _ in range(3)]
        sim.inject_gap(E.BYBIT_SPOT, symbol="ETHUSDT", size=4)
        sim.inject_duplicate(E.BYBIT_SPOT, symbol="ETHUSDT")
        async with asyncio.timeout(5):
            while len(ids) < 12:
                frame = await recv_json(ws)
                if frame["type"] == "delta":
                    ids.append(frame["data"]["u"])
        steps = [b - a for a, b in zip(ids, ids[1:])]
        assert steps.count(5) == 1 and steps.count(0) == 1 and set(steps) <= {0, 1, 5}
        tally = sim.ledger.tally("bybit_spot", "orderbook.1", "ETHUSDT")
        assert (tally.gaps, tally.duplicates) == (1, 1)


async def test_http_errors_with_retry_after_in_each_venue_shape(sim, http):
    cases = [
        (E.BINANCE_SPOT, "/api/v3/exchangeInfo", 429, lambda b: b["code"] == -1003),
        (E.BINANCE_SPOT, "/api/v3/exchangeInfo", 418, lambda b: b["code"] == -1003 and "banned until" in b["msg"]),
        (E.BYBIT_LINEAR, "/v5/market/instruments-info?category=linear", 429, lambda b: b["retCode"] == 10006),
        (E.OKX_SWAP, "/api/v5/public/instruments?instType=SWAP", 429, lambda b: b == {"msg": "Too Many Requests", "code": "50011"}),
        (E.OKX_SWAP, "/api/v5/public/instruments?instType=SWAP", 503, lambda b: b["code"] == "50001"),
    ]
    for venue, path, status, check in cases:
        sim.http_error(venue, status, path=path.split("?")[0], retry_after=3)
        got, body, resp = await get_json(http, sim.rest_url(venue) + path)
        assert got == status and check(body) and resp.headers["Retry-After"] == "3"
        got, _, _ = await get_json(http, sim.rest_url(venue) + path)
        assert got == 200  # count=1: the next request is served
    sim.http_error(E.BYBIT_SPOT, 403)
    async with http.get(sim.rest_url(E.BYBIT_SPOT) + "/v5/market/time") as resp:
        assert resp.status == 403 and await resp.text() == "access too frequent"


async def test_http_error_refuses_websocket_upgrades(sim, http):
    sim.http_error(E.BINANCE_SPOT, 503, path="/stream", count=1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(sim.ws_url(E.BINANCE_SPOT) + "/stream")
    assert info.value.status == 503
    async with http.ws_connect(sim.ws_url(E.BINANCE_SPOT) + "/stream"):
        pass


# -- exact counts ----------------------------------------------------------------------------------------


async def test_ledger_counts_exactly_what_a_client_received(sim, http):
    streams = ["btcusdt@bookTicker", "ethusdt@bookTicker", "btcusdt@markPrice@1s"]
    received: dict[tuple[str, str], list[int]] = {}

    def take(frame: dict) -> None:
        data = frame["data"]
        channel = frame["stream"].split("@", 1)[1]
        key = data["u"] if channel == "bookTicker" else data["E"]
        received.setdefault((channel, data["s"]), []).append(key)

    async with http.ws_connect(sim.ws_url(E.BINANCE_USDM) + "/stream") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": streams, "id": 1})
        await recv_json(ws)
        async with asyncio.timeout(10):
            while sum(map(len, received.values())) < 150:
                take(await recv_json(ws))
        await sim.quiesce()
        total = sim.ledger.frames(E.BINANCE_USDM)
        async with asyncio.timeout(10):
            while sum(map(len, received.values())) < total:
                take(await recv_json(ws))
    streams_sent = sim.ledger.streams(E.BINANCE_USDM)
    assert {(ch, sym) for (_, ch, sym) in streams_sent} == set(received)
    for (_, channel, symbol), tally in streams_sent.items():
        got = received[(channel, symbol)]
        assert got == sorted(got) and len(got) == len(set(got)) == tally.frames == tally.messages
        assert set(got) == tally.keys.to_set()


def test_id_ranges_merge_and_membership():
    r = IdRanges()
    for v in (5, 6, 7, 10, 9, 1, 8, 3, 2):
        assert r.add(v)
    assert not r.add(6)
    assert r.ranges() == [(1, 3), (5, 10)] and len(r) == 9 and 4 not in r and 10 in r
    assert r.add(4) and r.ranges() == [(1, 10)]


def test_simulator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rate"):
        ExchangeSimulator(rate=-1)
    with pytest.raises(ValueError, match="symbols"):
        ExchangeSimulator(symbols=0)


async def test_cli_runs_standalone_and_reports_its_ports(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hftdb.simulator", "--port", "0", "--rate", "50", "--symbols", "3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        ports = {}
        async with asyncio.timeout(20):
            while len(ports) < 4:
                line = (await proc.stdout.readline()).decode()
                assert line, "simulator exited early"
                name, url = line.split()[:2]
                ports[name] = int(url.rsplit(":", 1)[1])
        assert set(ports) == {"binance_spot", "binance_usdm", "bybit", "okx"}
        async with aiohttp.ClientSession() as http:
            status, body, _ = await get_json(http, f"http://127.0.0.1:{ports['okx']}/api/v5/public/time")
        assert status == 200 and body["code"] == "0"
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            await proc.wait()
    assert proc.returncode == 0

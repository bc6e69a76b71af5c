"""Exchange parsers against real payloads: every fixture parses to exactly the values its text holds.

Expected values are computed from the fixture text itself (``float(raw_string)``, ``Decimal(raw_string)``,
``ms * 1000``), never retyped, so a test cannot agree with a parser by sharing its mistake. Payloads that the
fixtures lack (other envelopes, array forms, error frames) are built from the official documentation's examples.
"""

from __future__ import annotations

import json
import logging
import re
from decimal import Decimal

import pytest

from hftdb.errors import FrameError
from hftdb.exchanges.parse_binance import BinanceParser
from hftdb.exchanges.parse_bybit import BybitParser
from hftdb.exchanges.parse_okx import OkxParser
from hftdb.exchanges.parsing import FloatCache, Parsed, ms_to_us, to_decimal, to_float, to_int, to_us
from hftdb.models import BookTicker, ExchangeName
from hftdb.rejects import Rejects

SPOT = ExchangeName.BINANCE_SPOT
USDM = ExchangeName.BINANCE_USDM
RECV = 1_700_000_000_123_456


def lines(fixtures_dir, name):
    return (fixtures_dir / name).read_text().splitlines()


def only_book_ticker(parsed: Parsed):
    assert parsed.funding_rates == [] and parsed.balances == []
    assert len(parsed.book_tickers) == 1
    return parsed.book_tickers[0]


def assert_quote(bt, venue, symbol, bid, bid_qty, ask, ask_qty, exchange_ts, update_id):
    """``bid``... are the raw strings of the payload: the parsed value must be exactly ``float`` of them."""
    assert (bt.exchange, bt.symbol) == (venue.value, symbol)
    assert (bt.bid_price, bt.bid_qty, bt.ask_price, bt.ask_qty) == tuple(map(float, (bid, bid_qty, ask, ask_qty)))
    assert (bt.recv_ts, bt.exchange_ts, bt.update_id, bt.symbol_id) == (RECV, exchange_ts, update_id, None)


def reason_of(parser, raw) -> str:
    with pytest.raises(FrameError) as info:
        parser.parse(raw, RECV)
    return info.value.reason


# --- shared helpers ---------------------------------------------------------------------------------------------


def test_to_float_keeps_the_text_value_and_treats_empty_as_missing():
    assert to_float("25.35190000") == float("25.35190000")
    assert to_float("") is None and to_float(None) is None
    assert to_float(7) == 7.0 and to_float(0.5) == 0.5
    assert to_float("-1.5") == -1.5
    assert str(to_float("nan")) == "nan" and to_float("inf") == float("inf")
    for bad in ("abc", "1.2.3", True):
        with pytest.raises(FrameError) as info:
            to_float(bad)
        assert info.value.reason == "bad_number"


def test_to_decimal_is_exact():
    assert to_decimal("4723846.89208129") == Decimal("4723846.89208129")
    assert str(to_decimal("0.0000000051")) == str(Decimal("0.0000000051"))
    assert to_decimal(0.1) == Decimal("0.1")
    assert to_decimal(3) == Decimal(3)
    assert to_decimal("") is None
    with pytest.raises(FrameError) as info:
        to_decimal("1,5")
    assert info.value.reason == "bad_number"


def test_time_helpers():
    assert ms_to_us("1652459223003") == 1652459223003000
    assert ms_to_us(1652459223003) == 1652459223003000
    assert ms_to_us("") is None and ms_to_us(None) is None
    assert to_us(1626992741017) == 1626992741017000  # ms
    assert to_us(1626992741017123) == 1626992741017123  # µs
    assert to_us(1626992741017123456) == 1626992741017123  # ns
    assert to_int("-12") == -12
    for bad in ("1_000", " 12", "12.0", "٣", "-"):
        with pytest.raises(FrameError) as info:
            to_int(bad)
        assert info.value.reason == "bad_number"


def test_float_cache_returns_float_of_the_text_and_stays_bounded():
    cache = FloatCache(limit=3)
    texts = ["0.35210000", "672.00000000", "0.00000637", "7.6110", "25.35190000"]
    for text in texts * 2:
        assert cache[text] == float(text)
        assert len(cache) <= 3
    with pytest.raises(ValueError):
        cache["not a number"]
    with pytest.raises(ValueError):
        FloatCache(limit=0)


# --- Rejects ----------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rejects_counts_by_reason_and_rate_limits_its_log(caplog):
    clock = FakeClock()
    rejects = Rejects("binance_spot", interval=10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="hftdb.exchanges.parsing")

    rejects.add("bad_number", "first")
    for _ in range(4):
        rejects.add("bad_number", "again")
    rejects.add("invalid_json", "other reason logs at once")
    assert [r.getMessage() for r in caplog.records] == [
        "binance_spot: rejected frame (bad_number): first",
        "binance_spot: rejected frame (invalid_json): other reason logs at once",
    ]
    assert rejects.counts == {"bad_number": 5, "invalid_json": 1}
    assert rejects.total == 6

    caplog.clear()
    clock.now += 9.9
    rejects.add("bad_number", "still inside the interval")
    assert caplog.records == []
    clock.now += 0.1
    rejects.add("bad_number", "after the interval")
    assert [r.getMessage() for r in caplog.records] == [
        "binance_spot: rejected frame (bad_number): after the interval [5 more suppressed since the last report]"
    ]
    assert rejects.total == 8

    caplog.clear()
    rejects.add("bad_number", "x")
    rejects.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "binance_spot: rejected 1 more frame(s) (bad_number) since the last report"
    ]
    rejects.flush()
    assert len(caplog.records) == 1


def test_rejects_add_error_truncates_long_details(caplog):
    rejects = Rejects(clock=FakeClock(), detail_limit=10)
    caplog.set_level(logging.WARNING, logger="hftdb.exchanges.parsing")
    rejects.add_error(FrameError("x" * 50, reason="bad_envelope"))
    assert caplog.records[0].getMessage() == "rejected frame (bad_envelope): " + "x" * 10 + "..."
    assert rejects.counts == {"bad_envelope": 1}
    with pytest.raises(ValueError, match="interval"):
        Rejects(interval=0)


# --- Binance ----------------------------------------------------------------------------------------------------


def test_parsers_validate_their_venue():
    with pytest.raises(ValueError, match="venue"):
        BinanceParser(ExchangeName.OKX_SPOT)
    with pytest.raises(ValueError, match="venue"):
        BybitParser(ExchangeName.BINANCE_SPOT)
    with pytest.raises(ValueError, match="venue"):
        OkxParser(ExchangeName.BYBIT_SPOT)


def test_binance_spot_raw_book_ticker(fixtures_dir):
    raw = (fixtures_dir / "binance_spot_bookTicker_doc.json").read_bytes()
    d = json.loads(raw)
    bt = only_book_ticker(BinanceParser(SPOT).parse(raw, RECV))
    # Spot bookTicker has no event time.
    assert_quote(bt, SPOT, d["s"], d["b"], d["B"], d["a"], d["A"], None, d["u"])
    assert bt.bid_price == float("25.35190000")


def test_binance_usdm_raw_book_ticker_uses_event_time(fixtures_dir):
    raw = (fixtures_dir / "binance_usdm_bookTicker_doc.json").read_text()  # str frames parse too
    d = json.loads(raw)
    bt = only_book_ticker(BinanceParser(USDM).parse(raw, RECV))
    assert_quote(bt, USDM, d["s"], d["b"], d["B"], d["a"], d["A"], d["E"] * 1000, d["u"])


@pytest.mark.parametrize(
    ("venue", "name"),
    [
        (SPOT, "binance_spot_bookTicker_combined_recorded.jsonl"),
        (USDM, "binance_usdm_bookTicker_combined_recorded.jsonl"),
    ],
)
def test_binance_combined_book_ticker_every_line(fixtures_dir, venue, name):
    parser = BinanceParser(venue)
    frames = lines(fixtures_dir, name)
    assert frames
    for line in frames:
        env = json.loads(line)
        d = env["data"]
        assert env["stream"] == d["s"].lower() + "@bookTicker"
        bt = only_book_ticker(parser.parse(line.encode(), RECV))
        exchange_ts = d["E"] * 1000 if "E" in d else None
        assert_quote(bt, venue, d["s"], d["b"], d["B"], d["a"], d["A"], exchange_ts, d["u"])
        # The raw stream carries the same event without the envelope.
        assert parser.parse(json.dumps(d), RECV) == Parsed([bt])


def test_msgspec_number_decoding_equals_float_of_the_text(fixtures_dir):
    # The Binance hot path lets msgspec turn numeric strings into floats (strict=False). That must be the very
    # float(text) the rest of hftdb computes, for every price and size the recorded fixtures hold.
    import msgspec

    decode = msgspec.json.Decoder(float, strict=False).decode
    values = set()
    for path in fixtures_dir.iterdir():
        text = path.read_text()
        values.update(re.findall(r'"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"', text))
    assert len(values) > 200
    # And prices of every magnitude and length, the hard cases for a float parser included.
    import random

    rng = random.Random(5)
    for _ in range(20_000):
        decimals = rng.randrange(0, 18)
        values.add(f"{rng.uniform(0, 10 ** rng.randrange(-6, 12)):.{decimals}f}")
    values.update(("0.1", "0.3", "9007199254740993", "1.7976931348623157e308", "5e-324", "2.2250738585072011e-308"))
    for value in values:
        assert decode(json.dumps(value)) == float(value), value


def test_binance_book_ticker_hot_path_matches_the_general_parse(fixtures_dir):
    ids = {"BTCUSDT": 7}
    parser = BinanceParser(USDM, symbol_ids=lambda exchange, symbol: ids.get(symbol) if exchange == USDM.value else None)
    for line in lines(fixtures_dir, "binance_usdm_bookTicker_combined_recorded.jsonl"):
        fast = parser.book_ticker(line.encode(), RECV)
        assert fast is not None and type(fast) is BookTicker
        slow = parser.parse(json.dumps(json.loads(line)["data"]), RECV)  # the raw form takes the general path
        assert slow == Parsed([fast])
        assert fast.symbol_id == ids.get(fast.symbol)
    mark = (fixtures_dir / "binance_usdm_markPrice_doc.json").read_bytes()
    assert parser.book_ticker(mark, RECV) is None


def test_binance_event_time_in_microseconds():
    # Streams opened with timeUnit=MICROSECOND send µs; the parser tells by magnitude.
    frame = (
        b'{"e":"bookTicker","u":1,"E":1568014460893123,"T":1568014460891000,"s":"X",'
        b'"b":"1","B":"2","a":"3","A":"4"}'
    )
    assert only_book_ticker(BinanceParser(USDM).parse(frame, RECV)).exchange_ts == 1568014460893123


def test_binance_mark_price_raw_combined_and_array(fixtures_dir):
    raw = (fixtures_dir / "binance_usdm_markPrice_doc.json").read_bytes()
    d = json.loads(raw)
    parser = BinanceParser(USDM)
    parsed = parser.parse(raw, RECV)
    assert parsed.book_tickers == [] and parsed.balances == [] and parsed.control is None
    (fr,) = parsed.funding_rates
    assert (fr.exchange, fr.symbol, fr.recv_ts, fr.symbol_id) == (USDM.value, d["s"], RECV, None)
    assert fr.rate == float(d["r"])
    assert (fr.mark_price, fr.index_price) == (float(d["p"]), float(d["i"]))
    assert (fr.exchange_ts, fr.next_funding_ts) == (d["E"] * 1000, d["T"] * 1000)

    combined = json.dumps({"stream": "btcusdt@markPrice@1s", "data": d})
    assert parser.parse(combined, RECV) == parsed

    # !markPrice@arr: an array of events, raw or in the envelope. A delivery contract has r="" and T=0: no row.
    delivery = dict(d, s="BTCUSDT_240329", r="", T=0)
    other = dict(d, s="ETHUSDT", r="-0.00010000")
    for frame in ([d, delivery, other], {"stream": "!markPrice@arr@1s", "data": [d, delivery, other]}):
        rates = parser.parse(json.dumps(frame).encode(), RECV).funding_rates
        assert [(r.symbol, r.rate) for r in rates] == [(d["s"], float(d["r"])), ("ETHUSDT", float("-0.00010000"))]
    assert parser.parse(json.dumps([delivery]), RECV) == Parsed()


def test_binance_outbound_account_position_in_every_envelope(fixtures_dir):
    raw = (fixtures_dir / "binance_spot_outboundAccountPosition_doc.json").read_bytes()
    event = json.loads(raw)["event"]
    parser = BinanceParser(SPOT, account="main")
    parsed = parser.parse(raw, RECV)
    assert parsed.book_tickers == [] and parsed.funding_rates == []
    assert len(parsed.balances) == len(event["B"])
    for balance, b in zip(parsed.balances, event["B"], strict=True):
        assert (balance.exchange, balance.asset, balance.account) == (SPOT.value, b["a"], "main")
        assert (balance.free, balance.locked) == (Decimal(b["f"]), Decimal(b["l"]))
        assert str(balance.free) == b["f"]
        assert (balance.recv_ts, balance.exchange_ts) == (RECV, event["E"] * 1000)
    assert parser.parse(json.dumps(event), RECV) == parsed
    assert parser.parse(json.dumps({"stream": "listenkey", "data": event}), RECV) == parsed


def test_binance_control_and_other_events():
    parser = BinanceParser(SPOT)
    assert parser.parse(b'{"result":null,"id":1}', RECV) == Parsed(control="subscribed", detail="1")
    assert parser.parse(b'{"result":["btcusdt@bookTicker"],"id":"q"}', RECV).control == "subscribed"
    assert parser.parse(b'{"code":2,"msg":"Invalid request: unknown variant","id":3}', RECV) == Parsed(
        control="error", detail="2: Invalid request: unknown variant"
    )
    ws_api_error = b'{"id":"a","status":400,"error":{"code":-1121,"msg":"Invalid symbol."}}'
    assert parser.parse(ws_api_error, RECV) == Parsed(control="error", detail="-1121: Invalid symbol.")
    # executionReport's "i" (an order id) is an int where markPriceUpdate's is a string: still recognised.
    execution = b'{"e":"executionReport","E":1,"s":"ETHBTC","i":4293153,"p":"0.1","S":"BUY"}'
    assert parser.parse(execution, RECV) == Parsed(control="ignored", detail="executionReport")
    wrapped = b'{"subscriptionId":0,"event":{"e":"balanceUpdate","E":1,"a":"BTC","d":"100.0","T":2}}'
    assert parser.parse(wrapped, RECV) == Parsed(control="ignored", detail="balanceUpdate")
    assert parser.parse(b'{"e":"listenKeyExpired","E":1,"listenKey":"k"}', RECV) == Parsed(
        control="reconnect", detail="listenKeyExpired"
    )
    assert parser.parse(b"[]", RECV) == Parsed()


def test_binance_malformed_frames():
    parser = BinanceParser(USDM)
    good = {"e": "bookTicker", "u": 1, "E": 1700000000002, "T": 1700000000001, "s": "BTCUSDT", "b": "1.5", "B": "2",
            "a": "1.6", "A": "3"}
    assert reason_of(parser, json.dumps(good)[:-5]) == "invalid_json"
    assert reason_of(parser, b"") == "invalid_json"
    # The combined bookTicker hot path decodes numbers leniently: a JSON number, or an id sent as a string,
    # is taken at the same value as its string form (elsewhere the type is checked).
    lenient = only_book_ticker(parser.parse(json.dumps({"stream": "x", "data": dict(good, b=1.5, u="12")}), RECV))
    assert (lenient.bid_price, lenient.update_id) == (1.5, 12)
    assert reason_of(parser, json.dumps(dict(good, b=1.5))) == "bad_type"
    assert reason_of(parser, json.dumps(dict(good, u="12"))) == "bad_type"
    assert reason_of(parser, json.dumps(dict(good, b="1.5x"))) == "bad_number"
    assert reason_of(parser, json.dumps(dict(good, A=""))) == "missing_field"
    assert reason_of(parser, json.dumps({k: v for k, v in good.items() if k != "s"})) == "missing_field"
    assert reason_of(parser, json.dumps({"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 5, "p": "1"})) == (
        "unknown_channel"
    )
    depth = {"stream": "btcusdt@depth", "data": {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "b": [["1", "2"]]}}
    assert reason_of(parser, json.dumps(depth)) == "unknown_channel"
    assert reason_of(parser, b'{"foo":1}') == "bad_envelope"
    assert reason_of(parser, b'"pong"') == "bad_envelope"
    assert reason_of(parser, b'{"stream":"x","data":{}}') == "bad_envelope"
    position = {"e": "outboundAccountPosition", "E": 1, "u": 1, "B": [{"a": "BTC", "f": "1"}]}
    assert reason_of(parser, json.dumps(position)) == "missing_field"


def test_binance_exchange_info(fixtures_dir):
    for venue, name in [
        (SPOT, "binance_spot_exchangeInfo_recorded.json"),
        (USDM, "binance_usdm_exchangeInfo_recorded.json"),
    ]:
        raw = (fixtures_dir / name).read_bytes()
        info = json.loads(raw)
        symbols = BinanceParser(venue).parse_symbols(raw, 7, RECV)
        assert len(symbols) == len(info["symbols"]) > 0
        for sym, s in zip(symbols, info["symbols"], strict=True):
            filters = {f["filterType"]: f for f in s["filters"]}
            assert (sym.exchange_id, sym.symbol) == (7, s["symbol"])
            assert (sym.base, sym.quote) == (s["baseAsset"], s["quoteAsset"])
            assert sym.tick_size == Decimal(filters["PRICE_FILTER"]["tickSize"])
            assert str(sym.tick_size) == str(Decimal(filters["PRICE_FILTER"]["tickSize"]))
            assert sym.lot_size == Decimal(filters["LOT_SIZE"]["stepSize"])
            assert (sym.status, sym.last_synced, sym.contract_size, sym.id) == ("trading", RECV, None, None)
            assert sym.kind == ("spot" if venue is SPOT else "perpetual")


def test_binance_exchange_info_status_and_contract_mapping():
    info = {
        "symbols": [
            {"symbol": "A", "status": "BREAK", "contractType": "CURRENT_QUARTER", "filters": []},
            {"symbol": "B", "status": "HALT", "contractType": "PERPETUAL", "filters": []},
            {"symbol": "C", "status": "SETTLING", "contractType": "PERPETUAL_DELIVERING", "filters": []},
            {"symbol": "D", "status": "DELIVERED", "contractType": "NEXT_QUARTER", "filters": []},
            {"symbol": "E", "status": "NEW_STATUS", "contractType": "", "filters": []},
        ]
    }
    symbols = BinanceParser(USDM).parse_symbols(json.dumps(info).encode(), 1, RECV)
    assert [(s.status, s.kind) for s in symbols] == [
        ("halted", "future"),
        ("halted", "perpetual"),
        ("halted", "perpetual"),
        ("delisted", "future"),
        ("unknown", "unknown"),
    ]
    assert (symbols[0].tick_size, symbols[0].lot_size) == (None, None)


def test_binance_rest_balances(fixtures_dir):
    raw = (fixtures_dir / "binance_spot_account_doc.json").read_bytes()
    account = json.loads(raw)
    balances = BinanceParser(SPOT).parse_balances(raw, RECV, account="sub1")
    assert [(b.asset, b.free, b.locked) for b in balances] == [
        (x["asset"], Decimal(x["free"]), Decimal(x["locked"])) for x in account["balances"]
    ]
    assert {(b.exchange, b.account, b.recv_ts, b.exchange_ts) for b in balances} == {
        (SPOT.value, "sub1", RECV, account["updateTime"] * 1000)
    }

    # GET /fapi/v2/balance, the documentation's example: free is availableBalance, locked the rest.
    futures = [
        {
            "accountAlias": "SgsR",
            "asset": "USDT",
            "balance": "122607.35137903",
            "crossWalletBalance": "23.72469206",
            "crossUnPnl": "0.00000000",
            "availableBalance": "23.72469206",
            "maxWithdrawAmount": "23.72469206",
            "marginAvailable": True,
            "updateTime": 1617939110373,
        },
        {"asset": "BNB", "balance": "1.0", "availableBalance": "1.5", "updateTime": 0},
    ]
    usdt, bnb = BinanceParser(USDM).parse_balances(json.dumps(futures).encode(), RECV)
    assert (usdt.asset, usdt.free, usdt.locked) == (
        "USDT",
        Decimal("23.72469206"),
        Decimal("122607.35137903") - Decimal("23.72469206"),
    )
    assert usdt.exchange_ts == 1617939110373000
    # Unrealised profit can make the available amount exceed the wallet balance: nothing is locked then.
    assert (bnb.free, bnb.locked, bnb.exchange_ts) == (Decimal("1.5"), Decimal(0), None)

    with pytest.raises(FrameError) as info:
        BinanceParser(SPOT).parse_balances(b'{"code":-2015,"msg":"Invalid API-key"}', RECV)
    assert info.value.reason == "exchange_error"


def test_binance_rest_funding(fixtures_dir):
    raw = (fixtures_dir / "binance_usdm_premiumIndex_doc.json").read_bytes()
    p = json.loads(raw)
    parser = BinanceParser(USDM)
    (fr,) = parser.parse_funding(raw, RECV)
    assert (fr.symbol, fr.rate, fr.mark_price, fr.index_price) == (
        p["symbol"],
        float(p["lastFundingRate"]),
        float(p["markPrice"]),
        float(p["indexPrice"]),
    )
    assert (fr.exchange_ts, fr.next_funding_ts, fr.recv_ts) == (p["time"] * 1000, p["nextFundingTime"] * 1000, RECV)
    delivery = dict(p, symbol="BTCUSDT_240329", lastFundingRate="", nextFundingTime=0)
    assert parser.parse_funding(json.dumps([p, delivery]).encode(), RECV) == [fr]

    raw = (fixtures_dir / "binance_usdm_fundingRate_doc.json").read_bytes()
    history = json.loads(raw)
    rates = parser.parse_funding(raw, RECV)
    assert [(r.symbol, r.rate, r.exchange_ts, r.next_funding_ts) for r in rates] == [
        (h["symbol"], float(h["fundingRate"]), h["fundingTime"] * 1000, None) for h in history
    ]


# --- Bybit ------------------------------------------------------------------------------------------------------


def test_bybit_orderbook_snapshot_and_deltas(fixtures_dir):
    parser = BybitParser(ExchangeName.BYBIT_LINEAR)
    frames = lines(fixtures_dir, "bybit_linear_orderbook1_recorded.jsonl")
    msgs = [json.loads(line) for line in frames]
    results = [parser.parse(line, RECV) for line in frames]
    quotes = [only_book_ticker(r) for r in results]
    for msg, result, bt in zip(msgs, results, quotes, strict=True):
        assert (bt.exchange, bt.symbol, bt.recv_ts) == ("bybit_linear", msg["data"]["s"], RECV)
        assert (bt.exchange_ts, bt.update_id) == (msg["ts"] * 1000, msg["data"]["u"])
        assert result.control == ("snapshot" if msg["type"] == "snapshot" else None)

    snap, delta = msgs[0]["data"], msgs[1]["data"]
    assert (quotes[0].bid_price, quotes[0].bid_qty) == tuple(map(float, snap["b"][0]))
    assert (quotes[0].ask_price, quotes[0].ask_qty) == tuple(map(float, snap["a"][0]))
    # The first delta changes the bid only: the ask is still the snapshot's.
    assert delta["a"] == []
    assert (quotes[1].bid_price, quotes[1].bid_qty) == tuple(map(float, delta["b"][0]))
    assert (quotes[1].ask_price, quotes[1].ask_qty) == tuple(map(float, snap["a"][0]))

    # orderbook.50 of another symbol keeps its own book.
    snap50, delta50 = msgs[2]["data"], msgs[3]["data"]
    assert (quotes[2].bid_price, quotes[2].ask_price) == (float(snap50["b"][0][0]), float(snap50["a"][0][0]))
    assert (quotes[3].bid_qty, quotes[3].ask_qty) == (float(delta50["b"][0][1]), float(delta50["a"][0][1]))

    # A level-1 delta removes a level (size "0") and brings the new top in the same message.
    last = msgs[4]["data"]
    new_bid = [lvl for lvl in last["b"] if float(lvl[1]) != 0]
    new_ask = [lvl for lvl in last["a"] if float(lvl[1]) != 0]
    assert (quotes[4].bid_price, quotes[4].bid_qty) == tuple(map(float, new_bid[-1]))
    assert (quotes[4].ask_price, quotes[4].ask_qty) == tuple(map(float, new_ask[-1]))


def book_frame(topic, kind, ts, u, bids, asks):
    symbol = topic.rsplit(".", 1)[1]
    return json.dumps({"topic": topic, "type": kind, "ts": ts, "data": {"s": symbol, "b": bids, "a": asks, "u": u}})


def _outcome(parse, raw):
    try:
        return parse(raw, RECV)
    except FrameError as exc:
        return exc.reason


def test_bybit_orderbook1_hot_path_matches_the_general_parse(fixtures_dir):
    """Twin parsers, one taking every frame through the general decode and one through the hot path first (as the
    intake does): the same rows, controls, rejects and books after every frame, over the recorded fixture and a
    few thousand generated level-1 frames (removals, stale removals, one-sided books, malformed levels, snapshots,
    deltas with no snapshot, another depth's topic)."""
    import random

    rng = random.Random(11)
    frames: list[str | bytes] = list(lines(fixtures_dir, "bybit_linear_orderbook1_recorded.jsonl"))
    prices = ["100.4", "100.5", "100.6", "100.7", "0.000012345", "65432.1", "3.0E-5", "28552.10"]
    sizes = ["0", "0", "1.25", "0.001", "7", "25.433"]
    bad_levels = [["1.2.3", "1"], ["100.5"], ["100.5", "x"], ["", "1"]]
    u = 100
    for i in range(4000):
        u += 1
        topic = rng.choice(["orderbook.1.ETHUSDT", "orderbook.1.ETHUSDT", "orderbook.1.SOLUSDT", "orderbook.50.ETHUSDT"])
        kind = "snapshot" if rng.random() < 0.02 else "delta"

        def side():
            out = [[rng.choice(prices), rng.choice(sizes)] for _ in range(rng.randrange(0, 3))]
            if rng.random() < 0.01:
                out.append(rng.choice(bad_levels))
            return out

        # Compact, as Bybit sends it (the hot path only tries frames that start with an orderbook.1 topic).
        raw = json.dumps({"topic": topic, "type": kind, "ts": 1_700_000_000_000 + i,
                          "data": {"s": topic.rsplit(".", 1)[1], "b": side(), "a": side(), "u": u}},
                         separators=(",", ":"))
        frames.append(raw.encode() if i % 2 else raw)
    general = BybitParser(ExchangeName.BYBIT_LINEAR)
    fast = BybitParser(ExchangeName.BYBIT_LINEAR)
    hot = 0
    outcomes = set()
    for raw in frames:
        expected = _outcome(general.parse_general, raw)
        row = fast.book_ticker(raw, RECV)
        if row is not None:
            hot += 1
            got = Parsed([row])
        else:
            got = _outcome(fast.parse_general, raw)
        assert got == expected, raw
        outcomes.add(expected if isinstance(expected, str) else ("rows" if expected.book_tickers else "none"))
        assert {t: (b.bid, b.ask) for t, b in fast._books.items()} == {t: (b.bid, b.ask) for t, b in general._books.items()}
    assert hot > 1000
    assert outcomes >= {"rows", "none", "no_snapshot", "bad_number", "missing_field"}, outcomes
    # parse() is the hot path then the general decode.
    assert BybitParser(ExchangeName.BYBIT_LINEAR).parse(frames[0], RECV) == general.__class__(
        ExchangeName.BYBIT_LINEAR).parse_general(frames[0], RECV)


def test_bybit_rows_carry_their_symbol_id(fixtures_dir):
    ids = {"BTCUSDT": 7}
    asked = []

    def resolve(exchange, symbol):
        asked.append((exchange, symbol))
        return ids.get(symbol)

    parser = BybitParser(ExchangeName.BYBIT_LINEAR, symbol_ids=resolve)
    quotes = [only_book_ticker(parser.parse(line, RECV))
              for line in lines(fixtures_dir, "bybit_linear_orderbook1_recorded.jsonl")]
    assert [(q.symbol, q.symbol_id) for q in quotes] == [
        ("BTCUSDT", 7), ("BTCUSDT", 7), ("BTCPERP", None), ("BTCPERP", None), ("BTCUSDT", 7)]
    hot = parser.book_ticker(json.dumps(
        {"topic": "orderbook.1.BTCUSDT", "type": "delta", "ts": 1680673821137, "data": {"s": "BTCUSDT", "b": [["1", "1"]],
                                                                              "a": [], "u": 7003307}},
        separators=(",", ":")), RECV)
    assert hot is not None and hot.symbol_id == 7
    assert asked.count(("bybit_linear", "BTCUSDT")) == 1  # remembered once known; unknown ones asked again
    ticker = {"topic": "tickers.BTCUSDT", "type": "snapshot", "ts": 1, "data": {
        "symbol": "BTCUSDT", "bid1Price": "1", "bid1Size": "1", "ask1Price": "2", "ask1Size": "1"}}
    assert only_book_ticker(parser.parse(json.dumps(ticker), RECV)).symbol_id == 7
    assert only_book_ticker(BybitParser(ExchangeName.BYBIT_LINEAR).parse(json.dumps(ticker), RECV)).symbol_id is None


def test_bybit_level1_removal_without_replacement_and_stale_removal():
    parser = BybitParser(ExchangeName.BYBIT_SPOT)
    topic = "orderbook.1.ETHUSDT"
    only_book_ticker(parser.parse(book_frame(topic, "snapshot", 1, 1, [["100", "1"]], [["101", "2"]]), RECV))
    # Removing a level that is not the held top changes nothing.
    bt = only_book_ticker(parser.parse(book_frame(topic, "delta", 2, 2, [["99", "0"]], []), RECV))
    assert (bt.bid_price, bt.ask_price, bt.exchange) == (100.0, 101.0, "bybit_spot")
    # The bid side empties: no quote until it comes back.
    assert parser.parse(book_frame(topic, "delta", 3, 3, [["100", "0"]], []), RECV) == Parsed()
    bt = only_book_ticker(parser.parse(book_frame(topic, "delta", 4, 4, [["99.5", "3"]], []), RECV))
    assert (bt.bid_price, bt.bid_qty, bt.ask_price, bt.update_id) == (99.5, 3.0, 101.0, 4)
    # A snapshot starts again from scratch (Bybit restarts u at 1 after a service restart).
    result = parser.parse(book_frame(topic, "snapshot", 5, 1, [["98", "1"]], []), RECV)
    assert result == Parsed(control="snapshot")


def test_bybit_deep_book_reveals_the_next_level():
    parser = BybitParser(ExchangeName.BYBIT_LINEAR)
    topic = "orderbook.50.BTCUSDT"
    snapshot = book_frame(topic, "snapshot", 1, 10, [["100", "1"], ["99", "2"]], [["101", "3"], ["102", "4"]])
    only_book_ticker(parser.parse(snapshot, RECV))
    bt = only_book_ticker(parser.parse(book_frame(topic, "delta", 2, 11, [["100", "0"]], [["100.5", "7"]]), RECV))
    assert (bt.bid_price, bt.bid_qty, bt.ask_price, bt.ask_qty) == (99.0, 2.0, 100.5, 7.0)


def test_bybit_orderbook_errors():
    parser = BybitParser(ExchangeName.BYBIT_LINEAR)
    topic = "orderbook.1.BTCUSDT"
    assert reason_of(parser, book_frame(topic, "delta", 1, 2, [["1", "1"]], [])) == "no_snapshot"
    parser.parse(book_frame(topic, "snapshot", 1, 1, [["1", "1"]], [["2", "1"]]), RECV)
    assert reason_of(parser, book_frame(topic, "delta", 2, 2, [["x", "1"]], [])) == "bad_number"
    # A bad frame drops the book: nothing is quoted from a half-applied delta.
    assert reason_of(parser, book_frame(topic, "delta", 3, 3, [["1", "2"]], [])) == "no_snapshot"
    parser.parse(book_frame(topic, "snapshot", 4, 4, [["1", "1"]], [["2", "1"]]), RECV)
    parser.reset()
    assert reason_of(parser, book_frame(topic, "delta", 5, 5, [["1", "2"]], [])) == "no_snapshot"
    parser.parse(book_frame(topic, "snapshot", 6, 6, [["1", "1"]], [["2", "1"]]), RECV)
    assert reason_of(parser, book_frame(topic, "delta", 7, 7, [["1"]], [])) == "missing_field"
    assert reason_of(parser, book_frame(topic, "kind", 8, 8, [], [])) == "bad_envelope"
    bad_type = {"topic": topic, "type": "snapshot", "ts": 1, "data": {"s": "BTCUSDT", "b": "1", "a": [], "u": 1}}
    assert reason_of(parser, json.dumps(bad_type)) == "bad_type"
    no_symbol = {"topic": topic, "type": "snapshot", "ts": 1, "data": {"b": [], "a": [], "u": 1}}
    assert reason_of(parser, json.dumps(no_symbol)) == "missing_field"


def test_bybit_tickers_snapshot_then_merged_deltas(fixtures_dir):
    raw = (fixtures_dir / "bybit_linear_tickers_snapshot_doc.json").read_bytes()
    msg = json.loads(raw)
    d = msg["data"]
    parser = BybitParser(ExchangeName.BYBIT_LINEAR)
    parsed = parser.parse(raw, RECV)
    assert parsed.control == "snapshot"
    (bt,) = parsed.book_tickers
    assert_quote(
        bt, ExchangeName.BYBIT_LINEAR, d["symbol"], d["bid1Price"], d["bid1Size"], d["ask1Price"], d["ask1Size"],
        msg["ts"] * 1000, None,
    )  # fmt: skip
    (fr,) = parsed.funding_rates
    assert (fr.symbol, fr.rate, fr.mark_price, fr.index_price) == (
        d["symbol"],
        float(d["fundingRate"]),
        float(d["markPrice"]),
        float(d["indexPrice"]),
    )
    assert (fr.exchange_ts, fr.next_funding_ts) == (msg["ts"] * 1000, int(d["nextFundingTime"]) * 1000)

    def delta(ts, **fields):
        return json.dumps({"topic": "tickers.BTCUSDT", "type": "delta", "data": {"symbol": "BTCUSDT", **fields},
                           "cs": 1, "ts": ts})  # fmt: skip

    # Only the bid moved: a full quote with the snapshot's size and ask, and no funding row.
    moved = parser.parse(delta(msg["ts"] + 100, bid1Price="66666.50"), RECV)
    assert moved.funding_rates == [] and moved.control is None
    (bt2,) = moved.book_tickers
    assert (bt2.bid_price, bt2.bid_qty, bt2.ask_price, bt2.ask_qty) == (
        float("66666.50"),
        float(d["bid1Size"]),
        float(d["ask1Price"]),
        float(d["ask1Size"]),
    )
    assert bt2.exchange_ts == (msg["ts"] + 100) * 1000
    # Only the mark price moved: a funding row with the snapshot's rate and times, and no quote.
    marked = parser.parse(delta(msg["ts"] + 200, markPrice="66667.00"), RECV)
    (fr2,) = marked.funding_rates
    assert marked.book_tickers == []
    assert (fr2.rate, fr2.mark_price, fr2.index_price, fr2.next_funding_ts) == (
        float(d["fundingRate"]),
        float("66667.00"),
        float(d["indexPrice"]),
        int(d["nextFundingTime"]) * 1000,
    )
    # Fields hftdb does not store: nothing to emit.
    assert parser.parse(delta(msg["ts"] + 300, lastPrice="1", volume24h="2"), RECV) == Parsed()
    # "" means no value: no ask now, so no quote, until one comes back.
    assert parser.parse(delta(msg["ts"] + 400, ask1Price="", ask1Size=""), RECV).book_tickers == []
    (bt3,) = parser.parse(delta(msg["ts"] + 500, ask1Price="66668.10", ask1Size="1.5"), RECV).book_tickers
    assert (bt3.bid_price, bt3.ask_price, bt3.ask_qty) == (float("66666.50"), float("66668.10"), 1.5)
    # A dated future has no funding: fundingRate "" yields no funding row.
    assert parser.parse(delta(msg["ts"] + 600, fundingRate="", nextFundingTime="0"), RECV) == Parsed()
    assert reason_of(parser, delta(1, bid1Price="12..5")) == "bad_number"
    # The bad delta dropped the merged state: a later delta cannot complete a quote on its own.
    assert parser.parse(delta(2, bid1Price="1"), RECV) == Parsed()


def test_bybit_spot_ticker_has_no_quote():
    spot = {"topic": "tickers.BTCUSDT", "ts": 1672305380595, "type": "snapshot", "cs": 496622841,
            "data": {"symbol": "BTCUSDT", "lastPrice": "16363.78", "price24hPcnt": "-0.0049"}}  # fmt: skip
    assert BybitParser(ExchangeName.BYBIT_SPOT).parse(json.dumps(spot), RECV) == Parsed(control="snapshot")


def test_bybit_wallet_topic_and_rest(fixtures_dir):
    raw = (fixtures_dir / "bybit_wallet_doc.json").read_bytes()
    msg = json.loads(raw)
    coins = [c for account in msg["data"] for c in account["coin"]]
    parser = BybitParser(ExchangeName.BYBIT_LINEAR, account="uta")
    balances = parser.parse(raw, RECV).balances
    assert [(b.asset, b.free, b.locked) for b in balances] == [
        (c["coin"], Decimal(c["walletBalance"]) - Decimal(c["locked"]), Decimal(c["locked"])) for c in coins
    ]
    assert {(b.exchange, b.account, b.recv_ts, b.exchange_ts) for b in balances} == {
        ("bybit_linear", "uta", RECV, msg["creationTime"] * 1000)
    }

    rest = {"retCode": 0, "retMsg": "OK", "result": {"list": msg["data"]}, "retExtInfo": {}, "time": 1700034722999}
    from_rest = parser.parse_balances(json.dumps(rest).encode(), RECV)
    assert [(b.asset, b.free, b.locked, b.account) for b in from_rest] == [
        (b.asset, b.free, b.locked, "default") for b in balances
    ]
    assert from_rest[0].exchange_ts == rest["time"] * 1000

    # Classic spot accounts send free and locked themselves.
    classic = {"topic": "wallet", "creationTime": 1, "data": [{"accountType": "SPOT", "coin": [
        {"coin": "BTC", "walletBalance": "1.5", "free": "1.2", "locked": "0.3"}]}]}  # fmt: skip
    (b,) = parser.parse(json.dumps(classic), RECV).balances
    assert (b.free, b.locked) == (Decimal("1.2"), Decimal("0.3"))


def test_bybit_instruments_and_cursor(fixtures_dir):
    raw = (fixtures_dir / "bybit_linear_instruments_info_doc.json").read_bytes()
    page = json.loads(raw)
    parser = BybitParser(ExchangeName.BYBIT_LINEAR)
    symbols = parser.parse_symbols(raw, 3, RECV)
    assert len(symbols) == len(page["result"]["list"]) > 0
    for sym, s in zip(symbols, page["result"]["list"], strict=True):
        assert (sym.exchange_id, sym.symbol, sym.base, sym.quote) == (3, s["symbol"], s["baseCoin"], s["quoteCoin"])
        assert (sym.kind, sym.status, sym.last_synced) == ("perpetual", "trading", RECV)
        assert sym.tick_size == Decimal(s["priceFilter"]["tickSize"])
        assert sym.lot_size == Decimal(s["lotSizeFilter"]["qtyStep"])
    assert parser.next_cursor(raw) is None

    item = page["result"]["list"][0]
    variants = [
        dict(item, symbol="A", contractType="LinearFutures", status="PreLaunch"),
        dict(item, symbol="B", contractType="LinearPerpetual", status="Delivering"),
        dict(item, symbol="C", contractType="LinearFutures", status="Closed"),
    ]
    more = dict(page, result=dict(page["result"], list=variants, nextPageCursor="first%3D1"))
    payload = json.dumps(more).encode()
    assert [(s.kind, s.status) for s in parser.parse_symbols(payload, 3, RECV)] == [
        ("future", "halted"),
        ("perpetual", "halted"),
        ("future", "delisted"),
    ]
    assert parser.next_cursor(payload) == "first%3D1"

    spot_page = {"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": [
        {"symbol": "BTCUSDT", "baseCoin": "BTC", "quoteCoin": "USDT", "status": "Trading",
         "lotSizeFilter": {"basePrecision": "0.000001", "quotePrecision": "0.00000001"},
         "priceFilter": {"tickSize": "0.01"}}]}}  # fmt: skip
    (spot,) = BybitParser(ExchangeName.BYBIT_SPOT).parse_symbols(json.dumps(spot_page).encode(), 4, RECV)
    assert (spot.kind, spot.lot_size, spot.tick_size) == ("spot", Decimal("0.000001"), Decimal("0.01"))

    with pytest.raises(FrameError) as info:
        parser.parse_symbols(b'{"retCode":10001,"retMsg":"params error","result":{},"time":1}', 3, RECV)
    assert info.value.reason == "exchange_error"


def test_bybit_rest_funding():
    tickers = {"retCode": 0, "retMsg": "OK", "time": 1673272861686, "result": {"category": "linear", "list": [
        {"symbol": "BTCUSDT", "fundingRate": "-0.000212", "nextFundingTime": "1673280000000",
         "markPrice": "17217.33", "indexPrice": "17227.36", "bid1Price": "17215.50"},
        {"symbol": "BTC-29MAR24", "fundingRate": "", "nextFundingTime": "0", "markPrice": "1"}]}}  # fmt: skip
    (fr,) = BybitParser(ExchangeName.BYBIT_LINEAR).parse_funding(json.dumps(tickers).encode(), RECV)
    assert (fr.rate, fr.exchange_ts, fr.next_funding_ts, fr.mark_price, fr.index_price) == (
        float("-0.000212"),
        1673272861686000,
        1673280000000000,
        float("17217.33"),
        float("17227.36"),
    )
    history = {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": [
        {"symbol": "ETHPERP", "fundingRate": "0.0001", "fundingRateTimestamp": "1672041600000"}]}}  # fmt: skip
    (h,) = BybitParser(ExchangeName.BYBIT_LINEAR).parse_funding(json.dumps(history).encode(), RECV)
    assert (h.symbol, h.rate, h.exchange_ts, h.next_funding_ts) == ("ETHPERP", 0.0001, 1672041600000000, None)


def test_bybit_control_and_malformed_frames():
    parser = BybitParser(ExchangeName.BYBIT_LINEAR)
    public_pong = b'{"success":true,"ret_msg":"pong","conn_id":"0970e817","req_id":"","op":"ping"}'
    private_pong = b'{"req_id":"test","op":"pong","args":["1675418560633"],"conn_id":"cfcb4ocsvfriu23r3er0"}'
    assert parser.parse(public_pong, RECV) == Parsed(control="pong")
    assert parser.parse(private_pong, RECV) == Parsed(control="pong")
    ack = b'{"success":true,"ret_msg":"","conn_id":"a","req_id":"1","op":"subscribe"}'
    assert parser.parse(ack, RECV) == Parsed(control="subscribed")
    auth = b'{"success":true,"ret_msg":"","op":"auth","conn_id":"c"}'
    assert parser.parse(auth, RECV) == Parsed(control="login")
    failed = b'{"success":false,"ret_msg":"error:handler not found","conn_id":"a","req_id":"","op":"subscribe"}'
    assert parser.parse(failed, RECV) == Parsed(control="error", detail="subscribe: error:handler not found")
    order = b'{"id":"1","topic":"order","creationTime":1,"data":[{"symbol":"BTCUSDT","orderId":"x","qty":"1"}]}'
    assert parser.parse(order, RECV) == Parsed(control="ignored", detail="order")

    trade = b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"T":1,"s":"BTCUSDT","p":"1"}]}'
    assert reason_of(parser, trade) == "unknown_channel"
    assert reason_of(parser, b'{"topic":"kline.1.BTCUSDT","data":[]}') == "unknown_channel"
    assert reason_of(parser, b'{"topic":"orderbook.1.BTCUSDT","type":"snapshot",') == "invalid_json"
    assert reason_of(parser, b'{"topic":"wallet","data":[{"coin":[{"walletBalance":"1"}]}]}') == "missing_field"
    assert reason_of(parser, b'{"topic":"wallet","data":{"s":"x"}}') == "bad_type"
    assert reason_of(parser, b'{"hello":1}') == "bad_envelope"
    assert reason_of(parser, b"[1,2]") == "bad_envelope"


# --- OKX --------------------------------------------------------------------------------------------------------


def test_okx_tickers_every_line(fixtures_dir):
    parser = OkxParser(ExchangeName.OKX_SPOT)
    frames = lines(fixtures_dir, "okx_tickers_recorded.jsonl")
    assert frames
    for line in frames:
        msg = json.loads(line)
        parsed = parser.parse(line.encode(), RECV)
        assert len(parsed.book_tickers) == len(msg["data"]) == 1
        for bt, d in zip(parsed.book_tickers, msg["data"], strict=True):
            assert d["instId"] == msg["arg"]["instId"]
            assert_quote(
                bt, ExchangeName.OKX_SPOT, d["instId"], d["bidPx"], d["bidSz"], d["askPx"], d["askSz"],
                int(d["ts"]) * 1000, None,
            )  # fmt: skip


def test_okx_ticker_with_an_empty_side_has_no_quote(fixtures_dir):
    msg = json.loads(lines(fixtures_dir, "okx_tickers_recorded.jsonl")[0])
    empty = dict(msg["data"][0], bidPx="", bidSz="")
    two = dict(msg, data=[empty, msg["data"][0]])
    parsed = OkxParser(ExchangeName.OKX_SWAP).parse(json.dumps(two), RECV)
    assert [bt.symbol for bt in parsed.book_tickers] == [msg["data"][0]["instId"]]


def test_okx_bbo_tbt_hot_path_matches_the_general_parse():
    ids = {"BCH-USDT-SWAP": 3}
    parser = OkxParser(ExchangeName.OKX_SWAP, symbol_ids=lambda exchange, symbol: ids.get(symbol))
    bbo = {"arg": {"channel": "bbo-tbt", "instId": "BCH-USDT-SWAP"}, "data": [{
        "asks": [["111.06", "55154", "0", "2"]], "bids": [["111.05", "57745", "0", "2"]],
        "ts": "1670324386802", "seqId": 363996337}]}  # fmt: skip
    variants = [bbo]
    for price, size in (("0.000012345", "1234567.891"), ("65432.1", "0.001"), ("3.0E-5", "10")):
        row = dict(bbo["data"][0], bids=[[price, size, "0", "1"]], asks=[[price + "9", size, "0", "4"]])
        variants.append(dict(bbo, arg={"channel": "bbo-tbt", "instId": "X-USDT-SWAP"}, data=[row]))
    for frame in variants:
        raw = json.dumps(frame).encode()
        fast = parser.book_ticker(raw, RECV)
        assert fast is not None and type(fast) is BookTicker
        assert parser.parse_general(raw, RECV) == Parsed([fast])
        assert fast.symbol_id == ids.get(fast.symbol)
    # Not for the hot path: a one-sided book, two rows, another channel, a bad number, the pong.
    one_sided = dict(bbo, data=[dict(bbo["data"][0], bids=[])])
    two_rows = dict(bbo, data=bbo["data"] * 2)
    bad = dict(bbo, data=[dict(bbo["data"][0], asks=[["1.2.3", "1", "0", "1"]])])
    tickers = {"arg": {"channel": "tickers", "instId": "X"}, "data": [{"instId": "X", "bidPx": "1", "bidSz": "1",
                                                                       "askPx": "2", "askSz": "1", "ts": "1"}]}
    for frame in (one_sided, two_rows, bad, tickers):
        assert parser.book_ticker(json.dumps(frame), RECV) is None
    assert parser.book_ticker(b"pong", RECV) is None
    assert len(parser.parse(json.dumps(two_rows), RECV).book_tickers) == 2
    assert reason_of(parser, json.dumps(bad)) == "bad_number"


def test_okx_bbo_tbt_and_funding_rate():
    parser = OkxParser(ExchangeName.OKX_SWAP)
    # The documentation's bbo-tbt push: the instrument is named by arg only.
    bbo = {"arg": {"channel": "bbo-tbt", "instId": "BCH-USDT-SWAP"}, "data": [{
        "asks": [["111.06", "55154", "0", "2"]], "bids": [["111.05", "57745", "0", "2"]],
        "ts": "1670324386802", "seqId": 363996337}]}  # fmt: skip
    bt = only_book_ticker(parser.parse(json.dumps(bbo).encode(), RECV))
    assert_quote(bt, ExchangeName.OKX_SWAP, "BCH-USDT-SWAP", "111.05", "57745", "111.06", "55154",
                 1670324386802000, 363996337)  # fmt: skip
    one_sided = dict(bbo, data=[dict(bbo["data"][0], bids=[])])
    assert parser.parse(json.dumps(one_sided), RECV) == Parsed()

    funding = {"arg": {"channel": "funding-rate", "instId": "BTC-USD-SWAP"}, "data": [{
        "fundingRate": "0.0001875391284828", "fundingTime": "1700726400000", "instId": "BTC-USD-SWAP",
        "instType": "SWAP", "method": "current_period", "maxFundingRate": "0.00375",
        "minFundingRate": "-0.00375", "nextFundingRate": "", "nextFundingTime": "1700755200000",
        "premium": "0.0001233824646391", "settFundingRate": "0.0001699759612000", "settState": "settled",
        "ts": "1700724675402"}]}  # fmt: skip
    parsed = parser.parse(json.dumps(funding).encode(), RECV)
    (fr,) = parsed.funding_rates
    assert parsed.book_tickers == []
    assert (fr.exchange, fr.symbol, fr.rate) == ("okx_swap", "BTC-USD-SWAP", float("0.0001875391284828"))
    # fundingRate settles at fundingTime; nextFundingTime is the period after.
    assert (fr.exchange_ts, fr.next_funding_ts) == (1700724675402000, 1700726400000000)
    assert (fr.mark_price, fr.index_price) == (None, None)

    rest = {"code": "0", "msg": "", "data": funding["data"]}
    assert parser.parse_funding(json.dumps(rest).encode(), RECV) == [fr]
    history = {"code": "0", "msg": "", "data": [{"instId": "BTC-USD-SWAP", "instType": "SWAP",
               "fundingRate": "0.0000746572581961", "realizedRate": "0.00007", "fundingTime": "1703059200000",
               "method": "current_period"}]}  # fmt: skip
    (h,) = parser.parse_funding(json.dumps(history).encode(), RECV)
    assert (h.rate, h.exchange_ts, h.next_funding_ts) == (float("0.0000746572581961"), 1703059200000000, None)


def test_okx_account_channel_and_rest(fixtures_dir):
    raw = (fixtures_dir / "okx_account_fixture.json").read_bytes()
    msg = json.loads(raw)
    details = [d for row in msg["data"] for d in row["details"]]
    parser = OkxParser(ExchangeName.OKX_SPOT, account="trading")
    parsed = parser.parse(raw, RECV)
    assert parsed.book_tickers == [] and parsed.funding_rates == []
    assert [(b.asset, b.free, b.locked, b.exchange_ts) for b in parsed.balances] == [
        (d["ccy"], Decimal(d["availBal"]), Decimal(d["frozenBal"]), int(d["uTime"]) * 1000) for d in details
    ]
    assert {(b.exchange, b.account, b.recv_ts) for b in parsed.balances} == {("okx_spot", "trading", RECV)}
    assert str(parsed.balances[1].free) == str(Decimal(details[1]["availBal"]))

    rest = {"code": "0", "msg": "", "data": msg["data"]}
    from_rest = parser.parse_balances(json.dumps(rest).encode(), RECV)
    assert [(b.asset, b.free, b.locked) for b in from_rest] == [
        (b.asset, b.free, b.locked) for b in parsed.balances
    ]
    # A mode that leaves availBal "": derived from cashBal and frozenBal.
    partial = dict(msg, data=[dict(msg["data"][0], details=[dict(details[0], availBal="", cashBal="10.5",
                                                                 frozenBal="0.5")])])  # fmt: skip
    (b,) = parser.parse(json.dumps(partial), RECV).balances
    assert (b.free, b.locked) == (Decimal("10.0"), Decimal("0.5"))
    with pytest.raises(FrameError) as info:
        parser.parse_balances(b'{"code":"50113","msg":"Invalid Sign","data":[]}', RECV)
    assert info.value.reason == "exchange_error"


def test_okx_instruments(fixtures_dir):
    raw = (fixtures_dir / "okx_instruments_swap_recorded.json").read_bytes()
    data = json.loads(raw)["data"]
    symbols = OkxParser(ExchangeName.OKX_SWAP).parse_symbols(raw, 9, RECV)
    assert len(symbols) == len(data) > 0
    for sym, inst in zip(symbols, data, strict=True):
        base, quote = inst["uly"].split("-")
        assert (sym.exchange_id, sym.symbol, sym.base, sym.quote) == (9, inst["instId"], base, quote)
        assert (sym.kind, sym.status, sym.last_synced) == ("perpetual", "trading", RECV)
        assert (sym.tick_size, sym.lot_size, sym.contract_size) == (
            Decimal(inst["tickSz"]),
            Decimal(inst["lotSz"]),
            Decimal(inst["ctVal"]),
        )
    spot = {"code": "0", "msg": "", "data": [
        {"instId": "BTC-USDT", "instType": "SPOT", "baseCcy": "BTC", "quoteCcy": "USDT", "state": "suspend",
         "tickSz": "0.1", "lotSz": "0.00000001", "ctVal": "", "uly": ""},
        {"instId": "X-USDT", "instType": "SPOT", "baseCcy": "X", "quoteCcy": "USDT", "state": "preopen"},
        {"instId": "BTC-USD-231229", "instType": "FUTURES", "instFamily": "BTC-USD", "state": "expired"}]}  # fmt: skip
    a, b, c = OkxParser(ExchangeName.OKX_SPOT).parse_symbols(json.dumps(spot).encode(), 9, RECV)
    assert (a.kind, a.status, a.base, a.quote, a.contract_size) == ("spot", "halted", "BTC", "USDT", None)
    assert (a.tick_size, a.lot_size) == (Decimal("0.1"), Decimal("0.00000001"))
    assert b.status == "halted"
    assert (c.kind, c.status, c.base, c.quote) == ("future", "delisted", "BTC", "USD")


def test_okx_control_and_malformed_frames():
    parser = OkxParser(ExchangeName.OKX_SPOT)
    assert parser.parse(b"pong", RECV) == Parsed(control="pong")
    assert parser.parse("pong", RECV) == Parsed(control="pong")
    sub = b'{"event":"subscribe","arg":{"channel":"tickers","instId":"BTC-USDT"},"connId":"a4d3ae55"}'
    assert parser.parse(sub, RECV) == Parsed(control="subscribed", detail="tickers:BTC-USDT")
    err = b'{"event":"error","code":"60012","msg":"Invalid request: {\\"op\\": \\"subscribe\\"}","connId":"a"}'
    assert parser.parse(err, RECV) == Parsed(control="error", detail='60012: Invalid request: {"op": "subscribe"}')
    assert parser.parse(b'{"event":"login","code":"0","msg":"","connId":"a"}', RECV) == Parsed(control="login")
    assert parser.parse(b'{"event":"login","code":"60009","msg":"Login failed."}', RECV).control == "error"
    upgrade = b'{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade."}'
    assert parser.parse(upgrade, RECV).control == "reconnect"
    count = b'{"event":"channel-conn-count","channel":"orders","connCount":"2","connId":"abcd1234"}'
    assert parser.parse(count, RECV).control == "notice"
    orders = b'{"arg":{"channel":"orders","instType":"ANY","uid":"1"},"data":[{"instId":5,"ordId":"1"}]}'
    assert parser.parse(orders, RECV) == Parsed(control="ignored", detail="orders")

    books = b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"snapshot","data":[{"asks":[],"bids":[]}]}'
    assert reason_of(parser, books) == "unknown_channel"
    assert reason_of(parser, b'{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",') == (
        "invalid_json"
    )
    ticker = {"instId": "BTC-USDT", "bidPx": "1", "bidSz": "2", "askPx": "3", "askSz": "4", "ts": "1652459223003"}
    push = {"arg": {"channel": "tickers", "instId": "BTC-USDT"}}
    assert reason_of(parser, json.dumps(dict(push, data=[dict(ticker, bidPx=1.0)]))) == "bad_type"
    assert reason_of(parser, json.dumps(dict(push, data=[dict(ticker, askSz="4e")]))) == "bad_number"
    assert reason_of(parser, json.dumps(dict(push, data=[dict(ticker, ts="165245922300x")]))) == "bad_number"
    assert reason_of(parser, json.dumps(dict(push, data=[dict(ticker, instId="")]))) == "missing_field"
    assert reason_of(parser, json.dumps(dict(push, data=[dict(ticker)], arg={"channel": "candle1m"}))) == (
        "unknown_channel"
    )
    assert reason_of(parser, b'{"arg":{"channel":"account"},"data":[{"uTime":"1"}]}') == "missing_field"
    assert reason_of(parser, b'{"data":[]}') == "bad_envelope"
    assert reason_of(parser, b'"ping"') == "bad_envelope"

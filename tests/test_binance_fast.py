"""The C hot path of ``BinanceParser.book_read`` (``hftdb.wire._native._binance_fast``) against its Python loop.

The C module takes only frames it can take whole and hands every other one back, so the two must agree on every
input: the same rows, the same COPY tuples, the same duplicates, the same frames left for the general decode and
the same admission and symbol-id state afterwards. Each corpus below runs through two parsers, one with the C
path and one without, driven as the intake drives them (a read at a time, the general decode's frames skipped).
"""

from __future__ import annotations

import json
import random
import shutil
import sysconfig

import msgspec
import pytest

from hftdb.exchanges.parse_binance import BinanceParser
from hftdb.models import FUTURE_SLACK_US, MIN_TS_US, ExchangeName
from hftdb.wire import loader
from hftdb.wire.books import SIZE
from hftdb.wire.loader import NATIVE

USDM = ExchangeName.BINANCE_USDM
RECV = 1_795_387_612_694_618
TS_MAX = RECV + FUTURE_SLACK_US
E_MS = 1_700_000_000_123
IDS = {f"S{i:03d}USDT": i for i in range(1, 31)} | {"BTCUSDT": 100, "HUGEIDUSDT": 2**31, "NEGIDUSDT": -5}

needs_c = pytest.mark.skipif(NATIVE.book_read is None, reason="hftdb built without its C hot path")


def test_the_c_hot_paths_are_built_where_a_compiler_is():
    # setup.py marks the extensions optional so that an install without a compiler still works; where one is
    # present (CI, development), a silently skipped build would leave the feeds and writers ~2x slower.
    if shutil.which(sysconfig.get_config_var("CC").split()[0]) is None:
        pytest.skip("no C compiler on this machine")
    assert loader.built() == {"book_read": True, "pack_tickers": True, "decode_packed": True}


def event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"e": "bookTicker", "u": 1, "s": "S001USDT", "b": "1.5", "B": "10", "a": "1.6",
                               "A": "20", "T": E_MS - 20, "E": E_MS}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def combined(ev: dict[str, object], **top: object) -> bytes:
    return json.dumps({"stream": "s001usdt@bookTicker", "data": ev, **top}, separators=(",", ":")).encode()


def run(frames: list[bytes | str], *, c: bool, per_read: int = 7, ids: dict[str, int] = IDS) -> dict[str, object]:
    if not c:
        with loader.disabled():
            return run(frames, c=True, per_read=per_read, ids=ids)
    parser = BinanceParser(USDM, symbol_ids=lambda _exchange, symbol: ids.get(symbol))
    last: dict[str, int] = {}
    rows: list = []
    buf = bytearray()
    general: list[int] = []  # indexes of the frames left for the general decode
    dups = 0
    for start in range(0, len(frames), per_read):
        payloads = frames[start:start + per_read]
        i = 0
        while i < len(payloads):
            i, d = parser.book_read(payloads, i, RECV, TS_MAX, last, rows, buf)
            dups += d
            if i < len(payloads):
                general.append(start + i)
                i += 1
    tuples = bytes(buf)  # whole tuples from either path: PACK writes the constants the C path writes
    # repr, not the tuples: NaN (which msgspec's lax decode reads from "nan") never equals itself.
    return {"rows": [repr(msgspec.structs.astuple(r)) for r in rows], "tuples": tuples, "dups": dups,
            "general": general, "last": last, "ids": dict(parser._ids), "packed": len(buf) // SIZE}


def assert_same(frames: list[bytes | str], **kwargs: object) -> dict[str, object]:
    with_c, without = run(frames, c=True, **kwargs), run(frames, c=False, **kwargs)
    for key in without:
        assert with_c[key] == without[key], key
    return with_c


def decimal_text(rng: random.Random) -> str:
    digits = rng.randint(1, 20)  # past 15 significant digits the C path takes PyOS_string_to_double
    text = str(rng.randint(1, 10**digits - 1))
    point = rng.randint(0, len(text))
    if point == 0:
        return "0." + text
    return text if point == len(text) else text[:point] + "." + text[point:]


@needs_c
def test_generated_quotes_agree_digit_for_digit():
    rng = random.Random(11)
    frames = []
    u = 10
    for _ in range(4000):
        u += rng.randint(-2, 9)  # some go back: duplicates
        bid = decimal_text(rng)
        ask = bid if rng.random() < 0.3 else decimal_text(rng)  # equal, crossed or not
        frames.append(combined(event(u=u, s=rng.choice(list(IDS)[:31]), b=bid, B=decimal_text(rng), a=ask,
                                     A=decimal_text(rng))))
    result = assert_same(frames)
    # Every branch was taken: duplicates, packed rows and rows the Python loop took unpacked (crossed quotes).
    assert result["dups"] > 20 and 1000 < result["packed"] < len(result["rows"])


@needs_c
def test_more_symbols_than_the_c_paths_symbol_table_holds():
    # book_read keeps symbol strings in a direct-mapped table of 4,096: with 6,000 symbols, slots collide and are
    # replaced, and every row must still carry its own frame's symbol and id.
    ids = {f"X{i:05d}USDT": i for i in range(1, 6001)}
    names = list(ids)
    rng = random.Random(5)
    frames = [combined(event(u=k, s=rng.choice(names), b="1.5", a="1.6")) for k in range(1, 20001)]
    result = assert_same(frames, ids=ids)
    assert result["packed"] == len(result["rows"]) == 20000 and result["general"] == []
    assert len({eval(r)[1] for r in result["rows"]}) > 4096


@needs_c
def test_prices_are_what_float_gives():
    # The fast path's exact division and the slow path's strtod against float() itself, on awkward values.
    texts = ["0.1", "0.3", "1.1", "9007199254740993", "123456789012345", "1234567890123456", "0.000000000000001",
             "999999999999999.9", "0.30000000000000004", "4.35", "0.07", "1." + "0" * 30 + "1", "5" * 17]
    frames = [combined(event(u=i, b=t, a=t)) for i, t in enumerate(texts, 1)]
    result = assert_same(frames)
    assert [eval(r)[2] for r in result["rows"]] == [float(t) for t in texts]
    assert result["general"] == []


def hostile() -> list[bytes | str]:
    ok = event()
    out: list[bytes | str] = [
        # envelopes and JSON the C path hands back
        b' {"stream":"s001usdt@bookTicker", "data" : {"e":"bookTicker","u":2,"s":"S001USDT","b":"1.5","B":"10",'
        b'"a":"1.6","A":"20","T":1,"E":1700000000123} }\n',
        json.dumps({"data": event(u=3), "stream": "x"}).encode(),  # spaces after separators, keys reordered
        combined(event(u=4)).replace(b'"stream":"s001usdt@bookTicker",', b""),  # no stream key
        combined(event(u=5))[:-1],  # truncated
        combined(event(u=6)) + b"x",  # trailing garbage
        combined(event(u=7)).replace(b",", b",,", 1),
        combined(event(u=8)).replace(b'"u":8', b'"u":8,"u":9'),  # duplicate key
        combined(event(u=10)).replace(b'"data":', b'"data":{"e":"bookTicker"},"data":'),
        combined(event(u=11), extra=1),  # unknown top-level key
        combined(event(u=12, X=1)),  # unknown event key
        combined(event(u=13, b=1.5)),  # a JSON number where a string is sent
        combined(event(u=14, E="1700000000123")),
        combined(event(u=15, E=1700000000123.0)),
        combined(event(u=16, E=1_700_000_000_123_456)),  # microseconds
        combined(event(u=17, E=0)),
        combined(event(u=18, E=-1)),
        combined(event(u=19, E=_DROP)),
        combined(event(u=20, E=E_MS + FUTURE_SLACK_US // 1000 + 10_000)),  # future
        combined(event(u=21, E=MIN_TS_US // 1000 - 1)),
        combined(event(u="22")),
        combined(event(u=23.0)),
        combined(event(u=2**63, s="S002USDT")),  # past int8: packs nothing, and admits nothing after it
        combined(event(u=-24)),
        combined(event(u=_DROP)),
        combined(event(u=25, s="")),
        combined(event(u=26, s=_DROP)),
        combined(event(u=27, e=_DROP)),  # no tag: the Python decode takes it
        combined(event(u=28, e="markPriceUpdate")),
        combined(event(u=29, e="bookTickers")),
        combined(event(u=30, s="BTCUSDT")).replace(b"BTCUSDT", b"BTC\\u0055SDT"),  # an escape: same symbol
        json.dumps({"stream": "x", "data": event(u=31, s="BTC€USDT")}, ensure_ascii=False).encode(),
        combined(event(u=32, s="UNKNOWNUSDT")),  # no id: the Python path asks and gets None
        combined(event(u=33, s="HUGEIDUSDT")),  # an id past int4
        combined(event(u=34, s="NEGIDUSDT")),
        combined(event(u=35, B=_DROP)),
        combined(ok | {"u": 36}).replace(b'"data":{', b'"data":[{').replace(b"}}", b"}]}"),  # array form
        combined(ok | {"u": 37}).decode(),  # str, not bytes
        b"[]",
        b'{"result":null,"id":1}',
        b"not json",
    ]
    prices = ["", "abc", "-1.5", "01.5", "1.", ".5", "1e5", "1.5e-3", "1E5", "nan", "NaN", "inf", "Infinity",
              " 1.5", "1.5 ", "1_000", "1" + "0" * 400, "0", "0.0", "00", "+1.5", "0x10", "1" * 64, "\\u0031"]
    u = 100
    for text in prices:
        for field in ("b", "B", "a", "A"):
            u += 1
            out.append(combined(event(u=u, **{field: text})).replace(b"\\\\u", b"\\u"))
    for bid, ask in [("2", "1"), ("1", "1"), ("1.0000000000000002", "1")]:
        u += 1
        out.append(combined(event(u=u, b=bid, a=ask)))
    u += 1
    out += [combined(event(u=u)), combined(event(u=u)), combined(event(u=u - 1))]  # duplicates after one taken
    return out


@needs_c
@pytest.mark.parametrize("per_read", [1, 7, 1000])
def test_hostile_frames_agree(per_read):
    frames = hostile()
    result = assert_same(frames, per_read=per_read)
    assert result["dups"] >= 2 and result["packed"] > 3 and len(result["general"]) > 20


@needs_c
def test_recorded_frames_agree(fixtures_dir):
    lines = (fixtures_dir / "binance_usdm_bookTicker_combined_recorded.jsonl").read_text().splitlines()
    frames: list[bytes | str] = [line.encode() for line in lines if line.strip()]
    ids = IDS | {json.loads(f)["data"]["s"]: i for i, f in enumerate(frames, 1000)}
    result = assert_same(frames, per_read=3, ids=ids)
    assert result["packed"] == len(frames) - result["dups"] and not result["general"]


@needs_c
def test_bad_arguments_raise_type_errors():
    scan = NATIVE.book_read
    with pytest.raises(TypeError):
        scan([], 0)
    with pytest.raises(TypeError):
        scan((), 0, RECV, TS_MAX, {}, {}, [], bytearray(), object, "x", 0)

"""File replay (``hftdb ingest-file``) is idempotent: replaying a capture twice stores each message once.

Sequenced channels (Binance bookTicker, Bybit orderbook.1: keyed by update id) and unsequenced ones (OKX
tickers and Binance markPrice funding: keyed by exchange time) are both replayed twice into a real database,
and the rows are counted after each pass.
"""

from __future__ import annotations

import json

import asyncpg
import msgspec
import pytest

from hftdb import DatabaseManager
from hftdb.config import load_settings
from hftdb.ops.replay import ingest_file

CAPTURES = [  # fixture, venue, channel, table, rows stored
    ("binance_usdm_bookTicker_combined_recorded.jsonl", "binance_usdm", "bookTicker", "book_tickers", None),
    ("binance_spot_bookTicker_combined_recorded.jsonl", "binance_spot", "bookTicker", "book_tickers", None),
    ("bybit_linear_orderbook1_recorded.jsonl", "bybit_linear", "orderbook.1", "book_tickers", 4),
    # Two of its five rows are a dated future and a swap: not instruments of okx_spot (rejected wrong_market).
    ("okx_tickers_recorded.jsonl", "okx_spot", "tickers", "book_tickers", 3),
]


def settings():
    base = load_settings(environ={})
    return msgspec.structs.replace(base, writer=msgspec.structs.replace(base.writer, spool_dir=None))


async def count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")  # table: from CAPTURES above
    finally:
        await conn.close()


@pytest.mark.parametrize(("name", "venue", "channel", "table", "expected"), CAPTURES, ids=[c[0] for c in CAPTURES])
async def test_replaying_a_capture_twice_stores_each_message_once(dsn, fixtures_dir, name, venue, channel, table,
                                                                  expected):
    path = fixtures_dir / name
    async with DatabaseManager(dsn, settings=settings()) as db:
        first = await ingest_file(db, path, exchange=venue, channels=[channel])
        stored = await count(dsn, table)
        assert stored == first.committed[table] > 0
        if expected is not None:
            assert stored == expected
        second = await ingest_file(db, path, exchange=venue, channels=[channel])
        assert second.frames == first.frames
        assert second.committed[table] == 0
        assert second.duplicates == first.duplicates + stored  # every row of the first pass found again
        assert await count(dsn, table) == stored


async def test_replaying_funding_twice_stores_each_update_once(dsn, fixtures_dir, tmp_path):
    event = json.loads((fixtures_dir / "binance_usdm_markPrice_doc.json").read_text())
    lines = []
    for i in range(5):  # one update a second, on two symbols, in the combined envelope and raw
        for symbol in ("BTCUSDT", "ETHUSDT"):
            data = dict(event, s=symbol, E=event["E"] + 1000 * i, r=f"0.000{i}{len(symbol)}")
            lines.append(json.dumps({"stream": f"{symbol.lower()}@markPrice@1s", "data": data} if i % 2 else data))
    capture = tmp_path / "markprice.jsonl"
    capture.write_text("\n".join(lines) + "\n")
    async with DatabaseManager(dsn, settings=settings()) as db:
        first = await ingest_file(db, capture, exchange="binance_usdm", channels=["markPrice@1s"])
        assert first.committed["funding_rates"] == 10 == await count(dsn, "funding_rates")
        second = await ingest_file(db, capture, exchange="binance_usdm", channels=["markPrice@1s"])
        assert second.committed["funding_rates"] == 0 and second.duplicates == 10
        # A capture that overlaps: two updates already stored, one new.
        overlap = tmp_path / "overlap.jsonl"
        newer = dict(event, s="BTCUSDT", E=event["E"] + 5000, r="0.0009")
        overlap.write_text("\n".join(lines[-2:] + [json.dumps(newer)]) + "\n")
        third = await ingest_file(db, overlap, exchange="binance_usdm", channels=["markPrice@1s"])
        assert third.committed["funding_rates"] == 1 and third.duplicates == 2
        assert await count(dsn, "funding_rates") == 11


async def test_a_changed_message_with_a_stored_key_is_not_a_duplicate(dsn, fixtures_dir, tmp_path):
    # OKX tickers are keyed by a millisecond time: a different message may share it, and must be stored.
    path = fixtures_dir / "okx_tickers_recorded.jsonl"
    async with DatabaseManager(dsn, settings=settings()) as db:
        await ingest_file(db, path, exchange="okx_spot", channels=["tickers"])
        frame = json.loads(path.read_text().splitlines()[2])  # BTC-USDT (the first two are not spot)
        frame["data"][0]["bidSz"] = str(float(frame["data"][0]["bidSz"]) + 1)
        changed = tmp_path / "changed.jsonl"
        changed.write_text(json.dumps(frame) + "\n")
        result = await ingest_file(db, changed, exchange="okx_spot", channels=["tickers"])
        assert result.committed["book_tickers"] == 1 and result.duplicates == 0


async def test_replaying_balances_twice_stores_each_snapshot_once(dsn, fixtures_dir, tmp_path):
    # Balance events carry an exchange time: (account, asset, exchange_ts) and the amounts identify a snapshot.
    event = json.loads((fixtures_dir / "binance_spot_outboundAccountPosition_doc.json").read_text())
    lines = []
    for i in range(3):
        frame = json.loads(json.dumps(event))
        frame["event"]["E"] += 1000 * i
        frame["event"]["B"] = [{"a": "ETH", "f": f"{10 + i}.5", "l": "0.000000"}, {"a": "BTC", "f": "1", "l": "0.25"}]
        lines.append(json.dumps(frame))
    lines.append(lines[0])  # a capture may repeat a message
    capture = tmp_path / "account.jsonl"
    capture.write_text("\n".join(lines) + "\n")
    async with DatabaseManager(dsn, settings=settings()) as db:
        first = await ingest_file(db, capture, exchange="binance_spot", channels=["bookTicker"])
        assert first.committed["balances"] == 6 == await count(dsn, "balances")
        assert first.duplicates == 2
        second = await ingest_file(db, capture, exchange="binance_spot", channels=["bookTicker"])
        assert second.committed["balances"] == 0 and second.duplicates == 8
        # The same event time with other amounts is another snapshot, stored.
        changed = json.loads(lines[0])
        changed["event"]["B"][0]["f"] = "99"
        other = tmp_path / "changed.jsonl"
        other.write_text(json.dumps(changed) + "\n")
        third = await ingest_file(db, other, exchange="binance_spot", channels=["bookTicker"])
        assert third.committed["balances"] == 1 and third.duplicates == 1
        assert await count(dsn, "balances") == 7

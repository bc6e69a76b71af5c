"""The file replay's scan of whole blocks (``Intake.process_lines``, ``BinanceParser.book_scan``, the C
``book_scan``): book rows as COPY tuples without records (``BookTuples``), every other line through the intake's
usual path.

Each check runs the same input the scanned way and the way it went before (lines split in Python, one read
through ``Intake.process``, or the C path turned off), and compares what comes out: the lines, the rows in
order, the counters and the admission state; in a database, the stored rows, the latest rows and the replay's
counts.
"""

from __future__ import annotations

import io
import random
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest

from hftdb import DatabaseManager, now_us
from hftdb.config import load_settings
from hftdb.exchanges.binance import BinanceAdapter
from hftdb.exchanges.intake import Intake
from hftdb.exchanges.runner import StreamRunner
from hftdb.models import FUTURE_SLACK_US, ExchangeName, Symbol
from hftdb.ops.replay import ReplayTuning, line_blocks, line_pieces, ingest_file
from hftdb.ops import replay as replay_module
from hftdb.wire import loader
from hftdb.wire.books import PACK, BookTuples
from hftdb.wire.copy import PG_EPOCH_US
from hftdb.wire.loader import NATIVE

USDM = ExchangeName.BINANCE_USDM
SYMBOLS = [f"S{i:03d}USDT" for i in range(1, 21)]
BAD = "BADQUOTEUSDT"
T0_MS = now_us() // 1000 - 3_600_000

needs_c = pytest.mark.skipif(NATIVE.book_scan is None, reason="hftdb built without its C hot path")


def frame(symbol: str, u: int, b: str, bq: str, a: str, aq: str, e: int | None) -> bytes:
    event = {"e": "bookTicker", "u": u, "s": symbol, "b": b, "B": bq, "a": a, "A": aq, "T": T0_MS}
    if e is not None:
        event["E"] = e
    return msgspec.json.encode({"stream": f"{symbol.lower()}@bookTicker", "data": event})


def mixed_lines(seed: int, n: int, *, extras: float = 0.08) -> list[bytes]:
    """USD-M bookTicker frames with, here and there, a frame the scan hands back: refused quotes, no event time,
    an unregistered symbol, a bad time, an update id past int8, broken JSON, a funding frame, repeats."""
    rng = random.Random(seed)
    u = 1_000_000
    t = T0_MS
    out: list[bytes] = []
    for _ in range(n):
        u += rng.randint(1, 9)
        t += rng.randint(0, 3)
        bid = round(rng.uniform(1, 1000), 3)
        out.append(frame(rng.choice(SYMBOLS), u, f"{bid:.3f}", str(rng.randint(1, 500)),
                         f"{bid + 0.001 * rng.randint(1, 5):.3f}", str(rng.randint(1, 500)), t))
        if rng.random() < extras:
            u += 1
            out.append(rng.choice([
                frame(BAD, u, "NaN", "1", "2", "1", t),
                frame(BAD, u, "3", "1", "2", "1", t),  # crossed
                frame(BAD, u, "1", "1", "2", "1", None),  # no event time
                frame(BAD, u, "1", "1", "2", "-2", t),
                frame("NEWLISTUSDT", u, "1", "1", "2", "1", t),  # registered on first sight
                frame(BAD, u, "1", "1", "2", "1", 5),  # bad_time
                frame(BAD, 2**63, "1", "1", "2", "1", t),  # bad_update_id
                b'{"stream":"s001usdt@bookTicker","data":{"e":"bookTicker","u":5,"s":"S001USDT","b":"1"}}',
                b"not json",
                b'{"stream":"s003usdt@markPrice","data":{"e":"markPriceUpdate","E":%d,"s":"S003USDT",'
                b'"p":"11.5","i":"11.4","P":"11.6","r":"0.0001","T":%d}}' % (t, t + 3_600_000),
                out[-1],  # a repeat: a duplicate
                out[max(0, len(out) - 30)],  # an older one: a duplicate
            ]))
    return out


def joined(lines: list[bytes], seed: int) -> bytes:
    """The lines with the separators and padding a capture may hold (bytes.strip takes it off again)."""
    rng = random.Random(seed)
    parts = []
    for line in lines:
        parts.append(rng.choice([b"", b"", b"", b" ", b"\t", b"\x0b", b"\x0c "]) + line
                     + rng.choice([b"\n", b"\n", b"\n", b"\r\n", b"\n\n", b" \n", b"\n \n"]))
    return b"".join(parts)


# -- the file's lines ------------------------------------------------------------------------------------------------


def lines_of_blocks(data: bytes, tuning: ReplayTuning) -> tuple[list[bytes], list[str]]:
    rejects: list[str] = []
    lines = [f for block in line_blocks(io.BytesIO(data), lambda r, d: rejects.append(r), "x", tuning=tuning)
             for f in block]
    # Stripped, blank ones dropped, as line_blocks says (it leaves a block's lines as split when the block itself holds
    # no CR and no blank line, for the parser to skip their JSON whitespace).
    return [f for f in map(bytes.strip, lines) if f], rejects


def lines_of_pieces(data: bytes, tuning: ReplayTuning, *, plain: bool) -> tuple[list[bytes], list[str]]:
    rejects: list[str] = []
    lines = []
    for buf, start, end in line_pieces(io.BytesIO(data), lambda r, d: rejects.append(r), "x", plain=plain,
                                       tuning=tuning):
        assert end == len(buf) or buf[end - 1:end] == b"\n"  # whole lines only
        lines.extend(f for f in map(bytes.strip, buf[start:end].split(b"\n")) if f)
    return lines, rejects


@pytest.mark.parametrize("plain", [True, False], ids=["plain", "compressed"])
@pytest.mark.parametrize("block", [1, 7, 16])
def test_pieces_hold_the_lines_blocks_give(monkeypatch, block, plain):
    # A compressed stream's reads joined, 3 blocks a piece; shorter than the longest line, as in a real replay.
    tuning = ReplayTuning(block_bytes=block, read_bytes=3 * block)
    monkeypatch.setattr(replay_module, "MAX_LINE_BYTES", 50)
    rng = random.Random(block)
    for _ in range(200):
        lines = [bytes(rng.choice(b"ab {}\r\t") for _ in range(rng.choice([0, 1, 5, 30, 49, 50, 51, 60, 140])))
                 for _ in range(rng.randint(0, 12))]
        data = b"\n".join(lines) + rng.choice([b"", b"\n", b"\n\n", b"\r\n"])
        assert lines_of_pieces(data, tuning, plain=plain) == lines_of_blocks(data, tuning), data


# -- the intake ------------------------------------------------------------------------------------------------------


class Sink:
    """A sink that takes packed rows and is never written to: symbol ids from a map."""

    def __init__(self, symbols: list[str] = SYMBOLS + [BAD]) -> None:
        self.ids = {name: i for i, name in enumerate(symbols, 1)}

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        return self.ids.get(symbol)

    async def insert_exchange(self, exchange): ...
    async def get_exchange_by_enum(self, name): ...
    async def sync_symbols(self, exchange, symbols): ...
    async def insert_book_ticker_snapshots(self, rows): ...
    async def insert_funding_rates(self, rows): ...
    async def insert_balance_snapshots(self, rows): ...
    async def flush(self): ...
    async def insert_packed_book_tickers(self, rows): ...


def intake(symbols: list[str] = SYMBOLS + [BAD]) -> tuple[Intake, StreamRunner]:
    adapter = BinanceAdapter(USDM, Sink(symbols), symbols=symbols, channels=("bookTicker", "markPrice@1s"))
    runner = StreamRunner(adapter)
    return Intake(runner, adapter.new_parser()), runner


def state(runner: StreamRunner) -> dict[str, object]:
    stats = runner.adapter.stats.as_dict()
    return {"book_ids": dict(runner.book_ids), "messages": stats["messages"], "duplicates": stats["duplicates"],
            "rejects": stats["rejects_by_reason"]}


def rows_of(groups) -> tuple[list[str], list[str], list[bool]]:
    books, funding, scanned = [], [], []
    for batch in groups:
        b, f = batch.book_tickers, batch.funding_rates
        scanned.append(type(b) is BookTuples)
        rows = b.records() if type(b) is BookTuples else b
        # repr, not the tuples: NaN (a refused quote's price) never equals itself.
        books.extend(repr(msgspec.structs.astuple(r)) for r in rows)
        funding.extend(repr(msgspec.structs.astuple(r)) for r in f)
    return books, funding, scanned


@pytest.mark.parametrize("c", [True, False], ids=["scan", "c-off"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_process_lines_gives_what_process_gives(c, seed):
    if c and NATIVE.book_scan is None:
        pytest.skip("hftdb built without its C hot path")
    lines = mixed_lines(seed, 3000)
    data = joined(lines, seed)
    recv = now_us()
    reference, ref_runner = intake()
    expected = rows_of([reference.process([(recv, [f for f in map(bytes.strip, data.split(b"\n")) if f])])])
    scanned, runner = intake()
    with loader.disabled() if not c else _nothing():
        # The buffer in uneven pieces of whole lines, as line_pieces hands them over.
        frames = 0
        groups = []
        cuts = sorted(random.Random(seed).sample([i + 1 for i, ch in enumerate(data) if ch == 10], 20))
        for start, end in zip([0] + cuts, cuts + [len(data)]):
            n, g = scanned.process_lines(recv, data, start, end)
            frames += n
            groups.extend(g)
    got = rows_of(groups)
    assert got[:2] == expected[:2]
    assert frames == len([f for f in map(bytes.strip, data.split(b"\n")) if f])
    assert state(runner) == state(ref_runner)
    if c:
        # Most rows came as tuples; the lines handed back came in groups of their own, in order.
        assert sum(got[2]) > 20 and not all(got[2])
        assert sum(len(g.book_tickers) for g in groups if type(g.book_tickers) is BookTuples) > 2500
    assert state(runner)["duplicates"] > 5 and state(runner)["rejects"]


@needs_c
def test_more_symbols_than_the_scan_remembers_and_long_names_agree_too():
    # The C scan remembers up to 1,024 symbols a call and names of up to 40 characters; the rest take the
    # dictionaries on every row. Both ways must admit alike, repeats included.
    rng = random.Random(9)
    symbols = [f"S{i:04d}USDT" for i in range(1500)] + ["L" * n + "USDT" for n in (36, 37, 50, 60)]
    lines = []
    u = 1
    for _ in range(12_000):
        u += rng.randint(0, 3)  # 0: a repeat of the id before (a duplicate when the symbol is the same)
        s = rng.choice(symbols)
        lines.append(frame(s, u if rng.random() < 0.9 else u - 50, "1.5", "2", "1.6", "3", T0_MS))
    data = b"\n".join(lines)
    recv = now_us()
    reference, ref_runner = intake(symbols)
    expected = rows_of([reference.process([(recv, lines)])])
    scanned, runner = intake(symbols)
    frames = 0
    groups = []
    for start in range(0, 2):  # twice the same buffer: the second time every row is a duplicate
        n, g = scanned.process_lines(recv, data, 0, len(data))
        frames += n
        groups.extend(g)
    reference.process([(recv, lines)])
    assert rows_of(groups)[:2] == expected[:2]
    assert frames == 2 * len(lines)
    assert state(runner) == state(ref_runner)
    assert state(runner)["duplicates"] > len(lines) + 10


class _nothing:
    def __enter__(self) -> None: ...
    def __exit__(self, *exc: object) -> None: ...


@needs_c
def test_a_line_the_scan_hands_back_is_the_first_it_cannot_take():
    parser = BinanceAdapter(USDM, Sink(), symbols=SYMBOLS, channels=("bookTicker",)).new_parser()
    good = [frame(s, u, "1.5", "2", "1.6", "3", T0_MS) for u, s in enumerate(SYMBOLS[:3], 10)]
    data = b"\n".join(good[:2] + [b"  ", frame(SYMBOLS[0], 5, "1.5", "2", "1.6", "3", T0_MS), b"not json"]
                      + good[2:]) + b"\n"
    for line in good:
        parser.book_ticker(line, now_us())  # the parser learns the symbols' ids (the scan never resolves one)
    tuples = parser.book_tuples(now_us())
    last: dict[str, int] = {}
    pos, taken, dups = parser.book_scan(data, 0, len(data), now_us() + FUTURE_SLACK_US, last, tuples)
    # Two rows, the blank line (no frame) and the stale repeat of S001USDT (a duplicate) taken; "not json" not.
    assert (taken, dups, len(tuples)) == (3, 1, 2)
    assert data[pos:].startswith(b"not json")
    assert last == {SYMBOLS[0]: 10, SYMBOLS[1]: 11}
    assert [r.symbol for r in tuples.records()] == SYMBOLS[:2]
    pos, taken, dups = parser.book_scan(data, pos + len(b"not json\n"), len(data), now_us() + FUTURE_SLACK_US,
                                        last, tuples)
    assert (pos, taken, dups, len(tuples)) == (len(data), 1, 0, 3)
    with pytest.raises(TypeError):
        NATIVE.book_scan(bytearray(data), 0, len(data), 0, 0, {}, {}, bytearray(), 0)


# -- the database ----------------------------------------------------------------------------------------------------


def settings(max_rows: int = 10_000):
    base = load_settings(environ={})
    return msgspec.structs.replace(
        base, writer=msgspec.structs.replace(base.writer, spool_dir=None, batch_max_rows=max_rows))


@pytest.fixture
async def other_dsn(pg_admin_dsn):
    """A second fresh database."""
    name = "hftdb_t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')  # name: hex digits of ours
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(pg_admin_dsn)._replace(path="/" + name))
    finally:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def stored(dsn: str) -> dict[str, object]:
    conn = await asyncpg.connect(dsn)
    try:
        # recv_ts is the replay's own clock: compared as "the same for every row of a block" only by count.
        rows = [tuple(r) for r in await conn.fetch(
            "SELECT s.symbol, b.exchange_ts, b.bid_price, b.bid_qty, b.ask_price, b.ask_qty, b.update_id"
            " FROM book_tickers b JOIN symbols s ON s.id = b.symbol_id ORDER BY 1, 7, 2")]
        latest = [tuple(r) for r in await conn.fetch(
            "SELECT s.symbol, l.exchange_ts, l.bid_price, l.bid_qty, l.ask_price, l.ask_qty, l.update_id"
            " FROM book_tickers_latest l JOIN symbols s ON s.id = l.symbol_id ORDER BY 1")]
        funding = [tuple(r) for r in await conn.fetch(
            "SELECT s.symbol, f.exchange_ts, f.rate FROM funding_rates f JOIN symbols s ON s.id = f.symbol_id"
            " ORDER BY 1, 2")]
    finally:
        await conn.close()
    return {"rows": rows, "latest": latest, "funding": funding}


async def replay_twice(dsn: str, path, max_rows: int) -> tuple[list[dict[str, object]], dict[str, object]]:
    results = []
    async with DatabaseManager(dsn, settings=settings(max_rows)) as db:
        ex = await db.insert_exchange(USDM)
        await db.sync_symbols(USDM, [Symbol(exchange_id=ex.id, symbol=s, kind="perpetual", status="trading")
                                     for s in SYMBOLS + [BAD]])
        for _ in range(2):  # the second time every row is stored already: the blocks are checked as records
            # Many blocks, lines across their ends.
            r = await ingest_file(db, path, exchange=USDM, channels=["bookTicker", "markPrice@1s"],
                                  tuning=ReplayTuning(read_bytes=4096))
            results.append({k: v for k, v in msgspec.structs.asdict(r).items() if k != "seconds"})
    return results, await stored(dsn)


@needs_c
@pytest.mark.parametrize("extras", [0.08, 0.0], ids=["mixed", "quotes-only"])
@pytest.mark.parametrize("max_rows", [10_000, 7], ids=["one-batch", "calls-straddle-batches"])
async def test_a_file_replays_the_same_scanned_and_not(dsn, other_dsn, tmp_path, max_rows, extras):
    # Mixed: a stored row without an exchange time makes the second replay check its blocks key by key; quotes
    # only: by their time windows.
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(joined(mixed_lines(5, 4000, extras=extras), 5))
    scanned, scanned_rows = await replay_twice(dsn, path, max_rows)
    with loader.disabled():
        plain, plain_rows = await replay_twice(other_dsn, path, max_rows)
    assert scanned == plain
    assert scanned_rows == plain_rows
    first, again = scanned
    assert first["committed"]["book_tickers"] == len(scanned_rows["rows"]) > 3500
    if extras:
        assert first["committed"]["funding_rates"] == len(scanned_rows["funding"]) > 0
        assert first["rejects"] and first["duplicates"] > 5
    assert again["committed"] == {t: 0 for t in again["committed"]}
    assert again["duplicates"] >= len(scanned_rows["rows"])


async def test_tuples_with_an_unregistered_id_go_the_public_path(dsn, other_dsn):
    recv = now_us()
    ex_pg = T0_MS * 1000 - PG_EPOCH_US
    results = []
    for target in (dsn, other_dsn):
        async with DatabaseManager(target, settings=settings()) as db:
            ex = await db.insert_exchange(USDM)
            await db.sync_symbols(USDM, [Symbol(exchange_id=ex.id, symbol="S001USDT", kind="perpetual",
                                                status="trading")])
            sid = db.resolve_symbol_id(USDM.value, "S001USDT")
            ids = {"S001USDT": sid, "GHOSTUSDT": sid + 1000}  # an id the database never gave
            buf = bytearray(PACK(sid, recv - PG_EPOCH_US, ex_pg, 1.5, 2.0, 1.6, 3.0, 7)
                            + PACK(sid + 1000, recv - PG_EPOCH_US, ex_pg, 1.5, 2.0, 1.6, 3.0, 8))
            tuples = BookTuples(recv, USDM.value, ids, buf)
            if target == dsn:
                await db.feed_sink().insert_packed_book_tickers(tuples)
            else:
                await db.insert_book_ticker_snapshots(tuples.records())
            await db.flush()
            results.append(((await db.get_database_stats())["writers"]["book_tickers"]["rejects"],
                            await stored(target)))
    assert results[0] == results[1]
    assert results[0][1]["rows"]

"""End to end: exchange frames to committed rows, on a fresh embedded PostgreSQL database per measurement.

Part 1, in memory (``--frames`` frames, ``--runs`` runs, medians):

  frames-to-rows  N Binance USD-M combined-stream bookTicker frames (the shape of
                  binance_usdm_bookTicker_combined_recorded.jsonl: 1,000 symbols, unique increasing ``u``) are
                  generated as bytes before timing. Timed: the live client's own consumer path. Frames are taken
                  ``--frames-per-call`` at a time (one consumer wake-up), split into socket reads of
                  ``--frames-per-read`` frames each stamped ``now_us()`` (a live connection stamps once per read),
                  run through ``Intake.process`` (the BinanceParser hot path with symbol ids, per-connection
                  sequencing, admission, COPY tuples packed as parsed: hftdb.store.packed) and ``StreamRunner.push``
                  into ``DatabaseManager.feed_sink()`` (``insert_packed_book_tickers``), yield to the loop, then
                  ``flush()``. Symbols are registered and the manager's caches warm before timing.
  writer-only     the same frames parsed before timing into BookTicker objects with ``symbol_id`` set, pushed in
                  the same chunks through ``insert_book_ticker_snapshots`` + ``flush()``.
  frames-public   (diagnostic) frames-to-rows with a sink that does not take packed rows: the same intake hands
                  plain BookTicker lists to ``insert_book_ticker_snapshots``, as before hftdb.store.packed.
  Reported: msgs/s of each, this process's CPU per frame (``time.process_time`` over the timed part), and the
  ratio frames-to-rows / writer-only (target >= 0.7). The three methods run in rotating order, each on a fresh
  database.

Part 2, over loopback websockets (``--rates``, ``--seconds`` per rate):

  An ExchangeSimulator runs in its own process (it stands for the exchange, so it must not share our event loop
  or GIL), with only its binance_usdm market generating (the other venues' generators are removed: nobody
  subscribes to them and they would only burn the shared CPU). A BinanceAdapter (channel ``bookTicker``, 1,000
  symbols synced from the simulator's REST API) streams into a real DatabaseManager (default WriterSettings,
  so batch_max_age_ms = 50). After ``--warmup`` seconds the measurement window of ``--seconds`` opens; the feed
  keeps running 2 s past its end so that the window's rows commit in steady state.

  Receipt-to-commit latency: a third process LISTENs on ``hftdb_book_tickers``; every committed writer
  transaction sends one NOTIFY from inside it, with ``max_ts`` = the newest recv_ts it holds, delivered at
  commit. The listener stamps each notification with ``now_us()`` on arrival (same host clock as the adapter's
  recv_ts). After the run every row's recv_ts in the window is read back from ``book_tickers``; a row's commit
  time is the arrival of the first notification whose ``max_ts`` >= its recv_ts (commits are in order and rows
  enter the writer in recv_ts order, which the script checks). Latency = that arrival - recv_ts, so it
  includes parse, queueing, batching, COPY, commit and the notification's delivery (an over-estimate by that
  last hop). p50/p99/max over rows. The offered rate is the simulator's ``rate``; delivered is what its ledger
  says it wrote to the socket in the window; ingested is rows committed with recv_ts in the window.
  Target: p99 < 2 x batch_max_age_ms + 10 ms = 110 ms at 50k msg/s offered.

Part 3, file replay (``--parts replay``; ``--replay-frames`` frames per capture, ``--replay-runs`` runs):

  Capture files of N frames (the Part 1 generator, one frame per line) are written to a temp dir under /tmp:
  A, and B whose first half is A's second half. Timed, each on a fresh database with the symbols registered,
  alternating which goes first: writer-only (A's frames parsed before timing, as in Part 1) and
  ``hftdb.ops.replay.ingest_file`` of A (file-replay); then, on file-replay's database, A again (replay-again:
  every row already stored) and B (half-overlap). Rows are counted after each step (A: N, A again: N, B:
  1.5 N). Reported: medians, and file-replay / writer-only (target >= 0.7) from the medians and run by run
  (the two methods of a run share its load: on a shared machine the per-run ratio is the steadier figure), the
  client's CPU time of each run, and across several N the growth of file-replay's time (target: 10x the frames
  in no more than 10x the time).

    .venv/bin/python benchmarks/bench_e2e.py --frames 200000 --runs 3
    .venv/bin/python benchmarks/bench_e2e.py --parts replay --replay-frames 1000000,10000000 --symbols 500
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hftdb import DatabaseManager, DatabaseSettings, Settings, WriterSettings, now_us  # noqa: E402
from hftdb.db import partitions, schema  # noqa: E402
from hftdb.config import StorageSettings  # noqa: E402
from hftdb.exchanges.binance import BinanceAdapter  # noqa: E402
from hftdb.exchanges.intake import Intake  # noqa: E402
from hftdb.exchanges.parse_binance import BinanceParser  # noqa: E402
from hftdb.exchanges.runner import StreamRunner  # noqa: E402
from hftdb.models import ExchangeName, Symbol  # noqa: E402
from hftdb.ops.replay import ingest_file  # noqa: E402
from hftdb.db.server import EmbeddedServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_writer import with_database  # noqa: E402

USDM = ExchangeName.BINANCE_USDM


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- data ----------------------------------------------------------------------------------------------------------


def symbol_names(n: int) -> list[str]:
    return [f"S{i:04d}USDT" for i in range(1, n + 1)]


def iter_frames(n: int, n_symbols: int, *, seed: int) -> Iterator[bytes]:
    """Combined-stream USD-M bookTicker frames, random-walk quotes, ``u`` unique and rising across all frames.

    Prices carry ~6 significant digits and move on a quarter of a symbol's updates (sizes change on every one),
    so the parser's float cache sees realistic repetition rather than all-new price strings.
    """
    rng = random.Random(seed)
    names = symbol_names(n_symbols)
    mids = [10 ** rng.uniform(-2, 4.5) for _ in names]
    decs = [max(0, 6 - len(str(int(m)))) for m in mids]
    u = 600_859_600_000
    t_ms = 1_626_992_741_000
    for _ in range(n):
        s = rng.randrange(n_symbols)
        if rng.random() < 0.25:  # most bookTicker updates change a size, not the best price
            mids[s] *= 1 + rng.gauss(0, 2e-4)
        m = mids[s]
        d = decs[s]
        tick = 10.0 ** -d
        bid = round(m, d)
        ask = bid + tick * rng.randint(1, 5)
        u += rng.randint(1, 50)
        t_ms += rng.randint(0, 1)
        name = names[s]
        yield (
            f'{{"stream":"{name.lower()}@bookTicker","data":{{"e":"bookTicker","u":{u},"s":"{name}",'
            f'"b":"{bid:.{d}f}","B":"{rng.randint(1, 90000)}","a":"{ask:.{d}f}","A":"{rng.randint(1, 90000)}",'
            f'"T":{t_ms},"E":{t_ms + rng.randint(1, 8)}}}}}'.encode()
        )


def make_frames(n: int, n_symbols: int, *, seed: int) -> list[bytes]:
    """:func:`iter_frames` as a list."""
    return list(iter_frames(n, n_symbols, seed=seed))


# -- databases -----------------------------------------------------------------------------------------------------


async def create_db(admin_dsn: str) -> tuple[str, str]:
    name = "hftdb_e2e_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')  # name is ours: hex digits
    finally:
        await admin.close()
    dsn = with_database(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await schema.migrate(conn)
        await partitions.maintain(conn, StorageSettings(), now_us(), retention=False)
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return name, dsn


async def drop_db(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def settings_for(dsn: str) -> Settings:
    return Settings(database=DatabaseSettings(dsn=dsn), writer=WriterSettings(spool_dir=None))


async def register_symbols(dsn: str, n_symbols: int) -> None:
    async with DatabaseManager(dsn, settings=settings_for(dsn)) as db:
        ex = await db.insert_exchange(USDM)
        await db.sync_symbols(USDM, [Symbol(exchange_id=ex.id, symbol=s, kind="perpetual", status="trading")
                                     for s in symbol_names(n_symbols)])


# -- part 1: frames from memory ------------------------------------------------------------------------------------


def client_intake(sink: Any, n_symbols: int) -> tuple[Intake, StreamRunner]:
    """The consumer side of one live connection (no socket): what a Session runs each batch through."""
    adapter = BinanceAdapter(USDM, sink, symbols=symbol_names(n_symbols), channels=("bookTicker",))
    runner = StreamRunner(adapter)
    return Intake(runner, adapter.new_parser()), runner


def reads_of(chunk: list[bytes], per_read: int) -> list[list[bytes]]:
    return [chunk[i:i + per_read] for i in range(0, len(chunk), per_read)]


class _PublicPath:
    """The manager as a sink without ``insert_packed_book_tickers`` (not its feed_sink()): the intake hands over plain rows and every
    call takes the public ``insert_book_ticker_snapshots`` (what the feeds did before hftdb.store.packed)."""

    def __init__(self, db: DatabaseManager) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        if name == "insert_packed_book_tickers":
            raise AttributeError(name)
        return getattr(self._db, name)


async def run_frames_to_rows(dsn: str, frames: list[bytes], per_call: int, per_read: int, n_symbols: int,
                             *, packed: bool = True) -> tuple[float, float]:
    chunks = [reads_of(frames[i:i + per_call], per_read) for i in range(0, len(frames), per_call)]
    async with DatabaseManager(dsn, settings=settings_for(dsn)) as db:
        intake, runner = client_intake(db.feed_sink() if packed else _PublicPath(db), n_symbols)
        process, push = intake.process, runner.push
        cpu = time.process_time()
        started = time.perf_counter()
        for reads in chunks:
            await push(process([(now_us(), payloads) for payloads in reads]))
            await asyncio.sleep(0)
        await db.flush()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        w = (await db.get_database_stats())["writers"]["book_tickers"]
    if w["rows_committed"] != len(frames) or w["rejects"]:
        raise SystemExit(f"frames-to-rows committed {w['rows_committed']} of {len(frames)}; rejects {w['rejects']}")
    return elapsed, cpu


async def run_frames_public(dsn: str, frames: list[bytes], per_call: int, per_read: int,
                            n_symbols: int) -> tuple[float, float]:
    return await run_frames_to_rows(dsn, frames, per_call, per_read, n_symbols, packed=False)


async def run_writer_only(dsn: str, frames: list[bytes], per_call: int, per_read: int,
                          n_symbols: int) -> tuple[float, float]:
    parse = BinanceParser(USDM).parse
    async with DatabaseManager(dsn, settings=settings_for(dsn)) as db:
        chunks = []
        for i in range(0, len(frames), per_call):
            rows = []
            for raw in frames[i:i + per_call]:
                for t in parse(raw, now_us()).book_tickers:
                    rows.append(msgspec.structs.replace(t, symbol_id=db.resolve_symbol_id(t.exchange, t.symbol)))
            chunks.append(rows)
        if any(t.symbol_id is None for c in chunks for t in c):
            raise SystemExit("writer-only: unresolved symbols")
        gc.collect()
        insert = db.insert_book_ticker_snapshots
        cpu = time.process_time()
        started = time.perf_counter()
        for rows in chunks:
            await insert(rows)
            await asyncio.sleep(0)
        await db.flush()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        w = (await db.get_database_stats())["writers"]["book_tickers"]
    if w["rows_committed"] != len(frames) or w["rejects"]:
        raise SystemExit(f"writer-only committed {w['rows_committed']} of {len(frames)}; rejects {w['rejects']}")
    return elapsed, cpu


class _NoSink:
    """The intake never calls its sink; symbol ids come from this map. It says it takes packed rows, so the
    intake packs them as it does for a DatabaseManager (the C hot path where built)."""

    def __init__(self, n_symbols: int) -> None:
        self.ids = {name: i for i, name in enumerate(symbol_names(n_symbols), 1)}

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        return self.ids.get(symbol)

    # The rest of the PackedSink protocol (hftdb.exchanges.sink), so that the intake sees a sink that takes
    # packed rows; none is called.
    async def insert_exchange(self, exchange: Any) -> Any: ...
    async def get_exchange_by_enum(self, name: Any) -> Any: ...
    async def sync_symbols(self, exchange: Any, symbols: Any) -> Any: ...
    async def insert_book_ticker_snapshots(self, rows: Any) -> int: ...
    async def insert_funding_rates(self, rows: Any) -> int: ...
    async def insert_balance_snapshots(self, rows: Any) -> int: ...
    async def flush(self) -> None: ...

    def insert_packed_book_tickers(self, rows: Any) -> None:
        raise AssertionError("intake-only never writes")


def intake_only_rate(frames: list[bytes], per_call: int, per_read: int, n_symbols: int) -> float:
    """Diagnostic: the client's intake alone (parse with symbol ids, stamps, admission, packing), msgs/s."""
    intake, _ = client_intake(_NoSink(n_symbols), n_symbols)
    chunks = [reads_of(frames[i:i + per_call], per_read) for i in range(0, len(frames), per_call)]
    started = time.perf_counter()
    for reads in chunks:
        intake.process([(now_us(), payloads) for payloads in reads])
    return len(frames) / (time.perf_counter() - started)


def parse_only_rate(frames: list[bytes]) -> float:
    """Diagnostic: ``BinanceParser.parse`` per frame with ``now_us()`` (the general API, a Parsed per frame)."""
    parse = BinanceParser(USDM).parse
    started = time.perf_counter()
    for raw in frames:
        parse(raw, now_us())
    return len(frames) / (time.perf_counter() - started)


async def part1(args: argparse.Namespace, admin_dsn: str) -> dict[str, Any]:
    log(f"generating {args.frames:,} frames over {args.symbols:,} symbols ...")
    frames = make_frames(args.frames, args.symbols, seed=args.seed)
    gc.collect()
    gc.freeze()
    methods = {"frames-to-rows": run_frames_to_rows, "writer-only": run_writer_only, "frames-public": run_frames_public}
    rates: dict[str, list[float]] = {m: [] for m in methods}
    cpu_us: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for run in range(args.runs):
        for m in names[run % len(names):] + names[:run % len(names)]:
            name, dsn = await create_db(admin_dsn)
            try:
                await register_symbols(dsn, args.symbols)
                elapsed, cpu = await methods[m](dsn, frames, args.frames_per_call, args.frames_per_read, args.symbols)
            finally:
                await drop_db(admin_dsn, name)
            rates[m].append(args.frames / elapsed)
            cpu_us[m].append(cpu / args.frames * 1e6)
            log(f"run {run + 1}/{args.runs} {m:15s} {elapsed:7.3f} s {args.frames / elapsed:>10,.0f} msgs/s "
                f"{cpu_us[m][-1]:5.2f} us CPU/frame (this process)")
    rates["intake-only"] = [intake_only_rate(frames, args.frames_per_call, args.frames_per_read, args.symbols)
                            for _ in range(args.runs)]
    rates["parse-only"] = [parse_only_rate(frames) for _ in range(args.runs)]
    med = {m: statistics.median(v) for m, v in rates.items()}
    ratio = med["frames-to-rows"] / med["writer-only"]
    print(f"\nPart 1: {args.frames:,} USD-M bookTicker frames, {args.symbols:,} symbols, {args.frames_per_call} "
          f"frames per insert call, {args.frames_per_read} per read, {args.runs} runs (median msgs/s)")
    for m, v in rates.items():
        print(f"  {m:15s} {med[m]:>10,.0f}   runs: {', '.join(f'{x:,.0f}' for x in v)}")
    cpu_med = {m: statistics.median(v) for m, v in cpu_us.items()}
    print("  CPU of this process per frame (time.process_time over the timed part; PostgreSQL not included), median: "
          + ", ".join(f"{m} {cpu_med[m]:.2f} us" for m in methods)
          + f"; ratio writer-only / frames-to-rows {cpu_med['writer-only'] / cpu_med['frames-to-rows']:.2f}")
    serial = 1 / (1 / med["intake-only"] + 1 / med["writer-only"])
    print(f"  (intake-only and parse-only are diagnostics, no database: {1e6 / med['intake-only']:.2f} and "
          f"{1e6 / med['parse-only']:.2f} us/frame; intake then write, serially, would give {serial:,.0f} msgs/s,"
          f" ratio {serial / med['writer-only']:.2f})")
    print(f"  ratio frames-to-rows / writer-only = {ratio:.2f}  (target >= 0.7: {'MET' if ratio >= 0.7 else 'NOT MET'})",
          flush=True)
    return {"median": med, "runs": rates, "ratio": ratio, "cpu_us": cpu_med}


# -- part 2: simulator over loopback -------------------------------------------------------------------------------


def _simulator_proc(rate: float, n_symbols: int, conn: Any) -> None:
    from hftdb.simulator import ExchangeSimulator

    async def main() -> None:
        sim = ExchangeSimulator(rate=rate, symbols=n_symbols, seed=7)
        # Only the venue under test generates: the others have no subscriber and would only use CPU.
        sim.markets = {USDM: sim.markets[USDM]}
        loop = asyncio.get_running_loop()
        async with sim:
            conn.send((sim.rest_url(USDM), sim.ws_url(USDM)))
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                conn.send((msg, time.time(), sim.ledger.frames(USDM.value, "bookTicker")))
                if msg == "stop":
                    return

    # The simulator stands in for the exchange: it runs on the fastest loop available, like the client.
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def _listener_proc(dsn: str, conn: Any) -> None:
    async def main() -> None:
        got: list[tuple[int, int, int]] = []

        def on_notify(_c: Any, _pid: int, _ch: str, payload: str) -> None:
            t = now_us()
            body = msgspec.json.decode(payload)
            got.append((t, body["max_ts"], body["rows"]))

        pg = await asyncpg.connect(dsn)
        await pg.add_listener("hftdb_book_tickers", on_notify)
        loop = asyncio.get_running_loop()
        conn.send("listening")
        await loop.run_in_executor(None, conn.recv)
        await asyncio.sleep(0.5)  # let the last commits' notifications arrive
        await pg.close()
        conn.send(got)

    asyncio.run(main())


async def run_rate(args: argparse.Namespace, admin_dsn: str, rate: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    name, dsn = await create_db(admin_dsn)
    sim_parent, sim_child = ctx.Pipe()
    lis_parent, lis_child = ctx.Pipe()
    sim_p = ctx.Process(target=_simulator_proc, args=(rate, args.symbols, sim_child), daemon=True)
    lis_p = ctx.Process(target=_listener_proc, args=(dsn, lis_child), daemon=True)
    loop = asyncio.get_running_loop()
    try:
        sim_p.start()
        lis_p.start()
        rest_url, ws_url = await loop.run_in_executor(None, sim_parent.recv)
        await loop.run_in_executor(None, lis_parent.recv)
        async with DatabaseManager(dsn, settings=settings_for(dsn)) as db:
            adapter = BinanceAdapter(USDM, db.feed_sink(), rest_url=rest_url, ws_url=ws_url, channels=("bookTicker",))
            async with adapter:
                await adapter.sync_symbols()
                task = asyncio.create_task(adapter.run_streams())
                try:
                    await asyncio.sleep(args.warmup)
                    t0 = now_us()
                    sim_parent.send("mark")
                    _, s0, f0 = await loop.run_in_executor(None, sim_parent.recv)
                    await asyncio.sleep(args.seconds)
                    t1 = now_us()
                    sim_parent.send("mark")
                    _, s1, f1 = await loop.run_in_executor(None, sim_parent.recv)
                    await asyncio.sleep(2.0)
                finally:
                    task.cancel()
                    try:
                        await task
                    except asyncio.CancelledError:
                        pass
                feed = adapter.stats.as_dict()
            await db.flush()
            w = (await db.get_database_stats())["writers"]["book_tickers"]
        lis_parent.send("stop")
        notes: list[tuple[int, int, int]] = await loop.run_in_executor(None, lis_parent.recv)
        sim_parent.send("stop")
        await loop.run_in_executor(None, sim_parent.recv)
        pg = await asyncpg.connect(dsn)
        try:
            recv = [r[0] for r in await pg.fetch(
                "SELECT (extract(epoch FROM recv_ts) * 1000000)::int8 FROM book_tickers"
                " WHERE recv_ts >= to_timestamp($1::float8 / 1e6) AND recv_ts < to_timestamp($2::float8 / 1e6)"
                " ORDER BY recv_ts", float(t0), float(t1))]
        finally:
            await pg.close()
    finally:
        for p in (sim_p, lis_p):
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        await drop_db(admin_dsn, name)

    notes.sort()  # by arrival
    max_ts = [n[1] for n in notes]
    out_of_order = sum(1 for a, b in zip(max_ts, max_ts[1:]) if b < a)
    arrivals = [n[0] for n in notes]
    lat_ms = []
    if not recv:
        lat_ms = [float("nan")]  # nothing committed in the window (the feed was down): no latency to speak of
    for ts in recv:
        i = bisect.bisect_left(max_ts, ts) if not out_of_order else next(k for k, m in enumerate(max_ts) if m >= ts)
        lat_ms.append((arrivals[i] - ts) / 1000)
    window_s = (t1 - t0) / 1e6
    res = {
        "offered": rate, "delivered": (f1 - f0) / (s1 - s0), "ingested": len(recv) / window_s,
        "p50_ms": pct(lat_ms, 0.50), "p99_ms": pct(lat_ms, 0.99), "max_ms": max(lat_ms),
        "commits": sum(1 for a in arrivals if t0 <= a < t1), "out_of_order": out_of_order,
        "writer_commit_p99_ms": w["commit_p99_ms"], "rejects": w["rejects"],
        "reconnects": feed["reconnects"], "stale": feed["stale"], "load": os.getloadavg()[0],
    }
    log(f"rate {rate:>8,.0f} offered: delivered {res['delivered']:>8,.0f}/s ingested {res['ingested']:>8,.0f}/s "
        f"latency p50 {res['p50_ms']:6.1f} ms p99 {res['p99_ms']:6.1f} ms max {res['max_ms']:6.1f} ms "
        f"({res['commits']} commits in window, out-of-order notifies {out_of_order}, reconnects {res['reconnects']}, "
        f"load avg {res['load']:.2f})")
    return res


async def part2(args: argparse.Namespace, admin_dsn: str) -> dict[str, Any]:
    per_rate: dict[float, list[dict[str, Any]]] = {r: [] for r in args.rates}
    for run in range(args.sim_runs):
        for rate in args.rates:
            per_rate[rate].append(await run_rate(args, admin_dsn, rate))
    age = WriterSettings().batch_max_age_ms
    target = 2 * age + 10
    print(f"\nPart 2: simulator over loopback, binance_usdm bookTicker, {args.symbols:,} symbols, {args.seconds:g} s "
          f"window per rate, {args.sim_runs} run(s) (medians); receipt-to-commit latency over rows")
    print(f"  {'offered/s':>10s} {'delivered/s':>12s} {'ingested/s':>11s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    summary = {}
    for rate, rs in per_rate.items():
        m = {k: statistics.median(r[k] for r in rs) for k in ("delivered", "ingested", "p50_ms", "p99_ms", "max_ms")}
        summary[rate] = m
        print(f"  {rate:>10,.0f} {m['delivered']:>12,.0f} {m['ingested']:>11,.0f} {m['p50_ms']:>8.1f} "
              f"{m['p99_ms']:>8.1f} {m['max_ms']:>8.1f}")
    top = min(per_rate, key=lambda r: abs(r - args.target_rate))
    p99 = summary[top]["p99_ms"]
    print(f"  p99 at {top:,.0f} offered: {p99:.1f} ms (target < 2 x {age:g} + 10 = {target:g} ms: "
          f"{'MET' if p99 < target else 'NOT MET'})", flush=True)
    return summary


# -- part 3: file replay (hftdb ingest-file) -----------------------------------------------------------------------


def write_captures(directory: Path, n: int, n_symbols: int, *, seed: int) -> tuple[Path, Path]:
    """Two capture files of ``n`` frames each: A, and B whose first half is A's second half (1.5 n frames made)."""
    a, b = directory / f"capture-{n}.jsonl", directory / f"overlap-{n}.jsonl"
    with a.open("wb") as fa, b.open("wb") as fb:
        for i, frame in enumerate(iter_frames(n + n // 2, n_symbols, seed=seed)):
            if i < n:
                fa.write(frame + b"\n")
            if i >= n // 2:
                fb.write(frame + b"\n")
    return a, b


async def committed(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM book_tickers")
    finally:
        await conn.close()


async def run_file_replay(dsn: str, a: Path, b: Path, n: int, *, overlaps: bool = True) -> dict[str, float]:
    """Seconds of: ingest-file of A into a fresh database, of A again (all duplicates), of B (half overlap)."""
    out = {}
    steps = (("file-replay", a, n), ("replay-again", a, n), ("half-overlap", b, n + n // 2))
    async with DatabaseManager(dsn, settings=settings_for(dsn)) as db:
        for name, path, stored in steps if overlaps else steps[:1]:
            gc.collect()
            cpu = time.process_time()
            started = time.perf_counter()
            result = await ingest_file(db, path, exchange=USDM, channels=["bookTicker"])
            out[name] = time.perf_counter() - started
            out[name + " cpu"] = time.process_time() - cpu
            if await committed(dsn) != stored or result.rejects:
                raise SystemExit(f"{name}: {await committed(dsn)} rows stored, expected {stored}; {result}")
            log(f"  {name:13s} {out[name]:8.2f} s {n / out[name]:>10,.0f} frames/s  ({result.duplicates:,} duplicates;"
                f" client CPU {out[name + ' cpu']:.2f} s)")
    return out


async def part3(args: argparse.Namespace, admin_dsn: str, tmp: Path) -> dict[int, Any]:
    summary: dict[int, Any] = {}
    for n in args.replay_frames:
        log(f"writing capture files of {n:,} frames over {args.symbols:,} symbols ...")
        a, b = write_captures(tmp, n, args.symbols, seed=args.seed)
        times: dict[str, list[float]] = {"writer-only": [], "file-replay": [], "replay-again": [], "half-overlap": []}
        cpus: dict[str, list[float]] = {"writer-only": [], "file-replay": []}
        ratios: list[float] = []  # file-replay / writer-only rate of each run: the two of a run share its load
        for run in range(args.replay_runs):
            for method in (("writer-only", "file-replay") if run % 2 == 0 else ("file-replay", "writer-only")):
                name, dsn = await create_db(admin_dsn)
                try:
                    await register_symbols(dsn, args.symbols)
                    if method == "writer-only":
                        frames = a.read_bytes().splitlines()
                        elapsed, cpu = await run_writer_only(dsn, frames, args.frames_per_call, args.frames_per_read,
                                                             args.symbols)
                        del frames
                        times["writer-only"].append(elapsed)
                        cpus["writer-only"].append(cpu)
                        log(f"run {run + 1} writer-only   {elapsed:8.2f} s {n / elapsed:>10,.0f} rows/s"
                            f"  (client CPU {cpu:.2f} s)")
                    else:
                        overlaps = args.overlap_runs is None or run < args.overlap_runs
                        for k, v in (await run_file_replay(dsn, a, b, n, overlaps=overlaps)).items():
                            (cpus if k.endswith(" cpu") else times)[k.removesuffix(" cpu")].append(v)
                finally:
                    await drop_db(admin_dsn, name)
            ratios.append(times["writer-only"][-1] / times["file-replay"][-1])
            log(f"run {run + 1} ratio file-replay / writer-only = {ratios[-1]:.2f}")
        a.unlink()
        b.unlink()
        med = {k: statistics.median(v) for k, v in times.items() if v}
        ratio = med["writer-only"] / med["file-replay"]
        summary[n] = {"seconds": med, "ratio": ratio}
        print(f"\nPart 3: ingest-file of {n:,} USD-M bookTicker frames, {args.symbols:,} symbols, fresh database, "
              f"{args.replay_runs} run(s) (median seconds, frames/s)")
        for k, v in med.items():
            print(f"  {k:13s} {v:8.2f} s {n / v:>10,.0f}/s   runs: {', '.join(f'{x:.2f}' for x in times[k])}")
        print(f"  ratio file-replay / writer-only = {ratio:.2f}  (target >= 0.7: {'MET' if ratio >= 0.7 else 'NOT MET'});"
              f" per run: {', '.join(f'{x:.2f}' for x in ratios)}, median {statistics.median(ratios):.2f}", flush=True)
        print("  client CPU per run, s: " + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in cpus.items()),
              flush=True)
    if len(summary) > 1:
        ns = sorted(summary)
        lo, hi = ns[0], ns[-1]
        growth = summary[hi]["seconds"]["file-replay"] / summary[lo]["seconds"]["file-replay"]
        print(f"  file-replay {hi:,} / {lo:,} frames: {growth:.2f}x the time for {hi / lo:g}x the frames", flush=True)
    return summary


# -- driver --------------------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hftdb-e2e-"))
    tmp.chmod(0o755)
    server = None
    try:
        admin_dsn = os.environ.get("HFTDB_BENCH_DSN")
        if not admin_dsn:
            server = EmbeddedServer(tmp / "pg")
            admin_dsn = await server.start()
        print(f"loop {type(asyncio.get_running_loop()).__module__.split('.')[0]}, {os.cpu_count()} CPUs", flush=True)
        if "memory" in args.parts:
            await part1(args, admin_dsn)
        if "sim" in args.parts:
            await part2(args, admin_dsn)
        if "replay" in args.parts:
            await part3(args, admin_dsn, tmp)
    finally:
        if server is not None:
            await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=200_000, help="frames per in-memory run (default 200,000)")
    p.add_argument("--runs", type=int, default=3, help="in-memory runs of each method; medians (default 3)")
    p.add_argument("--symbols", type=int, default=1_000, help="symbols (default 1,000)")
    p.add_argument("--frames-per-call", type=int, default=100, help="frames per insert call (default 100)")
    p.add_argument("--frames-per-read", type=int, default=10,
                   help="frames per simulated socket read, one receive stamp each (default 10)")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[5_000.0, 20_000.0, 50_000.0],
                   help="offered simulator rates, msg/s, comma-separated (default 5000,20000,50000)")
    p.add_argument("--target-rate", type=float, default=50_000.0,
                   help="offered rate the latency target is judged at (default 50,000)")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window per rate (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds streamed before the window (default 3)")
    p.add_argument("--sim-runs", type=int, default=1, help="runs of each simulator rate; medians (default 1)")
    p.add_argument("--parts", type=lambda s: s.split(","), default=["memory", "sim"], help="memory,sim,replay")
    p.add_argument("--replay-frames", type=lambda s: [int(x) for x in s.split(",")], default=[1_000_000],
                   help="frames per capture file of the replay part, comma-separated (default 1000000)")
    p.add_argument("--replay-runs", type=int, default=1, help="runs of each replay method; medians (default 1)")
    p.add_argument("--overlap-runs", type=int, default=None,
                   help="replay-again and half-overlap in the first K replay runs only (default: all)")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(arguments))
    else:
        uvloop.run(main(arguments))

"""A long fuzz run of every channel: many thousands of mutated real frames through the intake and ingest-file.

The default test run (tests/test_fuzz.py) draws a few seeded examples per channel and mutation family; this
script draws many more (unseeded unless ``--seed``) with the same strategies (tests/fuzzing.py) and checks the
same invariants:

1. **intake**: for each drawn plan (good frames interleaved with mutations of every family, in random socket
   reads), no exception escapes, each frame alone gives what its family says, and the interleaved run gives the
   sum of the frames alone. Counted: plans and frames checked, the first failure (Hypothesis shrinks it).
2. **ingest-file**: all the frames drawn for the channel, in one replay (:func:`hftdb.ops.replay.replay_frames`)
   into a fresh database of an embedded PostgreSQL (or ``HFTDB_BENCH_DSN``), bounded by ``--timeout``; then the
   rows are counted in the database by each frame's own key. Printed: frames/s of the replay, rejects by
   reason, rows stored and expected, and whether every good row is stored once and no bad one.

Nothing here asserts a time; the exit status is 1 when an invariant failed.

    .venv/bin/python benchmarks/fuzz_long.py                       # 300 plans per channel (~6,000 frames)
    .venv/bin/python benchmarks/fuzz_long.py --plans 1000 --channels okx_swap-bbo-tbt
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzzing import (CHANNELS, FAMILIES, GOOD, MISSING, Plan, Step, check_intake, check_stored, plans,  # noqa: E402
                     stored, wanted)

from hftdb import DatabaseManager  # noqa: E402
from hftdb.config import load_settings  # noqa: E402
from hftdb.ops.replay import replay_frames  # noqa: E402
from hftdb.db.server import EmbeddedServer  # noqa: E402

HOSTILE = tuple(f for f in FAMILIES if f != "valid")


def _settings():
    base = load_settings(environ={})
    return msgspec.structs.replace(base, writer=msgspec.structs.replace(base.writer, spool_dir=None))


def intake_run(cid: str, n_plans: int, rng_seed: int | None, serials, sink,
               families: tuple[str, ...] = HOSTILE) -> tuple[list[Step], dict]:
    """Draw ``n_plans`` plans of channel ``cid`` and check each through the intake; return every step drawn."""
    ch = CHANNELS[cid]
    steps: list[Step] = []
    report: dict = {"plans": 0, "frames": 0, "failed": 0, "failures": Counter()}

    # Every plan is checked and kept, failing or not, so that the ingest below gets them all: a failure is
    # counted by its first line (tests/test_fuzz.py's long profile is the one that shrinks failures).
    @settings(max_examples=n_plans, deadline=None, database=None, derandomize=False, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(plan=plans(ch, families, serials, max_frames=40))
    def prop(plan: Plan) -> None:
        report["plans"] += 1
        report["frames"] += len(plan.steps)
        steps.extend(plan.steps)
        try:
            check_intake(ch, sink, plan)
        except Exception as exc:  # a falsified invariant, or an exception that escaped a frame
            report["failed"] += 1
            first = str(exc).splitlines()[0].split(": Outcome(")[0]  # the message, without this plan's keys
            report["failures"][f"{type(exc).__name__}: {first[:160]}"] += 1

    if rng_seed is not None:
        prop = seed(rng_seed)(prop)
    t0 = time.perf_counter()
    prop()
    report["seconds"] = time.perf_counter() - t0
    report["failure"] = None if not report["failed"] else (
        f"{report['failed']} of {report['plans']} plans: " + "; ".join(
            f"{n}x {msg}" for msg, n in report["failures"].most_common(4)))
    return steps, report


async def ingest_run(dsn: str, cid: str, steps: list[Step], timeout: float) -> dict:
    """All ``steps`` of ``cid`` in one replay into the database at ``dsn``; what came of it."""
    ch = CHANNELS[cid]
    # Bybit's book needs a snapshot after a frame that may have dropped it: the steps were drawn so, plan by plan.
    frames = [s.raw for s in steps]
    report: dict = {"frames": len(frames)}
    async with DatabaseManager(dsn, settings=_settings()) as db:
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(
                replay_frames(db, frames, exchange=ch.venue, channels=[ch.channel]), timeout)
        except TimeoutError:
            report["failure"] = f"the replay did not finish in {timeout}s (hang)"
            return report
        except Exception as exc:
            report["failure"] = f"the replay raised {type(exc).__name__}: {str(exc)[:300]}"
            return report
        report["seconds"] = time.perf_counter() - t0
    report["frames_per_s"] = len(frames) / report["seconds"]
    report["rejects"] = dict(sorted(result.rejects.items()))
    report["committed"] = {t: n for t, n in result.committed.items() if n}
    report["duplicates"] = result.duplicates
    counts = await stored(dsn, ch, [s.serial for s in steps])
    report["rows_expected"] = sum(wanted(ch, steps).values())
    report["rows_stored"] = sum(counts.values())
    report["bad_frames"] = sum(1 for s in steps if s.lost(ch))
    report["failure"] = "; ".join(check_stored(ch, steps, counts, result.rejects)) or None
    return report


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=300, help="plans drawn per channel (1-40 frames each)")
    parser.add_argument("--channels", nargs="*", default=list(CHANNELS), choices=list(CHANNELS) or None)
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random)")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on one channel's replay, seconds")
    parser.add_argument("--families", nargs="*", default=list(HOSTILE), choices=list(HOSTILE),
                        help="mutation families to draw (default: all)")
    parser.add_argument("--skip-ingest", action="store_true", help="only the intake invariants")
    parser.add_argument("--log", action="store_true", help="show hftdb's reject log lines (thousands of them)")
    args = parser.parse_args()
    if MISSING is not None:
        print(f"fuzz_long.py: {MISSING}", file=sys.stderr)
        return 1
    if not args.log:
        logging.getLogger("hftdb").setLevel(logging.CRITICAL)

    server = None
    admin = os.environ.get("HFTDB_BENCH_DSN")
    tmp = tempfile.TemporaryDirectory(prefix="hftdb-fuzz-")
    if admin is None:
        server = EmbeddedServer(Path(tmp.name) / "pg")
        admin = await server.start()
    serials = itertools.count(2, 2).__next__
    ok = True
    try:
        sink = DatabaseManager(admin, settings=_settings()).feed_sink()  # never opened: the intake asks it for no I/O
        for cid in args.channels:
            steps, intake = intake_run(cid, args.plans, args.seed, serials, sink, tuple(args.families))
            outcomes = Counter(s.outcome for s in steps)
            families = Counter(s.family for s in steps if s.outcome != GOOD)
            print(f"== {cid}")
            print(f"  intake: {intake['plans']} plans, {intake['frames']} frames checked in {intake['seconds']:.1f}s "
                  f"({intake['frames'] / max(intake['seconds'], 1e-9):,.0f} frames/s incl. each frame alone); "
                  f"{'OK' if intake['failure'] is None else 'FAILED: ' + intake['failure']}")
            print(f"  frames drawn: {dict(outcomes)}; hostile by family: {dict(sorted(families.items()))}")
            ok = ok and intake["failure"] is None
            if args.skip_ingest or not steps:
                continue
            name = "hftdb_fuzz_" + uuid.uuid4().hex[:10]
            conn = await asyncpg.connect(admin)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            dsn = urlunsplit(urlsplit(admin)._replace(path="/" + name))
            ingest = await ingest_run(dsn, cid, steps, args.timeout)
            if "seconds" in ingest:
                print(f"  ingest-file: {ingest['frames']} frames in {ingest['seconds']:.2f}s = "
                      f"{ingest['frames_per_s']:,.0f} frames/s; committed {ingest['committed']}; "
                      f"duplicates {ingest['duplicates']}")
                print(f"  rejects: {ingest['rejects']} (bad frames: {ingest['bad_frames']})")
                print(f"  rows stored {ingest['rows_stored']} of {ingest['rows_expected']} expected; "
                      f"{'OK' if ingest['failure'] is None else 'FAILED: ' + ingest['failure']}")
            else:
                print(f"  ingest-file: FAILED: {ingest['failure']}")
            ok = ok and ingest["failure"] is None
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
    finally:
        if server is not None:
            await server.stop()
        tmp.cleanup()
    print("invariants:", "all held" if ok else "FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""``/metrics`` rendering: hftdb's hand-written exposition against prometheus_client's, on one daemon snapshot.

Both walk the same snapshot with :func:`hftdb.service.metrics.collect` (six venues, three writers, nine tables, four
caches: ~330 lines); the prometheus_client side builds ``CounterMetricFamily``/``GaugeMetricFamily`` objects,
registers them through a custom collector in a fresh ``CollectorRegistry`` and renders with ``generate_latest``.
Prints the median time of one render of each, alternating, and whether the two declare the same families.

    .venv/bin/pip install prometheus_client   # not a dependency of hftdb
    .venv/bin/python benchmarks/bench_metrics.py [--rounds 5] [--renders 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from hftdb.service import metrics


class _PromFamily:
    __slots__ = ("metric", "sample")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        # prometheus_client names a counter family without _total and adds it to the samples and TYPE line.
        self.sample = metric.name + ("_total" if metric.type == "counter" else "")

    def add(self, value: float | int | bool | None, **labels: str) -> None:
        if value is not None:
            self.metric.add_sample(self.sample, labels, float(value))


class _PromFamilies:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.families: dict[str, _PromFamily] = {}

    def family(self, name: str, kind: str, help_text: str) -> _PromFamily:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        full = f"{self.prefix}_{name}"
        fam = self.families.get(full)
        if fam is None:
            metric = (CounterMetricFamily(full.removesuffix("_total"), help_text) if kind == "counter"
                      else GaugeMetricFamily(full, help_text))
            fam = self.families[full] = _PromFamily(metric)
        return fam

    def collect(self) -> Any:
        return iter([f.metric for f in self.families.values()])


def render_prometheus_client(snapshot: dict[str, Any]) -> str:
    """The snapshot rendered by prometheus_client (a custom collector in its own registry)."""
    from prometheus_client import CollectorRegistry, generate_latest

    out = _PromFamilies("hftdb")
    metrics.collect(out, snapshot)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(out)  # type: ignore[arg-type]
    return generate_latest(registry).decode()


# The snapshot keys hftdb.service.metrics exports (FeedStats and writer snapshot counters).
_FEED_COUNTERS = ("messages", "duplicates", "gaps", "missed_ids", "reconnects", "rollovers", "resyncs", "stale",
                  "errors", "sink_errors", "dropped_rows", "rest_errors")
_WRITER_COUNTERS = ("rows_accepted", "rows_committed", "batches_committed", "batches_spooled", "batches_replayed",
                    "duplicates_skipped", "retries", "rows_dropped")
_WRITER_GAUGES = ("rows_pending", "rows_in_memory", "batches_queued", "spool_bytes")


def snapshot() -> dict[str, Any]:
    """A daemon snapshot of the size a six-venue deployment serves."""
    feeds = {}
    for venue in ("binance_spot", "binance_usdm", "bybit_spot", "bybit_linear", "okx_spot", "okx_swap"):
        f: dict[str, Any] = {"live": True, "connections": 3, "last_message_age_s": 0.01,
                             "rejects_by_reason": {"bad_symbol": 3, "wrong_market": 17, "bad_time": 2}}
        f.update({name: 123_456 for name in _FEED_COUNTERS})
        f.update(book_rows=98_765_432, funding_rows=1_234, balance_rows=12)
        feeds[venue] = f
    writers = {}
    for table in ("book_tickers", "funding_rates", "balances"):
        w: dict[str, Any] = {name: 7_654_321 for name in _WRITER_COUNTERS}
        w.update({name: 12 for name in _WRITER_GAUGES})
        w.update(commit_p50_ms=12.5, commit_p99_ms=80.1, mean_batch_rows=9_876.5,
                 rejects={"bid_nan": 2, "crossed": 5})
        writers[table] = w
    tables = {t: {"bytes": 123_456_789, "estimated_rows": 1_234_567, "partitions": 7} for t in
              ("exchanges", "symbols", "book_tickers", "book_tickers_latest", "funding_rates",
               "funding_rates_latest", "balances", "balances_latest", "ingest_batches")}
    return {"version": "0.1.0", "mode": "live", "uptime_s": 1234.5, "health": {"ok": True},
            "maintenance": {"runs": 3, "failures": 0}, "feeds": feeds, "writers": writers,
            "database": {"ok": True, "latency_ms": 1.2}, "tables": tables,
            "caches": {c: {"hits": 1000, "misses": 3, "expirations": 1, "size": 1000}
                       for c in ("exchanges", "symbols_by_id", "symbol_ids", "latest")},
            "pool": {"size": 5, "idle": 3, "max": 10}}


def _median_us(fn: Any, snap: dict[str, Any], renders: int) -> float:
    times = []
    for _ in range(renders):
        started = time.perf_counter()
        fn(snap)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--renders", type=int, default=300, help="renders timed per round and side (default 300)")
    args = p.parse_args()
    snap = snapshot()
    hand, lib = metrics.render(snap), render_prometheus_client(snap)
    same = set(metrics.family_names(hand)) == set(metrics.family_names(lib))
    print(f"lines: hand-written {len(hand.splitlines())}, prometheus_client {len(lib.splitlines())}; "
          f"same families: {same}")
    a, b = [], []
    for _ in range(args.rounds):
        a.append(_median_us(metrics.render, snap, args.renders))
        b.append(_median_us(render_prometheus_client, snap, args.renders))
    print(f"one render, median of {args.rounds} rounds: hand-written {statistics.median(a):.0f} us, "
          f"prometheus_client {statistics.median(b):.0f} us")


if __name__ == "__main__":
    main()

"""Cache lookups on the hot path: TTLCache.get (hit and miss) and DatabaseManager.resolve_symbol_id.

The budget is under a microsecond per lookup with a warm cache of 10,000 symbols. Each figure includes
pytest-benchmark's per-call loop overhead; ``test_baseline_dict_get`` (a bare dict.get on the same keys) shows
how much of it that is.

    .venv/bin/python -m pytest benchmarks/bench_cache.py --benchmark-only
"""

from __future__ import annotations

import pytest

from hftdb.db.cache import TTLCache

from conftest import WARM_SYMBOLS, symbol_name

EXCHANGE = "binance_spot"
HOT = (EXCHANGE, symbol_name(WARM_SYMBOLS // 2))
ABSENT = (EXCHANGE, "NOSUCHUSDT")

# At least 100 µs per round, so each round loops many calls and the timer's own cost is amortized (left to its
# calibration, pytest-benchmark sometimes settles on one call per round, which measures perf_counter instead).
pytestmark = pytest.mark.benchmark(min_time=0.0001, warmup=True)


@pytest.fixture(scope="module")
def warm_cache() -> TTLCache[tuple[str, str], int]:
    cache = TTLCache[tuple[str, str], int](300.0)
    for i in range(WARM_SYMBOLS):
        cache.set((EXCHANGE, symbol_name(i)), i + 1)
    return cache


def test_baseline_dict_get(benchmark):
    data = {(EXCHANGE, symbol_name(i)): i + 1 for i in range(WARM_SYMBOLS)}
    assert benchmark(data.get, HOT) == WARM_SYMBOLS // 2 + 1


def test_ttlcache_get_hit(benchmark, warm_cache):
    assert benchmark(warm_cache.get, HOT) == WARM_SYMBOLS // 2 + 1
    assert warm_cache.misses == 0


def test_ttlcache_get_miss(benchmark, warm_cache):
    assert benchmark(warm_cache.get, ABSENT) is None
    assert warm_cache.misses > 0


def test_resolve_symbol_id_hit(benchmark, warm_db):
    assert benchmark(warm_db.resolve_symbol_id, *HOT) is not None


def test_resolve_symbol_id_miss(benchmark, warm_db):
    assert benchmark(warm_db.resolve_symbol_id, *ABSENT) is None

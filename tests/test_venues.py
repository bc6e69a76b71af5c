"""The venue registry (hftdb.venues) against the parts that still spell venues out: the ExchangeName enum, the
config's venue sections and the feeds' adapter and parser maps."""

import msgspec

from hftdb import venues
from hftdb.config import ExchangesSettings
from hftdb.exchanges.registry import ADAPTERS, PARSERS
from hftdb.models import ExchangeName


def test_every_exchange_name_is_one_registered_venue():
    assert [v.name for v in venues.VENUES] == list(ExchangeName)
    assert venues.NAMES == tuple(v.value for v in ExchangeName)
    assert all(venues.spec(v) is venues.spec(v.value) is not None for v in ExchangeName)
    assert venues.spec("nope") is None


def test_config_sections_and_feed_classes_follow_the_registry():
    fields = [f.name for f in msgspec.structs.fields(ExchangesSettings)]
    assert fields[:len(venues.NAMES)] == list(venues.NAMES)
    for v in venues.VENUES:
        assert ADAPTERS[v.name].__name__ == v.adapter, v.name
        assert PARSERS[v.name].__name__ == v.parser, v.name
        assert v.channels and len(set(v.channels)) == len(v.channels), v.name


def test_feed_classes_and_simulator_hosts_serve_what_the_registry_says():
    from hftdb.simulator.server import HOST_OF, ExchangeSimulator

    sim = ExchangeSimulator()  # no I/O until started
    for v in venues.VENUES:
        assert v.name in ADAPTERS[v.name].venues and v.name in PARSERS[v.name].venues, v.name
        assert HOST_OF[v.name] == v.simulator_host
        assert v.name in sim.hosts[v.simulator_host].markets, v.name
    assert sorted(n for h in sim.hosts.values() for n in h.markets) == sorted(ExchangeName)

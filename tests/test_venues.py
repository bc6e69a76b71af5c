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

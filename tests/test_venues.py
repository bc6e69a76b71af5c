"""The venue registry (hftdb.venues) against the parts that still spell venues out: the ExchangeName enum, the
config's venue sections and the feeds' adapter and parser maps; and against the parts that read it: the adapters'
URLs and channels, the simulator's channels and symbols, config's venue sections."""

import re
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest

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


EXCHANGES = Path(__file__).resolve().parent.parent / "hftdb" / "exchanges"
_URL = re.compile(r"\b(?:https?|wss?)://[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def _hard_coded_urls(source: str) -> list[str]:
    """The exchange URLs and host names written out in ``source``."""
    hosts = {urlsplit(url).hostname for v in venues.VENUES for url in (v.rest_url, v.ws_url)}
    return _URL.findall(source) + sorted(h for h in hosts if h and h in source)


def test_no_adapter_or_parser_writes_an_exchange_url_out():
    sources = sorted(EXCHANGES.rglob("*.py"))
    assert {"binance.py", "bybit.py", "okx.py", "base.py", "adapter.py"} <= {p.name for p in sources}
    for path in sources:
        assert _hard_coded_urls(path.read_text()) == [], path
    # the scan sees one: the URLs the adapters wrote out before the registry held them
    assert _hard_coded_urls('default_ws_url = {_SPOT: "wss://stream.binance.com:9443"}') == [
        "wss://stream.binance.com", "stream.binance.com"]
    assert _hard_coded_urls('base = "api.bybit.com"') == ["api.bybit.com"]


def test_adapters_take_their_urls_and_channels_from_the_registry():
    for v in venues.VENUES:
        cls = ADAPTERS[v.name]
        assert cls.default_rest_url[v.name] == v.rest_url, v.name
        assert cls.default_ws_url[v.name] == v.ws_url, v.name
        assert cls.default_channels[v.name] == v.default_channels, v.name
        adapter = cls(v.name, sink=None)  # no I/O until started
        assert (adapter.rest_url, adapter.ws_url) == (v.rest_url, v.ws_url), v.name
        assert adapter.channels == v.default_channels, v.name
        assert adapter.funding_channels == v.funding_channels, v.name
        assert adapter.streams_funding == bool(set(v.default_channels) & set(v.funding_channels)), v.name
        assert adapter.ws_endpoint().startswith(v.ws_url + "/"), v.name
        other = cls(v.name, sink=None, rest_url="http://127.0.0.1:1/", ws_url="ws://127.0.0.1:2")
        assert (other.rest_url, other.ws_url) == ("http://127.0.0.1:1", "ws://127.0.0.1:2"), v.name
    # the adapter modules declare none of these facts themselves
    for cls in set(ADAPTERS.values()):
        assert not {"default_rest_url", "default_ws_url", "default_channels", "funding_channels"} & set(vars(cls)), cls


def test_the_simulator_serves_the_registry_channels_and_symbols():
    from hftdb.simulator.server import ExchangeSimulator

    sim = ExchangeSimulator(symbols=2)  # no I/O until started
    for v in venues.VENUES:
        assert sim.hosts[v.simulator_host].channels[v.name] == (v.book_channels, v.funding_channels), v.name
        assert sim.hosts[v.simulator_host].name == v.simulator_host, v.name
        assert sim.symbols(v.name)[0] == v.native_symbol("BTC", "USDT"), v.name
    assert venues.spec("okx_swap").native_symbol("BTC", "USDT") == "BTC-USDT-SWAP"


def test_config_names_no_venue():
    source = (Path(venues.__file__).parent / "config.py").read_text()
    for name in venues.NAMES:
        assert not re.search(rf"^\s+{name}\s*:", source, re.MULTILINE), name  # no field written out per venue


def _spec(**changes):
    return msgspec.structs.replace(venues.VENUES[1], **changes)


@pytest.mark.parametrize(("changes", "message"), [
    ({"channels": ()}, "channels must name each channel once"),
    ({"channels": ("a", "a")}, "channels must name each channel once"),
    ({"default_channels": ()}, "default_channels must be the first of channels"),
    ({"default_channels": ("markPrice@1s",)}, "default_channels must be the first of channels"),
    ({"funding_channels": ("fundingRate",)}, "are not all channels"),
    ({"rest_url": "api.binance.com"}, "rest_url must be a https:// base URL"),
    ({"ws_url": "wss://fstream.binance.com/"}, "ws_url must be a wss:// base URL"),
    ({"symbol_format": "{base}USDT"}, "symbol_format must hold {base} and {quote} once each"),
])
def test_a_venue_spec_that_contradicts_itself_is_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _spec(**changes)


def test_default_toml_lists_each_venue_channels_as_the_registry():
    text = (Path(venues.__file__).parent.parent / "config" / "default.toml").read_text()
    for v in venues.VENUES:
        m = re.search(rf"^\[exchanges\.{v.name.value}\]\n# channels: (.*)$", text, re.MULTILINE)
        assert m, v.name
        # "bookTicker, markPrice@1s (funding, default), markPrice (every 3 s)": the names, notes dropped
        listed = tuple(re.sub(r"\([^)]*\)", "", m.group(1)).replace(" ", "").split(","))
        assert listed == v.channels, v.name

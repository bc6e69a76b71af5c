"""The registry of venues: one entry per market hftdb streams, read by config, the catalog, the CLI, the adapters
(URLs, default and funding channels) and the simulator (hosts, channels, native symbols) instead of each writing
the facts out.

A venue is one market of one exchange (spot and derivatives are separate venues: their native symbols collide).
Adding one is a :class:`VenueSpec` here plus the files listed under "Adding a table or a venue" in docs/ARCHITECTURE.md
(``hftdb/exchanges/_template`` is the adapter's starting point).

Bottom layer: no I/O, and no import but :class:`~hftdb.models.ExchangeName`. The adapter and parser are named,
not imported, so that this module stays below the feeds (``hftdb.exchanges.registry`` maps the names to classes,
and ``tests/test_venues.py`` holds the two equal).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from .models import ExchangeName

__all__ = ["VenueSpec", "VENUES", "NAMES", "CHANNELS", "spec", "served_by"]


class VenueSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What hftdb knows about one venue."""

    #: The venue's name, as stored in ``exchanges.name``.
    name: ExchangeName
    #: The market a newly registered exchange of this venue gets.
    market: Literal["spot", "derivatives"]
    #: The channels its adapter can stream, as named in the venue's own API, its defaults first.
    channels: tuple[str, ...]
    #: The channels streamed when none are asked for (config's ``channels = []``): the first of ``channels``.
    default_channels: tuple[str, ...]
    #: The channels whose payloads carry funding rates (the simulator streams them at the funding pace; the
    #: adapter's REST funding fallback stands down while one of them delivers).
    funding_channels: tuple[str, ...] = ()
    #: The base URL of the venue's REST API (the adapter adds each request's path).
    rest_url: str
    #: The base URL of the venue's public websocket streams (the adapter adds the venue's stream path).
    ws_url: str
    #: The venue's native name of an instrument, a format of ``{base}`` and ``{quote}`` (``BTCUSDT`` is
    #: ``"{base}{quote}"``); the simulator names its instruments with it.
    symbol_format: str
    #: The adapter class in :mod:`hftdb.exchanges` (``hftdb.exchanges.registry.ADAPTERS``).
    adapter: str
    #: The payload parser class in :mod:`hftdb.exchanges` (``hftdb.exchanges.registry.PARSERS``).
    parser: str
    #: The host of the local simulator serving it (one port per host; a host may serve several venues).
    simulator_host: str

    def __post_init__(self) -> None:
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"{self.name.value}: channels must name each channel once, got {self.channels!r}")
        if not self.default_channels or self.channels[:len(self.default_channels)] != self.default_channels:
            raise ValueError(f"{self.name.value}: default_channels must be the first of channels {self.channels!r}, "
                             f"got {self.default_channels!r}")
        if not set(self.funding_channels) <= set(self.channels):
            raise ValueError(f"{self.name.value}: funding_channels {self.funding_channels!r} are not all channels")
        if self.symbol_format.count("{base}") != 1 or self.symbol_format.count("{quote}") != 1:
            raise ValueError(f"{self.name.value}: symbol_format must hold {{base}} and {{quote}} once each, "
                             f"got {self.symbol_format!r}")
        for field, url, schemes in (("rest_url", self.rest_url, ("https://", "http://")),
                                    ("ws_url", self.ws_url, ("wss://", "ws://"))):
            if not url.startswith(schemes) or url.endswith("/"):
                raise ValueError(f"{self.name.value}: {field} must be a {schemes[0]} base URL without a trailing /, "
                                 f"got {url!r}")

    def native_symbol(self, base: str, quote: str) -> str:
        """The venue's native symbol of ``base``/``quote`` (``BTC``, ``USDT`` -> ``BTC-USDT-SWAP`` on okx_swap)."""
        return self.symbol_format.format(base=base, quote=quote)

    @property
    def book_channels(self) -> tuple[str, ...]:
        """The channels that are not funding channels (quotes), in registry order."""
        return tuple(c for c in self.channels if c not in self.funding_channels)


#: Every venue, in the order config, reports and the simulator list them.
VENUES: Final[tuple[VenueSpec, ...]] = (
    VenueSpec(
        name=ExchangeName.BINANCE_SPOT, market="spot",
        channels=("bookTicker",), default_channels=("bookTicker",),
        rest_url="https://api.binance.com", ws_url="wss://stream.binance.com:9443",
        symbol_format="{base}{quote}",
        adapter="BinanceAdapter", parser="BinanceParser", simulator_host="binance_spot",
    ),
    VenueSpec(
        name=ExchangeName.BINANCE_USDM, market="derivatives",
        channels=("bookTicker", "markPrice@1s", "markPrice"), default_channels=("bookTicker", "markPrice@1s"),
        funding_channels=("markPrice@1s", "markPrice"),
        rest_url="https://fapi.binance.com", ws_url="wss://fstream.binance.com",
        symbol_format="{base}{quote}",
        adapter="BinanceAdapter", parser="BinanceParser", simulator_host="binance_usdm",
    ),
    VenueSpec(
        name=ExchangeName.BYBIT_SPOT, market="spot",
        channels=("orderbook.1",), default_channels=("orderbook.1",),
        rest_url="https://api.bybit.com", ws_url="wss://stream.bybit.com",
        symbol_format="{base}{quote}",
        adapter="BybitAdapter", parser="BybitParser", simulator_host="bybit",
    ),
    VenueSpec(
        name=ExchangeName.BYBIT_LINEAR, market="derivatives",
        channels=("orderbook.1", "tickers"), default_channels=("orderbook.1", "tickers"),
        funding_channels=("tickers",),  # linear tickers carry fundingRate
        rest_url="https://api.bybit.com", ws_url="wss://stream.bybit.com",
        symbol_format="{base}{quote}",
        adapter="BybitAdapter", parser="BybitParser", simulator_host="bybit",
    ),
    VenueSpec(
        name=ExchangeName.OKX_SPOT, market="spot",
        channels=("bbo-tbt", "tickers"), default_channels=("bbo-tbt",),
        rest_url="https://www.okx.com", ws_url="wss://ws.okx.com:8443",
        symbol_format="{base}-{quote}",
        adapter="OkxAdapter", parser="OkxParser", simulator_host="okx",
    ),
    VenueSpec(
        name=ExchangeName.OKX_SWAP, market="derivatives",
        channels=("bbo-tbt", "funding-rate", "tickers"), default_channels=("bbo-tbt", "funding-rate"),
        funding_channels=("funding-rate",),
        rest_url="https://www.okx.com", ws_url="wss://ws.okx.com:8443",
        symbol_format="{base}-{quote}-SWAP",
        adapter="OkxAdapter", parser="OkxParser", simulator_host="okx",
    ),
)

#: The venue names, in registry order.
NAMES: Final[tuple[str, ...]] = tuple(v.name.value for v in VENUES)
#: The channels of each venue by name (its defaults first).
CHANNELS: Final[dict[str, tuple[str, ...]]] = {v.name.value: v.channels for v in VENUES}

_BY_NAME: Final = {v.name.value: v for v in VENUES}


def spec(name: ExchangeName | str) -> VenueSpec | None:
    """The entry of venue ``name``, or None for a name no venue has."""
    return _BY_NAME.get(name.value if isinstance(name, ExchangeName) else name)


def served_by(cls_name: str) -> tuple[ExchangeName, ...]:
    """The venues whose adapter or parser is the class named ``cls_name``, in registry order (what that class
    declares it serves)."""
    return tuple(v.name for v in VENUES if cls_name in (v.adapter, v.parser))

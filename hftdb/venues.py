"""The registry of venues: one entry per market hftdb streams, read by config, the catalog, the CLI and the
simulator instead of each writing the facts out.

A venue is one market of one exchange (spot and derivatives are separate venues: their native symbols collide).
Adding one is a :class:`VenueSpec` here plus the files listed under "Adding a venue" in docs/ARCHITECTURE.md
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
    #: The adapter class in :mod:`hftdb.exchanges` (``hftdb.exchanges.registry.ADAPTERS``).
    adapter: str
    #: The payload parser class in :mod:`hftdb.exchanges` (``hftdb.exchanges.registry.PARSERS``).
    parser: str
    #: The host of the local simulator serving it (one port per host; a host may serve several venues).
    simulator_host: str


#: Every venue, in the order config, reports and the simulator list them.
VENUES: Final[tuple[VenueSpec, ...]] = (
    VenueSpec(name=ExchangeName.BINANCE_SPOT, market="spot", channels=("bookTicker",),
              adapter="BinanceAdapter", parser="BinanceParser", simulator_host="binance_spot"),
    VenueSpec(name=ExchangeName.BINANCE_USDM, market="derivatives", channels=("bookTicker", "markPrice@1s", "markPrice"),
              adapter="BinanceAdapter", parser="BinanceParser", simulator_host="binance_usdm"),
    VenueSpec(name=ExchangeName.BYBIT_SPOT, market="spot", channels=("orderbook.1",),
              adapter="BybitAdapter", parser="BybitParser", simulator_host="bybit"),
    VenueSpec(name=ExchangeName.BYBIT_LINEAR, market="derivatives", channels=("orderbook.1", "tickers"),
              adapter="BybitAdapter", parser="BybitParser", simulator_host="bybit"),
    VenueSpec(name=ExchangeName.OKX_SPOT, market="spot", channels=("bbo-tbt", "tickers"),
              adapter="OkxAdapter", parser="OkxParser", simulator_host="okx"),
    VenueSpec(name=ExchangeName.OKX_SWAP, market="derivatives", channels=("bbo-tbt", "funding-rate", "tickers"),
              adapter="OkxAdapter", parser="OkxParser", simulator_host="okx"),
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

"""Which adapter and parser serve each venue: the classes :data:`hftdb.venues.VENUES` names, by venue."""

from __future__ import annotations

from typing import Any

from ..models import ExchangeName
from ..venues import VENUES
from .base import ExchangeAdapter
from .binance import BinanceAdapter
from .bybit import BybitAdapter
from .okx import OkxAdapter
from .sink import Sink
from .parse_binance import BinanceParser
from .parse_bybit import BybitParser
from .parse_okx import OkxParser

__all__ = ["ADAPTERS", "PARSERS", "adapter_class", "create_adapter", "create_parser"]

_ADAPTER_CLASSES: dict[str, type[ExchangeAdapter]] = {c.__name__: c for c in (BinanceAdapter, BybitAdapter, OkxAdapter)}
_PARSER_CLASSES: dict[str, type] = {c.__name__: c for c in (BinanceParser, BybitParser, OkxParser)}

#: the adapter class of every venue
ADAPTERS: dict[ExchangeName, type[ExchangeAdapter]] = {v.name: _ADAPTER_CLASSES[v.adapter] for v in VENUES}
#: the parser class of every venue
PARSERS: dict[ExchangeName, type] = {v.name: _PARSER_CLASSES[v.parser] for v in VENUES}


def adapter_class(venue: ExchangeName | str) -> type[ExchangeAdapter]:
    """The adapter class serving ``venue``; ``ValueError`` for an unknown venue."""
    try:
        return ADAPTERS[ExchangeName(venue)]
    except ValueError:
        raise ValueError(f"venue must be one of {[v.value for v in ExchangeName]}, got {venue!r}") from None


def create_adapter(venue: ExchangeName | str, sink: Sink, **kwargs: Any) -> ExchangeAdapter:
    """An adapter of ``venue`` writing to ``sink``; ``kwargs`` go to its constructor."""
    return adapter_class(venue)(ExchangeName(venue), sink, **kwargs)


def create_parser(venue: ExchangeName | str, *, account: str = "default") -> Any:
    """A parser of ``venue``'s payloads."""
    adapter_class(venue)  # the same ValueError for an unknown venue
    v = ExchangeName(venue)
    return PARSERS[v](v, account=account)

"""Which adapter and parser serve each venue."""

from __future__ import annotations

from typing import Any

from ..models import ExchangeName
from .base import ExchangeAdapter, Sink
from .binance import BinanceAdapter
from .bybit import BybitAdapter
from .okx import OkxAdapter
from .parse_binance import BinanceParser
from .parse_bybit import BybitParser
from .parse_okx import OkxParser

__all__ = ["ADAPTERS", "PARSERS", "adapter_class", "create_adapter", "create_parser"]

#: the adapter class of every venue
ADAPTERS: dict[ExchangeName, type[ExchangeAdapter]] = {
    venue: cls for cls in (BinanceAdapter, BybitAdapter, OkxAdapter) for venue in cls.venues
}
#: the parser class of every venue
PARSERS: dict[ExchangeName, type] = {
    ExchangeName.BINANCE_SPOT: BinanceParser,
    ExchangeName.BINANCE_USDM: BinanceParser,
    ExchangeName.BYBIT_SPOT: BybitParser,
    ExchangeName.BYBIT_LINEAR: BybitParser,
    ExchangeName.OKX_SPOT: OkxParser,
    ExchangeName.OKX_SWAP: OkxParser,
}


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

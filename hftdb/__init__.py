"""hftdb: high-throughput market-data persistence on PostgreSQL.

The public surface is :class:`DatabaseManager`, the records it reads and writes, its settings and its errors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import (
    ArchiveSettings,
    CacheSettings,
    DatabaseSettings,
    ReadSettings,
    Settings,
    StorageSettings,
    WriterSettings,
    load_settings,
)
from .errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    ExchangeError,
    FrameError,
    HftdbError,
    MigrationError,
    StateError,
    UnknownExchangeError,
    UnknownSymbolError,
    ValidationError,
)
from .models import Balance, BookTicker, Exchange, ExchangeName, FundingRate, Symbol, now_us
from .version import __version__

if TYPE_CHECKING:
    from .manager import DatabaseManager, FeedSink
    from .read.notify import LatestMirror, Notification, Subscription
    from .store.unit import UnitOfWork

# The front and what it hands out are imported on first use (PEP 562), so that importing the records, the settings,
# the errors or the wire formats (``import hftdb.models``, ``import hftdb.wire``) does not load asyncpg, the write
# path and the read path.
_LAZY = {
    "DatabaseManager": "hftdb.manager",
    "FeedSink": "hftdb.manager",
    "UnitOfWork": "hftdb.store.unit",
    "Notification": "hftdb.read.notify",
    "Subscription": "hftdb.read.notify",
    "LatestMirror": "hftdb.read.notify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DatabaseManager",
    "FeedSink",
    "UnitOfWork",
    "Notification",
    "Subscription",
    "LatestMirror",
    "Exchange",
    "ExchangeName",
    "Symbol",
    "BookTicker",
    "FundingRate",
    "Balance",
    "now_us",
    "Settings",
    "DatabaseSettings",
    "WriterSettings",
    "CacheSettings",
    "StorageSettings",
    "ReadSettings",
    "ArchiveSettings",
    "load_settings",
    "HftdbError",
    "ConfigError",
    "ValidationError",
    "UnknownExchangeError",
    "UnknownSymbolError",
    "StateError",
    "ClosedError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "MigrationError",
    "BufferFullError",
    "ExchangeError",
    "FrameError",
]


"""hftdb: high-throughput market-data persistence on PostgreSQL.

The public surface is :class:`DatabaseManager`, the records it reads and writes, its settings and its errors.
"""

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
from .manager import DatabaseManager
from .models import Balance, BookTicker, Exchange, ExchangeName, FundingRate, Symbol, now_us
from .notify import LatestMirror, Notification, Subscription
from .unit import UnitOfWork

__all__ = [
    "DatabaseManager",
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

__version__ = "0.1.0"

"""Typed records: what goes into hftdb and what comes out.

All times are integer microseconds since the Unix epoch, UTC. Hot-path records (``BookTicker``,
``FundingRate``) are positional-friendly ``msgspec.Struct``s with ``gc=False``: they hold only scalars, so the
cycle collector never needs to track them.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Literal

import msgspec

__all__ = [
    "MIN_TS_US",
    "FUTURE_SLACK_US",
    "ExchangeName",
    "SymbolKind",
    "SymbolStatus",
    "Exchange",
    "Symbol",
    "BookTicker",
    "FundingRate",
    "Balance",
    "FeedRows",
    "now_us",
]


class ExchangeName(enum.StrEnum):
    """The venues hftdb has adapters for. One row of ``exchanges`` per venue.

    Spot and derivatives markets of one exchange are separate venues: their native symbols collide
    (``BTCUSDT`` is both a Binance spot pair and a USD-M perpetual).
    """

    BINANCE_SPOT = "binance_spot"
    BINANCE_USDM = "binance_usdm"
    BYBIT_SPOT = "bybit_spot"
    BYBIT_LINEAR = "bybit_linear"
    OKX_SPOT = "okx_spot"
    OKX_SWAP = "okx_swap"


SymbolKind = Literal["spot", "perpetual", "future", "option", "unknown"]
SymbolStatus = Literal["trading", "halted", "delisted", "unknown"]


#: Earliest accepted timestamp (2009-01-01 UTC): anything older is a unit mistake, not market data.
MIN_TS_US = 1_230_768_000_000_000
#: How far past the local clock a timestamp may be (clock skew between us and the exchange).
FUTURE_SLACK_US = 86_400_000_000


def now_us() -> int:
    """Return the current time as integer microseconds since the Unix epoch."""
    return time.time_ns() // 1000


class Exchange(msgspec.Struct, kw_only=True, frozen=True):
    """A venue. ``id`` is assigned by the database."""

    name: str
    id: int | None = None
    market: Literal["spot", "derivatives"] = "spot"
    active: bool = True


class Symbol(msgspec.Struct, kw_only=True, frozen=True):
    """An instrument of one exchange, named by the exchange's native symbol (``BTCUSDT``, ``BTC-USDT-SWAP``)."""

    exchange_id: int
    symbol: str
    id: int | None = None
    base: str | None = None
    quote: str | None = None
    kind: SymbolKind = "unknown"
    status: SymbolStatus = "unknown"
    tick_size: Decimal | None = None
    lot_size: Decimal | None = None
    contract_size: Decimal | None = None
    last_synced: int | None = None


class BookTicker(msgspec.Struct, gc=False):
    """Best bid and ask of one instrument at one moment.

    Name the instrument by ``exchange`` and native ``symbol``; a caller that already holds the id may set
    ``symbol_id`` and skip resolution. ``exchange_ts`` is the exchange's event time where the stream gives one.
    """

    exchange: str
    symbol: str
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float
    recv_ts: int
    exchange_ts: int | None = None
    update_id: int | None = None
    symbol_id: int | None = None


class FundingRate(msgspec.Struct, gc=False):
    """A perpetual's funding rate with the mark and index price where the exchange sends them."""

    exchange: str
    symbol: str
    rate: float
    recv_ts: int
    exchange_ts: int | None = None
    next_funding_ts: int | None = None
    mark_price: float | None = None
    index_price: float | None = None
    symbol_id: int | None = None


class Balance(msgspec.Struct, kw_only=True):
    """One asset's balance on one exchange account. Amounts are exact decimals: this is accounting data."""

    exchange: str
    asset: str
    free: Decimal
    locked: Decimal
    recv_ts: int
    exchange_ts: int | None = None
    account: str = "default"


class FeedRows(msgspec.Struct, gc=False):
    """What a feed hands its sink in one go: a list of rows per time-series table, each field named by its table
    (:data:`hftdb.tablespec.TABLES`; ``tests/test_tablespec.py`` holds the two equal). A new table is a new field
    here, not a new argument in every signature between a parser and the sink.

    ``gc=False`` is safe: it holds lists of records and never refers back to itself.
    """

    book_tickers: list[BookTicker] = []
    funding_rates: list[FundingRate] = []
    balances: list[Balance] = []

    def has_rows(self) -> bool:
        """Whether any table's list holds a row."""
        return bool(self.book_tickers or self.funding_rates or self.balances)

    def every_row(self) -> Iterator[BookTicker | FundingRate | Balance]:
        """Every row, table by table."""
        return itertools.chain(self.book_tickers, self.funding_rates, self.balances)

"""The registry of hftdb's tables: one entry per time-series table, read by every part that lists tables.

The manager starts one writer per entry, partitions and retention manage each entry's table, the archive and the
CLI (stats, validate, cleanup, analyze) walk them, notifications and mirrors check table names against them. A
new time-series table is one :class:`TableSpec` here plus its migration, record type, writer, sink method and the
rest of the list in docs/ARCHITECTURE.md, "Adding a table or a venue".

Bottom layer: no I/O, and no import but the record types. Names in it are the only table identifiers that hftdb
formats into SQL, so they come from this fixed set, never from input.
"""

from __future__ import annotations

from typing import Final

import msgspec

from .models import Balance, BookTicker, FundingRate

__all__ = ["TableSpec", "TABLES", "TIME_SERIES", "REFERENCE_TABLES", "ALL_TABLES", "spec"]


class TableSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What hftdb knows about one time-series table."""

    #: The range-partitioned table (partitioned by ``recv_ts``).
    name: str
    #: The record one row is read and written as.
    record: type
    #: The writer class in :mod:`hftdb.store.tables` that validates and encodes the record (its row layout).
    encoder: str
    #: The table holding the newest row of each key.
    latest: str
    #: The key of the latest table: one newest row per distinct key. History indexes lead with it too.
    key: tuple[str, ...]
    #: The method of a sink (:class:`hftdb.exchanges.sink.Sink`, :class:`~hftdb.manager.DatabaseManager`) that
    #: takes a list of its records; a feed's :class:`~hftdb.models.FeedRows` field of the same name goes there.
    insert: str
    #: The feed counter (:class:`hftdb.exchanges.stream.FeedStats`) of the rows a feed hands over for this table.
    feed_rows: str
    #: Whether :meth:`DatabaseManager.latest_mirror` can mirror its latest rows (rows keyed by symbol id).
    mirrored: bool


#: The time-series tables, in the order every report lists them.
TABLES: Final[tuple[TableSpec, ...]] = (
    TableSpec(name="book_tickers", record=BookTicker, encoder="BookTickerWriter", latest="book_tickers_latest",
              key=("symbol_id",),
              insert="insert_book_ticker_snapshots", feed_rows="book_rows", mirrored=True),
    TableSpec(name="funding_rates", record=FundingRate, encoder="FundingRateWriter", latest="funding_rates_latest",
              key=("symbol_id",),
              insert="insert_funding_rates", feed_rows="funding_rows", mirrored=True),
    TableSpec(name="balances", record=Balance, encoder="BalanceWriter", latest="balances_latest",
              key=("exchange_id", "account", "asset"),
              insert="insert_balance_snapshots", feed_rows="balance_rows", mirrored=False),
)

#: The names of the time-series tables.
TIME_SERIES: Final[tuple[str, ...]] = tuple(t.name for t in TABLES)
#: The reference tables the time-series rows point into.
REFERENCE_TABLES: Final[tuple[str, ...]] = ("exchanges", "symbols")
#: Every table hftdb creates (but ``schema_migrations``), in the order reports list them.
ALL_TABLES: Final[tuple[str, ...]] = (
    REFERENCE_TABLES + tuple(n for t in TABLES for n in (t.name, t.latest)) + ("ingest_batches",)
)

_BY_NAME: Final = {t.name: t for t in TABLES}


def spec(name: str) -> TableSpec:
    """The entry of the time-series table ``name``; KeyError naming the tables if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not one of {', '.join(TIME_SERIES)}") from None

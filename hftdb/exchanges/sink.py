"""The interface between the feeds and storage: :class:`Sink`; :class:`SymbolIds` for a sink that gives the
parsers symbol ids without I/O; :class:`PackedSink` for a sink that also takes rows already encoded
(:class:`~hftdb.wire.books.PackedBooks`).

Declared interfaces, not probes: an adapter's parsers stamp symbol ids only for a sink that is a
:class:`SymbolIds`, the intake packs book rows while parsing them only for a sink that is a :class:`PackedSink`
(``isinstance``, checked once per parser and per intake), and the runner then hands them to
``insert_packed_book_tickers``. A feed hands over its rows as a :class:`~hftdb.models.FeedRows`, one sink call
per table (the method :data:`hftdb.tablespec.TABLES` names). :class:`~hftdb.manager.DatabaseManager` is a
:class:`Sink` and a :class:`SymbolIds`; what its ``feed_sink()`` hands out is all three.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from ..models import Balance, BookTicker, Exchange, ExchangeName, FundingRate, Symbol
from ..wire.books import PackedBooks

__all__ = ["Sink", "SymbolIds", "PackedSink"]


@runtime_checkable
class Sink(Protocol):
    """Where an adapter puts what it receives. :class:`~hftdb.manager.DatabaseManager` is one."""

    async def insert_exchange(self, exchange: Exchange | ExchangeName | str) -> Exchange:
        """Create the exchange if needed (by name) and return it with its id."""
        ...

    async def get_exchange_by_enum(self, name: ExchangeName | str) -> Exchange:
        """Return the registered exchange of that name."""
        ...

    async def sync_symbols(self, exchange: ExchangeName | str, symbols: Sequence[Symbol]) -> tuple[int, int]:
        """Upsert the exchange's symbols; mark the ones missing from the list delisted."""
        ...

    async def insert_book_ticker_snapshots(self, rows: Iterable[BookTicker]) -> int:
        """Store best bid/ask rows; return how many were accepted."""
        ...

    async def insert_funding_rates(self, rows: Iterable[FundingRate]) -> int:
        """Store funding rows; return how many were accepted."""
        ...

    async def insert_balance_snapshots(self, rows: Iterable[Balance]) -> int:
        """Store balance rows; return how many were accepted."""
        ...

    async def flush(self) -> None:
        """Make everything accepted so far durable."""
        ...


@runtime_checkable
class SymbolIds(Protocol):
    """A sink that knows symbol ids without I/O, so that parsers can stamp them on the rows they build."""

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        """The cached id of ``exchange``/``symbol``, or None when it is not cached. Never does I/O."""
        ...


@runtime_checkable
class PackedSink(Sink, SymbolIds, Protocol):
    """A :class:`Sink` that also takes book rows the feed packed as binary COPY tuples while parsing them (packing
    needs each row's symbol id, hence :class:`SymbolIds`)."""

    async def insert_packed_book_tickers(self, rows: PackedBooks) -> int:
        """Store a call of packed book rows (taken whole, or sent down :meth:`insert_book_ticker_snapshots`'s path
        when any row was not packed); return how many were accepted."""
        ...

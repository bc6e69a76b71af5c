"""Units of work: several writes that commit together or not at all.

A :class:`UnitOfWork` wraps one connection inside one transaction. Its writes go straight to the database with
the same validation and binary COPY encoding as the batch writers, but a rejected row fails the whole unit
(raising :class:`ValidationError`, which rolls the transaction back) instead of being skipped: atomic means atomic.
Exchanges and symbols it registers reach the :class:`~hftdb.db.catalog.SymbolCatalog` only after the commit
(:func:`unit_of_work`).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any, AsyncIterator, Callable, Iterable

import asyncpg

from ..db import catalog as _sql
from ..db import dberrors
from ..db.catalog import ID_END, MAX_SYMBOL_LEN, SymbolCatalog, check_symbol
from ..errors import DatabaseUnavailableError, UnknownExchangeError, UnknownSymbolError, ValidationError
from ..models import Balance, BookTicker, Exchange, ExchangeName, FundingRate, Symbol
from ..wire.rules import NOT_A_RECORD, bad_text, row_list

__all__ = ["UnitOfWork", "unit_of_work"]

#: Builds the encoder of one table (a batch writer that is never started): how a unit packs its rows.
EncoderFactory = Callable[[str], Any]

#: A unit's last statement before COMMIT. Its batches' ledger rows were written with its rows, perhaps long before
#: it commits; a catch-up finds the batches committed during a gap by committed_at (hftdb.read.notify), so they are
#: dated again now, as a writer's commit dates its own in its last statement.
_STAMP_LEDGER = "UPDATE ingest_batches SET committed_at = clock_timestamp() WHERE batch_id = ANY($1::uuid[])"


@contextlib.asynccontextmanager
async def unit_of_work(conn: asyncpg.Connection, *, catalog: SymbolCatalog,
                       encoder: EncoderFactory) -> AsyncIterator[UnitOfWork]:
    """A :class:`UnitOfWork` in a transaction on ``conn``; its exchanges and symbols are cached once it commits."""
    uow = UnitOfWork(conn, encoder=encoder, catalog=catalog)
    committing = False
    try:
        async with conn.transaction():
            yield uow
            await uow._stamp_ledger()
            committing = True
    except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, asyncpg.PostgresConnectionError,
            OSError) as exc:
        # The connection went away under the unit (asyncpg's own words name its Transaction, not the unit).
        if committing:
            raise DatabaseUnavailableError(
                f"a unit of work lost its connection at its COMMIT ({dberrors.describe(exc)}): it may or may not "
                "have committed; look before writing it again") from exc
        raise DatabaseUnavailableError(
            f"a unit of work lost its connection ({dberrors.describe(exc)}): it rolled back, nothing of it is "
            "stored") from exc
    for ex in uow._new_exchanges:
        catalog.remember_exchange(ex)
    for sym in uow._new_symbols:
        catalog.remember_symbol(sym)


class UnitOfWork:
    """Writes inside one transaction. Obtain it from ``DatabaseManager.transaction()``."""

    def __init__(self, conn: asyncpg.Connection, *, encoder: EncoderFactory, catalog: SymbolCatalog) -> None:
        self._conn = conn
        self._encoder = encoder
        self._catalog = catalog
        self._new_exchanges: list[Exchange] = []
        self._new_symbols: list[Symbol] = []
        self._ledger_ids: list[uuid.UUID] = []

    @property
    def connection(self) -> asyncpg.Connection:
        """The transaction's connection, for statements of your own."""
        return self._conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """A nested block as a savepoint: an error inside rolls back only the block."""
        async with self._conn.transaction():
            yield self

    async def insert_exchange(self, name: ExchangeName | str, *, market: str = "spot") -> Exchange:
        """Register an exchange in this transaction."""
        if not isinstance(name, str):
            raise ValidationError(f"exchange name must be a string, got {type(name).__name__} {name!r}")
        text = str(getattr(name, "value", name))
        if not text:
            raise ValidationError("exchange name must not be empty")
        if bad_text(text):
            raise ValidationError(f"exchange name must hold printable characters only, got {text!r}")
        ex = await _sql.upsert_exchange(self._conn, text, market, True)
        self._new_exchanges.append(ex)
        return ex

    async def insert_symbol(self, symbol: Symbol) -> Symbol:
        """Register or update a symbol in this transaction."""
        check_symbol(symbol)
        sym = (await _sql.upsert_symbols(self._conn, [symbol]))[0]
        self._new_symbols.append(sym)
        return sym

    async def insert_book_ticker_snapshots(self, tickers: Iterable[BookTicker]) -> int:
        """Write book tickers in this transaction; any invalid row fails the unit."""
        return await self._write("book_tickers", await self._pairs(_rows(tickers, BookTicker)))

    async def insert_funding_rates(self, rates: Iterable[FundingRate]) -> int:
        """Write funding rates in this transaction; any invalid row fails the unit."""
        return await self._write("funding_rates", await self._pairs(_rows(rates, FundingRate)))

    async def insert_balance_snapshots(self, balances: Iterable[Balance]) -> int:
        """Write a balance set in this transaction, e.g. one account snapshot; any invalid row fails the unit."""
        pairs = []
        for b in _rows(balances, Balance):
            pairs.append((await self._exchange_id(b.exchange), b))
        return await self._write("balances", pairs)

    async def _exchange_id(self, name: str) -> int:
        if not isinstance(name, str) or bad_text(name):
            # Looked up, the server would refuse the query and abort the whole transaction with a database error.
            raise ValidationError(f"exchange name must hold printable characters only, got {name!r}")
        found: Exchange | None = None
        for ex in self._new_exchanges:
            if ex.name == name:
                found = ex
                break
        else:
            found = await _sql.fetch_exchange(self._conn, name)
        if found is None or found.id is None:
            raise UnknownExchangeError(f"unknown exchange {name!r}")
        return found.id

    async def _pairs(self, rows: list[Any]) -> list[tuple[int, Any]]:
        # Ids are checked as the writers check them (an int4, a registered symbol): a row the writer would reject
        # fails the unit. Ids the catalog does not know yet are read from the database (committed symbols) or
        # are symbols this unit registered.
        given = [r.symbol_id for r in rows if r.symbol_id is not None]
        for sid in given:
            if type(sid) is not int or not 0 < sid < ID_END:
                raise ValidationError(f"symbol_id must be a positive int4, got {sid!r} in a unit of work")
        known = self._catalog.known_ids
        unknown = {sid for sid in given if sid not in known} - {sym.id for sym in self._new_symbols}
        if unknown:
            await self._catalog.load_ids(unknown)
            known = self._catalog.known_ids
            unknown = {sid for sid in unknown if sid not in known}
            if unknown:
                raise ValidationError(f"unknown symbol_id(s) {sorted(unknown)} in a unit of work "
                                      "(unknown_symbol_id): register the symbol first")
        pairs = []
        for r in rows:
            sid = r.symbol_id
            if sid is None:
                if not isinstance(r.symbol, str) or bad_text(r.symbol) or not 0 < len(r.symbol) <= MAX_SYMBOL_LEN:
                    raise ValidationError(f"invalid symbol {r.symbol!r} on {r.exchange!r} in a unit of work")
                sym = await _sql.fetch_symbol_by_name(self._conn, await self._exchange_id(r.exchange), r.symbol)
                if sym is None:
                    raise UnknownSymbolError(f"unknown symbol {r.symbol!r} on {r.exchange}")
                sid = sym.id
            pairs.append((sid, r))
        return pairs

    async def _write(self, table: str, pairs: list[tuple[int, Any]]) -> int:
        encoder = self._encoder(table)
        encoder.add(pairs)
        rejects = encoder.rejects.snapshot()
        if rejects:
            raise ValidationError(f"{sum(rejects.values())} invalid {table} row(s) in a unit of work: {rejects}")
        # (the rest of the difference: rows repeated inside the call, dropped as the writers drop them; the count
        # returned says how many were taken)
        try:
            rows, ledger_ids = await encoder.write_in(self._conn)
        except dberrors.CATCH as exc:
            if dberrors.classify(exc) != dberrors.DATA:
                raise
            # The server refused a value the checks let through (a CHECK of your own, a range): the unit's
            # mistake, so a typed error, and the transaction rolls back as for any invalid row.
            raise ValidationError(f"the database refused a {table} row in a unit of work "
                                  f"({dberrors.sqlstate(exc)}: {exc})") from exc
        self._ledger_ids += ledger_ids
        return rows

    async def _stamp_ledger(self) -> None:
        if not self._ledger_ids:
            return
        try:
            await self._conn.execute(_STAMP_LEDGER, self._ledger_ids)
        except asyncpg.InFailedSQLTransactionError:
            # The body went on after an error of its transaction's own: COMMIT rolls the unit back, as it did
            # before this statement existed, and there is nothing to date.
            pass


def _rows(rows: Any, record: type) -> list[Any]:
    # A unit's rows as a list of ``record``s; ValidationError for anything else (the unit is all or nothing).
    rows = row_list(rows, record)
    for r in rows:
        if not isinstance(r, record):
            raise ValidationError(f"expected {record.__name__} records, got {type(r).__name__} {r!r:.80} "
                                  f"in a unit of work ({NOT_A_RECORD[record]})")
    return rows

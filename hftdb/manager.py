"""``DatabaseManager``: the one public front of hftdb.

It owns the asyncpg pool (and the embedded server when no DSN is configured), the symbol catalog, and one batch
writer per time-series table. The work is delegated to small modules: :mod:`hftdb.db.catalog` (exchanges and
symbols: caches, SQL, registration), :mod:`hftdb.store.resolve` (ids of written rows), :mod:`hftdb.store.writer` and
:mod:`hftdb.store.tables` (batching and COPY), :mod:`hftdb.db.schema` (migrations, partitions), :mod:`hftdb.db.server`
(embedded PostgreSQL), :mod:`hftdb.read.reads` (queries) and :mod:`hftdb.store.unit` (units of work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from datetime import timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any, AsyncIterator, Coroutine, Iterable, Literal, Sequence, TypeVar

import asyncpg
from asyncpg.pool import PoolAcquireContext
import msgspec

from .read import archive, reads
from .db import citus, dberrors, partitions, schema
from .store import packed, tables, vector
from . import tablespec
from .db.cache import TTLCache
from .db.catalog import SymbolCatalog
from .config import MAX_DAYS, Settings, check_settings, dsn_problem, load_settings, redact_dsn
from .redact import register_dsn
from .wire.copy import PG_EPOCH_US
from .errors import ClosedError, ConfigError, DatabaseError, DatabaseUnavailableError, StateError, ValidationError
from .models import Balance, BookTicker, Exchange, ExchangeName, FundingRate, Symbol, now_us
from .read.notify import Filter, LatestMirror, Subscription
from .read.replicas import ReadRouter
from .store.resolve import RowResolver
from .db.server import EmbeddedServer
from .wire.rules import NOT_A_RECORD, bad_text, row_list
from .store.unit import UnitOfWork, unit_of_work
from .store.commit import RETRYABLE
from .store.writer import BatchWriter
from .wire.books import BookTuples, PackedBooks, cached_ids

__all__ = ["DatabaseManager", "FeedSink"]

logger = logging.getLogger(__name__)

_MIRRORED = tuple(t.name for t in tablespec.TABLES if t.mirrored)
_SYMBOL_ID = attrgetter("symbol_id")

_W = TypeVar("_W", bound=BatchWriter)
# A pool that does not close within its timeout, or whose connections are gone, is terminated.
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, *RETRYABLE)


def _ts_encode(us: int) -> tuple[int]:
    return (us - PG_EPOCH_US,)


def _ts_decode(value: tuple[int]) -> int:
    return value[0] + PG_EPOCH_US


async def init_connection(conn: asyncpg.Connection) -> None:
    """Make timestamptz travel as integer Unix microseconds on hftdb's connections: exact, and no datetimes."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_ts_encode, decoder=_ts_decode, format="tuple"
    )


class DatabaseManager:
    """Persistence of exchanges, symbols, book tickers, funding rates and balances in PostgreSQL.

    >>> async with DatabaseManager() as db:              # embedded PostgreSQL in ./data/postgres
    ...     await db.insert_exchange(ExchangeName.BINANCE_SPOT)
    ...     await db.insert_book_ticker_snapshots([BookTicker("binance_spot", "BTCUSDT", 1.0, 2.0, 1.1, 3.0, now_us())])
    ...     await db.flush()

    ``dsn`` (or ``HFTDB_DSN``, or ``settings.database.dsn``) names a PostgreSQL 14+ server; with none, an embedded
    server is started in ``settings.database.data_dir``. Writes are buffered and committed by group-commit COPY
    batches; :meth:`flush` waits for them. No I/O happens until :meth:`initialize` (or ``async with``).

    ``spool_dir`` (default ``[writer] spool_dir``) is where the writers spool batches while commits fail; one
    process at a time holds it, so a second process in the daemon's directory gives its own, or ``""`` for none
    (a process that only reads: a strategy beside the daemon).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        settings: Settings | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        notify: bool = True,
    ) -> None:
        if settings is None:
            settings = load_settings()
        else:
            # Built in code, its keys' bounds were never checked (msgspec checks them when decoding a file).
            settings = check_settings(settings)
        if dsn is not None and not isinstance(dsn, str):
            raise ConfigError(f"dsn must be a string, got {type(dsn).__name__}")
        if dsn is not None:
            # None means "the settings' DSN, else the embedded server"; an empty string given on purpose is a mistake
            # (an unset variable passed on), refused as HFTDB_DSN= is, not taken for the embedded server.
            register_dsn(dsn)
            if problem := dsn_problem(dsn):
                raise ConfigError(f"dsn: {problem}")
        self.settings = settings
        self._dsn = dsn if dsn is not None else settings.database.dsn
        self._spool_dir = spool_dir if spool_dir is not None else settings.writer.spool_dir
        self._notify = notify
        self._state = "new"
        self._server: EmbeddedServer | None = None
        self._pool: asyncpg.Pool | None = None
        self._catalog = SymbolCatalog(ttl=settings.cache.ttl_s)
        self._resolver = RowResolver(self._catalog, settings=settings.writer, check_open=self._check_open)
        self._latest_cache = TTLCache[Any, Any](settings.cache.latest_ttl_ms / 1000) if settings.cache.latest_ttl_ms else None
        self._writers: dict[str, BatchWriter] = {}
        self._router: ReadRouter | None = None
        self._reader: reads.Reader | None = None
        self._subscriptions: set[Subscription] = set()
        self._lock = asyncio.Lock()
        # /metrics asks for the stats every scrape: the archive's totals are read again only for days that changed.
        self._archive_summary = archive.ArchiveSummary(settings.archive.root) if archive.enabled(settings.archive) \
            else None

    def __repr__(self) -> str:
        target = redact_dsn(self._dsn) if self._dsn else f"embedded:{self.settings.database.data_dir}"
        return f"DatabaseManager({target!r}, state={self._state})"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> DatabaseManager:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def dsn(self) -> str:
        """The DSN in use (the embedded server's once started). May hold a password: never log it unredacted."""
        if self._dsn is None:
            raise StateError("no DSN yet: the embedded server starts in initialize()")
        return self._dsn

    @property
    def _open_pool(self) -> asyncpg.Pool:
        self._check_open()
        assert self._pool is not None  # set before the state becomes "open"
        return self._pool

    def connection(self, *, timeout: float | None = None) -> PoolAcquireContext:
        """A connection of the pool for statements of your own, as ``async with db.connection() as conn:``.

        ``timestamptz`` travels as integer Unix microseconds on it. It goes back to the pool at the end of the
        block; for writes that must commit together with hftdb's, use :meth:`transaction`.
        """
        return self._open_pool.acquire(timeout=timeout)

    async def initialize(self) -> None:
        """Start or connect to PostgreSQL, apply migrations, warm the caches and start the writers."""
        async with self._lock:
            if self._state == "open":
                return
            if self._state != "new":
                raise ClosedError("this DatabaseManager is closed; create a new one")
            db = self.settings.database
            step = "connecting"
            try:
                if self._dsn is None:
                    self._server = EmbeddedServer(db.data_dir)
                    self._dsn = await self._server.start()
                self._pool = await self._create_pool()
                async with self._pool.acquire() as conn:
                    step = "applying the migrations"
                    await schema.migrate(conn)
                    step = "creating the partitions"
                    await partitions.maintain(conn, self.settings.storage, now_us(), retention=False)
                    if self.settings.storage.distribute:
                        step = "distributing the tables"
                        await citus.distribute(conn)
                step = "loading the symbol catalog"
                await self._catalog.open(self._pool)
                step = "starting the read pools"
                self._router = ReadRouter(self._dsn, self.settings.reads, database=db)
                await self._router.start()
                step = "starting the writers"
                self._reader = reads.Reader(self._router, self._catalog, latest_cache=self._latest_cache,
                                            archive=archive.ArchiveTier(self.settings.archive.root)
                                            if archive.enabled(self.settings.archive) else None)
                spool_root = Path(self._spool_dir) if self._spool_dir else None
                for spec in tablespec.TABLES:
                    writer = _writer_class(spec.name)(
                        self._pool, settings=self.settings.writer, storage=self.settings.storage,
                        spool_dir=spool_root, notify=self._notify, command_timeout=db.command_timeout,
                        # A read between a call and its commit may have cached the rows the call replaced.
                        on_commit=None if self._latest_cache is None else self._latest_cache.invalidate,
                    )
                    await writer.start()
                    self._writers[spec.name] = writer
            except BaseException as exc:
                await self._teardown()
                self._state = "closed"
                if isinstance(exc, dberrors.CATCH) and dberrors.classify(exc) == dberrors.WAIT:
                    # The connection went away under a start-up step (a server restart, a terminated backend): one
                    # line, not asyncpg's error. Each migration runs in its own transaction: starting again resumes.
                    where = redact_dsn(self._dsn) if self._dsn else "the embedded server"
                    text = " ".join(dberrors.describe(exc).split())
                    raise DatabaseUnavailableError(
                        f"{where}: the database went away while {step} ({text}); start again") from exc
                if isinstance(exc, asyncpg.PostgresError):
                    # The server refused a start-up step (a role without privileges, a read-only standby...): one
                    # line for the user, not asyncpg's error; the cause stays chained for a program that wants it.
                    where = redact_dsn(self._dsn) if self._dsn else "the embedded server"
                    text = " ".join(dberrors.describe(exc).split())
                    raise DatabaseError(f"{where}: the server refused {step}: {text}") from exc
                raise
            self._state = "open"
            logger.info("hftdb open on %s", redact_dsn(self._dsn))

    async def _create_pool(self) -> asyncpg.Pool:
        # Only what waiting can cure is retried (a server starting, refusing, full); a wrong password, a missing
        # role or database, a DSN option the client refuses fails at once.
        db = self.settings.database
        return await dberrors.first_connection(
            lambda: asyncpg.create_pool(
                self._dsn, min_size=db.pool_min_size, max_size=max(db.pool_max_size, db.pool_min_size),
                command_timeout=db.command_timeout, timeout=db.connect_timeout, init=init_connection),
            self._dsn, timeout=db.connect_timeout)

    async def close(self, *, timeout: float = 30.0) -> None:
        """Flush every writer (spooling what cannot be committed in ``timeout``), close the pool. Idempotent."""
        timeout = _timeout(timeout)  # type: ignore[assignment]  # (never None here)
        async with self._lock:
            if self._state == "closed":
                return
            self._state = "closing"
            try:
                await asyncio.gather(*(w.close(timeout=timeout) for w in self._writers.values()))
            finally:
                # Run to its end even when the close is cancelled again meanwhile (a caller's timeout, then its own
                # shutdown): stopped half way, it left the manager "closing" with its pool and server open.
                await _to_the_end(self._teardown())

    async def _teardown(self) -> None:
        for sub in list(self._subscriptions):
            await sub.close()
        for writer in self._writers.values():
            await writer.terminate()
        router, self._router = self._router, None
        if router is not None:
            await router.close()
        self._catalog.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except _CLOSE_ERRORS:
                pool.terminate()
        if self._server is not None:
            await self._server.stop()
            self._server = None
        self._state = "closed"

    def _reads(self) -> reads.Reader:
        self._check_open()
        assert self._reader is not None  # set before the state becomes "open"
        return self._reader

    def _check_open(self) -> None:
        if self._state != "open":
            if self._state == "new":
                raise StateError("DatabaseManager is not initialized: use 'async with' or await initialize()")
            raise ClosedError("DatabaseManager is closed")

    # -- caches ------------------------------------------------------------------------------------------------

    def invalidate_caches(self, *, exchanges: bool = True, symbols: bool = True) -> None:
        """Drop cached exchanges and/or symbols; the next lookups read the database."""
        self._catalog.invalidate(exchanges=exchanges, symbols=symbols)
        if self._latest_cache is not None:
            self._latest_cache.invalidate()

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        """The cached id of ``exchange``/``symbol``, or None on a cache miss. Never touches the database."""
        return self._catalog.cached_id(exchange, symbol)

    # -- exchanges ---------------------------------------------------------------------------------------------

    async def insert_exchange(self, exchange: Exchange | ExchangeName | str, *, market: str | None = None) -> Exchange:
        """Register an exchange (or update its market and active flag); return it with its id."""
        self._check_open()
        return await self._catalog.add_exchange(exchange, market=market)

    async def get_exchange_by_enum(self, name: ExchangeName | str) -> Exchange:
        """The exchange named by ``name`` (an :class:`ExchangeName` or its string); UnknownExchangeError if absent."""
        self._check_open()
        return await self._catalog.exchange(name)

    async def get_all_exchanges(self) -> list[Exchange]:
        """Every registered exchange, by id."""
        self._check_open()
        return await self._catalog.exchanges()

    # -- symbols -----------------------------------------------------------------------------------------------

    async def insert_symbol(self, symbol: Symbol) -> Symbol:
        """Register a symbol or update its metadata (upsert on exchange and native symbol); return it with its id."""
        self._check_open()
        return await self._catalog.add_symbol(symbol)

    async def sync_symbols(self, exchange: ExchangeName | str, symbols: Sequence[Symbol]) -> tuple[int, int]:
        """Upsert an exchange's full instrument list; mark its symbols missing from the list 'delisted'.

        Returns ``(upserted, delisted)``. Invalid entries raise :class:`ValidationError` before anything is
        written.
        """
        self._check_open()
        return await self._catalog.sync(exchange, symbols)

    async def get_symbol_by_id(self, symbol_id: int) -> Symbol:
        """The symbol with this id; UnknownSymbolError if there is none."""
        self._check_open()
        return await self._catalog.symbol(symbol_id)

    async def get_symbol(self, exchange: ExchangeName | str, symbol: str) -> Symbol:
        """The symbol named by exchange and native symbol; UnknownSymbolError if there is none."""
        self._check_open()
        return await self._catalog.symbol(await self._catalog.symbol_id(exchange, symbol))

    async def get_symbols_by_exchange(self, exchange: ExchangeName | str, *, status: str | None = None) -> list[Symbol]:
        """Every symbol of an exchange (optionally only those with ``status``), by native symbol."""
        self._check_open()
        return await self._catalog.symbols(exchange, status=status)

    # -- writes ------------------------------------------------------------------------------------------------

    async def insert_book_ticker_snapshots(self, tickers: Iterable[BookTicker]) -> int:
        """Accept book tickers for writing; return how many were taken (the rest are counted rejects).

        Rows are committed by the writer in group-commit batches; :meth:`flush` waits for them. An unknown symbol
        of a known exchange is registered on first sight; an unknown exchange raises UnknownExchangeError and
        takes no row of the call.
        """
        return await self._submit(self._table_writer(tables.BookTickerWriter), tickers)

    async def insert_book_ticker_columns(
        self,
        symbol_ids: Any,
        bid_price: Any,
        bid_qty: Any,
        ask_price: Any,
        ask_qty: Any,
        recv_ts: Any,
        *,
        exchange_ts: Any = None,
        update_id: Any = None,
    ) -> int:
        """Accept book tickers as columns (numpy arrays or sequences of equal length): the bulk and backfill path.

        Validation and encoding are vectorized (numpy), so a million rows cost tens of
        milliseconds of Python. Rows are otherwise handled exactly like :meth:`insert_book_ticker_snapshots`:
        same batches, ledger, latest upsert and rejections. ``exchange_ts``/``update_id`` are None or full
        columns. Symbols must be registered (ids from :meth:`get_symbol` or :meth:`insert_symbol`); rows with
        unknown ids are rejected.
        """
        self._check_open()
        try:
            import numpy as np
        except ImportError:
            raise ValidationError("insert_book_ticker_columns needs numpy: pip install 'hftdb[numpy]'") from None
        given = (("symbol_ids", symbol_ids, np.int64), ("bid_price", bid_price, np.float64),
                 ("bid_qty", bid_qty, np.float64), ("ask_price", ask_price, np.float64),
                 ("ask_qty", ask_qty, np.float64), ("recv_ts", recv_ts, np.int64),
                 ("exchange_ts", exchange_ts, np.int64), ("update_id", update_id, np.int64))
        arrays = []
        for name, values, dtype in given:
            if values is None and name in ("exchange_ts", "update_id"):
                arrays.append(None)
                continue
            try:
                raw = np.asarray(values)
                # (numpy would take True as 1, and cut a float time or id to an int without a word)
                if raw.dtype.kind == "b" or (raw.dtype.kind == "f" and dtype is np.int64):
                    raise TypeError(f"got {raw.dtype.name} values")
                arrays.append(raw.astype(dtype, copy=False))
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValidationError(f"{name} must be a numeric array ({np.dtype(dtype).name}): {exc}") from None
        sid, recv, ex, uid = arrays[0], arrays[5], arrays[6], arrays[7]
        cols = arrays[1:5]
        if sid.ndim != 1:
            raise ValidationError(f"symbol_ids must be a 1-D column (a sequence or array of ids), "
                                  f"got shape {sid.shape}")
        n = len(sid)
        for name, col in (("bid_price", cols[0]), ("bid_qty", cols[1]), ("ask_price", cols[2]), ("ask_qty", cols[3]),
                          ("recv_ts", recv), ("exchange_ts", ex), ("update_id", uid)):
            if col is not None and (col.ndim != 1 or len(col) != n):
                raise ValidationError(f"{name} has shape {col.shape}, expected ({n},) like symbol_ids")
        if n == 0:
            return 0
        writer = self._table_writer(tables.BookTickerWriter)
        await writer.reserve(n)
        known = self._catalog.known_ids
        unknown = ~np.isin(sid, np.fromiter(known, dtype=np.int64, count=len(known)))
        if unknown.any():
            await self._catalog.load_ids(np.unique(sid[unknown]).tolist())
            unknown = ~np.isin(sid, np.fromiter(known, dtype=np.int64, count=len(known)))
            if unknown.any():
                for bad in sid[unknown].tolist():
                    writer.rejects.add("unknown_symbol_id", f"symbol_id {bad}")
                keep = ~unknown
                sid, recv = sid[keep], recv[keep]
                cols = [c[keep] for c in cols]
                ex = None if ex is None else ex[keep]
                uid = None if uid is None else uid[keep]
        added = vector.add_columns(writer, sid, cols[0], cols[1], cols[2], cols[3], recv, ex, uid)
        writer.submitted(added)
        if self._latest_cache is not None and added:
            self._latest_cache.invalidate()
        return added

    async def _insert_packed(self, rows: PackedBooks | BookTuples) -> int:
        # A feed's book tickers whose COPY tuples its intake packed while parsing (hftdb.store.packed), with their
        # records or, from the file replay, without (BookTuples), through the FeedSink: taken whole when every row
        # was packed and every id is registered; otherwise exactly as insert_book_ticker_snapshots takes them.
        writer = self._table_writer(tables.BookTickerWriter)
        await writer.reserve(len(rows))
        if type(rows) is BookTuples:
            added = packed.add_tuples(writer, rows, self._catalog.known_ids)
            if added is None:
                return await self._submit(writer, rows.records())
        else:
            added = packed.add_packed(writer, rows, self._catalog.known_ids)
        if added is None:
            return await self._submit(writer, rows)
        writer.submitted(added)
        if self._latest_cache is not None:
            self._latest_cache.invalidate()
        return added

    async def insert_funding_rates(self, rates: Iterable[FundingRate]) -> int:
        """Accept funding rates for writing; return how many were taken. See :meth:`insert_book_ticker_snapshots`."""
        return await self._submit(self._table_writer(tables.FundingRateWriter), rates)

    async def insert_balance_snapshots(self, balances: Iterable[Balance]) -> int:
        """Accept balances for writing; return how many were taken. Amounts are stored as exact numerics."""
        writer = self._table_writer(tables.BalanceWriter)
        rows = row_list(balances, Balance)
        await writer.reserve(len(rows))
        pairs: list[tuple[int, Balance]] = []
        for r in rows:
            if not isinstance(r, Balance):
                writer.rejects.add(NOT_A_RECORD[Balance], _brief(r))
                continue
            if not isinstance(r.exchange, str):
                writer.rejects.add("exchange_wrong_type", repr(r))
                continue
            if bad_text(r.exchange):
                # No exchange has such a name, and looked up the server would refuse the query: a bad row.
                writer.rejects.add("exchange_bad_char", repr(r))
                continue
            ex = await self._catalog.exchange(r.exchange)
            assert ex.id is not None  # the catalog's exchanges are registered ones
            pairs.append((ex.id, r))
        added = writer.add(pairs)
        writer.submitted(added)
        return added

    def _table_writer(self, cls: type[_W]) -> _W:
        # The started writer of cls's table, typed as its class (the insert paths call its own methods).
        self._check_open()
        writer = self._writers[cls.table]
        assert isinstance(writer, cls)
        return writer

    async def _submit(self, writer: tables.BookTickerWriter | tables.FundingRateWriter, rows: Iterable[Any]) -> int:
        rows = row_list(rows, writer.record)
        if not rows:
            return 0
        await writer.reserve(len(rows))
        added = None
        if writer.vectorizes(len(rows)):
            # (A small call goes straight to the per-row path: neither the names nor the rows are looked at twice.)
            step = writer.settings.batch_max_rows
            sliced, sids = False, None
            try:
                named = rows[0].symbol_id is None
                if len(rows) > 2 * step:
                    # A big call (a backfill) is encoded a batch at a time, yielding between slices, so the first
                    # COPY starts while the rest is encoded and the loop is never held for the whole call. Only
                    # when every row's id is known at once: then no slice can raise half way (an unknown exchange
                    # takes no row). Named rows' ids are looked up in the catalog's names in one C pass (~10-20 ns
                    # a row; in Python it cost ~0.1 µs), and each slice is packed with its ids, not its names
                    # looked up again.
                    sids = cached_ids(rows, self._catalog.names()) if named else None
                    sliced = (sids is not None if named
                              else self._catalog.known_ids.issuperset(map(_SYMBOL_ID, rows)))
                else:
                    # Named by exchange and symbol: the vectorized path resolves the whole call from the cache in
                    # its packing pass; any miss (a new symbol, an unknown exchange, a row with an id among named
                    # ones) sends the call down the per-row path, which handles each.
                    # (Ids found in the catalog's names are registered ones: only rows' own ids are checked.)
                    names = self._catalog.names() if named else None
                    added = writer.add_fast(rows, None if named else self._catalog.known_ids, None, names)
                    if added is not None and named:
                        self._catalog.count_hits(len(rows))
            except AttributeError:
                # An element that is not a record (a dict, None), met before any row was taken: the call goes per
                # row, where each such element is rejected alone.
                sliced, added = False, None
            if sliced:
                if named:
                    self._catalog.count_hits(len(rows))
                try:
                    return await self._add_sliced(writer, rows, sids, step)
                finally:
                    # (Also when the call ends in its cancellation or the writer's close: rows were taken.)
                    if self._latest_cache is not None:
                        self._latest_cache.invalidate()
        if added is None:
            # (Only here, once the vectorized path refused the call or for a call too small for it, is each
            # element's type looked at: before the resolver, which reads every row's names.)
            rows = _records(writer, rows)
            pairs = await self._resolver.pairs(rows, writer)
            added = writer.add(pairs)
        writer.submitted(added)
        if self._latest_cache is not None and added:
            self._latest_cache.invalidate()
        return added

    async def _add_sliced(self, writer: tables.BookTickerWriter | tables.FundingRateWriter, rows: list[Any],
                          sids: list[int] | None, step: int) -> int:
        # Every id is known (checked by the caller: each row's own, or ``sids``, looked up by name in the catalog),
        # so no slice can raise half way: a slice the vectorized path refuses (a wrong type, a short last slice)
        # goes per row, which only rejects rows. Rows are counted as accepted slice by slice, which wakes the
        # flusher for each sealed batch. A call cancelled between slices (its caller's timeout, its task cancelled)
        # takes its remaining slices without yielding again, then raises the cancellation: the call is taken whole,
        # as a small one is, never in part, since the CancelledError cannot tell the caller how many rows are in.
        added = 0
        cancelled: asyncio.CancelledError | None = None
        with writer.producing():
            for start in range(0, len(rows), step):
                part = rows[start:start + step]
                ids = sids[start:start + step] if sids is not None else None
                # (Ids from the catalog's names are registered ones: no check against known_ids.)
                taken = writer.add_fast(part, self._catalog.known_ids if ids is None else None, ids)
                if taken is None:
                    pairs = zip(ids if ids is not None else map(_SYMBOL_ID, part), part)
                    taken = writer.add(_record_pairs(writer, pairs))
                writer.submitted(taken)
                added += taken
                if start + step < len(rows) and cancelled is None:
                    try:
                        await asyncio.sleep(0)
                    except asyncio.CancelledError as exc:
                        cancelled = exc
                    if not writer.accepting:
                        # Closed meanwhile: what was taken is committed (or spooled) by the close.
                        raise ClosedError(f"the {writer.table} writer closed during a call; {added} rows were taken")
        if cancelled is not None:
            raise cancelled
        return added

    async def flush(self, *, timeout: float | None = None) -> None:
        """Return once every row accepted before the call is committed; TimeoutError, saying how many rows are
        still pending, if that takes longer than ``timeout`` seconds (the rows stay accepted)."""
        self._check_open()
        seconds = _timeout(timeout, none=True)
        try:
            # (asyncio.timeout, not wait_for: every writer's flush starts, sealing its batch, before a 0 s deadline
            # cancels it, so no flush is dropped unstarted.)
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(w.flush() for w in self._writers.values()))
            if self._latest_cache is not None:
                # A read between a call and its commit may have cached the row the call replaced.
                self._latest_cache.invalidate()
        except TimeoutError as exc:
            pending = sum(w.pending_rows for w in self._writers.values())
            raise TimeoutError(f"flush timed out after {seconds} s with {pending} row(s) still pending") from exc

    def writer_stats(self, table: str) -> dict[str, Any]:
        """The counters of ``table``'s writer ('book_tickers', 'funding_rates' or 'balances'), without I/O: rows
        accepted, committed, pending and in memory, duplicates, batches committed, queued, spooled and replayed,
        retries, rows dropped, rejects by reason, commit p50/p99, the last error. The same dict as
        ``get_database_stats()["writers"][table]``; still readable after :meth:`close` (its final counts)."""
        if table not in tablespec.TIME_SERIES:
            raise ValidationError(f"table must be one of {', '.join(tablespec.TIME_SERIES)}, got {table!r}")
        writer = self._writers.get(table)
        if writer is None:
            self._check_open()  # not started yet: says so
            raise StateError(f"the {table} writer did not start")
        return writer.snapshot()

    def feed_sink(self) -> FeedSink:
        """The sink an exchange adapter writes to (:class:`hftdb.exchanges.sink.PackedSink`): this manager's writes,
        plus the two seams of the feeds' hot path, cached symbol ids for the parsers and book rows whose COPY
        tuples the intake packed while parsing. Give it to ``create_adapter`` (the daemon and ``ingest-file`` do);
        an adapter given the manager itself stores the same rows through the public inserts. No I/O."""
        return FeedSink(self)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """A unit of work: every write made through it commits together or not at all.

        >>> async with db.transaction() as uow:
        ...     sym = await uow.insert_symbol(Symbol(exchange_id=1, symbol="NEWUSDT"))
        ...     await uow.insert_book_ticker_snapshots([BookTicker(..., symbol_id=sym.id)])

        Writes go straight to the database in the transaction (not through the batch writers). Nested
        ``uow.transaction()`` blocks are savepoints.
        """
        self._check_open()
        try:
            async with self._open_pool.acquire() as conn, unit_of_work(conn, catalog=self._catalog,
                                                                  encoder=self._encoder) as uow:
                yield uow
        finally:
            if self._latest_cache is not None:
                # The unit's rows are committed (or rolled back): a latest read cached before may be outdated.
                self._latest_cache.invalidate()

    def _encoder(self, table: str) -> BatchWriter:
        # A writer never started: a unit of work packs its rows with it and COPYs them on its own connection.
        return _writer_class(table)(self._open_pool, settings=self.settings.writer, storage=self.settings.storage,
                                    spool_dir=None)

    # -- reads -------------------------------------------------------------------------------------------------
    # The bodies live in hftdb.read.reads.Reader (filters, caches, SQL, decoding); these are the documented front.

    async def get_latest_book_tickers(
        self,
        exchange: ExchangeName | str | None = None,
        symbols: Sequence[str] | None = None,
        *,
        symbol_ids: Sequence[int] | None = None,
        primary: bool = False,
    ) -> list[BookTicker]:
        """The current quote of each symbol, from ``book_tickers_latest`` (O(symbols), never a history scan).

        Filter by exchange, by native symbols of that exchange, or by symbol ids; no filter returns every symbol.
        In no particular order (sort by ``symbol_id`` if you need one). Reads go to a healthy replica when replicas
        are configured; ``primary=True`` reads the primary (read-your-writes after :meth:`flush`).
        """
        return await self._reads().latest_book_tickers(
            exchange, symbols, symbol_ids, primary=primary)

    async def get_latest_funding_rates(
        self,
        exchange: ExchangeName | str | None = None,
        symbols: Sequence[str] | None = None,
        *,
        symbol_ids: Sequence[int] | None = None,
        primary: bool = False,
    ) -> list[FundingRate]:
        """The current funding rate of each perpetual, from ``funding_rates_latest``; filters as for book tickers."""
        return await self._reads().latest_funding_rates(
            exchange, symbols, symbol_ids, primary=primary)

    async def get_book_ticker_history(
        self,
        exchange: ExchangeName | str,
        symbol: str,
        *,
        start: int | None = None,
        end: int | None = None,
        hours: float | None = None,
        limit: int | None = None,
        format: Literal["objects", "columns", "numpy"] = "objects",
        primary: bool = False,
    ) -> Any:
        """Book tickers of one symbol in a receipt-time window, oldest first.

        Give ``start``/``end`` (Unix µs; end exclusive, default now) or ``hours`` back from now. ``format``:
        ``"objects"`` a list of :class:`BookTicker`; ``"columns"`` a dict of lists (recv_ts, exchange_ts,
        bid_price, bid_qty, ask_price, ask_qty, update_id; NULL as None); ``"numpy"`` a dict of numpy arrays
        decoded straight from binary COPY (see :mod:`hftdb.read.columnar`).
        """
        return await self._reads().book_ticker_history(
            exchange, symbol, start=start, end=end, hours=hours, limit=limit, format=format, primary=primary)

    async def get_funding_rate_history(
        self, exchange: ExchangeName | str, symbol: str, *, start: int | None = None, end: int | None = None,
        hours: float | None = None, limit: int | None = None,
        format: Literal["objects", "columns", "numpy"] = "objects", primary: bool = False,
    ) -> Any:
        """Funding rates of one symbol in a receipt-time window, oldest first; ``format`` as for book tickers."""
        return await self._reads().funding_history(
            exchange, symbol, start=start, end=end, hours=hours, limit=limit, format=format, primary=primary)

    async def get_latest_balances(
        self, exchange: ExchangeName | str | None = None, *, account: str | None = None, primary: bool = False
    ) -> list[Balance]:
        """The current balance of every asset (of one exchange and/or account), from ``balances_latest``."""
        return await self._reads().latest_balances(exchange, account, primary=primary)

    async def get_balance_history(
        self, exchange: ExchangeName | str, asset: str, *, account: str = "default", start: int | None = None,
        end: int | None = None, hours: float | None = None, limit: int | None = None,
        format: Literal["objects", "columns", "numpy"] = "objects", primary: bool = False,
    ) -> Any:
        """Balance snapshots of one asset in a receipt-time window, oldest first.

        ``objects`` and ``columns`` keep amounts exact (Decimal); ``numpy`` gives float64 approximations.
        """
        return await self._reads().balance_history(
            exchange, asset, account=account, start=start, end=end, hours=hours, limit=limit, format=format,
            primary=primary)

    def notifications(
        self,
        table: Literal["book_tickers", "funding_rates", "balances"],
        *,
        exchange: ExchangeName | str | None = None,
        symbols: Sequence[str] | None = None,
        symbol_ids: Sequence[int] | None = None,
        max_pending: int = 100_000,
    ) -> Subscription:
        """Commit notifications of ``table`` (one per committed batch), for ``async with`` then ``async for``.

        Narrow them to an exchange, to native ``symbols`` of that exchange, or to ``symbol_ids`` (for
        ``balances``: an exchange only). The subscription listens on its own connection to the primary, reconnects
        by itself, and yields a catch-up notification for any gap; see :mod:`hftdb.read.notify`.

        >>> async with db.notifications("book_tickers", exchange="binance_spot") as feed:
        ...     async for note in feed:
        ...         quotes = await db.get_latest_book_tickers(symbol_ids=note.ids or None, primary=True)

        Read what a notification announces from the primary: a read replica may not have replayed the commit yet.
        """
        self._check_open()
        if table not in tablespec.TIME_SERIES:
            raise ValidationError(f"table must be one of {', '.join(tablespec.TIME_SERIES)}, got {table!r}")
        if table == "balances" and (symbols is not None or symbol_ids is not None):
            raise ValidationError("balances notifications filter by exchange only")
        if symbols is not None and exchange is None:
            raise ValidationError("symbols need an exchange: pass exchange=...")

        reader = self._reader
        assert reader is not None

        async def prepare() -> Filter:
            return await reader.notify_filter(table, exchange, symbols, symbol_ids)

        sub = Subscription(self.dsn, table, settings=self.settings.reads, prepare=prepare,
                           connect_timeout=self.settings.database.connect_timeout, max_pending=max_pending,
                           on_close=self._subscriptions.discard)
        self._subscriptions.add(sub)
        return sub

    def latest_mirror(
        self,
        table: Literal["book_tickers", "funding_rates"],
        *,
        exchange: ExchangeName | str | None = None,
        symbols: Sequence[str] | None = None,
        symbol_ids: Sequence[int] | None = None,
    ) -> LatestMirror:
        """The latest rows of ``table`` for a filter, in memory, kept current by commit notifications.

        For a strategy that wants every quote on every tick: ``mirror.snapshot()`` costs microseconds where a read
        of 1,000 rows costs over a millisecond. Use with ``async with``; see :class:`hftdb.read.notify.LatestMirror`.
        """
        if table not in _MIRRORED:
            raise ValidationError(f"table must be {' or '.join(map(repr, _MIRRORED))}, got {table!r}")
        sub = self.notifications(table, exchange=exchange, symbols=symbols, symbol_ids=symbol_ids)
        load = self._reads().mirror_loader(table, exchange, symbols, symbol_ids)
        return LatestMirror(sub, load, retry_max_s=self.settings.reads.listen_retry_max_s)

    def read_status(self) -> list[dict[str, Any]]:
        """Health, lag and read counters of the primary and of each read replica."""
        return self._read_router().status()

    async def check_reads(self) -> list[dict[str, Any]]:
        """Run a health round of the primary and the read replicas now (rotation follows it), then return
        :meth:`read_status`. The background rounds run every ``[reads] health_interval_ms`` regardless."""
        await self._read_router().check_now()
        return self.read_status()

    def _read_router(self) -> ReadRouter:
        self._check_open()
        assert self._router is not None  # set before the state becomes "open"
        return self._router

    # -- operations --------------------------------------------------------------------------------------------

    async def get_database_stats(self) -> dict[str, Any]:
        """Table sizes and row estimates, partitions, writer counters, cache hit/miss counters and pool usage;
        with an archive, what it holds (``archive``: days, files, rows, bytes per table)."""
        self._check_open()
        caches = self._catalog.cache_stats()
        if self._latest_cache is not None:
            caches["latest"] = self._latest_cache.stats()
        stats = await reads.database_stats(self._open_pool, writers=self._writers, caches=caches, router=self._router)
        if self._archive_summary is not None:
            stats["archive"] = await asyncio.to_thread(self._archive_summary.read, hot=stats.get("tables"))
        return stats

    async def cleanup_old_data(
        self, retention: timedelta | float | None = None, *, dry_run: bool = False
    ) -> dict[str, list[str]]:
        """Drop whole partitions older than ``retention`` (a timedelta or days; default from settings).

        With an archive (``[archive] root`` set) each partition is archived to Parquet first and dropped only
        once its files are verified (:meth:`archive_partitions`), and archived days past ``[archive]
        retention_days`` are deleted. Never DELETEs rows from time-series tables. Returns the partitions dropped
        (or that would be, with ``dry_run``) per table.
        """
        self._check_open()
        days = _days(retention, self.settings.storage.retention_days, "retention")
        now = now_us()
        cutoff = now - int(days * 86_400_000_000)
        dropped: dict[str, list[str]] = {}
        async with self._open_pool.acquire() as conn:
            if archive.enabled(self.settings.archive):
                if not dry_run:
                    archive.require_pyarrow()
                dropped = await self._archive_then_drop(conn, cutoff, now, dry_run=dry_run)
            else:
                for table in tablespec.TIME_SERIES:
                    dropped[table] = await partitions.drop_partitions_before(conn, table, cutoff, dry_run=dry_run)
        if not dry_run:
            for w in self._writers.values():
                w.forget_partitions()
        return dropped

    async def archive_partitions(
        self, older_than: timedelta | float | None = None, *, tables: Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> dict[str, archive.ArchiveReport]:
        """Move sealed partitions older than ``older_than`` (a timedelta or days; default ``[archive] after_days``)
        to the Parquet tier under ``[archive] root``: written, verified against PostgreSQL, then dropped.

        ``tables`` narrows it (default: all three time-series tables). Idempotent, and a rerun finishes what an
        interrupted one left (see :mod:`hftdb.read.archive`). With ``dry_run`` nothing is written or dropped: the
        reports list the partitions that would be archived. Needs ``pip install 'hftdb[archive]'``.
        """
        self._check_open()
        days = _days(older_than, self.settings.archive.after_days, "older_than")
        if tables is not None and (isinstance(tables, (str, bytes)) or not isinstance(tables, Iterable)):
            raise ValidationError(f"tables must be a list of table names (e.g. ['book_tickers']), got {tables!r}")
        chosen = list(tablespec.TIME_SERIES if tables is None else tables)
        for t in chosen:
            if t not in tablespec.TIME_SERIES:
                raise ValidationError(f"tables: {t!r} is not one of {', '.join(tablespec.TIME_SERIES)}")
        if not dry_run:
            archive.require_pyarrow()
        cutoff = now_us() - int(days * 86_400_000_000)
        reports = {}
        failed: DatabaseError | None = None
        async with self._open_pool.acquire() as conn:
            for t in chosen:
                try:
                    reports[t] = await archive.archive_table(
                        conn, t, settings=self.settings.archive, cutoff_us=cutoff,
                        interval_s=self.settings.storage.partition_interval_s, dry_run=dry_run)
                except DatabaseUnavailableError:
                    raise
                except DatabaseError as exc:  # (a damaged manifest): the other tables are archived all the same
                    failed = failed or exc
        if not dry_run:
            for w in self._writers.values():
                w.forget_partitions()
        if failed is not None:
            raise failed
        return reports

    async def restore_archive(self, table: str, date: str) -> tuple[list[str], int]:
        """Load ``table``'s archived day ``date`` (``YYYY-MM-DD``) back into PostgreSQL; return the partitions
        restored and their rows. The files are deleted once the rows are in and checked; the upkeep archives the
        day again once it is older than ``[archive] after_days``."""
        self._check_open()
        async with self._open_pool.acquire() as conn:
            result = await archive.restore_day(conn, table, date, settings=self.settings.archive,
                                               interval_s=self.settings.storage.partition_interval_s)
        for w in self._writers.values():
            w.forget_partitions()
        return result

    async def _archive_then_drop(self, conn: asyncpg.Connection, cutoff: int, now: int, *,
                                 dry_run: bool = False) -> dict[str, list[str]]:
        arch = self.settings.archive
        out: dict[str, list[str]] = {}
        failed: DatabaseError | None = None
        for table in tablespec.TIME_SERIES:
            try:
                report = await archive.archive_table(conn, table, settings=arch, cutoff_us=cutoff, dry_run=dry_run,
                                                     interval_s=self.settings.storage.partition_interval_s)
            except DatabaseUnavailableError:
                raise
            except DatabaseError as exc:
                # (A damaged manifest: that table's day stays in PostgreSQL.) The other tables' retention goes on.
                failed = failed or exc
                continue
            out[table] = report.pending if dry_run else report.archived + report.finished
            if arch.retention_days is not None and not dry_run:
                await archive.expire(arch.root, table, now - int(arch.retention_days * 86_400_000_000))
        if failed is not None:
            raise failed
        return out

    async def run_maintenance(self) -> Any:
        """Create partitions ahead, index sealed partitions, apply retention and trim the batch ledger.

        With an archive (``[archive] root`` set), retention archives partitions older than the smaller of
        ``[archive] after_days`` and ``[storage] retention_days`` before dropping them, and deletes archived days
        past ``[archive] retention_days``; without pyarrow it keeps them all and logs an error naming the extra.
        """
        self._check_open()
        arch = self.settings.archive
        storage = self.settings.storage
        now = now_us()
        async with self._open_pool.acquire() as conn:
            report = await partitions.maintain(conn, storage, now, drop=not archive.enabled(arch))
            if archive.enabled(arch):
                try:
                    archive.require_pyarrow()
                except ValidationError as exc:
                    # Dropping without the copy the configuration asks for would lose history: keep it all.
                    logger.error("retention dropped nothing: %s (or set [archive] root = \"\" to drop without "
                                 "archiving)", exc)
                else:
                    days = min(arch.after_days, storage.retention_days)
                    moved = await self._archive_then_drop(conn, now - int(days * 86_400_000_000), now)
                    report = msgspec.structs.replace(
                        report, dropped=report.dropped + [n for names in moved.values() for n in names])
        for w in self._writers.values():
            w.forget_partitions()
        return report

    async def distribute(self) -> citus.DistributeReport:
        """On a Citus coordinator, distribute hftdb's tables over the workers (:func:`hftdb.db.citus.distribute`:
        reference, distributed and colocated as :data:`hftdb.db.citus.LAYOUT`); idempotent. Raises
        :class:`StateError` on plain PostgreSQL or without a worker. ``[storage] distribute = true`` does it at
        start."""
        async with self._open_pool.acquire() as conn:
            return await citus.distribute(conn)

    async def health_check(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Whether the database answers, how fast, how much each writer holds uncommitted, and the read pools'
        nodes as :meth:`read_status` gives them (``reads``)."""
        timeout = _timeout(timeout)  # type: ignore[assignment]  # (never None here)
        result: dict[str, Any] = {"state": self._state, "ok": False}
        if self._state != "open":
            result["error"] = f"manager is {self._state}"
            return result
        started = time.perf_counter()
        try:
            async with self._open_pool.acquire(timeout=timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=timeout)
            result["ok"] = True
            result["latency_ms"] = (time.perf_counter() - started) * 1000
        except (*RETRYABLE,) as exc:
            result["error"] = f"{type(exc).__name__}: {redact_dsn(str(exc))}"
        result["writers"] = {
            name: {"pending_rows": w.pending_rows, "retries": w.stats.retries, "last_error": w.stats.last_error}
            for name, w in self._writers.items()
        }
        result["reads"] = self._read_router().status()  # (no I/O: the background health rounds' last word)
        return result


class FeedSink:
    """What :meth:`DatabaseManager.feed_sink` hands out: the sink of the exchange feeds
    (:class:`hftdb.exchanges.sink.PackedSink`). Everything but the packed book rows is the manager's public API;
    those go to the manager's own packed path, so they live on this object, not on the manager."""

    __slots__ = ("_db",)

    def __init__(self, db: DatabaseManager) -> None:
        self._db = db

    def __repr__(self) -> str:
        return f"FeedSink({self._db!r})"

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        """:meth:`DatabaseManager.resolve_symbol_id`: the cached id, or None; no I/O."""
        return self._db.resolve_symbol_id(exchange, symbol)

    async def insert_exchange(self, exchange: Exchange | ExchangeName | str) -> Exchange:
        """:meth:`DatabaseManager.insert_exchange`."""
        return await self._db.insert_exchange(exchange)

    async def get_exchange_by_enum(self, name: ExchangeName | str) -> Exchange:
        """:meth:`DatabaseManager.get_exchange_by_enum`."""
        return await self._db.get_exchange_by_enum(name)

    async def sync_symbols(self, exchange: ExchangeName | str, symbols: Sequence[Symbol]) -> tuple[int, int]:
        """:meth:`DatabaseManager.sync_symbols`."""
        return await self._db.sync_symbols(exchange, symbols)

    async def insert_book_ticker_snapshots(self, rows: Iterable[BookTicker]) -> int:
        """:meth:`DatabaseManager.insert_book_ticker_snapshots`."""
        return await self._db.insert_book_ticker_snapshots(rows)

    async def insert_packed_book_tickers(self, rows: PackedBooks | BookTuples) -> int:
        """Book tickers whose COPY tuples the feed's intake packed while parsing them (:mod:`hftdb.store.packed`), with
        their records or, from the file replay, without (:class:`~hftdb.wire.books.BookTuples`): taken whole when
        every row was packed and every id is registered, otherwise exactly as
        :meth:`insert_book_ticker_snapshots` takes them (same rows, same rejects)."""
        return await self._db._insert_packed(rows)

    async def insert_funding_rates(self, rows: Iterable[FundingRate]) -> int:
        """:meth:`DatabaseManager.insert_funding_rates`."""
        return await self._db.insert_funding_rates(rows)

    async def insert_balance_snapshots(self, rows: Iterable[Balance]) -> int:
        """:meth:`DatabaseManager.insert_balance_snapshots`."""
        return await self._db.insert_balance_snapshots(rows)

    async def flush(self) -> None:
        """:meth:`DatabaseManager.flush`."""
        await self._db.flush()


async def _to_the_end(step: Coroutine[Any, Any, None]) -> None:
    """Run ``step`` to its end even when the caller is cancelled meanwhile, as often as it is; then raise the
    cancellation (its exception, if it raised one)."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                raise  # the step itself was cancelled (the loop shutting down)
            cancelled = exc
            continue
        break
    if cancelled is not None:
        raise cancelled


def _writer_class(table: str) -> type[BatchWriter]:
    # The registry names each table's writer; the classes live on the write path, which the registry cannot import.
    cls: type[BatchWriter] = getattr(tables, tablespec.spec(table).encoder)
    return cls


def _days(value: timedelta | float | None, default: float, name: str) -> float:
    if value is None:
        days = default
    elif isinstance(value, timedelta):
        days = value.total_seconds() / 86400
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        # (An int float() cannot hold is out of range anyway: only its sign matters.)
        big = not isinstance(value, float) and abs(value) > MAX_DAYS
        days = float(value) if not big else math.inf if value > 0 else -math.inf
    else:
        raise ValidationError(f"{name} must be a timedelta or a number of days, got {value!r}")
    if days != days:
        raise ValidationError(f"{name} must be a number of days, got {value!r}")
    if not days > 0:
        raise ValidationError(f"{name} must be positive, got {days} days")
    if days > MAX_DAYS:
        raise ValidationError(f"{name} must be at most {MAX_DAYS} days, got {days if math.isinf(days) else value!r}")
    return days


def _timeout(value: Any, *, none: bool = False) -> float | None:
    # A call's timeout: a finite number of seconds >= 0 (None too where ``none``).
    if value is None and none:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf:
        return float(value)
    raise ValidationError(f"timeout must be a finite number of seconds >= 0{' or None' if none else ''}, "
                          f"got {value!r}")


def _brief(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _records(writer: tables.BookTickerWriter | tables.FundingRateWriter, rows: list[Any]) -> list[Any]:
    # The rows that are the writer's record; each other element rejected alone. One C pass when all are.
    record = writer.record
    if set(map(type, rows)) == {record}:
        return rows
    reason = NOT_A_RECORD[record]
    kept = []
    for r in rows:
        if isinstance(r, record):
            kept.append(r)
        else:
            writer.rejects.add(reason, _brief(r))
    return kept


def _record_pairs(writer: tables.BookTickerWriter | tables.FundingRateWriter,
                  pairs: Iterable[tuple[int, Any]]) -> list[tuple[int, Any]]:
    # (id, row) pairs whose row is the writer's record; each other element rejected alone.
    record = writer.record
    reason = NOT_A_RECORD[record]
    kept = []
    for pair in pairs:
        if isinstance(pair[1], record):
            kept.append(pair)
        else:
            writer.rejects.add(reason, _brief(pair[1]))
    return kept

"""``DatabaseManager``: the one public front of hftdb.

It owns the asyncpg pool (and the embedded server when no DSN is configured), the exchange and symbol caches,
and one batch writer per time-series table. The work is delegated to small modules: :mod:`hftdb.writer` and
:mod:`hftdb.tables` (batching and COPY), :mod:`hftdb.cache`, :mod:`hftdb.schema` (migrations, partitions),
:mod:`hftdb.server` (embedded PostgreSQL) and :mod:`hftdb.reads` (queries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Literal, Sequence

import asyncpg
import msgspec

from . import archive, packed, partitions, reads, schema
from .cache import TTLCache
from .config import Settings, dsn_problem, load_settings, redact_dsn
from .redact import register_dsn
from .copy import PG_EPOCH_US
from .errors import (
    ClosedError,
    ConfigError,
    DatabaseUnavailableError,
    StateError,
    UnknownExchangeError,
    UnknownSymbolError,
    ValidationError,
)
from .models import Balance, BookTicker, Exchange, ExchangeName, FundingRate, Symbol, now_us
from .notify import TABLES as NOTIFY_TABLES
from .notify import Filter, LatestMirror, Subscription
from .replicas import ReadRouter
from .resolve import MAX_SYMBOL_LEN, RowResolver
from .server import EmbeddedServer
from .tables import BalanceWriter, BookTickerWriter, FundingRateWriter, bad_text
from .unit import UnitOfWork
from .writer import RETRYABLE, BatchWriter

__all__ = ["DatabaseManager"]

logger = logging.getLogger(__name__)

_MAX_EXCHANGE_LEN = 32
_SYMBOL_ID = attrgetter("symbol_id")
_EXCHANGE = attrgetter("exchange")
_SYMBOL = attrgetter("symbol")
_DERIVATIVE_VENUES = {ExchangeName.BINANCE_USDM, ExchangeName.BYBIT_LINEAR, ExchangeName.OKX_SWAP}


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
        elif not isinstance(settings, Settings):
            raise ValueError(f"settings must be hftdb.Settings, got {type(settings).__name__}")
        if dsn is not None and not isinstance(dsn, str):
            raise ValueError(f"dsn must be a string, got {type(dsn).__name__}")
        if dsn:
            register_dsn(dsn)
            if problem := dsn_problem(dsn):
                raise ConfigError(f"dsn: {problem}")
        self.settings = settings
        self._dsn = dsn or settings.database.dsn
        self._spool_dir = spool_dir if spool_dir is not None else settings.writer.spool_dir
        self._notify = notify
        self._state = "new"
        self._server: EmbeddedServer | None = None
        self._pool: asyncpg.Pool | None = None
        ttl = settings.cache.ttl_s
        self._exchanges = TTLCache[str, Exchange](ttl)
        self._symbols_by_id = TTLCache[int, Symbol](ttl)
        self._symbol_ids = TTLCache[tuple[str, str], int](ttl)
        self._exchange_names: dict[int, str] = {}
        # Ids are identities: once a symbol id exists it never means another symbol. A plain set lets the hot
        # path check a caller's symbol_id in ~30 ns instead of a TTL lookup; invalidate_caches() clears it.
        self._known_ids: set[int] = set()
        self._resolver = RowResolver(self)
        self._latest_cache = TTLCache[Any, Any](settings.cache.latest_ttl_ms / 1000) if settings.cache.latest_ttl_ms else None
        self._writers: dict[str, BatchWriter] = {}
        self._directory = reads.SymbolDirectory()
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
    def server(self) -> EmbeddedServer | None:
        """The embedded server, when hftdb started one."""
        return self._server

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool (timestamptz as integer Unix microseconds on its connections)."""
        self._check_open()
        assert self._pool is not None
        return self._pool

    async def initialize(self) -> None:
        """Start or connect to PostgreSQL, apply migrations, warm the caches and start the writers."""
        async with self._lock:
            if self._state == "open":
                return
            if self._state != "new":
                raise ClosedError("this DatabaseManager is closed; create a new one")
            db = self.settings.database
            try:
                if self._dsn is None:
                    self._server = EmbeddedServer(db.data_dir)
                    self._dsn = await self._server.start()
                self._pool = await self._create_pool()
                async with self._pool.acquire() as conn:
                    await schema.migrate(conn)
                    await partitions.maintain(conn, self.settings.storage, now_us(), retention=False)
                await self._warm_caches()
                self._router = ReadRouter(self._dsn, self.settings.reads, database=db)
                await self._router.start()
                self._reader = reads.Reader(self._router, self._directory, exchange=self.get_exchange_by_enum,
                                            symbol_id=self._symbol_id, latest_cache=self._latest_cache,
                                            archive=archive.ArchiveTier(self.settings.archive.root)
                                            if archive.enabled(self.settings.archive) else None)
                spool_root = Path(self._spool_dir) if self._spool_dir else None
                for cls in (BookTickerWriter, FundingRateWriter, BalanceWriter):
                    writer = cls(
                        self._pool, settings=self.settings.writer, storage=self.settings.storage,
                        spool_dir=spool_root, notify=self._notify, command_timeout=db.command_timeout,
                    )
                    await writer.start()
                    self._writers[cls.table] = writer
            except BaseException:
                await self._teardown()
                self._state = "closed"
                raise
            self._state = "open"
            logger.info("hftdb open on %s", redact_dsn(self._dsn))

    async def _create_pool(self) -> asyncpg.Pool:
        db = self.settings.database
        deadline = time.monotonic() + db.connect_timeout
        delay = 0.1
        while True:
            try:
                return await asyncpg.create_pool(
                    self._dsn, min_size=db.pool_min_size, max_size=max(db.pool_max_size, db.pool_min_size),
                    command_timeout=db.command_timeout, timeout=db.connect_timeout, init=init_connection,
                )
            except RETRYABLE as exc:
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailableError(
                        f"cannot connect to {redact_dsn(self._dsn)}: {type(exc).__name__}: {redact_dsn(str(exc))}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self, *, timeout: float = 30.0) -> None:
        """Flush every writer (spooling what cannot be committed in ``timeout``), close the pool. Idempotent."""
        async with self._lock:
            if self._state == "closed":
                return
            self._state = "closing"
            try:
                await asyncio.gather(*(w.close(timeout=timeout) for w in self._writers.values()))
            finally:
                await self._teardown()
                self._state = "closed"

    async def _teardown(self) -> None:
        for sub in list(self._subscriptions):
            await sub.close()
        for writer in self._writers.values():
            await writer.terminate()
        router, self._router = self._router, None
        if router is not None:
            await router.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (asyncio.TimeoutError, *RETRYABLE):
                pool.terminate()
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def _check_open(self) -> None:
        if self._state != "open":
            if self._state == "new":
                raise StateError("DatabaseManager is not initialized: use 'async with' or await initialize()")
            raise ClosedError("DatabaseManager is closed")

    # -- caches ------------------------------------------------------------------------------------------------

    async def _warm_caches(self) -> None:
        assert self._pool is not None
        for ex in await reads.fetch_exchanges(self._pool):
            self._remember_exchange(ex)
        for sym in await reads.fetch_symbols(self._pool):
            self._remember_symbol(sym)

    def _remember_exchange(self, ex: Exchange) -> None:
        assert ex.id is not None
        self._exchanges.set(ex.name, ex)
        self._exchange_names[ex.id] = ex.name

    def _remember_symbol(self, sym: Symbol) -> None:
        assert sym.id is not None
        self._symbols_by_id.set(sym.id, sym)
        self._known_ids.add(sym.id)
        name = self._exchange_names.get(sym.exchange_id)
        if name is not None:
            self._symbol_ids.set((name, sym.symbol), sym.id)
            self._directory.remember(sym.id, sym.exchange_id, name, sym.symbol)

    def invalidate_caches(self, *, exchanges: bool = True, symbols: bool = True) -> None:
        """Drop cached exchanges and/or symbols; the next lookups read the database."""
        if exchanges:
            self._exchanges.invalidate()
        if symbols:
            self._symbols_by_id.invalidate()
            self._symbol_ids.invalidate()
            self._known_ids.clear()
        if self._latest_cache is not None:
            self._latest_cache.invalidate()

    def resolve_symbol_id(self, exchange: str, symbol: str) -> int | None:
        """The cached id of ``exchange``/``symbol``, or None on a cache miss. Never touches the database."""
        return self._symbol_ids.get((exchange, symbol))

    # -- exchanges ---------------------------------------------------------------------------------------------

    async def insert_exchange(self, exchange: Exchange | ExchangeName | str, *, market: str | None = None) -> Exchange:
        """Register an exchange (or update its market and active flag); return it with its id."""
        self._check_open()
        if isinstance(exchange, Exchange):
            name, mkt, active = exchange.name, exchange.market, exchange.active
        else:
            name = _exchange_name(exchange)
            mkt = market or ("derivatives" if name in {v.value for v in _DERIVATIVE_VENUES} else "spot")
            active = True
        if not 0 < len(name) <= _MAX_EXCHANGE_LEN or bad_text(name):
            raise ValidationError(f"exchange name must be 1..{_MAX_EXCHANGE_LEN} printable characters, got {name!r}")
        if mkt not in ("spot", "derivatives"):
            raise ValidationError(f"market must be 'spot' or 'derivatives', got {mkt!r}")
        ex = await reads.upsert_exchange(self.pool, name, mkt, active)
        self._remember_exchange(ex)
        return ex

    async def get_exchange_by_enum(self, name: ExchangeName | str) -> Exchange:
        """The exchange named by ``name`` (an :class:`ExchangeName` or its string); UnknownExchangeError if absent."""
        self._check_open()
        key = _exchange_name(name)
        ex = self._exchanges.get(key)
        if ex is None:
            ex = await reads.fetch_exchange(self.pool, key)
            if ex is None:
                raise UnknownExchangeError(f"unknown exchange {key!r}; register it with insert_exchange()")
            self._remember_exchange(ex)
        return ex

    async def get_all_exchanges(self) -> list[Exchange]:
        """Every registered exchange, by id."""
        self._check_open()
        exchanges = await reads.fetch_exchanges(self.pool)
        for ex in exchanges:
            self._remember_exchange(ex)
        return exchanges

    # -- symbols -----------------------------------------------------------------------------------------------

    async def insert_symbol(self, symbol: Symbol) -> Symbol:
        """Register a symbol or update its metadata (upsert on exchange and native symbol); return it with its id."""
        self._check_open()
        _check_symbol(symbol)
        sym = (await reads.upsert_symbols(self.pool, [symbol]))[0]
        self._remember_symbol(sym)
        return sym

    async def sync_symbols(self, exchange: ExchangeName | str, symbols: Sequence[Symbol]) -> tuple[int, int]:
        """Upsert an exchange's full instrument list; mark its symbols missing from the list 'delisted'.

        Returns ``(upserted, delisted)``. Invalid entries raise :class:`ValidationError` before anything is
        written.
        """
        ex = await self.get_exchange_by_enum(exchange)
        for s in symbols:
            _check_symbol(s)
            if s.exchange_id != ex.id:
                raise ValidationError(f"symbol {s.symbol!r} has exchange_id {s.exchange_id}, expected {ex.id}")
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await reads.upsert_symbols(conn, list(symbols))
            delisted = await reads.delist_missing(conn, ex.id, [s.symbol for s in symbols])  # type: ignore[arg-type]
        for sym in rows:
            self._remember_symbol(sym)
        self._symbols_by_id.invalidate()
        for sym in rows:
            self._symbols_by_id.set(sym.id, sym)  # type: ignore[arg-type]
        return len(rows), delisted

    async def get_symbol_by_id(self, symbol_id: int) -> Symbol:
        """The symbol with this id; UnknownSymbolError if there is none."""
        self._check_open()
        if type(symbol_id) is not int:
            raise ValidationError(f"symbol_id must be an int, got {type(symbol_id).__name__}")
        sym = self._symbols_by_id.get(symbol_id)
        if sym is None:
            sym = await reads.fetch_symbol(self.pool, symbol_id)
            if sym is None:
                raise UnknownSymbolError(f"unknown symbol id {symbol_id}")
            self._remember_symbol(sym)
        return sym

    async def get_symbol(self, exchange: ExchangeName | str, symbol: str) -> Symbol:
        """The symbol named by exchange and native symbol; UnknownSymbolError if there is none."""
        sid = await self._symbol_id(exchange, symbol)
        return await self.get_symbol_by_id(sid)

    async def get_symbols_by_exchange(self, exchange: ExchangeName | str, *, status: str | None = None) -> list[Symbol]:
        """Every symbol of an exchange (optionally only those with ``status``), by native symbol."""
        ex = await self.get_exchange_by_enum(exchange)
        symbols = await reads.fetch_symbols(self.pool, exchange_id=ex.id, status=status)
        for sym in symbols:
            self._remember_symbol(sym)
        return symbols

    async def _symbol_id(self, exchange: ExchangeName | str, symbol: str) -> int:
        name = _exchange_name(exchange)
        sid = self._symbol_ids.get((name, symbol))
        if sid is None:
            ex = await self.get_exchange_by_enum(name)
            sym = await reads.fetch_symbol_by_name(self.pool, ex.id, symbol)  # type: ignore[arg-type]
            if sym is None:
                raise UnknownSymbolError(f"unknown symbol {symbol!r} on {name}")
            self._remember_symbol(sym)
            sid = sym.id
        return sid  # type: ignore[return-value]

    # -- writes ------------------------------------------------------------------------------------------------

    async def insert_book_ticker_snapshots(self, tickers: Iterable[BookTicker]) -> int:
        """Accept book tickers for writing; return how many were taken (the rest are counted rejects).

        Rows are committed by the writer in group-commit batches; :meth:`flush` waits for them. An unknown symbol
        of a known exchange is registered on first sight; an unknown exchange raises UnknownExchangeError and
        takes no row of the call.
        """
        return await self._submit("book_tickers", tickers)

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
        try:
            sid = np.asarray(symbol_ids, dtype=np.int64)
            cols = [np.asarray(c, dtype=np.float64) for c in (bid_price, bid_qty, ask_price, ask_qty)]
            recv = np.asarray(recv_ts, dtype=np.int64)
            ex = None if exchange_ts is None else np.asarray(exchange_ts, dtype=np.int64)
            uid = None if update_id is None else np.asarray(update_id, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(f"book ticker columns must be numeric arrays: {exc}") from None
        n = len(sid)
        for name, col in (("bid_price", cols[0]), ("bid_qty", cols[1]), ("ask_price", cols[2]), ("ask_qty", cols[3]),
                          ("recv_ts", recv), ("exchange_ts", ex), ("update_id", uid)):
            if col is not None and (col.ndim != 1 or len(col) != n):
                raise ValidationError(f"{name} has shape {col.shape}, expected ({n},) like symbol_ids")
        if n == 0:
            return 0
        writer = self._writers["book_tickers"]
        await writer.reserve(n)
        unknown = ~np.isin(sid, np.fromiter(self._known_ids, dtype=np.int64, count=len(self._known_ids)))
        if unknown.any():
            # An id outside int4 would fail the lookup's statement: no symbol has it.
            lookup = [i for i in np.unique(sid[unknown]).tolist() if 0 < i < 2**31]
            found = await reads.fetch_symbols_by_ids(self.pool, lookup) if lookup else []
            for sym in found:
                self._remember_symbol(sym)
            unknown = ~np.isin(sid, np.fromiter(self._known_ids, dtype=np.int64, count=len(self._known_ids)))
            if unknown.any():
                for bad in sid[unknown].tolist():
                    writer.rejects.add("unknown_symbol_id", f"symbol_id {bad}")
                keep = ~unknown
                sid, recv = sid[keep], recv[keep]
                cols = [c[keep] for c in cols]
                ex = None if ex is None else ex[keep]
                uid = None if uid is None else uid[keep]
        from . import vector

        added = vector.add_columns(writer, sid, *cols, recv, ex, uid)  # type: ignore[arg-type]
        writer.submitted(added)
        return added

    async def insert_packed_book_tickers(self, rows: packed.PackedBooks) -> int:
        """Accept a feed's book tickers whose COPY tuples its intake packed while parsing (:mod:`hftdb.packed`).

        Taken whole when every row was packed and every id is registered; otherwise exactly as
        :meth:`insert_book_ticker_snapshots` takes them. Internal to the exchange feeds.
        """
        self._check_open()
        writer = self._writers["book_tickers"]
        await writer.reserve(len(rows))
        added = packed.add_packed(writer, rows, self._known_ids)  # type: ignore[arg-type]
        if added is None:
            return await self._submit("book_tickers", rows)
        writer.submitted(added)
        if self._latest_cache is not None:
            self._latest_cache.invalidate()
        return added

    async def insert_funding_rates(self, rates: Iterable[FundingRate]) -> int:
        """Accept funding rates for writing; return how many were taken. See :meth:`insert_book_ticker_snapshots`."""
        return await self._submit("funding_rates", rates)

    async def insert_balance_snapshots(self, balances: Iterable[Balance]) -> int:
        """Accept balances for writing; return how many were taken. Amounts are stored as exact numerics."""
        self._check_open()
        rows = balances if isinstance(balances, list) else list(balances)
        writer = self._writers["balances"]
        await writer.reserve(len(rows))
        pairs = []
        for r in rows:
            if isinstance(r.exchange, str) and bad_text(r.exchange):
                # No exchange has such a name, and looked up the server would refuse the query: a bad row.
                writer.rejects.add("exchange_bad_char", repr(r))
                continue
            ex = await self.get_exchange_by_enum(r.exchange)
            pairs.append((ex.id, r))
        added = writer.add(pairs)  # type: ignore[attr-defined]
        writer.submitted(added)
        return added

    async def _submit(self, table: str, rows: Iterable[Any]) -> int:
        self._check_open()
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return 0
        writer = self._writers[table]
        await writer.reserve(len(rows))
        added = None
        if writer.vectorizes(len(rows)):
            # (A small call goes straight to the per-row path: neither the names nor the rows are looked at twice.)
            sids = None
            if rows[0].symbol_id is None and list(map(_SYMBOL_ID, rows)).count(None) == len(rows):
                # Named by exchange and symbol: resolve the whole call from the cache at once; any miss (a new
                # symbol, an unknown exchange) sends the call down the per-row path, which handles each.
                sids = self._symbol_ids.get_many(zip(map(_EXCHANGE, rows), map(_SYMBOL, rows)))
                if None in sids:
                    sids = None
            if sids is not None or rows[0].symbol_id is not None:
                added = writer.add_fast(rows, self._known_ids, sids)  # type: ignore[arg-type]
        if added is None:
            pairs = await self._resolver.pairs(rows, writer)
            added = writer.add(pairs)  # type: ignore[attr-defined]
        writer.submitted(added)
        if self._latest_cache is not None and added:
            self._latest_cache.invalidate()
        return added

    async def flush(self, *, timeout: float | None = None) -> None:
        """Return once every row accepted before the call is committed."""
        self._check_open()
        await asyncio.gather(*(w.flush(timeout=timeout) for w in self._writers.values()))

    def writer(self, table: str) -> BatchWriter:
        """The batch writer of ``table`` ('book_tickers', 'funding_rates' or 'balances'), for its counters."""
        try:
            return self._writers[table]
        except KeyError:
            raise ValidationError(f"no writer for table {table!r}; tables: {', '.join(self._writers)}") from None

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
        async with self.pool.acquire() as conn:
            uow = UnitOfWork(self, conn)
            async with conn.transaction():
                yield uow
            uow._committed()

    # -- reads -------------------------------------------------------------------------------------------------
    # The bodies live in hftdb.reads.Reader (filters, caches, SQL, decoding); these are the documented front.

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
        self._check_open()
        return await self._reader.latest_book_tickers(  # type: ignore[union-attr]
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
        self._check_open()
        return await self._reader.latest_funding_rates(  # type: ignore[union-attr]
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
        decoded straight from binary COPY (see :mod:`hftdb.columnar`).
        """
        self._check_open()
        return await self._reader.book_ticker_history(  # type: ignore[union-attr]
            exchange, symbol, start=start, end=end, hours=hours, limit=limit, format=format, primary=primary)

    async def get_funding_rate_history(
        self, exchange: ExchangeName | str, symbol: str, *, start: int | None = None, end: int | None = None,
        hours: float | None = None, limit: int | None = None,
        format: Literal["objects", "columns", "numpy"] = "objects", primary: bool = False,
    ) -> Any:
        """Funding rates of one symbol in a receipt-time window, oldest first; ``format`` as for book tickers."""
        self._check_open()
        return await self._reader.funding_history(  # type: ignore[union-attr]
            exchange, symbol, start=start, end=end, hours=hours, limit=limit, format=format, primary=primary)

    async def get_latest_balances(
        self, exchange: ExchangeName | str | None = None, *, account: str | None = None, primary: bool = False
    ) -> list[Balance]:
        """The current balance of every asset (of one exchange and/or account), from ``balances_latest``."""
        self._check_open()
        return await self._reader.latest_balances(exchange, account, primary=primary)  # type: ignore[union-attr]

    async def get_balance_history(
        self, exchange: ExchangeName | str, asset: str, *, account: str = "default", start: int | None = None,
        end: int | None = None, hours: float | None = None, limit: int | None = None,
        format: Literal["objects", "columns", "numpy"] = "objects", primary: bool = False,
    ) -> Any:
        """Balance snapshots of one asset in a receipt-time window, oldest first.

        ``objects`` and ``columns`` keep amounts exact (Decimal); ``numpy`` gives float64 approximations.
        """
        self._check_open()
        return await self._reader.balance_history(  # type: ignore[union-attr]
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
        by itself, and yields a catch-up notification for any gap; see :mod:`hftdb.notify`.

        >>> async with db.notifications("book_tickers", exchange="binance_spot") as feed:
        ...     async for note in feed:
        ...         quotes = await db.get_latest_book_tickers(symbol_ids=note.ids or None)
        """
        self._check_open()
        if table not in NOTIFY_TABLES:
            raise ValidationError(f"table must be one of {', '.join(NOTIFY_TABLES)}, got {table!r}")
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
        of 1,000 rows costs over a millisecond. Use with ``async with``; see :class:`hftdb.notify.LatestMirror`.
        """
        if table not in ("book_tickers", "funding_rates"):
            raise ValidationError(f"table must be 'book_tickers' or 'funding_rates', got {table!r}")
        sub = self.notifications(table, exchange=exchange, symbols=symbols, symbol_ids=symbol_ids)
        load = self._reader.mirror_loader(table, exchange, symbols, symbol_ids)  # type: ignore[union-attr]
        return LatestMirror(sub, load, retry_max_s=self.settings.reads.listen_retry_max_s)

    def read_status(self) -> list[dict[str, Any]]:
        """Health, lag and read counters of the primary and of each read replica."""
        self._check_open()
        return self._router.status()  # type: ignore[union-attr]

    @property
    def read_router(self) -> ReadRouter:
        """The router that sends reads to replicas or the primary (for its health rounds and status)."""
        self._check_open()
        assert self._router is not None
        return self._router

    # -- operations --------------------------------------------------------------------------------------------

    async def get_database_stats(self) -> dict[str, Any]:
        """Table sizes and row estimates, partitions, writer counters, cache hit/miss counters and pool usage;
        with an archive, what it holds (``archive``: days, files, rows, bytes per table)."""
        self._check_open()
        caches = {"exchanges": self._exchanges, "symbols_by_id": self._symbols_by_id, "symbol_ids": self._symbol_ids,
                  "latest": self._latest_cache}
        stats = await reads.database_stats(self.pool, writers=self._writers, caches=caches, router=self._router)
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
        if retention is None:
            days = self.settings.storage.retention_days
        elif isinstance(retention, timedelta):
            days = retention.total_seconds() / 86400
        elif isinstance(retention, (int, float)) and not isinstance(retention, bool):
            days = float(retention)
        else:
            raise ValidationError(f"retention must be a timedelta or a number of days, got {retention!r}")
        if days <= 0:
            raise ValidationError(f"retention must be positive, got {days} days")
        now = now_us()
        cutoff = now - int(days * 86_400_000_000)
        dropped: dict[str, list[str]] = {}
        async with self.pool.acquire() as conn:
            if archive.enabled(self.settings.archive):
                if not dry_run:
                    archive.require_pyarrow()
                dropped = await self._archive_then_drop(conn, cutoff, now, dry_run=dry_run)
            else:
                for table in partitions.TIME_SERIES_TABLES:
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
        interrupted one left (see :mod:`hftdb.archive`). With ``dry_run`` nothing is written or dropped: the
        reports list the partitions that would be archived. Needs ``pip install 'hftdb[archive]'``.
        """
        self._check_open()
        days = _days(older_than, self.settings.archive.after_days, "older_than")
        chosen = list(partitions.TIME_SERIES_TABLES if tables is None else tables)
        for t in chosen:
            if t not in partitions.TIME_SERIES_TABLES:
                raise ValidationError(f"tables: {t!r} is not one of {', '.join(partitions.TIME_SERIES_TABLES)}")
        if not dry_run:
            archive.require_pyarrow()
        cutoff = now_us() - int(days * 86_400_000_000)
        reports = {}
        async with self.pool.acquire() as conn:
            for t in chosen:
                reports[t] = await archive.archive_table(
                    conn, t, settings=self.settings.archive, cutoff_us=cutoff,
                    interval_s=self.settings.storage.partition_interval_s, dry_run=dry_run)
        if not dry_run:
            for w in self._writers.values():
                w.forget_partitions()
        return reports

    async def restore_archive(self, table: str, date: str) -> tuple[list[str], int]:
        """Load ``table``'s archived day ``date`` (``YYYY-MM-DD``) back into PostgreSQL; return the partitions
        restored and their rows. The files are deleted once the rows are in and checked; the upkeep archives the
        day again once it is older than ``[archive] after_days``."""
        self._check_open()
        async with self.pool.acquire() as conn:
            result = await archive.restore_day(conn, table, date, settings=self.settings.archive,
                                               interval_s=self.settings.storage.partition_interval_s)
        for w in self._writers.values():
            w.forget_partitions()
        return result

    async def _archive_then_drop(self, conn: asyncpg.Connection, cutoff: int, now: int, *,
                                 dry_run: bool = False) -> dict[str, list[str]]:
        arch = self.settings.archive
        out: dict[str, list[str]] = {}
        for table in partitions.TIME_SERIES_TABLES:
            report = await archive.archive_table(conn, table, settings=arch, cutoff_us=cutoff, dry_run=dry_run,
                                                 interval_s=self.settings.storage.partition_interval_s)
            out[table] = report.pending if dry_run else report.archived + report.finished
            if arch.retention_days is not None and not dry_run:
                await archive.expire(arch.root, table, now - int(arch.retention_days * 86_400_000_000))
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
        async with self.pool.acquire() as conn:
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

    async def health_check(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Whether the database answers, how fast, and how much each writer holds uncommitted."""
        result: dict[str, Any] = {"state": self._state, "ok": False}
        if self._state != "open":
            result["error"] = f"manager is {self._state}"
            return result
        started = time.perf_counter()
        try:
            async with self.pool.acquire(timeout=timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=timeout)
            result["ok"] = True
            result["latency_ms"] = (time.perf_counter() - started) * 1000
        except (*RETRYABLE,) as exc:
            result["error"] = f"{type(exc).__name__}: {redact_dsn(str(exc))}"
        result["writers"] = {
            name: {"pending_rows": w.pending_rows, "retries": w.stats.retries, "last_error": w.stats.last_error}
            for name, w in self._writers.items()
        }
        return result


def _days(value: timedelta | float | None, default: float, name: str) -> float:
    if value is None:
        days = default
    elif isinstance(value, timedelta):
        days = value.total_seconds() / 86400
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        days = float(value)
    else:
        raise ValidationError(f"{name} must be a timedelta or a number of days, got {value!r}")
    if not days > 0:
        raise ValidationError(f"{name} must be positive, got {days} days")
    return days


def _exchange_name(name: ExchangeName | str) -> str:
    if isinstance(name, ExchangeName):
        return name.value
    if isinstance(name, str):
        return name
    raise ValidationError(f"exchange must be an ExchangeName or a string, got {type(name).__name__}")


def _check_symbol(symbol: Symbol) -> None:
    if not isinstance(symbol, Symbol):
        raise ValidationError(f"expected hftdb.Symbol, got {type(symbol).__name__}")
    if not isinstance(symbol.symbol, str) or not 0 < len(symbol.symbol) <= MAX_SYMBOL_LEN:
        raise ValidationError(f"symbol must be 1..{MAX_SYMBOL_LEN} characters, got {symbol.symbol!r}")
    if bad_text(symbol.symbol):
        raise ValidationError(f"symbol must hold printable characters only, got {symbol.symbol!r}")

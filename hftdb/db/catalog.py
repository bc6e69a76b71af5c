"""The symbol catalog: exchanges and symbols, their ids, their caches and their SQL, in one place.

:class:`SymbolCatalog` is owned by :class:`~hftdb.manager.DatabaseManager` and handed to the parts that need
names turned into ids: the row resolver of the write path (:mod:`hftdb.store.resolve`), the reader
(:mod:`hftdb.read.reads`) and units of work (:mod:`hftdb.store.unit`). It holds

- TTL caches of exchanges by name, symbols by id and symbol ids by (exchange, native symbol);
- the set of symbol ids ever seen (ids are identities: once assigned, an id never means another symbol, so the
  hot path checks a caller's ``symbol_id`` in a set instead of a TTL lookup);
- the :class:`SymbolDirectory` the reader builds records from (an id's exchange and native name, which never
  change);
- the SQL of the ``exchanges`` and ``symbols`` tables (values always bind parameters), including registration of
  a symbol on first sight.

No I/O happens in the constructor; :meth:`SymbolCatalog.open` takes the pool and warms the caches. The functions
at module level take anything with ``fetch``/``fetchrow``/``execute`` (a pool, or a connection inside a
transaction, as units of work use them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any, Iterable, Sequence, get_args

from .. import venues
from . import dberrors
from .cache import TTLCache
from ..errors import (ClosedError, DatabaseUnavailableError, StateError, UnknownExchangeError, UnknownSymbolError,
                      ValidationError)
from ..models import Exchange, ExchangeName, Symbol, SymbolStatus
from ..wire.rules import bad_text

__all__ = [
    "SymbolCatalog", "SymbolDirectory", "MAX_SYMBOL_LEN", "MAX_EXCHANGE_LEN", "ID_END", "STATUSES", "check_symbol",
    "exchange_name",
    "fetch_exchanges", "fetch_exchange", "upsert_exchange", "fetch_symbols", "fetch_symbol", "fetch_symbol_by_name",
    "fetch_symbols_by_ids", "upsert_symbols", "delist_missing", "register_symbols",
]

#: Longest native symbol accepted (the column is varchar(64)).
MAX_SYMBOL_LEN = 64
#: Longest exchange name accepted (the column is varchar(32)).
MAX_EXCHANGE_LEN = 32

logger = logging.getLogger(__name__)

#: One past the largest id an ``int4`` column holds: no symbol has an id outside (0, ID_END), and sent in a
#: lookup's statement such an id would fail it.
ID_END = 2**31
#: The statuses a symbol can have (the schema's CHECK on ``symbols.status``).
STATUSES: tuple[str, ...] = get_args(SymbolStatus)
#: How long an id found in a latest table but not in ``symbols`` is skipped before it is looked up again.
_ABSENT_RECHECK_S = 60.0


@contextlib.contextmanager
def _reachable(action: str) -> Iterator[None]:
    """Turn a database that went away under ``action`` (what :func:`dberrors.classify` calls ``WAIT``: a refused
    or lost connection, a restart, a terminated backend) into :class:`DatabaseUnavailableError`, which callers
    outside the database layer (the feeds' symbol sync, the daemon's start) know to wait out. Anything else
    (a constraint, a syntax error: a bug) propagates as it is."""
    try:
        yield
    except dberrors.CATCH as exc:
        if dberrors.classify(exc) != dberrors.WAIT:
            raise
        raise DatabaseUnavailableError(f"{action}: the database is unavailable ({dberrors.describe(exc)})") from exc


class SymbolDirectory:
    """What never changes about a symbol id: its exchange and native name. Records are built from it, not joins.

    An id's exchange and symbol are fixed once assigned (upserts keep the id; identity never reuses one), so the
    maps need no expiry. An id not in them (registered by another process) is looked up once, on the read's own
    connection: a server that holds a latest row for the id also holds its symbol row, committed before it. An id
    the ``symbols`` table does not hold either (a row that reached a latest table without its symbol) is logged
    once and reported by :meth:`resolve`, and looked up again only after a minute, so reads can skip its rows.
    """

    __slots__ = ("exchange_of", "symbol_of", "exchange_ids", "_absent")

    def __init__(self) -> None:
        self.exchange_of: dict[int, str] = {}
        self.symbol_of: dict[int, str] = {}
        self.exchange_ids: dict[int, int] = {}
        self._absent: dict[int, float] = {}  # id -> when to look it up again

    def remember(self, symbol_id: int, exchange_id: int, exchange: str, symbol: str) -> None:
        """Record one symbol id."""
        self.exchange_of[symbol_id] = exchange
        self.symbol_of[symbol_id] = symbol
        self.exchange_ids[symbol_id] = exchange_id
        self._absent.pop(symbol_id, None)

    async def resolve(self, db: Any, ids: Iterable[int]) -> set[int]:
        """Look up the ids not known yet, in one query; return those that are no symbol's (none, usually)."""
        missing = {i for i in ids if i not in self.symbol_of}
        if not missing:
            return missing
        now = time.monotonic()
        absent = self._absent
        ask = sorted(i for i in missing if 0 < i < ID_END and absent.get(i, 0.0) <= now)
        if ask:
            rows = await db.fetch(
                """SELECT s.id, s.exchange_id, e.name, s.symbol FROM symbols s
                   JOIN exchanges e ON e.id = s.exchange_id WHERE s.id = ANY($1::int4[])""",
                ask,
            )
            for r in rows:
                self.remember(r[0], r[1], r[2], r[3])
            for i in ask:
                if i not in self.symbol_of:
                    if i not in absent:
                        logger.warning("symbol id %d is not a registered symbol: rows read with it are skipped", i)
                    absent[i] = now + _ABSENT_RECHECK_S
        return {i for i in missing if i not in self.symbol_of}


class SymbolCatalog:
    """Exchanges and symbols by name and id: cached lookups, registration, and the SQL behind them.

    Lookups that may read the database are coroutines and raise :class:`UnknownExchangeError` or
    :class:`UnknownSymbolError` for a name that is not registered; the ``cached_*`` methods never touch the
    database and answer None on a miss.
    """

    def __init__(self, *, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        self._pool: Any = None
        self._closed = False
        self._exchanges = TTLCache[str, Exchange](ttl)
        self._symbols_by_id = TTLCache[int, Symbol](ttl)
        self._symbol_ids = TTLCache[tuple[str, str], int](ttl)
        #: The live entries of ``_symbol_ids`` as {exchange: {symbol: id}}, for the writers' fast paths (one dict
        #: lookup per row on a cached string hash, no tuple key); valid until its first entry expires
        #: (``_names_until``), then rebuilt from the TTL cache's live entries (:meth:`names`).
        self._names: dict[str, dict[str, int]] = {}
        self._names_until = math.inf
        self._exchange_names: dict[int, str] = {}
        self._known_ids: set[int] = set()
        self.directory = SymbolDirectory()

    def __repr__(self) -> str:
        return (f"SymbolCatalog(exchanges={len(self._exchanges)}, symbols={len(self._symbols_by_id)}, "
                f"known_ids={len(self._known_ids)})")

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def open(self, pool: Any) -> None:
        """Use ``pool`` for lookups from now on and load every exchange and symbol into the caches."""
        self._pool = pool
        for ex in await fetch_exchanges(pool):
            self.remember_exchange(ex)
        for sym in await fetch_symbols(pool):
            self.remember_symbol(sym)

    def close(self) -> None:
        """Forget the pool (the caches stay, for a repr or stats after close)."""
        self._pool = None
        self._closed = True

    @property
    def _db(self) -> Any:
        if self._pool is None:
            # The manager's own error after close(): a late lookup (a subscription's filter) meets the same one.
            if self._closed:
                raise ClosedError("DatabaseManager is closed")
            raise StateError("the symbol catalog is not open")
        return self._pool

    # -- cache, no I/O -----------------------------------------------------------------------------------------

    @property
    def known_ids(self) -> set[int]:
        """Every symbol id seen so far (never expires; :meth:`invalidate` clears it). Read it, do not change it:
        the writers' fast paths check ids against this set."""
        return self._known_ids

    def remember_exchange(self, ex: Exchange) -> None:
        """Cache an exchange read from or written to the database."""
        if ex.id is None:
            raise ValueError(f"exchange {ex.name!r} has no id")
        self._exchanges.set(ex.name, ex)
        self._exchange_names[ex.id] = ex.name

    def remember_symbol(self, sym: Symbol) -> None:
        """Cache a symbol read from or written to the database."""
        if sym.id is None:
            raise ValueError(f"symbol {sym.symbol!r} has no id")
        self._symbols_by_id.set(sym.id, sym)
        self._known_ids.add(sym.id)
        name = self._exchange_names.get(sym.exchange_id)
        if name is not None:
            expires = self._symbol_ids.set((name, sym.symbol), sym.id)
            self._names.setdefault(name, {})[sym.symbol] = sym.id
            if expires < self._names_until:
                self._names_until = expires
            self.directory.remember(sym.id, sym.exchange_id, name, sym.symbol)

    def invalidate(self, *, exchanges: bool = True, symbols: bool = True) -> None:
        """Drop cached exchanges and/or symbols; the next lookups read the database."""
        if exchanges:
            self._exchanges.invalidate()
        if symbols:
            self._symbols_by_id.invalidate()
            self._symbol_ids.invalidate()
            self._names = {}
            self._names_until = math.inf
            self._known_ids.clear()

    def cached_id(self, exchange: str, symbol: str) -> int | None:
        """The cached id of ``exchange``/``symbol``, or None on a miss; ValidationError for a name that is no
        string."""
        try:
            return self._symbol_ids.get((exchange, symbol))
        except TypeError:  # an unhashable name (a list): checked only when it happens, the feeds call this a lot
            raise ValidationError(f"exchange and symbol must be strings, got {type(exchange).__name__} and "
                                  f"{type(symbol).__name__}") from None

    def names(self) -> dict[str, dict[str, int]]:
        """The cached symbol ids as {exchange: {symbol: id}}, every entry live (the writers' fast paths resolve a
        call's names in it at C level). Read it, do not change it; count what it resolved with :meth:`count_hits`.
        """
        if self._symbol_ids.now() >= self._names_until:
            names: dict[str, dict[str, int]] = {}
            until = math.inf
            for (exchange, symbol), sid, expires in self._symbol_ids.live_items():
                names.setdefault(exchange, {})[symbol] = sid
                until = min(until, expires)
            self._names, self._names_until = names, until
        return self._names

    def count_hits(self, n: int) -> None:
        """Count ``n`` names resolved through :meth:`names` as cache hits (``cache_stats``)."""
        self._symbol_ids.hits += n

    def pair_cached(self, rows: Iterable[Any]) -> tuple[list[tuple[int, Any]], list[Any]]:
        """Split written rows into (symbol id, row) pairs known from the cache, and the rows that need a lookup:
        a ``symbol_id`` never seen, or a name not cached."""
        get = self._symbol_ids.get
        known_ids = self._known_ids
        pairs: list[tuple[int, Any]] = []
        append = pairs.append
        missing: list[Any] = []
        for r in rows:
            sid = r.symbol_id
            if sid is None:
                sid = get((r.exchange, r.symbol))
                if sid is None:
                    missing.append(r)
                    continue
            elif sid not in known_ids:
                missing.append(r)
                continue
            append((sid, r))
        return pairs, missing

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Size and hit/miss counters of each cache, for ``get_database_stats``."""
        return {"exchanges": self._exchanges.stats(), "symbols_by_id": self._symbols_by_id.stats(),
                "symbol_ids": self._symbol_ids.stats()}

    # -- exchanges ---------------------------------------------------------------------------------------------

    async def add_exchange(self, exchange: Exchange | ExchangeName | str, *, market: str | None = None) -> Exchange:
        """Register an exchange (or update its market and active flag); return it with its id.

        Without ``market``, a registered venue gets its market (:mod:`hftdb.venues`), any other name ``'spot'``.
        """
        if isinstance(exchange, Exchange):
            name, mkt, active = exchange.name, exchange.market, exchange.active
        else:
            name = exchange_name(exchange)
            venue = venues.spec(name)
            mkt = market or (venue.market if venue is not None else "spot")
            active = True
        if not 0 < len(name) <= MAX_EXCHANGE_LEN or bad_text(name):
            raise ValidationError(f"exchange name must be 1..{MAX_EXCHANGE_LEN} printable characters, got {name!r}")
        if mkt not in ("spot", "derivatives"):
            raise ValidationError(f"market must be 'spot' or 'derivatives', got {mkt!r}")
        with _reachable(f"registering exchange {name!r}"):
            ex = await upsert_exchange(self._db, name, mkt, active)
        self.remember_exchange(ex)
        return ex

    async def exchange(self, name: ExchangeName | str) -> Exchange:
        """The exchange named ``name``, from the cache or the database; UnknownExchangeError if absent."""
        key = exchange_name(name)
        ex = self._exchanges.get(key)
        if ex is None:
            if bad_text(key):  # checked on a miss only: a cached name is a registered one
                raise ValidationError(f"exchange name must hold printable characters only, got {key!r}")
            ex = await fetch_exchange(self._db, key)
            if ex is None:
                raise UnknownExchangeError(f"unknown exchange {key!r}; register it with insert_exchange()")
            self.remember_exchange(ex)
        return ex

    async def exchanges(self) -> list[Exchange]:
        """Every registered exchange, by id, read from the database."""
        with _reachable("reading the exchanges"):
            found = await fetch_exchanges(self._db)
        for ex in found:
            self.remember_exchange(ex)
        return found

    # -- symbols -----------------------------------------------------------------------------------------------

    async def add_symbol(self, symbol: Symbol) -> Symbol:
        """Register a symbol or update its metadata (upsert on exchange and native symbol); return it with its id."""
        check_symbol(symbol)
        sym = (await upsert_symbols(self._db, [symbol]))[0]
        self.remember_symbol(sym)
        return sym

    async def sync(self, exchange: ExchangeName | str, symbols: Sequence[Symbol]) -> tuple[int, int]:
        """Upsert an exchange's full instrument list in one transaction and delist its symbols missing from it.

        Returns ``(upserted, delisted)``; an invalid entry raises ValidationError before anything is written, and
        a database that goes away meanwhile :class:`DatabaseUnavailableError` (the transaction rolled back).
        """
        with _reachable(f"syncing the symbols of {exchange_name(exchange)}"):
            ex = await self.exchange(exchange)
        exchange_id = ex.id
        assert exchange_id is not None  # remember_exchange refuses an exchange without one
        for s in symbols:
            check_symbol(s)
            if s.exchange_id != exchange_id:
                raise ValidationError(f"symbol {s.symbol!r} has exchange_id {s.exchange_id}, expected {exchange_id}")
        with _reachable(f"syncing the symbols of {ex.name}"):
            async with self._db.acquire() as conn, conn.transaction():
                rows = await upsert_symbols(conn, list(symbols))
                delisted = await delist_missing(conn, exchange_id, [s.symbol for s in symbols])
        for sym in rows:
            self.remember_symbol(sym)
        # The delisted symbols' cached records are stale (their status changed): drop them, keep the fresh ones.
        self._symbols_by_id.invalidate()
        for sym in rows:
            self.remember_symbol(sym)
        return len(rows), delisted

    async def symbol(self, symbol_id: int) -> Symbol:
        """The symbol with this id; UnknownSymbolError if there is none."""
        if type(symbol_id) is not int:
            raise ValidationError(f"symbol_id must be an int, got {type(symbol_id).__name__}")
        sym = self._symbols_by_id.get(symbol_id)
        if sym is None:
            if not 0 < symbol_id < ID_END:
                raise UnknownSymbolError(f"unknown symbol id {symbol_id}")
            sym = await fetch_symbol(self._db, symbol_id)
            if sym is None:
                raise UnknownSymbolError(f"unknown symbol id {symbol_id}")
            self.remember_symbol(sym)
        return sym

    async def symbol_id(self, exchange: ExchangeName | str, symbol: str) -> int:
        """The id of ``symbol`` on ``exchange``; UnknownExchangeError or UnknownSymbolError if either is absent."""
        name = exchange_name(exchange)
        if not isinstance(symbol, str):
            raise ValidationError(f"symbol must be a native symbol string, got {type(symbol).__name__}")
        sid = self._symbol_ids.get((name, symbol))
        if sid is not None:
            return sid
        if bad_text(symbol):  # checked on a miss only: a cached name is a registered one
            raise ValidationError(f"symbol must hold printable characters only, got {symbol!r}")
        ex = await self.exchange(name)
        assert ex.id is not None
        sym = await fetch_symbol_by_name(self._db, ex.id, symbol)
        if sym is None or sym.id is None:
            raise UnknownSymbolError(f"unknown symbol {symbol!r} on {name}")
        self.remember_symbol(sym)
        return sym.id

    async def symbols(self, exchange: ExchangeName | str, *, status: str | None = None) -> list[Symbol]:
        """Every symbol of an exchange (optionally only those with ``status``), by native symbol."""
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(map(repr, STATUSES))}, got {status!r}")
        with _reachable(f"reading the symbols of {exchange_name(exchange)}"):
            ex = await self.exchange(exchange)
            found = await fetch_symbols(self._db, exchange_id=ex.id, status=status)
        for sym in found:
            self.remember_symbol(sym)
        return found

    async def load_ids(self, ids: Iterable[int]) -> list[Symbol]:
        """Read the symbols of ``ids`` not yet known into the caches; return those found. Ids no ``int4`` column
        can hold are skipped: no symbol has them."""
        wanted = sorted({i for i in ids if type(i) is int and 0 < i < ID_END and i not in self._known_ids})
        found = await fetch_symbols_by_ids(self._db, wanted) if wanted else []
        for sym in found:
            self.remember_symbol(sym)
        return found

    async def register(self, exchange_id: int, names: list[str]) -> tuple[list[Symbol], int]:
        """Make sure each name exists as a symbol of the exchange (status 'unknown' until the next sync), in one
        statement, and cache them. Returns every requested symbol and how many were created now."""
        registered, created = await register_symbols(self._db, exchange_id, names)
        for sym in registered:
            self.remember_symbol(sym)
        return registered, created


def exchange_name(name: ExchangeName | str) -> str:
    """The string name of an exchange given as an :class:`ExchangeName` or a string; ValidationError otherwise."""
    if isinstance(name, ExchangeName):
        return name.value
    if isinstance(name, str):
        return name
    raise ValidationError(f"exchange must be an ExchangeName or a string, got {type(name).__name__}")


def check_symbol(symbol: Symbol) -> None:
    """Raise ValidationError unless ``symbol`` is a :class:`Symbol` whose native name the database can hold."""
    if not isinstance(symbol, Symbol):
        raise ValidationError(f"expected hftdb.Symbol, got {type(symbol).__name__}")
    if not isinstance(symbol.symbol, str) or not 0 < len(symbol.symbol) <= MAX_SYMBOL_LEN:
        raise ValidationError(f"symbol must be 1..{MAX_SYMBOL_LEN} characters, got {symbol.symbol!r}")
    if bad_text(symbol.symbol):
        raise ValidationError(f"symbol must hold printable characters only, got {symbol.symbol!r}")


# -- SQL ---------------------------------------------------------------------------------------------------------

_EXCHANGE_COLS = "id, name, market, active"
_SYMBOL_COLS = ("id, exchange_id, symbol, base, quote, kind, status, tick_size, lot_size, contract_size, "
                "last_synced")


def _exchange(r: Any) -> Exchange:
    return Exchange(id=r[0], name=r[1], market=r[2], active=r[3])


def _symbol(r: Any) -> Symbol:
    return Symbol(id=r[0], exchange_id=r[1], symbol=r[2], base=r[3], quote=r[4], kind=r[5], status=r[6],
                  tick_size=r[7], lot_size=r[8], contract_size=r[9], last_synced=r[10])


async def fetch_exchanges(db: Any) -> list[Exchange]:
    """Every exchange, by id."""
    return [_exchange(r) for r in await db.fetch(f"SELECT {_EXCHANGE_COLS} FROM exchanges ORDER BY id")]


async def fetch_exchange(db: Any, name: str) -> Exchange | None:
    """The exchange named ``name``, or None."""
    r = await db.fetchrow(f"SELECT {_EXCHANGE_COLS} FROM exchanges WHERE name = $1", name)
    return None if r is None else _exchange(r)


async def upsert_exchange(db: Any, name: str, market: str, active: bool) -> Exchange:
    """Insert an exchange, or update its market and active flag; return it with its id."""
    r = await db.fetchrow(
        f"""INSERT INTO exchanges (name, market, active) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE SET market = EXCLUDED.market, active = EXCLUDED.active
            RETURNING {_EXCHANGE_COLS}""",
        name, market, active,
    )
    return _exchange(r)


async def fetch_symbols(db: Any, *, exchange_id: int | None = None, status: str | None = None) -> list[Symbol]:
    """Symbols (of one exchange, with one status, or all), by exchange and native symbol."""
    rows = await db.fetch(
        f"""SELECT {_SYMBOL_COLS} FROM symbols
            WHERE ($1::int IS NULL OR exchange_id = $1) AND ($2::text IS NULL OR status = $2)
            ORDER BY exchange_id, symbol""",
        exchange_id, status,
    )
    return [_symbol(r) for r in rows]


async def fetch_symbol(db: Any, symbol_id: int) -> Symbol | None:
    """The symbol with this id, or None."""
    r = await db.fetchrow(f"SELECT {_SYMBOL_COLS} FROM symbols WHERE id = $1", symbol_id)
    return None if r is None else _symbol(r)


async def fetch_symbol_by_name(db: Any, exchange_id: int, symbol: str) -> Symbol | None:
    """The symbol ``symbol`` of the exchange ``exchange_id``, or None."""
    r = await db.fetchrow(f"SELECT {_SYMBOL_COLS} FROM symbols WHERE exchange_id = $1 AND symbol = $2",
                          exchange_id, symbol)
    return None if r is None else _symbol(r)


async def fetch_symbols_by_ids(db: Any, ids: Sequence[int]) -> list[Symbol]:
    """The symbols among ``ids`` (all within int4)."""
    rows = await db.fetch(f"SELECT {_SYMBOL_COLS} FROM symbols WHERE id = ANY($1::int[])", list(ids))
    return [_symbol(r) for r in rows]


async def upsert_symbols(db: Any, symbols: list[Symbol]) -> list[Symbol]:
    """Insert or update symbols on (exchange_id, symbol) in one statement; return them with ids."""
    if not symbols:
        return []
    cols = list(zip(*[
        (s.exchange_id, s.symbol, s.base, s.quote, s.kind, s.status, s.tick_size, s.lot_size, s.contract_size,
         s.last_synced)
        for s in symbols
    ]))
    rows = await db.fetch(
        f"""INSERT INTO symbols (exchange_id, symbol, base, quote, kind, status, tick_size, lot_size,
                                 contract_size, last_synced)
            SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::numeric[], $8::numeric[], $9::numeric[], $10::timestamptz[])
            ON CONFLICT (exchange_id, symbol) DO UPDATE SET
                base = COALESCE(EXCLUDED.base, symbols.base), quote = COALESCE(EXCLUDED.quote, symbols.quote),
                kind = CASE WHEN EXCLUDED.kind = 'unknown' THEN symbols.kind ELSE EXCLUDED.kind END,
                status = CASE WHEN EXCLUDED.status = 'unknown' THEN symbols.status ELSE EXCLUDED.status END,
                tick_size = COALESCE(EXCLUDED.tick_size, symbols.tick_size),
                lot_size = COALESCE(EXCLUDED.lot_size, symbols.lot_size),
                contract_size = COALESCE(EXCLUDED.contract_size, symbols.contract_size),
                last_synced = COALESCE(EXCLUDED.last_synced, symbols.last_synced)
            RETURNING {_SYMBOL_COLS}""",
        *[list(c) for c in cols],
    )
    return [_symbol(r) for r in rows]


async def delist_missing(db: Any, exchange_id: int, present: list[str]) -> int:
    """Mark the exchange's symbols not in ``present`` as delisted; return how many changed."""
    status = await db.execute(
        """UPDATE symbols SET status = 'delisted'
           WHERE exchange_id = $1 AND status <> 'delisted' AND NOT (symbol = ANY($2::text[]))""",
        exchange_id, present,
    )
    return int(status.split()[-1])


async def register_symbols(db: Any, exchange_id: int, names: list[str]) -> tuple[list[Symbol], int]:
    """Make sure each name exists as a symbol of the exchange (status 'unknown' until the next sync).

    Returns every requested symbol and how many were created now.
    """
    created = await db.fetch(
        """INSERT INTO symbols (exchange_id, symbol) SELECT $1, unnest($2::text[])
           ON CONFLICT (exchange_id, symbol) DO NOTHING RETURNING id""",
        exchange_id, names,
    )
    rows = await db.fetch(
        f"SELECT {_SYMBOL_COLS} FROM symbols WHERE exchange_id = $1 AND symbol = ANY($2::text[])", exchange_id, names
    )
    return [_symbol(r) for r in rows], len(created)

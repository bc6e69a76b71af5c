"""SQL of the read side. Values always travel as bind parameters.

:class:`Reader` serves the strategy-side reads (latest rows, history as objects, lists or numpy columns) over the
read pools of :mod:`hftdb.read.replicas`, turning names into ids with the :class:`~hftdb.db.catalog.SymbolCatalog` it is
given. The exchanges and symbols tables' own SQL lives in :mod:`hftdb.db.catalog`.
"""

from __future__ import annotations

import asyncio
import operator
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

import asyncpg

from ..db import citus
from ..db.catalog import ID_END
from . import columnar
from ..wire.copy import PG_EPOCH_US
from ..wire.rules import bad_text
from ..errors import ValidationError
from ..models import Balance, BookTicker, ExchangeName, FundingRate, now_us
from .notify import Filter
from ..tablespec import ALL_TABLES

if TYPE_CHECKING:
    from .archive import ArchiveTier
    from ..db.cache import TTLCache
    from ..db.catalog import SymbolCatalog
    from .replicas import ReadPool, ReadRouter

__all__ = ["table_stats", "database_stats", "Reader", "window", "check_limit"]

class Reader:
    """The strategy-side reads behind ``DatabaseManager``'s read methods, over a :class:`~hftdb.read.replicas.ReadRouter`.

    It checks the arguments, turns names into ids (with the manager's :class:`~hftdb.db.catalog.SymbolCatalog`),
    picks the SQL and decodes the result. Latest rows come from the tables' ``packed`` column
    (:class:`hftdb.read.columnar.PackedRows`); history timestamps are shifted to Unix microseconds on the server (the
    read pools decode them as raw int64 in C).
    """

    __slots__ = ("router", "directory", "_exchange", "_symbol_id", "_cache", "_archive")

    def __init__(self, router: ReadRouter, catalog: SymbolCatalog, *,
                 latest_cache: TTLCache[Any, Any] | None = None, archive: ArchiveTier | None = None) -> None:
        self.router = router
        self.directory = catalog.directory
        self._exchange = catalog.exchange
        self._symbol_id = catalog.symbol_id
        self._cache = latest_cache
        #: The Parquet tier history reads also take rows from (:mod:`hftdb.read.archive`), or None.
        self._archive = archive

    async def filter_ids(self, exchange: Any, symbols: Sequence[str] | None,
                         symbol_ids: Sequence[int] | None) -> tuple[str, Any]:
        """``("ids", ids)``, ``("exchange", exchange_id)`` or ``("all", None)``: which latest rows a read wants."""
        if symbol_ids is not None:
            try:
                ids = tuple(symbol_ids) if not isinstance(symbol_ids, (str, bytes)) else None
            except TypeError:
                ids = None
            if ids is None or not all(type(i) is int for i in ids):
                raise ValidationError(f"symbol_ids must be a list of integer ids, got {symbol_ids!r:.80}")
            if ids and (min(ids) <= 0 or max(ids) >= ID_END):
                ids = tuple([i for i in ids if 0 < i < ID_END])  # no symbol has such an id: not found
            return ("ids", ids)
        if symbols is not None:
            if exchange is None:
                raise ValidationError("symbols need an exchange: pass exchange=...")
            if isinstance(symbols, str):
                raise ValidationError("symbols must be a list of native symbols, not one string")
            return ("ids", tuple([await self._symbol_id(exchange, s) for s in symbols]))
        if exchange is not None:
            return ("exchange", (await self._exchange(exchange)).id)
        return ("all", None)

    async def notify_filter(self, table: str, exchange: Any, symbols: Sequence[str] | None,
                            symbol_ids: Sequence[int] | None) -> Filter:
        """The :class:`~hftdb.read.notify.Filter` of a ``DatabaseManager.notifications()`` subscription."""
        if symbol_ids is not None or symbols is not None:
            return Filter(ids=(await self.filter_ids(exchange, symbols, symbol_ids))[1])
        if exchange is None:
            return Filter()
        ex = await self._exchange(exchange)
        if table == "balances":
            return Filter(ids=[ex.id])  # type: ignore[list-item]
        return Filter(exchange_id=ex.id, exchange_of=self._exchange_ids_of)

    async def _exchange_ids_of(self, ids: list[int]) -> dict[int, int]:
        directory = self.directory
        if any(i not in directory.exchange_ids for i in ids):
            await self.router.run(lambda pool: directory.resolve(pool, ids), primary=True)
        return directory.exchange_ids

    def mirror_loader(self, table: str, exchange: Any, symbols: Sequence[str] | None,
                      symbol_ids: Sequence[int] | None) -> Callable[[tuple[int, ...] | None], Awaitable[list[Any]]]:
        """The ``load`` of a :class:`~hftdb.read.notify.LatestMirror`: the whole filter (None), or the given ids."""
        read = self.latest_book_tickers if table == "book_tickers" else self.latest_funding_rates

        async def load(ids: tuple[int, ...] | None) -> list[Any]:
            # The primary: a replica may not have replayed the commit the notification announced.
            if ids is None:
                return await read(exchange, symbols, symbol_ids, primary=True)
            return await read(None, None, list(ids), primary=True)

        return load

    # -- latest ----------------------------------------------------------------------------------------------
    # -- latest ----------------------------------------------------------------------------------------------

    async def latest_book_tickers(self, exchange: Any, symbols: Sequence[str] | None,
                                  symbol_ids: Sequence[int] | None, *, primary: bool = False) -> list[BookTicker]:
        """The book_tickers_latest rows of a filter (see ``DatabaseManager.get_latest_book_tickers``), in no order."""
        return await self._latest(_BT_LATEST, _BT_PACKED, exchange, symbols, symbol_ids, primary)

    async def latest_funding_rates(self, exchange: Any, symbols: Sequence[str] | None,
                                   symbol_ids: Sequence[int] | None, *, primary: bool = False) -> list[FundingRate]:
        """The funding_rates_latest rows of a filter, in no order."""
        return await self._latest(_FR_LATEST, _FR_PACKED, exchange, symbols, symbol_ids, primary)

    async def _latest(self, queries: dict[str, str], packed: columnar.PackedRows, exchange: Any,
                      symbols: Sequence[str] | None, symbol_ids: Sequence[int] | None, primary: bool) -> Any:
        name = None
        if exchange is not None and symbols is None and symbol_ids is None:
            ex = await self._exchange(exchange)
            filt: tuple[str, Any] = ("exchange", ex.id)
            name = ex.name  # one exchange's rows all carry its name: no lookup per row
        else:
            filt = await self.filter_ids(exchange, symbols, symbol_ids)
        # (primary=True is read-your-writes: the cache may hold a row a replica served before it replayed a commit)
        cache = self._cache if not primary else None
        key = (packed.record, filt)
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                return hit
        # A write call or a commit meanwhile may outdate what this read returns: then it is not cached.
        generation = cache.generation if cache is not None else 0
        kind, value = filt
        sql = queries[kind]
        args = (list(value),) if kind == "ids" else (value,) if kind == "exchange" else ()
        directory = self.directory

        async def read(pool: Any) -> Any:
            buf = await pool.fetchval(sql, *args)
            if buf is None:
                return []
            try:
                return packed.decode(buf, directory.exchange_of, directory.symbol_of, name)
            except KeyError:
                # Ids registered elsewhere are looked up (one query); rows of an id that is no symbol's are
                # skipped (the directory logs it once): one bad row must not fail every read of the table.
                unknown = await directory.resolve(pool, packed.ids(buf))
                if unknown:
                    buf = packed.without(buf, unknown)
                return packed.decode(buf, directory.exchange_of, directory.symbol_of, name)

        result = await self.router.run(read, primary=primary)
        if cache is not None:
            cache.set(key, result, generation=generation)
        return result

    async def latest_balances(self, exchange: Any, account: str | None, *, primary: bool = False) -> list[Balance]:
        """The balances_latest rows of one exchange and/or account (or all)."""
        if account is not None:
            _check_name("account", account)
        exchange_id = (await self._exchange(exchange)).id if exchange is not None else None

        async def read(pool: Any) -> list[Balance]:
            rows = await pool.fetch(_BAL_LATEST, exchange_id, account)
            return [Balance(exchange=r[0], asset=r[1], free=r[2], locked=r[3], recv_ts=r[4], exchange_ts=r[5],
                            account=r[6]) for r in rows]

        return await self.router.run(read, primary=primary)

    # -- history ---------------------------------------------------------------------------------------------

    async def book_ticker_history(self, exchange: Any, symbol: str, *, start: int | None, end: int | None,
                                  hours: float | None, limit: int | None, format: str,
                                  primary: bool = False) -> Any:
        """Book tickers of one symbol in a receipt-time window, oldest first, in ``format``."""
        columnar.check_format(format)
        lo, hi = window(start, end, hours)
        limit = check_limit(limit)
        symbol_id = await self._symbol_id(exchange, symbol)
        name = _exchange_name(exchange)
        if format == "objects":

            async def fetch(db: Any, source: str) -> list[BookTicker]:
                rows = await _fetch_history(db, _BT_HISTORY, source, (symbol_id,), lo, hi, limit, 4)
                return [BookTicker(name, symbol, bp, bq, ap, aq, rt, et, u, symbol_id)
                        for bp, bq, ap, aq, rt, et, u in rows]

            manifests, hot = await self._history("book_tickers", lo, hi, fetch, copy=False, primary=primary,
                                                 format=format, limit=limit)
        else:
            copy = _copy(_BT_LAYOUT, _BY_SYMBOL, (symbol_id,), lo, hi, limit, format)
            manifests, hot = await self._history("book_tickers", lo, hi, copy, copy=True, primary=primary,
                                                 format=format, limit=limit)
        if not manifests:
            return hot
        cols = await self._from_archive(manifests, "book_tickers", _BT_LAYOUT, format, exchange=name, lo=lo, hi=hi,
                                        symbol_id=symbol_id)
        cold = cols if format != "objects" else [
            BookTicker(name, symbol, *r, symbol_id) for r in zip(*(cols[k] for k in _BT_RECORD))]
        return _merge(cold, hot, format, limit)

    async def funding_history(self, exchange: Any, symbol: str, *, start: int | None, end: int | None,
                              hours: float | None, limit: int | None, format: str, primary: bool = False) -> Any:
        """Funding rates of one symbol in a receipt-time window, oldest first, in ``format``."""
        columnar.check_format(format)
        lo, hi = window(start, end, hours)
        limit = check_limit(limit)
        symbol_id = await self._symbol_id(exchange, symbol)
        name = _exchange_name(exchange)
        if format == "objects":

            async def fetch(db: Any, source: str) -> list[FundingRate]:
                rows = await _fetch_history(db, _FR_HISTORY, source, (symbol_id,), lo, hi, limit, 1)
                return [FundingRate(name, symbol, *r, symbol_id) for r in rows]

            manifests, hot = await self._history("funding_rates", lo, hi, fetch, copy=False, primary=primary,
                                                 format=format, limit=limit)
        else:
            copy = _copy(_FR_LAYOUT, _BY_SYMBOL, (symbol_id,), lo, hi, limit, format)
            manifests, hot = await self._history("funding_rates", lo, hi, copy, copy=True, primary=primary,
                                                 format=format, limit=limit)
        if not manifests:
            return hot
        cols = await self._from_archive(manifests, "funding_rates", _FR_LAYOUT, format, exchange=name, lo=lo, hi=hi,
                                        symbol_id=symbol_id)
        cold = cols if format != "objects" else [
            FundingRate(name, symbol, *r, symbol_id) for r in zip(*(cols[k] for k in _FR_RECORD))]
        return _merge(cold, hot, format, limit)

    async def balance_history(self, exchange: Any, asset: str, *, account: str, start: int | None,
                              end: int | None, hours: float | None, limit: int | None, format: str,
                              primary: bool = False) -> Any:
        """Balance snapshots of one asset in a receipt-time window, oldest first, in ``format``.

        ``objects`` and ``columns`` carry exact Decimals; ``numpy`` carries float64 approximations of the amounts.
        """
        columnar.check_format(format)
        _check_name("asset", asset)
        _check_name("account", account)
        lo, hi = window(start, end, hours)
        limit = check_limit(limit)
        ex = await self._exchange(exchange)
        keys = (ex.id, account, asset)
        if format == "numpy":
            where = "exchange_id = $1 AND account = $2 AND asset = $3"
            copy = _copy(_BAL_LAYOUT, where, keys, lo, hi, limit, format)
            manifests, hot = await self._history("balances", lo, hi, copy, copy=True, primary=primary,
                                                 format=format, limit=limit)
        else:

            async def fetch(db: Any, source: str) -> Any:
                rows = await _fetch_history(db, _BAL_HISTORY, source, keys, lo, hi, limit, 0)
                if format == "columns":
                    cols = list(zip(*rows)) if rows else [(), (), (), ()]
                    return {name: list(col) for name, col in zip(("recv_ts", "exchange_ts", "free", "locked"), cols)}
                return [Balance(exchange=ex.name, asset=asset, free=r[2], locked=r[3], recv_ts=r[0], exchange_ts=r[1],
                                account=account) for r in rows]

            manifests, hot = await self._history("balances", lo, hi, fetch, copy=False, primary=primary,
                                                 format=format, limit=limit)
        if not manifests:
            return hot
        cols = await self._from_archive(manifests, "balances", _BAL_LAYOUT, format, exchange=ex.name, lo=lo, hi=hi,
                                        account=account, asset=asset)
        cold = cols if format != "objects" else [
            Balance(exchange=ex.name, asset=asset, free=f, locked=k, recv_ts=rt, exchange_ts=et, account=account)
            for rt, et, f, k in zip(cols["recv_ts"], cols["exchange_ts"], cols["free"], cols["locked"])]
        return _merge(cold, hot, format, limit)

    async def _history(self, table: str, lo: int, hi: int, hot: Callable[[Any, str], Awaitable[Any]], *, copy: bool,
                       primary: bool, format: str, limit: int | None) -> tuple[list[Any], Any]:
        """PostgreSQL's rows of a history read of ``[lo, hi)`` (``hot``'s result) and the archive manifests whose
        files hold the rest of the window.

        With no archived day in the window, ``hot`` runs alone: given the pool (one statement, on a held
        connection), or a connection of its own for a COPY (``copy``). Otherwise it runs inside the archive tier's
        snapshot, on one connection of the node serving the read (``ArchiveTier.snapshot_read``): which partitions
        are attached and which rows they hold are then one state of the database, whatever the archiver or the
        node's replay does meanwhile."""
        tier = self._archive
        if tier is None or not tier.covers(table, lo, hi):

            async def alone(pool: Any) -> Any:
                if not copy:
                    return await hot(pool, table)
                async with pool.acquire() as conn:
                    return await hot(conn, table)

            rows = await self.router.run(alone, primary=primary)
            # A partition is detached only once its files, its manifest and so its day's directory are in place:
            # with still no directory for the window's days, none was detached before the read's snapshot.
            if tier is None or not tier.covers(table, lo, hi):
                return [], rows

        def in_snapshot(pool: ReadPool) -> Awaitable[tuple[list[Any], Any, list[Any]]]:
            return pool.run(lambda conn: tier.snapshot_read(conn, table, lo, hi, hot))

        manifests, rows, detached = await self.router.run(in_snapshot, primary=primary)
        # Archived partitions whose tables are still there, detached: their rows are read from them (see
        # ArchiveTier.snapshot_read), in the result's format already.
        for more in detached:
            rows = _merge(more, rows, format, limit)
        return manifests, rows

    async def _from_archive(self, manifests: list[Any], table: str, layout: columnar.Layout, format: str, *,
                            exchange: str, lo: int, hi: int, **keys: Any) -> dict[str, Any]:
        """Archived rows of a history read as ``{column: values}`` in ``layout``'s names: numpy arrays exactly as
        :func:`hftdb.read.columnar.copy_out` gives them for ``"numpy"``, lists of Python values (NULL as None)
        otherwise."""
        tier = self._archive
        assert tier is not None
        raw = await asyncio.to_thread(tier.read, manifests, table, exchange=exchange, lo=lo, hi=hi, **keys)
        return _archive_columns(raw, layout, format)


def _copy(layout: columnar.Layout, where: str, keys: tuple[Any, ...], lo: int, hi: int,
          limit: int | None, format: str) -> Callable[[Any, str], Awaitable[Any]]:
    """The columnar read of a history window, to run on a connection with the table (or partition) to read."""
    # The source and where come from the fixed set in this module and the archive's partition names; values are
    # inlined by asyncpg's server-side quoting. Without a LIMIT the rows are ordered on the client (see
    # columnar.copy_out).
    n = len(keys)
    tail = f" WHERE {where} AND recv_ts >= ${n + 1} AND recv_ts < ${n + 2}"
    args: tuple[Any, ...] = (*keys, lo - PG_EPOCH_US, hi - PG_EPOCH_US)
    if limit is not None:
        tail += f" ORDER BY recv_ts LIMIT ${n + 3}"
        args += (limit,)

    async def read(conn: Any, source: str) -> Any:
        query = f"SELECT {layout.select_list} FROM {source}{tail}"
        try:
            return await columnar.copy_out(conn, layout, query, *args, format=format,
                                           sort_by=None if limit is not None else "recv_ts")
        except asyncpg.NumericValueOutOfRangeError as exc:
            # A stored amount (numeric) beyond float8's range: the numpy columns cannot carry it.
            raise ValidationError(
                f"format='numpy' cannot hold a stored {source.strip(chr(34))} value beyond float64's range ({exc}); "
                "read these rows with format='objects' or 'columns', which keep exact Decimals") from exc
        except asyncpg.PostgresError:
            raise  # the server ended the COPY: the connection is ready for the next statement
        except BaseException:
            # Ended otherwise (the caller's cancellation or deadline, a broken connection), the COPY may
            # have left asyncpg's protocol half way: a cancellation that lands as a chunk arrives sends
            # no cancel request (asyncpg issue #784). Handed back, the connection failed the next read
            # run on it, someone else's ("cannot switch to state ...; another operation is in
            # progress"). It is closed instead; the pool opens a new one when asked.
            conn.terminate()
            raise

    return read


def _archive_columns(raw: dict[str, Any], layout: columnar.Layout, format: str) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for c in layout.columns:
        values = raw[c.name]
        valid = raw.get(c.name + "__valid")
        if format == "numpy":
            if isinstance(values, list):  # exact decimals: the float8 the server's cast would give
                values = np.array([float(v) for v in values], dtype=np.float64)
            if c.kind == "ts":
                if valid is not None:
                    values = np.where(valid, values, np.iinfo(np.int64).min)
                values = values.astype(np.int64, copy=False).view("datetime64[us]")
            elif c.kind == "f8" and valid is not None:
                values = np.where(valid, values, np.nan)
            elif valid is not None:
                values = np.ma.MaskedArray(values, mask=~valid)
            out[c.name] = values
        else:
            values = values if isinstance(values, list) else values.tolist()
            if valid is not None and not valid.all():
                values = [v if ok else None for v, ok in zip(values, valid.tolist())]
            out[c.name] = values
    return out


def _merge(cold: Any, hot: Any, format: str, limit: int | None) -> Any:
    """Archived rows then PostgreSQL's, ordered by receipt time (stable: ties keep tier, then stored order),
    cut to ``limit``."""
    if format == "objects":
        rows = cold + hot
        key = operator.attrgetter("recv_ts")
        if not all(key(a) <= key(b) for a, b in zip(rows, rows[1:])):
            rows.sort(key=key)
        return rows if limit is None else rows[:limit]
    if format == "columns":
        out = {k: cold[k] + hot[k] for k in hot}
        ts = out["recv_ts"]
        if not all(map(operator.le, ts, ts[1:])):
            order = sorted(range(len(ts)), key=ts.__getitem__)
            out = {k: [v[i] for i in order] for k, v in out.items()}
        return out if limit is None else {k: v[:limit] for k, v in out.items()}
    import numpy as np

    out = {}
    for k in hot:
        a, b = cold[k], hot[k]
        out[k] = (np.ma.concatenate([a, b]) if isinstance(a, np.ma.MaskedArray) or isinstance(b, np.ma.MaskedArray)
                  else np.concatenate([a, b]))
    ts = out["recv_ts"]
    if len(ts) > 1 and not (ts[1:] >= ts[:-1]).all():
        order = np.argsort(ts, kind="stable")
        out = {k: v[order] for k, v in out.items()}
    return out if limit is None else {k: v[:limit] for k, v in out.items()}


def _exchange_name(name: Any) -> str:
    return name.value if isinstance(name, ExchangeName) else name


#: The largest LIMIT the server takes (int8).
_LIMIT_MAX = 2**63 - 1
#: PostgreSQL's timestamp range in Unix µs: from 4714-11-24 BC (Julian day 0) to before 294277-01-01.
_TS_MIN_US = -210_866_803_200_000_000
_TS_END_US = 9_224_318_016_000_000_000
_HOUR_US = 3_600_000_000
#: More hours than the whole range holds: a window this long starts before it, whatever its end.
_HOURS_MAX = (_TS_END_US - _TS_MIN_US) // _HOUR_US


def check_limit(limit: int | None) -> int | None:
    """``limit`` if it is None or a positive int the server takes; ValidationError otherwise."""
    if limit is not None and (type(limit) is not int or not 0 < limit <= _LIMIT_MAX):
        raise ValidationError(f"limit must be a positive integer up to 2**63-1, got {limit!r}")
    return limit


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if bad_text(value):  # NUL (no text column holds it), a lone surrogate (no UTF-8 for it), control characters
        raise ValidationError(f"{what} must hold printable characters only, got {value!r}")


def _check_time(what: str, value: Any) -> None:
    if type(value) is not int:
        raise ValidationError(f"{what} must be integer Unix microseconds, got {value!r}")
    if not _TS_MIN_US <= value < _TS_END_US:
        raise ValidationError(f"{what} is outside PostgreSQL's timestamp range, got {value!r}")


def window(start: int | None, end: int | None, hours: float | None) -> tuple[int, int]:
    """The ``[lo, hi)`` receipt-time window (Unix µs) of ``start``/``end`` or ``hours`` back from ``end`` or now."""
    if end is not None:
        _check_time("end", end)
    hi = end if end is not None else now_us() + 1
    if hours is not None:
        if start is not None:
            raise ValidationError("give either start/end or hours, not both")
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= _HOURS_MAX:
            raise ValidationError(f"hours must be a finite positive number, got {hours!r}")
        lo = hi - int(hours * _HOUR_US)
        if lo < _TS_MIN_US:
            raise ValidationError(f"hours={hours!r} reaches back before PostgreSQL's earliest timestamp")
        return lo, hi
    if start is None:
        raise ValidationError("give start (Unix microseconds) or hours")
    _check_time("start", start)
    if hi <= start:
        raise ValidationError(f"end ({hi}) must be after start ({start})")
    return start, hi


_U = columnar.TO_UNIX


def _latest_queries(table: str) -> dict[str, str]:
    # One bytea of every matching row's packed fields (migration 0002): one value on the wire instead of eight
    # a row. The exchange filter reads the rows' own exchange_id, with no join to symbols. No ORDER BY: callers
    # get the rows in no particular order, and sorting would cost the server more than finding them. A NULL
    # delimiter, not '': string_agg appends no delimiter at all then, one call fewer a row.
    agg = f"SELECT string_agg(packed, NULL) FROM {table}"
    return {
        "all": agg,
        "exchange": f"{agg} WHERE exchange_id = $1",
        "ids": f"{agg} WHERE symbol_id = ANY($1::int4[])",
    }


_BT_LATEST = _latest_queries("book_tickers_latest")
_FR_LATEST = _latest_queries("funding_rates_latest")
# The fields after (exchange, symbol) in the records' positional order, symbol_id last; the NULL bits as the
# migration sets them.
_BT_PACKED = columnar.PackedRows(BookTicker, [
    ("f8", None), ("f8", None), ("f8", None), ("f8", None), ("i8", None), ("i8", 1), ("i8", 2)])
_FR_PACKED = columnar.PackedRows(FundingRate, [
    ("f8", None), ("i8", None), ("i8", 1), ("i8", 2), ("f8", 4), ("f8", 8)])
_BY_SYMBOL = "symbol_id = $1"

_BAL_LATEST = f"""SELECT e.name, b.asset, b.free, b.locked, b.recv_ts {_U}, b.exchange_ts {_U}, b.account
    FROM balances_latest b JOIN exchanges e ON e.id = b.exchange_id
    WHERE ($1::int4 IS NULL OR b.exchange_id = $1) AND ($2::text IS NULL OR b.account = $2)
    ORDER BY e.name, b.account, b.asset"""

# History without its ORDER BY/LIMIT tail (see _fetch_history).
# History queries without their source: FROM the table, or an archived partition's detached table.
_BT_HISTORY = (f"SELECT bid_price, bid_qty, ask_price, ask_qty, recv_ts {_U}, exchange_ts {_U}, update_id FROM",
               "WHERE symbol_id = $1 AND recv_ts >= $2 AND recv_ts < $3")

_FR_HISTORY = (f"SELECT rate, recv_ts {_U}, exchange_ts {_U}, next_funding_ts {_U}, mark_price, index_price FROM",
               "WHERE symbol_id = $1 AND recv_ts >= $2 AND recv_ts < $3")

_BAL_HISTORY = (f"SELECT recv_ts {_U}, exchange_ts {_U}, free, locked FROM",
                "WHERE exchange_id = $1 AND account = $2 AND asset = $3 AND recv_ts >= $4 AND recv_ts < $5")


async def _fetch_history(pool: Any, parts: tuple[str, str], source: str, keys: tuple[Any, ...], lo: int, hi: int,
                         limit: int | None, ts_index: int) -> list[Any]:
    """Rows with ``lo <= recv_ts < hi``, oldest first.

    With a LIMIT the server orders (it must, to pick the oldest). Without one the client does: the rows of a
    symbol usually arrive in receipt order already, and a sort of sorted rows is one pass, where the server would
    sort the whole result (on disk, past work_mem) wherever no btree serves the order (the hot partition is BRIN).
    """
    sql = f"{parts[0]} {source} {parts[1]}"
    args = (*keys, lo - PG_EPOCH_US, hi - PG_EPOCH_US)
    if limit is not None:
        return await pool.fetch(f"{sql} ORDER BY recv_ts LIMIT ${len(args) + 1}", *args, limit)
    rows = await pool.fetch(sql, *args)
    rows.sort(key=operator.itemgetter(ts_index))
    return rows

# The history columns in the records' positional order (after exchange and symbol; symbol_id last).
_BT_RECORD = ("bid_price", "bid_qty", "ask_price", "ask_qty", "recv_ts", "exchange_ts", "update_id")
_FR_RECORD = ("rate", "recv_ts", "exchange_ts", "next_funding_ts", "mark_price", "index_price")

_C = columnar.Column
_BT_LAYOUT = columnar.Layout([
    _C("recv_ts", "recv_ts", "ts"), _C("exchange_ts", "exchange_ts", "ts", True),
    _C("bid_price", "bid_price", "f8"), _C("bid_qty", "bid_qty", "f8"), _C("ask_price", "ask_price", "f8"),
    _C("ask_qty", "ask_qty", "f8"), _C("update_id", "update_id", "i8", True),
])
_FR_LAYOUT = columnar.Layout([
    _C("recv_ts", "recv_ts", "ts"), _C("exchange_ts", "exchange_ts", "ts", True), _C("rate", "rate", "f8"),
    _C("next_funding_ts", "next_funding_ts", "ts", True), _C("mark_price", "mark_price", "f8", True),
    _C("index_price", "index_price", "f8", True),
])
_BAL_LAYOUT = columnar.Layout([
    _C("recv_ts", "recv_ts", "ts"), _C("exchange_ts", "exchange_ts", "ts", True),
    _C("free", "free::float8", "f8"), _C("locked", "locked::float8", "f8"),
])


async def database_stats(pool: Any, *, writers: dict[str, Any], caches: dict[str, dict[str, int]],
                         router: ReadRouter | None) -> dict[str, Any]:
    """``DatabaseManager.get_database_stats()``: table sizes, writer and cache counters, read nodes, pool usage."""
    stats = await table_stats(pool)
    stats["writers"] = {name: w.snapshot() for name, w in writers.items()}
    stats["caches"] = caches
    stats["reads"] = router.status() if router is not None else []
    stats["pool"] = {"size": pool.get_size(), "idle": pool.get_idle_size(), "max": pool.get_max_size()}
    return stats


async def table_stats(db: Any) -> dict[str, Any]:
    """Size, estimated rows and partition count of each hftdb table; on Citus with a worker down, also
    ``unreachable_shards`` (the shards left out of a table's figures).

    ``estimated_rows`` is None when unknown: a table (or a partition of it) never analyzed whose heap is not
    empty (``reltuples`` is -1 then; taken as 0 it read as "no rows" for a table of six). A partitioned table's
    estimate is its partitions' (its own ``reltuples``, once it is analyzed, counts them again)."""
    rows = await db.fetch(
        """SELECT c.relname,
                  COALESCE((SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i WHERE i.inhparent = c.oid),
                           0) + pg_total_relation_size(c.oid) AS bytes,
                  CASE WHEN c.relkind = 'p' THEN
                      (SELECT CASE WHEN bool_or(p.reltuples < 0 AND pg_relation_size(p.oid) > 0) THEN NULL
                                   ELSE COALESCE(sum(greatest(p.reltuples, 0)), 0) END
                       FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid WHERE i.inhparent = c.oid)
                  WHEN c.reltuples < 0 AND pg_relation_size(c.oid) > 0 THEN NULL
                  ELSE greatest(c.reltuples, 0) END AS est_rows,
                  (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) AS partitions
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
             AND c.relname = ANY($1::text[])
           ORDER BY c.relname""",
        list(ALL_TABLES),
    )
    tables = {r[0]: {"bytes": int(r[1]), "estimated_rows": None if r[2] is None else int(r[2]),
                     "partitions": int(r[3])} for r in rows}
    # On Citus the coordinator holds empty shells: the shards' sizes and estimates replace the catalog's.
    # With a worker down, its shards are left out of the figures and counted in unreachable_shards.
    for name, figures in (await citus.table_totals(db, list(tables))).items():
        tables[name].update(bytes=figures.bytes, estimated_rows=figures.rows)
        if figures.unreachable:
            tables[name]["unreachable_shards"] = figures.unreachable
    return {"tables": tables}

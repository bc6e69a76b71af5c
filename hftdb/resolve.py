"""Which symbol id each written row belongs to: the manager's caches first, the database for the rest.

The writers need an id per row before they can encode it. Rows that carry a known ``symbol_id`` or whose
(exchange, symbol) is cached are paired at once; the rest take one query per exchange, and a symbol never seen
before is registered on first sight (the next sync fills it in). Lookups the hot path cannot do without wait
for the database during an outage instead of failing the call.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any, Iterable

from . import reads
from .errors import DatabaseUnavailableError, ValidationError
from .writer import RETRYABLE, BatchWriter

if TYPE_CHECKING:
    from .manager import DatabaseManager

__all__ = ["RowResolver", "MAX_SYMBOL_LEN"]

logger = logging.getLogger("hftdb.manager")

#: Longest native symbol accepted (the column is varchar(64)).
MAX_SYMBOL_LEN = 64


class RowResolver:
    """Pairs rows with symbol ids for a :class:`~hftdb.manager.DatabaseManager`, using its caches and pool."""

    def __init__(self, db: DatabaseManager) -> None:
        self._db = db

    async def pairs(self, rows: Iterable[Any], writer: BatchWriter) -> list[tuple[int, Any]]:
        """Pair rows with symbol ids: cache first, then one query per exchange for misses, registering unknowns."""
        db = self._db
        get = db._symbol_ids.get
        known_ids = db._known_ids
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
        if missing:
            pairs.extend(await self._slow(missing, writer))
        return pairs

    async def _slow(self, rows: list[Any], writer: BatchWriter) -> list[tuple[int, Any]]:
        db = self._db
        by_id = [r for r in rows if r.symbol_id is not None]
        by_name = [r for r in rows if r.symbol_id is None]
        out: list[tuple[int, Any]] = []
        if by_id:
            found = await self.until_reachable(
                reads.fetch_symbols_by_ids, sorted({r.symbol_id for r in by_id}), writer=writer)
            for sym in found:
                db._remember_symbol(sym)
            ids = {s.id for s in found}
            for r in by_id:
                if r.symbol_id in ids:
                    out.append((r.symbol_id, r))
                else:
                    writer.rejects.add("unknown_symbol_id", f"symbol_id {r.symbol_id!r}")
        # An unknown exchange is the caller's mistake: raise before taking any row of the call.
        names = {r.exchange for r in by_name}
        exchanges = {}
        for name in names:
            if not isinstance(name, str):
                raise ValidationError(f"exchange must be a string, got {type(name).__name__}")
            exchanges[name] = await self.until_reachable(db.get_exchange_by_enum, name, writer=writer, pool=False)
        wanted: dict[str, set[str]] = {}
        for r in by_name:
            sym = r.symbol
            if not isinstance(sym, str) or not sym:
                writer.rejects.add("symbol_invalid", repr(sym))
            elif len(sym) > MAX_SYMBOL_LEN:
                writer.rejects.add("symbol_too_long", sym[:80])
            else:
                wanted.setdefault(r.exchange, set()).add(sym)
        for name, syms in wanted.items():
            ex = exchanges[name]
            registered, created = await self.until_reachable(
                reads.register_symbols, ex.id, sorted(syms), writer=writer)
            for sym in registered:
                db._remember_symbol(sym)
            if created:
                logger.info("registered %d new symbol(s) of %s on first sight; the next sync fills them in",
                            created, name)
        get = db._symbol_ids.get
        for r in by_name:
            if isinstance(r.symbol, str) and 0 < len(r.symbol) <= MAX_SYMBOL_LEN:
                sid = get((r.exchange, r.symbol))
                if sid is not None:
                    out.append((sid, r))
        return out

    async def until_reachable(self, fn: Any, *args: Any, writer: BatchWriter, pool: bool = True) -> Any:
        """Run a lookup the hot path cannot do without (an unknown symbol's id), retrying while the database is away.

        Rows of known symbols keep flowing into the writers' buffer and spool during an outage; a row whose
        symbol has no id yet cannot be encoded, so the producer waits here, as it would on a full buffer under
        the default ``block`` policy. Under ``raise`` it gets DatabaseUnavailableError at once; after close(),
        ClosedError. Either way no row of the call has been taken, so the caller still holds them.
        """
        db = self._db
        delay = db.settings.writer.retry_initial_ms / 1000.0
        cap = db.settings.writer.retry_max_ms / 1000.0
        warned = False
        while True:
            db._check_open()
            try:
                return await (fn(db.pool, *args) if pool else fn(*args))
            except RETRYABLE as exc:
                if db.settings.writer.full_policy == "raise":
                    raise DatabaseUnavailableError(
                        f"cannot register new symbols while the database is unreachable: {type(exc).__name__}"
                    ) from exc
                if not warned:
                    logger.warning("%s: waiting for the database to register new symbols (%s: %s)",
                                   writer.table, type(exc).__name__, exc)
                    warned = True
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, cap)

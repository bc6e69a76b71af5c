"""Which symbol id each written row belongs to: the symbol catalog's caches first, the database for the rest.

The writers need an id per row before they can encode it. Rows that carry a known ``symbol_id`` or whose
(exchange, symbol) is cached are paired at once; the rest take one query per exchange, and a symbol never seen
before is registered on first sight (the next sync fills it in). Lookups the hot path cannot do without wait
for the database during an outage instead of failing the call.

A name is checked once, here, when it is first met (a cached name or a known id was checked then, so the hot
path pays nothing): an empty, too long or unprintable symbol or exchange name (NUL, a lone surrogate, a control
character: :func:`hftdb.wire.rules.bad_text`) rejects its rows with a reason before any query. A database error is
classified by :func:`hftdb.db.dberrors.classify`: only an unreachable database is waited for; a name the server
refuses anyway (a data error) rejects that name's rows alone, and the other names of the call are registered.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Callable, Iterable

from ..db import dberrors
from ..db.catalog import MAX_SYMBOL_LEN, SymbolCatalog
from ..config import WriterSettings
from ..errors import DatabaseUnavailableError
from ..wire.rules import bad_text
from .writer import BatchWriter

__all__ = ["RowResolver"]

logger = logging.getLogger("hftdb.manager")


class RowResolver:
    """Pairs rows with symbol ids through a :class:`~hftdb.db.catalog.SymbolCatalog`.

    ``check_open`` raises once the owner is closed (so a wait for the database ends with ClosedError);
    ``settings`` gives the retry delays and the full-buffer policy of that wait.
    """

    def __init__(self, catalog: SymbolCatalog, *, settings: WriterSettings, check_open: Callable[[], None]) -> None:
        self._catalog = catalog
        self._settings = settings
        self._check_open = check_open

    async def pairs(self, rows: Iterable[Any], writer: BatchWriter) -> list[tuple[int, Any]]:
        """Pair rows with symbol ids: cache first, then one query per exchange for misses, registering unknowns."""
        pairs, missing = self._catalog.pair_cached(rows)
        if missing:
            pairs.extend(await self._slow(missing, writer))
        return pairs

    async def _slow(self, rows: list[Any], writer: BatchWriter) -> list[tuple[int, Any]]:
        catalog = self._catalog
        by_id = [r for r in rows if r.symbol_id is not None]
        by_name = []
        for r in rows:
            if r.symbol_id is not None:
                continue
            if isinstance(r.exchange, str):
                by_name.append(r)
            else:
                # A wrong type is the row's mistake, not the call's: rejected alone, like any bad value.
                writer.rejects.add("exchange_wrong_type", repr(r))
        out: list[tuple[int, Any]] = []
        if by_id:
            await self.until_reachable(catalog.load_ids, [r.symbol_id for r in by_id], writer=writer)
            known = catalog.known_ids
            for r in by_id:
                if r.symbol_id in known:
                    out.append((r.symbol_id, r))
                else:
                    writer.rejects.add("unknown_symbol_id", f"symbol_id {r.symbol_id!r}")
        # An unknown exchange is the caller's mistake: raise before taking any row of the call. A name no exchange
        # can have (unprintable) is a bad row, rejected alone: looked up, the server would refuse the query.
        names = {r.exchange for r in by_name}
        exchanges = {}
        for name in names:
            if not bad_text(name):
                exchanges[name] = await self.until_reachable(catalog.exchange, name, writer=writer)
        wanted: dict[str, set[str]] = {}
        refused: set[str] = set()
        for r in by_name:
            sym = r.symbol
            if r.exchange not in exchanges:
                writer.rejects.add("exchange_bad_char", repr(r))
            elif not isinstance(sym, str) or not sym:
                writer.rejects.add("symbol_invalid", repr(sym))
            elif len(sym) > MAX_SYMBOL_LEN:
                writer.rejects.add("symbol_too_long", repr(sym[:80]))
            elif bad_text(sym):
                writer.rejects.add("symbol_bad_char", repr(r))
            else:
                wanted.setdefault(r.exchange, set()).add(sym)
        for name, syms in wanted.items():
            created = await self._register(exchanges[name].id, sorted(syms), writer, refused)
            if created:
                logger.info("registered %d new symbol(s) of %s on first sight; the next sync fills them in",
                            created, name)
        cached_id = catalog.cached_id
        for r in by_name:
            if r.exchange in exchanges and isinstance(r.symbol, str) and 0 < len(r.symbol) <= MAX_SYMBOL_LEN:
                sid = cached_id(r.exchange, r.symbol)
                if sid is not None:
                    out.append((sid, r))
                elif r.symbol in refused:
                    writer.rejects.add("symbol_rejected", repr(r))
        return out

    async def _register(self, exchange_id: int, names: list[str], writer: BatchWriter, refused: set[str]) -> int:
        """Register ``names`` in one statement; if the server refuses the statement for a value in it, one name at
        a time, so that only the refused names' rows are rejected (they find no id and are counted). Returns how
        many symbols were created."""
        register = self._catalog.register
        try:
            return (await self.until_reachable(register, exchange_id, names, writer=writer))[1]
        except dberrors.CATCH as exc:
            if len(names) == 1:
                _refuse(names[0], exc, writer, refused)
                return 0
        created = 0
        for name in names:
            try:
                created += (await self.until_reachable(register, exchange_id, [name], writer=writer))[1]
            except dberrors.CATCH as exc:
                _refuse(name, exc, writer, refused)
        return created

    async def until_reachable(self, fn: Any, *args: Any, writer: BatchWriter) -> Any:
        """Run a lookup the hot path cannot do without (an unknown symbol's id), retrying while the database is away.

        Rows of known symbols keep flowing into the writers' buffer and spool during an outage; a row whose
        symbol has no id yet cannot be encoded, so the producer waits here, as it would on a full buffer under
        the default ``block`` policy. Under ``raise`` it gets DatabaseUnavailableError at once; after close(),
        ClosedError. Either way no row of the call has been taken, so the caller still holds them.

        Only what :func:`hftdb.db.dberrors.classify` calls ``WAIT`` is waited out. A data error is raised at once, and
        any other error after :data:`hftdb.db.dberrors.MAX_OTHER_ATTEMPTS` attempts: retrying cannot fix either.
        """
        settings = self._settings
        delay = settings.retry_initial_ms / 1000.0
        cap = settings.retry_max_ms / 1000.0
        warned = False
        others = 0
        while True:
            self._check_open()
            try:
                return await fn(*args)
            except dberrors.CATCH as exc:
                kind = dberrors.classify(exc)
                if kind == dberrors.DATA:
                    raise
                if kind == dberrors.OTHER:
                    others += 1
                    if others >= dberrors.MAX_OTHER_ATTEMPTS:
                        raise
                elif settings.full_policy == "raise":
                    raise DatabaseUnavailableError(
                        f"cannot register new symbols while the database is unreachable: {type(exc).__name__}"
                    ) from exc
                if not warned:
                    logger.warning("%s: waiting for the database to register new symbols (%s: %s)",
                                   writer.table, type(exc).__name__, exc)
                    warned = True
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, cap)


def _refuse(name: str, exc: BaseException, writer: BatchWriter, refused: set[str]) -> None:
    # The rows of this name find no id in _slow and are counted under symbol_rejected there.
    refused.add(name)
    logger.warning("%s: the database refused to register symbol %r (%s: %s); its rows are rejected",
                   writer.table, name, type(exc).__name__, exc)

"""SQL of the read side and of the small reference-table writes. Values always travel as bind parameters.

Functions take a pool or a connection (anything with ``fetch``/``fetchrow``/``execute``). Timestamps come back
as integer Unix microseconds thanks to the codec that :func:`hftdb.manager.init_connection` installs.
"""

from __future__ import annotations

from typing import Any, Sequence

from .models import Balance, BookTicker, Exchange, FundingRate, Symbol

__all__ = [
    "fetch_exchanges", "fetch_exchange", "upsert_exchange", "fetch_symbols", "fetch_symbol", "fetch_symbol_by_name",
    "fetch_symbols_by_ids", "upsert_symbols", "delist_missing", "register_symbols", "latest_book_tickers",
    "latest_funding_rates", "book_ticker_history", "funding_history", "latest_balances", "balance_history",
    "table_stats",
]

_EXCHANGE_COLS = "id, name, market, active"
_SYMBOL_COLS = ("id, exchange_id, symbol, base, quote, kind, status, tick_size, lot_size, contract_size, "
                "last_synced")


def _exchange(r: Any) -> Exchange:
    return Exchange(id=r[0], name=r[1], market=r[2], active=r[3])


def _symbol(r: Any) -> Symbol:
    return Symbol(id=r[0], exchange_id=r[1], symbol=r[2], base=r[3], quote=r[4], kind=r[5], status=r[6],
                  tick_size=r[7], lot_size=r[8], contract_size=r[9], last_synced=r[10])


async def fetch_exchanges(db: Any) -> list[Exchange]:
    return [_exchange(r) for r in await db.fetch(f"SELECT {_EXCHANGE_COLS} FROM exchanges ORDER BY id")]


async def fetch_exchange(db: Any, name: str) -> Exchange | None:
    r = await db.fetchrow(f"SELECT {_EXCHANGE_COLS} FROM exchanges WHERE name = $1", name)
    return None if r is None else _exchange(r)


async def upsert_exchange(db: Any, name: str, market: str, active: bool) -> Exchange:
    r = await db.fetchrow(
        f"""INSERT INTO exchanges (name, market, active) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE SET market = EXCLUDED.market, active = EXCLUDED.active
            RETURNING {_EXCHANGE_COLS}""",
        name, market, active,
    )
    return _exchange(r)


async def fetch_symbols(db: Any, *, exchange_id: int | None = None, status: str | None = None) -> list[Symbol]:
    rows = await db.fetch(
        f"""SELECT {_SYMBOL_COLS} FROM symbols
            WHERE ($1::int IS NULL OR exchange_id = $1) AND ($2::text IS NULL OR status = $2)
            ORDER BY exchange_id, symbol""",
        exchange_id, status,
    )
    return [_symbol(r) for r in rows]


async def fetch_symbol(db: Any, symbol_id: int) -> Symbol | None:
    r = await db.fetchrow(f"SELECT {_SYMBOL_COLS} FROM symbols WHERE id = $1", symbol_id)
    return None if r is None else _symbol(r)


async def fetch_symbol_by_name(db: Any, exchange_id: int, symbol: str) -> Symbol | None:
    r = await db.fetchrow(f"SELECT {_SYMBOL_COLS} FROM symbols WHERE exchange_id = $1 AND symbol = $2",
                          exchange_id, symbol)
    return None if r is None else _symbol(r)


async def fetch_symbols_by_ids(db: Any, ids: Sequence[int]) -> list[Symbol]:
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


def _filter_sql(filt: tuple[str, Any], alias: str = "l") -> tuple[str, list[Any]]:
    kind, value = filt
    if kind == "ids":
        return f"WHERE {alias}.symbol_id = ANY($1::int[])", [list(value)]
    if kind == "exchange":
        return "WHERE s.exchange_id = $1", [value]
    return "", []


async def latest_book_tickers(db: Any, filt: tuple[str, Any]) -> list[BookTicker]:
    where, args = _filter_sql(filt)
    rows = await db.fetch(
        f"""SELECT e.name, s.symbol, l.bid_price, l.bid_qty, l.ask_price, l.ask_qty, l.recv_ts, l.exchange_ts,
                   l.update_id, l.symbol_id
            FROM book_tickers_latest l JOIN symbols s ON s.id = l.symbol_id JOIN exchanges e ON e.id = s.exchange_id
            {where} ORDER BY l.symbol_id""",
        *args,
    )
    return [BookTicker(*r) for r in rows]


async def latest_funding_rates(db: Any, filt: tuple[str, Any]) -> list[FundingRate]:
    where, args = _filter_sql(filt)
    rows = await db.fetch(
        f"""SELECT e.name, s.symbol, l.rate, l.recv_ts, l.exchange_ts, l.next_funding_ts, l.mark_price,
                   l.index_price, l.symbol_id
            FROM funding_rates_latest l JOIN symbols s ON s.id = l.symbol_id JOIN exchanges e ON e.id = s.exchange_id
            {where} ORDER BY l.symbol_id""",
        *args,
    )
    return [FundingRate(*r) for r in rows]


async def book_ticker_history(
    db: Any, symbol_id: int, lo: int, hi: int, limit: int | None, exchange: str, symbol: str
) -> list[BookTicker]:
    rows = await db.fetch(
        """SELECT bid_price, bid_qty, ask_price, ask_qty, recv_ts, exchange_ts, update_id FROM book_tickers
           WHERE symbol_id = $1 AND recv_ts >= $2 AND recv_ts < $3 ORDER BY recv_ts LIMIT $4""",
        symbol_id, lo, hi, limit,
    )
    return [BookTicker(exchange, symbol, r[0], r[1], r[2], r[3], r[4], r[5], r[6], symbol_id) for r in rows]


async def funding_history(
    db: Any, symbol_id: int, lo: int, hi: int, limit: int | None, exchange: str, symbol: str
) -> list[FundingRate]:
    rows = await db.fetch(
        """SELECT rate, recv_ts, exchange_ts, next_funding_ts, mark_price, index_price FROM funding_rates
           WHERE symbol_id = $1 AND recv_ts >= $2 AND recv_ts < $3 ORDER BY recv_ts LIMIT $4""",
        symbol_id, lo, hi, limit,
    )
    return [FundingRate(exchange, symbol, *r, symbol_id) for r in rows]


async def latest_balances(db: Any, exchange_id: int | None, account: str | None) -> list[Balance]:
    rows = await db.fetch(
        """SELECT e.name, b.asset, b.free, b.locked, b.recv_ts, b.exchange_ts, b.account
           FROM balances_latest b JOIN exchanges e ON e.id = b.exchange_id
           WHERE ($1::int IS NULL OR b.exchange_id = $1) AND ($2::text IS NULL OR b.account = $2)
           ORDER BY e.name, b.account, b.asset""",
        exchange_id, account,
    )
    return [Balance(exchange=r[0], asset=r[1], free=r[2], locked=r[3], recv_ts=r[4], exchange_ts=r[5], account=r[6])
            for r in rows]


async def balance_history(
    db: Any, exchange_id: int, account: str, asset: str, lo: int, hi: int, limit: int | None
) -> list[Balance]:
    rows = await db.fetch(
        """SELECT e.name, b.asset, b.free, b.locked, b.recv_ts, b.exchange_ts, b.account
           FROM balances b JOIN exchanges e ON e.id = b.exchange_id
           WHERE b.exchange_id = $1 AND b.account = $2 AND b.asset = $3 AND b.recv_ts >= $4 AND b.recv_ts < $5
           ORDER BY b.recv_ts LIMIT $6""",
        exchange_id, account, asset, lo, hi, limit,
    )
    return [Balance(exchange=r[0], asset=r[1], free=r[2], locked=r[3], recv_ts=r[4], exchange_ts=r[5], account=r[6])
            for r in rows]


async def table_stats(db: Any) -> dict[str, Any]:
    """Size, estimated rows and partition count of each hftdb table."""
    rows = await db.fetch(
        """SELECT c.relname,
                  COALESCE((SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i WHERE i.inhparent = c.oid),
                           0) + pg_total_relation_size(c.oid) AS bytes,
                  COALESCE((SELECT sum(greatest(p.reltuples, 0)) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
                            WHERE i.inhparent = c.oid), 0) + greatest(c.reltuples, 0) AS est_rows,
                  (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) AS partitions
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
             AND c.relname = ANY($1::text[])
           ORDER BY c.relname""",
        ["exchanges", "symbols", "book_tickers", "book_tickers_latest", "funding_rates", "funding_rates_latest",
         "balances", "balances_latest", "ingest_batches"],
    )
    return {"tables": {r[0]: {"bytes": int(r[1]), "estimated_rows": int(r[2]), "partitions": int(r[3])}
                       for r in rows}}

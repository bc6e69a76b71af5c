"""The three time-series writers: rows into batches, and latest-row upserts per table.

Each row is checked by the wire layer's rules (:mod:`hftdb.wire.rules`; book tickers on a fast path, one
chained comparison that also fails on NaN and on a wrong type) and packed in its layout
(:mod:`hftdb.wire.books`, :mod:`hftdb.wire.rows`). A row that fails is rejected alone, with a reason, and the
rows beside it go on.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any, Iterable

from msgspec.structs import astuple

from ..models import Balance, BookTicker, FundingRate, now_us
from ..wire.books import LAYOUTS
from ..wire.copy import PG_EPOCH_US
from ..wire.rows import balance_tuple, funding_tuple
# The acceptance rules and reasons are the wire layer's; bad_text and the time bounds stay importable from here.
from ..wire.rules import FUTURE_SLACK_US, INF, MIN_TS_US, bad_text, balance_check, book_ticker_reason, funding_reason
from . import vector
from .writer import BatchWriter

__all__ = ["BookTickerWriter", "FundingRateWriter", "BalanceWriter", "MIN_TS_US", "FUTURE_SLACK_US", "bad_text",
           "seen_before"]


def seen_before(batch: Any, row: bytes | memoryview) -> bool:
    """Whether ``row`` (one COPY tuple) equals a tuple already in ``batch``'s buffer: an exact duplicate
    (:meth:`hftdb.store.writer.Batch.holds`)."""
    return batch.holds(row)


# The ledger rows of a commit's batches, and the NOTIFY that ends it: shared by every writer's latest statement.
_LEDGER = """
WITH ledger AS (
    INSERT INTO ingest_batches (batch_id, table_name, row_count, min_recv_ts, max_recv_ts)
    SELECT b.id, '{table}', b.n, b.lo, b.hi
    FROM unnest(${id}::uuid[], ${rows}::int4[], ${lo}::timestamptz[], ${hi}::timestamptz[]) AS b(id, n, lo, hi)
)"""
_NOTIFY = """
SELECT CASE WHEN ${payload}::text IS NULL THEN NULL ELSE pg_notify('hftdb_{table}', ${payload}::text) END
"""

_LEDGER_CTE = _LEDGER + """, latest AS (
{upsert}
    RETURNING 1
)""" + _NOTIFY


def _latest_sql(table: str, nargs: int, upsert: str) -> str:
    return _LEDGER_CTE.format(
        id=nargs + 1, rows=nargs + 2, lo=nargs + 3, hi=nargs + 4, payload=nargs + 5, table=table, upsert=upsert
    )


_UPDATE_THEN_INSERT = _LEDGER + """, u AS (
    SELECT u.symbol_id, {values} FROM {source}
), updated AS (
    UPDATE {table}_latest l SET
        exchange_id = coalesce(l.exchange_id, (SELECT s.exchange_id FROM symbols s WHERE s.id = l.symbol_id)),
        {updates}
    FROM u WHERE l.symbol_id = u.symbol_id AND l.recv_ts <= u.recv_ts
), inserted AS (
    -- An anti-join, not NOT EXISTS: Citus refuses a correlated subquery beside a CTE, and PostgreSQL plans both
    -- as the same hash anti-join (server CPU per upsert 4.63 against 4.77 ms, medians, bench_writer.py).
    INSERT INTO {table}_latest AS l (symbol_id, exchange_id, {columns})
    SELECT u.symbol_id, s.exchange_id, {u_columns} FROM u LEFT JOIN symbols s ON s.id = u.symbol_id
    LEFT JOIN {table}_latest x ON x.symbol_id = u.symbol_id WHERE x.symbol_id IS NULL
    ON CONFLICT (symbol_id) DO UPDATE SET exchange_id = coalesce(l.exchange_id, EXCLUDED.exchange_id), {excluded}
    WHERE l.recv_ts <= EXCLUDED.recv_ts
)""" + _NOTIFY


def _update_then_insert_sql(table: str, source: str, values: dict[str, str], *, nargs: int) -> str:
    """A commit's ledger rows, latest-table upsert and NOTIFY, the upsert as an UPDATE of the symbols' existing
    rows and an INSERT of the missing ones only.

    ``INSERT ... ON CONFLICT DO UPDATE`` on rows that nearly always exist pays, per row, a speculative index probe
    and a row lock (a WAL record of its own) before the update; a plain ``UPDATE ... FROM`` does not. Measured on
    1,000 symbols of book tickers, the two alternating in one run: 5.7-9.0 ms of server CPU per upsert against
    4.5-5.1 ms (``benchmarks/bench_writer.py --methods latest-upsert`` measures the current one). The INSERT
    skips the rows that existed when the statement started (its snapshot: the UPDATE's rows) and keeps ON CONFLICT
    for a row another process inserted meanwhile. ``source`` is the FROM item of the newest rows, aliased ``u``
    (the staging table, see :func:`_staged_latest`); ``values`` maps each latest column (symbol_id and exchange_id
    aside) to its expression over ``u``; ``nargs`` parameters come before the ledger's.
    """
    columns = ", ".join(values)
    return _UPDATE_THEN_INSERT.format(
        id=nargs + 1, rows=nargs + 2, lo=nargs + 3, hi=nargs + 4, payload=nargs + 5, table=table, source=source,
        values=", ".join(f"{expr} AS {col}" for col, expr in values.items()),
        updates=", ".join(f"{col} = u.{col}" for col in values),
        columns=columns, u_columns=", ".join(f"u.{col}" for col in values),
        excluded=", ".join(f"{col} = EXCLUDED.{col}" for col in values),
    )


#: The kind (see ``hftdb.store.vector.copy_columns``) of each staging-table column type.
_STAGE_KINDS = {"int4": "i", "int8": "q", "float8": "d", "timestamptz": "t"}


def _staged_latest(table: str, types: dict[str, str]) -> tuple[str, str, str, str]:
    """The staging table of ``table``'s latest rows (name, DDL, its columns' kinds for ``copy_columns``) and the
    commit statement that reads it.

    A commit sends the group's newest row per symbol by binary COPY into this per-backend temp table, then runs
    the ledger + upsert + NOTIFY statement over it: building the same rows as text array literals cost ~3x the
    client CPU (``repr`` of every float) and more server CPU (parsing them; measured alternating in one run with
    ``benchmarks/bench_writer.py --methods latest-compare``). ON COMMIT DELETE ROWS empties it at every commit
    that touched it; rows of a transaction that rolled back are never seen.
    """
    stage = f"hftdb_{table}_latest_in"
    ddl = (f"CREATE TEMP TABLE IF NOT EXISTS {stage} ("
           + ", ".join(f"{col} {typ}" for col, typ in types.items()) + ") ON COMMIT DELETE ROWS")
    kinds = "".join(_STAGE_KINDS[typ] for typ in types.values())
    sql = _update_then_insert_sql(table, f"pg_temp.{stage} u", {col: f"u.{col}" for col in list(types)[1:]}, nargs=0)
    return stage, ddl, kinds, sql


# ---------------------------------------------------------------------------------------------------------------
# book_tickers

#: Where each latest column after symbol_id sits in a BookTicker's astuple.
_BT_LATEST_FIELDS = tuple(BookTicker.__struct_fields__.index(c) for c in (
    "recv_ts", "exchange_ts", "bid_price", "bid_qty", "ask_price", "ask_qty", "update_id"))

# The whole COPY tuple per NULL pattern of (exchange_ts, update_id), from the wire layer's one layout.
_BT = {pattern: layout.row for pattern, layout in LAYOUTS.items()}


class BookTickerWriter(BatchWriter):
    """Writer of ``book_tickers``; keeps ``book_tickers_latest`` current in the same transaction."""

    table = "book_tickers"
    columns = ("symbol_id", "recv_ts", "exchange_ts", "bid_price", "bid_qty", "ask_price", "ask_qty", "update_id")
    row_kinds = "ittddddq"
    latest_stage, latest_stage_ddl, latest_kinds, latest_sql = _staged_latest("book_tickers", {
        "symbol_id": "int4", "recv_ts": "timestamptz", "exchange_ts": "timestamptz", "bid_price": "float8",
        "bid_qty": "float8", "ask_price": "float8", "ask_qty": "float8", "update_id": "int8"})

    def vectorizes(self, n: int) -> bool:
        """Whether a call of ``n`` rows is worth the vectorized path (``hftdb.store.vector.MIN_ROWS`` or more)."""
        return n >= vector.MIN_ROWS

    def add_fast(self, rows: list[BookTicker], known_ids: set[int], sids: list[int] | None = None) -> int | None:
        """Take a whole call's tickers at once when each carries a registered ``symbol_id`` (the feeds' case) or
        ``sids`` gives every row's id, vectorized by :mod:`hftdb.store.vector`; None when the call needs the per-row
        path (:meth:`add`)."""
        if sids is None and rows[0].symbol_id is None:
            return None
        return vector.add_tickers(self, rows, known_ids, sids)

    def add(self, rows: Iterable[tuple[int, BookTicker]]) -> int:
        """Validate and encode ``(symbol_id, ticker)`` pairs into the current batch; return how many were taken."""
        ts_max = now_us() + FUTURE_SLACK_US
        max_rows = self._max_rows
        reject = self.rejects.add
        # One bound pack per NULL pattern, chosen by branching: no per-row tuple or dict lookup.
        pack_eu, pack_e, pack_u, pack_ = _BT[(True, True)].pack, _BT[(True, False)].pack, _BT[(False, True)].pack, _BT[(False, False)].pack
        epoch = PG_EPOCH_US
        added = dups = 0
        b = self.current
        buf, latest, n, lo, hi = b.buf, b.latest, b.rows, b.min_ts, b.max_ts
        plo, phi = b.part_lo, b.part_hi
        latest_get = latest.get
        for sid, r in rows:
            bp, bq, ap, aq, recv, ex, uid = r.bid_price, r.bid_qty, r.ask_price, r.ask_qty, r.recv_ts, r.exchange_ts, r.update_id
            try:
                # wire.rules.book_fits inlined, with the receipt time (a call per row would cost more than the check)
                if 0.0 < bp <= ap < INF and 0.0 < bq < INF and 0.0 < aq < INF and MIN_TS_US <= recv <= ts_max:
                    if ex is not None:
                        if not MIN_TS_US <= ex <= ts_max:
                            raise TypeError
                        if uid is not None:
                            buf += pack_eu(8, 4, sid, 8, recv - epoch, 8, ex - epoch, 8, bp, 8, bq, 8, ap, 8, aq, 8, uid)
                        else:
                            buf += pack_e(8, 4, sid, 8, recv - epoch, 8, ex - epoch, 8, bp, 8, bq, 8, ap, 8, aq, -1)
                    elif uid is not None:
                        buf += pack_u(8, 4, sid, 8, recv - epoch, -1, 8, bp, 8, bq, 8, ap, 8, aq, 8, uid)
                    else:
                        buf += pack_(8, 4, sid, 8, recv - epoch, -1, 8, bp, 8, bq, 8, ap, 8, aq, -1)
                else:
                    raise TypeError
            except (TypeError, struct.error):
                reject(book_ticker_reason(r, ts_max), f"{r.exchange}:{r.symbol} {r!r}")
                continue
            prev = latest_get(sid)
            if prev is None or prev.recv_ts < recv:
                latest[sid] = r
            elif recv < prev.recv_ts or uid is None or prev.update_id is None or uid <= prev.update_id:
                # Not newer than this symbol's newest row in the batch: it may repeat an earlier row (a call
                # sent twice). Rows in receipt order (or sharing a receipt time with rising update ids, as a
                # feed's socket read does) never come here.
                row = bytes(buf[-_BT[(ex is not None, uid is not None)].size:])
                del buf[-len(row):]
                if seen_before(b, row):
                    dups += 1
                    continue
                buf += row
                if prev.recv_ts == recv:
                    latest[sid] = r
            else:
                latest[sid] = r
            if recv < lo:
                lo = recv
            if recv > hi:
                hi = recv
            if not plo <= recv < phi:
                self._note_partition(b, recv)
                plo, phi = b.part_lo, b.part_hi
            n += 1
            added += 1
            if n >= max_rows:
                b.rows, b.min_ts, b.max_ts = n, lo, hi
                self._seal()
                b = self.current
                buf, latest, n, lo, hi = b.buf, b.latest, b.rows, b.min_ts, b.max_ts
                plo, phi = b.part_lo, b.part_hi
                latest_get = latest.get
        b.rows, b.min_ts, b.max_ts = n, lo, hi
        if dups:
            self.stats.rows_duplicate += dups
        return added

    def _latest_args_of(self, latest: dict[Any, Any]) -> list[Any]:
        if not latest:
            return [[] for _ in self.columns]
        # One C-level transpose of the rows' msgspec tuples, then the columns picked: ~0.2 ms for 1,000 symbols
        # where a comprehension per column cost ~0.4 ms.
        fields = list(zip(*map(astuple, latest.values())))
        return [list(latest), *(fields[i] for i in _BT_LATEST_FIELDS)]


# ---------------------------------------------------------------------------------------------------------------
# funding_rates and balances: rows through ``BatchWriter._append_row``


class _KeyedRowWriter(BatchWriter):
    """A writer whose batches keep ``{key: (recv_ts, value)}`` as their newest rows (``_append_row``)."""

    def _repeats(self, key: Any, recv_ts: int, row: bytes) -> bool:
        """Whether ``row`` repeats a row of the current batch (then counted as a duplicate, to be dropped); only
        a row not newer than its key's newest is looked up (:func:`seen_before`)."""
        prev = self.current.latest.get(key)
        if prev is None or prev[0] < recv_ts or not seen_before(self.current, row):
            return False
        self.stats.rows_duplicate += 1
        return True



class FundingRateWriter(_KeyedRowWriter):
    """Writer of ``funding_rates``; keeps ``funding_rates_latest`` current in the same transaction."""

    table = "funding_rates"
    columns = ("symbol_id", "recv_ts", "exchange_ts", "rate", "next_funding_ts", "mark_price", "index_price")
    row_kinds = "ittdtdd"
    latest_stage, latest_stage_ddl, latest_kinds, latest_sql = _staged_latest("funding_rates", {
        "symbol_id": "int4", "recv_ts": "timestamptz", "exchange_ts": "timestamptz", "rate": "float8",
        "next_funding_ts": "timestamptz", "mark_price": "float8", "index_price": "float8"})

    def add(self, rows: Iterable[tuple[int, FundingRate]]) -> int:
        """Validate and encode ``(symbol_id, funding_rate)`` pairs; return how many were taken."""
        ts_max = now_us() + FUTURE_SLACK_US
        added = 0
        for sid, r in rows:
            reason = funding_reason(r, ts_max)
            if reason:
                self.rejects.add(reason, f"{r.exchange}:{r.symbol} {r!r}")
                continue
            row = funding_tuple(sid, r)
            if self._repeats(sid, r.recv_ts, row):
                continue
            self._append_row(sid, r, row, r.recv_ts)
            added += 1
        return added

    def _latest_args_of(self, latest: dict[Any, Any]) -> list[Any]:
        items = latest.items()
        return [
            [sid for sid, _ in items],
            [r.recv_ts for _, (_, r) in items],
            [r.exchange_ts for _, (_, r) in items],
            [r.rate for _, (_, r) in items],
            [r.next_funding_ts for _, (_, r) in items],
            [r.mark_price for _, (_, r) in items],
            [r.index_price for _, (_, r) in items],
        ]


# ---------------------------------------------------------------------------------------------------------------
# balances

class BalanceWriter(_KeyedRowWriter):
    """Writer of ``balances`` (exact numerics); keeps ``balances_latest`` current in the same transaction."""

    table = "balances"
    columns = ("exchange_id", "account", "asset", "recv_ts", "exchange_ts", "free", "locked")
    row_kinds = "issttnn"
    latest_sql = _latest_sql("balances", 7, """
    INSERT INTO balances_latest AS l (exchange_id, account, asset, recv_ts, exchange_ts, free, locked)
    SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                         $6::numeric[], $7::numeric[])
    ON CONFLICT (exchange_id, account, asset) DO UPDATE SET
        recv_ts = EXCLUDED.recv_ts, exchange_ts = EXCLUDED.exchange_ts, free = EXCLUDED.free,
        locked = EXCLUDED.locked
    WHERE l.recv_ts <= EXCLUDED.recv_ts""")

    def add(self, rows: Iterable[tuple[int, Balance]]) -> int:
        """Validate and encode ``(exchange_id, balance)`` pairs; return how many were taken."""
        ts_max = now_us() + FUTURE_SLACK_US
        added = 0
        for exchange_id, r in rows:
            reason, free, locked = balance_check(r, ts_max)
            if reason:
                self.rejects.add(reason, repr(r))
                continue
            row = balance_tuple(exchange_id, r, free, locked)
            key = (exchange_id, r.account, r.asset)
            if self._repeats(key, r.recv_ts, row):
                continue
            self._append_row(key, (r, free, locked), row, r.recv_ts)
            added += 1
        return added

    def _latest_args_of(self, latest: dict[Any, Any]) -> list[Any]:
        items = latest.items()
        return [
            [k[0] for k, _ in items],
            [k[1] for k, _ in items],
            [k[2] for k, _ in items],
            [v[0].recv_ts for _, (_, v) in items],
            [v[0].exchange_ts for _, (_, v) in items],
            [v[1] for _, (_, v) in items],
            [v[2] for _, (_, v) in items],
        ]

    latest_key_cols = 3
    latest_ts_col = 3

    def _encode_latest(self, args: list[Any]) -> list[Any]:
        return args[:5] + [[str(v) for v in args[5]], [str(v) for v in args[6]]]

    def _decode_latest(self, stored: list[Any]) -> list[Any]:
        return stored[:5] + [[Decimal(v) for v in stored[5]], [Decimal(v) for v in stored[6]]]

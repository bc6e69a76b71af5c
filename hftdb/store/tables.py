"""The three time-series writers: rows into batches, and latest-row upserts per table.

Each row is checked by the wire layer's rules (:mod:`hftdb.wire.rules`) and packed in its layout
(:mod:`hftdb.wire.books`, :mod:`hftdb.wire.rows`), then handed to :meth:`~hftdb.store.writer.BatchWriter.append`:
book tickers by their one encoder (:mod:`hftdb.store.vector`), funding rates and balances as :class:`KeyedRows`. A row
that fails is rejected alone, with a reason, and the rows beside it go on.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Iterable

from msgspec.structs import astuple

from ..models import FUTURE_SLACK_US, Balance, BookTicker, FundingRate, now_us
from ..wire.rows import balance_tuple, funding_tuple
# The acceptance rules and reasons are the wire layer's.
from ..wire.rules import balance_check, funding_reason
from . import vector
from .writer import BatchWriter

__all__ = ["BookTickerWriter", "FundingRateWriter", "BalanceWriter", "KeyedRows", "update_then_insert_sql"]


# The ledger rows of a commit's batches, and the NOTIFY that ends it: shared by every writer's latest statement.
# committed_at is clock_timestamp(), not the column's default now() (the transaction's start): a catch-up finds the
# batches committed during a gap by committed_at, and a commit held up long (its latest upsert waiting for a row
# lock a unit of work holds) would be dated long before it committed. This statement is a commit's last before
# COMMIT, and PostgreSQL completes its CTEs after the main query, the later ones first: the stamp is taken after
# the upsert's waits (tests/test_notify.py holds one 12 s). A unit of work, whose transaction goes on after this
# statement, stamps its batches again just before its COMMIT (hftdb.store.unit).
_LEDGER = """
WITH ledger AS (
    INSERT INTO ingest_batches (batch_id, table_name, row_count, min_recv_ts, max_recv_ts, committed_at)
    SELECT b.id, '{table}', b.n, b.lo, b.hi, clock_timestamp()
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


_UPDATE_THEN_INSERT = _LEDGER + """, updated AS (
    UPDATE {table}_latest l SET
        exchange_id = coalesce(l.exchange_id, (SELECT s.exchange_id FROM symbols s WHERE s.id = l.symbol_id)),
        {updates}
    FROM {source} WHERE l.symbol_id = u.symbol_id AND l.recv_ts <= {recv_ts}
), inserted AS (
    -- An anti-join, not NOT EXISTS: Citus refuses a correlated subquery beside a CTE, and PostgreSQL plans both
    -- as the same hash anti-join (server CPU per upsert 4.63 against 4.77 ms, medians, bench_writer.py).
    INSERT INTO {table}_latest AS l (symbol_id, exchange_id, {columns})
    SELECT u.symbol_id, s.exchange_id, {u_values} FROM {source} LEFT JOIN symbols s ON s.id = u.symbol_id
    LEFT JOIN {table}_latest x ON x.symbol_id = u.symbol_id WHERE x.symbol_id IS NULL
    ON CONFLICT (symbol_id) DO UPDATE SET exchange_id = coalesce(l.exchange_id, EXCLUDED.exchange_id), {excluded}
    WHERE l.recv_ts <= EXCLUDED.recv_ts
)""" + _NOTIFY


def update_then_insert_sql(table: str, source: str, values: dict[str, str], *, nargs: int) -> str:
    """A commit's ledger rows, latest-table upsert and NOTIFY, the upsert as an UPDATE of the symbols' existing
    rows and an INSERT of the missing ones only.

    ``INSERT ... ON CONFLICT DO UPDATE`` on rows that nearly always exist pays, per row, a speculative index probe
    and a row lock (a WAL record of its own) before the update; a plain ``UPDATE ... FROM`` does not. Measured on
    1,000 symbols of book tickers, the two alternating in one run: 5.7-9.0 ms of server CPU per upsert against
    4.5-5.1 ms (``benchmarks/bench_writer.py --methods latest-upsert`` measures the current one). The INSERT
    skips the rows that existed when the statement started (its snapshot: the UPDATE's rows) and keeps ON CONFLICT
    for a row another process inserted meanwhile. ``source`` is the FROM item of the newest rows, aliased ``u``
    (the staging table, see :func:`_staged_latest`), which the UPDATE and the INSERT each read: a CTE over it,
    which both would share, is materialized into a tuplestore first, and that cost ~0.4 ms of server CPU per
    1,000-symbol commit (12 %; BENCHMARKS.md, "Session 9"). ``values`` maps each latest column (symbol_id and
    exchange_id aside) to its expression over ``u``; ``nargs`` parameters come before the ledger's.
    """
    return _UPDATE_THEN_INSERT.format(
        id=nargs + 1, rows=nargs + 2, lo=nargs + 3, hi=nargs + 4, payload=nargs + 5, table=table, source=source,
        recv_ts=values["recv_ts"],
        updates=", ".join(f"{col} = {expr}" for col, expr in values.items()),
        columns=", ".join(values), u_values=", ".join(values.values()),
        excluded=", ".join(f"{col} = EXCLUDED.{col}" for col in values),
    )


#: The kind (see ``hftdb.wire.copy.copy_columns``) of each staging-table column type.
_STAGE_KINDS = {"int4": "i", "int8": "q", "float8": "d", "timestamptz": "t"}


def _staged_latest(table: str, types: dict[str, str]) -> tuple[str, str, str, str]:
    """The staging table of ``table``'s latest rows (name, DDL, its columns' kinds for ``copy_columns``) and the
    commit statement that reads it.

    A commit sends the group's newest row per symbol by binary COPY into this per-backend temp table, then runs
    the ledger + upsert + NOTIFY statement over it: building the same rows as text array literals cost ~3x the
    client CPU (``repr`` of every float) and more server CPU (parsing them; measured alternating in one run with
    ``benchmarks/bench_writer.py --methods latest-compare``). The rows go in one at a time
    (:func:`hftdb.store.commit.stage_latest` says why). ON COMMIT DELETE ROWS empties it at every commit that
    touched it; rows of a transaction that rolled back are never seen.
    """
    stage = f"hftdb_{table}_latest_in"
    ddl = (f"CREATE TEMP TABLE IF NOT EXISTS {stage} ("
           + ", ".join(f"{col} {typ}" for col, typ in types.items()) + ") ON COMMIT DELETE ROWS")
    kinds = "".join(_STAGE_KINDS[typ] for typ in types.values())
    sql = update_then_insert_sql(table, f"pg_temp.{stage} u", {col: f"u.{col}" for col in list(types)[1:]}, nargs=0)
    return stage, ddl, kinds, sql


# ---------------------------------------------------------------------------------------------------------------
# book_tickers

#: Where each latest column after symbol_id sits in a BookTicker's astuple.
_BT_LATEST_FIELDS = tuple(BookTicker.__struct_fields__.index(c) for c in (
    "recv_ts", "exchange_ts", "bid_price", "bid_qty", "ask_price", "ask_qty", "update_id"))


class BookTickerWriter(BatchWriter):
    """Writer of ``book_tickers``; keeps ``book_tickers_latest`` current in the same transaction."""

    table = "book_tickers"
    #: The record a row of this table is written from.
    record = BookTicker
    columns = ("symbol_id", "recv_ts", "exchange_ts", "bid_price", "bid_qty", "ask_price", "ask_qty", "update_id")
    row_kinds = "ittddddq"
    latest_stage, latest_stage_ddl, latest_kinds, latest_sql = _staged_latest("book_tickers", {
        "symbol_id": "int4", "recv_ts": "timestamptz", "exchange_ts": "timestamptz", "bid_price": "float8",
        "bid_qty": "float8", "ask_price": "float8", "ask_qty": "float8", "update_id": "int8"})

    def vectorizes(self, n: int) -> bool:
        """Whether a call of ``n`` rows is worth the vectorized path (``hftdb.store.vector.MIN_ROWS`` or more)."""
        return n >= vector.MIN_ROWS

    def add_fast(self, rows: list[BookTicker], known_ids: set[int] | None, sids: list[int] | None = None,
                 names: dict[str, dict[str, int]] | None = None) -> int | None:
        """Take a whole call's tickers at once when each carries a registered ``symbol_id`` (the feeds' case),
        ``sids`` gives every row's id, or every row is named by a name in ``names`` (the symbol catalog's
        :meth:`~hftdb.db.catalog.SymbolCatalog.names`), vectorized by :mod:`hftdb.store.vector`; None when the call
        needs its ids paired first (:meth:`add`)."""
        if len(rows) < vector.MIN_ROWS or (sids is None and names is None and rows[0].symbol_id is None):
            return None
        return vector.add_tickers(self, rows, known_ids, sids, names)

    def add(self, rows: Iterable[tuple[int, BookTicker]]) -> int:
        """Validate and encode ``(symbol_id, ticker)`` pairs (ids resolved and registered) into the batches; return
        how many were taken. The same encoder as a whole call's (:func:`hftdb.store.vector.add_pairs`), through
        :meth:`append`."""
        return vector.add_pairs(self, rows)

    def _latest_args_of(self, latest: dict[Any, Any]) -> list[Any]:
        if not latest:
            return [[] for _ in self.columns]
        # One C-level transpose of the rows' msgspec tuples, then the columns picked: ~0.2 ms for 1,000 symbols
        # where a comprehension per column cost ~0.4 ms.
        fields = list(zip(*map(astuple, latest.values())))
        return [list(latest), *(fields[i] for i in _BT_LATEST_FIELDS)]


# ---------------------------------------------------------------------------------------------------------------
# funding_rates and balances: rows checked and packed one at a time, handed over as KeyedRows


class KeyedRows:
    """Checked rows of a table without a vectorized path (funding rates, balances) as COPY tuples, with each row's
    key (of its latest-table row), the value its latest row is built from and its receipt time: the writer's
    :class:`~hftdb.store.batch.Encoded` for them, taken by :meth:`~hftdb.store.writer.BatchWriter.append` like book tickers.
    """

    __slots__ = ("keys", "values", "tuples", "times", "lo", "hi")

    def __init__(self, keys: list[Any], values: list[Any], tuples: list[bytes], times: list[int]) -> None:
        self.keys, self.values, self.tuples, self.times = keys, values, tuples, times
        self.lo, self.hi = min(times), max(times)

    def __len__(self) -> int:
        """The number of rows."""
        return len(self.tuples)

    def slice(self, start: int, end: int) -> KeyedRows:
        """Rows ``start`` to ``end``."""
        return KeyedRows(self.keys[start:end], self.values[start:end], self.tuples[start:end],
                         self.times[start:end])

    def partition_starts(self, interval_us: int) -> list[int]:
        """The start of every partition the rows' receipt times fall in."""
        return sorted({t - t % interval_us for t in self.times})

    def append_to(self, batch: Any) -> int:
        """Append the tuples to ``batch`` and keep its newest row per key (a later row wins a tie), dropping a row
        that exactly repeats one of the batch's; only a row not newer than its key's newest is looked up
        (:meth:`hftdb.store.batch.Batch.holds`)."""
        buf, latest = batch.buf, batch.latest
        get = latest.get
        added = 0
        for key, value, row, ts in zip(self.keys, self.values, self.tuples, self.times):
            prev = get(key)
            if prev is not None and ts <= prev[0]:
                if batch.holds(row):
                    continue
                if ts < prev[0]:
                    buf += row
                    added += 1
                    continue
            buf += row
            latest[key] = (ts, value)
            added += 1
        return added


class FundingRateWriter(BatchWriter):
    """Writer of ``funding_rates``; keeps ``funding_rates_latest`` current in the same transaction."""

    table = "funding_rates"
    #: The record a row of this table is written from.
    record = FundingRate
    columns = ("symbol_id", "recv_ts", "exchange_ts", "rate", "next_funding_ts", "mark_price", "index_price")
    row_kinds = "ittdtdd"
    latest_stage, latest_stage_ddl, latest_kinds, latest_sql = _staged_latest("funding_rates", {
        "symbol_id": "int4", "recv_ts": "timestamptz", "exchange_ts": "timestamptz", "rate": "float8",
        "next_funding_ts": "timestamptz", "mark_price": "float8", "index_price": "float8"})

    def add(self, rows: Iterable[tuple[int, FundingRate]]) -> int:
        """Validate and encode ``(symbol_id, funding_rate)`` pairs; return how many were taken."""
        ts_max = now_us() + FUTURE_SLACK_US
        keys: list[Any] = []
        values: list[Any] = []
        tuples: list[bytes] = []
        times: list[int] = []
        for sid, r in rows:
            reason = funding_reason(r, ts_max)
            if reason:
                self.rejects.add(reason, f"{r.exchange}:{r.symbol} {r!r}")
                continue
            keys.append(sid)
            values.append(r)
            tuples.append(funding_tuple(sid, r))
            times.append(r.recv_ts)
        return self.append(KeyedRows(keys, values, tuples, times)) if keys else 0

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

class BalanceWriter(BatchWriter):
    """Writer of ``balances`` (exact numerics); keeps ``balances_latest`` current in the same transaction."""

    table = "balances"
    #: The record a row of this table is written from.
    record = Balance
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
        keys: list[Any] = []
        values: list[Any] = []
        tuples: list[bytes] = []
        times: list[int] = []
        for exchange_id, r in rows:
            reason, free, locked = balance_check(r, ts_max)
            if reason:
                self.rejects.add(reason, repr(r))
                continue
            keys.append((exchange_id, r.account, r.asset))
            values.append((r, free, locked))
            tuples.append(balance_tuple(exchange_id, r, free, locked))
            times.append(r.recv_ts)
        return self.append(KeyedRows(keys, values, tuples, times)) if keys else 0

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

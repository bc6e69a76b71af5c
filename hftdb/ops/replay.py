"""Replay recorded websocket frames through the adapters' own parse-and-write path (``hftdb ingest-file``).

A file holds one raw frame per line, exactly as it came off the websocket; it may be gzip- or zstd-compressed
(recognised by its first bytes, not its name; zstd needs the optional ``zstandard`` package: ``hftdb[zstd]``).
Each frame goes through what a live connection does with it: the venue's parser, the per-connection
sequencing (duplicate and gap detection, the drop of unsequenced quotes that a sequenced channel already gives)
and the admission that drops rows already seen (:class:`~hftdb.exchanges.intake.Intake`), and the sink calls
that hand rows to the batch writers. Several files are replayed as one stream, through one intake, in time
order: by the exchange time of the first frame in each that has one (files without, e.g. Binance spot
bookTicker captures, by name after those). A line longer than :data:`MAX_LINE_BYTES` is rejected
(``line_too_long``) without being held in memory; any other bad line is the parser's reject; neither stops
the file.

The channels given (``--channel``) are those a live connection would have subscribed to receive the frames: they
are checked against the venue's channels, and they set how the frames are sequenced, as live (on Bybit, naming an
``orderbook.*`` channel drops the quotes of ``tickers`` frames, which carry no update id, as a connection
subscribed to both does). They do not select frames: a replay has no subscription to filter by, so every frame the
venue's parser recognises is stored, whatever its channel (a bookTicker capture replayed with ``markPrice``
named stores its book tickers; ``orderbook.50`` frames are parsed as the book they are). Split a mixed capture
before the replay to store only some of its channels.

Frames are stamped with the time they are replayed, as a live connection stamps them on receipt, and handed
to the intake a block of the file (about 4 MiB of whole lines) at a time, as one socket read
(:meth:`~hftdb.exchanges.intake.Intake.process_lines`: where the parser can, USD-M bookTicker lines are scanned
in C straight into COPY tuples, :class:`~hftdb.wire.books.BookTuples`, without a record per row).

**Replaying is idempotent.** A row is identified by the key live admission uses: ``(symbol, update_id)`` on
sequenced channels, ``(symbol, exchange_ts)`` on the others (funding included), with the same values (an
exchange time in ms can be shared by two different messages). Rows already stored are dropped and counted as
duplicates, so replaying a file twice, or a file that overlaps what was stored live or by an earlier replay,
writes each message once. Two sources of duplicates, checked two ways:

* *Rows stored before the replay began.* Before the first row is written, the book rows of the venue that a frame of
  the files could repeat are copied once into a temporary table on the replay's own connection, indexed by exchange
  time (and by key once a block must be checked key by key). A stored copy of a message was received (or replayed)
  after the exchange sent it, and has the message's exchange time, so these are the rows received since the earliest
  first-frame exchange time less :data:`DISORDER_US` (a capture is only roughly in time order) and 1 s of clock
  skew, sent from then on and, when every file is plain (its last block can be read), until the newest time of the
  last blocks plus :data:`DISORDER_US`; rows without an exchange time are copied whenever received in range, and a
  capture without exchange times (Binance spot bookTicker) takes all the venue's rows. The server scans the rows
  received in range once; it copies only those in range. A block is then checked against that table only: not at all
  when it is newer than every copied row (a backfill into an empty range, the new part of an overlap), by index
  range scans of its exchange-time windows when each run of 4,096 of its rows spans at most 10 s (the windows'
  stored rows come back as binary COPY tuples and are matched in numpy, :func:`~hftdb.wire.books.repeats_of`), else
  key by key for the rows inside the span of stored keys of their symbol. It never reads the rows the replay itself
  writes, the reason the lookup it replaces (one query a block over the growing hot partition, BRIN only) made a
  replay's time grow with the square of its length. A row outside the copied range (more out of order than
  :data:`DISORDER_US`) is looked up in ``book_tickers`` itself, as before.
  Rows of that range already moved to the Parquet tier (``hftdb archive``) are copied into the same table, from the
  files the history reads take (:class:`~hftdb.read.archive.ArchiveTier`), so a replay of a capture whose rows were
  archived writes none of them again; when no archived day overlaps the range this costs one ``stat``. The
  funding rates and balances of the range that were archived are copied alike, into a temporary table each, which
  their lookups (below) read with the stored rows. A row looked up in ``book_tickers`` itself (outside the copied
  range), or a funding rate or a balance sent before it, is not looked up in the archive.
* *Rows this replay wrote* (a file that repeats itself, files that overlap each other): the intake's admission
  drops a row whose key is not newer than its symbol's last, as on a live feed of several connections.

Rows committed by another process *while* a replay runs are not seen by it: a replay holds a session advisory
lock per venue, so a second ``ingest-file`` into the same venue fails at once instead of racing, but a daemon
recording the same venue could store a message of the files during the replay (only if the files hold frames
received after the replay began). Funding rows are few and are looked up per block in ``funding_rates``
as before; balances are identified by ``(account, asset, exchange_ts)`` with their amounts, looked up the same
way, and a replay also drops a balance it has already written itself (a file that repeats a message); a
balance without an exchange time has no identity and is written as it comes.

>>> async with DatabaseManager() as db:
...     results = await ingest_files(db, ["okx_tickers.jsonl.gz"], exchange="okx_spot", channels=["tickers"])
...     print(results[0].committed, results[0].rejects)
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import operator
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import numpy as np

from ..config import VENUE_CHANNELS
from ..db import dberrors
from ..errors import DatabaseUnavailableError, StateError, UnknownSymbolError, ValidationError
from ..exchanges.intake import Intake, exchange_time_ok
from ..exchanges.registry import create_adapter
from ..exchanges.runner import StreamRunner
from ..db.locks import unlock
from ..read import archive
from ..tablespec import TIME_SERIES
from ..manager import DatabaseManager
from ..models import Balance, BookTicker, ExchangeName, FeedRows, FundingRate, now_us
from ..wire.books import STORED, BookTuples, PackedBooks, read_stored, repeats_of
from ..wire.copy import HEADER, PG_EPOCH_US, TRAILER
from ..wire.rules import MAX_ACCOUNT_LEN, account_reason

__all__ = ["MAX_LINE_BYTES", "ReplayProgress", "ReplayResult", "ReplayTuning", "check_files", "ingest_file",
           "ingest_files", "line_blocks", "line_pieces", "replay_frames"]

logger = logging.getLogger(__name__)

_TABLES = TIME_SERIES

#: A longer line is rejected (``line_too_long``) and skipped without being read into memory whole. The largest
#: frame of any supported channel (a balance snapshot of a big account) is a few hundred KB.
MAX_LINE_BYTES = 8 << 20
#: How far a frame's exchange time may lie before the first frame of its file and still be checked against
#: the rows copied at the start (older rows are looked up in ``book_tickers`` itself, one query a block).
DISORDER_US = 60_000_000
# A stored copy of a message was stamped on receipt or replay, after the exchange sent it, less clock skew.
_SKEW_US = 1_000_000
# The newest exchange time of a plain file is read from this much of its end (_last_time).
_TAIL = 64 << 10
# How often a replay that is ahead of the writer looks again (_Replay.run).
_WAIT_S = 0.002
_INT8_MAX = (1 << 63) - 1
_INT8_MIN = -(1 << 63)
_EXCHANGE_TS = operator.attrgetter("exchange_ts")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
# The reject reason of a file whose read failed part way (truncated or corrupt): what came before is replayed.
_CORRUPT_FILE = "corrupt_file"
# Session advisory lock key of a replay into one venue: the ASCII tag ``hftdbrp`` then the exchange id's low
# byte (the scheme of hftdb.db.locks: cannot collide with its tags).
_LOCK_TAG = int.from_bytes(b"hftdbrp\x00", "big")


class ReplayResult(msgspec.Struct, kw_only=True):
    """What the replay of one file did. ``committed`` counts rows committed per table; ``rejects`` counts by
    reason the lines and frames refused (``line_too_long``, the parser's reasons) and the rows the writers
    refused; ``duplicates`` the rows dropped because the same update (id or exchange time) had already been
    stored, or had come earlier in the replay. ``path`` is the file's path (empty for :func:`replay_frames`),
    ``seconds`` how long its replay took, its commit included."""

    frames: int
    committed: dict[str, int]
    rejects: dict[str, int]
    duplicates: int
    gaps: int
    dropped_rows: int
    path: str = ""
    seconds: float = 0.0

    @property
    def stored(self) -> int:
        """Rows committed, all tables."""
        return sum(self.committed.values())

    @property
    def failed(self) -> bool:
        """True when the file had frames and none of them gave a row that is now stored (committed by this
        replay, or found already stored): every frame was rejected, or was not market data at all. A file
        without frames has not failed."""
        return self.frames > 0 and self.stored == 0 and self.duplicates == 0

    @property
    def damaged(self) -> bool:
        """True when the file could not be read to its end (truncated or corrupt: a ``corrupt_file`` reject). Its
        frames before the damage were replayed and are counted here; what came after it is lost."""
        return self.rejects.get(_CORRUPT_FILE, 0) > 0


class ReplayTuning(msgspec.Struct, frozen=True, kw_only=True):
    """How a replay reads its files and how far it parses ahead of the writer. The defaults are the measured
    ones (BENCHMARKS.md, ingest-file); tests make the reads small, to put lines across their ends.

    * ``read_bytes``: what a file's replay reads and hands to the intake at a time (:func:`line_pieces`). The
      writer's per-call costs (its newest row per symbol) are paid per piece: a 1M-frame replay took ~10% less
      client CPU with 4 MiB than with 1 MiB.
    * ``block_bytes``: one read of a compressed stream (a read that fails loses no more than this of what came
      before it), and what :func:`line_blocks` splits at a time.
    * ``ahead_rows``: how many book rows the replay may hold in the writer's memory, not yet committed, before it
      waits for the commits to catch up; None: three of the writer's commits (``commit_max_rows``); 0: no limit.
    """

    read_bytes: int = 4 << 20
    block_bytes: int = 1 << 20
    ahead_rows: int | None = None

    def __post_init__(self) -> None:
        for name in ("read_bytes", "block_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"{name} must be an int > 0, got {value!r}")
        if self.ahead_rows is not None and (type(self.ahead_rows) is not int or self.ahead_rows < 0):
            raise ValueError(f"ahead_rows must be None or an int >= 0, got {self.ahead_rows!r}")


_TUNING = ReplayTuning()


class ReplayProgress(msgspec.Struct, kw_only=True):
    """Where a replay of several files stands, passed to the ``progress`` callback after each block.
    Bytes are those of the files as stored (compressed bytes for a compressed file)."""

    file_index: int
    files: int
    path: str
    frames: int
    bytes_done: int
    bytes_total: int
    elapsed: float


_STORED_BOOKS = """SELECT b.symbol_id, b.update_id, b.exchange_ts, b.bid_price, b.bid_qty, b.ask_price, b.ask_qty
    FROM book_tickers b
    JOIN unnest($1::int4[]) AS k(symbol_id) USING (symbol_id)
    WHERE ($2::timestamptz IS NULL OR b.recv_ts >= $2)
      AND (b.update_id = ANY($3::int8[]) OR b.exchange_ts = ANY($4::timestamptz[]))"""

_SNAPSHOT_TABLE = "hftdb_replay_books"
_SNAPSHOT_CREATE = f"""CREATE TEMP TABLE {_SNAPSHOT_TABLE} (
    symbol_id integer NOT NULL, update_id bigint, exchange_ts timestamptz,
    bid_price double precision, bid_qty double precision, ask_price double precision, ask_qty double precision)"""
_SNAPSHOT_FILL = f"""INSERT INTO {_SNAPSHOT_TABLE}
    SELECT b.symbol_id, b.update_id, b.exchange_ts, b.bid_price, b.bid_qty, b.ask_price, b.ask_qty
    FROM book_tickers b
    WHERE b.symbol_id = ANY($1::int4[])
      AND ($2::timestamptz IS NULL OR b.recv_ts >= $2)
      AND (b.exchange_ts IS NULL OR (($2::timestamptz IS NULL OR b.exchange_ts >= $2)
                                     AND ($3::timestamptz IS NULL OR b.exchange_ts <= $3)))"""
_SNAPSHOT_INDEX = (
    f"CREATE INDEX ON {_SNAPSHOT_TABLE} (exchange_ts)",
    f"ANALYZE {_SNAPSHOT_TABLE}",
)
# The key indexes, and the spans below, serve only blocks checked as records (key by key, or a window whose rows
# are matched in Python): they are built on the first such block. A USD-M bookTicker replay checks its blocks of
# tuples by exchange-time window alone, and building them took ~0.6 s of a 1M-row snapshot's ~1.4 s.
_SNAPSHOT_KEY_INDEX = (
    f"CREATE INDEX ON {_SNAPSHOT_TABLE} (symbol_id, update_id)",
    f"CREATE INDEX ON {_SNAPSHOT_TABLE} (symbol_id, exchange_ts) WHERE update_id IS NULL",
)
# Per symbol, the span of stored keys: a row outside it cannot be stored, and needs no query.
_SNAPSHOT_SPANS = f"""SELECT s.symbol, t.symbol_id, min(t.update_id), max(t.update_id),
        min(t.exchange_ts) FILTER (WHERE t.update_id IS NULL), max(t.exchange_ts) FILTER (WHERE t.update_id IS NULL)
    FROM {_SNAPSHOT_TABLE} t JOIN symbols s ON s.id = t.symbol_id GROUP BY t.symbol_id, s.symbol"""
_SNAPSHOT_LOOKUP = f"""SELECT t.symbol_id, t.update_id, t.exchange_ts, t.bid_price, t.bid_qty, t.ask_price, t.ask_qty
    FROM {_SNAPSHOT_TABLE} t JOIN unnest($1::int4[], $2::int8[]) AS k(symbol_id, update_id) USING (symbol_id, update_id)
    UNION ALL
    SELECT t.symbol_id, t.update_id, t.exchange_ts, t.bid_price, t.bid_qty, t.ask_price, t.ask_qty
    FROM {_SNAPSHOT_TABLE} t JOIN unnest($3::int4[], $4::timestamptz[]) AS k(symbol_id, exchange_ts)
        USING (symbol_id, exchange_ts)
    WHERE t.update_id IS NULL"""

# A block of rows that all have exchange times, in runs of _WINDOW_ROWS rows each spread over at most _WINDOW_US:
# every copied row of each run's window (a stored copy has its message's exchange time), one index range scan a
# window and no per-row parameters, all in one statement (:meth:`_Stored._stored_windows`), as the binary COPY
# tuples of :data:`hftdb.wire.books.STORED` that numpy reads whole: the symbol id, the row's key as :func:`_key`
# makes it (its update id, else its exchange time in µs since the Unix epoch) and the four prices. No column is
# NULL: the windows' rows have an exchange time, and prices are NOT NULL. (A row in two windows comes twice.) A COPY
# takes no parameters: asyncpg's ``copy_from_query`` has the server quote them (``quote_literal``) into the
# statement, a round trip that one statement a block, not one a window, keeps cheap.
_SNAPSHOT_WINDOWS_COPY = f"""SELECT t.symbol_id,
        coalesce(t.update_id, (extract(epoch FROM t.exchange_ts) * 1000000)::int8),
        t.bid_price, t.bid_qty, t.ask_price, t.ask_qty
    FROM unnest($1::timestamptz[], $2::timestamptz[]) AS w(lo, hi)
    JOIN {_SNAPSHOT_TABLE} t ON t.exchange_ts BETWEEN w.lo AND w.hi"""
_WINDOW_US = 10_000_000
# Rows of a block checked by one window (_Stored._tuples, _Stored._record_windows).
_WINDOW_ROWS = 4096
# The copy reads every row received in range once: on a big database that is longer than a command's usual
# timeout, and it is not a hang.
_SNAPSHOT_TIMEOUT_S = 3600.0

_STORED_BALANCES = """SELECT b.account, b.asset, b.exchange_ts, b.free, b.locked FROM balances b
    WHERE b.exchange_id = $1 AND ($2::timestamptz IS NULL OR b.recv_ts >= $2) AND b.exchange_ts = ANY($3::timestamptz[])"""

_STORED_FUNDING = """SELECT f.symbol_id, f.exchange_ts, f.rate FROM funding_rates f
    JOIN unnest($1::int4[]) AS k(symbol_id) USING (symbol_id)
    WHERE ($2::timestamptz IS NULL OR f.recv_ts >= $2) AND f.exchange_ts = ANY($3::timestamptz[])"""

# Funding rates and balances of the copied range that were moved to the Parquet tier, copied at the start into a
# temporary table each (:meth:`_Stored._archived`), and read with the stored rows by the same lookups. Per table:
# the table's name, its columns (the lookup's, in the archive's names) and their types.
_ARCHIVED_COPIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "funding_rates": ("hftdb_replay_funding", ("symbol_id", "exchange_ts", "rate"),
                      "symbol_id integer NOT NULL, exchange_ts timestamptz NOT NULL, rate double precision"),
    "balances": ("hftdb_replay_balances", ("account", "asset", "exchange_ts", "free", "locked"),
                 "account text NOT NULL, asset text NOT NULL, exchange_ts timestamptz NOT NULL, free numeric, "
                 "locked numeric"),
}
_STORED_FUNDING_ARCHIVED = _STORED_FUNDING + """
    UNION ALL
    SELECT a.symbol_id, a.exchange_ts, a.rate FROM hftdb_replay_funding a
    JOIN unnest($1::int4[]) AS k(symbol_id) USING (symbol_id)
    WHERE a.exchange_ts = ANY($3::timestamptz[])"""
_STORED_BALANCES_ARCHIVED = _STORED_BALANCES + """
    UNION ALL
    SELECT a.account, a.asset, a.exchange_ts, a.free, a.locked FROM hftdb_replay_balances a
    WHERE a.exchange_ts = ANY($3::timestamptz[])"""
_TEMP_TABLES = ", ".join([_SNAPSHOT_TABLE, *(name for name, _, _ in _ARCHIVED_COPIES.values())])


def _key(row: BookTicker) -> int | None:
    t = row.exchange_ts
    key = row.update_id if row.update_id is not None else t
    # A value out of bigint range cannot be stored (the writer rejects its row): never send it in a query.
    if key is None or not -_INT8_MAX <= key <= _INT8_MAX or (t is not None and not -_INT8_MAX <= t <= _INT8_MAX):
        return None
    return key


class _Stored:
    """Finds which replayed rows the database already holds (see the module docstring)."""

    def __init__(self, db: DatabaseManager, conn: asyncpg.Connection, exchange: str) -> None:
        self.db = db
        self.conn = conn
        self.exchange = exchange
        self.exchange_id = 0  # set once the exchange is registered
        self._ids: dict[str, int | None] = {}
        self._balances: set[tuple[object, ...]] = set()  # identities of the balances this replay wrote
        # symbol -> (symbol_id, lowest and highest stored update id, same for exchange times of unsequenced rows)
        self._spans: dict[str, tuple[int, Any, Any, Any, Any]] = {}
        self._since: int | None = None  # rows received from then on were copied; None: all
        self._until: int | None = None  # and rows whose exchange time is later were not; None: no bound
        self._newest = -_INT8_MAX  # the newest exchange time among the copied rows
        self._windows = False  # every copied row has an exchange time: blocks are checked by time window
        self._keyed_done = False  # the key indexes built and the spans read (_keyed)
        self._archived_copies: set[str] = set()  # the tables of _ARCHIVED_COPIES whose archived rows were copied
        self.copied = 0
        self.duplicates = 0

    async def snapshot(self, since: int | None, until: int | None) -> None:
        """Copy the venue's book rows received from ``since`` on (None: all), and sent by the exchange between
        ``since`` and ``until`` (None: no bound) or without an exchange time, into the temporary table, before
        the replay writes any row."""
        conn = self.conn
        await conn.execute(f"DROP TABLE IF EXISTS {_TEMP_TABLES}")
        await conn.execute(_SNAPSHOT_CREATE)
        # The venue's ids as an array, not a join: the plan stays one scan whatever the estimates (a join was
        # planned as a nested loop of one scan of the partition per symbol once the time bounds were added).
        ids = [r[0] for r in await conn.fetch("SELECT id FROM symbols WHERE exchange_id = $1", self.exchange_id)]
        status = await conn.execute(_SNAPSHOT_FILL, ids, since, until, timeout=_SNAPSHOT_TIMEOUT_S)
        self.copied = int(status.rsplit(" ", 1)[-1]) + await self._archived("book_tickers", ids, since, until)
        for table, (name, _, columns) in _ARCHIVED_COPIES.items():
            await conn.execute(f"CREATE TEMP TABLE {name} ({columns})")
            if await self._archived(table, ids, since, until):
                await conn.execute(f"CREATE INDEX ON {name} (exchange_ts)", timeout=_SNAPSHOT_TIMEOUT_S)
                await conn.execute(f"ANALYZE {name}", timeout=_SNAPSHOT_TIMEOUT_S)
                self._archived_copies.add(table)
        self._since = since
        self._until = until
        if self.copied:
            for statement in _SNAPSHOT_INDEX:
                await conn.execute(statement, timeout=_SNAPSHOT_TIMEOUT_S)
            newest, untimed = await conn.fetchrow(
                f"SELECT max(exchange_ts), bool_or(exchange_ts IS NULL) FROM {_SNAPSHOT_TABLE}")
            # A copied row without an exchange time could be the copy of any row: no window, no skipped block.
            self._newest = _INT8_MAX if untimed or newest is None else newest
            self._windows = not untimed

    async def _archived(self, table: str, ids: list[int], since: int | None, until: int | None) -> int:
        # The rows of ``table`` of the same range that were moved to the Parquet tier, copied into its temporary
        # table: the files the history reads take (hftdb.read.archive.ArchiveTier), read a symbol at a time (a
        # venue's balances at once). One stat of the archive's table directory when no archived day overlaps the
        # range (the usual replay of recent frames).
        arch = self.db.settings.archive
        by_symbol = archive.SPECS[table].by == "symbol"
        if not archive.enabled(arch) or (by_symbol and not ids):
            return 0
        tier = archive.ArchiveTier(arch.root)
        lo = _INT8_MIN if since is None else since
        hi = now_us() + 1
        if not await asyncio.to_thread(tier.covers, table, max(lo, 0), hi):
            return 0
        # Every manifest of the range, attached or not: a row in PostgreSQL and in the files is in the snapshot twice,
        # which costs nothing, where a row left out would be written again.
        manifests = await asyncio.to_thread(tier.manifests, table, lo, hi)
        if not any(f.exchange == self.exchange and f.rows for m in manifests for f in m.files):
            return 0
        if table == "book_tickers":
            name, columns = _SNAPSHOT_TABLE, ("symbol_id", "update_id", "exchange_ts", *_PRICE_NAMES)
        else:
            name, columns, _ = _ARCHIVED_COPIES[table]
        copied = 0
        for sid in ids if by_symbol else [None]:
            cols = await asyncio.to_thread(tier.read, manifests, table, exchange=self.exchange, lo=lo, hi=hi,
                                           symbol_id=sid, keys=True)
            ex, has_ex = cols["exchange_ts"], cols["exchange_ts__valid"]
            in_range = np.ones(len(ex), dtype=bool)
            if since is not None:
                in_range &= ex >= since
            if until is not None:
                in_range &= ex <= until
            # As _SNAPSHOT_FILL: sent in range, or (a book row) without an exchange time; a funding rate or a
            # balance without one is never looked up.
            keep = in_range & has_ex if name != _SNAPSHOT_TABLE else ~has_ex | in_range
            if not keep.any():
                continue
            records = list(zip(*(_kept(cols, c, keep) for c in columns)))
            await self.conn.copy_records_to_table(name, records=records, columns=columns, timeout=_SNAPSHOT_TIMEOUT_S)
            copied += len(records)
        if copied:
            logger.info("ingest-file: %d archived rows of %s of %s to check the replay against", copied, table,
                        self.exchange)
        return copied

    async def _keyed(self) -> None:
        # The key indexes and each symbol's span of stored keys, built for the first block checked as records.
        if self._keyed_done or not self.copied:
            return
        for statement in _SNAPSHOT_KEY_INDEX:
            await self.conn.execute(statement, timeout=_SNAPSHOT_TIMEOUT_S)
        self._spans = {r[0]: tuple(r[1:]) for r in await self.conn.fetch(_SNAPSHOT_SPANS)}  # type: ignore[misc]
        self._keyed_done = True

    def lost(self) -> bool:
        """Whether this replay's connection, and the session holding its snapshot table and lock, is gone (a
        server restart or a terminated backend)."""
        try:
            return self.conn.is_closed()
        except asyncpg.InterfaceError:  # closed under the pool's proxy: released, its session gone
            return True

    async def close(self) -> None:
        """Drop the temporary table (the connection goes back to the pool); nothing to drop when the session that
        held it is gone."""
        if self.lost():
            return
        try:
            await self.conn.execute(f"DROP TABLE IF EXISTS {_TEMP_TABLES}")
        except dberrors.CATCH as exc:
            if not self.lost():
                raise
            # Lost on the way: the table went with its session. Raising would turn a replay whose rows were all
            # handed to the writer into a failure.
            logger.info("ingest-file: the snapshot table went with its session (%s)", type(exc).__name__)

    async def books(self, rows: list[BookTicker] | BookTuples) -> list[BookTicker] | BookTuples:
        """``rows`` without the ones already stored; ``rows`` itself (packed rows intact) when none is."""
        since = self._since
        if type(rows) is BookTuples:
            # Tuples without records: the usual block (nothing stored in its window) passes as it is, one that
            # may repeat stored rows is checked by time windows; any other is checked as records (below).
            span = rows.exchange_span()
            if span is None:
                return rows
            lowest, highest = span
            if (since is None or lowest - _SKEW_US >= since) and (self._until is None or highest <= self._until):
                if lowest > self._newest:
                    return rows
                if self._windows:
                    checked = await self._tuples(rows)
                    if checked is not None:
                        return checked
            rows = rows.records()
        # The usual block needs no Python per row: its times are read from its packed tuples (numpy), else in C.
        span = rows.exchange_span() if isinstance(rows, PackedBooks) else None
        if span is not None:
            lowest, highest = span
        else:
            try:
                lowest = min(map(_EXCHANGE_TS, rows))
            except TypeError:  # a row without an exchange time
                lowest = None
        # A stored copy of a message has its exchange time: a block newer than all copied rows, and not older
        # than the copied range, has none stored (a backfill past what is stored, the new part of an overlap).
        until = self._until
        if lowest is not None and (since is None or lowest - _SKEW_US >= since):
            if span is None:
                highest = max(map(_EXCHANGE_TS, rows))
            if until is None or highest <= until:  # the whole block inside the copied range
                if lowest > self._newest:
                    return rows
                if self._windows:
                    await self._keyed()  # (the rows' ids come with the spans)
                    checked = await self._record_windows(rows)
                    if checked is not None:
                        return checked
        await self._keyed()
        spans = self._spans
        snap_u: list[int] = []
        snap_us: list[int] = []
        snap_t: list[int] = []
        snap_ts: list[int] = []
        older: list[BookTicker] = []
        if spans or since is not None or until is not None:
            for r in rows:
                key = _key(r)
                if key is None:
                    continue
                t = r.exchange_ts
                if ((since is not None and (t is None or t - _SKEW_US < since))
                        or (until is not None and (t is None or t > until))):
                    older.append(r)  # its stored copy may lie outside the copied range
                    continue
                span = spans.get(r.symbol)
                if span is None:
                    continue
                sid, umin, umax, tmin, tmax = span
                if r.update_id is not None:
                    if umin is not None and umin <= key <= umax:
                        snap_us.append(sid)
                        snap_u.append(key)
                elif tmin is not None and tmin <= key <= tmax:
                    snap_ts.append(sid)
                    snap_t.append(key)
        found: list[Any] = []
        if snap_u or snap_t:
            found = await self.conn.fetch(_SNAPSHOT_LOOKUP, snap_us, snap_u, snap_ts, snap_t)
        if older:
            found.extend(await self._older(older))
        return self._drop(rows, found)

    async def _tuples(self, rows: BookTuples) -> BookTuples | None:
        """``rows`` without the stored ones, found by one range scan per run of :data:`_WINDOW_ROWS` rows (a block
        of a file is about a thousand times that: its rows' times are near each other, not the whole block's), all
        in one statement; None when a run spans more than :data:`_WINDOW_US` (then the block is checked as records).

        The stored rows come as binary COPY tuples and are matched in numpy (:meth:`BookTuples.repeats`): fetched as
        records and matched through a set of Python tuples, they cost a replay of stored rows ~2.5 µs a row of
        this process's CPU, more than the rest of the replay (BENCHMARKS.md, "Session 12")."""
        stored = await self._stored_windows(rows.columns()["ex"].astype(np.int64) + PG_EPOCH_US)
        if stored is None:
            return None
        if not len(stored):
            return rows
        keep = ~rows.repeats(stored)
        dropped = len(keep) - int(keep.sum())
        if not dropped:
            return rows
        self.duplicates += dropped
        return rows.select(keep)

    async def _record_windows(self, rows: list[BookTicker]) -> list[BookTicker] | None:
        """:meth:`_tuples` for records that all have an exchange time: ``rows`` without the stored ones (``rows``
        itself, packed rows intact, when none is), or None when a run of :data:`_WINDOW_ROWS` rows spans more
        than :data:`_WINDOW_US` or the rows' values do not fit the arrays (then they are checked key by key). Their
        values are read into numpy columns once and matched with :func:`hftdb.wire.books.repeats_of`; each row's
        id is its stored symbol's, as in :meth:`_drop`."""
        try:
            ex = np.fromiter(map(_EXCHANGE_TS, rows), dtype=np.int64, count=len(rows))
            prices = [np.fromiter(map(get, rows), dtype=np.float64, count=len(rows)) for get in _PRICES]
        except (TypeError, ValueError, OverflowError):
            return None
        stored = await self._stored_windows(ex)
        if stored is None:
            return None
        if not len(stored):
            return rows
        get = self._ids_by_symbol().get
        sids: list[int] = []
        keys: list[int] = []
        for r in rows:
            sid = get(r.symbol, r.symbol_id)
            key = _key(r)
            if sid is None or key is None:  # no id, or a key out of range: nothing stored can equal it
                sid, key = -1, 0
            sids.append(sid)
            keys.append(key)
        try:
            columns = (np.array(sids, dtype=np.int64), np.array(keys, dtype=np.int64), *prices)
        except OverflowError:  # an id past int8: check these rows key by key
            return None
        drop = repeats_of(columns, stored) & (columns[0] >= 0)
        dropped = int(drop.sum())
        if not dropped:
            return rows
        self.duplicates += dropped
        return [r for r, d in zip(rows, drop.tolist()) if not d]

    async def _stored_windows(self, ex: Any) -> Any:
        # The copied rows in the windows of a block's runs of rows (``ex``: their exchange times, µs since the Unix
        # epoch), as STORED records (none when every run is newer than every copied row); None when a run spans
        # more than _WINDOW_US, or the server's tuples are not of that layout (a NULL would shorten one).
        windows = _windows(ex, self._newest)
        if windows is None:
            return None
        lows, highs = windows
        if not lows:
            return np.zeros(0, STORED)
        chunks: list[bytes] = []

        async def take(chunk: bytes) -> None:
            chunks.append(chunk)

        await self.conn.copy_from_query(_SNAPSHOT_WINDOWS_COPY, lows, highs, output=take, format="binary")
        data = b"".join(chunks)
        return read_stored(memoryview(data)[len(HEADER):len(data) - len(TRAILER)])

    def _ids_by_symbol(self) -> dict[str, int]:
        ids = {sym: span[0] for sym, span in self._spans.items()}
        ids.update({s: i for s, i in self._ids.items() if i is not None})
        return ids

    def _drop(self, rows: list[BookTicker], found: list[Any]) -> list[BookTicker]:
        if not found:
            return rows
        stored = {(sid, u if u is not None else t, bp, bq, ap, aq) for sid, u, t, bp, bq, ap, aq in found}
        get = self._ids_by_symbol().get
        out = []
        # Out-of-range values need no check here: nothing stored can equal them.
        for r in rows:
            u = r.update_id
            if (get(r.symbol, r.symbol_id), u if u is not None else r.exchange_ts, r.bid_price, r.bid_qty,
                    r.ask_price, r.ask_qty) in stored:
                continue
            out.append(r)
        self.duplicates += len(rows) - len(out)
        return out

    async def _older(self, rows: list[BookTicker]) -> list[Any]:
        ids = await self._symbol_ids(rows)
        wanted = [r for r in rows if r.symbol in ids]  # rows with a key in range (books() checked)
        if not wanted:
            return []
        return list(await self.conn.fetch(
            _STORED_BOOKS, sorted({ids[r.symbol] for r in wanted}), _since(wanted),
            [r.update_id for r in wanted if r.update_id is not None],
            [r.exchange_ts for r in wanted if r.update_id is None]))

    async def _symbol_ids(self, rows: list[BookTicker] | list[FundingRate]) -> dict[str, int]:
        ids = self._ids
        for row in rows:
            symbol = row.symbol
            if symbol in ids:
                continue
            sid = self.db.resolve_symbol_id(self.exchange, symbol)
            if sid is None:
                if not _plain(symbol):
                    continue  # cannot have been registered; asking would only make the server refuse the text
                try:
                    sid = (await self.db.get_symbol(self.exchange, symbol)).id
                except UnknownSymbolError:
                    continue  # never registered: nothing of it can be stored yet (asked again next block)
            ids[symbol] = sid
        return {s: i for s, i in ids.items() if i is not None}

    async def funding(self, rows: list[FundingRate]) -> list[FundingRate]:
        """``rows`` without the ones already stored."""
        ids = await self._symbol_ids(rows)
        wanted = [r for r in rows if r.symbol in ids and r.exchange_ts is not None
                  and -_INT8_MAX <= r.exchange_ts <= _INT8_MAX]
        if not wanted:
            return rows
        query = _STORED_FUNDING_ARCHIVED if "funding_rates" in self._archived_copies else _STORED_FUNDING
        found = await self.conn.fetch(query, sorted({ids[r.symbol] for r in wanted}), _since(wanted),
                                      [r.exchange_ts for r in wanted])
        if not found:
            return rows
        stored = {(sid, t, rate) for sid, t, rate in found}
        out = []
        for r in rows:
            sid = ids.get(r.symbol)
            if sid is not None and (sid, r.exchange_ts, r.rate) in stored:
                self.duplicates += 1
                continue
            out.append(r)
        return out

    async def balances(self, rows: list[Balance]) -> list[Balance]:
        """``rows`` without the ones already stored (or written earlier in this replay); see the module docstring."""
        wanted = [r for r in rows if r.exchange_ts is not None and -_INT8_MAX <= r.exchange_ts <= _INT8_MAX]
        if not wanted:
            return rows
        query = _STORED_BALANCES_ARCHIVED if "balances" in self._archived_copies else _STORED_BALANCES
        found = await self.conn.fetch(query, self.exchange_id, _since(wanted), [r.exchange_ts for r in wanted])
        stored = self._balances
        stored.update((account, asset, t, free, locked) for account, asset, t, free, locked in found)
        out = []
        for r in rows:
            if r.exchange_ts is not None:
                key = (r.account, r.asset, r.exchange_ts, r.free, r.locked)
                if key in stored:
                    self.duplicates += 1
                    continue
                stored.add(key)
            out.append(r)
        return out


def _windows(ex: Any, newest: int) -> tuple[list[int], list[int]] | None:
    # The exchange-time window of each run of _WINDOW_ROWS rows (by their exchange times, ``ex``) that may hold a
    # copied row (not newer than ``newest``), as (lows, highs); None when a run spans more than _WINDOW_US.
    lows: list[int] = []
    highs: list[int] = []
    for i in range(0, len(ex), _WINDOW_ROWS):
        part = ex[i:i + _WINDOW_ROWS]
        lowest, highest = int(part.min()), int(part.max())
        if lowest > newest:
            continue
        if highest - lowest > _WINDOW_US:
            return None
        lows.append(lowest)
        highs.append(highest)
    return lows, highs


_PRICE_NAMES = ("bid_price", "bid_qty", "ask_price", "ask_qty")
_PRICES = tuple(operator.attrgetter(name) for name in _PRICE_NAMES)


def _kept(cols: dict[str, Any], name: str, keep: Any) -> list[Any]:
    # The values of column ``name`` of an archive read (:meth:`~hftdb.read.archive.ArchiveTier.read`) where
    # ``keep`` is set, None where the column is NULL.
    values = cols[name]
    out = values[keep].tolist() if isinstance(values, np.ndarray) else list(itertools.compress(values, keep.tolist()))
    valid = cols.get(name + "__valid")
    if valid is None:
        return out
    return [v if ok else None for v, ok in zip(out, valid[keep].tolist())]

def _plain(text: str) -> bool:
    # What the server's text type can hold and a venue's symbol can be: no NUL, no lone surrogate.
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _since(rows: list[BookTicker] | list[FundingRate] | list[Balance]) -> int | None:
    times = [r.exchange_ts for r in rows]
    if None in times:
        return None  # a row without an exchange time: its copy may be anywhere
    return min(times) - _SKEW_US  # type: ignore[type-var]


def _check(exchange: ExchangeName | str, channels: Sequence[str],
           account: str = "default") -> tuple[ExchangeName, tuple[str, ...]]:
    try:
        venue = ExchangeName(exchange)
    except ValueError:
        raise ValidationError(f"exchange must be one of {', '.join(v.value for v in ExchangeName)}; got {exchange!r}") from None
    if isinstance(channels, str):
        channels = [channels]
    known = VENUE_CHANNELS[venue.value]
    if not channels:
        raise ValidationError(f"give at least one channel of {venue.value} ({', '.join(known)})")
    for channel in channels:
        if channel not in known:
            raise ValidationError(f"{channel!r} is not a channel of {venue.value} (its channels: {', '.join(known)})")
    # The writer's own rule, applied once here: refused there, every balance row would be rejected after the
    # whole replay.
    if reason := account_reason(account):
        if not isinstance(account, str):
            what = f"is {type(account).__name__}, not a string"
        elif reason == "account_bad_char":
            what = f"{account[:MAX_ACCOUNT_LEN]!r} holds a character that is not printable (a tab, a control character)"
        elif not account:
            what = "is empty"
        else:
            what = f"is {len(account)} characters long, over {MAX_ACCOUNT_LEN}"
        raise ValidationError(f"--account (account=) {what}: every balance row would be rejected as {reason}")
    return venue, tuple(channels)


# -- files -----------------------------------------------------------------------------------------------------------


def _open(path: Path) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
    """(the decompressed stream, the file as stored) of ``path``; a ValidationError naming it if unreadable."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise ValidationError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ValidationError(f"{path} is a directory, not a file of frames") from None
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}") from None
    try:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            import gzip

            return gzip.GzipFile(fileobj=raw, mode="rb"), raw
        if magic == _ZSTD_MAGIC:
            try:
                import zstandard
            except ImportError:
                raise ValidationError(
                    f"{path} is zstd-compressed: install the optional zstd support (pip install 'hftdb[zstd]')"
                ) from None
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=False)), raw
    except BaseException:
        raw.close()
        raise
    return raw, raw


def _chunks(stream: io.BufferedIOBase, step: int, rejects: Callable[[str, str], None],
            name: str) -> Iterator[bytes | None]:
    """``stream``'s bytes about ``step`` at a time until its end or a read that fails, then None if one failed.

    The stream is read with ``read1``, a decompressor's output at a time, so that a truncated or corrupt file keeps
    everything that came before the damage, as ``zcat`` does (a ``read(step)`` that fails loses what it had read).
    The rest of the file is one ``corrupt_file`` reject; the None tells the caller that the last line it holds was
    cut by the damage, and is part of it."""
    while True:
        parts: list[bytes] = []
        held = 0
        ended = False
        try:
            while held < step:
                data = stream.read1(step - held)
                if not data:
                    ended = True
                    break
                parts.append(data)
                held += len(data)
        except Exception as exc:  # noqa: BLE001 - any decompressor's error: a truncated or corrupt file
            if parts:
                yield parts[0] if len(parts) == 1 else b"".join(parts)
            rejects(_CORRUPT_FILE, f"{name}: {type(exc).__name__}: {exc}")
            yield None
            return
        if parts:
            yield parts[0] if len(parts) == 1 else b"".join(parts)
        if ended:
            return


def line_blocks(stream: io.BufferedIOBase, rejects: Callable[[str, str], None], name: str, *,
                tuning: ReplayTuning = _TUNING) -> Iterator[list[bytes]]:
    """The non-empty lines of ``stream`` a block (``tuning.block_bytes``) at a time, stripped; a line over
    MAX_LINE_BYTES is counted by ``rejects`` and skipped without being kept whole. A truncated or corrupt stream
    gives its lines up to the damage (the line it cuts is dropped) and one ``corrupt_file`` reject."""
    tail = b""
    skipping = False  # inside a line already rejected as too long
    for data in _chunks(stream, tuning.block_bytes, rejects, name):
        if data is None:
            tail = b""  # cut by the damage: part of the corrupt_file reject, not a frame
            break
        lines = data.split(b"\n")
        last = lines.pop()
        if skipping:
            if not lines:
                continue  # still inside the long line
            skipping = False
            lines[0] = b""
        elif lines:
            lines[0] = tail + lines[0]
        else:
            last = tail + last
        # Only a line carried over from earlier blocks can be longer than a block.
        if lines and len(lines[0]) > MAX_LINE_BYTES:
            rejects("line_too_long", f"{name}: a line is over {MAX_LINE_BYTES:,} bytes")
            lines[0] = b""
        if len(last) > MAX_LINE_BYTES:
            rejects("line_too_long", f"{name}: a line is over {MAX_LINE_BYTES:,} bytes")
            last = b""
            skipping = True
        tail = last
        if b"\r" in data or b"\n\n" in data or not lines or not lines[0]:
            frames = [f for f in map(bytes.strip, lines) if f]
        else:
            # The usual block (no CR, no blank line) goes as split: the decoders skip JSON whitespace, and a
            # pass over a block's ~5,000 lines is a tenth of the replay's own cost per frame.
            frames = lines
        if frames:
            yield frames
    tail = tail.strip()
    if tail:
        yield [tail]


def _reads(stream: io.BufferedIOBase, rejects: Callable[[str, str], None], name: str, *, plain: bool,
           tuning: ReplayTuning) -> Iterator[bytes | None]:
    """``stream``'s bytes about ``tuning.read_bytes`` at a time; a compressed stream is read a block at a time. After
    a read that fails (a truncated or corrupt file: one reject), what came before it, then None (:func:`_chunks`)."""
    parts: list[bytes] = []
    held = 0
    read = tuning.read_bytes
    step = read if plain else tuning.block_bytes
    damaged = False
    for data in _chunks(stream, step, rejects, name):
        if data is None:
            damaged = True
            break
        parts.append(data)
        held += len(data)
        if held >= read:
            yield parts[0] if len(parts) == 1 else b"".join(parts)
            parts, held = [], 0
    if parts:
        yield parts[0] if len(parts) == 1 else b"".join(parts)
    if damaged:
        yield None


def line_pieces(stream: io.BufferedIOBase, rejects: Callable[[str, str], None], name: str, *,
                plain: bool = False, tuning: ReplayTuning = _TUNING) -> Iterator[tuple[bytes, int, int]]:
    """:func:`line_blocks` without splitting: ``(data, start, end)`` about ``tuning.read_bytes`` at a time,
    ``data[start:end]`` whole lines (the file's last one may lack its newline); a line over MAX_LINE_BYTES is
    counted by ``rejects`` and skipped without being kept whole. The lines are left to the intake to split
    (Intake.process_lines). ``plain``: ``stream`` is the file itself, not a decompressor. A truncated or corrupt
    stream gives its lines up to the damage (the line it cuts is dropped) and one ``corrupt_file`` reject."""
    tail = b""  # the start of a line that began in an earlier block
    skipping = False  # inside a line already rejected as too long
    for data in _reads(stream, rejects, name, plain=plain, tuning=tuning):
        if data is None:
            tail = b""  # cut by the damage: part of the corrupt_file reject, not a frame
            break
        first = data.find(b"\n")
        if first < 0:
            if not skipping:
                tail += data
                if len(tail) > MAX_LINE_BYTES:
                    rejects("line_too_long", f"{name}: a line is over {MAX_LINE_BYTES:,} bytes")
                    tail = b""
                    skipping = True
            continue
        start = 0
        if skipping:
            skipping = False  # the long line ends here
            start = first + 1
        elif tail:
            # The line begun in earlier blocks, as its own piece (only it can be longer than a block).
            if len(tail) + first > MAX_LINE_BYTES:
                rejects("line_too_long", f"{name}: a line is over {MAX_LINE_BYTES:,} bytes")
            else:
                head = tail + data[:first + 1]
                yield head, 0, len(head)
            tail = b""
            start = first + 1
        elif first > MAX_LINE_BYTES:  # (only where a block is longer than a line may be: tests)
            rejects("line_too_long", f"{name}: a line is over {MAX_LINE_BYTES:,} bytes")
            start = first + 1
        last = data.rfind(b"\n")
        if start <= last:
            yield data, start, last + 1
        tail = data[last + 1:]
        if len(tail) > MAX_LINE_BYTES:
            rejects("line_too_long", f"{name}: a line is over {MAX_LINE_BYTES:,} bytes")
            tail = b""
            skipping = True
    if tail:
        yield tail, 0, len(tail)


def _first_time(path: Path, parser: Any, tuning: ReplayTuning) -> int | None:
    """The exchange time of the first frame of the first block of ``path`` that has one (None if none)."""
    stream, raw = _open(path)
    with raw, stream:
        for frames in line_blocks(stream, lambda reason, detail: None, str(path), tuning=tuning):
            return _block_time(frames, parser)
    return None


def _last_time(path: Path, parser: Any) -> int | None:
    """The newest exchange time among the frames of the last :data:`_TAIL` bytes of a plain file (None: compressed,
    or none)."""
    stream, raw = _open(path)
    with raw, stream:
        if stream is not raw:
            return None
        size = raw.seek(0, os.SEEK_END)
        raw.seek(max(0, size - _TAIL))
        lines = raw.read(_TAIL).split(b"\n")
        if size > _TAIL:
            lines = lines[1:]  # the first may be the end of a line
    times = []
    for frame in lines:
        frame = frame.strip()
        if not frame:
            continue
        try:
            parsed = parser.parse(frame, now_us())
        except Exception:  # a bad frame only means it gives no time
            continue
        times.extend(row.exchange_ts for row in parsed.every_row()
                     if row.exchange_ts is not None and exchange_time_ok(row.exchange_ts))
    return max(times) if times else None


#: What a path that is neither a directory nor a regular file is, in a user's words.
_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def _expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named by ``paths``: a directory stands for the regular files in it (not hidden, not recursive).
    Anything else that is not a regular file (a named pipe, a device) is refused: opened, a pipe blocks until
    something writes to it, and a replay reads each file more than once."""
    out: list[Path] = []
    for p in map(Path, paths):
        try:
            mode = p.stat().st_mode
        except OSError:
            mode = None  # missing or unreadable: opening it says which, naming it
        if mode is not None and not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            kind = next((text for test, text in _KINDS if test(mode)), "a special file")
            raise ValidationError(f"{p} is {kind}, not a regular file of frames")
        if mode is not None and stat.S_ISDIR(mode):
            try:
                found = sorted(c for c in p.iterdir() if c.is_file() and not c.name.startswith("."))
            except OSError as exc:
                raise ValidationError(f"cannot list {p}: {exc.strerror}") from None
            if not found:
                raise ValidationError(f"{p} holds no files")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise ValidationError("give at least one file")
    return out


# -- replay ----------------------------------------------------------------------------------------------------------


class _Replay:
    """One replay of a stream of blocks into ``db``: one adapter, runner and intake shared by all files."""

    def __init__(self, db: DatabaseManager, venue: ExchangeName, channels: tuple[str, ...], account: str,
                 stored: _Stored) -> None:
        self.db = db
        self.adapter = create_adapter(venue, db.feed_sink(), channels=list(channels), account=account)
        self.runner = StreamRunner(self.adapter)
        # The live session's own processing, fed from the file instead of a socket.
        self.intake = Intake(self.runner, self.adapter.new_parser())
        self.stored = stored

    def _counts(self) -> tuple[dict[str, Any], dict[str, int], int, int, int]:
        stats = self.adapter.stats
        return ({t: self.db.writer_stats(t) for t in _TABLES}, self.adapter.rejects.counts,
                stats.duplicates + self.stored.duplicates, stats.gaps, stats.dropped_rows)

    def frames_of(self, blocks: Iterable[list[bytes]]) -> Iterator[tuple[int, list[FeedRows]]]:
        """Blocks of frames through the intake, each stamped as one socket read: (frames, row groups)."""
        process = self.intake.process
        for block in blocks:
            yield len(block), [process([(now_us(), block)])]

    def lines_of(self, pieces: Iterable[tuple[bytes, int, int]]) -> Iterator[tuple[int, list[FeedRows]]]:
        """Pieces of a file (whole lines, :func:`line_pieces`) through the intake, each stamped as one socket read."""
        process_lines = self.intake.process_lines
        for data, start, end in pieces:
            yield process_lines(now_us(), data, start, end)

    async def run(self, blocks: Iterable[tuple[int, list[FeedRows]]], path: str,
                  on_block: Callable[[int], None] | None, *, tuning: ReplayTuning = _TUNING) -> ReplayResult:
        started = time.monotonic()
        before = self._counts()
        runner, stored = self.runner, self.stored
        stats = self.db.writer_stats
        ahead = tuning.ahead_rows
        if ahead is None:
            ahead = 3 * self.db.settings.writer.commit_max_rows
        frames = 0
        for n, groups in blocks:
            frames += n
            for batch in groups:
                try:
                    if batch.book_tickers:
                        batch.book_tickers = await stored.books(batch.book_tickers)
                    if batch.funding_rates:
                        batch.funding_rates = await stored.funding(batch.funding_rates)
                    if batch.balances:
                        batch.balances = await stored.balances(batch.balances)
                except dberrors.CATCH as exc:
                    if not stored.lost():
                        raise  # the database refused or timed out a check: its own error says which
                    # The snapshot the check reads lived in that session: no row can be checked any more. What
                    # went to the writer before is committed (or spooled, then committed) exactly once, and a
                    # second run skips it, so the answer is to stop and say so, not to go on unchecked.
                    raise DatabaseUnavailableError(
                        f"{path}: the database connection that finds already stored rows was lost "
                        f"({type(exc).__name__}) after {frames:,} frames; the rows before it are stored exactly "
                        "once (or spooled until the database is back): run the same ingest-file again to finish"
                    ) from None
                await runner.push(batch)
            # Let the flusher hand the sealed batches to its COPY now, while the next block is parsed: without
            # this the loop runs block after block until the writer's memory is full, and then parsing and COPY
            # take turns (3M frames: 10.1 s against 7.1 s with it, medians of two alternated runs).
            await asyncio.sleep(0)
            if ahead:
                # Parse no further ahead of the commits than this: past it the loop would only queue rows, and
                # each round trip of the writer's commits would wait for a whole block's parse (the first commit
                # of a 1M replay came 0.4-0.6 s after its first block, the server idle meanwhile).
                while stats("book_tickers")["rows_in_memory"] > ahead:
                    await asyncio.sleep(_WAIT_S)
            if on_block is not None:
                on_block(frames)
        await self.db.flush()
        after = self._counts()
        rejects = {r: n - before[1].get(r, 0) for r, n in after[1].items() if n - before[1].get(r, 0)}
        for t in _TABLES:
            for reason, n in after[0][t]["rejects"].items():
                delta = n - before[0][t]["rejects"].get(reason, 0)
                if delta:
                    rejects[reason] = rejects.get(reason, 0) + delta
        return ReplayResult(
            frames=frames,
            committed={t: after[0][t]["rows_committed"] - before[0][t]["rows_committed"] for t in _TABLES},
            rejects=rejects, duplicates=after[2] - before[2], gaps=after[3] - before[3],
            dropped_rows=after[4] - before[4], path=path, seconds=time.monotonic() - started)


@asynccontextmanager
async def _session(db: DatabaseManager, venue: ExchangeName, channels: tuple[str, ...], account: str,
                   since: int | None, until: int | None) -> AsyncIterator[_Replay]:
    async with db.connection() as conn:
        stored = _Stored(db, conn, venue.value)
        replay = _Replay(db, venue, channels, account, stored)
        ex = await db.insert_exchange(replay.adapter.exchange_record())
        stored.exchange_id = ex.id
        key = _LOCK_TAG | (ex.id & 0xFF)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            raise StateError(f"another ingest-file is replaying into {venue.value}: run them one after the other "
                             "(each would miss what the other writes)")
        try:
            await stored.snapshot(since, until)
            yield replay
        finally:
            replay.adapter.rejects.flush()
            try:
                await stored.close()
            finally:
                await unlock(conn, key)


async def replay_frames(
    db: DatabaseManager,
    frames: Iterable[bytes | str],
    *,
    exchange: ExchangeName | str,
    channels: Sequence[str],
    account: str = "default",
    chunk: int = 4096,
    progress: Callable[[int], None] | None = None,
    tuning: ReplayTuning | None = None,
) -> ReplayResult:
    """Parse ``frames`` as ``exchange`` would send them on ``channels`` and write the rows through ``db``;
    wait until they are committed and return the counts. ``progress(frames_done)`` is called per chunk;
    ``tuning.ahead_rows`` bounds how far the replay parses ahead of the writer (:class:`ReplayTuning`).

    Rows already stored are compared with those received from 1 s before the first frame's exchange time on
    (see the module docstring)."""
    venue, channels = _check(exchange, channels, account)
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, got {chunk!r}")

    def chunks() -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        for frame in frames:
            # A lone surrogate in a str frame goes to the parser as the bytes it is, to be rejected there.
            data = (frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame).strip()
            if data:
                batch.append(data)
                if len(batch) >= chunk:
                    yield batch
                    batch = []
        if batch:
            yield batch

    blocks = chunks()
    first = next(blocks, None)
    if first is None:
        return ReplayResult(frames=0, committed={t: 0 for t in _TABLES}, rejects={}, duplicates=0, gaps=0,
                            dropped_rows=0)
    probe = create_adapter(venue, db, channels=list(channels), account=account).new_parser()
    since = _block_time(first, probe)
    async with _session(db, venue, channels, account, None if since is None else since - DISORDER_US - _SKEW_US,
                        None) as r:
        return await r.run(r.frames_of(_chain(first, blocks)), "", progress, tuning=tuning or _TUNING)


def _block_time(block: list[bytes], parser: Any) -> int | None:
    for frame in block[:1000]:
        try:
            parsed = parser.parse(frame, now_us())
        except Exception:  # a bad frame only means it gives no time
            continue
        for row in parsed.every_row():
            # A time the intake would reject (bad_time: 1970s, far future, past int8) bounds nothing.
            if row.exchange_ts is not None and exchange_time_ok(row.exchange_ts):
                return row.exchange_ts
    return None


def _chain(first: list[bytes], rest: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
    yield first
    yield from rest


def check_files(paths: Iterable[str | os.PathLike[str]], *, exchange: ExchangeName | str,
                channels: Sequence[str], account: str = "default") -> list[Path]:
    """The files :func:`ingest_files` would replay from ``paths`` (a directory stands for its files), after the
    checks it makes before it touches the database: ``exchange`` is a venue, ``channels`` are channels of it,
    ``account`` is one the writer stores (1 to 64 printable characters), and every file exists and can be opened
    (a zstd file needs ``zstandard``). Any of them failing is a :class:`~hftdb.errors.ValidationError` naming
    it. Does no database I/O: a command checks its arguments with it before it connects."""
    _check(exchange, channels, account)
    files = _expand_paths(paths)
    for path in files:
        stream, raw = _open(path)
        with raw, stream:
            pass
    return files


async def ingest_files(
    db: DatabaseManager,
    paths: Iterable[str | os.PathLike[str]],
    *,
    exchange: ExchangeName | str,
    channels: Sequence[str],
    account: str = "default",
    progress: Callable[[ReplayProgress], None] | None = None,
    tuning: ReplayTuning | None = None,
) -> list[ReplayResult]:
    """Replay the files at ``paths`` (one raw websocket frame per line; plain, gzip or zstd; a directory stands
    for its files) into ``db`` as one stream, in time order (see the module docstring), and return one
    :class:`ReplayResult` per file, in the order replayed. ``progress`` gets a :class:`ReplayProgress` after
    each block (about 4 MiB: ``tuning.read_bytes``). ``tuning`` (a :class:`ReplayTuning`; None: the defaults)
    sets the sizes of the reads and how far the replay parses ahead of the writer's commits.

    A missing or unreadable file, or a zstd file without ``zstandard`` installed, is a
    :class:`~hftdb.errors.ValidationError` naming it, raised before any row is written; a second replay into
    the same venue at the same time is a :class:`~hftdb.errors.StateError`.
    """
    venue, channels = _check(exchange, channels, account)
    files = check_files(paths, exchange=venue, channels=channels, account=account)
    probe = create_adapter(venue, db, channels=list(channels), account=account).new_parser()
    tuning = tuning or _TUNING
    firsts = {p: _first_time(p, probe, tuning) for p in files}  # also opens each file: unreadable ones fail here
    files.sort(key=lambda p: (firsts[p] is None, firsts[p] or 0, str(p)))
    times = [t for t in firsts.values() if t is not None]
    # No time anywhere (Binance spot bookTicker): stored copies may be anywhere, all the venue's rows are copied.
    # A row without a time in a replay that has some is looked up in book_tickers itself (books()).
    since = min(times) - DISORDER_US - _SKEW_US if times else None
    # The newest frame is known where every file is plain (its last block is read): stored rows sent after it
    # need not be copied. A compressed file cannot be read from its end.
    lasts = [_last_time(p, probe) for p in files]
    until = max(lasts) + DISORDER_US if lasts and None not in lasts else None  # type: ignore[type-var]
    sizes = {p: p.stat().st_size for p in files}
    total = sum(sizes.values())
    started = time.monotonic()
    results: list[ReplayResult] = []
    async with _session(db, venue, channels, account, since, until) as replay:
        done_before = 0
        for index, path in enumerate(files):
            stream, raw = _open(path)
            with raw, stream:
                def on_block(frames: int, path: Path = path, index: int = index,
                             raw: io.BufferedIOBase = raw) -> None:
                    if progress is not None:
                        progress(ReplayProgress(
                            file_index=index, files=len(files), path=str(path),
                            frames=sum(r.frames for r in results) + frames,
                            bytes_done=done_before + min(raw.tell(), sizes[path]), bytes_total=total,
                            elapsed=time.monotonic() - started))

                pieces = line_pieces(stream, replay.adapter.rejects.add, str(path), plain=stream is raw,
                                     tuning=tuning)
                results.append(await replay.run(replay.lines_of(pieces), str(path), on_block, tuning=tuning))
            done_before += sizes[path]
    return results


async def ingest_file(
    db: DatabaseManager,
    path: str | os.PathLike[str],
    *,
    exchange: ExchangeName | str,
    channels: Sequence[str],
    account: str = "default",
    progress: Callable[[int, int], None] | None = None,
    tuning: ReplayTuning | None = None,
) -> ReplayResult:
    """Replay the file at ``path`` (one raw websocket frame per line; plain, gzip or zstd) into ``db``; see
    :func:`ingest_files` (``tuning`` too). ``progress(bytes_read, bytes_total)`` is called after each block. A missing or
    unreadable file, or a directory, is a :class:`~hftdb.errors.ValidationError` naming it."""
    p = Path(path)
    if p.is_dir():
        raise ValidationError(f"{p} is a directory, not a file of frames (ingest_files takes directories)")

    def report(state: ReplayProgress) -> None:
        if progress is not None:
            progress(state.bytes_done, state.bytes_total)

    return (await ingest_files(db, [p], exchange=exchange, channels=channels, account=account,
                               progress=report, tuning=tuning))[0]

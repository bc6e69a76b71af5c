"""The Parquet tier: sealed partitions written to files, verified, then dropped; history read back from them.

Layout under ``[archive] root`` (hive style, so pyarrow, DuckDB, Polars and Spark see ``date`` and ``exchange``
as columns)::

    book_tickers/date=2026-12-05/exchange=binance_usdm/part-0.parquet
    book_tickers/date=2026-12-05/_manifest.book_tickers_p20261205.0.json

One partition of PostgreSQL becomes one file per exchange and one manifest. Each file carries the ids and, beside
them, the exchange and symbol names (``exchange_name``, ``symbol``: ``exchange`` itself is the hive key, and a
file column of the same name clashes with it in pyarrow's dataset reader); times are ``timestamp[us, UTC]``,
prices ``float64``, balances ``decimal128(38, s)`` with ``s`` the largest scale of the partition's amounts (exact).
Rows are sorted by symbol (balances: account, asset), then receipt time, ties kept in the partition's order, and
written zstd-compressed in row groups of ``[archive] row_group_rows`` rows, each with min/max statistics: a read
of one symbol's hour touches the row groups whose ``symbol_id`` and ``recv_ts`` ranges overlap it.

**Nothing lost, nothing twice.** For each partition (:func:`archive_table`):

1. ``fetched``: in one REPEATABLE READ snapshot, the server's row count and checksum per symbol (one grouped
   scan), then the rows by binary COPY sorted by symbol, time and ``ctid``, handed in pieces of ``[archive]
   piece_rows`` to a worker thread that appends each to its exchange's file under a hidden temporary name
   (``.part-0.parquet.tmp``), row group by row group: memory holds a piece or two, whatever the partition's size;
2. ``written``: each file's last row group and footer written, the file fsynced;
3. ``verified``: each temporary file read back in batches; its row count and checksum must equal the server's
   for its exchange;
4. ``renamed``: files renamed into place, directory fsynced;
5. ``manifest``: the manifest (rows, min/max times, checksum, files, hftdb version) written the same way, in
   state ``written``;
6. ``detached``: the partition commented and ``DETACH ... CONCURRENTLY``; the detached table's row count is
   checked against the manifest again (the tables are append-only: late rows that arrived meanwhile make it
   differ, and then the files are rewritten from the detached table, which no longer changes);
7. ``dropped``: the table dropped, and the manifest rewritten in state ``dropped``.

A crash at any step leaves the partition (attached, or detached with its marker) in PostgreSQL, a complete
archive, or both; a rerun picks every case up and finishes it, and a partition archived already is not written
again. Late rows for a day already archived go to a new partition of the same name, archived later as the next
generation (``part-1.parquet``). The ``_HFTDB_ARCHIVE_STOP_AT`` environment variable names a step after which the
process kills itself (SIGKILL): the fault tests use it to crash at each step.

Reads (:class:`ArchiveTier`) take the files of a manifest unless the read's snapshot has the table it archived
still attached (by oid: a replica behind the detach, or the primary before it; for a manifest without an oid or
being restored, any table attached under the partition's name, unless the manifest says ``dropped``); PostgreSQL
is read for the whole window as well, in that same snapshot (:meth:`ArchiveTier.snapshot_read`), so the two never
count a row twice. pyarrow is imported here only, when a file is written or read: ``pip install 'hftdb[archive]'``.
:class:`ArchiveSummary` gives ``/metrics`` and ``hftdb stats`` the archive's totals, reading again only the days
whose directory changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable, Final, Sequence, TypeVar

import asyncpg
import msgspec

from . import columnar
from ..db import partitions
from ..config import ArchiveSettings
from ..db.durable import fsync_dir, write_atomic
from ..errors import DatabaseError, ValidationError
from ..tablespec import TABLES
from ..version import __version__

__all__ = ["ArchiveReport", "ArchiveSummary", "ArchiveTier", "FileEntry", "Manifest", "SPECS", "archive_table", "expire", "restore_day",
           "read_manifests", "require_pyarrow", "enabled", "summary", "verify", "VerifyReport", "STEPS", "RESTORE_STEPS", "MARKER"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The steps of archiving one partition, in order (``_HFTDB_ARCHIVE_STOP_AT`` names one).
STEPS: Final = ("fetched", "written", "verified", "renamed", "manifest", "detached", "dropped")
#: The steps of restoring one archived partition.
RESTORE_STEPS: Final = ("restoring", "loaded")
#: Comment on a partition being detached for archiving: a rerun finds it by this.
MARKER: Final = "hftdb: archived - drop in progress"
_STOP_ENV: Final = "_HFTDB_ARCHIVE_STOP_AT"  # not HFTDB_*: those are settings
_FORMAT: Final = 1
_NULL: Final = -(1 << 63)  # what a NULL contributes to the checksum (also int64 min = NaT = -infinity)
_M64: Final = 1 << 64
_US_PER_DAY: Final = 86_400_000_000
_EPOCH_ORDINAL: Final = datetime(1970, 1, 1).toordinal()


def enabled(settings: ArchiveSettings) -> bool:
    """Whether the archive is on (``[archive] root`` set): retention then archives before it drops."""
    return bool(settings.root)


def require_pyarrow() -> Any:
    """The ``pyarrow`` module, or a ValidationError naming the extra that brings it."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ValidationError("the Parquet archive needs pyarrow: pip install 'hftdb[archive]'") from None
    return pyarrow


# -- what each table's files hold --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Col:
    name: str
    kind: str  # i4, i8, ts, f8, dec, text
    nullable: bool = False


@dataclass(frozen=True)
class _Spec:
    table: str
    cols: tuple[_Col, ...]  # the table's columns: the checksum's order
    by: str  # "symbol" (book_tickers, funding_rates) or "exchange" (balances)
    layout: columnar.Layout | None = None  # fixed-width tables are read by binary COPY
    sort: tuple[str, ...] = ()


def _fixed_layout(cols: Sequence[_Col]) -> columnar.Layout:
    return columnar.Layout([columnar.Column(c.name, c.name, c.kind, c.nullable) for c in cols])


_BT_COLS = (_Col("symbol_id", "i4"), _Col("recv_ts", "ts"), _Col("exchange_ts", "ts", True),
            _Col("bid_price", "f8"), _Col("bid_qty", "f8"), _Col("ask_price", "f8"), _Col("ask_qty", "f8"),
            _Col("update_id", "i8", True))
_FR_COLS = (_Col("symbol_id", "i4"), _Col("recv_ts", "ts"), _Col("exchange_ts", "ts", True), _Col("rate", "f8"),
            _Col("next_funding_ts", "ts", True), _Col("mark_price", "f8", True), _Col("index_price", "f8", True))
_BAL_COLS = (_Col("exchange_id", "i4"), _Col("account", "text"), _Col("asset", "text"), _Col("recv_ts", "ts"),
             _Col("exchange_ts", "ts", True), _Col("free", "dec"), _Col("locked", "dec"))

# The archive's own view of each registered table: its columns in checksum order and its files' sort order
# (a table's files hold one exchange, so balances sort without their exchange_id). A table added to the registry
# without an entry here fails at import.
_ARCHIVED: Final = {
    "book_tickers": (_BT_COLS, ("symbol_id", "recv_ts")),
    "funding_rates": (_FR_COLS, ("symbol_id", "recv_ts")),
    "balances": (_BAL_COLS, ("account", "asset", "recv_ts")),
}
SPECS: Final = {
    t.name: _Spec(
        t.name, _ARCHIVED[t.name][0], "symbol" if t.key == ("symbol_id",) else "exchange",
        # Fixed-width tables are read by binary COPY; text and numeric columns are not fixed-width.
        None if any(c.kind in ("text", "dec") for c in _ARCHIVED[t.name][0]) else _fixed_layout(_ARCHIVED[t.name][0]),
        _ARCHIVED[t.name][1])
    for t in TABLES
}


# -- the checksum, computed alike by PostgreSQL and from the files -------------------------------------------
#
# Each value becomes a 64-bit integer (times: Unix µs; floats: their IEEE bits; ints as they are; decimals: the
# value times 10^scale mod 2^64; text: the first 8 bytes of its md5; NULL: int64 min). A row's hash XORs its
# values, each rotated by a different amount (so a value moved to another column changes it); the checksum is
# the sum of the rows' hashes mod 2^64 (so it does not depend on row order, and a value moved to another row
# changes it too).


def _rot(k: int) -> int:
    return (13 * k + 5) % 61 + 1  # 1..61: never 0 or 64, and (1 << r) - 1 fits an int8


def _sql_value(col: _Col, scale: int) -> str:
    c = col.name
    if col.kind in ("i4", "i8"):
        expr = f"{c}::int8"
    elif col.kind == "ts":
        expr = f"(extract(epoch FROM {c}) * 1000000)::int8"
    elif col.kind == "f8":
        expr = f"('x' || encode(float8send({c}), 'hex'))::bit(64)::int8"
    elif col.kind == "text":
        expr = f"('x' || left(md5({c}), 16))::bit(64)::int8"
    else:  # dec: (v * 10^scale) mod 2^64 as a signed int8
        u = f"mod(mod(({c} * {10 ** scale}::numeric), {_M64}::numeric) + {_M64}::numeric, {_M64}::numeric)"
        expr = f"(CASE WHEN {u} >= {1 << 63}::numeric THEN {u} - {_M64}::numeric ELSE {u} END)::int8"
    return f"coalesce({expr}, ({_NULL})::int8)" if col.nullable else expr


def _checksum_sql(spec: _Spec, source: str, scale: int, *, group: str | None = None) -> str:
    # Each value is computed once, in a subquery the planner may not flatten (OFFSET 0): inlined, every
    # rotation would compute its value twice, which cost more than the values themselves. With ``group`` (a
    # column of the fixed specs), one row per value of it: (value, count, sum), in one scan.
    values = ", ".join(f"{_sql_value(col, scale)} AS v{k}" for k, col in enumerate(spec.cols))
    terms = []
    for k in range(len(spec.cols)):
        r = _rot(k)
        terms.append(f"(v{k} << {r}) # ((v{k} >> {64 - r}) & {(1 << r) - 1}::int8)")
    agg = f"count(*), coalesce(sum(({' # '.join(terms)})::numeric), 0)"
    if group is None:
        return f"SELECT {agg} FROM (SELECT {values} FROM {source} OFFSET 0) AS v"
    assert group in {c.name for c in spec.cols}
    return f"SELECT g, {agg} FROM (SELECT {group} AS g, {values} FROM {source} OFFSET 0) AS v GROUP BY g"


def _checksum_arrays(spec: _Spec, values: dict[str, Any]) -> int:
    """The checksum of columns given as numpy int64 arrays (NULLs already ``_NULL``), by the table's names."""
    import numpy as np

    n = len(values[spec.cols[0].name])
    acc = np.zeros(n, dtype=np.uint64)
    for k, col in enumerate(spec.cols):
        v = values[col.name].astype(np.int64, copy=False).view(np.uint64)
        r = np.uint64(_rot(k))
        acc ^= (v << r) | (v >> (np.uint64(64) - r))
    return int(acc.sum(dtype=np.uint64)) if n else 0


def _md5_int(text: str) -> int:
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:8], "big", signed=True)


def _dec_int(value: Decimal, scale: int) -> int:
    u = int(value.scaleb(scale)) % _M64
    return u - _M64 if u >= 1 << 63 else u


def _file_values(spec: _Spec, table: Any, scale: int) -> dict[str, Any]:
    """The checksum inputs of an Arrow table read back from a file."""
    import numpy as np
    pa = require_pyarrow()

    out: dict[str, Any] = {}
    for col in spec.cols:
        arr = table.column(col.name).combine_chunks()
        if col.kind in ("dec", "text"):
            f = _md5_int if col.kind == "text" else (lambda d: _dec_int(d, scale))
            out[col.name] = np.array([_NULL if v is None else f(v) for v in arr.to_pylist()], dtype=np.int64)
            continue
        if isinstance(arr, pa.DictionaryArray):
            arr = arr.dictionary_decode()
        width = 4 if col.kind == "i4" else 8
        dtype = {"i4": np.int32, "i8": np.int64, "ts": np.int64, "f8": np.int64}[col.kind]
        raw = np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr) + arr.offset)[arr.offset:]
        assert raw.itemsize == width
        vals = raw.astype(np.int64)
        if arr.null_count:
            vals = np.where(arr.is_valid().to_numpy(zero_copy_only=False), vals, _NULL)
        out[col.name] = vals
    return out


# -- manifests ---------------------------------------------------------------------------------------------


class FileEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One Parquet file of a manifest: its path under the date directory and what it holds."""

    path: str
    exchange: str
    exchange_id: int
    rows: int
    bytes: int
    checksum: str
    min_recv_us: int | None
    max_recv_us: int | None


class Manifest(msgspec.Struct, kw_only=True):
    """What one archived partition (one generation of it) holds; the files' truth for readers and reruns."""

    format: int = _FORMAT
    hftdb_version: str
    table: str
    partition: str
    generation: int
    date: str
    lower_us: int
    upper_us: int
    rows: int
    checksum: str
    min_recv_us: int | None
    max_recv_us: int | None
    decimal_scale: int = 0
    files: list[FileEntry] = []
    # The archived table's oid (pg_class), which a physical replica shares: a reader whose snapshot still has this
    # very table attached (a replica behind the detach) reads its rows there, not from the files; another table
    # attached under the name (late rows) holds none of them. None in manifests written before it was recorded.
    relid: int | None = None
    # "written": the partition may still be in PostgreSQL; "dropped": it is not; "restoring": being loaded back
    # (readers treat it as "written": the files count only while no partition of that name is attached).
    state: str = "written"
    written_at: str = ""


class ArchiveReport(msgspec.Struct, kw_only=True):
    """What one :func:`archive_table` run did (or, with ``dry_run``, would do)."""

    table: str
    archived: list[str] = []  # partitions written, verified and dropped
    finished: list[str] = []  # leftovers of an interrupted run completed
    pending: list[str] = []  # with dry_run: what would be archived
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _date_dir(root: Path, table: str, lower_us: int) -> Path:
    return root / table / f"date={_date(lower_us)}"


def _date(us: int) -> str:
    return datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d")


def _manifest_name(partition: str, generation: int) -> str:
    return f"_manifest.{partition}.{generation}.json"


def _part_stem(lower_us: int, interval_us: int, generation: int) -> str:
    if interval_us % _US_PER_DAY == 0:
        return f"part-{generation}"
    at = datetime.fromtimestamp(lower_us // 1_000_000, tz=timezone.utc)
    return f"part-{at:%H%M}-{generation}"


def read_manifests(root: Path, table: str, lower_us: int | None = None, upper_us: int | None = None, *,
                   damaged: dict[Path, str] | None = None) -> list[Manifest]:
    """The manifests of ``table`` under ``root`` whose day overlaps ``[lower_us, upper_us)`` (all without bounds).

    A manifest that cannot be read as one (cut short, not JSON, of another shape, unreadable) is a DatabaseError
    naming it and ``hftdb archive verify``; with ``damaged``, it is left out and added there instead (its path, and
    what is wrong with it)."""
    base = root / table
    if not base.is_dir():
        return []
    if lower_us is None or upper_us is None:
        dirs = sorted(p for p in base.iterdir() if p.name.startswith("date="))
    else:
        first = lower_us // _US_PER_DAY * _US_PER_DAY
        dirs = [base / f"date={_date(d)}" for d in range(first, upper_us, _US_PER_DAY)]
    out = []
    for d in dirs:
        for m in _day_manifests(d, damaged):
            if lower_us is None or upper_us is None or (m.lower_us < upper_us and m.upper_us > lower_us):
                out.append(m)
    return out


def _day_manifests(day: Path, damaged: dict[Path, str] | None = None) -> list[Manifest]:
    try:
        names = sorted(n for n in os.listdir(day) if n.startswith("_manifest.") and n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = day / name
        try:
            out.append(msgspec.json.decode(path.read_bytes(), type=Manifest))
        except FileNotFoundError:
            continue  # removed since the listing (an expiry, a restore): as if listed after
        except (OSError, msgspec.DecodeError) as exc:  # (msgspec.ValidationError, a wrong shape, is a DecodeError)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
            if damaged is None:
                raise _damaged_manifest(path, reason) from exc
            damaged[path] = reason
    return out


def _manifest_where(path: Path) -> str:
    """``<table>/date=<day>/<manifest>``: a manifest's path as verify and the errors name it."""
    return f"{path.parent.parent.name}/{path.parent.name}/{path.name}"


def _damaged_manifest(path: Path, reason: str) -> DatabaseError:
    table, day = path.parent.parent.name, path.parent.name[5:]
    return DatabaseError(f"archive manifest {_manifest_where(path)} under {path.parent.parent.parent} is damaged "
                         f"({reason}); check the archive with `hftdb archive verify --table {table} --date {day}`")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    try:
        write_atomic(path, data, tmp=tmp)
    except OSError:
        # A disk full or a file system gone read-only: no half-written hidden file is left beside the manifests.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _step(name: str) -> None:
    # Fault injection for the crash tests: the process dies here as a power cut would leave it.
    if os.environ.get(_STOP_ENV) == name:
        logger.warning("%s=%s: killing this process", _STOP_ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)


# -- writing -----------------------------------------------------------------------------------------------


async def _names(conn: asyncpg.Connection) -> tuple[dict[int, tuple[int, str]], dict[int, str]]:
    symbols = {r[0]: (r[1], r[2]) for r in await conn.fetch("SELECT id, exchange_id, symbol FROM symbols")}
    exchanges = {r[0]: r[1] for r in await conn.fetch("SELECT id, name FROM exchanges")}
    return symbols, exchanges


def _piece_rows(settings: ArchiveSettings) -> int:
    # Whole row groups per piece: a piece's rows then fill row groups exactly, and a file's row groups fall
    # where one write of the whole partition would put them.
    rg = settings.row_group_rows
    return max(rg, settings.piece_rows // rg * rg)


async def _server_groups(conn: asyncpg.Connection, spec: _Spec, source: str, scale: int) -> dict[int, tuple[int, int]]:
    """``{symbol_id: (rows, checksum)}`` (balances: by exchange_id) of ``source``, computed by the server."""
    key = "exchange_id" if spec.by == "exchange" else "symbol_id"
    return {r[0]: (r[1], int(r[2]) % _M64) for r in await conn.fetch(_checksum_sql(spec, source, scale, group=key))}


def _parquet_options(table_columns: Sequence[str], settings: ArchiveSettings, spec: _Spec) -> dict[str, Any]:
    import pyarrow.parquet as pq

    # Timestamps and ids change little from row to row within a symbol: delta encoding is what makes them a
    # byte or two a row; prices and quantities repeat (a quote moves a tick at a time), so a dictionary wins.
    names = list(table_columns)
    delta = [c for c in ("recv_ts", "exchange_ts", "next_funding_ts", "update_id") if c in names]
    return dict(
        compression="zstd", compression_level=settings.compression_level,
        use_dictionary=[c for c in names if c not in delta],
        column_encoding={c: "DELTA_BINARY_PACKED" for c in delta}, write_statistics=True,
        sorting_columns=[pq.SortingColumn(names.index(c)) for c in spec.sort if c in names], store_schema=True,
    )


def _write_parquet(pa: Any, table: Any, path: Path, settings: ArchiveSettings, spec: _Spec) -> None:
    """Write a whole Arrow table as one archive file (what :class:`_ExchangeFile` writes piece by piece)."""
    import pyarrow.parquet as pq

    with open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=settings.row_group_rows,
                       **_parquet_options(table.column_names, settings, spec))
        f.flush()
        os.fsync(f.fileno())


class _ExchangeFile:
    """One exchange's file of a generation, written piece by piece to its temporary name: rows are held only
    until they fill a whole row group, so the row groups are those one write of the whole file would make."""

    def __init__(self, spec: _Spec, settings: ArchiveSettings, day_dir: Path, stem: str, ex_id: int, name: str,
                 expected: tuple[int, int]) -> None:
        self.spec = spec
        self.settings = settings
        self.ex_id = ex_id
        self.name = name
        self.expected = expected  # the server's (rows, checksum) for this exchange
        self.rel = f"exchange={name}/{stem}.parquet"
        self.final = day_dir / self.rel
        self.tmp = self.final.with_name(f".{stem}.parquet.tmp")
        self.rows = 0
        self.min_us: int | None = None
        self.max_us: int | None = None
        self._buffer: list[Any] = []
        self._buffered = 0
        self._file: Any = None
        self._writer: Any = None

    def add(self, table: Any, lo: int, hi: int) -> None:
        """Append rows (in the file's order) whose receipt times span ``[lo, hi]``."""
        self.rows += table.num_rows
        self.min_us = lo if self.min_us is None else min(self.min_us, lo)
        self.max_us = hi if self.max_us is None else max(self.max_us, hi)
        self._buffer.append(table)
        self._buffered += table.num_rows
        rg = self.settings.row_group_rows
        if self._buffered >= rg:
            import pyarrow as pa

            whole = pa.concat_tables(self._buffer)
            n = self._buffered // rg * rg
            self._write(whole.slice(0, n))
            rest = whole.slice(n)
            self._buffer = [rest] if rest.num_rows else []
            self._buffered = rest.num_rows

    def _write(self, table: Any) -> None:
        import pyarrow.parquet as pq

        table = table.combine_chunks()  # one chunk per column, as one write of the whole file passes it
        if self._writer is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.tmp, "wb")
            self._writer = pq.ParquetWriter(self._file, table.schema,
                                            **_parquet_options(table.column_names, self.settings, self.spec))
        self._writer.write_table(table, row_group_size=self.settings.row_group_rows)

    def finish(self) -> None:
        """Write the last, partial row group; close and fsync the temporary file."""
        if self._buffered:
            import pyarrow as pa

            self._write(pa.concat_tables(self._buffer))
            self._buffer, self._buffered = [], 0
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def discard(self) -> None:
        """Close without finishing (an error on the way) and remove the temporary file."""
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        if self._file is not None:
            self._file.close()
        self._writer = self._file = None
        self.tmp.unlink(missing_ok=True)

    def verify(self, scale: int, batch_rows: int) -> FileEntry:
        """Read the temporary file back in batches: its rows and checksum must be the server's for this exchange."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, total = 0, 0
        # pre_buffer off: on, the reader keeps what it read ahead, and memory grows with the file.
        pf = pq.ParquetFile(self.tmp, pre_buffer=False)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[c.name for c in self.spec.cols],
                                     use_threads=False):
            t = pa.Table.from_batches([batch])
            rows += t.num_rows
            total = (total + _checksum_arrays(self.spec, _file_values(self.spec, t, scale))) % _M64
        if (rows, total) != self.expected:
            raise DatabaseError(f"{self.tmp.name} of exchange {self.name} does not match the partition: {rows} rows, "
                                f"checksum {total} in the file against {self.expected[0]} rows, checksum "
                                f"{self.expected[1]} in PostgreSQL; nothing was dropped")
        return FileEntry(path=self.rel, exchange=self.name, exchange_id=self.ex_id, rows=rows,
                         bytes=self.tmp.stat().st_size, checksum=str(total), min_recv_us=self.min_us,
                         max_recv_us=self.max_us)


class _Generation:
    """The files of one generation of a partition, fed pieces of its rows in the files' order (sorted by
    symbol, or by exchange, account and asset) and routing each row to its exchange's file."""

    def __init__(self, spec: _Spec, settings: ArchiveSettings, day_dir: Path, stem: str,
                 groups: dict[int, tuple[int, int]], scale: int, symbols: dict[int, tuple[int, str]],
                 exchanges: dict[int, str]) -> None:
        self.spec = spec
        self.scale = scale
        self.symbols = symbols
        per_ex: dict[int, list[int]] = {}
        if spec.by == "exchange":
            for ex_id in groups:
                per_ex[ex_id] = [ex_id]
        else:
            missing = sorted(i for i in groups if i not in symbols)
            if missing:
                raise DatabaseError(f"{spec.table}: symbol ids {missing[:5]} have no row in symbols")
            for sid in groups:
                per_ex.setdefault(symbols[sid][0], []).append(sid)
        unknown = sorted(e for e in per_ex if e not in exchanges)
        if unknown:
            raise DatabaseError(f"{spec.table}: exchange ids {unknown[:5]} have no row in exchanges")
        self.files: dict[int, _ExchangeFile] = {}
        # Per exchange, its symbols in the partition (the file's dictionary of names, as one write of the whole
        # file would build it); per symbol, its exchange.
        self._dict_ids: dict[int, Any] = {}
        ex_of: dict[int, int] = {}
        for ex_id in sorted(per_ex):
            keys = sorted(per_ex[ex_id])
            expected = (sum(groups[k][0] for k in keys), sum(groups[k][1] for k in keys) % _M64)
            self.files[ex_id] = _ExchangeFile(spec, settings, day_dir, stem, ex_id, exchanges[ex_id], expected)
            self._dict_ids[ex_id] = keys
            for k in keys:
                ex_of[k] = ex_id
        self._ex_of = ex_of
        self._sym_sorted: Any = None
        self._ex_by_sym: Any = None

    def add(self, piece: dict[str, Any]) -> None:
        """Route one piece (numpy columns from :func:`columnar.copy_out_pieces`, or balance records) to the files."""
        pa = require_pyarrow()
        if self.spec.by == "exchange":
            self._add_balances(pa, piece)
        else:
            self._add_symbols(pa, piece)

    def _add_symbols(self, pa: Any, cols: dict[str, Any]) -> None:
        import numpy as np

        ts = pa.timestamp("us", tz="UTC")
        if self._sym_sorted is None:
            self._sym_sorted = np.array(sorted(self._ex_of), dtype=np.int64)
            self._ex_by_sym = np.array([self._ex_of[i] for i in self._sym_sorted.tolist()], dtype=np.int64)
        sid = cols["symbol_id"]
        pos = np.searchsorted(self._sym_sorted, sid)
        if len(sid) and (pos.max() >= len(self._sym_sorted) or (self._sym_sorted[pos] != sid).any()):
            raise DatabaseError(f"{self.spec.table}: a symbol appeared that the snapshot's checksum did not count")
        row_ex = self._ex_by_sym[pos]
        recv_all = cols["recv_ts"].view(np.int64)
        for ex_id in np.unique(row_ex).tolist():
            sel = row_ex == ex_id
            f = self.files[ex_id]
            s = sid[sel]
            dict_ids = np.array(self._dict_ids[ex_id], dtype=np.int64)
            recv = recv_all[sel]
            arrays: dict[str, Any] = {"recv_ts": pa.array(recv).view(ts)}
            for c in self.spec.cols:
                if c.name in ("symbol_id", "recv_ts"):
                    continue
                v = cols[c.name]
                if c.kind == "ts":
                    raw = v[sel].view(np.int64)
                    arrays[c.name] = pa.array(raw, mask=raw == _NULL if c.nullable else None).view(ts)
                elif c.kind == "f8":
                    raw = v[sel]
                    arrays[c.name] = pa.array(raw, mask=np.isnan(raw) if c.nullable else None)
                elif isinstance(v, np.ma.MaskedArray):
                    arrays[c.name] = pa.array(v.data[sel], mask=np.ma.getmaskarray(v)[sel])
                else:
                    arrays[c.name] = pa.array(v[sel])
            arrays["exchange_id"] = pa.array(np.full(len(s), ex_id, dtype=np.int32))
            arrays["exchange_name"] = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(len(s), dtype=np.int32)), pa.array([f.name]))
            arrays["symbol_id"] = pa.array(s.astype(np.int32))
            arrays["symbol"] = pa.DictionaryArray.from_arrays(
                pa.array(np.searchsorted(dict_ids, s).astype(np.int32)),
                pa.array([self.symbols[i][1] for i in dict_ids.tolist()]))
            order_names = ["recv_ts", "exchange_ts", "exchange_id", "exchange_name", "symbol_id", "symbol"]
            order_names += [c.name for c in self.spec.cols if c.name not in order_names]
            f.add(pa.table({n: arrays[n] for n in order_names}), int(recv.min()), int(recv.max()))

    def _add_balances(self, pa: Any, rows: list[tuple[Any, ...]]) -> None:
        ts = pa.timestamp("us", tz="UTC")
        dec = pa.decimal128(38, self.scale)
        start = 0
        while start < len(rows):  # rows come sorted by exchange: one run per exchange
            ex_id = rows[start][0]
            end = start
            while end < len(rows) and rows[end][0] == ex_id:
                end += 1
            run = rows[start:end]
            f = self.files[ex_id]
            recv = [r[3] for r in run]
            cols = {
                "recv_ts": pa.array(recv, pa.int64()).cast(ts),
                "exchange_ts": pa.array([r[4] for r in run], pa.int64()).cast(ts),
                "exchange_id": pa.array([ex_id] * len(run), pa.int32()),
                "exchange_name": pa.array([f.name] * len(run), pa.string()).dictionary_encode(),
                "account": pa.array([r[1] for r in run], pa.string()),
                "asset": pa.array([r[2] for r in run], pa.string()),
                "free": pa.array([r[5] for r in run], dec),
                "locked": pa.array([r[6] for r in run], dec),
            }
            f.add(pa.table(cols), min(recv), max(recv))
            start = end

    def finish(self) -> None:
        """Finish every file (the ``written`` step follows)."""
        for f in self.files.values():
            f.finish()

    def discard(self) -> None:
        """Remove every temporary file (an error on the way)."""
        for f in self.files.values():
            f.discard()


class _Pieces:
    """Pieces handed to a worker thread in order, one at a time, while the next is read from the server: the
    CPU work of a piece overlaps reading the next, and at most two are held at once."""

    def __init__(self, work: Any) -> None:
        self._work = work
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hftdb-archive")
        self._pending: Any = None  # the job in flight on the worker (a piece, or a run())

    async def add(self, piece: Any) -> None:
        """Queue ``piece`` once the one before it is done (its error, if any, is raised here)."""
        await self.drain()
        self._pending = self._pool.submit(self._work, piece)

    async def drain(self) -> None:
        """Wait for the job in flight."""
        if self._pending is not None:
            await asyncio.wrap_future(self._pending)
            self._pending = None

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the same worker once it is idle: memory the pieces freed in that thread's
        allocator arenas is reused, not taken again in another thread's."""
        await self.drain()
        self._pending = self._pool.submit(fn, *args)
        result = await asyncio.wrap_future(self._pending)
        self._pending = None
        return result

    async def stop(self) -> None:
        """Stop the worker once the job in flight is done (on the error path: its files are then closed under
        it). Waited for without blocking the event loop, and to its end even if cancelled again meanwhile."""
        self._pool.shutdown(wait=False)
        pending, self._pending = self._pending, None
        if pending is None or pending.cancelled():  # cancelled before the worker took it up: it never runs
            return
        with contextlib.suppress(Exception):  # the job's own error: the caller is raising its own
            await _to_the_end(asyncio.wrap_future(pending))

    def close(self) -> None:
        """Stop the idle worker (the normal end)."""
        self._pool.shutdown(wait=True)


async def _to_the_end(aw: Any) -> Any:
    """Await ``aw`` to its end even if this task is cancelled meanwhile, then raise the cancellation. For a step
    on a thread (a thread cannot be cancelled: left running, it would still write, rename or delete files after
    the task gave up the maintenance lock, under a rerun that may have started) or the worker's last piece."""
    fut = asyncio.ensure_future(aw)
    interrupted = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller gets
        raise asyncio.CancelledError
    return fut.result()


async def _stream(conn: asyncpg.Connection, spec: _Spec, source: str, piece_rows: int, pieces: _Pieces) -> int:
    """Read ``source`` in the files' order, piece by piece, into ``pieces``; return the rows read."""
    if spec.by == "exchange":
        query = (f"SELECT exchange_id, account, asset, (extract(epoch FROM recv_ts) * 1000000)::int8,"
                 f" (extract(epoch FROM exchange_ts) * 1000000)::int8, free, locked FROM {source}"
                 # C collation: the order of Python's str comparison (code points), which readers may rely on
                 ' ORDER BY exchange_id, account COLLATE "C", asset COLLATE "C", recv_ts, ctid')
        n = 0
        batch: list[tuple[Any, ...]] = []
        async for r in conn.cursor(query, prefetch=min(piece_rows, 10_000)):
            batch.append(tuple(r))
            if len(batch) >= piece_rows:
                n += len(batch)
                await pieces.add(batch)
                batch = []
        if batch:
            n += len(batch)
            await pieces.add(batch)
        return n
    assert spec.layout is not None
    # ctid last: rows of one symbol and one receipt time keep the partition's order, as reads see it.
    query = f"SELECT {spec.layout.select_list} FROM {source} ORDER BY symbol_id, recv_ts, ctid"
    return await columnar.copy_out_pieces(conn, spec.layout, query, piece_rows=piece_rows, sink=pieces.add)


def _version() -> str:
    return __version__


@dataclass
class _Partition:
    table: str
    name: str
    lower_us: int
    upper_us: int
    attached: bool
    manifests: list[Manifest] = field(default_factory=list)


async def archive_table(
    conn: asyncpg.Connection, table: str, *, settings: ArchiveSettings, cutoff_us: int, interval_s: int,
    dry_run: bool = False,
) -> ArchiveReport:
    """Archive every hftdb partition of ``table`` whose upper bound is <= ``cutoff_us`` to the Parquet tier
    under ``settings.root``, then drop it (see the module docstring for the steps and what a crash leaves);
    finish what an interrupted run left. The connection must be outside a transaction; the table's
    maintenance lock is held meanwhile. With ``dry_run``, only list the partitions that would be archived."""
    if table not in SPECS:
        raise ValidationError(f"table must be one of {', '.join(SPECS)}; got {table!r}")
    spec = SPECS[table]
    if not enabled(settings):
        raise ValidationError("the archive is off: [archive] root is empty")
    root = Path(settings.root)
    report = ArchiveReport(table=table)
    started = asyncio.get_running_loop().time()
    if dry_run:
        report.pending = [p.name for p in await partitions.sealed_partitions(conn, table, cutoff_us)]
        return report
    pa = require_pyarrow()
    async with partitions.maintenance_lock(conn, table):
        work: list[_Partition] = []
        for name in await partitions.detached_tables(conn, table, marker=MARKER):
            lo, hi = await _bounds_of_detached(conn, table, name, interval_s)
            work.append(_Partition(table, name, lo, hi, attached=False))
        for p in await partitions.sealed_partitions(conn, table, cutoff_us):
            assert p.lower_us is not None and p.upper_us is not None
            work.append(_Partition(table, p.name, p.lower_us, p.upper_us, attached=True))
        present = {w.name for w in work} | {p.name for p in await partitions.list_partitions(conn, table)}
        oids = {r[0]: r[1] for r in await conn.fetch(
            "SELECT n, to_regclass(quote_ident(n))::oid FROM unnest($1::text[]) AS n", sorted(present))}
        # Manifests of partitions already dropped but not yet marked so (a crash between DROP and the rewrite),
        # also where a late row has made a new table under the name since: the manifest names the archived
        # table's oid, and its files must not be written again from the new one (they would hold only its rows).
        # A damaged manifest (its partition unknown) is left as it is, and so is every partition of its day: a
        # new generation's files could replace the files it lists.
        damaged: dict[Path, str] = {}
        for m in read_manifests(root, table, damaged=damaged):
            if m.state not in ("written", "restoring"):
                continue
            replaced = m.state == "written" and m.relid is not None and oids.get(m.partition) not in (None, m.relid)
            if m.partition not in present or replaced:
                await _mark_dropped(root, m)
                report.finished.append(m.partition)
        left: list[str] = []
        blocking: dict[Path, str] = {}
        for w in work:
            day_damaged: dict[Path, str] = {}
            w.manifests = [m for m in read_manifests(root, table, w.lower_us, w.upper_us, damaged=day_damaged)
                           if m.partition == w.name]
            if day_damaged:
                left.append(w.name)
                blocking.update(day_damaged)
                continue
            finished = await _archive_one(conn, pa, spec, root, settings, w, interval_s, report)
            (report.finished if finished else report.archived).append(w.name)
        for path, reason in damaged.items():
            if path not in blocking:  # (those are the error below)
                logger.warning("%s", _damaged_manifest(path, reason))
        if left:
            # The rest of the table is archived; these wait, in PostgreSQL, until the manifest is repaired or moved.
            path, reason = next(iter(blocking.items()))
            more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
            raise DatabaseError(f"{', '.join(left)} not archived, left in PostgreSQL: the archive manifest "
                                f"{_manifest_where(path)} of its day is damaged ({reason}){more}; check the archive "
                                f"with `hftdb archive verify --table {table} --date {path.parent.name[5:]}`")
    report.seconds = asyncio.get_running_loop().time() - started
    return report


async def _bounds_of_detached(conn: asyncpg.Connection, table: str, name: str, interval_s: int) -> tuple[int, int]:
    # A detached table has no bound any more: its name carries its start, and the interval its width (a
    # partition detached by an hftdb with another interval is still found by its manifest's bounds first).
    rows = await conn.fetchrow(
        f"SELECT (extract(epoch FROM min(recv_ts)) * 1000000)::int8 FROM {_quote(name)}")
    day = name.rsplit("_p", 1)[1]
    at = datetime.strptime(day, "%Y%m%d_%H%M" if "_" in day else "%Y%m%d").replace(tzinfo=timezone.utc)
    lo = int(at.timestamp()) * 1_000_000
    if rows[0] is not None and rows[0] < lo:
        raise DatabaseError(f"detached table {name} holds rows before its name's start")
    return lo, lo + interval_s * 1_000_000


def _quote(name: str) -> str:
    if not all(ch.isalnum() or ch == "_" for ch in name):
        raise ValueError(f"refusing to put {name!r} into SQL as an identifier")
    return f'"{name}"'


async def _archive_one(conn: asyncpg.Connection, pa: Any, spec: _Spec, root: Path, settings: ArchiveSettings,
                       w: _Partition, interval_s: int, report: ArchiveReport) -> bool:
    """Archive one partition (or finish an interrupted run on it); True when it was a leftover."""
    source = _quote(w.name)
    done = [m for m in w.manifests if m.state == "dropped"]
    open_ = [m for m in w.manifests if m.state in ("written", "restoring")]
    leftover = bool(open_) or not w.attached
    manifest: Manifest | None = open_[-1] if open_ else None
    if manifest is not None:
        count, total = await _server_checksum(conn, spec, source, manifest.decimal_scale)
        if (count, str(total)) != (manifest.rows, manifest.checksum):
            manifest = None  # rows arrived after it was written: write this generation again
    wrote = manifest is None
    if manifest is None:
        generation = open_[-1].generation if open_ else max((m.generation + 1 for m in done), default=0)
        manifest = await _write_generation(conn, pa, spec, root, settings, w, interval_s, generation)
    if w.attached:
        await partitions.detach_partition(conn, spec.table, w.name, marker=MARKER)
        _step("detached")
        # hftdb's time-series tables are append-only (rows are never updated or deleted, only whole partitions
        # dropped), so the only change since the verified snapshot can be rows added: the count shows it, at a
        # fifteenth of the checksum's cost.
        if await conn.fetchval(f"SELECT count(*) FROM {source}") != manifest.rows:
            # Late rows committed between the snapshot and the detach: the detached table no longer changes,
            # so this second write is final.
            logger.warning("%s changed while it was archived; writing it again from the detached table", w.name)
            manifest = await _write_generation(conn, pa, spec, root, settings, w, interval_s, manifest.generation)
            wrote = True
    if wrote:
        # What the archive now holds of it: a rewrite replaced the first write's files.
        report.rows += manifest.rows
        report.bytes += sum(f.bytes for f in manifest.files)
    if not await partitions.drop_detached(conn, spec.table, w.name, marker=MARKER):
        raise DatabaseError(f"{w.name} was not dropped: it is attached again or lost its marker; inspect it")
    _step("dropped")
    await _mark_dropped(root, manifest)
    logger.info("archived %s: %d rows in %d file(s)", w.name, manifest.rows, len(manifest.files))
    return leftover


async def _server_checksum(conn: asyncpg.Connection, spec: _Spec, source: str, scale: int) -> tuple[int, int]:
    count, total = await conn.fetchrow(_checksum_sql(spec, source, scale))
    return count, int(total) % _M64


async def _write_generation(conn: asyncpg.Connection, pa: Any, spec: _Spec, root: Path, settings: ArchiveSettings,
                            w: _Partition, interval_s: int, generation: int) -> Manifest:
    """Write, verify and publish one generation of ``w``'s files, streaming the partition in pieces: the server's
    per-symbol checksums and the rows sorted by symbol and time come from one snapshot; each exchange's file is
    written row group by row group and read back in batches; memory holds a piece or two, whatever the size."""
    symbols, exchanges = await _names(conn)
    source = _quote(w.name)
    day_dir = _date_dir(root, spec.table, w.lower_us)
    stem = _part_stem(w.lower_us, interval_s * 1_000_000, generation)
    piece_rows = _piece_rows(settings)
    gen: _Generation | None = None
    pieces: _Pieces | None = None
    try:
        snapshot = conn.transaction(isolation="repeatable_read", readonly=True)
        terminated = False
        await snapshot.start()
        try:
            scale = 0
            relid = await conn.fetchval("SELECT $1::regclass::oid", source)
            if spec.table == "balances":
                scale = await conn.fetchval(
                    f"SELECT coalesce(max(greatest(scale(free), scale(locked))), 0) FROM {source}")
            groups = await _server_groups(conn, spec, source, scale)
            # A seq scan and a sort, never the sealed partition's btree: in its order every row is a random
            # heap read (2.7x slower on 2M cached rows, far worse on a day that does not fit in memory).
            await conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
            gen = _Generation(spec, settings, day_dir, stem, groups, scale, symbols, exchanges)
            pieces = _Pieces(gen.add)
            try:
                streamed = await _stream(conn, spec, source, piece_rows, pieces)
            except asyncpg.PostgresError:
                raise  # the server's error: the connection is in step with it
            except (Exception, asyncio.CancelledError):
                # Interrupted in the stream's sink (cancelled, or a piece's error raised there) after asyncpg had
                # read the COPY's last message, asyncpg waits for an answer to its cancel request that never
                # comes: command_timeout (60 s in the pool), forever on a connection without one (the CLI's;
                # asyncpg 0.32). The connection is closed instead: the session's snapshot and maintenance lock go
                # with it, and the pool opens a new one.
                terminated = True
                conn.terminate()
                raise
            await pieces.drain()
        except (Exception, asyncio.CancelledError):
            if not terminated:
                await snapshot.rollback()
            raise
        await snapshot.commit()
        count = sum(g[0] for g in groups.values())
        total = sum(g[1] for g in groups.values()) % _M64
        if streamed != count:
            raise DatabaseError(f"{w.name}: {streamed} rows streamed from a snapshot whose count is {count}")
        _step("fetched")
        await pieces.run(gen.finish)
        _step("written")
        entries = []
        for f in gen.files.values():
            entries.append(await pieces.run(f.verify, scale, piece_rows))
        _step("verified")
    except (Exception, asyncio.CancelledError):
        try:
            if pieces is not None:
                await pieces.stop()  # the worker must be idle before its files are closed under it
        finally:
            if gen is not None:
                gen.discard()
        raise
    finally:
        if pieces is not None:
            pieces.close()
    # Renames and the manifest: a thread's work, taken to its end through a cancellation (see _to_the_end).
    return await _to_the_end(asyncio.to_thread(_publish, spec, w, generation, day_dir, gen, entries, count, total,
                                               scale, relid))


def _publish(spec: _Spec, w: _Partition, generation: int, day_dir: Path, gen: _Generation,
             entries: list[FileEntry], count: int, total: int, scale: int, relid: int) -> Manifest:
    path = day_dir / _manifest_name(w.name, generation)
    # A first write's files have no manifest until the one below is written: should that fail (a disk full), they
    # are removed again, so that no file is in place without its manifest. A rewrite's (late rows) replace files
    # its manifest already lists, and are kept: the rerun sees the manifest differ and writes them again.
    first = not path.exists()
    renamed: list[Path] = []
    try:
        for f in gen.files.values():
            os.replace(f.tmp, f.final)
            renamed.append(f.final)
            fsync_dir(f.final.parent)
        if gen.files:
            fsync_dir(day_dir)
        _step("renamed")
        return _write_manifest(spec, w, generation, day_dir, entries, count, total, scale, relid)
    except BaseException:
        if first:
            for final in renamed:
                with contextlib.suppress(OSError):
                    final.unlink(missing_ok=True)
                    fsync_dir(final.parent)
        gen.discard()  # the files not renamed yet
        raise


def _write_manifest(spec: _Spec, w: _Partition, generation: int, day_dir: Path, entries: list[FileEntry],
                    count: int, total: int, scale: int, relid: int) -> Manifest:
    mins = [e.min_recv_us for e in entries if e.min_recv_us is not None]
    maxs = [e.max_recv_us for e in entries if e.max_recv_us is not None]
    manifest = Manifest(
        hftdb_version=_version(), table=spec.table, partition=w.name, generation=generation,
        date=_date(w.lower_us), lower_us=w.lower_us, upper_us=w.upper_us, rows=count, checksum=str(total),
        min_recv_us=min(mins, default=None), max_recv_us=max(maxs, default=None), decimal_scale=scale,
        files=entries, state="written", written_at=datetime.now(timezone.utc).isoformat(), relid=relid,
    )
    day_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(day_dir / _manifest_name(w.name, generation), msgspec.json.encode(manifest))
    _step("manifest")
    return manifest


async def _mark_dropped(root: Path, manifest: Manifest) -> None:
    manifest.state = "dropped"
    path = _date_dir(root, manifest.table, manifest.lower_us) / _manifest_name(manifest.partition,
                                                                               manifest.generation)
    await _to_the_end(asyncio.to_thread(_write_atomic, path, msgspec.json.encode(manifest)))


def summary(root: str | os.PathLike[str], *, hot: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What the archive holds, per table, from its manifests (no Parquet file is opened, pyarrow not needed):
    days, partitions, files, rows, bytes and bytes per row; with ``hot`` (``table_stats()["tables"]``), also the
    hot tier's bytes per row (indexes included) and how many times smaller the archive is. Only the days that
    changed since the last call (of any process) are read: see :class:`ArchiveSummary`."""
    return ArchiveSummary(root).read(hot=hot)


class _DayTotals(msgspec.Struct, array_like=True, frozen=True):
    mtime_ns: int  # the day directory's mtime when read; -1: read too soon after a change to be trusted later
    partitions: int
    files: int
    rows: int
    bytes: int
    damaged: int = 0  # manifests that could not be read (left out of the figures above)


class _SummaryFile(msgspec.Struct):
    format: int = 1
    days: dict[str, _DayTotals] = {}


#: A directory changed this recently may change again within one tick of a coarse file-system clock and keep its
#: mtime: what is read from it then is used once, never kept.
_RACY_NS: Final = 2_000_000_000
_SUMMARY_FILE: Final = "_summary.json"


class ArchiveSummary:
    """The archive's summary (see :func:`summary`), kept between calls. Every manifest is written, rewritten and
    removed by a rename in its day's directory, which changes that directory's mtime: a day's totals are read
    again only when its mtime changed. Kept in memory (the daemon's ``/metrics`` and ``/stats``) and in
    ``<root>/<table>/_summary.json`` (``hftdb stats``, a new process each time; written best effort: a read-only
    archive is summarised from its manifests). One ``stat`` per day directory per call."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._days: dict[str, dict[str, _DayTotals]] = {}
        self._lock = threading.Lock()
        #: Day directories whose manifests were read, over this object's life (what the cache saves).
        self.days_read = 0
        # The damaged manifests already logged, so that each is logged once, not at every scrape.
        self._warned: set[Path] = set()

    def read(self, *, hot: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The summary now (blocking file-system calls: run it in a thread from async code)."""
        out: dict[str, Any] = {"root": str(self.root), "tables": {}}
        with self._lock:
            for table in SPECS:
                every = self._table(table)
                days = {name[5:]: d for name, d in every.items() if d.partitions}
                rows = sum(d.rows for d in days.values())
                size = sum(d.bytes for d in days.values())
                t: dict[str, Any] = {
                    "days": len(days), "partitions": sum(d.partitions for d in days.values()),
                    "files": sum(d.files for d in days.values()), "rows": rows, "bytes": size,
                    "bytes_per_row": size / rows if rows else None,
                    "first_day": min(days, default=None), "last_day": max(days, default=None),
                    # Not in the figures above: `hftdb archive verify` names them.
                    "damaged_manifests": sum(d.damaged for d in every.values()),
                }
                h = (hot or {}).get(table)
                if h and h.get("estimated_rows"):
                    t["hot_bytes_per_row"] = h["bytes"] / h["estimated_rows"]
                    if t["bytes_per_row"]:
                        t["times_smaller"] = t["hot_bytes_per_row"] / t["bytes_per_row"]
                out["tables"][table] = t
        return out

    def _table(self, table: str) -> dict[str, _DayTotals]:
        base = self.root / table
        try:
            names = sorted(n for n in os.listdir(base) if n.startswith("date="))
        except (FileNotFoundError, NotADirectoryError):
            self._days.pop(table, None)
            return {}
        known = self._days.get(table)
        if known is None:
            known = self._load(base)
        fresh: dict[str, _DayTotals] = {}
        for name in names:
            day = base / name
            try:
                mtime = os.stat(day).st_mtime_ns
            except FileNotFoundError:
                continue
            old = known.get(name)
            if old is not None and old.mtime_ns == mtime:
                fresh[name] = old
                continue
            read_at = time.time_ns()
            damaged: dict[Path, str] = {}
            found = _day_manifests(day, damaged)
            self.days_read += 1
            self._warn(day, damaged)
            fresh[name] = _DayTotals(mtime if read_at - mtime > _RACY_NS else -1, len(found),
                                     sum(len(m.files) for m in found), sum(m.rows for m in found),
                                     sum(f.bytes for m in found for f in m.files), len(damaged))
        self._days[table] = fresh
        if fresh != known:
            self._save(base, fresh)
        return fresh

    def _warn(self, day: Path, damaged: dict[Path, str]) -> None:
        # Once per damaged manifest (again if it is repaired, then damaged again), however often the day is read.
        self._warned -= {p for p in self._warned if p.parent == day and p not in damaged}
        for path, reason in damaged.items():
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("left out of the archive's figures: %s", _damaged_manifest(path, reason))

    @staticmethod
    def _load(base: Path) -> dict[str, _DayTotals]:
        try:
            return msgspec.json.decode((base / _SUMMARY_FILE).read_bytes(), type=_SummaryFile).days
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return {}

    @staticmethod
    def _save(base: Path, days: dict[str, _DayTotals]) -> None:
        keep = {k: v for k, v in days.items() if v.mtime_ns != -1}
        try:
            _write_atomic(base / _SUMMARY_FILE, msgspec.json.encode(_SummaryFile(days=keep)))
        except OSError as exc:  # a read-only archive: summarised from its manifests each time
            logger.debug("archive summary not saved under %s: %s", base, exc)


# -- verification ------------------------------------------------------------------------------------------


class VerifyReport(msgspec.Struct, kw_only=True):
    """What :func:`verify` read and what did not match."""

    manifests: int = 0
    files: int = 0
    rows: int = 0
    bytes: int = 0
    problems: list[str] = []


def verify(root: str | os.PathLike[str], *, table: str | None = None, date: str | None = None,
           batch_rows: int = 262_144) -> VerifyReport:
    """Read every archived file (of ``table``, of day ``date``) back in batches and check it against its
    manifest: present, of its size, with its rows and checksum; and each manifest's totals against its files. A
    manifest that cannot be read (cut short, not JSON, another shape) is a problem naming it. Only reads; for an
    archive copied elsewhere, or after a disk scare. Needs pyarrow; blocking (run it in a thread from async code).
    A ``root`` that does not exist or is not a directory is a ValidationError."""
    if table is not None and table not in SPECS:
        raise ValidationError(f"table must be one of {', '.join(SPECS)}; got {table!r}")
    if date is not None:
        try:
            datetime.strptime(date, "%Y-%m-%d")
        except (TypeError, ValueError):
            raise ValidationError(f"date must be YYYY-MM-DD, got {date!r}") from None
    root = Path(root)
    # A root that is not there would be read as an archive of nothing: "verified 0 file(s) ... every file matches".
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise ValidationError(f"[archive] root = {str(root)!r} {what}: there is no archive there to verify")
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    report = VerifyReport()
    for t in [table] if table else list(SPECS):
        spec = SPECS[t]
        damaged: dict[Path, str] = {}
        for m in read_manifests(root, t, damaged=damaged):
            if date is not None and m.date != date:
                continue
            report.manifests += 1
            rows, total = 0, 0
            for f in m.files:
                path = _date_dir(root, t, m.lower_us) / f.path
                where = f"{t}/date={m.date}/{f.path}"
                report.files += 1
                try:
                    size = path.stat().st_size
                    n, c = 0, 0
                    pf = pq.ParquetFile(path, pre_buffer=False)
                    for batch in pf.iter_batches(batch_size=batch_rows, columns=[col.name for col in spec.cols],
                                                 use_threads=False):
                        bt = pa.Table.from_batches([batch])
                        n += bt.num_rows
                        c = (c + _checksum_arrays(spec, _file_values(spec, bt, m.decimal_scale))) % _M64
                except FileNotFoundError:
                    report.problems.append(f"{where}: missing")
                    continue
                except (OSError, pa.ArrowException) as exc:
                    report.problems.append(f"{where}: unreadable ({exc})")
                    continue
                report.rows += n
                report.bytes += size
                rows += n
                total = (total + c) % _M64
                if size != f.bytes:
                    report.problems.append(f"{where}: {size} bytes, the manifest says {f.bytes}")
                if (n, str(c)) != (f.rows, f.checksum):
                    report.problems.append(f"{where}: {n} rows, checksum {c}; the manifest says {f.rows} rows, "
                                           f"checksum {f.checksum}")
            if (rows, str(total)) != (m.rows, m.checksum) and not any(p.startswith(f"{t}/date={m.date}/")
                                                                      for p in report.problems):
                report.problems.append(f"{t}/date={m.date}: its files hold {rows} rows, checksum {total}; "
                                       f"{_manifest_name(m.partition, m.generation)} says {m.rows}, {m.checksum}")
        for path, reason in damaged.items():
            if date is None or path.parent.name == f"date={date}":
                report.manifests += 1
                report.problems.append(f"{_manifest_where(path)}: damaged manifest ({reason})")
    return report


# -- expiry and restore ------------------------------------------------------------------------------------


async def expire(root: str | os.PathLike[str], table: str, cutoff_us: int, *, dry_run: bool = False) -> list[str]:
    """Delete the archived partitions of ``table`` whose upper bound is <= ``cutoff_us`` (``[archive]
    retention_days``); return their names. Only archives whose partition is gone from PostgreSQL (state
    ``dropped``) are deleted. The manifest goes first, so no reader ever sees a manifest without its files; an
    interrupted run's leftovers (files of a day with no manifest left) are removed on the next."""
    return await _to_the_end(asyncio.to_thread(_expire, Path(root), table, cutoff_us, dry_run))


def _expire(root: Path, table: str, cutoff_us: int, dry_run: bool) -> list[str]:
    gone = []
    damaged: dict[Path, str] = {}
    manifests = read_manifests(root, table, damaged=damaged)
    for path, reason in damaged.items():
        # Kept, with its day (which still holds a manifest): what it lists, and whether it may go, are unknown.
        with contextlib.suppress(ValueError):
            day = datetime.strptime(path.parent.name[5:], "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
            if int(day) * 1_000_000 + _US_PER_DAY <= cutoff_us:  # the day would have gone
                logger.warning("not expired: %s", _damaged_manifest(path, reason))
    for m in manifests:
        if m.state != "dropped" or m.upper_us > cutoff_us:
            continue
        gone.append(m.partition)
        if dry_run:
            continue
        day = _date_dir(root, table, m.lower_us)
        (day / _manifest_name(m.partition, m.generation)).unlink(missing_ok=True)
        fsync_dir(day)
        for f in m.files:
            (day / f.path).unlink(missing_ok=True)
        logger.info("expired archived %s (%d rows)", m.partition, m.rows)
    if not dry_run and (root / table).is_dir():
        for day in (root / table).iterdir():
            if not day.name.startswith("date="):
                continue
            try:
                end = int(datetime.strptime(day.name[5:], "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp())
            except ValueError:
                continue
            if end * 1_000_000 + _US_PER_DAY > cutoff_us or any(day.glob("_manifest.*.json")):
                continue
            for f in sorted(day.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                f.rmdir() if f.is_dir() else f.unlink()
            day.rmdir()
    return gone


async def restore_day(conn: asyncpg.Connection, table: str, date: str, *, settings: ArchiveSettings,
                      interval_s: int) -> tuple[list[str], int]:
    """Load ``table``'s archived day ``date`` (``YYYY-MM-DD``) back into PostgreSQL; return the partitions
    restored and their rows. Every file of the day is first read back and checked against its manifest
    (:func:`verify`): a missing or damaged one (or a damaged manifest) refuses the whole day, naming it, before
    anything is loaded. Then
    each partition's rows are inserted in one transaction (one per partition, not one for the day) and checked
    (count and checksum) against its manifest before its files are deleted; a crash leaves the manifest in state
    ``restoring``, which readers and a rerun resolve by whether the rows are in PostgreSQL. Refuses a day whose
    range holds rows in PostgreSQL already (late rows: archive them first)."""
    if table not in SPECS:
        raise ValidationError(f"table must be one of {', '.join(SPECS)}; got {table!r}")
    try:
        day_lo = int(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()) * 1_000_000
    except (TypeError, ValueError):
        raise ValidationError(f"date must be YYYY-MM-DD, got {date!r}") from None
    if not enabled(settings):
        raise ValidationError("the archive is off: [archive] root is empty")
    root = Path(settings.root)
    damaged: dict[Path, str] = {}
    found = [m for m in read_manifests(root, table, day_lo, day_lo + _US_PER_DAY, damaged=damaged) if m.date == date]
    if damaged:
        path, reason = next(iter(damaged.items()))
        raise DatabaseError(f"{table} of {date} not restored, nothing loaded: {_manifest_where(path)}: damaged "
                            f"manifest ({reason}); see `hftdb archive verify --table {table} --date {date}`")
    if not found:
        raise ValidationError(f"nothing of {table} is archived for {date} under {root}")
    require_pyarrow()
    spec = SPECS[table]
    restored, rows = [], 0
    async with partitions.maintenance_lock(conn, table):
        for m in found:
            if m.state == "written":
                raise ValidationError(f"{m.partition} is being archived (an interrupted run?): run `hftdb archive` "
                                      "first")
        # Each partition loads in its own transaction: a file found bad half way would leave the day half restored.
        # Every file of the day is read back and checked against its manifest first.
        checked = await _to_the_end(asyncio.to_thread(verify, root, table=table, date=date,
                                                      batch_rows=_piece_rows(settings)))
        if checked.problems:
            more = f" (and {len(checked.problems) - 1} more)" if len(checked.problems) > 1 else ""
            first = " ".join(checked.problems[0].split())
            raise DatabaseError(f"{table} of {date} not restored, nothing loaded: {first}{more}; see `hftdb archive "
                                f"verify --table {table} --date {date}`")
        for m in found:
            where = (f"recv_ts >= 'epoch'::timestamptz + {int(m.lower_us)} * interval '1 microsecond'"
                     f" AND recv_ts < 'epoch'::timestamptz + {int(m.upper_us)} * interval '1 microsecond'")
            source = f"(SELECT * FROM {_quote(table)} WHERE {where}) AS r"
            present = await conn.fetchval(f"SELECT count(*) FROM {source}")
            if m.state == "dropped" and present:
                raise ValidationError(f"{table} holds {present} rows in {m.partition}'s range already (late rows): "
                                      "archive them first (`hftdb archive`), then restore")
            if m.state == "dropped":
                m.state = "restoring"
                await _to_the_end(asyncio.to_thread(_write_atomic, _date_dir(root, table, m.lower_us) /
                                                    _manifest_name(m.partition, m.generation), msgspec.json.encode(m)))
                _step("restoring")
            if not present:  # one transaction: the rows are all in PostgreSQL or none are
                await _load_back(conn, spec, root, m, interval_s, _piece_rows(settings))
            count, total = await _server_checksum(conn, spec, source, m.decimal_scale)
            if (count, str(total)) != (m.rows, m.checksum):
                raise DatabaseError(f"restored rows of {m.partition} do not match its archive ({count} rows, "
                                    f"checksum {total}; the manifest says {m.rows}, {m.checksum}); files kept")
            _step("loaded")
            day = _date_dir(root, table, m.lower_us)
            (day / _manifest_name(m.partition, m.generation)).unlink()
            fsync_dir(day)
            for f in m.files:
                (day / f.path).unlink(missing_ok=True)
            restored.append(m.partition)
            rows += m.rows
            logger.info("restored %s: %d rows", m.partition, m.rows)
    return restored, rows


_SQL_TYPES: Final = {"i4": "int4", "i8": "int8", "ts": "int8", "f8": "float8", "dec": "numeric", "text": "text"}


async def _load_back(conn: asyncpg.Connection, spec: _Spec, root: Path, m: Manifest, interval_s: int,
                     piece_rows: int) -> None:
    """Insert the rows of ``m``'s files into PostgreSQL in one transaction, a batch of ``piece_rows`` at a
    time: memory holds one batch, whatever the size of the day."""
    import pyarrow.parquet as pq

    pa = require_pyarrow()
    day = _date_dir(root, spec.table, m.lower_us)
    names = [c.name for c in spec.cols]
    select = ", ".join(f"'epoch'::timestamptz + {c.name} * interval '1 microsecond'" if c.kind == "ts" else c.name
                       for c in spec.cols)

    def batches(path: Path) -> Any:
        return iter(pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=piece_rows, columns=names,
                                                                        use_threads=False))

    def records(it: Any) -> list[tuple[Any, ...]] | None:
        batch = next(it, None)
        if batch is None:
            return None
        cols = [batch.column(c.name).cast(pa.int64()) if c.kind == "ts" else batch.column(c.name)
                for c in spec.cols]
        return list(zip(*(c.to_pylist() for c in cols)))

    async with conn.transaction():
        await partitions.ensure_partitions(conn, spec.table, m.lower_us, m.upper_us - 1, interval_s=interval_s)
        await conn.execute(
            "CREATE TEMP TABLE hftdb_restore_in (" + ", ".join(f"{c.name} {_SQL_TYPES[c.kind]}" for c in spec.cols)
            + ") ON COMMIT DROP")
        for f in m.files:
            it = await asyncio.to_thread(batches, day / f.path)
            while (rows := await asyncio.to_thread(records, it)) is not None:
                await conn.copy_records_to_table("hftdb_restore_in", records=rows, columns=names)
                await conn.execute(f"INSERT INTO {_quote(spec.table)} ({', '.join(names)})"
                                   f" SELECT {select} FROM hftdb_restore_in")
                await conn.execute("TRUNCATE hftdb_restore_in")


# -- reading -----------------------------------------------------------------------------------------------


class ArchiveTier:
    """History reads from the Parquet tier (see the module docstring for which files count)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # Per table: (the table directory's mtime, when it was listed, the days it holds as Unix day numbers).
        self._days: dict[str, tuple[int, float, frozenset[int]]] = {}

    def covers(self, table: str, lo: int, hi: int) -> bool:
        """Whether any day of ``[lo, hi)`` has a directory under the root: the test every history read makes
        before any manifest is read. One ``stat`` while the table directory is unchanged (a new day changes its
        mtime; listed again at least every second all the same, and at every call for two seconds after a change,
        for file systems with coarse times)."""
        base = os.path.join(self.root, table)
        try:
            mtime = os.stat(base).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return False
        cached = self._days.get(table)
        now = time.monotonic()
        if cached is None or cached[0] != mtime or now - cached[1] > 1.0:
            days = set()
            for name in os.listdir(base):
                if name.startswith("date="):
                    with contextlib.suppress(ValueError):
                        days.add(datetime.strptime(name[5:], "%Y-%m-%d").toordinal() - _EPOCH_ORDINAL)
            # Listed within a tick of the directory's last change, the listing may miss a second change in the
            # same tick, which leaves the mtime as it was: it serves this call only.
            racy = time.time_ns() - mtime < _RACY_NS
            cached = (mtime, float("-inf") if racy else now, frozenset(days))
            self._days[table] = cached
        first, last = lo // _US_PER_DAY, (hi - 1) // _US_PER_DAY
        days = cached[2]
        if last - first < len(days):
            return any(d in days for d in range(first, last + 1))
        return any(first <= d <= last for d in days)

    def manifests(self, table: str, lo: int, hi: int) -> list[Manifest]:
        """The manifests of ``table`` overlapping ``[lo, hi)``."""
        return read_manifests(self.root, table, lo, hi)

    async def snapshot_read(self, conn: Any, table: str, lo: int, hi: int,
                            hot: Callable[[Any, str], Awaitable[T]]) -> tuple[list[Manifest], T, list[T]]:
        """Read PostgreSQL's rows of a history read of ``[lo, hi)`` with ``hot(conn, table)``, and return them with
        the manifests whose files hold the rest: both decided by one snapshot, so that each row is taken once
        whatever the archiver does meanwhile (``conn``: one connection of the node serving the read, outside a
        transaction). The third item holds the rows of archived partitions taken from their detached tables
        instead of their files (``hot(conn, name)`` on each): see below.

        In one REPEATABLE READ transaction: ``table`` is locked in ACCESS SHARE mode first (a DETACH ... CONCURRENTLY
        cannot then finish under the read, and the partitions the planner finds are those the snapshot sees), then
        one catalog query lists the partitions attached in the snapshot and the archived ones detached but not yet
        dropped (marked with :data:`MARKER`), then ``hot`` runs on the table and on each of those. A manifest's files
        count unless the snapshot has the very table it archived attached (see :func:`_in_files`), or still has it
        detached: that table holds every row the files hold, and the rows committed between the archive's snapshot
        and its detach, which the files lack until the archiver writes them again from it (or, if it was killed
        after the detach, until the next run). The manifests are read after the snapshot is taken: a partition
        detached in it had its files verified and its manifest written before the detach began. A detached table
        dropped between the snapshot and its read ends the transaction; the read is then made again."""
        for attempt in range(_DROPPED_UNDER_READ_TRIES):
            try:
                attached, detached, result = await _attached_then(conn, table, hot)
                break
            except asyncpg.UndefinedTableError:
                # The archiver dropped a detached table after the snapshot listed it: its files are complete now.
                if attempt == _DROPPED_UNDER_READ_TRIES - 1:
                    raise
        found = await asyncio.to_thread(self.manifests, table, lo, hi)
        kept: list[Manifest] = []
        extra: list[T] = []
        for m in found:
            rows = detached.pop(m.relid, None) if m.relid is not None else None
            if rows is not None:
                extra.append(rows)
            elif _in_files(m, attached):
                kept.append(m)
        return kept, result, extra

    def read(self, manifests: Sequence[Manifest], table: str, *, exchange: str, lo: int, hi: int,
             symbol_id: int | None = None, account: str | None = None, asset: str | None = None,
             keys: bool = False) -> dict[str, Any]:
        """The rows of one symbol (or one balance asset) in ``[lo, hi)`` from the files of ``manifests``, as
        ``{column: numpy array}`` plus ``{column + "__valid": bool array}`` for nullable ones, in file order.
        Without a symbol (or account and asset) it is every row of the exchange in range; ``keys`` adds the columns
        that tell the rows apart (``symbol_id``; a balance's ``account`` and ``asset``, as lists of str)."""
        import numpy as np
        pa = require_pyarrow()
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        spec = SPECS[table]
        pieces = []
        for m in manifests:
            for f in m.files:
                if f.exchange != exchange or f.rows == 0:
                    continue
                if f.min_recv_us is not None and (f.min_recv_us >= hi or f.max_recv_us < lo):  # type: ignore[operator]
                    continue
                path = _date_dir(self.root, table, m.lower_us) / f.path
                try:
                    pf = pq.ParquetFile(path)
                    groups = _row_groups(pf, lo, hi, symbol_id)
                    if not groups:
                        continue
                    t = pf.read_row_groups(groups, columns=[c.name for c in spec.cols if c.name != "exchange_id"])
                except (OSError, pa.ArrowException) as exc:
                    raise _unreadable(self.root, table, m, f.path, exc) from exc
                recv = t.column("recv_ts").cast(pa.int64())
                mask = pc.and_(pc.greater_equal(recv, lo), pc.less(recv, hi))
                if symbol_id is not None:
                    mask = pc.and_(mask, pc.equal(t.column("symbol_id"), symbol_id))
                if account is not None:
                    mask = pc.and_(mask, pc.equal(t.column("account"), account))
                if asset is not None:
                    mask = pc.and_(mask, pc.equal(t.column("asset"), asset))
                pieces.append(t.filter(mask))
        out: dict[str, Any] = {}
        left_out = ("exchange_id",) if keys else ("exchange_id", "symbol_id", "account", "asset")
        names = [c for c in spec.cols if c.name not in left_out]
        for c in names:
            chunks = [p.column(c.name).combine_chunks() for p in pieces]
            if c.kind in ("dec", "text"):
                out[c.name] = [v for ch in chunks for v in ch.to_pylist()]
                continue
            if c.kind == "ts":
                chunks = [ch.cast(pa.int64()) for ch in chunks]
            dtype = np.float64 if c.kind == "f8" else np.int64
            values = [ch.fill_null(0).to_numpy(zero_copy_only=False).astype(dtype, copy=False) for ch in chunks]
            out[c.name] = np.concatenate(values) if values else np.empty(0, dtype)
            if c.nullable:
                valid = [ch.is_valid().to_numpy(zero_copy_only=False) for ch in chunks]
                out[c.name + "__valid"] = np.concatenate(valid) if valid else np.empty(0, bool)
        return out


#: Per table: the read's transaction, and the table locked before its snapshot is taken (LOCK takes none).
_SNAPSHOT: Final = {t: f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; LOCK TABLE {t} IN ACCESS SHARE MODE"
                    for t in SPECS}
#: The partitions attached in the snapshot (third column false). One a DETACH ... CONCURRENTLY has begun on is not, if
#: the snapshot sees that begin: the planner then leaves it out too (PostgreSQL omits a detach-pending partition whose
#: mark is visible to the query's snapshot). And (third column true) the tables an archive detached (or began to)
#: and has not dropped: commented with :data:`MARKER` (hftdb.db.partitions.detach_partition), detach-pending or no
#: partition any more, named as the table's partitions (``$3 <= name < $4``, an index range scan of pg_class). A
#: table commented but still attached in the snapshot is attached. Measured on the embedded server: ~70 µs for the
#: attached ones alone, ~80-115 µs with the detached ones (~250 µs when they were found through pg_description).
_PARTITIONS: Final = (
    "SELECT c.relname, c.oid, i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = $1::regclass AND (NOT i.inhdetachpending OR obj_description(c.oid, 'pg_class') = $2)"
    " UNION ALL SELECT c.relname, c.oid, true FROM pg_class c"
    " WHERE c.relname >= $3 AND c.relname < $4 AND c.relkind = 'r' AND NOT c.relispartition"
    " AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $1::regclass)"
    " AND obj_description(c.oid, 'pg_class') = $2")
#: How many times a history read is made again when the archiver drops a detached table under it.
_DROPPED_UNDER_READ_TRIES: Final = 3


def _in_files(m: Manifest, attached: dict[str, int]) -> bool:
    """Whether a read whose snapshot has ``attached`` ({partition: oid}) takes ``m``'s rows from its files."""
    oid = attached.get(m.partition)
    if oid is None:
        return True  # not attached in the snapshot: the rows are in the files only
    if m.state == "restoring" or m.relid is None:
        # Being restored: a table attached under the name holds the rows loaded back. Without the archived
        # table's oid (an older manifest), a dropped one's table is taken to be another one (late rows).
        return m.state == "dropped"
    # The archived table itself, still attached in this snapshot (a replica not yet past the detach, or the
    # primary before it): PostgreSQL has its rows, in whatever state the manifest now is. Another table attached
    # under the name holds only rows that came later.
    return oid != m.relid


async def _attached_then(conn: Any, table: str, hot: Callable[[Any, str], Awaitable[T]]
                         ) -> tuple[dict[str, int], dict[int, T], T]:
    # The lock comes before the snapshot (the transaction's first query takes it). Held, it keeps the set of
    # partitions fixed until the end: DETACH ... CONCURRENTLY waits for the table's lockers before it removes a
    # partition, and on a standby the lock on each partition (LOCK recurses) holds back the replay of its
    # detach and drop, which take ACCESS EXCLUSIVE on it. An archived table detached and not yet dropped is locked
    # by its read (a drop then waits for the read), unless the drop came first: UndefinedTableError.
    try:
        await conn.execute(_SNAPSHOT[table])
        attached: dict[str, int] = {}
        marked: dict[int, str] = {}
        for name, oid, is_detached in await conn.fetch(_PARTITIONS, table, MARKER, f"{table}_p", f"{table}_q"):
            if not is_detached:
                attached[name] = oid
            elif partitions.is_hftdb_partition(table, name):
                marked[oid] = name
        result = await hot(conn, table)
        detached = {oid: await hot(conn, f'"{name}"') for oid, name in marked.items()}
        await conn.execute("COMMIT")
    except asyncpg.PostgresError:
        # The server ended the statement: the connection is in step, its transaction aborted.
        try:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
        except BaseException:
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            raise
        raise
    except BaseException:
        # Cancelled, timed out or cut off mid-statement: the connection may be half way through a COPY, and is
        # inside the transaction. Closed (unless ``hot`` closed it already: a pool's connection then refuses the
        # call); the pool opens a new one.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.terminate()
        raise
    return attached, detached, result


def _unreadable(root: Path, table: str, m: Manifest, path: str, exc: BaseException) -> DatabaseError:
    what = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({' '.join(str(exc).split())})"
    return DatabaseError(f"archived file {table}/date={m.date}/{path} under {root} is {what}; check the archive with "
                         f"`hftdb archive verify --table {table} --date {m.date}`")


def _row_groups(pf: Any, lo: int, hi: int, symbol_id: int | None) -> list[int]:
    # Min/max statistics of each row group: a row group is read only if its symbol and receipt-time ranges can
    # hold wanted rows. Rows are sorted by symbol then time, so one symbol's hour is a row group or two.
    meta = pf.metadata
    names = pf.schema_arrow.names
    i_ts = names.index("recv_ts")
    i_sym = names.index("symbol_id") if symbol_id is not None and "symbol_id" in names else None
    out = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        st = rg.column(i_ts).statistics
        if st is not None and st.has_min_max:
            lo_g, hi_g = _ts_us(st.min), _ts_us(st.max)
            if lo_g >= hi or hi_g < lo:
                continue
        if i_sym is not None:
            ss = rg.column(i_sym).statistics
            if ss is not None and ss.has_min_max and not ss.min <= symbol_id <= ss.max:
                continue
        out.append(g)
    return out


def _ts_us(value: Any) -> int:
    if isinstance(value, int):
        return value
    with contextlib.suppress(AttributeError):
        return value.value  # pandas-like
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

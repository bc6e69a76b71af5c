"""Replay recorded websocket frames through the adapters' own parse-and-write path (``hftdb ingest-file``).

A file holds one raw frame per line, exactly as it came off the websocket. Each frame goes through what a live
connection does with it: the venue's parser, the per-connection sequencing (duplicate and gap detection, the
drop of unsequenced quotes that a sequenced channel already gives) and the admission that drops rows already
seen (:class:`~hftdb.exchanges.intake.Intake`), and the sink calls that hand rows to the batch writers.

Frames are stamped with the time they are replayed, as a live connection stamps them on receipt.

**Replaying is idempotent.** Before each chunk is written, the rows the database already holds are looked up by
their identity, the key live admission uses: ``(symbol, update_id)`` on sequenced channels, ``(symbol,
exchange_ts)`` on the others (funding included), with the same values (an exchange time in ms can be shared by
two different messages). Rows found are dropped and counted as duplicates, so replaying a file twice, or a file
that overlaps what was stored live, writes each message once. A stored copy of a message was received (or
replayed) after the exchange sent it, so the lookup reads only partitions from the chunk's earliest exchange
time (less 1 s of clock skew) on; rows without an exchange time (Binance spot bookTicker) are looked up over
all partitions. The lookup costs one query per chunk, reading the rows of the chunk's symbols stored since
then: cheap for a recent capture, slower for an old one. Balances are identified by ``(account, asset,
exchange_ts)`` with their amounts, looked up the same way, and a replay also drops a balance it has already
written itself (a file that repeats a message); a balance without an exchange time has no identity and is
written as it comes.

>>> async with DatabaseManager() as db:
...     result = await ingest_file(db, "okx_tickers.jsonl", exchange="okx_spot", channels=["tickers"])
...     print(result.committed, result.rejects)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import msgspec

from .config import VENUE_CHANNELS
from .errors import ValidationError
from .errors import UnknownSymbolError
from .exchanges.intake import Intake
from .exchanges.registry import create_adapter
from .exchanges.runner import StreamRunner
from .manager import DatabaseManager
from .models import Balance, BookTicker, ExchangeName, FundingRate, now_us

__all__ = ["ReplayResult", "ingest_file", "replay_frames"]

_TABLES = ("book_tickers", "funding_rates", "balances")

#: ``progress(bytes_read, bytes_total)``, called after each chunk of frames
Progress = Callable[[int, int], None]


class ReplayResult(msgspec.Struct, kw_only=True):
    """What one replay did. ``committed`` counts rows committed per table; ``rejects`` counts by reason the
    frames the parser refused and the rows the writers refused; ``duplicates`` the rows dropped because the
    same update (id or exchange time) had already been stored."""

    frames: int
    committed: dict[str, int]
    rejects: dict[str, int]
    duplicates: int
    gaps: int
    dropped_rows: int


# A stored copy of a message was stamped on receipt or replay, after the exchange sent it, less clock skew.
_SKEW_US = 1_000_000

_STORED_BOOKS = """SELECT b.symbol_id, b.update_id, b.exchange_ts, b.bid_price, b.bid_qty, b.ask_price, b.ask_qty
    FROM book_tickers b
    JOIN unnest($1::int4[]) AS k(symbol_id) USING (symbol_id)
    WHERE ($2::timestamptz IS NULL OR b.recv_ts >= $2)
      AND (b.update_id = ANY($3::int8[]) OR b.exchange_ts = ANY($4::timestamptz[]))"""

_STORED_BALANCES = """SELECT b.account, b.asset, b.exchange_ts, b.free, b.locked FROM balances b
    WHERE b.exchange_id = $1 AND ($2::timestamptz IS NULL OR b.recv_ts >= $2) AND b.exchange_ts = ANY($3::timestamptz[])"""

_STORED_FUNDING = """SELECT f.symbol_id, f.exchange_ts, f.rate FROM funding_rates f
    JOIN unnest($1::int4[]) AS k(symbol_id) USING (symbol_id)
    WHERE ($2::timestamptz IS NULL OR f.recv_ts >= $2) AND f.exchange_ts = ANY($3::timestamptz[])"""


class _Stored:
    """Looks up which replayed rows the database already holds (see the module docstring)."""

    def __init__(self, db: DatabaseManager, exchange: str) -> None:
        self.db = db
        self.exchange = exchange
        self._ids: dict[str, int | None] = {}
        self._balances: set[tuple[object, ...]] = set()  # identities of the balances this replay wrote
        self.duplicates = 0

    async def _symbol_ids(self, rows: list[BookTicker] | list[FundingRate]) -> dict[str, int]:
        ids = self._ids
        for row in rows:
            symbol = row.symbol
            if symbol in ids:
                continue
            sid = self.db.resolve_symbol_id(self.exchange, symbol)
            if sid is None:
                try:
                    sid = (await self.db.get_symbol(self.exchange, symbol)).id
                except UnknownSymbolError:
                    sid = None  # never registered: nothing of it can be stored yet (asked again next chunk)
                    continue
            ids[symbol] = sid
        return {s: i for s, i in ids.items() if i is not None}

    async def books(self, rows: list[BookTicker]) -> list[BookTicker]:
        """``rows`` without the ones already stored."""
        ids = await self._symbol_ids(rows)
        wanted = [r for r in rows if r.symbol in ids and (r.update_id is not None or r.exchange_ts is not None)]
        if not wanted:
            return rows
        found = await self.db.pool.fetch(
            _STORED_BOOKS, sorted({ids[r.symbol] for r in wanted}), _since(wanted),
            [r.update_id for r in wanted if r.update_id is not None],
            [r.exchange_ts for r in wanted if r.update_id is None])
        if not found:
            return rows
        stored = {(sid, u if u is not None else t, bp, bq, ap, aq) for sid, u, t, bp, bq, ap, aq in found}
        out = []
        for r in rows:
            sid = ids.get(r.symbol)
            key = r.update_id if r.update_id is not None else r.exchange_ts
            if sid is not None and (sid, key, r.bid_price, r.bid_qty, r.ask_price, r.ask_qty) in stored:
                self.duplicates += 1
                continue
            out.append(r)
        return out

    async def funding(self, rows: list[FundingRate]) -> list[FundingRate]:
        """``rows`` without the ones already stored."""
        ids = await self._symbol_ids(rows)
        wanted = [r for r in rows if r.symbol in ids and r.exchange_ts is not None]
        if not wanted:
            return rows
        found = await self.db.pool.fetch(_STORED_FUNDING, sorted({ids[r.symbol] for r in wanted}), _since(wanted),
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
        wanted = [r for r in rows if r.exchange_ts is not None]
        if not wanted:
            return rows
        ex = await self.db.get_exchange_by_enum(self.exchange)
        found = await self.db.pool.fetch(_STORED_BALANCES, ex.id, _since(wanted), [r.exchange_ts for r in wanted])
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


def _since(rows: list[BookTicker] | list[FundingRate] | list[Balance]) -> int | None:
    times = [r.exchange_ts for r in rows]
    if None in times:
        return None  # a row without an exchange time: its copy may be anywhere
    return min(times) - _SKEW_US  # type: ignore[type-var]


def _check(exchange: ExchangeName | str, channels: Sequence[str]) -> tuple[ExchangeName, tuple[str, ...]]:
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
    return venue, tuple(channels)


async def replay_frames(
    db: DatabaseManager,
    frames: Iterable[bytes | str],
    *,
    exchange: ExchangeName | str,
    channels: Sequence[str],
    account: str = "default",
    chunk: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Parse ``frames`` as ``exchange`` would send them on ``channels`` and write the rows through ``db``;
    wait until they are committed and return the counts. ``progress(frames_done)`` is called per chunk."""
    venue, channels = _check(exchange, channels)
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, got {chunk!r}")
    adapter = create_adapter(venue, db, channels=list(channels), account=account)
    await db.insert_exchange(adapter.exchange_record())
    before = {t: db.writer(t).snapshot() for t in _TABLES}
    runner = StreamRunner(adapter)
    # The live session's own processing, fed from the file instead of a socket.
    intake = Intake(runner, adapter.new_parser())
    stored = _Stored(db, venue.value)
    count = 0
    batch: list[bytes] = []

    async def flush_batch() -> None:
        books, funding, balances = intake.process([(now_us(), batch)])
        if books:
            books = await stored.books(books)
        if funding:
            funding = await stored.funding(funding)
        if balances:
            balances = await stored.balances(balances)
        await runner.push(books, funding, balances)
        batch.clear()
        if progress is not None:
            progress(count)

    for frame in frames:
        data = frame.encode() if isinstance(frame, str) else frame
        data = data.strip()
        if not data:
            continue
        batch.append(data)
        count += 1
        if len(batch) >= chunk:
            await flush_batch()
    if batch:
        await flush_batch()
    await db.flush()
    after = {t: db.writer(t).snapshot() for t in _TABLES}
    stats = adapter.stats
    rejects: dict[str, int] = dict(adapter.rejects.counts)
    for t in _TABLES:
        for reason, n in after[t]["rejects"].items():
            delta = n - before[t]["rejects"].get(reason, 0)
            if delta:
                rejects[reason] = rejects.get(reason, 0) + delta
    adapter.rejects.flush()
    return ReplayResult(
        frames=count,
        committed={t: after[t]["rows_committed"] - before[t]["rows_committed"] for t in _TABLES},
        rejects=rejects,
        duplicates=stats.duplicates + stored.duplicates,
        gaps=stats.gaps,
        dropped_rows=stats.dropped_rows,
    )


async def ingest_file(
    db: DatabaseManager,
    path: str | os.PathLike[str],
    *,
    exchange: ExchangeName | str,
    channels: Sequence[str],
    account: str = "default",
    progress: Progress | None = None,
) -> ReplayResult:
    """Replay the file at ``path`` (one raw websocket frame per line) into ``db``; see :func:`replay_frames`.

    ``progress(bytes_read, bytes_total)`` is called after each chunk. A missing or unreadable file is a
    :class:`~hftdb.errors.ValidationError` naming it.
    """
    p = Path(path)
    _check(exchange, channels)
    try:
        total = p.stat().st_size
        handle = p.open("rb")
    except FileNotFoundError:
        raise ValidationError(f"no such file: {p}") from None
    except IsADirectoryError:
        raise ValidationError(f"{p} is a directory, not a file of frames") from None
    except OSError as exc:
        raise ValidationError(f"cannot read {p}: {exc.strerror}") from None
    with handle:
        def report(_: int) -> None:
            if progress is not None:
                progress(handle.tell(), total)

        return await replay_frames(db, handle, exchange=exchange, channels=channels, account=account,
                                   progress=report)


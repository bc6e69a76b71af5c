"""Replay recorded websocket frames through the adapters' own parse-and-write path (``hftdb ingest-file``).

A file holds one raw frame per line, exactly as it came off the websocket. Each frame goes through what a live
connection does with it: the venue's parser, the per-connection sequencing (duplicate and gap detection, the
drop of unsequenced quotes that a sequenced channel already gives), the admission that drops rows already stored,
and the sink calls that hand rows to the batch writers. Frames are stamped with the time they are replayed, as a
live connection stamps them on receipt.

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
from .exchanges.registry import create_adapter
from .exchanges.ws import StreamRunner, _Session
from .manager import DatabaseManager
from .models import ExchangeName, now_us

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


class _Recording:
    """Stands in for the websocket connection of a live session: only its name is used, in log lines."""

    def __init__(self, name: str) -> None:
        self.name = name


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
    session = _Session(runner, _Recording(f"{venue.value}#replay"), (), hold=False)
    count = 0
    batch: list[tuple[bytes, int]] = []

    async def flush_batch() -> None:
        books, funding, balances = session._process(batch)
        books, funding = runner.admit(books, funding)
        await runner.push(books, funding, balances)
        batch.clear()
        if progress is not None:
            progress(count)

    for frame in frames:
        data = frame.encode() if isinstance(frame, str) else frame
        data = data.strip()
        if not data:
            continue
        batch.append((data, now_us()))
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
        duplicates=stats.duplicates,
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


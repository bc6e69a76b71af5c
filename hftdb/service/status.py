"""The daemon's status lines (one per feed, one for the writers, with rates since the previous report) and the
:class:`Summary` it prints at exit.

::

    okx_swap: 48.6 msg/s, rows book_tickers=2,911 funding_rates=61, reconnects=0 gaps=0 rejects=0 dups=3, conns=1, last 0.0s ago; writers: queue=12 flush p99=3.1ms
    writers: book_tickers 14,520 committed (+243/s, queue 12, p99 3.1ms), funding_rates 305 (+5/s, queue 0, p99 2.2ms), balances 36 (+0/s, queue 0, p99 1.9ms), rejects 0, spooled 0

Each line is logged with its numbers as ``extra`` fields too, so the JSON log format carries them as data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ..tablespec import TABLES

__all__ = ["StatusReporter", "Summary"]

_FEED_TABLES = tuple((t.feed_rows, t.name) for t in TABLES)


class StatusReporter:
    """Turns successive snapshots of feed and writer counters into status lines with per-second rates.

    ``clock`` (monotonic seconds) is injectable so tests can control the rates.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_at: float | None = None
        self._last_feeds: dict[str, int] = {}
        self._last_writers: dict[str, int] = {}

    def report(
        self, feeds: Mapping[str, Mapping[str, Any]], writers: Mapping[str, Mapping[str, Any]]
    ) -> list[tuple[str, dict[str, Any]]]:
        """The status lines for this moment, each with its fields for structured logs."""
        now = self._clock()
        elapsed = None if self._last_at is None else max(now - self._last_at, 1e-9)
        self._last_at = now
        queue = sum(w.get("rows_pending") or 0 for w in writers.values())
        p99s = [w["commit_p99_ms"] for w in writers.values() if w.get("commit_p99_ms") is not None]
        worst_p99 = max(p99s) if p99s else None
        shared = f"writers: queue={queue:,} flush p99={_ms(worst_p99)}"
        out = []
        for venue, f in feeds.items():
            rate = _rate(f.get("messages", 0), self._last_feeds.get(venue), elapsed)
            self._last_feeds[venue] = f.get("messages", 0)
            rows = {table: f.get(key, 0) for key, table in _FEED_TABLES}
            rows_text = " ".join(f"{t}={n:,}" for t, n in rows.items() if n or t == "book_tickers")
            age = f.get("last_message_age_s")
            state = f.get("state", "")
            line = (
                f"{venue}: {_per_s(rate)} msg/s, rows {rows_text}, reconnects={f.get('reconnects', 0)} "
                + (f"restarts={f['restarts']} " if f.get("restarts") else "")
                + f"gaps={f.get('gaps', 0)} rejects={f.get('rejected', 0)} dups={f.get('duplicates', 0)}, "
                f"conns={f.get('connections', 0)}, "
                + ("no message yet" if age is None else f"last {age:.1f}s ago")
                + (f" ({state})" if state and state != "streaming" else "")
                + f"; {shared}"
            )
            fields = {
                "feed": venue, "msgs_per_s": rate, "rows": rows, "reconnects": f.get("reconnects", 0),
                "restarts": f.get("restarts", 0), "gaps": f.get("gaps", 0), "rejects": f.get("rejected", 0),
                "duplicates": f.get("duplicates", 0),
                "connections": f.get("connections", 0), "last_message_age_s": age, "state": state,
                "queue_rows": queue, "flush_p99_ms": worst_p99,
            }
            out.append((line, fields))
        parts = []
        committed: dict[str, int] = {}
        for table, w in writers.items():
            n = w.get("rows_committed", 0)
            committed[table] = n
            rate = _rate(n, self._last_writers.get(table), elapsed)
            self._last_writers[table] = n
            parts.append(f"{table} {n:,} committed (+{_per_s(rate)}/s, queue {w.get('rows_pending', 0):,}, "
                         f"p99 {_ms(w.get('commit_p99_ms'))})")
        rejects = sum(sum((w.get("rejects") or {}).values()) for w in writers.values())
        spooled = sum(w.get("batches_spooled", 0) for w in writers.values())
        if writers:
            line = f"writers: {', '.join(parts)}, rejects {rejects:,}, spooled {spooled:,}"
            out.append((line, {"writers": committed, "queue_rows": queue, "flush_p99_ms": worst_p99,
                               "writer_rejects": rejects, "batches_spooled": spooled}))
        return out


def _rate(now: int, before: int | None, elapsed: float | None) -> float | None:
    if before is None or elapsed is None:
        return None
    return (now - before) / elapsed


def _per_s(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


class Summary(msgspec.Struct, kw_only=True):
    """What one run of the daemon did, for the line printed at exit."""

    seconds: float
    feeds: int
    messages: int
    committed: dict[str, int]
    writer_rejects: int
    frame_rejects: int
    reconnects: int
    gaps: int
    dropped_rows: int
    batches_spooled: int
    pending_rows: int
    demo_sent: int | None = None
    #: the demo's ledger, once written
    ledger_file: str | None = None
    #: why the demo's ledger asked for was not written
    ledger_error: str | None = None

    def line(self) -> str:
        """The one-line summary."""
        committed = " ".join(f"{t}={n:,}" for t, n in self.committed.items())
        text = (
            f"hftdb stopped after {_duration(self.seconds)}: {self.feeds} feeds, {self.messages:,} messages; "
            f"committed {committed or 'nothing'}; rejected {self.writer_rejects:,} rows and {self.frame_rejects:,} "
            f"frames; {self.reconnects} reconnects, {self.gaps} gaps; {self.dropped_rows:,} rows dropped; "
            f"{self.batches_spooled} batches spooled"
        )
        if self.pending_rows:
            text += f", {self.pending_rows:,} rows left uncommitted (spooled for the next start)"
        if self.demo_sent is not None:
            text += f"; the simulator sent {self.demo_sent:,} messages"
            if self.ledger_file:
                text += f" (ledger: {self.ledger_file})"
            elif self.ledger_error:
                text += f" (NO ledger: {self.ledger_error})"
        return text


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"

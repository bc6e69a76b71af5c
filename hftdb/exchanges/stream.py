"""What the stream machinery reads from the objects above it, declared: the adapter a
:class:`~hftdb.exchanges.runner.StreamRunner` runs for (:class:`StreamAdapter`), and the runner a
:class:`~hftdb.exchanges.session.Session` and an :class:`~hftdb.exchanges.intake.Intake` serve
(:class:`StreamOwner`); and the two things they share with the adapter, its counters (:class:`FeedStats`) and its
reconnect policy (:class:`Backoff`).

The machinery (``runner`` -> ``session`` -> ``intake``) imports this module and never the adapter's
(:mod:`hftdb.exchanges.base`), which imports the runner to start it: imports go one way, and
:class:`~hftdb.exchanges.base.ExchangeAdapter` satisfies :class:`StreamAdapter` by its public members.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from ..models import BookTicker, ExchangeName, FeedRows, FundingRate, now_us
from ..rejects import Rejects
from .sink import Sink

__all__ = ["Backoff", "FeedStats", "StreamAdapter", "StreamOwner"]
class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential back-off with jitter: attempt ``n`` waits ``min(maximum, initial * factor**n)``, less up to
    ``jitter`` of it at random, so that many clients dropped together do not come back together."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"need 0 < initial <= maximum, got initial={self.initial!r}, maximum={self.maximum!r}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())


class FeedStats:
    """Counters of one adapter's feed, for a status line and metrics. Plain ints: the hot path increments them.

    ``messages``: frames received; ``book_rows``/``funding_rows``/``balance_rows``: rows handed to the sink;
    ``duplicates``: rows dropped because their update id (or exchange time) was already stored; ``gaps``: jumps
    in update ids within one connection (``missed_ids`` the ids skipped); ``reconnects``: connections lost and
    replaced (a restart of the whole feed replaces its connections, so it counts here too); ``restarts``: restarts
    of the whole feed after a failure (counted by the daemon's supervisor); ``rollovers``: connections replaced
    on purpose (age limit, announced shutdown, resync); ``resyncs``: of those, the ones to recover a book the
    parser lost to a corrupt frame; ``stale``: connections given up for silence; ``errors``: error answers from
    the exchange; ``sink_errors``: failed sink calls (``dropped_rows`` the rows they lost); ``rest_errors``: failed
    REST polls and symbol syncs; ``retry_after_waits``: refused websocket upgrades whose ``Retry-After`` set the
    wait before the next attempt; ``rest_funding_rows``: funding rows taken from REST polls; ``rejects`` by reason
    are in the adapter's :class:`~hftdb.rejects.Rejects`.
    """

    __slots__ = (
        "venue", "messages", "book_rows", "funding_rows", "balance_rows", "duplicates", "gaps", "missed_ids",
        "reconnects", "restarts", "rollovers", "resyncs", "stale", "connections", "errors", "sink_errors",
        "dropped_rows", "rest_errors",
        "retry_after_waits", "rest_funding_rows", "last_message_us", "rejects",
    )

    def __init__(self, venue: str, rejects: Rejects) -> None:
        self.venue = venue
        self.rejects = rejects
        self.messages = self.book_rows = self.funding_rows = self.balance_rows = 0
        self.duplicates = self.gaps = self.missed_ids = 0
        self.reconnects = self.restarts = self.rollovers = self.resyncs = self.stale = self.connections = 0
        self.errors = self.sink_errors = self.dropped_rows = self.rest_errors = 0
        self.retry_after_waits = self.rest_funding_rows = 0
        self.last_message_us: int | None = None

    @property
    def rejected(self) -> int:
        """Frames rejected by the parser, all reasons together."""
        return self.rejects.total

    def as_dict(self) -> dict[str, Any]:
        """Every counter by name, plus ``rejected`` and ``rejects_by_reason``."""
        out = {name: getattr(self, name) for name in self.__slots__ if name != "rejects"}
        out["rejected"] = self.rejected
        out["rejects_by_reason"] = self.rejects.counts
        return out

    def status_line(self, now: int | None = None) -> str:
        """One line for a periodic status log."""
        now = now_us() if now is None else now
        age = "never" if self.last_message_us is None else f"{(now - self.last_message_us) / 1e6:.1f}s ago"
        return (
            f"{self.venue}: conns={self.connections} msgs={self.messages} books={self.book_rows} "
            f"funding={self.funding_rows} balances={self.balance_rows} dups={self.duplicates} gaps={self.gaps} "
            f"rejected={self.rejected} reconnects={self.reconnects} restarts={self.restarts} "
            f"rollovers={self.rollovers} stale={self.stale} "
            f"errors={self.errors} last={age}"
        )

    def __repr__(self) -> str:
        return f"<FeedStats {self.status_line()}>"



class StreamAdapter(Protocol):
    """What a :class:`~hftdb.exchanges.runner.StreamRunner`, its sessions and its intakes read from the adapter
    they stream for: its settings, its venue's protocol (endpoint, topics, subscribe and ping messages, limits),
    its sink and its counters. :class:`~hftdb.exchanges.base.ExchangeAdapter` is one."""

    venue: ExchangeName
    sink: Sink
    stats: FeedStats
    rejects: Rejects
    clock: Callable[[], float]
    timeout: float
    subscribe_timeout: float
    stale_after: float
    ping_interval: float
    max_connection_age: float | None
    reconnect: Backoff
    max_reconnect_attempts: int | None
    topics_per_connection: int
    count_gaps: bool
    connect_interval: float
    control_interval: float
    ping_mode: str
    max_topic_chars_per_connection: int | None

    @property
    def drops_unsequenced_books(self) -> bool: ...

    def ws_endpoint(self) -> str: ...

    def topics(self, symbols: Sequence[str] | None = None) -> list[str]: ...

    def plan_connections(self, topics: Sequence[str]) -> list[tuple[str, ...]]: ...

    def subscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]: ...

    def unsubscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]: ...

    def ping_message(self, next_id: Callable[[], int]) -> str | None: ...

    def refused_topics(self, refusal: str, topics: Sequence[str]) -> list[str]: ...

    def refuse(self, topics: Sequence[str], refusal: str) -> None: ...

    def new_parser(self) -> Any: ...

    def notify(self) -> None: ...


class StreamOwner(Protocol):
    """What a :class:`~hftdb.exchanges.session.Session` and an :class:`~hftdb.exchanges.intake.Intake` read from
    the runner that owns them (or the replay's stand-in): the adapter, the shared admission state and the way to
    the sink. :class:`~hftdb.exchanges.runner.StreamRunner` is one."""

    adapter: StreamAdapter
    book_ids: dict[str, int]
    drop_unsequenced: bool
    next_id: Callable[[], int]

    def admit(self, books: list[BookTicker], funding: list[FundingRate]) -> tuple[list[BookTicker], list[FundingRate]]:
        ...

    def restart_if_lower(self, symbol: str, update_id: int) -> None: ...

    async def push(self, batch: FeedRows) -> None: ...

    def spawn_push(self, batches: list[FeedRows]) -> asyncio.Task | None: ...

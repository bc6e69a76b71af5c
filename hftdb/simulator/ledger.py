"""The simulator's exact record of what it sent, so tests can check that every message was stored once.

A data message is identified per ``(venue, channel, symbol)`` by its *key*: the update id where the channel has
one (Binance ``u``, Bybit ``u``, OKX ``seqId``), else its exchange time in milliseconds (Binance ``E`` of
``markPriceUpdate``, Bybit ``ts`` of ``tickers``, OKX ``ts`` of ``tickers`` and ``funding-rate``), which the
simulator keeps strictly increasing per symbol so that it identifies the message. Keys are kept as ranges, so a
long run of consecutive ids costs one pair of ints.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["IdRanges", "Tally", "Ledger"]


class IdRanges:
    """A set of integers stored as sorted, disjoint, inclusive ``[start, end]`` ranges.

    Adding the successor of the largest member (the common case: ids arrive in order) is O(1).
    """

    __slots__ = ("_starts", "_ends", "_count")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._count = 0

    def add(self, value: int) -> bool:
        """Add ``value``; return False if it was already present."""
        starts, ends = self._starts, self._ends
        if ends and value == ends[-1] + 1:
            ends[-1] = value
            self._count += 1
            return True
        i = bisect.bisect_right(starts, value) - 1
        if i >= 0 and value <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == value - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == value + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = value
        elif joins_right:
            starts[i + 1] = value
        else:
            starts.insert(i + 1, value)
            ends.insert(i + 1, value)
        self._count += 1
        return True

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value <= self._ends[i]

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        for start, end in zip(self._starts, self._ends):
            yield from range(start, end + 1)

    def ranges(self) -> list[tuple[int, int]]:
        """The members as inclusive ``(start, end)`` ranges, ascending."""
        return list(zip(self._starts, self._ends))

    def to_set(self) -> set[int]:
        """The members as a plain set (for comparisons in tests)."""
        return set(self)

    def __repr__(self) -> str:
        shown = ", ".join(f"{s}-{e}" if s != e else str(s) for s, e in self.ranges()[:5])
        more = ", ..." if len(self._starts) > 5 else ""
        return f"IdRanges({shown}{more}; {self._count} ids)"


@dataclass(slots=True)
class Tally:
    """What was sent on one ``(venue, channel, symbol)``.

    ``frames`` counts every data frame written to a socket (a message fanned out to two connections, or sent
    twice on purpose, counts twice); ``keys`` holds each distinct message once. ``duplicates`` and ``gaps`` count
    the faults injected into this stream while someone was subscribed to it.
    """

    frames: int = 0
    keys: IdRanges = field(default_factory=IdRanges)
    duplicates: int = 0
    gaps: int = 0

    @property
    def messages(self) -> int:
        """Distinct data messages sent."""
        return len(self.keys)


class Ledger:
    """Exact counts of everything the simulator sent, by venue, channel and symbol."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str, str], Tally] = {}
        self.malformed: dict[str, int] = {}
        self.control_frames: dict[str, int] = {}
        #: bumped by :meth:`clear`, so that writers holding tallies know to look them up again
        self.generation = 0

    def tally(self, venue: str, channel: str, symbol: str) -> Tally:
        """The tally of one stream (an empty one if nothing was sent on it)."""
        key = (str(venue), channel, symbol)
        t = self._tallies.get(key)
        if t is None:
            t = self._tallies[key] = Tally()
        return t

    def record(self, venue: str, channel: str, symbol: str, key: int) -> None:
        """Record one data frame written to a socket."""
        t = self._tallies.get((venue, channel, symbol))
        if t is None:
            t = self.tally(venue, channel, symbol)
        t.frames += 1
        t.keys.add(key)

    def streams(self, venue: str | None = None, channel: str | None = None) -> dict[tuple[str, str, str], Tally]:
        """The tallies with at least one frame, optionally of one venue and/or channel."""
        return {
            k: t
            for k, t in self._tallies.items()
            if t.frames and (venue is None or k[0] == str(venue)) and (channel is None or k[1] == channel)
        }

    def messages(self, venue: str | None = None, channel: str | None = None) -> int:
        """Distinct data messages sent, summed over the matching streams."""
        return sum(t.messages for t in self.streams(venue, channel).values())

    def frames(self, venue: str | None = None, channel: str | None = None) -> int:
        """Data frames written, summed over the matching streams."""
        return sum(t.frames for t in self.streams(venue, channel).values())

    def gaps(self, venue: str | None = None, channel: str | None = None) -> int:
        """Injected gaps, summed over the matching streams."""
        return sum(t.gaps for k, t in self._tallies.items() if _match(k, venue, channel))

    def duplicates(self, venue: str | None = None, channel: str | None = None) -> int:
        """Injected duplicate frames, summed over the matching streams."""
        return sum(t.duplicates for k, t in self._tallies.items() if _match(k, venue, channel))

    def clear(self) -> None:
        """Forget everything recorded so far (between tests sharing one simulator)."""
        self._tallies.clear()
        self.generation += 1
        self.malformed.clear()
        self.control_frames.clear()


def _match(key: tuple[str, str, str], venue: str | None, channel: str | None) -> bool:
    return (venue is None or key[0] == str(venue)) and (channel is None or key[1] == channel)

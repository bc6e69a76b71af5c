"""TTL dictionary caches with hit and miss counters.

Lookups are a dict get and one clock comparison, so a warm lookup stays well under a microsecond. The clock is
injectable, so expiry is tested without sleeping.
"""

from __future__ import annotations

import time
from typing import Callable, Generic, Hashable, Iterable, TypeVar

__all__ = ["TTLCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class TTLCache(Generic[K, V]):
    """A dictionary whose entries expire ``ttl`` seconds after they were stored."""

    __slots__ = ("ttl", "_clock", "_data", "hits", "misses", "expirations", "generation")

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        self.ttl = ttl
        self._clock = clock
        self._data: dict[K, tuple[float, V]] = {}
        self.hits = 0
        self.misses = 0
        self.expirations = 0
        #: Counts :meth:`invalidate` calls: a value read before one (``set(..., generation=...)``) is not stored.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"TTLCache(ttl={self.ttl}, size={len(self._data)}, hits={self.hits}, misses={self.misses})"

    def get(self, key: K, default: V | None = None) -> V | None:
        """Return the live value for ``key``, or ``default`` (counted as a miss) when absent or expired."""
        entry = self._data.get(key)
        if entry is not None:
            if entry[0] > self._clock():
                self.hits += 1
                return entry[1]
            del self._data[key]
            self.expirations += 1
        self.misses += 1
        return default

    def get_many(self, keys: Iterable[K]) -> list[V | None]:
        """:meth:`get` for many keys at once (None for each miss); the dict lookups run at C level."""
        now = self._clock()
        found = [e[1] if e is not None and e[0] > now else None for e in map(self._data.get, keys)]
        misses = found.count(None)
        self.hits += len(found) - misses
        self.misses += misses
        return found

    def set(self, key: K, value: V, *, generation: int | None = None) -> float:
        """Store ``value`` under ``key`` for ``ttl`` seconds from now; return when it expires (on the cache's
        clock). With ``generation`` (:attr:`generation` read before the value was), a value that an
        :meth:`invalidate` since may have outdated is not stored (and the time returned is now)."""
        now = self._clock()
        if generation is not None and generation != self.generation:
            return now
        expires = now + self.ttl
        self._data[key] = (expires, value)
        return expires

    def now(self) -> float:
        """The cache's clock."""
        return self._clock()

    def live_items(self) -> list[tuple[K, V, float]]:
        """(key, value, expiry) of every entry not yet expired (expired ones are left for :meth:`get` to drop)."""
        now = self._clock()
        return [(k, v, t) for k, (t, v) in self._data.items() if t > now]

    def invalidate(self, key: K | None = None) -> None:
        """Drop one entry, or every entry when ``key`` is None."""
        self.generation += 1
        if key is None:
            self._data.clear()
        else:
            self._data.pop(key, None)

    def stats(self) -> dict[str, int]:
        """Counters for ``get_database_stats``."""
        return {"size": len(self._data), "hits": self.hits, "misses": self.misses, "expirations": self.expirations}

"""Counted, rate-limited rejection of bad input.

A bad row or frame is rejected alone: it is counted under a short, stable reason and logged at most once per
reason per interval (with the number suppressed since), so a flood of bad input cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

__all__ = ["Rejects"]


class Rejects:
    """Counts rejections by reason and logs them at a rate limit."""

    __slots__ = ("counts", "interval", "_clock", "_logger", "_what", "_last_log", "_suppressed")

    def __init__(
        self,
        what: str,
        *,
        interval: float = 10.0,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts: dict[str, int] = {}
        self.interval = interval
        self._what = what
        self._clock = clock
        self._logger = logger or logging.getLogger(__name__)
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    @property
    def total(self) -> int:
        """Rejections of every reason so far."""
        return sum(self.counts.values())

    def add(self, reason: str, detail: object = "") -> None:
        """Count one rejection; log it unless this reason was logged less than ``interval`` seconds ago."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = self._clock()
        last = self._last_log.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last_log[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        self._logger.warning(
            "rejected %s (%s): %s%s", self._what, reason, detail,
            f" [{suppressed} more since last report]" if suppressed else "",
        )

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts by reason."""
        return dict(self.counts)

"""Counted, rate-limited rejection of bad input.

A bad row or frame is rejected alone: it is counted under a short, stable reason and logged at most once per
reason per interval (with the number suppressed since), so a flood of bad input cannot flood the log. The
parsers count frames with it, the writers count rows.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from .errors import FrameError

__all__ = ["Rejects"]

logger = logging.getLogger(__name__)


class Rejects:
    """Counts rejected input (frames, rows) by reason and logs it without flooding the log.

    The first rejection of a reason is logged at once; later ones within ``interval`` seconds are only counted,
    and the next line logged for that reason says how many were suppressed since the previous one. ``clock`` is
    injectable (monotonic seconds) so that tests need not sleep.
    """

    def __init__(
        self,
        name: str = "",
        *,
        noun: str = "frame",
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
        detail_limit: int = 200,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if detail_limit < 0:
            raise ValueError(f"detail_limit must be >= 0, got {detail_limit!r}")
        self.name = name
        self.noun = noun
        self._interval = interval
        self._clock = clock
        self._log = log if log is not None else logger
        self._detail_limit = detail_limit
        self._counts: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    @property
    def counts(self) -> dict[str, int]:
        """Rejections so far by reason (a copy)."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        """Rejections so far, all reasons together."""
        return sum(self._counts.values())

    def add(self, reason: str, detail: str = "") -> None:
        """Count one rejection; log it unless this reason was logged less than ``interval`` ago."""
        self._counts[reason] = self._counts.get(reason, 0) + 1
        now = self._clock()
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last_logged[reason] = now
        self._emit(reason, detail, self._suppressed.pop(reason, 0))

    def add_error(self, exc: FrameError) -> None:
        """Count a :class:`FrameError` under its own reason."""
        self.add(exc.reason, str(exc))

    def flush(self) -> None:
        """Log the rejections still suppressed (e.g. at shutdown), so that no count goes unreported."""
        for reason, suppressed in list(self._suppressed.items()):
            del self._suppressed[reason]
            self._log.warning(
                "%srejected %d more %s(s) (%s) since the last report", self._prefix(), suppressed, self.noun, reason
            )

    def _prefix(self) -> str:
        return f"{self.name}: " if self.name else ""

    def _emit(self, reason: str, detail: str, suppressed: int) -> None:
        if len(detail) > self._detail_limit:
            detail = detail[: self._detail_limit] + "..."
        if suppressed:
            self._log.warning(
                "%srejected %s (%s): %s [%d more suppressed since the last report]",
                self._prefix(),
                self.noun,
                reason,
                detail,
                suppressed,
            )
        else:
            self._log.warning("%srejected %s (%s): %s", self._prefix(), self.noun, reason, detail)

    def snapshot(self) -> dict[str, int]:
        """Rejections so far by reason (a copy); the same as :attr:`counts`."""
        return dict(self._counts)

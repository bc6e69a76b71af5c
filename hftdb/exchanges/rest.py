"""A small REST client for the exchanges: GET with per-attempt signing, bounded retries, rate-limit back-off.

Retried: network errors and timeouts, HTTP 5xx, and the rate-limit answers (429, Binance's 418, Bybit's bare
403), waiting what ``Retry-After`` says when it says it (never longer than ``max_retry_after``: a longer ban is
raised at once) and an exponential back-off with jitter otherwise. Any other error status raises
:class:`~hftdb.errors.ExchangeHTTPError` at once. Requests are GETs, so a retry cannot do anything twice.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from ..errors import ClosedError, ExchangeError, ExchangeHTTPError, StateError
from ..redact import redact

if TYPE_CHECKING:
    from .stream import Backoff

__all__ = ["RestClient", "Signer"]

logger = logging.getLogger(__name__)

#: builds the final query string and headers of one attempt (signing needs a fresh timestamp each time)
Signer = Callable[[str, str], tuple[str, Mapping[str, str]]]

_RATE_LIMITED = frozenset({429, 418})


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class RestClient:
    """GET requests to one exchange's REST base URL over one pooled aiohttp session."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        backoff: Backoff,
        timeout: float = 10.0,
        attempts: int = 4,
        max_retry_after: float = 60.0,
        retry_statuses: frozenset[int] = frozenset(),
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts!r}")
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.timeout = timeout
        self.attempts = attempts
        self.max_retry_after = max_retry_after
        self._backoff = backoff
        self._retry_statuses = _RATE_LIMITED | retry_statuses
        self._session: aiohttp.ClientSession | None = None
        self._state = _State.UNOPENED

    def __repr__(self) -> str:
        return f"<RestClient {self.name} {redact(self.base_url)} {self._state.value}>"  # a URL may carry user:password@

    async def start(self) -> None:
        """Open the HTTP session."""
        if self._state is not _State.UNOPENED:
            raise StateError(f"{self!r} cannot be started twice")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=8, ttl_dns_cache=300),
            headers={"User-Agent": "hftdb"},
            raise_for_status=False,
        )
        self._state = _State.OPENED

    async def close(self) -> None:
        """Close the HTTP session. Idempotent."""
        self._state = _State.CLOSED
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def get(
        self,
        path: str,
        query: str = "",
        *,
        signer: Signer | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """GET ``path?query`` and return the body of a 2xx/3xx answer.

        ``query`` must already be encoded: it is sent byte for byte, because signatures cover it. ``signer``
        (``(path, query) -> (query, headers)``) is called before every attempt. Raises
        :class:`~hftdb.errors.ExchangeHTTPError` for an error status (after the retries it deserves) and
        :class:`~hftdb.errors.ExchangeError` when the exchange cannot be reached.
        """
        if self._state is _State.CLOSED:
            raise ClosedError(f"{self!r} is closed")
        if self._session is None:
            raise StateError(f"{self!r} not started")
        client_timeout = aiohttp.ClientTimeout(total=timeout or self.timeout)
        for attempt in range(self.attempts):
            last = attempt == self.attempts - 1
            q, h = (query, dict(headers or {}))
            if signer is not None:
                q, signed = signer(path, query)
                h.update(signed)
            url = URL(f"{self.base_url}{path}?{q}" if q else f"{self.base_url}{path}", encoded=True)
            try:
                async with self._session.get(url, headers=h, timeout=client_timeout, allow_redirects=False) as resp:
                    body = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                if last:
                    raise ExchangeError(f"{self.name} GET {path}: {type(exc).__name__}: {exc}") from exc
                delay = self._backoff.delay(attempt)
                logger.warning("%s GET %s failed (%s: %s); retrying in %.2fs", self.name, path, type(exc).__name__,
                               redact(str(exc)), delay)
                await asyncio.sleep(delay)
                continue
            if status < 400:
                return body
            # ExchangeHTTPError redacts both: exchanges echo parts of a refused request (Bybit's "error sign!" quotes
            # the API key), and the message reaches logs on every poll.
            text = body[:2000].decode("utf-8", "replace")
            error = ExchangeHTTPError(f"{self.name} GET {path}: HTTP {status}: {text[:300]}", status=status, body=text)
            if status not in self._retry_statuses and status < 500:
                raise error
            delay = _retry_after(retry_after)
            if delay is None:
                delay = self._backoff.delay(attempt)
            if last or delay > self.max_retry_after:
                raise error
            logger.warning("%s GET %s: HTTP %d; retrying in %.2fs", self.name, path, status, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the last attempt returns or raises


def _retry_after(value: str | None) -> float | None:
    # Exchanges send delta-seconds; an HTTP date is not worth parsing here (the back-off applies instead).
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)

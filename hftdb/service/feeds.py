"""One venue's feed in the daemon: its adapter, its supervision, and what health and status need to know.

:meth:`Feed.run` syncs symbols until that works, then runs the adapter's streams, the periodic symbol sync, the
balance poller (where API keys exist) and, on perpetual venues, the REST funding fallback (it polls only while
the websocket gives no funding; ``[exchanges] funding_poll_interval_s = 0`` turns it off) together; after any
failure but a configuration error it restarts them with back-off, so one venue's trouble never takes the others
down.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from pathlib import Path
from typing import Any

from ..config import ExchangesSettings, VenueSettings
from ..errors import ConfigError, DatabaseUnavailableError, ExchangeError
from ..exchanges.base import ExchangeAdapter
from ..exchanges.registry import create_adapter
from ..exchanges.signing import Credentials
from ..exchanges.stream import Backoff
from ..manager import DatabaseManager
from ..models import now_us

__all__ = ["Feed", "FeedState", "open_feed"]

logger = logging.getLogger(__name__)

# Failures a feed recovers from by restarting, logged as a warning; anything else is logged with its traceback.
_EXPECTED = (ExchangeError, DatabaseUnavailableError, OSError)
# Restarting a feed after a failure: from 1 s up to a minute, with jitter.
_BACKOFF = Backoff(initial=1.0, maximum=60.0)


class FeedState(enum.Enum):
    """Where a feed is: syncing symbols, streaming, waiting to restart after a failure, or stopped."""

    SYNCING = "syncing"
    STREAMING = "streaming"
    RETRYING = "retrying"
    STOPPED = "stopped"


class Feed:
    """One venue's started adapter, supervised by :meth:`run`."""

    def __init__(self, adapter: ExchangeAdapter, config: VenueSettings, settings: ExchangesSettings, db: DatabaseManager,
                 *, poll_balances: bool) -> None:
        self.adapter = adapter
        self.config = config
        self.settings = settings
        self.db = db
        self.poll_balances = poll_balances
        self.state = FeedState.SYNCING
        self.state_since_us = now_us()
        self.synced = False
        self.last_error: str | None = None
        self.task: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<Feed {self.venue} {self.state.value}>"

    @property
    def venue(self) -> str:
        """The venue's name (``binance_spot``...)."""
        return self.adapter.venue.value

    def set_state(self, state: FeedState) -> None:
        """Enter ``state`` (health measures staleness from here until the first message)."""
        self.state = state
        self.state_since_us = now_us()

    def view(self, now: int, stale_after_s: float) -> dict[str, Any]:
        """The adapter's counters plus ``state``, ``live`` (streaming and not stale), ``last_message_age_s``."""
        stats = self.adapter.stats
        last = stats.last_message_us
        age = None if last is None else max(0.0, (now - last) / 1e6)
        # Until its first message, a feed is given stale_after_s from the moment it started streaming.
        since = last if last is not None and last >= self.state_since_us else self.state_since_us
        live = self.state is FeedState.STREAMING and (now - since) / 1e6 <= stale_after_s
        out = stats.as_dict()
        # A symbol dropped from the subscription (refused by the venue, or not trading) is shown, not silent.
        error = self.last_error
        dropped = self.adapter.not_streamed
        if dropped:
            note = "not streamed: " + "; ".join(f"{what} ({why})" for what, why in dropped.items())
            error = f"{error}; {note}" if error else note
        out.update(state=self.state.value, live=live, last_message_age_s=age, last_error=error, not_streamed=dropped)
        return out

    async def sync(self) -> None:
        """Sync the venue's symbols; a configured symbol the venue does not list is a :class:`ConfigError`. (One
        it lists halted or delisted is not streamed until it trades again: the adapter logs it.)"""
        await self.adapter.sync_symbols(timeout=self.settings.request_timeout_s)
        if self.config.symbols != "all":
            listed = {s.symbol: s.status for s in await self.db.get_symbols_by_exchange(self.venue)}
            missing = [s for s in self.config.symbols if s not in listed]
            if missing:
                sample = ", ".join(sorted(listed)[:5])
                raise ConfigError(
                    f"[exchanges.{self.venue}] symbols: {', '.join(missing)} not listed by {self.venue} "
                    f"(it lists {len(listed)} symbols, e.g. {sample})"
                )
        self.synced = True

    async def run(self) -> None:
        """Run until cancelled: sync (until it works), then streams + symbol sync + balance poller + REST funding
        fallback; restart with back-off after anything but cancellation or a configuration error."""
        ex = self.settings
        attempt = 0
        while True:
            try:
                if not self.synced:
                    self.set_state(FeedState.SYNCING)
                    await self.sync()
                self.set_state(FeedState.STREAMING)
                self.last_error = None
                attempt = 0
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.adapter.run_streams(), name=f"{self.venue}-streams")
                    tg.create_task(self._sync_later(ex.symbol_sync_interval_s), name=f"{self.venue}-symbols")
                    if self.poll_balances:
                        tg.create_task(self.adapter.run_balance_poller(ex.balance_interval_s, timeout=ex.request_timeout_s),
                                       name=f"{self.venue}-balances")
                    if ex.funding_poll_interval_s > 0 and self.adapter.has_funding:
                        tg.create_task(self.adapter.run_funding_poller(ex.funding_poll_interval_s,
                                                                       timeout=ex.request_timeout_s),
                                       name=f"{self.venue}-funding")
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - one feed's failure must not take the others down
                leaves = _leaves(exc)
                self.last_error = "; ".join(str(e) or repr(e) for e in leaves)
                if not all(isinstance(e, _EXPECTED) for e in leaves):
                    logger.error("%s: feed failed", self.venue, exc_info=exc)
                # Never silent: a restart cuts the streams, and what the venue sends until they are back is lost.
                stats = self.adapter.stats
                stats.restarts += 1
                if self.state is FeedState.STREAMING:
                    stats.reconnects += 1  # its connections were replaced
                self.adapter.notify()
            self.set_state(FeedState.RETRYING)
            delay = _BACKOFF.delay(attempt)
            attempt += 1
            logger.warning("%s: %s; restarting the feed in %.1fs", self.venue, self.last_error, delay)
            await asyncio.sleep(delay)

    async def _sync_later(self, interval: float) -> None:
        await asyncio.sleep(interval)
        await self.adapter.run_symbol_sync(interval, timeout=self.settings.request_timeout_s)


async def open_feed(venue: str, config: VenueSettings, settings: ExchangesSettings, db: DatabaseManager, *,
                    simulator: Any = None) -> Feed:
    """Create and start ``venue``'s adapter writing to ``db``: against the exchange simulator when one is given
    (with its test credentials), else against the venue with API keys from the environment or the secrets file."""
    kwargs: dict[str, Any] = {
        "symbols": None if config.symbols == "all" else list(config.symbols),
        "channels": list(config.channels) or None,
        "account": config.account,
        "timeout": settings.request_timeout_s,
    }
    if simulator is not None:
        c = simulator.credentials
        kwargs.update(rest_url=simulator.rest_url(venue), ws_url=simulator.ws_url(venue),
                      credentials=Credentials(api_key=c.api_key, api_secret=c.api_secret, passphrase=c.passphrase))
    else:
        secrets = Path(settings.secrets_file).expanduser() if settings.secrets_file else None
        kwargs["credentials"] = Credentials.load(venue, secrets_file=secrets)
    poll = settings.balance_interval_s > 0 and kwargs["credentials"] is not None
    if settings.balance_interval_s > 0 and not poll:
        logger.info("%s: no API keys (%s_API_KEY and _API_SECRET, or %s_..., or [exchanges] secrets_file): "
                    "balances not polled", venue, venue.split("_")[0].upper(), venue.upper())
    adapter = create_adapter(venue, db.feed_sink(), **kwargs)
    await adapter.start()
    return Feed(adapter, config, settings, db, poll_balances=poll)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]

"""Binance spot and USD-M futures: REST paths, stream names, SUBSCRIBE requests, HMAC query signing.

Streams use the combined endpoint ``/stream`` and ``{"method": "SUBSCRIBE", "params": [...], "id": N}``
requests, paced under the venue's limit of 5 (spot) / 10 (USD-M) incoming messages per second per connection,
pings and pongs included; at most 1024 streams per connection. The server pings (spot every 20 s, USD-M every
3 min) and we answer; when a connection has been silent for ``ping_interval`` we also ask
``LIST_SUBSCRIPTIONS``, whose answer proves the connection alive. Binance ends every connection at 24 h, so
connections are handed over to a fresh one at 23 h 30 min.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from ..models import ExchangeName
from ..venues import served_by
from .base import ExchangeAdapter
from .parse_binance import BinanceParser
from .signing import Credentials, binance_signature

__all__ = ["BinanceAdapter"]

_SPOT = ExchangeName.BINANCE_SPOT
_USDM = ExchangeName.BINANCE_USDM
# Error codes of refused signed requests: timestamp outside recvWindow, bad signature, bad or unknown key.
_AUTH_CODES = frozenset({-1021, -1022, -2014, -2015})


class BinanceAdapter(ExchangeAdapter):
    """Binance spot (``BINANCE_SPOT``) or USD-M futures (``BINANCE_USDM``).

    Channels are stream suffixes: ``bookTicker`` (default) and, on USD-M, ``markPrice@1s`` (default) or
    ``markPrice``. ``recv_window`` is the signed requests' ``recvWindow`` in milliseconds.
    """

    venues = served_by("BinanceAdapter")
    max_topics_per_connection = 1024
    max_topics_per_message = 200
    connect_interval = 0.2
    ping_mode = "idle"
    default_ping_interval = 30.0
    default_stale_after = 60.0
    default_max_connection_age = 23.5 * 3600
    consecutive_ids = False  # bookTicker's "u" is the book's update id: it moves on with every depth change

    def __init__(self, venue: ExchangeName | str, sink, *, recv_window: int = 5000, **kwargs) -> None:  # noqa: ANN001
        super().__init__(venue, sink, **kwargs)
        if not 0 < recv_window <= 60_000:
            raise ValueError(f"recv_window must be within (0, 60000] ms, got {recv_window!r}")
        self.recv_window = recv_window
        # One control message per 0.3 s (spot) / 0.15 s (USD-M) leaves room for pongs within 5 / 10 a second.
        self.control_interval = 0.3 if self.venue is _SPOT else 0.15

    def new_parser(self) -> BinanceParser:
        """A :class:`~hftdb.exchanges.parse_binance.BinanceParser` of this venue; its book rows carry their
        ``symbol_id`` when the sink can resolve it without I/O (:meth:`symbol_ids`)."""
        return BinanceParser(self.venue, account=self.account, symbol_ids=self.symbol_ids())

    def symbols_request(self) -> tuple[str, str]:
        """``GET /api/v3/exchangeInfo`` or ``GET /fapi/v1/exchangeInfo``."""
        return ("/api/v3/exchangeInfo" if self.venue is _SPOT else "/fapi/v1/exchangeInfo", "")

    def balances_request(self) -> tuple[str, str]:
        """``GET /api/v3/account`` or ``GET /fapi/v2/balance`` (both SIGNED)."""
        return ("/api/v3/account" if self.venue is _SPOT else "/fapi/v2/balance", "")

    def sign(self, credentials: Credentials, path: str, query: str) -> tuple[str, dict[str, str]]:
        """Append ``recvWindow``, ``timestamp`` and the ``signature`` of the whole query string."""
        timestamp = int(self.clock() * 1000)
        signed = f"{query}&" if query else ""
        signed += f"recvWindow={self.recv_window}&timestamp={timestamp}"
        signature = binance_signature(credentials.api_secret, signed)
        return f"{signed}&signature={signature}", {"X-MBX-APIKEY": credentials.api_key}

    def is_auth_failure(self, status: int, body: str) -> bool:
        """401, or one of the signed-request error codes (-1021, -1022, -2014, -2015)."""
        if status == 401:
            return True
        if status != 400:
            return False
        try:
            code = json.loads(body).get("code")
        except (ValueError, AttributeError):
            return False
        return code in _AUTH_CODES

    def funding_requests(self, symbols: Sequence[str]) -> list[tuple[str, str]]:
        """USD-M: one ``GET /fapi/v1/premiumIndex`` (every symbol's ``lastFundingRate``); spot has no funding."""
        return [("/fapi/v1/premiumIndex", "")] if self.venue is _USDM and symbols else []

    def ws_endpoint(self) -> str:
        """The combined-stream endpoint: every payload arrives as ``{"stream", "data"}``."""
        return f"{self.ws_url}/stream"

    def topic(self, symbol: str, channel: str) -> str:
        """``<symbol lowercase>@<channel>``."""
        return f"{symbol.lower()}@{channel}"

    def subscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """One ``SUBSCRIBE`` per batch of at most 200 streams, each acknowledged once."""
        return self._requests("SUBSCRIBE", topics, next_id)

    def unsubscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """One ``UNSUBSCRIBE`` per batch of at most 200 streams, each acknowledged once."""
        return self._requests("UNSUBSCRIBE", topics, next_id)

    def _requests(self, method: str, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        return [(json.dumps({"method": method, "params": batch, "id": next_id()}), 1) for batch in self.batches(topics)]

    def ping_message(self, next_id: Callable[[], int]) -> str:
        """``LIST_SUBSCRIPTIONS``: a cheap request whose answer shows the connection is alive."""
        return json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": next_id()})

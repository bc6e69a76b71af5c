"""Bybit v5 spot and linear: paginated instruments, ``orderbook.1``/``tickers`` topics, HMAC header signing.

Public streams are ``/v5/public/spot`` and ``/v5/public/linear``. A spot subscribe request takes at most 10
args; a linear connection at most 21,000 characters of args. The client pings (``{"op": "ping"}``) every 20 s,
as Bybit recommends. ``orderbook.1``'s update id ``u`` is consecutive, so a jump is a gap; on linear,
``tickers`` is subscribed for funding, and its best bid/ask (which ``orderbook.1`` already gives, sequenced)
is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from urllib.parse import quote

from ..errors import ExchangeError
from ..models import ExchangeName, Symbol, now_us
from ..venues import served_by
from .base import ExchangeAdapter, parse_rest
from .parse_bybit import BybitParser
from .signing import Credentials, bybit_signature

__all__ = ["BybitAdapter"]

_SPOT = ExchangeName.BYBIT_SPOT
_LINEAR = ExchangeName.BYBIT_LINEAR
# retCodes of refused signed requests: timestamp/recv_window, invalid key, bad sign, no permission,
# authentication failed, IP not allowed.
_AUTH_CODES = frozenset({10002, 10003, 10004, 10005, 10007, 10010})
_MAX_PAGES = 100


class BybitAdapter(ExchangeAdapter):
    """Bybit spot (``BYBIT_SPOT``) or linear perpetuals (``BYBIT_LINEAR``).

    Channels are topic prefixes: ``orderbook.1`` (default) and, on linear, ``tickers`` (default, for funding).
    """

    venues = served_by("BybitAdapter")
    max_topics_per_connection = 5000  # linear is bounded by characters below; spot documents no count
    max_topics_per_message = 200
    connect_interval = 0.1
    ping_mode = "interval"
    default_ping_interval = 20.0
    default_stale_after = 45.0
    consecutive_ids = True
    # Bybit's IP rate limit answers a bare 403 ("access too frequent"): worth a retry after a pause.
    rest_retry_statuses = frozenset({403})

    def __init__(self, venue: ExchangeName | str, sink, *, recv_window: int = 5000, account_type: str = "UNIFIED", **kwargs) -> None:  # noqa: ANN001
        super().__init__(venue, sink, **kwargs)
        if recv_window <= 0:
            raise ValueError(f"recv_window must be > 0 ms, got {recv_window!r}")
        self.recv_window = recv_window
        self.account_type = account_type
        if self.venue is _SPOT:
            self.topics_per_message = min(self.topics_per_message, 10)
        else:
            self.max_topic_chars_per_connection = 21_000

    @property
    def category(self) -> str:
        """``spot`` or ``linear``: the ``category`` parameter and the public stream path."""
        return "spot" if self.venue is _SPOT else "linear"

    @property
    def drops_unsequenced_books(self) -> bool:
        """True when ``orderbook.*`` is subscribed: ``tickers`` quotes would repeat it without an update id."""
        return any(ch.startswith("orderbook.") for ch in self.channels)

    def new_parser(self) -> BybitParser:
        """A :class:`~hftdb.exchanges.parse_bybit.BybitParser` (it holds book state: one per connection); its book
        rows carry their ``symbol_id`` when the sink can resolve it without I/O."""
        return BybitParser(self.venue, account=self.account, symbol_ids=self.symbol_ids())

    def symbols_request(self) -> tuple[str, str]:
        """``GET /v5/market/instruments-info?category=...&limit=1000`` (first page)."""
        return ("/v5/market/instruments-info", f"category={self.category}&limit=1000")

    async def fetch_symbols(self, exchange_id: int, *, timeout: float | None = None) -> list[Symbol]:
        """Every instrument, following ``nextPageCursor`` (at most 100 pages)."""
        self._check_open()
        parser = self.new_parser()
        path, first = self.symbols_request()
        symbols: list[Symbol] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            query = first if cursor is None else f"{first}&cursor={quote(cursor, safe='')}"
            body = await self._rest.get(path, query, timeout=timeout)
            symbols.extend(self.listed(parser, parse_rest(parser.parse_symbols, body, exchange_id, now_us())))
            cursor = parser.next_cursor(body)
            if cursor is None:
                return symbols
        raise ExchangeError(f"{self.venue.value}: instruments-info still paging after {_MAX_PAGES} pages")

    def balances_request(self) -> tuple[str, str]:
        """``GET /v5/account/wallet-balance?accountType=UNIFIED`` (signed)."""
        return ("/v5/account/wallet-balance", f"accountType={self.account_type}")

    def sign(self, credentials: Credentials, path: str, query: str) -> tuple[str, dict[str, str]]:
        """The ``X-BAPI-*`` headers: key, timestamp, recv window and the signature of the query string."""
        timestamp = str(int(self.clock() * 1000))
        recv_window = str(self.recv_window)
        return query, {
            "X-BAPI-API-KEY": credentials.api_key,
            "X-BAPI-TIMESTAMP": timestamp,
            "X-BAPI-RECV-WINDOW": recv_window,
            "X-BAPI-SIGN": bybit_signature(credentials.api_secret, timestamp, credentials.api_key, recv_window, query),
        }

    def is_auth_failure(self, status: int, body: str) -> bool:
        """401, or HTTP 200 whose ``retCode`` is an authentication error (Bybit answers those with 200)."""
        if status == 401:
            return True
        try:
            code = json.loads(body).get("retCode")
        except (ValueError, AttributeError):
            return False
        return code in _AUTH_CODES

    def funding_requests(self, symbols: Sequence[str]) -> list[tuple[str, str]]:
        """Linear: one ``GET /v5/market/tickers?category=linear`` (every symbol's ``fundingRate``); spot has none."""
        return [("/v5/market/tickers", "category=linear")] if self.venue is _LINEAR and symbols else []

    def ws_endpoint(self) -> str:
        """``/v5/public/spot`` or ``/v5/public/linear``."""
        return f"{self.ws_url}/v5/public/{self.category}"

    def topic(self, symbol: str, channel: str) -> str:
        """``<channel>.<symbol>``: ``orderbook.1.BTCUSDT``, ``tickers.BTCUSDT``."""
        return f"{channel}.{symbol}"

    def subscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """One ``subscribe`` op per batch (10 args on spot), each answered once."""
        return self._requests("subscribe", topics, next_id)

    def unsubscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """One ``unsubscribe`` op per batch (10 args on spot), each answered once."""
        return self._requests("unsubscribe", topics, next_id)

    def _requests(self, op: str, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        return [(json.dumps({"op": op, "args": batch, "req_id": str(next_id())}), 1) for batch in self.batches(topics)]

    def ping_message(self, next_id: Callable[[], int]) -> str:
        """``{"op": "ping"}``."""
        return json.dumps({"op": "ping", "req_id": str(next_id())})

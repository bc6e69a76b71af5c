"""OKX v5 spot and swaps: instruments, ``bbo-tbt``/``tickers``/``funding-rate`` channels, base64 HMAC headers.

The public stream is ``/ws/v5/public``; a subscribe request is at most 64 KB and is acknowledged once per arg.
OKX closes a connection that has had nothing pushed for 30 s, so when ours has been silent for
``ping_interval`` (25 s) we send the text ``ping`` and expect ``pong``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from urllib.parse import quote

from ..errors import ExchangeError
from ..models import ExchangeName
from ..venues import served_by
from .base import ExchangeAdapter
from .parse_okx import OkxParser
from .signing import Credentials, okx_signature, okx_timestamp

__all__ = ["OkxAdapter"]

_SPOT = ExchangeName.OKX_SPOT
_SWAP = ExchangeName.OKX_SWAP


class OkxAdapter(ExchangeAdapter):
    """OKX spot (``OKX_SPOT``) or perpetual swaps (``OKX_SWAP``).

    Channels: ``bbo-tbt`` (default: best bid/ask tick by tick, with ``seqId``), ``tickers``, and on swaps
    ``funding-rate`` (default).
    """

    venues = served_by("OkxAdapter")
    max_topics_per_connection = 1000  # OKX documents none; this keeps one connection's traffic modest
    max_topics_per_message = 500
    max_message_bytes = 65_536
    connect_interval = 0.35  # 3 connection requests per second per IP
    ping_mode = "idle"
    default_ping_interval = 25.0
    default_stale_after = 40.0
    consecutive_ids = False  # seqId is shared with the depth channels: it jumps
    funding_request_interval = 0.1  # GET /public/funding-rate: 20 requests per 2 s per IP, one instId each

    def new_parser(self) -> OkxParser:
        """An :class:`~hftdb.exchanges.parse_okx.OkxParser` of this venue."""
        return OkxParser(self.venue, account=self.account, symbol_ids=self.symbol_ids())

    def symbols_request(self) -> tuple[str, str]:
        """``GET /api/v5/public/instruments?instType=SPOT|SWAP``."""
        return ("/api/v5/public/instruments", "instType=SPOT" if self.venue is _SPOT else "instType=SWAP")

    def balances_request(self) -> tuple[str, str]:
        """``GET /api/v5/account/balance`` (signed)."""
        return ("/api/v5/account/balance", "")

    def sign(self, credentials: Credentials, path: str, query: str) -> tuple[str, dict[str, str]]:
        """The ``OK-ACCESS-*`` headers: key, passphrase, timestamp and the signature of timestamp + GET + path."""
        if not credentials.passphrase:
            raise ExchangeError(f"{self.venue.value}: OKX needs the API passphrase (OKX_API_PASSPHRASE)")
        timestamp = okx_timestamp(self.clock())
        request_path = f"{path}?{query}" if query else path
        return query, {
            "OK-ACCESS-KEY": credentials.api_key,
            "OK-ACCESS-SIGN": okx_signature(credentials.api_secret, timestamp, "GET", request_path),
            "OK-ACCESS-TIMESTAMP": timestamp,
            "OK-ACCESS-PASSPHRASE": credentials.passphrase,
        }

    def is_auth_failure(self, status: int, body: str) -> bool:
        """OKX refuses keys, signatures and timestamps with HTTP 401."""
        return status == 401

    def funding_requests(self, symbols: Sequence[str]) -> list[tuple[str, str]]:
        """Swaps: one ``GET /api/v5/public/funding-rate?instId=...`` per symbol (the endpoint takes one); spot has
        no funding."""
        if self.venue is not _SWAP:
            return []
        return [("/api/v5/public/funding-rate", f"instId={quote(symbol, safe='-')}") for symbol in symbols]

    def ws_endpoint(self) -> str:
        """``/ws/v5/public``."""
        return f"{self.ws_url}/ws/v5/public"

    def topic(self, symbol: str, channel: str) -> str:
        """``<channel>:<instId>`` (sent as ``{"channel", "instId"}``)."""
        return f"{channel}:{symbol}"

    def refused_topics(self, refusal: str, topics: Sequence[str]) -> list[str]:
        """The topics an error names as ``channel:<channel>,instId:<instId>`` (60018: "Wrong URL or
        channel:bbo-tbt,instId:BTC-USDT doesn't exist")."""
        named = []
        for topic in topics:
            channel, _, inst_id = topic.partition(":")
            if re.search(rf"channel:{re.escape(channel)},\s*instId:{re.escape(inst_id)}(?![\w-])", refusal):
                named.append(topic)
        return named

    def subscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """One ``subscribe`` op per batch (under 64 KB), acknowledged once per arg."""
        return self._requests("subscribe", topics, next_id)

    def unsubscribe_messages(self, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        """One ``unsubscribe`` op per batch (under 64 KB), acknowledged once per arg."""
        return self._requests("unsubscribe", topics, next_id)

    def _requests(self, op: str, topics: Sequence[str], next_id: Callable[[], int]) -> list[tuple[str, int]]:
        out = []
        for batch in self.batches(topics):
            args = [dict(zip(("channel", "instId"), t.split(":", 1))) for t in batch]
            out.append((json.dumps({"id": str(next_id()), "op": op, "args": args}), len(args)))
        return out

    def ping_message(self, next_id: Callable[[], int]) -> str:
        """The text ``ping``."""
        return "ping"

"""Binance spot (``api``/``stream.binance.com``) and USD-M futures (``fapi``/``fstream.binance.com``), simulated.

REST: ``/api/v3/exchangeInfo``, ``/api/v3/time``, signed ``/api/v3/account``; ``/fapi/v1/exchangeInfo``,
``/fapi/v1/time``, ``/fapi/v1/premiumIndex``, signed ``/fapi/v2/balance``. Signed endpoints take the
``X-MBX-APIKEY`` header and ``timestamp``, optional ``recvWindow`` (default 5000, at most 60000) and
``signature``, the hex HMAC-SHA256 of the query string without the signature parameter.

Websocket: ``/ws`` and ``/ws/<stream>`` (raw payloads), ``/stream`` and ``/stream?streams=a/b`` (combined
``{"stream", "data"}`` envelope), with ``{"method": "SUBSCRIBE"|"UNSUBSCRIBE"|"LIST_SUBSCRIPTIONS", "params":
[...], "id": N}`` answered ``{"result": null, "id": N}``. Streams: ``<symbol>@bookTicker`` and, on USD-M,
``<symbol>@markPrice`` / ``<symbol>@markPrice@1s``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import parse_qsl

from aiohttp import web

from ..models import ExchangeName
from ..venues import served_by
from .core import Host, Session
from .market import Market

__all__ = ["BinanceHost"]

_SPOT = ExchangeName.BINANCE_SPOT
_USDM = ExchangeName.BINANCE_USDM


def _error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


class BinanceHost(Host):
    """One Binance market (spot or USD-M): its REST API and its market streams on one port."""

    id_channels = frozenset({"bookTicker"})

    def __init__(self, markets: dict[ExchangeName, Market], **kwargs) -> None:
        (venue,) = markets  # one market per Binance host: spot and USD-M have different hosts
        if venue not in served_by("BinanceAdapter"):
            raise ValueError(f"venue must be one of {[v.value for v in served_by('BinanceAdapter')]}, got {venue!r}")
        self.venue = venue
        super().__init__(markets, **kwargs)
        lim = self.limits
        spot = venue is _SPOT
        self.max_streams = lim.binance_spot_max_streams if spot else lim.binance_usdm_max_streams
        self.max_incoming = lim.binance_spot_max_incoming_per_s if spot else lim.binance_usdm_max_incoming_per_s
        self.ping_interval = lim.binance_spot_ping_interval if spot else lim.binance_usdm_ping_interval
        self.pong_timeout = lim.binance_spot_pong_timeout if spot else lim.binance_usdm_pong_timeout
        self.tick = max(0.01, min(1.0, self.ping_interval / 4))

    @property
    def market(self):
        """The one market this host serves."""
        return self.markets[self.venue]

    def routes(self) -> list[web.RouteDef]:
        if self.venue is _SPOT:
            rest = [
                web.get("/api/v3/exchangeInfo", self._exchange_info),
                web.get("/api/v3/time", self._server_time),
                web.get("/api/v3/account", self._account),
            ]
        else:
            rest = [
                web.get("/fapi/v1/exchangeInfo", self._exchange_info),
                web.get("/fapi/v1/time", self._server_time),
                web.get("/fapi/v1/premiumIndex", self._premium_index),
                web.get("/fapi/v2/balance", self._balance),
            ]
        return rest + [
            web.get("/ws", self._ws_raw),
            web.get("/ws/{streams:.+}", self._ws_raw),
            web.get("/stream", self._ws_combined),
        ]

    # -- REST ------------------------------------------------------------------------------------------

    async def _server_time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.now_ms()})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        wanted: set[str] | None = None
        if "symbol" in request.query:
            wanted = {request.query["symbol"]}
        elif "symbols" in request.query:
            try:
                wanted = set(json.loads(request.query["symbols"]))
            except ValueError:
                return _error(400, -1100, "Illegal characters found in parameter 'symbols'.")
        symbols = []
        for inst in self.market.instruments:
            if wanted is not None and inst.symbol not in wanted:
                continue
            row = {
                "symbol": inst.symbol,
                "status": "TRADING" if inst.trading else "BREAK",
                "baseAsset": inst.base,
                "quoteAsset": inst.quote,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": inst.tick, "maxPrice": "1000000.00000000", "tickSize": inst.tick},
                    {"filterType": "LOT_SIZE", "minQty": inst.lot, "maxQty": "9000000.00000000", "stepSize": inst.lot},
                ],
            }
            if self.venue is _USDM:
                row.update(pair=inst.symbol, contractType="PERPETUAL", marginAsset=inst.quote, pricePrecision=inst.price_decimals)
            else:
                row.update(isSpotTradingAllowed=True, permissions=["SPOT"])
            symbols.append(row)
        if wanted is not None and not symbols:
            return _error(400, -1121, "Invalid symbol.")
        body = {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}],
            "exchangeFilters": [],
            "symbols": symbols,
        }
        return web.json_response(body, dumps=self.json)

    async def _premium_index(self, request: web.Request) -> web.Response:
        now = self.now_ms()
        wanted = request.query.get("symbol")
        rows = []
        for inst in self.market.instruments:
            if wanted is not None and inst.symbol != wanted:
                continue
            q = self.market.quotes[inst.symbol]
            rows.append(
                {
                    "symbol": inst.symbol,
                    "markPrice": self.market.price(inst.symbol, q.mark),
                    "indexPrice": self.market.price(inst.symbol, q.index),
                    "estimatedSettlePrice": self.market.price(inst.symbol, q.index),
                    "lastFundingRate": f"{q.funding_rate:.8f}",
                    "interestRate": "0.00010000",
                    "nextFundingTime": q.next_funding_ms or (now // 28_800_000 + 1) * 28_800_000,
                    "time": now,
                }
            )
        if wanted is not None:
            if not rows:
                return _error(400, -1121, "Invalid symbol.")
            return web.json_response(rows[0], dumps=self.json)
        return web.json_response(rows, dumps=self.json)

    def _check_signed(self, request: web.Request) -> web.Response | None:
        """Binance's checks of a SIGNED request, in its order and with its error codes."""
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            return _error(401, -2014, "API-key format invalid.")
        if key != self.credentials.api_key:
            return _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        raw = request.query_string
        params = dict(parse_qsl(raw, keep_blank_values=True))
        for name in ("timestamp", "signature"):
            if not params.get(name):
                return _error(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", "5000"))
        except ValueError:
            return _error(400, -1100, "Illegal characters found in a parameter.")
        if recv_window > 60_000:
            return _error(400, -1131, "recvWindow must be less than 60000")
        now = self.now_ms()
        if timestamp >= now + 1000 or now - timestamp > recv_window:
            return _error(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        # The signature covers the query string exactly as sent, minus the signature parameter itself.
        payload = "&".join(p for p in raw.split("&") if not p.startswith("signature="))
        expected = hmac.new(self.credentials.api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, params["signature"].lower()):
            return _error(400, -1022, "Signature for this request is not valid.")
        return None

    async def _account(self, request: web.Request) -> web.Response:
        if (refused := self._check_signed(request)) is not None:
            return refused
        now = self.now_ms()
        balances = [
            {"asset": "BTC", "free": "1.25000000", "locked": "0.05000000"},
            {"asset": "USDT", "free": "10250.50000000", "locked": "120.00000000"},
            {"asset": "ETH", "free": "0.00000000", "locked": "0.00000000"},
        ]
        body = {
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "updateTime": now, "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"], "uid": 354937868,
        }
        return web.json_response(body, dumps=self.json)

    async def _balance(self, request: web.Request) -> web.Response:
        if (refused := self._check_signed(request)) is not None:
            return refused
        now = self.now_ms()
        rows = [
            {"accountAlias": "SgsR", "asset": "USDT", "balance": "5000.00000000", "crossWalletBalance": "5000.00000000",
             "crossUnPnl": "12.50000000", "availableBalance": "4800.00000000", "maxWithdrawAmount": "4800.00000000",
             "marginAvailable": True, "updateTime": now},
            {"accountAlias": "SgsR", "asset": "BNB", "balance": "0.00000000", "crossWalletBalance": "0.00000000",
             "crossUnPnl": "0.00000000", "availableBalance": "0.00000000", "maxWithdrawAmount": "0.00000000",
             "marginAvailable": True, "updateTime": 0},
        ]
        return web.json_response(rows, dumps=self.json)

    def error_body(self, status: int, request: web.Request) -> dict:
        if status == 429:
            return {"code": -1003, "msg": "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per minute. Please use the websocket for live updates to avoid polling the API."}
        if status == 418:
            until = self.now_ms() + 120_000
            return {"code": -1003, "msg": f"Way too many requests; IP(127.0.0.1) banned until {until}. Please use the websocket for live updates to avoid bans."}
        if status >= 500:
            return {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
        return {"code": -1000, "msg": "An unknown error occurred while processing the request."}

    # -- websocket -------------------------------------------------------------------------------------

    async def _ws_raw(self, request: web.Request) -> web.WebSocketResponse:
        streams = request.match_info.get("streams", "")
        return await self.serve_ws(request, setup=lambda s: self._initial(s, streams.split("/") if streams else [], combined=False))

    async def _ws_combined(self, request: web.Request) -> web.WebSocketResponse:
        streams = request.query.get("streams", "")
        return await self.serve_ws(request, setup=lambda s: self._initial(s, streams.split("/") if streams else [], combined=True))

    def _initial(self, session: Session, names: list[str], *, combined: bool) -> None:
        session.combined = combined
        parsed = [self._stream(n) for n in names]
        if any(p is None for p in parsed) or len(parsed) > self.max_streams:
            session.close(1008, "Invalid request")
            return
        for stream in parsed:
            self.subscribe(session, stream)

    def _stream(self, name: str, *, trading: bool = True) -> tuple[ExchangeName, str, str] | None:
        """The stream of ``name``; a symbol no longer trading is refused unless ``trading`` is False (unsubscribe)."""
        symbol, sep, channel = name.partition("@")
        if not sep or symbol != symbol.lower():
            return None
        symbol = symbol.upper()
        known = self.market.trading(symbol) if trading else symbol in self.market.by_symbol
        if not known or channel not in self.channels[self.venue][0] + self.channels[self.venue][1]:
            return None
        return (self.venue, channel, symbol)

    def count_incoming(self, session: Session, now: float) -> bool:
        # Binance counts every frame from the client, pings and pongs included, and cuts a connection that sends
        # more than its limit in a second.
        session.last_received = now
        window = session.incoming
        window.append(now)
        while window and now - window[0] > 1.0:
            window.popleft()
        if len(window) > self.max_incoming:
            session.close(1008, "Too many requests")
            return False
        return True

    async def on_text(self, session: Session, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError as exc:
            session.send_control(self.json({"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None}))
            return
        if not isinstance(req, dict):
            session.send_control(self.json({"error": {"code": 2, "msg": "Invalid request: expected an object"}, "id": None}))
            return
        req_id = req.get("id")
        if type(req_id) is not int or req_id < 0:
            session.send_control(self.json({"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}, "id": None}))
            return
        method = req.get("method")
        params = req.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            names = sorted(f"{s.lower()}@{ch}" for _, ch, s in session.subs)
            session.send_control(self.json({"result": names, "id": req_id}))
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            session.send_control(self.json({"error": {"code": 2, "msg": f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"}, "id": req_id}))
            return
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            session.send_control(self.json({"error": {"code": 2, "msg": "Invalid request: params must be a list of strings"}, "id": req_id}))
            return
        streams = [self._stream(p, trading=method == "SUBSCRIBE") for p in params]
        if any(s is None for s in streams):
            bad = next(p for p, s in zip(params, streams) if s is None)
            session.send_control(self.json({"error": {"code": 2, "msg": f"Invalid request: invalid stream name `{bad}`"}, "id": req_id}))
            return
        if method == "SUBSCRIBE":
            if len(session.subs | set(streams)) > self.max_streams:
                # As observed on the venue: the error, then the connection is closed, losing every stream on it.
                session.send_control(self.json({"error": {"code": 4, "msg": "Too many subscriptions"}, "id": req_id}))
                session.close(1008, "Invalid request")
                return
            # Acknowledge first: data for a new stream follows its acknowledgement.
            session.send_control(self.json({"result": None, "id": req_id}))
            for stream in streams:
                self.subscribe(session, stream)
        else:
            for stream in streams:
                self.unsubscribe(session, stream)
            session.send_control(self.json({"result": None, "id": req_id}))

    def on_pong(self, session: Session, payload: bytes) -> None:
        # An unsolicited pong keeps nothing alive: only the echo of our ping's payload counts.
        if session.pending_ping is not None and payload == session.pending_ping[0]:
            session.pending_ping = None

    def housekeep(self, session: Session, now: float) -> None:
        if self.faults.stalled(self.name):
            return
        if self.clock() - session.opened_at >= self.limits.binance_max_connection_age:
            session.close(1000, "connection reached 24h limit")
            return
        if session.pending_ping is not None:
            if now - session.pending_ping[1] > self.pong_timeout:
                session.close(1008, "pong timeout")
            return
        if now - session.last_ping >= self.ping_interval:
            payload = str(self.now_ms()).encode()
            session.pending_ping = (payload, now)
            session.last_ping = now
            session.send_ping(payload)

    def encode(self, venue: ExchangeName, channel: str, symbol: str, now_ms: int, *, snapshot: bool = False) -> tuple[str, int]:
        m = self.market
        q = m.quotes[symbol]
        if channel == "bookTicker":
            key = q.update_id
            b, bq, a, aq = m.book_texts(symbol, q)
            if venue is _SPOT:
                data = f'{{"u":{key},"s":"{symbol}","b":"{b}","B":"{bq}","a":"{a}","A":"{aq}"}}'
            else:
                ts = m.next_ts(channel, symbol, now_ms)
                data = f'{{"e":"bookTicker","u":{key},"s":"{symbol}","b":"{b}","B":"{bq}","a":"{a}","A":"{aq}","T":{ts - 1},"E":{ts}}}'
        else:
            key = m.next_ts(channel, symbol, now_ms)
            mark, index = m.price(symbol, q.mark), m.price(symbol, q.index)
            data = (
                f'{{"e":"markPriceUpdate","E":{key},"s":"{symbol}","p":"{mark}","ap":"{mark}","P":"{mark}",'
                f'"i":"{index}","r":"{q.funding_rate:.8f}","T":{q.next_funding_ms}}}'
            )
        return data, key

    def wrap(self, session: Session, channel: str, symbol: str, data: str) -> str:
        if session.combined:
            return f'{{"stream":"{symbol.lower()}@{channel}","data":{data}}}'
        return data

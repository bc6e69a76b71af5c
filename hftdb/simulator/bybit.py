"""Bybit v5 spot and linear markets (``api.bybit.com`` / ``stream.bybit.com``), simulated on one port.

REST: ``/v5/market/instruments-info?category=spot|linear`` (linear pages with ``limit`` 1..1000, default 500,
and an opaque ``cursor``; spot is not paginated, as documented), ``/v5/market/tickers``, ``/v5/market/time``,
and signed ``/v5/account/wallet-balance``: headers ``X-BAPI-API-KEY``, ``X-BAPI-TIMESTAMP``,
``X-BAPI-RECV-WINDOW`` (default 5000) and ``X-BAPI-SIGN``, the hex HMAC-SHA256 of timestamp + key + recv window +
query string. Errors come as HTTP 200 with a non-zero ``retCode``, as on the real API.

Websocket: ``/v5/public/spot`` and ``/v5/public/linear``; ``{"op": "subscribe", "args": [...]}`` with topics
``orderbook.1.<symbol>`` (snapshot on subscribe, then deltas) and, on linear, ``tickers.<symbol>`` (snapshot,
then deltas of the changed fields); ``{"op": "ping"}`` is answered ``{"success": true, "ret_msg": "pong", ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

from aiohttp import web

from ..models import ExchangeName
from .core import Host, Session

__all__ = ["BybitHost"]

_SPOT = ExchangeName.BYBIT_SPOT
_LINEAR = ExchangeName.BYBIT_LINEAR
_CATEGORY = {"spot": _SPOT, "linear": _LINEAR}


class BybitHost(Host):
    """Bybit's spot and linear markets: REST and public websockets."""

    id_channels = frozenset({"orderbook.1"})
    tick = 0.5

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        lim = self.limits
        self.tick = max(0.01, min(0.5, lim.bybit_resnapshot_after / 4, lim.bybit_idle_timeout / 4))
        self._book_changed: dict[tuple[ExchangeName, str], float] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v5/market/instruments-info", self._instruments_info),
            web.get("/v5/market/tickers", self._tickers),
            web.get("/v5/market/time", self._server_time),
            web.get("/v5/account/wallet-balance", self._wallet_balance),
            web.get("/v5/public/spot", self._ws_spot),
            web.get("/v5/public/linear", self._ws_linear),
        ]

    def _response(self, result: object, ret_code: int = 0, ret_msg: str = "OK") -> web.Response:
        body = {"retCode": ret_code, "retMsg": ret_msg, "result": result, "retExtInfo": {}, "time": self.now_ms()}
        return web.json_response(body, dumps=self.json)

    def _params_error(self, msg: str) -> web.Response:
        return self._response({}, 10001, msg)

    # -- REST ------------------------------------------------------------------------------------------

    async def _server_time(self, request: web.Request) -> web.Response:
        ns = int(self.clock() * 1e9)
        return self._response({"timeSecond": str(ns // 10**9), "timeNano": str(ns)})

    async def _instruments_info(self, request: web.Request) -> web.Response:
        q = request.query
        venue = _CATEGORY.get(q.get("category", ""))
        if venue is None or venue not in self.markets:
            return self._params_error("params error: category is invalid")
        market = self.markets[venue]
        items = [i for i in market.instruments if "symbol" not in q or i.symbol == q["symbol"]]
        cursor_out = ""
        if venue is _LINEAR:
            try:
                limit = int(q.get("limit", "500"))
            except ValueError:
                return self._params_error("params error: limit is invalid")
            if not 1 <= limit <= 1000:
                return self._params_error("params error: limit must be between 1 and 1000")
            start = 0
            if q.get("cursor"):
                start = _decode_cursor(q["cursor"])
                if start is None or start > len(items):
                    return self._params_error("params error: cursor is invalid")
            page = items[start:start + limit]
            if start + limit < len(items):
                cursor_out = _encode_cursor(start + limit)
            items = page
        rows = []
        for inst in items:
            row = {
                "symbol": inst.symbol,
                "baseCoin": inst.base,
                "quoteCoin": inst.quote,
                "status": "Trading" if inst.trading else "Closed",
                "priceFilter": {"tickSize": inst.tick},
            }
            if venue is _SPOT:
                row.update(
                    innovation="0",
                    marginTrading="both",
                    lotSizeFilter={"basePrecision": inst.lot, "quotePrecision": "0.00000001", "minOrderQty": inst.lot,
                                   "maxOrderQty": "9000000", "minOrderAmt": "1", "maxOrderAmt": "4000000"},
                )
            else:
                row.update(
                    contractType="LinearPerpetual",
                    launchTime="1585526400000",
                    deliveryTime="0",
                    deliveryFeeRate="",
                    priceScale=str(inst.price_decimals),
                    lotSizeFilter={"maxOrderQty": "1190.000", "minOrderQty": inst.lot, "qtyStep": inst.lot,
                                   "postOnlyMaxOrderQty": "1190.000", "maxMktOrderQty": "500.000", "minNotionalValue": "5"},
                    unifiedMarginTrade=True,
                    fundingInterval=480,
                    settleCoin=inst.quote,
                )
            rows.append(row)
        return self._response({"category": q["category"], "list": rows, "nextPageCursor": cursor_out})

    async def _tickers(self, request: web.Request) -> web.Response:
        q = request.query
        venue = _CATEGORY.get(q.get("category", ""))
        if venue is None:
            return self._params_error("params error: category is invalid")
        market = self.markets[venue]
        rows = [
            self._ticker_fields(venue, i.symbol, full=True)
            for i in market.instruments
            if "symbol" not in q or i.symbol == q["symbol"]
        ]
        return self._response({"category": q["category"], "list": rows})

    def _check_signed(self, request: web.Request) -> web.Response | None:
        h = request.headers
        key = h.get("X-BAPI-API-KEY", "")
        if key != self.credentials.api_key:
            return self._response({}, 10003, "API key is invalid.")
        ts, sign = h.get("X-BAPI-TIMESTAMP", ""), h.get("X-BAPI-SIGN", "")
        recv_window = h.get("X-BAPI-RECV-WINDOW", "5000")
        if not ts.isdigit() or not sign or not recv_window.isdigit():
            return self._params_error("invalid request, please check your timestamp and sign")
        now = self.now_ms()
        if int(ts) >= now + 1000 or now - int(ts) > int(recv_window):
            return self._response(
                {}, 10002,
                f"invalid request, please check your server timestamp or recv_window param. req_timestamp[{ts}],"
                f"server_timestamp[{now}],recv_window[{recv_window}]",
            )
        origin = ts + key + recv_window + request.query_string
        expected = hmac.new(self.credentials.api_secret.encode(), origin.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sign.lower()):
            return self._response({}, 10004, f"error sign! origin_string[{origin}]")
        return None

    async def _wallet_balance(self, request: web.Request) -> web.Response:
        if (refused := self._check_signed(request)) is not None:
            return refused
        if request.query.get("accountType") not in ("UNIFIED", "CONTRACT", "SPOT"):
            return self._params_error("accountType only support UNIFIED.")
        coins = [
            {"coin": "USDT", "equity": "9684.46", "usdValue": "9684.46", "walletBalance": "9684.46297164",
             "availableToWithdraw": "9556.60", "locked": "127.85731614", "unrealisedPnl": "0", "cumRealisedPnl": "0"},
            {"coin": "BTC", "equity": "0.00102964", "usdValue": "36.70", "walletBalance": "0.00102964",
             "availableToWithdraw": "0.00102964", "locked": "0", "unrealisedPnl": "0", "cumRealisedPnl": "-0.00000973"},
        ]
        wallet = {"accountType": request.query["accountType"], "totalEquity": "9721.16", "totalWalletBalance": "9721.16",
                  "totalAvailableBalance": "9556.60", "coin": coins}
        return self._response({"list": [wallet]})

    def error_body(self, status: int, request: web.Request) -> dict | str:
        if status == 403:
            return "access too frequent"  # the IP limit: a bare 403, not the JSON envelope
        if status == 429:
            return {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {}, "time": self.now_ms()}
        return {"retCode": 10016, "retMsg": "Internal server error.", "result": {}, "retExtInfo": {}, "time": self.now_ms()}

    # -- websocket -------------------------------------------------------------------------------------

    async def _ws_spot(self, request: web.Request) -> web.WebSocketResponse:
        return await self.serve_ws(request, _SPOT)

    async def _ws_linear(self, request: web.Request) -> web.WebSocketResponse:
        return await self.serve_ws(request, _LINEAR)

    def _reply(self, session: Session, req: dict, op: str, success: bool, ret_msg: str) -> None:
        body = {"success": success, "ret_msg": ret_msg, "conn_id": session.conn_id}
        if "req_id" in req:
            body["req_id"] = req["req_id"]
        body["op"] = op
        session.send_control(self.json(body))

    def _topic(self, venue: ExchangeName, topic: str, *, trading: bool = True) -> tuple[ExchangeName, str, str] | str:
        kind, _, rest = topic.partition(".")
        if kind == "orderbook":
            depth, _, symbol = rest.partition(".")
            channel = f"orderbook.{depth}"
        else:
            channel, symbol = kind, rest
        books, funding = self.channels[venue]
        if channel not in books + funding:
            return f"error:handler not found,topic:{topic}"
        market = self.markets[venue]
        if not (market.trading(symbol) if trading else symbol in market.by_symbol):
            return f"Invalid symbol :[{topic}]"
        return (venue, channel, symbol)

    async def on_text(self, session: Session, text: str) -> None:
        venue = session.venue
        assert venue is not None
        try:
            req = json.loads(text)
            op = req.get("op")
        except (ValueError, AttributeError):
            session.send_control(self.json({"success": False, "ret_msg": "error:json unmarshal failed", "conn_id": session.conn_id, "op": ""}))
            return
        if op == "ping":
            session.last_client_ping = session.last_received
            if not self.faults.stalled(self.name):
                self._reply(session, req, "ping", True, "pong")
            return
        if op not in ("subscribe", "unsubscribe"):
            self._reply(session, req, str(op), False, f"error:handler not found,op:{op}")
            return
        args = req.get("args")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            self._reply(session, req, op, False, "error:args must be a list of topics")
            return
        if venue is _SPOT and len(args) > self.limits.bybit_spot_max_args_per_request:
            self._reply(session, req, op, False, f"args size >{self.limits.bybit_spot_max_args_per_request}")
            return
        streams = []
        for topic in args:
            parsed = self._topic(venue, topic, trading=op == "subscribe")
            if isinstance(parsed, str):
                self._reply(session, req, op, False, parsed)
                return
            streams.append(parsed)
        if op == "unsubscribe":
            for stream in streams:
                self.unsubscribe(session, stream)
            self._reply(session, req, op, True, "")
            return
        for topic, stream in zip(args, streams):
            if stream in session.subs:
                self._reply(session, req, op, False, f"error:already subscribed,topic:{topic}")
                return
        if venue is _LINEAR:
            used = sum(len(_topic_name(s)) for s in session.subs) + sum(len(a) for a in args)
            if used > self.limits.bybit_linear_max_args_chars:
                self._reply(session, req, op, False, f"error:args length {used} exceeds {self.limits.bybit_linear_max_args_chars}")
                return
        self._reply(session, req, op, True, "subscribe")
        now_ms = self.now_ms()
        for stream in streams:
            self.subscribe(session, stream)
            self._send_snapshot(session, stream, now_ms)

    def _send_snapshot(self, session: Session, stream: tuple[ExchangeName, str, str], now_ms: int) -> None:
        venue, channel, symbol = stream
        text, key = self.encode(venue, channel, symbol, now_ms, snapshot=True)
        session.send_data(text, stream, key)
        session.snapshot_at[stream] = _loop_time()

    def housekeep(self, session: Session, now: float) -> None:
        if self.faults.stalled(self.name):
            return
        if now - max(session.last_client_ping, session.last_sent) > self.limits.bybit_idle_timeout:
            session.close(1000, "idle")
            return
        # A level-1 book that has not changed for a while is pushed again as a snapshot with the same "u".
        after = self.limits.bybit_resnapshot_after
        now_ms = self.now_ms()
        for stream in list(session.subs):
            venue, channel, symbol = stream
            if channel != "orderbook.1" or not self.markets[venue].trading(symbol):
                continue
            last = max(self._book_changed.get((venue, symbol), 0.0), session.snapshot_at.get(stream, 0.0))
            if now - last >= after:
                self._send_snapshot(session, stream, now_ms)

    def _ticker_fields(self, venue: ExchangeName, symbol: str, *, full: bool) -> dict:
        m = self.markets[venue]
        q = m.quotes[symbol]
        fields = {
            "symbol": symbol,
            "bid1Price": m.price(symbol, q.bid),
            "bid1Size": m.qty(symbol, q.bid_qty),
            "ask1Price": m.price(symbol, q.ask),
            "ask1Size": m.qty(symbol, q.ask_qty),
            "fundingRate": f"{q.funding_rate:.6f}",
            "markPrice": m.price(symbol, q.mark),
            "indexPrice": m.price(symbol, q.index),
        }
        if full:
            last = m.price(symbol, q.bid)
            fields.update(
                tickDirection="ZeroPlusTick", price24hPcnt="0.0012", lastPrice=last, prevPrice24h=last,
                highPrice24h=m.price(symbol, q.ask), lowPrice24h=m.price(symbol, q.bid), prevPrice1h=last,
                openInterest="492373.72", openInterestValue="32824881841.75", turnover24h="4936790807.6521",
                volume24h="73191.3870", fundingIntervalHour="8", fundingCap="0.005",
                nextFundingTime=str(q.next_funding_ms or (self.now_ms() // 28_800_000 + 1) * 28_800_000),
            )
        return fields

    def encode(self, venue: ExchangeName, channel: str, symbol: str, now_ms: int, *, snapshot: bool = False) -> tuple[str, int]:
        m = self.markets[venue]
        q = m.quotes[symbol]
        kind = "snapshot" if snapshot else "delta"
        if channel == "orderbook.1":
            if not snapshot:
                self._book_changed[(venue, symbol)] = _loop_time()
            p, z = m.price, m.qty
            bq, aq = z(symbol, q.bid_qty), z(symbol, q.ask_qty)
            if snapshot or q.bid == q.prev_bid:
                b = f'[["{p(symbol, q.bid)}","{bq}"]]'
            else:
                b = f'[["{p(symbol, q.prev_bid)}","0"],["{p(symbol, q.bid)}","{bq}"]]'
            if snapshot or q.ask == q.prev_ask:
                a = f'[["{p(symbol, q.ask)}","{aq}"]]'
            else:
                a = f'[["{p(symbol, q.prev_ask)}","0"],["{p(symbol, q.ask)}","{aq}"]]'
            u = q.update_id
            text = (
                f'{{"topic":"orderbook.1.{symbol}","type":"{kind}","ts":{now_ms},'
                f'"data":{{"s":"{symbol}","b":{b},"a":{a},"u":{u},"seq":{u * 7 + 3}}},"cts":{now_ms - 1}}}'
            )
            return text, u
        ts = m.next_ts(channel, symbol, now_ms)
        data = self.json(self._ticker_fields(venue, symbol, full=snapshot))
        return f'{{"topic":"tickers.{symbol}","type":"{kind}","data":{data},"cs":{q.update_id * 7 + 3},"ts":{ts}}}', ts


def _topic_name(stream: tuple[ExchangeName, str, str]) -> str:
    return f"{stream[1]}.{stream[2]}"


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset={offset}".encode()).decode()


def _decode_cursor(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    name, _, value = text.partition("=")
    return int(value) if name == "offset" and value.isdigit() else None


def _loop_time() -> float:
    return asyncio.get_running_loop().time()

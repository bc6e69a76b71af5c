"""OKX v5 spot and swap markets (``www.okx.com`` / ``ws.okx.com``), simulated on one port.

REST: ``/api/v5/public/instruments?instType=SPOT|SWAP``, ``/api/v5/public/funding-rate``,
``/api/v5/public/time`` and signed ``/api/v5/account/balance``: headers ``OK-ACCESS-KEY``,
``OK-ACCESS-TIMESTAMP`` (ISO 8601 with milliseconds, within 30 s), ``OK-ACCESS-PASSPHRASE`` and
``OK-ACCESS-SIGN``, the base64 HMAC-SHA256 of timestamp + method + request path (with its query) + body.
Authentication failures are HTTP 401 with OKX's ``{"msg", "code"}`` body.

Websocket: ``/ws/v5/public``, ``{"op": "subscribe", "args": [{"channel": ..., "instId": ...}]}`` acknowledged
once per arg; channels ``tickers``, ``bbo-tbt`` (``seqId`` is the update id) and ``funding-rate`` (swaps). The
text ``ping`` is answered ``pong``; a connection that has had nothing pushed for 30 s is closed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime

from aiohttp import web

from ..models import ExchangeName
from .core import Host, Session

__all__ = ["OkxHost"]

_SPOT = ExchangeName.OKX_SPOT
_SWAP = ExchangeName.OKX_SWAP
_INST_TYPE = {"SPOT": _SPOT, "SWAP": _SWAP}


class OkxHost(Host):
    """OKX's spot and swap markets: REST and the public websocket."""

    id_channels = frozenset({"bbo-tbt"})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tick = max(0.01, min(0.5, self.limits.okx_idle_timeout / 4))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v5/public/instruments", self._instruments),
            web.get("/api/v5/public/funding-rate", self._funding_rate),
            web.get("/api/v5/public/time", self._server_time),
            web.get("/api/v5/account/balance", self._balance),
            web.get("/ws/v5/public", self._ws_public),
        ]

    def _ok(self, data: list) -> web.Response:
        return web.json_response({"code": "0", "msg": "", "data": data}, dumps=self.json)

    def _fail(self, status: int, code: str, msg: str) -> web.Response:
        return web.json_response({"msg": msg, "code": code}, status=status, dumps=self.json)

    def _venue_of(self, inst_id: str) -> ExchangeName | None:
        for venue, market in self.markets.items():
            if inst_id in market.by_symbol:
                return venue
        return None

    # -- REST ------------------------------------------------------------------------------------------

    async def _server_time(self, request: web.Request) -> web.Response:
        return self._ok([{"ts": str(self.now_ms())}])

    async def _instruments(self, request: web.Request) -> web.Response:
        inst_type = request.query.get("instType", "")
        if not inst_type:
            return web.json_response({"code": "50014", "msg": "Parameter instType can not be empty.", "data": []}, status=400)
        venue = _INST_TYPE.get(inst_type)
        if venue is None or venue not in self.markets:
            return web.json_response({"code": "51000", "msg": "Parameter instType error", "data": []}, status=400)
        wanted = request.query.get("instId")
        rows = []
        for inst in self.markets[venue].instruments:
            if wanted is not None and inst.symbol != wanted:
                continue
            row = {
                "alias": "", "category": "1", "expTime": "", "instId": inst.symbol, "instType": inst_type,
                "lever": "10" if venue is _SPOT else "100", "listTime": "1611916828000", "maxIcebergSz": "9999999999",
                "maxLmtSz": "9999999999", "maxMktSz": "1000000", "optType": "", "state": "live" if inst.trading else "suspend", "stk": "",
                "tickSz": inst.tick,
            }
            if venue is _SPOT:
                row.update(baseCcy=inst.base, quoteCcy=inst.quote, ctMult="", ctType="", ctVal="", ctValCcy="",
                           instFamily="", uly="", settleCcy="", lotSz=inst.lot, minSz=inst.lot)
            else:
                family = f"{inst.base}-{inst.quote}"
                row.update(baseCcy="", quoteCcy="", ctMult="1", ctType="linear", ctVal=inst.lot, ctValCcy=inst.base,
                           instFamily=family, uly=family, settleCcy=inst.quote, lotSz="1", minSz="1")
            rows.append(row)
        return self._ok(rows)

    async def _funding_rate(self, request: web.Request) -> web.Response:
        inst_id = request.query.get("instId", "")
        if not inst_id:
            return web.json_response({"code": "50014", "msg": "Parameter instId can not be empty.", "data": []}, status=400)
        if self._venue_of(inst_id) is not _SWAP:
            return web.json_response({"code": "51001", "msg": "Instrument ID does not exist.", "data": []}, status=400)
        return self._ok([self._funding_row(inst_id, self.now_ms())])

    def _check_signed(self, request: web.Request) -> web.Response | None:
        h = request.headers
        for name, code in (("OK-ACCESS-KEY", "50103"), ("OK-ACCESS-PASSPHRASE", "50104"),
                           ("OK-ACCESS-SIGN", "50106"), ("OK-ACCESS-TIMESTAMP", "50107")):
            if not h.get(name):
                return self._fail(401, code, f'Request header "{name}" cannot be empty.')
        if h["OK-ACCESS-KEY"] != self.credentials.api_key:
            return self._fail(401, "50111", "Invalid OK-ACCESS-KEY")
        ts = h["OK-ACCESS-TIMESTAMP"]
        try:
            when = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return self._fail(401, "50112", "Invalid OK-ACCESS-TIMESTAMP")
        if abs(self.clock() - when) > 30:
            return self._fail(401, "50102", "Timestamp request expired")
        if h["OK-ACCESS-PASSPHRASE"] != self.credentials.passphrase:
            return self._fail(401, "50105", 'Request header "OK-ACCESS-PASSPHRASE" incorrect.')
        prehash = ts + request.method + request.raw_path
        digest = hmac.new(self.credentials.api_secret.encode(), prehash.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), h["OK-ACCESS-SIGN"]):
            return self._fail(401, "50113", "Invalid Sign")
        return None

    async def _balance(self, request: web.Request) -> web.Response:
        if (refused := self._check_signed(request)) is not None:
            return refused
        now = str(self.now_ms())
        details = [
            {"ccy": "USDT", "availBal": "100.52768569797846", "cashBal": "120.52768569797846", "frozenBal": "20",
             "eq": "120.52768569797846", "uTime": now},
            {"ccy": "BTC", "availBal": "0.0000000051", "cashBal": "0.0000000051", "frozenBal": "0",
             "eq": "0.0000000051", "uTime": now},
        ]
        return self._ok([{"adjEq": "", "details": details, "totalEq": "120.56", "uTime": now}])

    def error_body(self, status: int, request: web.Request) -> dict:
        if status == 429:
            return {"msg": "Too Many Requests", "code": "50011"}
        if status >= 500:
            return {"msg": "Service temporarily unavailable. Please try again later.", "code": "50001"}
        return {"msg": "Request failed", "code": "50000"}

    # -- websocket -------------------------------------------------------------------------------------

    async def _ws_public(self, request: web.Request) -> web.WebSocketResponse:
        return await self.serve_ws(request)

    def _event(self, session: Session, req_id: object, body: dict) -> None:
        out = {"id": req_id} if req_id is not None else {}
        out.update(body)
        out["connId"] = session.conn_id[:8]
        session.send_control(self.json(out))

    async def on_text(self, session: Session, text: str) -> None:
        if text == "ping":
            if not self.faults.stalled(self.name):
                session.send_control("pong")
            return
        try:
            req = json.loads(text)
            op, args, req_id = req.get("op"), req.get("args"), req.get("id")
        except (ValueError, AttributeError):
            self._event(session, None, {"event": "error", "code": "60012", "msg": f"Invalid request: {text[:200]}"})
            return
        if op not in ("subscribe", "unsubscribe", "login"):
            self._event(session, req_id, {"event": "error", "code": "60019", "msg": f"Invalid op: {op}"})
            return
        now = session.last_received
        window = session.requests
        window.append(now)
        while window and now - window[0] > 3600:
            window.popleft()
        if len(window) > self.limits.okx_max_requests_per_hour:
            self._event(session, req_id, {"event": "error", "code": "60014", "msg": "Requests too frequent."})
            return
        if len(text.encode()) > self.limits.okx_max_request_bytes:
            self._event(session, req_id, {"event": "error", "code": "60012", "msg": "Invalid request: the request exceeds 64 KB"})
            return
        if op == "login":
            self._event(session, req_id, {"event": "error", "code": "60028", "msg": "The current operation is not supported by this URL. Please use the correct WebSocket URL for the operation."})
            return
        if not isinstance(args, list) or not args or not all(isinstance(a, dict) for a in args):
            self._event(session, req_id, {"event": "error", "code": "60013", "msg": "Invalid args"})
            return
        streams = []
        for arg in args:
            channel, inst_id = arg.get("channel"), arg.get("instId")
            venue = self._venue_of(inst_id) if isinstance(inst_id, str) else None
            if venue is not None and op == "subscribe" and not self.markets[venue].trading(inst_id):
                venue = None  # a suspended instrument cannot be subscribed, only unsubscribed
            if venue is None or channel not in sum(self.channels[venue], ()):
                self._event(session, req_id, {
                    "event": "error", "code": "60018",
                    "msg": f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist. Please use the correct URL, channel and parameters referring to API document.",
                })
                return
            streams.append((venue, channel, inst_id))
        for arg, stream in zip(args, streams):
            self._event(session, req_id, {"event": op, "arg": {"channel": arg["channel"], "instId": arg["instId"]}})
            if op == "subscribe":
                self.subscribe(session, stream)
            else:
                self.unsubscribe(session, stream)

    def housekeep(self, session: Session, now: float) -> None:
        if self.faults.stalled(self.name):
            return
        if now - session.last_sent > self.limits.okx_idle_timeout:
            session.close(4004, "No data received in 30s.")

    def _funding_row(self, inst_id: str, now_ms: int, ts: int | None = None) -> dict:
        q = self.markets[_SWAP].quotes[inst_id]
        settle = q.next_funding_ms or (now_ms // 28_800_000 + 1) * 28_800_000
        return {
            "formulaType": "noRate", "fundingRate": f"{q.funding_rate:.16f}", "fundingTime": str(settle),
            "impactValue": "", "instId": inst_id, "instType": "SWAP", "interestRate": "0", "maxFundingRate": "0.00375",
            "method": "current_period", "minFundingRate": "-0.00375", "nextFundingRate": "",
            "nextFundingTime": str(settle + 28_800_000), "premium": "0.0001", "settFundingRate": "0.0001",
            "settState": "settled", "ts": str(ts if ts is not None else now_ms),
        }

    def encode(self, venue: ExchangeName, channel: str, symbol: str, now_ms: int, *, snapshot: bool = False) -> tuple[str, int]:
        m = self.markets[venue]
        q = m.quotes[symbol]
        arg = f'{{"channel":"{channel}","instId":"{symbol}"}}'
        if channel == "bbo-tbt":
            row = (
                f'{{"asks":[["{m.price(symbol, q.ask)}","{m.qty(symbol, q.ask_qty)}","0","3"]],'
                f'"bids":[["{m.price(symbol, q.bid)}","{m.qty(symbol, q.bid_qty)}","0","2"]],'
                f'"ts":"{now_ms}","seqId":{q.update_id}}}'
            )
            return f'{{"arg":{arg},"data":[{row}]}}', q.update_id
        ts = m.next_ts(channel, symbol, now_ms)
        if channel == "tickers":
            last, bid, ask = m.price(symbol, q.bid), m.price(symbol, q.bid), m.price(symbol, q.ask)
            row = self.json({
                "instType": "SPOT" if venue is _SPOT else "SWAP", "instId": symbol, "last": last, "lastSz": "0.1",
                "askPx": ask, "askSz": m.qty(symbol, q.ask_qty), "bidPx": bid, "bidSz": m.qty(symbol, q.bid_qty),
                "open24h": last, "high24h": ask, "low24h": bid, "sodUtc0": last, "sodUtc8": last,
                "volCcy24h": "525802090.6", "vol24h": "17602.1", "ts": str(ts),
            })
        else:
            row = self.json(self._funding_row(symbol, now_ms, ts))
        return f'{{"arg":{arg},"data":[{row}]}}', ts

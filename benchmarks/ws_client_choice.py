"""Which websocket client should the adapters use? Measure messages/s received on loopback.

The server is a bare asyncio protocol that answers the upgrade and then writes pre-encoded, unmasked text
frames as fast as the socket takes them, so it is never the bottleneck and both clients read identical bytes.
Each client connects, counts ``--messages`` frames (optionally decoding each with msgspec, as the parsers do)
and the run is timed from the first frame to the last. The median of ``--runs`` runs is reported.

    .venv/bin/python benchmarks/ws_client_choice.py --messages 300000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import statistics
import struct
import time

import msgspec

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MESSAGE = (
    b'{"stream":"btcusdt@bookTicker","data":{"u":400900217,"s":"BTCUSDT","b":"25.35190000",'
    b'"B":"31.21000000","a":"25.36520000","A":"40.66000000"}}'
)
_decode = msgspec.json.Decoder().decode


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    if n < 65536:
        return bytes([0x81, 126]) + struct.pack("!H", n) + payload
    return bytes([0x81, 127]) + struct.pack("!Q", n) + payload


class _BlastServer(asyncio.Protocol):
    """Answer one websocket upgrade, then write ``count`` frames and a close frame."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.buf is None:
            return  # client frames (pongs, close) after the upgrade: ignored
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        key = next(
            line.split(b":", 1)[1].strip()
            for line in self.buf.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        self.buf = None  # type: ignore[assignment]
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        chunk = _frame(_MESSAGE) * 1000
        full, rest = divmod(self.count, 1000)
        for _ in range(full):
            self.transport.write(chunk)
        self.transport.write(_frame(_MESSAGE) * rest)
        self.transport.write(b"\x88\x02\x03\xe8")  # close 1000


async def _run_websockets(url: str, count: int, decode: bool) -> float:
    from websockets.asyncio.client import connect

    n = 0
    async with connect(url, max_size=None, compression=None, ping_interval=None) as ws:
        first = await ws.recv(decode=False)
        t0 = time.perf_counter()
        n = 1
        if decode:
            _decode(first)
        while n < count:
            msg = await ws.recv(decode=False)
            if decode:
                _decode(msg)
            n += 1
        elapsed = time.perf_counter() - t0
    return (count - 1) / elapsed


async def _run_picows(url: str, count: int, decode: bool) -> float:
    from picows import WSListener, WSMsgType, ws_connect

    done = asyncio.get_running_loop().create_future()

    class Listener(WSListener):
        n = 0
        t0 = 0.0

        def on_ws_frame(self, transport, frame) -> None:  # noqa: ANN001
            if frame.msg_type is not WSMsgType.TEXT:
                return
            payload = frame.get_payload_as_bytes()
            if decode:
                _decode(payload)
            self.n += 1
            if self.n == 1:
                self.t0 = time.perf_counter()
            elif self.n == count and not done.done():
                done.set_result((count - 1) / (time.perf_counter() - self.t0))

    transport, _ = await ws_connect(Listener, url, max_frame_size=1 << 24)
    try:
        return await asyncio.wait_for(done, timeout=120)
    finally:
        transport.disconnect()
        await transport.wait_disconnected()


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _BlastServer(args.messages), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"ws://127.0.0.1:{port}/stream"
    try:
        for decode in (False, True):
            for name, fn in (("websockets", _run_websockets), ("picows", _run_picows)):
                rates = [await fn(url, args.messages, decode) for _ in range(args.runs)]
                print(
                    f"{name:<10} decode={str(decode):<5} median {statistics.median(rates):>12,.0f} msg/s  "
                    f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})"
                )
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-uvloop", action="store_true", help="run on the default asyncio loop")
    args = parser.parse_args()
    if args.no_uvloop:
        asyncio.run(_main(args))
    else:
        import uvloop

        uvloop.run(_main(args))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Replay server: the MLink handshake of the simulator, then pre-generated frames at full speed.

Usage (the benchmark starts it; see ``bench_e2e.py``)::

    python bench/replay_server.py --map '{"A": "DIR/A.jsonf", ...}' [--types 4] [--port 0]
        [--frames-per-message 16] [--max-message-bytes 65536] [--loop-seconds 0]

Per connection, exactly like ``capture.sim.server``: MLinkAdmin ``LoggedOn`` at once; for each
MLinkStream an MLinkStreamAck (``queryID`` echoed), then CheckPt ``Begin``, ``Active``,
``Complete`` (empty snapshot).  Once ``--types`` streams are open, the frames of the
``.jsonf`` file mapped to the connection's ``stripeFilter`` are sent as fast as the socket
takes them, ``--frames-per-message`` whole frames (at most ``--max-message-bytes``) per binary
WebSocket message, then an MLinkHeartbeat every second until the client leaves.  With
``--loop-seconds`` the file is replayed over and over for that long (soak runs).

To keep this process off the CPU the daemon needs, the data messages are pre-built at start-up
as complete WebSocket frames (FIN, opcode binary, unmasked: the bytes wsproto produces for a
server's ``send_message``) and written straight to the TCP stream, in chunks of about 256 KiB,
under trio-websocket's send lock.  Control messages go through ``send_message``.

Reports JSON lines on stdout: ``listening`` (port), ``sending`` (stripe, ``t_first_ns`` taken
just before the first data byte is written), ``sent`` (``t_last_ns`` after the last one was
accepted by the kernel, frames, bytes, messages).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio_websocket as tw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gen_stream import header_json  # bench/ is sys.path[0] when run as a script

from capture.frames import encode_frame
from capture.sim.config import SimConfig
from capture.sim.market import encode_message
from capture.sim.server import ADMIN, CHECKPT, HEARTBEAT, STREAM_ACK, StreamRequest, parse_inbound
from capture.sim.tls import server_context

CHUNK_BYTES = 256 * 1024
SIM = SimConfig()


def frame_ends(data: bytes) -> list[int]:
    """End offset of every frame of a JSONFramed byte string (validated by length)."""
    ends: list[int] = []
    pos, n = 0, len(data)
    while pos < n:
        if data[pos : pos + 3] not in (b"\r\nJ", b"\r\nP"):
            raise ValueError(f"no frame header at byte {pos}")
        pos += 14 + int(data[pos + 8 : pos + 14])
        ends.append(pos)
    if pos != n:
        raise ValueError("truncated last frame")
    return ends


def pack(data: bytes, frames_per_message: int, max_message_bytes: int) -> list[tuple[int, int]]:
    """(start, end) of each WebSocket message: whole consecutive frames, like the simulator."""
    out: list[tuple[int, int]] = []
    start = prev = 0
    frames = 0
    for end in frame_ends(data):
        if frames and (frames >= frames_per_message or end - start > max_message_bytes):
            out.append((start, prev))
            start, frames = prev, 0
        frames += 1
        prev = end
    if frames:
        out.append((start, prev))
    return out


def ws_header(length: int) -> bytes:
    """Header of a final, unmasked, binary WebSocket frame (RFC 6455 §5.2)."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return b"\x82\x7e" + struct.pack("!H", length)
    return b"\x82\x7f" + struct.pack("!Q", length)


def build_chunks(
    data: bytes, frames_per_message: int, max_message_bytes: int
) -> tuple[list[bytes], int]:
    """The data as ready-to-write WebSocket bytes, ~CHUNK_BYTES per chunk; and message count."""
    messages = pack(data, frames_per_message, max_message_bytes)
    chunks: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for start, end in messages:
        parts.append(ws_header(end - start))
        parts.append(data[start:end])
        size += end - start
        if size >= CHUNK_BYTES:
            chunks.append(b"".join(parts))
            parts, size = [], 0
    if parts:
        chunks.append(b"".join(parts))
    return chunks, len(messages)


def control(mdef: Any, values: dict[str, Any]) -> bytes:
    now = time.time_ns()
    header = header_json(SIM, mdef.name, 0, 0, now, now)
    body = f'{{"header":{header},"message":{encode_message(mdef, values)}}}'.encode("ascii")
    return encode_frame(mdef.number, body)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Replay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.streams: dict[str, tuple[list[bytes], int, int, int]] = {}
        for stripe, path in json.loads(args.map).items():
            data = Path(path).read_bytes()
            chunks, messages = build_chunks(data, args.frames_per_message, args.max_message_bytes)
            self.streams[stripe] = (chunks, messages, len(frame_ends(data)), len(data))
        self._ids = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        self._ids += 1
        conn = f"c{self._ids:03d}"
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(10) as scope:  # a client that fails TLS never sends one
                request = await tw.wrap_server_stream(nursery, stream, max_message_size=1 << 20)
            if scope.cancelled_caught:
                emit("disconnected", conn=conn, error="no WebSocket upgrade within 10 s")
                nursery.cancel_scope.cancel()
                return
            ws = await request.accept()
            try:
                await self._session(conn, ws, stream)
            except (tw.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The client went away (a daemon restart): say so, keep serving the others.
                emit("disconnected", conn=conn, error=type(exc).__name__)
            finally:
                nursery.cancel_scope.cancel()

    async def _session(self, conn: str, ws: tw.WebSocketConnection, stream: Any) -> None:
        await ws.send_message(control(ADMIN, {"state": "LoggedOn", "detail": ""}))
        stripe: str | None = None
        subscribed: set[str] = set()
        while len(subscribed) < self.args.types:
            msg = await ws.get_message()
            data = msg.encode() if isinstance(msg, str) else msg
            for item in parse_inbound(data):
                obj = getattr(item, "obj", None)
                if obj is None or obj.get("header", {}).get("mTyp") != "MLinkStream":
                    continue
                req = StreamRequest.parse(obj.get("message") or {})
                stripe = stripe or req.stripe
                subscribed.add(str(req.msg_name_text))
                ack = {"sessionID": req.session_id, "queryID": req.query_id,
                       "msgName": req.msg_name_text, "result": "OK", "detail": ""}
                frames = [control(STREAM_ACK, ack)]
                for state in ("Begin", "Active", "Complete"):
                    values = {"sessionID": req.session_id, "queryID": req.query_id,
                              "state": state, "timestamp": time.time_ns()}
                    if state != "Begin":
                        values["numMessagesSent"] = 0
                    frames.append(control(CHECKPT, values))
                await ws.send_message(b"".join(frames))
        if stripe not in self.streams:
            emit("error", conn=conn, stripe=stripe, detail="no data mapped to this stripe")
            await trio.sleep_forever()
        assert stripe is not None
        chunks, messages, frames_n, size = self.streams[stripe]
        lock = ws._stream_lock  # serialise with trio-websocket's own writes (pongs, closes)
        deadline = time.monotonic() + self.args.loop_seconds
        passes = 0
        t_first = time.time_ns()
        emit("sending", conn=conn, stripe=stripe, t_first_ns=t_first)
        while True:
            for chunk in chunks:
                async with lock:
                    await stream.send_all(chunk)
            passes += 1
            if time.monotonic() >= deadline:
                break
        t_last = time.time_ns()
        emit("sent", conn=conn, stripe=stripe, t_first_ns=t_first, t_last_ns=t_last,
             passes=passes, frames=frames_n * passes, bytes=size * passes,
             messages=messages * passes)
        seq = 0
        while True:
            seq += 1
            await ws.send_message(control(HEARTBEAT, {"seqNum": seq, "timestamp": time.time_ns()}))
            await trio.sleep(1.0)


async def amain(args: argparse.Namespace) -> None:
    replay = Replay(args)
    listeners: Any = await trio.open_tcp_listeners(args.port, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    if args.tls_cert:  # wss://, as the real endpoints are
        ctx = server_context(Path(args.tls_cert), Path(args.tls_key))
        listeners = [trio.SSLListener(lst, ctx, https_compatible=True) for lst in listeners]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, replay.serve, listeners)
        emit("listening", port=port,
             streams={s: {"messages": v[1], "frames": v[2], "bytes": v[3]}
                      for s, v in replay.streams.items()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--map", required=True, help="JSON object: stripe -> .jsonf file")
    parser.add_argument("--types", type=int, default=4, help="streams to wait for")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--frames-per-message", type=int, default=SIM.frames_per_message)
    parser.add_argument("--max-message-bytes", type=int, default=SIM.max_message_bytes)
    parser.add_argument("--loop-seconds", type=float, default=0.0)
    parser.add_argument("--tls-cert", help="serve wss:// with this certificate (PEM)")
    parser.add_argument("--tls-key", help="its private key (PEM)")
    args = parser.parse_args()
    try:
        trio.run(amain, args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

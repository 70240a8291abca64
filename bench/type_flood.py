#!/usr/bin/env python3
"""A server that sends thousands of distinct unknown message types: open fds and RSS.

Usage::

    python bench/type_flood.py [--types 5000] [--max-open-types 64] [--seconds 20]

Runs the real daemon (one stripe, real threads, real Parquet) against a WebSocket server on
loopback that logs on, then sends one frame of each of ``--types`` distinct type names (50 per
message) and heartbeats; samples this process's open file descriptors and RSS every 0.1 s and
prints the peaks and the rows written.  Numbers are kept in docs/hostile-input.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capture.app import Daemon
from capture.config import Config
from capture.frames import encode_frame
from capture.memory import rss_bytes

KEY = "0f3c2a9e-6b1d-4c8e-9a7f-5d2e1b0c3a4f"
LOGGED_ON = encode_frame(3345, b'{"header":{"mTyp":"MLinkAdmin"},"message":{"state":"LoggedOn"}}')
BEAT = encode_frame(3368, b'{"header":{"mTyp":"MLinkHeartbeat"},"message":{"seqNum":1}}')


def frame(name: str) -> bytes:
    return encode_frame(0, b'{"header":{"mTyp":"%s"},"message":{"x":1}}' % name.encode())


async def serve(stream: trio.SocketStream, types: int) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    while not any(isinstance(e, Request) for e in ws.events()):
        ws.receive_data(bytes(await stream.receive_some(65536)))
    await stream.send_all(ws.send(AcceptConnection()) + ws.send(BytesMessage(data=LOGGED_ON)))
    names = [f"Flood{i:05d}" for i in range(types)]
    for i in range(0, types, 50):
        msg = b"".join(frame(n) for n in names[i : i + 50])
        await stream.send_all(ws.send(BytesMessage(data=msg)))
    try:
        while True:
            await stream.send_all(ws.send(BytesMessage(data=BEAT)))
            await trio.sleep(1)
    except trio.BrokenResourceError:
        return  # the daemon stopped


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def main(args: argparse.Namespace) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="type-flood-"))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    cfg = Config.from_mapping(
        {
            "source": {
                "url": f"ws://127.0.0.1:{port}/mlink/jsonf",
                "stripes": ["A"],
                "message_types": ["OptionNbboQuote"],
            },
            "auth": {"api_key_env": "FLOOD_KEY"},
            "output": {"root": str(root)},
            "limits": {"max_open_types": args.max_open_types},
        }
    )
    peak = {"fds": fds(), "rss_mb": rss_bytes() / 2**20}
    start = dict(peak)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, lambda s: serve(s, args.types), listeners)
        daemon = Daemon(cfg, environ={"FLOOD_KEY": KEY}, install_signals=False)
        nursery.start_soon(daemon.run)
        t0 = trio.current_time()
        drained: float | None = None
        with trio.move_on_after(args.seconds):
            while True:
                peak["fds"] = max(peak["fds"], fds())
                peak["rss_mb"] = max(peak["rss_mb"], rss_bytes() / 2**20)
                worker = daemon.supervisor.workers.get("A")
                if (
                    drained is None
                    and worker is not None
                    and worker.stats.rows_written >= args.types
                ):
                    drained = round(trio.current_time() - t0, 1)
                await trio.sleep(0.1)
        rows = daemon.supervisor.workers["A"].stats.rows_written
        daemon.stop()
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    tables = sum(1 for p in os.listdir(root) if p.startswith("Flood"))
    return {
        "types": args.types,
        "max_open_types": args.max_open_types,
        "start": start,
        "peak": peak,
        "rows_written": rows,
        "all_written_after_s": drained,
        "tables": tables,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", type=int, default=5000)
    parser.add_argument("--max-open-types", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    print(json.dumps(trio.run(main, parser.parse_args())))

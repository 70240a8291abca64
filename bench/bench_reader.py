#!/usr/bin/env python3
"""Reader hot path: the frame decoder and the input bounds scan, per frame.

Usage::

    python bench/bench_reader.py [--frames 200000] [--repeat 5]

Scenarios (best of ``--repeat``, CPU time per frame / per byte):

* ``whole``: the common case, ~20 whole OptionNbboQuote frames per WebSocket message;
* ``split 1 KB``: one 999,999-byte frame arriving in 1 KB pieces (was quadratic);
* ``CR LF J storm``: 900 KB of ``\\r\\nJ`` (every skip searched to the end for a ``\\r\\nP``:
  was quadratic, minutes);
* ``scan``: :func:`capture.bounds.check_body` on every body of ``whole`` (the cost the
  reader adds per frame), and on a Repeater-like body with 100 nested objects (exact path);
* ``per-read split``: the floor of a pure-Python alternative to ``whole`` + ``scan`` (issue 20,
  bench/HISTORY.md item 37): each message cut with one ``bytes.split`` on ``\\r\\nJ``, the
  header digits and length checked, the nesting counts and the ``mTyp`` peek per body, and
  no resynchronisation, carry-over or member count (so it is faster than any correct version).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import make_bodies

from capture.frames import FrameDecoder, encode_frame


def best(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bodies = make_bodies(2000)
    frames = [encode_frame(1234, b) for b in bodies]
    per_msg = 20
    messages = [
        b"".join(frames[i % len(frames) : i % len(frames) + per_msg])
        for i in range(0, args.frames, per_msg)
    ]
    n = sum(len(m) for m in messages)

    def whole() -> None:
        dec = FrameDecoder()
        for m in messages:
            dec.feed_typed(m)

    t = best(whole, args.repeat)
    count = len(messages) * per_msg
    print(f"whole frames   : {t / count * 1e9:8.0f} ns/frame  ({n / t / 2**20:.0f} MB/s)")

    big = encode_frame(1, b'{"a":"' + b"x" * (999_999 - 8) + b'"}')
    pieces = [big[i : i + 1024] for i in range(0, len(big), 1024)]

    def split() -> None:
        dec = FrameDecoder()
        for p in pieces:
            dec.feed(p)

    t = best(split, args.repeat)
    print(f"1 MB in 1 KB   : {t * 1e3:8.1f} ms per frame")

    storm = b"\r\nJ" * 300_000  # a header candidate every 3 bytes, none valid

    def sync_storm() -> None:
        dec = FrameDecoder()
        dec.feed(storm)
        dec.flush()

    t = best(sync_storm, 1)
    print(f"CR LF J storm  : {t * 1e3:8.1f} ms for 300,000 markers (900 KB)")

    try:
        from capture.bounds import Limits, check_body
    except ImportError:
        return
    bounds = Limits()
    sample = bodies * (args.frames // len(bodies))

    def scan() -> None:
        for b in sample:
            check_body(b, bounds)

    t = best(scan, args.repeat)
    print(f"scan (common)  : {t / len(sample) * 1e9:8.0f} ns/frame")
    legs = b'{"header":{"mTyp":"X"},"message":{"legs":[' + b",".join(
        b'{"a":{"b":1},"c":"[x]"}' for _ in range(100)
    ) + b"]}}"

    def scan_legs() -> None:
        for _ in range(2000):
            check_body(legs, bounds)

    t = best(scan_legs, args.repeat)
    print(f"scan (100 legs): {t / 2000 * 1e9:8.0f} ns/frame ({len(legs)} bytes, exact path)")

    def whole_and_scan() -> None:
        dec = FrameDecoder()
        for m in messages:
            for _mtyp, _number, body in dec.feed_typed(m):  # type: ignore[misc]  # no Garbage here
                check_body(body, bounds)

    t = best(whole_and_scan, args.repeat)
    print(f"whole + scan   : {t / count * 1e9:8.0f} ns/frame (the reader's per-frame work)")
    depth = bounds.max_depth
    prefix = b'{"header":{"mTyp":"'

    def per_read_split() -> None:
        for m in messages:
            for part in m.split(b"\r\nJ")[1:]:
                digits = part[:11]
                if not digits.isdigit():
                    raise AssertionError("a bad header: not in this benchmark's input")
                _number, length = divmod(int(digits), 1_000_000)
                body = part[11:]
                if len(body) != length or body[-1] != 125:
                    raise AssertionError("a bad length: not in this benchmark's input")
                if body.count(b"{") + body.count(b"[") > depth:
                    raise AssertionError("too deep: not in this benchmark's input")
                if body.startswith(prefix):
                    body.find(b'"', 19, 147)

    t = best(per_read_split, args.repeat)
    print(f"per-read split : {t / count * 1e9:8.0f} ns/frame (pure-Python floor, see docstring)")


if __name__ == "__main__":
    main()

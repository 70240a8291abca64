#!/usr/bin/env python3
"""Secret masking (capture/masking.py): what it costs on ordinary data and on hostile bytes.

Usage::

    python bench/bench_masking.py [--repeat 5]

Each scenario is about 1 MB, masked as one WebSocket message with one registered key (best of
``--repeat``, CPU ms).  The baseline in the same run is ``json.loads`` of an ordinary 1 MB
message's frame bodies (what the decoder's JSON reading costs, order of magnitude).

* ``ordinary``: ~20 OptionNbboQuote frames per message, no backslash: two byte searches;
* ``short escapes``: ``"\\n"`` strings, 250,000 of them (each too short to hold the key);
* ``long escapes``: strings of 16 ``\\n`` escapes (each read by the JSON parser);
* ``quote runs``: a million escaped quotes and no closing one (one unterminated string);
* ``escaped keys``: strings each spelling the key with ``\\u`` escapes (each one walked);
* ``..., \\u``: the first three with one ``\\u`` escape added, so every string is read;
* ``invalid, \\u`` and ``bad \\u each``: escapes the JSON parser refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capture.masking import SecretMask

KEY = "5b2d0c8e-7f41-4a3c-b1d2-9e8f7a6b5c4d"
SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data" / "samples.jsonf"
MB = 1_000_000


def ordinary() -> tuple[bytes, list[bytes]]:
    data = SAMPLES.read_bytes()
    frames = [b"\r\nJ" + part for part in data.split(b"\r\nJ")[1:] if b"OptionNbboQuote" in part]
    message = b"".join(frames)
    message = message * (MB // len(message) + 1)
    bodies = [f[14:] for f in frames] * (MB // len(b"".join(frames)) + 1)
    return message[:MB], bodies


def escaped(text: str) -> bytes:
    return "".join(f"\\u{ord(c):04x}" for c in text).encode()


def scenarios() -> dict[str, bytes]:
    message, _ = ordinary()
    key = b'"' + escaped(KEY) + b'",'
    return {
        "ordinary": message,
        "short escapes": b'"\\n",' * (MB // 5),
        "long escapes": (b'"' + b"\\n" * 16 + b'",') * (MB // 35),
        "quote runs": b'"' + b'\\"' * (MB // 2),
        "escaped keys": key * (MB // len(key)),
        # One "\u" anywhere makes every string a candidate: the scan's own worst cases.
        "short, \\u": b'"\\u0041",' + b'"\\n",' * (MB // 5),
        "long, \\u": b'"\\u0041",' + (b'"' + b"\\u0041" * 16 + b'",') * (MB // 99),
        "quotes, \\u": b'"\\u0041",' + b'"' + b'\\"' * (MB // 2),
        # Invalid escapes the JSON parser refuses (a second review: 4.5 s/MB before the
        # per-string check), and strings with a truncated \u escape each.
        "invalid, \\u": b'"\\u0041",' + b'"\\q123456",' * (MB // 11),
        "bad \\u each": b'"\\u12zz3456",' * (MB // 13),
    }


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    _, bodies = ordinary()
    base = best(lambda: [json.loads(b) for b in bodies], args.repeat)
    print(f"baseline json.loads of ~1 MB of frame bodies: {base:8.1f} ms")
    for name, data in scenarios().items():
        mask = SecretMask([KEY])
        ms = best(lambda d=data, m=mask: m.message(d), args.repeat)  # type: ignore[misc]
        masked = mask.message(data)
        assert len(masked) == len(data)
        print(f"{name:14s} {len(data) / MB:5.2f} MB {ms:8.1f} ms  {ms / base:6.2f}x baseline")


if __name__ == "__main__":
    main()

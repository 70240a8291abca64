#!/usr/bin/env python3
"""Decode throughput: ``json.loads`` + ``Table.from_pylist`` baseline vs ``BatchDecoder``.

Usage::

    python bench/bench_decode.py [--messages 50000] [--batch 5000] [--repeat 5]

Bodies are OptionNbboQuote messages shaped like ``tests/data/samples.jsonf`` (the same header,
an okey, prices printed as the server prints float32 values, ns timestamps), with a random subset
of the optional fields present, as the server omits default values. Both sides are timed in the
same run on the same bodies; the best of ``--repeat`` runs is reported. Scenarios:

* ``clean``: bodies exactly as the dictionary describes them;
* ``drift``: every body also carries two fields unknown to the dictionary (kept in ``_extra``);
* ``1% bad``: one body in a hundred has a mistyped value (a string price). A fresh decoder
  isolates those bodies through failed reads; once it has seen the pattern it pre-screens them
  (steady state). Either way those bodies are decoded on the slow path.

The first baseline keeps JSON types as they come (strings for timestamps, no dictionaries); the
second converts to the decoder's column types, which is the like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import struct
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capture.decode import BatchDecoder

EXCHANGES = ("CBOE", "MIAX", "ISE", "PHLX", "AMEX", "BOX", "C2", "NSDQ", "BATS", "EDGX")


def f32(x: float) -> float | int:
    """The value a float32 field holds, as the server prints it (shortest float32 text)."""
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == value:
            number = float(text)
            return int(number) if number.is_integer() else number
    return value


def make_bodies(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    bodies = []
    t0 = 1_748_875_509_876_543_211
    for k in range(count):
        ts = t0 + k * 117_331
        bid = f32(rng.uniform(0.05, 60.0))
        msg: dict[str, Any] = {
            "pkey": {
                "okey": {
                    "at": "EQT",
                    "ts": "NMS",
                    "tk": rng.choice(("AAPL", "MSFT", "SPY", "QQQ", "TSLA")),
                    "dt": rng.choice(("2025-06-20", "2025-07-18", "2025-09-19")),
                    "xx": rng.choice((150, 175, 197.5, 200, 202.5, 225)),
                    "cp": rng.choice(("Call", "Put")),
                }
            },
            "updateType": rng.choice(("PrcChange", "SizeOnly")),
            "bidPrice": bid,
            "askPrice": f32(float(bid) + 0.1),
            "bidSize": rng.randint(1, 500),
            "askSize": rng.randint(1, 500),
        }
        optional: dict[str, Any] = {
            "cumBidSize": rng.randint(1, 5000),
            "cumAskSize": rng.randint(1, 5000),
            "bidExch": rng.choice(EXCHANGES),
            "askExch": rng.choice(EXCHANGES),
            "bidMask": rng.randint(1, 1 << 16),
            "askMask": rng.randint(1, 1 << 16),
            "bidPrice2": f32(float(bid) - 0.05),
            "askPrice2": f32(float(bid) + 0.15),
            "bidTime": rng.randint(30_000_000, 60_000_000),
            "askTime": rng.randint(30_000_000, 60_000_000),
        }
        for name, value in optional.items():
            if rng.random() < 0.35:
                msg[name] = value
        msg["srcTimestamp"] = ts
        msg["netTimestamp"] = ts + rng.randint(10_000, 200_000)
        body = {
            "header": {
                "mTyp": "OptionNbboQuote",
                "sEnv0": "Saturn",
                "sRlm0": "NMS",
                "sID": 20417,
                "kLen": 0,
                "mLen": 0,
                "seqN": 88211 + k,
                "appN": "MLinkServer.Prod.A.Extern",
                "mn": "SRMOCK-101",
                "sTim": "2025-06-02 14:45:09.876720",
                "encT": "2025-06-02 14:45:10.153104",
                "git": "5e0f2c9a71",
            },
            "message": msg,
        }
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return bodies


def baseline(bodies: Sequence[bytes]) -> pa.Table:
    """Per-message json.loads, flattened into the same column names, then from_pylist."""
    rows = []
    for body in bodies:
        obj = json.loads(body)
        row: dict[str, Any] = {f"h_{k}": v for k, v in obj["header"].items()}
        message = obj["message"]
        for key, value in message.pop("pkey")["okey"].items():
            row[f"okey_{key}"] = value
        row.update(message)
        rows.append(row)
    return pa.Table.from_pylist(rows)


def baseline_typed(bodies: Sequence[bytes], schema: pa.Schema) -> pa.Table:
    """The same, converted to the decoder's column types (timestamps, dates, dictionaries)."""
    rows = []
    for body in bodies:
        obj = json.loads(body)
        header = obj["header"]
        row: dict[str, Any] = {f"h_{k}": v for k, v in header.items() if k != "mTyp"}
        row["h_sTim"] = datetime.fromisoformat(header["sTim"]).replace(tzinfo=UTC)
        row["h_encT"] = datetime.fromisoformat(header["encT"]).replace(tzinfo=UTC)
        message = obj["message"]
        for key, value in message.pop("pkey")["okey"].items():
            row[f"okey_{key}"] = value
        row["okey_dt"] = date.fromisoformat(row["okey_dt"])
        row.update(message)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def best_rate(fn: Callable[[], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    clean = make_bodies(args.messages)
    drift = [b[:-2] + b',"prcFramework":"Equity","srSlope":-0.0012}}' for b in clean]
    bad = [
        b.replace(b'"bidPrice":', b'"bidPrice":"', 1).replace(b',"askPrice"', b'","askPrice"', 1)
        if i % 100 == 50
        else b
        for i, b in enumerate(clean)
    ]
    size = sum(map(len, clean)) / len(clean)
    print(
        f"python {platform.python_version()}, pyarrow {pa.__version__}, {os.cpu_count()} cpus, "
        f"{args.messages} OptionNbboQuote bodies of {size:.0f} bytes on average, "
        f"batches of {args.batch}, best of {args.repeat}"
    )

    def batches(bodies: list[bytes]) -> list[list[bytes]]:
        return [bodies[i : i + args.batch] for i in range(0, len(bodies), args.batch)]

    def run_decoder(bodies: list[bytes], decoder: BatchDecoder | None) -> Callable[[], object]:
        """One pass over all batches; with ``decoder`` None, a fresh decoder per pass (so the
        pass includes what the decoder has to learn from the first bad batch)."""
        chunks = batches(bodies)

        def go() -> None:
            dec = decoder if decoder is not None else BatchDecoder("OptionNbboQuote")
            for chunk in chunks:
                n = len(chunk)
                result = dec.decode(
                    chunk,
                    type_numbers=[2785] * n,
                    recv_ns=list(range(n)),
                    snapshot=[False] * n,
                    seq=list(range(n)),
                    stripe="A",
                    session="bench",
                )
                if result.batch.num_rows != n:
                    raise RuntimeError("rows lost")

        return go

    warm = BatchDecoder("OptionNbboQuote")
    typed_schema = pa.schema([f for f in warm.schema if not f.name.startswith("_")])
    base_rate = best_rate(lambda: [baseline(c) for c in batches(clean)], len(clean), args.repeat)
    print(f"{'baseline json.loads+from_pylist':38} {base_rate:>10,.0f} msg/s")
    typed_rate = best_rate(
        lambda: [baseline_typed(c, typed_schema) for c in batches(clean)], len(clean), args.repeat
    )
    print(f"{'  same, typed like the decoder':38} {typed_rate:>10,.0f} msg/s")
    scenarios: list[tuple[str, list[bytes], BatchDecoder | None]] = [
        ("clean", clean, warm),
        ("drift (2 unknown fields)", drift, warm),
        ("1% bad, fresh decoder", bad, None),
        ("1% bad, steady state", bad, warm),
    ]
    for label, bodies, decoder in scenarios:
        rate = best_rate(run_decoder(bodies, decoder), len(bodies), args.repeat)
        print(
            f"{'BatchDecoder ' + label:38} {rate:>10,.0f} msg/s   x{rate / base_rate:.1f} "
            f"(x{rate / typed_rate:.1f} vs typed)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

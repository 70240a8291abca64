#!/usr/bin/env python3
"""The benchmark's baselines and references, each on the same bytes as the daemon, in-process.

Usage (``bench_e2e.py`` runs each kind in a fresh process, so CPU time and peak RSS are its own)::

    python bench/baselines.py KIND FILE.jsonf [--out DIR] [--frames-per-message 16]

The file is read and cut into the WebSocket messages the replay server would send (same
packing) before the clock starts; then, timed:

``a``  the vendor sample client: split each message on CRLF, ``json.loads`` each frame body
       (12 header characters stripped, as the samples do), keep nothing.
``b``  a straightforward writer: ``json.loads`` each body, lists of dicts per message type,
       ``pyarrow.Table.from_pylist`` + ``pyarrow.parquet.write_table`` (zstd, like the daemon)
       every ``B_ROWS`` rows of a type.
``c``  the limit of this design: split frames, group bodies per type, then pyarrow's C++ JSON
       reader with the daemon's explicit wire schema (``BatchDecoder``'s parse options, all
       bodies of a type in one read, reader threads on) and ``write_table`` (zstd, row groups of
       131072).  No network, no per-message Python beyond the split.
``c1`` the same with the JSON reader's threads off (faster on this 2-vCPU machine; the
       benchmark takes the faster of ``c`` and ``c1`` as the limit).
``d``  the package's own pipeline in one thread, no network and no trio: ``FrameDecoder.feed``
       per message, ``peek_mtyp``, per-type batches of ``batch_rows``, ``BatchDecoder.decode``,
       ``PartitionSink.write``/``close`` (what the worker's reader and writer tasks do).

Prints one JSON object: wall seconds and process CPU seconds of the timed part, rows, peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replay_server import pack  # bench/ is sys.path[0] when run as a script

from capture.config import PipelineConfig
from capture.decode import BatchDecoder
from capture.frames import Frame, FrameDecoder, peek_mtyp
from capture.memory import peak_rss_bytes
from capture.protocol import CONTROL_TYPES
from capture.sim.config import SimConfig
from capture.sink import PartitionSink, SinkSettings

B_ROWS = 100_000
ROW_GROUP_ROWS = 131_072


def split_bodies(messages: list[bytes]) -> dict[bytes, list[bytes]]:
    """Frame bodies per 5-digit type number (CRLF split, 12 header characters stripped)."""
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for msg in messages:
        for piece in msg.split(b"\r\n"):
            if piece:
                out[piece[1:6]].append(piece[12:])
    return out


def run_a(messages: list[bytes], out: Path) -> int:
    n = 0
    loads = json.loads
    for msg in messages:
        for piece in msg.split(b"\r\n"):
            if piece:
                loads(piece[12:])
                n += 1
    return n


def run_b(messages: list[bytes], out: Path) -> int:
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    files = 0
    n = 0

    def write(mtyp: str) -> None:
        nonlocal files
        table = pa.Table.from_pylist(rows.pop(mtyp))
        files += 1
        pq.write_table(table, out / f"{mtyp}-{files:05d}.parquet", compression="zstd")

    for msg in messages:
        for piece in msg.split(b"\r\n"):
            if piece:
                obj = json.loads(piece[12:])
                mtyp = obj["header"]["mTyp"]
                batch = rows[mtyp]
                batch.append(obj)
                n += 1
                if len(batch) >= B_ROWS:
                    write(mtyp)
    for mtyp in list(rows):
        write(mtyp)
    return n


def run_c(messages: list[bytes], out: Path, *, threads: bool = True) -> int:
    from capture.schemas import by_number

    n = 0
    read_options = pj.ReadOptions(use_threads=threads, block_size=1 << 20)
    for number, bodies in split_bodies(messages).items():
        mdef = by_number(int(number))
        assert mdef is not None
        parse_options = BatchDecoder(mdef.name)._parse_options
        table = pj.read_json(
            io.BytesIO(b"\n".join(bodies)), read_options=read_options, parse_options=parse_options
        )
        pq.write_table(
            table, out / f"{mdef.name}.parquet", compression="zstd", row_group_size=ROW_GROUP_ROWS
        )
        n += table.num_rows
    return n


def run_d(messages: list[bytes], out: Path) -> int:
    batch_rows = PipelineConfig().batch_rows
    sink = PartitionSink(SinkSettings(root=out, rotate_interval_s=3600), stripe="A", session="d")
    decoders: dict[str, BatchDecoder] = {}
    pending: dict[str, tuple[list[bytes], list[int], list[int], list[int]]] = {}
    n = 0

    def hand_over(mtyp: str) -> None:
        bodies, numbers, recv, seq = pending.pop(mtyp)
        dec = decoders.get(mtyp) or decoders.setdefault(mtyp, BatchDecoder(mtyp))
        result = dec.decode(
            bodies, type_numbers=numbers, recv_ns=recv, snapshot=[False] * len(bodies), seq=seq,
            stripe="A", session="d",
        )
        sink.write(mtyp, result.batch)

    decoder = FrameDecoder()
    for msg in messages:
        now = time.time_ns()
        for event in decoder.feed(msg):
            if type(event) is not Frame:
                continue
            mtyp = peek_mtyp(event.body)
            if mtyp is None or mtyp in CONTROL_TYPES:
                continue
            p = pending.get(mtyp)
            if p is None:
                p = pending[mtyp] = ([], [], [], [])
            p[0].append(event.body)
            p[1].append(event.type_number)
            p[2].append(now)
            p[3].append(n)
            n += 1
            if len(p[0]) >= batch_rows:
                hand_over(mtyp)
    for mtyp in list(pending):
        hand_over(mtyp)
    sink.close()
    return n


def run_c1(messages: list[bytes], out: Path) -> int:
    return run_c(messages, out, threads=False)


KINDS = {"a": run_a, "b": run_b, "c": run_c, "c1": run_c1, "d": run_d}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("file", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (removed)")
    parser.add_argument("--frames-per-message", type=int, default=SimConfig().frames_per_message)
    parser.add_argument("--max-message-bytes", type=int, default=SimConfig().max_message_bytes)
    args = parser.parse_args()
    data = args.file.read_bytes()
    messages = [
        data[s:e] for s, e in pack(data, args.frames_per_message, args.max_message_bytes)
    ]
    del data
    out = args.out or Path(f"{args.file}.{args.kind}.out")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rss_before = (peak_rss_bytes() or 0) // 1024  # VmHWM: ru_maxrss counts the parent's RSS
    t0, c0 = time.perf_counter(), os.times()
    rows = KINDS[args.kind](messages, out)
    t1, c1 = time.perf_counter(), os.times()
    out_bytes = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({
        "kind": args.kind,
        "rows": rows,
        "seconds": t1 - t0,
        "cpu_seconds": (c1.user - c0.user) + (c1.system - c0.system),
        "peak_rss_mb": (peak_rss_bytes() or 0) / 2**20,
        "input_rss_mb": rss_before / 1024,
        "parquet_bytes": out_bytes,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

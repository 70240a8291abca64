#!/usr/bin/env python3
"""Where the daemon's time goes, from a py-spy profile taken by ``bench_e2e.py --profile``.

Usage::

    python bench/profile_report.py bench/work/e2e-1/profile.collapsed.txt --messages 1000000
        [--rate 250]

py-spy's raw format is one line per distinct stack (``thread;frame;frame... count``), sampled
``--rate`` times a second per thread while the thread is not idle.  Each sample is put into the
first category (``RULES``, tried from the innermost frame outwards) and counted per thread
group: the trio loop (MainThread), the offload threads (``trio.to_thread``: decode + Parquet)
and threads with no Python stack (pyarrow's C++ pool).  Printed as seconds and microseconds
per message.  A sampled thread waiting for the GIL counts as busy where it waits (after a
syscall such as ``recv`` or ``epoll_wait``), so "socket recv" on the loop includes GIL waits.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

RULES: list[tuple[str, str]] = [
    # (substring of a frame, category); first match from the innermost frame wins
    ("_fsync", "fsync (Parquet commit, journal)"),
    ("fsync (capture/journal/fsops.py", "fsync (Parquet commit, journal)"),
    ("JournalWriter.append", "journal append (on the loop)"),
    ("capture/journal/", "journal write/retire (thread)"),
    ("ParquetWriter.write_table", "Parquet encode + compress (write_table)"),
    ("ParquetWriter.close", "Parquet encode + compress (write_table)"),
    ("Table.from_batches", "sink buffering (from_batches, concat)"),
    ("capture/sink/", "sink bookkeeping (split by date/interval, min/max)"),
    ("BatchDecoder._read", "JSON decode (pyarrow read_json)"),
    ("_metadata_arrays", "capture columns (_recv_time, _seq, ... from lists)"),
    ("capture/decode/", "Arrow flatten/convert (compute)"),
    ("latest_plausible (capture/resume.py", "writer bookkeeping (resume point)"),
    ("BatchWriter._write", "writer bookkeeping (highwater max)"),
    ("BatchWriter.write", "writer bookkeeping (highwater max)"),
    ("_thread_cache.py", "idle offload thread / hand-off (trio.to_thread)"),
    ("trio/_threads.py", "offload thread hand-off (trio.to_thread)"),
    ("wsproto/", "WebSocket parsing (wsproto + trio-websocket)"),
    ("trio_websocket/", "WebSocket parsing (wsproto + trio-websocket)"),
    ("_nonblocking_helper", "socket recv syscall (incl. GIL wait)"),
    ("get_events", "epoll wait (incl. GIL wait)"),
    ("peek_mtyp", "frame decode (peek_mtyp)"),
    ("capture/frames.py", "frame decode (FrameDecoder: split, body copies)"),
    ("capture/transport.py", "reader loop (worker._read body)"),
    ("StripeWorker._read", "reader loop (worker._read body)"),
    ("StripeWorker._hand_over", "reader loop (worker._read body)"),
    ("capture/health.py", "health file"),
    ("structlog", "logging"),
    ("capture/logs.py", "logging"),
    ("StripeWorker._writer", "writer task on the loop"),
    ("trio/", "trio scheduler and timeouts"),
]


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for needle, name in RULES:
            if needle in frame:
                return name
    return "other"


def group(thread: str) -> str:
    if "MainThread" in thread:
        return "trio loop"
    if ":" in thread:
        return "offload threads"
    return "C++ threads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--rate", type=float, default=250.0)
    args = parser.parse_args()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for line in args.profile.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        counts[group(frames[0])][category(frames[1:])] += int(n)
    per_msg = 1e6 / args.rate / args.messages
    total = 0
    for grp in ("trio loop", "offload threads", "C++ threads"):
        cats = counts.get(grp, {})
        n_grp = sum(cats.values())
        total += n_grp
        print(f"\n{grp}: {n_grp / args.rate:.1f} s busy, {n_grp * per_msg:.2f} µs/message")
        for name, n in sorted(cats.items(), key=lambda kv: -kv[1]):
            print(f"  {n * per_msg:6.2f} µs/msg  {n / args.rate:6.2f} s  {name}")
    print(f"\nall threads: {total / args.rate:.1f} s, {total * per_msg:.2f} µs/message")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Journal throughput: append cost on the event loop, fsync cost, start-up scan speed.

Usage::

    python bench/bench_journal.py [--dir DIR] [--mib 256] [--interval 1.0]

* **append**: ``JournalWriter.append`` for 600-byte and 64 KiB payloads, first alone, then with
  a thread calling ``flush_and_sync`` every ``--interval`` seconds (the worker's setup).  Bulk
  rate (appends/s, MB/s, mean µs per call) and the per-call latency distribution (what the event
  loop sees: p50/p99/p99.9/max; the tail is the write buffer reaching the OS and segment rolls).
* **flush_and_sync**: its duration in the syncing thread.
* **scan**: a 64 MiB segment left unsealed (as a crash leaves it), read by ``recover`` (verify
  every CRC, then seal), by ``read_records`` (records built) and, once sealed, by
  ``list_segments`` (seal only).  "cold" evicts the file from the page cache first
  (``posix_fadvise(DONTNEED)``, no root needed), "warm" reads it from memory.

Writes ``--mib`` MiB per append run under ``--dir`` (default: the system temp directory; point
it at the disk the journal will live on).  Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capture.journal import JournalWriter, list_segments, read_records, recover

SEGMENT = 64 * 2**20


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}"
    )


def evict(directory: Path) -> None:
    for p in directory.glob("seg-*.mlj"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Syncer:
    """flush_and_sync every `interval` seconds in a thread, as the worker will."""

    def __init__(self, writer: JournalWriter, interval: float) -> None:
        self.writer = writer
        self.interval = interval
        self.durations: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Syncer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            t0 = time.perf_counter()
            self.writer.flush_and_sync()
            self.durations.append(time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_append(root: Path, size: int, total: int, interval: float | None, label: str) -> None:
    directory = root / f"append-{size}-{label}"
    payload = os.urandom(size)
    count = max(1000, total // size)
    w = JournalWriter(directory, segment_bytes=SEGMENT)
    w.begin_session("bench", "A", time.time_ns(), {"size": size})
    append = w.append
    syncer = Syncer(w, interval) if interval else None
    if syncer:
        syncer.__enter__()
    try:
        # Bulk: no per-call timer in the loop.
        half = count // 2
        t0 = time.perf_counter()
        for i in range(half):
            append(i, i, 1, payload)
        bulk = time.perf_counter() - t0
        # Latency: each call timed (adds ~0.1 µs per call).
        lat: list[float] = []
        clock = time.perf_counter_ns
        for i in range(half, count):
            t = clock()
            append(i, i, 1, payload)
            lat.append((clock() - t) / 1000)
    finally:
        if syncer:
            syncer.__exit__()
        t0 = time.perf_counter()
        w.close()
        closing = time.perf_counter() - t0
    rate = half / bulk
    print(
        f"  {label:<13} {size:>6} B: {rate:>9,.0f} appends/s  {rate * size / 1e6:>7.0f} MB/s  "
        f"mean {bulk / half * 1e6:6.2f} µs | per call p50 {pct(lat, 0.5):6.2f}  "
        f"p99 {pct(lat, 0.99):7.2f}  p99.9 {pct(lat, 0.999):8.2f}  max {max(lat):9.1f} µs"
    )
    if syncer and syncer.durations:
        d = syncer.durations
        print(
            f"  {'':<13} flush_and_sync x{len(d)}: median {statistics.median(d) * 1e3:.1f} ms, "
            f"max {max(d) * 1e3:.1f} ms; close {closing * 1e3:.1f} ms"
        )


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def crashed_segment(root: Path, size: int) -> tuple[Path, int]:
    """One unsealed 64 MiB segment, as a crash leaves it."""
    directory = root / f"scan-{size}"
    payload = os.urandom(size)
    w = JournalWriter(directory, segment_bytes=2 * SEGMENT)
    w.begin_session("bench", "A", time.time_ns(), {})
    written = i = 0
    while written < SEGMENT:
        w.append(i, i, 1, payload)
        written += size + 40
        i += 1
    w.flush_and_sync()
    w._abandon()  # as a crash leaves it: no seal, no close
    return directory, i


def bench_scan(root: Path, size: int) -> None:
    directory, n = crashed_segment(root, size)
    mb = sum(p.stat().st_size for p in directory.glob("seg-*.mlj")) / 1e6
    for cache in ("cold", "warm"):
        # recover() seals what it checked; restore the unsealed state for each run.
        (path,) = directory.glob("seg-*.mlj")
        data = path.read_bytes()  # also warms the cache
        if cache == "cold":
            evict(directory)
        t = timed(lambda: recover(directory))
        print(
            f"  {size:>6} B x {n:>6}: recover (verify + seal), {cache}: {mb / t:7.0f} MB/s "
            f"({t * 1e3:6.0f} ms for {mb:.0f} MB)"
        )
        path.write_bytes(data)  # unsealed again for the next run
        os.sync()
    for cache in ("cold", "warm"):
        if cache == "cold":
            evict(directory)
        t = timed(lambda: sum(1 for _ in read_records(directory)))
        print(
            f"  {size:>6} B x {n:>6}: read_records, {cache}:{'':12}{mb / t:7.0f} MB/s "
            f"({t * 1e3:6.0f} ms)"
        )
    recover(directory)
    evict(directory)
    t = timed(lambda: list_segments(directory))
    print(f"  {size:>6} B x {n:>6}: list_segments, sealed, cold:   {t * 1e3:9.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: temp dir)")
    ap.add_argument("--mib", type=int, default=256, help="MiB written per append run")
    ap.add_argument("--interval", type=float, default=1.0, help="durability interval, s")
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-journal-", dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"target: {root} ({args.mib} MiB per append run, 64 MiB segments)")
        print("append (event-loop cost per WebSocket message):")
        for size in (600, 64 * 1024):
            bench_append(root, size, args.mib * 2**20, None, "alone")
            bench_append(root, size, args.mib * 2**20, args.interval, "+sync thread")
        print("start-up scan of one unsealed 64 MiB segment:")
        for size in (600, 64 * 1024):
            bench_scan(root, size)


if __name__ == "__main__":
    main()

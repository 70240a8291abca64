#!/usr/bin/env python3
"""Journal throughput: append cost on the event loop, fsync cost, start-up scan speed.

Usage::

    python bench/bench_journal.py [--dir DIR] [--mib 256] [--interval 1.0] [--rates 10 40]

* **append, saturated**: ``JournalWriter.append`` as fast as possible for 600-byte and 64 KiB
  payloads with a thread calling ``flush_and_sync`` every ``--interval`` seconds (the
  worker's setup): what the journal sustains end to end, i.e. until ``close()`` has fsynced
  everything (``append`` only queues, so its own rate would overstate it).
* **append latency**: the same at steady rates (``--rates`` MB/s, messages in 1 ms bursts):
  the per-call cost the event loop sees, p50/p99/p99.9/max.
* **scan**: a 64 MiB segment left unsealed (as a crash leaves it), read by ``recover`` (verify
  every CRC, then seal), by ``read_records`` (records built) and, once sealed, by
  ``list_segments`` (seal only).  "cold" evicts the file from the page cache first
  (``posix_fadvise(DONTNEED)``, no root needed), "warm" reads it from memory.

Writes ``--mib`` MiB per saturated run under ``--dir`` (default: the system temp directory; point
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


def bench_throughput(root: Path, size: int, total: int, interval: float) -> None:
    """As fast as possible, with the syncing thread: what the journal sustains end to end
    (until close() has everything fsynced) and what each call cost the appending thread."""
    directory = root / f"throughput-{size}"
    payload = os.urandom(size)
    count = max(1000, total // size)
    w = JournalWriter(directory, segment_bytes=SEGMENT)
    w.begin_session("bench", "A", time.time_ns(), {"size": size})
    append = w.append
    with Syncer(w, interval) as syncer:
        t0 = time.perf_counter()
        for i in range(count):
            append(i, i, 1, payload)
        api = time.perf_counter() - t0
        w.close()
        end_to_end = time.perf_counter() - t0
    rate = count / end_to_end
    syncs = syncer.durations
    sync = (
        f"{len(syncs)} flush_and_sync, median {statistics.median(syncs) * 1e3:.0f} ms"
        if syncs
        else "done before the first periodic flush_and_sync"
    )
    print(
        f"  {size:>6} B: {rate:>9,.0f} appends/s {rate * size / 1e6:>6.0f} MB/s end to end "
        f"(fsynced); append call mean {api / count * 1e6:6.2f} µs; {sync}"
    )


def bench_latency(root: Path, size: int, rate_mbs: float, seconds: float, interval: float) -> None:
    """At a steady rate (messages in 1 ms bursts, like a socket), with the syncing thread:
    the cost of each append call as the event loop sees it."""
    directory = root / f"latency-{size}-{rate_mbs:g}"
    payload = os.urandom(size)
    w = JournalWriter(directory, segment_bytes=SEGMENT)
    w.begin_session("bench", "A", time.time_ns(), {"size": size})
    per_message = size / (rate_mbs * 1e6)
    lat: list[float] = []
    clock = time.perf_counter_ns
    with Syncer(w, interval) as syncer:
        t0 = time.perf_counter()
        i = 0
        while (now := time.perf_counter() - t0) < seconds:
            due = int(now / per_message)
            while i < due:
                t = clock()
                w.append(i, i, 1, payload)
                lat.append((clock() - t) / 1000)
                i += 1
            time.sleep(0.001)
    w.close()
    print(
        f"  {size:>6} B at {rate_mbs:>4g} MB/s ({len(lat):>7,} calls): p50 {pct(lat, 0.5):6.2f}  "
        f"p99 {pct(lat, 0.99):6.2f}  p99.9 {pct(lat, 0.999):7.1f}  max {max(lat):7.0f} µs; "
        f"flush_and_sync median {statistics.median(syncer.durations or [0.0]) * 1e3:.1f} ms"
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
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each steady run")
    ap.add_argument(
        "--rates", type=float, nargs="+", default=[10.0, 40.0], help="steady rates, MB/s"
    )
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-journal-", dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"target: {root} (64 MiB segments)")
        print(f"append, saturated ({args.mib} MiB, flush_and_sync every {args.interval:g} s):")
        for size in (600, 64 * 1024):
            bench_throughput(root, size, args.mib * 2**20, args.interval)
        print(f"append latency at steady rates ({args.seconds:g} s each, same syncing):")
        for size in (600, 64 * 1024):
            for rate in args.rates:
                bench_latency(root, size, rate, args.seconds, args.interval)
        print("start-up scan of one unsealed 64 MiB segment:")
        for size in (600, 64 * 1024):
            bench_scan(root, size)


if __name__ == "__main__":
    main()

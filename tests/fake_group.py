"""A stand-in for a stripe-group process (capture.groups), speaking the same pipe protocol:
the configuration on stdin, then commands (``stop``, ``now``); health reports on stdout.

    python fake_group.py MODE STRIPE[,STRIPE...]

or, in a process forked by the fork server (capture.forkserver), ``run(MODE, STRIPES)``.

MODE: ``report`` (reports every 50 ms, exits 0 on ``stop``, 2 on ``now``), ``slow-stop`` (the
same, but ignores ``stop``: a group still committing its files), ``crash`` (exits 1
at once: an uncaught exception), ``all-failed`` (exits 3), ``bad-config`` (exits 78),
``silent`` (one report, then nothing, ignoring ``stop``: a wedged event loop).
"""

from __future__ import annotations

import json
import os
import select
import sys
import time


def report(stripes: list[str]) -> None:
    doc = {
        "written_at_ns": time.time_ns(),
        "process": {"open_files": 1, "memory": {"rss_mb": 50.0, "arrow_pool": "system"}},
        "stripes": {
            s: {"state": "streaming", "rows_written": 10, "messages": 10, "journal_lag_frames": 0}
            for s in stripes
        },
    }
    os.write(1, (json.dumps(doc) + "\n").encode())


def main() -> int:
    return run(sys.argv[1], sys.argv[2].split(","))


def run(mode: str, stripes: list[str]) -> int:
    header = b""
    while not header.endswith(b"\n"):
        header += os.read(0, 1)
    size = int(header)
    config = b""
    while len(config) < size:
        config += os.read(0, size - len(config))
    assert b"[source]" in config
    if mode == "crash":
        return 1
    if mode == "all-failed":
        return 3
    if mode == "bad-config":
        return 78
    report(stripes)
    if mode == "silent":
        time.sleep(600)
        return 0
    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.05)
        if ready:
            chunk = os.read(0, 100)
            if not chunk:
                return 0
            pending += chunk
            if b"now\n" in pending:
                return 2
            if b"stop\n" in pending and mode != "slow-stop":
                return 0
        report(stripes)


if __name__ == "__main__":
    sys.exit(main())

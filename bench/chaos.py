"""The crash loop of tests/test_crash.py, for longer: ``python bench/chaos.py --cycles 200``.

Simulator and daemon in separate processes; the daemon is SIGKILLed at random moments (and,
every fifth cycle, at a random named step of a commit), restarted, and finally stopped
gracefully.  Then: every data message sent more than durability_interval before the kill that
ended its connection is in Parquet exactly once, every file opens, verify is clean.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from crash_harness import POINTS, Harness


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--rate", type=int, default=300, help="simulator updates/s per type")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp), rate=args.rate)
        h.start_simulator()
        started = time.monotonic()
        try:
            for cycle in range(args.cycles):
                if cycle % 5 == 4:
                    h.crash_at(rng.choice(POINTS), hup_at=rng.uniform(0.5, 2.0))
                else:
                    run = rng.uniform(0.5, 4.0)
                    h.kill_after(run, hup_at=rng.uniform(0.2, run))
                if cycle % 10 == 9:
                    print(f"cycle {cycle + 1}/{args.cycles}", flush=True)
            h.graceful(5.0)
            counts = h.check()
        finally:
            h.stop()
    print(f"seed {args.seed}: {args.cycles} kills in {time.monotonic() - started:.0f} s: {counts}")
    print("OK: nothing durable lost, nothing stored twice, every file opens, verify clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())

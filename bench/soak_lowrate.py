"""Memory at a low rate over rotation intervals: the daemon with 11 stripes in stripe-group
processes against the simulator at ~1,500 msg/s, summed PSS from the health file every few
seconds, per-minute means printed (issue 15: does memory level off, and where?).

    .venv/bin/python bench/soak_lowrate.py [--minutes 11] [--processes 2] [--rate 375]

Writes bench/results/DATE-soak-lowrate.json.  The simulator's rate is per message type over
all stripes (the stripes split the symbols): 4 types x 375/s is about 1,500 msg/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simproc import start_simulator

HERE = Path(__file__).resolve().parent
STRIPES = ["A", "B", "C", "D", "E", "F", "G", "H", "M", "S", "X"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=11.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rate", type=float, default=375.0)
    ap.add_argument("--rotate-interval", type=int, default=300)
    args = ap.parse_args()
    env = {**os.environ, "BENCH_KEY": "bench-soak-key"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        sim, port = start_simulator(args.rate, "BENCH_KEY", env["BENCH_KEY"])
        cfg = Path(tmp) / "soak.toml"
        cfg.write_text(
            f"""
[source]
url = "ws://127.0.0.1:{port}/mlink/jsonf"
stripes = {json.dumps(STRIPES)}
[auth]
api_key_env = "BENCH_KEY"
[output]
root = "{root}"
rotate_interval = {args.rotate_interval}
[health]
path = "{root}/health.json"
interval = 2.0
[supervision]
processes = {args.processes}
[logging]
level = "warning"
format = "json"
"""
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "capture", "run", "--config", str(cfg)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        samples: list[tuple[float, float, dict[str, float]]] = []
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(5.0)
                if daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited {daemon.returncode}")
                try:
                    doc = json.loads((root / "health.json").read_text())
                except (OSError, ValueError):
                    continue
                mem = doc.get("process", {}).get("memory", {})
                if mem.get("pss_mb") is None:
                    continue
                msgs = sum(s.get("messages", 0) for s in doc.get("stripes", {}).values())
                parts = {k: v for k, v in mem.items() if isinstance(v, int | float)}
                samples.append((time.monotonic() - t0, float(msgs), parts))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
            sim.terminate()
            sim.wait(timeout=30)
    minutes: dict[int, list[float]] = {}
    for t, _, parts in samples:
        minutes.setdefault(int(t // 60), []).append(parts["pss_mb"])
    means = {m: round(sum(v) / len(v), 1) for m, v in sorted(minutes.items())}
    rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]) if samples else 0
    out = {
        "date": dt.date.today().isoformat(),
        "args": vars(args),
        "msg_per_s": round(rate),
        "pss_mb_per_minute": means,
        "pss_mb_peak": max(p["pss_mb"] for _, _, p in samples),
        "last_sample_parts": samples[-1][2] if samples else {},
    }
    print(json.dumps(out, indent=1))
    path = HERE / "results" / f"{out['date']}-soak-lowrate.json"
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

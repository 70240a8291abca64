"""What the fork server saves: summed PSS of the daemon with stripe-group processes forked from
the fork server against the same groups exec'd, at a low rate (memory, not speed, is measured).

    .venv/bin/python bench/bench_forkserver.py [--processes 1,2,4] [--seconds 40]

Prints one line per configuration and writes bench/results/DATE-forkserver.json.  The summed
PSS comes from the daemon's own health file (``process.memory.pss_mb``: the daemon, its groups
and the fork server, shared pages counted a share each).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simproc import start_simulator

HERE = Path(__file__).resolve().parent
KEY = "bench-forkserver-key"
STRIPES = ["A", "B", "C", "D", "E", "F", "G", "H", "M", "S", "X"]


def sample(health: Path) -> float | None:
    try:
        doc = json.loads(health.read_text())
    except (OSError, ValueError):
        return None
    pss = doc.get("process", {}).get("memory", {}).get("pss_mb")
    return float(pss) if pss is not None else None


def run_one(processes: int, fork_server: bool, seconds: float, port: int, work: Path) -> dict:
    root = work / f"p{processes}-{'fork' if fork_server else 'exec'}"
    cfg = work / f"{root.name}.toml"
    cfg.write_text(
        f"""
[source]
url = "ws://127.0.0.1:{port}/mlink/jsonf"
stripes = {json.dumps(STRIPES)}
[auth]
api_key_env = "BENCH_KEY"
[output]
root = "{root}"
memory_budget_mb = {max(48, 16 * processes)}
[health]
path = "{root}/health.json"
interval = 1.0
[supervision]
processes = {processes}
fork_server = {"true" if fork_server else "false"}
[logging]
level = "warning"
format = "json"
"""
    )
    env = {**os.environ, "BENCH_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "capture", "run", "--config", str(cfg)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    samples: list[float] = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited {proc.returncode} ({cfg.name})")
            pss = sample(root / "health.json")
            if pss is not None:
                samples.append(pss)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    tail = samples[len(samples) // 2 :] or [float("nan")]  # after start-up
    return {
        "processes": processes,
        "fork_server": fork_server,
        "pss_mb_mean": round(sum(tail) / len(tail), 1),
        "pss_mb_max": round(max(tail), 1),
        "samples": len(samples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", default="2,4")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--rate", type=float, default=20.0, help="simulator updates/s per type")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sim, port = start_simulator(args.rate, "BENCH_KEY", KEY)
        results = []
        try:
            for n in (int(x) for x in args.processes.split(",")):
                for fork in (True, False):
                    r = run_one(n, fork, args.seconds, port, work)
                    results.append(r)
                    print(json.dumps(r), flush=True)
        finally:
            sim.terminate()
            sim.wait(timeout=30)
    out = HERE / "results" / f"{dt.date.today().isoformat()}-forkserver.json"
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "results": results}, indent=1) + "\n")
    print(f"written {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()

"""The simulator as a separate process for benchmarks that run the daemon as operators do."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def start_simulator(rate: float, key_env: str, key: str) -> tuple[subprocess.Popen[str], int]:
    """``mlink-capture simulate`` on an ephemeral loopback port accepting ``key`` (read from
    ``key_env``); returns the process and the port it said it listens on."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "capture", "simulate", "--port", "0", "--rate", str(rate),
         "--api-key-env", key_env, "--log-level", "info"],
        env={**os.environ, key_env: key}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sim.stderr is not None
    for line in sim.stderr:
        m = re.search(r"127\.0\.0\.1:(\d+)", line) or re.search(r'"port": ?(\d+)', line)
        if m:
            return sim, int(m.group(1))
    sim.kill()
    raise SystemExit("the simulator did not say its port")

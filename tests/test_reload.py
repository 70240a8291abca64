"""SIGHUP after a wrong API key was fixed, as an operator does it: the real daemon (one process,
and stripe-group processes) with a refused key waits out a 15-minute auth backoff; the key file
is corrected and ``systemctl reload`` (SIGHUP) makes every refused stripe connect at once."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
import test_process
import trio
from memnet import KEY, MemoryNet, config, mock_clock, run, wait_for
from runtime_env import runtime_env

from capture.app import Daemon
from capture.sim.config import SimConfig
from capture.sim.server import Simulator

simulator = test_process.simulator  # the simulator in its own process, as in test_process


@pytest.mark.e2e
@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "stripe-group processes"])
def test_sighup_retries_refused_stripes_with_the_new_key(
    tmp_path: Path, simulator: tuple[int, Path], processes: int
) -> None:
    port, _ = simulator
    cfg = test_process.write_config(tmp_path, port, processes)
    text = cfg.read_text()
    cfg.write_text(text.replace("[supervision]\n", "[supervision]\nauth_backoff = 900\n"))
    key_file = tmp_path / "key"
    key_file.write_text("wrong-key-0000\n")
    health_file = tmp_path / "run" / "health.json"

    def states() -> set[str]:
        if not health_file.exists():
            return set()
        return {s["state"] for s in json.loads(health_file.read_text())["stripes"].values()}

    daemon = subprocess.Popen(
        [str(test_process.BIN), "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=runtime_env(),
    )  # fmt: skip
    try:
        test_process._wait(lambda: states() == {"auth_failed"}, 30, "both stripes refused")
        time.sleep(1)
        assert states() == {"auth_failed"}  # waiting out the 900 s backoff

        key_file.write_text(test_process.KEY + "\n")  # the operator fixes the key ...
        daemon.send_signal(signal.SIGHUP)  # ... and reloads
        fixed = time.monotonic()
        test_process._wait(lambda: states() == {"streaming"}, 20, "both stripes streaming")
        assert time.monotonic() - fixed < 20

        # A SIGHUP to a healthy daemon changes nothing but committing files.
        def connects() -> dict[str, int]:
            doc = json.loads(health_file.read_text())
            return {k: s["connects"] for k, s in doc["stripes"].items()}

        before = connects()
        daemon.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert states() == {"streaming"} and connects() == before
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=40)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    retried = [e for e in events if e["event"] == "credentials reloaded (SIGHUP); connecting now"]
    assert sorted(e["stripe"] for e in retried) == ["A", "M"]
    assert test_process.KEY not in err and "wrong-key-0000" not in err


def test_a_reload_with_the_key_still_wrong_costs_one_attempt_not_a_loop(tmp_path: Path) -> None:
    """Mock clock: each SIGHUP while refused retries once, at once; still refused, the stripe
    waits its whole auth backoff again (no tight loop against the vendor)."""
    cfg = config(tmp_path / "data", ["A"], ["StockPrint"], supervision={"auth_backoff": 300.0},
                 health={"interval": 10.0})  # fmt: skip
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=0, tick_interval=1.0, seed=4)  # no market
    opened: list[float] = []

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        worker = daemon.supervisor.workers["A"]
        await wait_for(lambda: worker.stats.state == "auth_failed")
        await trio.sleep(100)
        daemon.reload()  # the key is still wrong
        await trio.sleep(100)
        daemon.reload()
        await trio.sleep(700)
        opened.extend(net.opened_at)

    trio.run(partial(run, key="still-wrong-key"), sim_cfg, cfg, scenario, clock=mock_clock())
    gaps = [round(b - a) for a, b in itertools.pairwise(opened)]
    assert gaps[:2] == [100, 100]  # one attempt per reload, at once
    assert len(gaps) >= 3 and all(g >= 300 for g in gaps[2:]), gaps  # then the backoff again

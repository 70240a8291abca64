"""Reconnect policy, stale detection, quiet connections and auth failures, on the mock clock.

What a user sees is checked: connection attempts and their spacing, the health file's state,
the last error (without the secret), and that every data message sent while a connection was
up is in Parquet.
"""

from __future__ import annotations

import errno
import itertools
import json
from functools import partial
from pathlib import Path

import pyarrow.dataset as ds
import trio
from memnet import KEY, MemoryNet, SentCount, config, mock_clock, run, wait_for

from capture import faultpoints
from capture.app import Daemon
from capture.sim.config import SimConfig
from capture.sim.faults import Faults
from capture.sim.record import load_sent_data
from capture.sim.server import Simulator

TYPES = ["OptionNbboQuote", "StockPrint"]


def rows_in_parquet(root: Path) -> int:
    total = 0
    for t in TYPES:
        if (root / t).exists():
            total += ds.dataset(root / t, format="parquet", partitioning="hive").count_rows()
    return total


def sent_rows(record: Path) -> int:
    return sum(len(v) for v in load_sent_data(record).values())


def stats(daemon: Daemon, stripe: str = "A") -> dict[str, object]:
    return daemon.supervisor.workers[stripe].stats.snapshot()


def health(root: Path) -> dict[str, object]:
    doc = json.loads((root / "health.json").read_text())
    assert isinstance(doc, dict)
    return doc


def health_state(root: Path, stripe: str = "A") -> str | None:
    if not (root / "health.json").exists():
        return None
    stripes = health(root)["stripes"]
    assert isinstance(stripes, dict)
    return str(stripes[stripe]["state"])


def test_a_stalled_connection_is_detected_and_replaced(tmp_path: Path) -> None:
    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=20, seed=1, record_dir=record,
        faults=Faults(stall_after_messages=60, faulty_connections=1),
    )
    cfg = config(root, ["A"], TYPES, supervision={"stale_after": 30.0, "backoff_jitter": 0.0})
    seen: dict[str, float] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        worker = daemon.supervisor.workers["A"]
        last_frame, last_change = worker.stats.last_frame_ns, trio.current_time()
        while len(net.opened_at) < 2:  # watch the frames stop, then the reconnect
            if worker.stats.last_frame_ns != last_frame:
                last_frame, last_change = worker.stats.last_frame_ns, trio.current_time()
            await trio.sleep(0.01)
        seen["stalled_at"], seen["reconnected_at"] = last_change, net.opened_at[1]
        await wait_for(lambda: stats(daemon)["state"] == "streaming")
        await trio.sleep(5)
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        sent = SentCount(record)
        await wait_for(lambda: stats(daemon)["messages"] == sent())

    daemon, code = trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert code == 0
    s = stats(daemon)
    assert s["connects"] == 2 and s["restarts"] == 1
    assert "no data or heartbeat for 30 s" in str(s["last_error"])
    # Detected stale_after (30 s) after the last frame, reconnected after the first backoff (1 s).
    gap = seen["reconnected_at"] - seen["stalled_at"]
    assert 31 - 0.02 <= gap <= 31 + 0.02, gap  # +- the 10 ms polling step above
    assert rows_in_parquet(root) == sent_rows(record) > 60


def test_a_connection_with_only_heartbeats_is_quiet_not_streaming(tmp_path: Path) -> None:
    root = tmp_path / "data"
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=0, seed=2, record_dir=tmp_path / "sent",
        heartbeat_interval=10.0,
    )
    cfg = config(root, ["A"], TYPES, health={"quiet_after": 30.0, "interval": 1.0})
    states: list[str] = []

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await wait_for(lambda: health_state(root) == "streaming")
        states.append(health_state(root))
        await trio.sleep(120)  # heartbeats only: never stale (10 s < 30 s), but no data
        states.append(health_state(root))

    daemon, _ = trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert states == ["streaming", "quiet"]
    s = stats(daemon)
    assert s["connects"] == 1 and s["heartbeats"] >= 11  # the connection itself stayed up


def test_reconnect_spacing_is_the_backoff_schedule(tmp_path: Path) -> None:
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=5, seed=3, record_dir=tmp_path / "sent",
        faults=Faults(disconnect_after_messages=10),
    )
    cfg = config(
        tmp_path / "data", ["A"], TYPES,
        supervision={"backoff_initial": 1.0, "backoff_multiplier": 2.0, "backoff_max": 16.0,
                     "backoff_jitter": 0.0},
    )
    opened: list[float] = []

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await wait_for(lambda: len(net.opened_at) >= 7)
        opened.extend(net.opened_at)

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    # Each connection lives a moment (10 messages), then waits 1, 2, 4, 8, 16, 16 s.
    for gap, expected in zip(gaps, [1, 2, 4, 8, 16, 16], strict=True):
        assert expected - 1e-6 <= gap <= expected + 0.5, gaps


def test_a_rejected_key_backs_off_long_and_says_auth_failed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    wrong = "wrong-key-9f8e7d6c5b4a"
    # No market: a rejected key never subscribes, and 1,000 s of mock time of a market ticking
    # every 0.01 s was most of this test's CPU.
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=0.0, tick_interval=1.0, seed=4, record_dir=tmp_path / "sent"
    )
    # Health every 10 s, not every 1 s: 1,000 s of health writes were the rest of the CPU.
    cfg = config(
        root, ["A", "S"], TYPES, supervision={"auth_backoff": 900.0}, health={"interval": 10.0}
    )
    opened: list[float] = []
    states: list[object] = []

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await wait_for(lambda: stats(daemon)["state"] == "auth_failed")
        await trio.sleep(1000)
        opened.extend(net.opened_at)
        states.append(health(root)["stripes"])

    _, _ = trio.run(partial(run, key=wrong), sim_cfg, cfg, scenario, clock=mock_clock())
    # Two stripes, each tried once, then once more after 900 s: no tight loop.
    assert len(opened) == 4
    assert sorted(opened)[2] - sorted(opened)[0] >= 900
    stripes = states[0]
    assert isinstance(stripes, dict)
    assert {s["state"] for s in stripes.values()} == {"auth_failed"}
    assert all("LogonFailed" in s["last_error"] for s in stripes.values())
    # The error names where the key came from, never the key.
    assert all("environment variable MLINK_TEST_KEY" in s["last_error"] for s in stripes.values())
    text = (root / "health.json").read_text()
    assert wrong not in text and "healthy\": false" in text


def test_a_stop_during_a_restart_backoff_stops_at_once(tmp_path: Path) -> None:
    """A stop requested while a failed stripe waits out its restart backoff is not ignored:
    no replacement worker connects, and the daemon exits without waiting for the grace."""
    root = tmp_path / "data"
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=20, seed=7, record_dir=tmp_path / "sent")
    cfg = config(
        root, ["A"], TYPES,
        supervision={"backoff_initial": 120.0, "backoff_max": 120.0, "backoff_jitter": 0.0,
                     "shutdown_grace": 30.0},
    )
    seen: dict[str, float] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        # Rows in open files (a rotation with nothing open writes nothing, fails nothing).
        await wait_for(lambda: daemon.supervisor.workers["A"].stats.rows_written > 50)
        faultpoints.arm_failure("sink.write.A", errno.EIO, 1)
        daemon.rotate()  # the commit fails: the worker fails, the stripe waits 120 s
        await wait_for(
            lambda: stats(daemon)["state"] == "backoff"
            and "Input/output error" in str(stats(daemon)["last_error"])
        )
        await trio.sleep(1)
        seen["connections"] = len(net.opened_at)
        seen["stop_at"] = trio.current_time()

    clock = mock_clock()
    daemon, code = trio.run(run, sim_cfg, cfg, scenario, clock=clock)
    assert code == 0
    assert clock.current_time() - seen["stop_at"] < 5  # not the 120 s backoff, nor the grace
    assert stats(daemon)["connects"] == seen["connections"] == 1  # no replacement connected
    assert stats(daemon)["restarts"] == 0  # nor was one started
    assert stats(daemon)["state"] == "stopped"

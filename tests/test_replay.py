"""``mlink-capture replay``: the journal of a live run, replayed into another root, gives the
same rows (every column: receive times, sessions, sequence numbers, snapshot flags)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import trio
from memnet import BASE_NS, KEY, MemoryNet, config, inline, mock_clock, run

from capture.app import Daemon
from capture.clock import TrioWallClock
from capture.replay import plan, replay
from capture.sim.config import SimConfig
from capture.sim.faults import Faults
from capture.sim.server import Simulator

TYPES = ["OptionNbboQuote", "StockBookQuote", "StockPrint"]


def table(root: Path, msg_type: str) -> list[dict[str, object]]:
    t = ds.dataset(root / msg_type, partitioning="hive").to_table()
    return t.sort_by("_seq").to_pylist()


def test_replay_rebuilds_the_same_rows(tmp_path: Path) -> None:
    live, rebuilt = tmp_path / "live", tmp_path / "rebuilt"
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}),
        rate=5,
        seed=61,
        faults=Faults(disconnect_after_messages=250, faulty_connections=1),  # two sessions
        stripes=("A", "M"),  # the daemon's stripes only (as many rows as 20/s of all stripes)
        tick_interval=0.2,  # 150 s of mock time in 750 market steps, one update each
    )
    cfg = config(
        live,
        ["A", "M"],
        TYPES,
        journal={"retain_hours": 24.0, "segment_mb": 1},
        output={"rotate_interval": 60},
    )

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await trio.sleep(150)  # several rotations: segments retired into the archive

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    # Committed segments were kept in the archive (the rest is still in the live journal).
    assert list((live / "_journal").glob("stripe=*/archive/seg-*.mlj"))

    async def rebuild() -> dict[str, int]:
        return await replay(
            cfg, rebuilt, plan(cfg, rebuilt), clock=TrioWallClock(BASE_NS), offload=inline
        )

    frames = trio.run(rebuild, clock=mock_clock())
    total = 0
    for msg_type in TYPES:
        want, got = table(live, msg_type), table(rebuilt, msg_type)
        assert got == want, msg_type
        total += len(got)
        assert len({r["_session"] for r in got if r["stripe"] == "A"}) == 2
        assert any(r["_snapshot"] for r in got) and not all(r["_snapshot"] for r in got)
    assert sum(frames.values()) == total


def test_replay_refuses_the_live_root(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(
        '[source]\nurl = "ws://h/mlink/jsonf"\nstripes = ["A"]\n[output]\nroot = "data"\n'
    )
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "mlink-capture"),
            "replay",
            "--config",
            str(cfg_file),
            "--to",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "separate root" in result.stderr

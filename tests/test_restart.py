"""A second run on the same data root: the journal is recovered, the receive sequence goes on,
the server is asked only for what changed since the last committed record, and the gap between
the runs is in the capture-events table.  Mock clock, in-memory WebSocket."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import trio
from memnet import BASE_NS, KEY, MemoryNet, config, launch, mock_clock, wait_for

from capture.clock import TrioWallClock
from capture.sim.config import SimConfig
from capture.sim.server import Simulator

TYPES = ["OptionNbboQuote", "StockPrint"]


def test_a_restart_continues_where_the_last_run_stopped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    cfg = config(root, ["A"], TYPES)
    runs: list[dict[str, int]] = []

    async def main() -> None:
        clock = TrioWallClock(BASE_NS)
        sim = Simulator(
            SimConfig(api_keys=frozenset({KEY}), rate=20, seed=41), clock_ns=clock.now_ns
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sim.run_market)
            net = MemoryNet(sim, nursery)
            for _ in range(2):
                launched = launch(nursery, cfg, clock, net)
                worker = launched.daemon.workers[0]
                await wait_for(lambda w=worker: w.stats.messages > 100)
                await trio.sleep(10)
                await launched.stop()
                runs.append(
                    {
                        "last_frame": worker.stats.last_frame_ns or 0,
                        "connects": worker.stats.connects,
                    }
                )
                await trio.sleep(30)  # the daemon is down; the market moves on
            nursery.cancel_scope.cancel()

    trio.run(main, clock=mock_clock())
    for msg_type in TYPES:
        table = ds.dataset(root / msg_type, partitioning="hive").to_table(
            columns=["_session", "_seq", "h_sID", "h_seqN"]
        )
        versions = list(zip(table["h_sID"].to_pylist(), table["h_seqN"].to_pylist(), strict=True))
        assert not [v for v, n in Counter(versions).items() if n > 1], f"{msg_type}: duplicates"
        assert len(set(table["_seq"].to_pylist())) == table.num_rows  # one sequence across runs
    glob = f"{root}/capture_events/**/*.parquet"
    rows = duckdb.sql(
        f"SELECT event, epoch_ns(gap_start), count, _session FROM read_parquet('{glob}') "
        "WHERE event IN ('gap', 'recovery') ORDER BY _recv_time"
    ).fetchall()
    recoveries = [r for r in rows if r[0] == "recovery"]
    gaps = [r for r in rows if r[0] == "gap"]
    assert len(recoveries) == 2 and all(r[2] == 0 for r in recoveries)  # clean stops: no replay
    assert len(gaps) == 1 and gaps[0][1] == runs[0]["last_frame"]  # from the first run's last frame
    # The second run's sequence numbers all follow the first run's.
    seqs = (
        ds.dataset(root / "OptionNbboQuote", partitioning="hive")
        .to_table(columns=["_session", "_seq"])
        .to_pylist()
    )
    first, second = sorted({r["_session"] for r in seqs})
    assert max(r["_seq"] for r in seqs if r["_session"] == first) < min(
        r["_seq"] for r in seqs if r["_session"] == second
    )


def test_instances_sharing_a_root_leave_each_others_open_files_alone(tmp_path: Path) -> None:
    """Two daemons for two stripe groups on one data root (systemd/mlink-capture@.service).
    One starts, and restarts, while the other has files open: those files are not touched
    (startup recovery looks only at the starting daemon's stripes) and every frame the other
    received is in its Parquet."""
    root = tmp_path / "data"
    cfg_a = config(root, ["A"], TYPES, health={"path": str(tmp_path / "health-a.json")})
    cfg_b = config(root, ["B"], TYPES, health={"path": str(tmp_path / "health-b.json")})
    open_b: list[list[str]] = []
    received_b: list[int] = []

    def in_progress(stripe: str) -> list[str]:
        return sorted(
            p.name
            for p in root.rglob("*")
            if p.name.endswith(".inprogress") and p.parent.name == f"stripe={stripe}"
        )

    async def main() -> None:
        clock = TrioWallClock(BASE_NS)
        sim = Simulator(
            SimConfig(api_keys=frozenset({KEY}), rate=20, seed=43), clock_ns=clock.now_ns
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sim.run_market)
            net = MemoryNet(sim, nursery)
            b = launch(nursery, cfg_b, clock, net)
            worker_b = b.daemon.workers[0]
            await wait_for(lambda: bool(in_progress("B")))
            for _ in range(2):  # A starts, stops, starts again while B writes
                open_b.append(in_progress("B"))
                a = launch(nursery, cfg_a, clock, net)
                worker_a = a.daemon.workers[0]
                await wait_for(lambda w=worker_a: w.stats.messages > 50)
                open_b.append(in_progress("B"))
                await trio.sleep(5)
                assert await a.stop() == 0
            assert await b.stop() == 0
            received_b.append(worker_b.stats.messages)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=mock_clock())
    assert all(open_b), "B had files open whenever A started"
    assert not (root / "_quarantine").exists(), "nothing of B (or A) was moved aside"
    only_b = ds.field("stripe") == "B"
    rows_b = sum(
        ds.dataset(root / t, partitioning="hive").to_table(filter=only_b).num_rows for t in TYPES
    )
    assert rows_b == received_b[0] > 0

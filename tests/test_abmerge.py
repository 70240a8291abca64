"""Redundant capture (A/B): the merge is the union of the copies minus exact duplicates, keeps
the earliest receive time, and reports coverage; two real daemons against one simulator."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import trio
from e2e_util import KEY, KEY_ENV, daemon_config

from capture.abmerge import HOST_STAMPED, merge
from capture.app import Daemon
from capture.compact import CompactionSettings, compact
from capture.recovery import scan_committed
from capture.sim.config import SimConfig
from capture.sim.faults import Faults
from capture.sim.record import load_sent_data
from capture.sim.server import Simulator
from capture.verify import verify

TYPE = "OptionNbboQuote"
TS = pa.timestamp("ns", tz="UTC")


def side(host: str, rows: list[tuple[str, float, int, int]]) -> pa.Table:
    """(ticker, bid, source time, receive time) rows as one host captured them."""
    return pa.table(
        {
            "_recv_time": pa.array([r[3] for r in rows], pa.int64()).cast(TS),
            "_seq": pa.array(range(len(rows)), pa.int64()),
            "h_encT": pa.array([r[3] - 5 for r in rows], pa.int64()).cast(TS),
            "okey_tk": pa.array([r[0] for r in rows]).dictionary_encode(),
            "bidPrice": pa.array([r[1] for r in rows], pa.float64()),
            "h_sTim": pa.array([r[2] for r in rows], pa.int64()).cast(TS),
            "_host": pa.array([host] * len(rows)).dictionary_encode(),
        }
    )


def test_union_minus_exact_duplicates_keeps_the_earliest_copy_and_reports_coverage() -> None:
    a = side("a", [("SPY", 1.0, 10, 100), ("SPY", 1.0, 10, 101), ("QQQ", 2.0, 20, 200),
                   ("IWM", float("nan"), 30, 300), ("SPY", 1.5, 40, 400)])  # fmt: skip
    b = side("b", [("SPY", 1.0, 10, 99), ("QQQ", 2.0, 20, 205), ("IWM", float("nan"), 30, 290),
                   ("QQQ", 2.5, 50, 500), ("QQQ", 2.5, 50, 510),
                   ("AAPL", None, 60, 600)])  # fmt: skip
    merged, report = merge([a, b], [0, 1], TYPE, [("a", 450, 700)], stripe="A")
    got = sorted(
        zip(merged.column("okey_tk").cast(pa.string()).to_pylist(),
            merged.column("h_sTim").cast(pa.int64()).to_pylist(),
            merged.column("_recv_time").cast(pa.int64()).to_pylist(),
            merged.column("_host").cast(pa.string()).to_pylist(), strict=True),
        key=repr,
    )  # fmt: skip
    assert got == sorted(
        [
            ("SPY", 10, 99, "b"),  # a has it twice, b once: twice, the earliest copies
            ("SPY", 10, 101, "a"),
            ("QQQ", 20, 200, "a"),
            ("IWM", 30, 290, "b"),  # NaN equals NaN here
            ("SPY", 40, 400, "a"),  # only a
            ("QQQ", 50, 500, "b"),  # only b, received twice by b: both kept
            ("QQQ", 50, 510, "b"),
            ("AAPL", 60, 600, "b"),  # null bid
        ],
        key=repr,
    )
    rows = report.select(["event", "result", "count", "detail", "_stripe"]).to_pylist()
    only = {(r["result"], r["count"]) for r in rows if r["event"] == "coverage"}
    assert only == {("only a", 2), ("only b", 3)}  # SPY@101: a saw it twice, b once
    gap = next(r for r in rows if r["event"] == "coverage_gap")
    assert gap["result"] == "gap a" and gap["count"] == 3
    assert json.loads(gap["detail"]) == {"covered_by": ["b"]}
    assert {r["_stripe"] for r in rows} == {"A"}
    # merging again with one side's copy changes nothing (max is idempotent)
    again, _ = merge([merged, b], [0, 1], TYPE, stripe="A")
    assert again.num_rows == merged.num_rows


def content(t: pa.Table) -> Counter[tuple[Any, ...]]:
    cols = [c for c in t.column_names if c not in HOST_STAMPED and c not in ("date", "stripe")]
    return Counter(
        tuple(repr(v) for v in row)
        for row in zip(*(t.column(c).to_pylist() for c in sorted(cols)), strict=True)
    )


async def two_daemons(sim_cfg: SimConfig, root_a: Path, root_b: Path, seconds: float) -> None:
    sim = Simulator(sim_cfg)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.run)
        daemons = []
        stopped: list[trio.Event] = []
        for root, host, latency in ((root_a, "hosta", 1), (root_b, "hostb", 250)):
            # A's reconnect waits 1 s: a gap B fills
            cfg = daemon_config(root, port, ["A"], [TYPE], capture={"host_id": host},
                                source={"active_latency": latency},
                                supervision={"backoff_initial": 1.0, "backoff_max": 1.0,
                                             "backoff_jitter": 0.0})  # fmt: skip
            d = Daemon(cfg, environ={KEY_ENV: KEY}, install_signals=False)
            daemons.append(d)
            stopped.append(trio.Event())
            nursery.start_soon(run_until_stopped, d, stopped[-1])
            await trio.sleep(0.5)  # A holds the simulator's first (faulty) connection
        await trio.sleep(seconds)
        sim.cfg = sim.cfg.with_overrides(rate=0.0, type_rates={})
        await trio.sleep(1.0)
        for d in daemons:
            d.stop()
        with trio.fail_after(30):  # each has committed its files and returned 0
            for event in stopped:
                await event.wait()
        nursery.cancel_scope.cancel()


async def run_until_stopped(daemon: Daemon, stopped: trio.Event) -> None:
    assert await daemon.run() == 0
    stopped.set()


def test_two_daemons_with_different_conflation_and_a_drop_merge_into_the_union(
    tmp_path: Path,
) -> None:
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=400, seed=3, record_dir=tmp_path / "sent",
        faults=Faults(disconnect_after_messages=300, faulty_connections=1),
        symbols=("AAPL", "SPY"),
    )  # fmt: skip
    trio.run(two_daemons, sim_cfg, root_a, root_b, 4.0)
    live_a = ds.dataset(root_a / TYPE, format="parquet", partitioning="hive").to_table()
    live_b = ds.dataset(root_b / TYPE, format="parquet", partitioning="hive").to_table()
    ca, cb = content(live_a), content(live_b)
    # conflation and the drop made them differ both ways
    assert ca - cb, (sum(ca.values()), sum(cb.values()))
    assert cb - ca, (sum(ca.values()), sum(cb.values()))
    events_a = ds.dataset(root_a / "capture_events", format="parquet").to_table(columns=["event"])
    assert "gap" in events_a.column("event").to_pylist()  # the drop on A's side
    index_before = scan_committed(root_a, "A", since_ns=None)

    later = time.time_ns() + 3 * 86_400 * 10**9
    out = compact(CompactionSettings(root=root_a, host_id="hosta", peers=(root_b,), min_age_s=0),
                  now_ns=later)  # fmt: skip
    assert out.units_compacted >= 1 and not out.failed, out
    merged = ds.dataset(root_a / TYPE, format="parquet", partitioning="hive").to_table()
    assert content(merged) == ca | cb  # union, duplicates between the copies once
    assert out.duplicates_dropped == live_a.num_rows + live_b.num_rows - merged.num_rows > 0
    assert set(merged.column("_host").cast(pa.string()).to_pylist()) == {"hosta", "hostb"}
    # every record the simulator sent on any connection is there (as type, seqN, source time)
    sent = {
        (json.loads(b)["header"]["seqN"], json.loads(b)["header"]["sTim"])
        for bodies in load_sent_data(tmp_path / "sent").values() for b in bodies
    }  # fmt: skip
    have = {
        (s, t.strftime("%Y-%m-%d %H:%M:%S.%f"))
        for s, t in zip(merged.column("h_seqN").to_pylist(), merged.column("h_sTim").to_pylist(),
                        strict=True)
    }  # fmt: skip
    assert {(s, t[:26]) for s, t in sent} == have
    # the earliest receive time of each record's copies is the one kept
    firsts: dict[tuple[Any, ...], int] = {}
    for t in (live_a, live_b):
        for key, recv in zip(zip(t.column("h_seqN").to_pylist(), t.column("_snapshot").to_pylist(),
                                 strict=True), t.column("_recv_time").cast(pa.int64()).to_pylist(),
                             strict=True):  # fmt: skip
            firsts[key[0]] = min(firsts.get(key[0], recv), recv)
    kept = merged.column("_recv_time").cast(pa.int64()).to_pylist()
    assert all(firsts[s] <= r for s, r in zip(merged.column("h_seqN").to_pylist(), kept,
                                               strict=True))  # fmt: skip
    # coverage: the rows only B saw, and A's gap covered by B
    report = [
        r for f in (root_a / "capture_events").rglob("coverage-*.parquet")
        for r in pq.read_table(f, columns=["event", "result", "count"]).to_pylist()
    ]  # fmt: skip
    only_b = sum(r["count"] for r in report if r["result"] == "only hostb")
    assert only_b == sum((cb - ca).values())
    gaps = [r for r in report if r["event"] == "coverage_gap"]
    assert gaps and gaps[0]["result"] == "gap hosta" and sum(g["count"] for g in gaps) > 0
    # A's journal accounting and verify still hold on the merged data
    assert scan_committed(root_a, "A", since_ns=None).ranges == index_before.ranges
    report_a = verify(root_a)
    assert report_a.ok, report_a.render()
    # a rerun merges nothing new
    assert compact(CompactionSettings(root=root_a, host_id="hosta", peers=(root_b,), min_age_s=0),
                   now_ns=later).units_compacted == 0  # fmt: skip


def test_the_earliest_copy_is_chosen_by_the_exact_ns_receive_time() -> None:
    def lake_side(host: str, recv_ns: int) -> pa.Table:
        t = side(host, [("SPY", 1.0, 10, recv_ns)])
        us = pa.array([recv_ns // 1000], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        t = t.set_column(0, pa.field("_recv_time", us.type), us)
        return t.add_column(1, "_recv_time_ns", pa.array([recv_ns], pa.int64()))

    # the same microsecond; b received 400 ns earlier than a
    merged, _ = merge([lake_side("a", 5_000_900), lake_side("b", 5_000_500)], [0, 1], TYPE)
    assert merged.column("_host").cast(pa.string()).to_pylist() == ["b"]
    assert merged.column("_recv_time_ns").to_pylist() == [5_000_500]

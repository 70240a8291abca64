"""Resume after reconnect (PROTOCOL.md §6.1, §7.4): the worker sends ``highwaterTs`` = the
send time of the last record it received, the server sends only what changed since, and the
capture has no gap and no duplicate of the records the server still holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import trio
from memnet import KEY, MemoryNet, SentCount, config, mock_clock, run, wait_for

from capture.app import Daemon
from capture.sim.config import SimConfig
from capture.sim.faults import Faults
from capture.sim.server import Simulator

TYPES = ["OptionNbboQuote", "StockBookQuote"]


def test_reconnect_resumes_from_the_high_water_mark(tmp_path: Path) -> None:
    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=40, seed=12, record_dir=record,
        faults=Faults(disconnect_after_messages=400, faulty_connections=1),
    )
    cfg = config(root, ["A"], TYPES, supervision={"backoff_initial": 5.0})
    held: dict[str, set[tuple[int, int]]] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await wait_for(lambda: len(net.opened_at) == 2)
        await trio.sleep(20)
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        worker = daemon.supervisor.workers["A"]
        sent = SentCount(record)
        await wait_for(lambda: worker.stats.messages == sent())
        for t in TYPES:  # what the server holds at the end: the latest record of every key
            held[t] = {(r.sid, r.seqn) for r in sim.market.snapshot(t) if "A" in r.stripes}

    daemon, code = trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert code == 0 and daemon.supervisor.workers["A"].stats.connects == 2
    for msg_type in TYPES:
        table = ds.dataset(root / msg_type, format="parquet", partitioning="hive").to_table(
            columns=["_session", "_snapshot", "_seq", "h_sID", "h_seqN", "h_sTim"]
        )
        versions = list(zip(table["h_sID"].to_pylist(), table["h_seqN"].to_pylist(), strict=True))
        # No duplicate: every record version was captured once.
        dupes = [v for v, n in Counter(versions).items() if n > 1]
        assert not dupes, f"{msg_type}: {len(dupes)} records captured twice"
        # No gap: every record the server still holds is in Parquet.
        missing = held[msg_type] - set(versions)
        assert not missing, f"{msg_type}: {len(missing)} held records never captured"
        # The second session asked for changes only: its snapshot is newer than all of the first.
        first, second = sorted(set(table["_session"].to_pylist()))
        s1 = table.filter(pc.equal(table["_session"], first))
        s2_snap = table.filter(
            pc.and_(pc.equal(table["_session"], second), table["_snapshot"])
        )
        high_water = pc.max(s1["h_sTim"]).value
        assert s2_snap.num_rows > 0  # keys changed during the 5 s outage came again ...
        assert pc.min(s2_snap["h_sTim"]).value > high_water  # ... and only those
        if msg_type == "OptionNbboQuote":  # hundreds of keys: most did not change
            assert s2_snap.num_rows < len(held[msg_type]) / 2


def test_capture_events_answer_which_intervals_are_missing(tmp_path: Path) -> None:
    import duckdb

    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=20, seed=13, record_dir=record,
        faults=Faults(disconnect_after_messages=300, faulty_connections=1),
    )
    cfg = config(root, ["A"], TYPES, supervision={"backoff_initial": 5.0})
    seen: dict[str, int] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        worker = daemon.supervisor.workers["A"]
        last = worker.stats.last_frame_ns
        while len(net.opened_at) < 2:  # remember the last frame before the reconnect
            last = worker.stats.last_frame_ns
            await trio.sleep(0.01)
        seen["last_before"] = last or 0
        await wait_for(lambda: worker.stats.last_frame_ns != last)
        seen["first_after"] = worker.stats.last_frame_ns or 0
        await trio.sleep(5)

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    glob = f"{root}/capture_events/**/*.parquet"
    gaps = duckdb.sql(
        f"""SELECT epoch_ns(gap_start), epoch_ns(gap_end)
            FROM read_parquet('{glob}', hive_partitioning = true)
            WHERE event = 'gap' AND stripe = 'A' AND date = DATE '2025-06-02'"""
    ).fetchall()
    assert gaps == [(seen["last_before"], seen["first_after"])]
    query = f"SELECT DISTINCT event FROM read_parquet('{glob}')"
    kinds = {r[0] for r in duckdb.sql(query).fetchall()}
    assert kinds == {
        "checkpoint", "connect", "disconnect", "gap", "logon", "recovery", "stream_ack"
    }
    reasons = duckdb.sql(
        f"SELECT detail FROM read_parquet('{glob}') WHERE event = 'disconnect' ORDER BY _seq"
    ).fetchall()
    assert [r[0] for r in reasons] == [
        "connection closed (1006 ABNORMAL_CLOSURE)",
        "daemon stopping",
    ]

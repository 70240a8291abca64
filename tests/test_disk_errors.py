"""A full disk: writing stops safely (nothing corrupt, nothing visible half-written), the stripe
says so, the other stripes go on, and when the disk has room again the stripe resumes and every
frame it had received reaches Parquet (from the journal).  Mock clock, in-memory WebSocket."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import trio
from memnet import KEY, MemoryNet, config, mock_clock, run, wait_for

from capture import faultpoints
from capture.app import Daemon
from capture.frames import Frame, FrameDecoder
from capture.protocol import CONTROL_TYPES
from capture.sim.config import SimConfig
from capture.sim.server import Simulator

TYPES = ["OptionNbboQuote", "StockPrint"]


def sent_on_first_connection(record: Path, stripe: str) -> list[tuple[int, int]]:
    data = sorted((record / stripe).glob("c*.jsonf"))[0].read_bytes()
    out = []
    for ev in FrameDecoder().feed(data):
        if isinstance(ev, Frame):
            h = json.loads(ev.body)["header"]
            if h["mTyp"] not in CONTROL_TYPES:
                out.append((h["sID"], h["seqN"]))
    return out


def test_enospc_stops_one_stripe_safely_and_it_resumes_without_loss(tmp_path: Path) -> None:
    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=30, seed=51, record_dir=record)
    cfg = config(root, ["A", "M"], TYPES, supervision={"backoff_initial": 2.0})
    seen: dict[str, object] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        a = daemon.supervisor.workers["A"]
        await wait_for(lambda: a.stats.state == "streaming" and a.stats.messages > 200)
        await trio.sleep(1)
        seen["received_before"] = a.stats.messages
        faultpoints.arm_failure("sink.write.A", errno.ENOSPC, 3)  # three writes fail
        daemon.rotate()

        def health() -> dict[str, dict[str, str]]:
            return json.loads((root / "health.json").read_text())["stripes"]  # type: ignore[no-any-return]

        await wait_for(lambda: "No space left" in str(health()["A"]["last_error"]))
        doc = {"stripes": health()}
        seen["during"] = {k: (v["state"], v["last_error"]) for k, v in doc["stripes"].items()}
        seen["visible_during"] = sorted(str(p) for p in root.rglob("*.parquet"))
        # The disk has room again after three failures: the stripe comes back by itself.
        await wait_for(
            lambda: (
                daemon.supervisor.workers["A"].stats.state == "streaming"
                and daemon.supervisor.workers["A"].stats.restarts >= 1
            )
        )
        await trio.sleep(5)

    daemon, code = trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert code == 0
    during = seen["during"]
    assert isinstance(during, dict)
    assert during["A"][0] in ("backoff", "connecting") and "No space left" in during["A"][1]
    assert during["M"][0] == "streaming" and during["M"][1] is None  # the other stripe goes on
    for path in map(Path, seen["visible_during"]):  # type: ignore[arg-type]
        pq.read_table(path)  # nothing half-written was ever visible
    # Every frame stripe A had received before the failure is in Parquet, once, in order.
    rows = []
    for t in TYPES:
        table = ds.dataset(root / t, partitioning="hive").to_table(
            columns=["stripe", "_seq", "_session", "h_sID", "h_seqN"]
        )
        rows += [r for r in table.to_pylist() if r["stripe"] == "A"]
    first_session = min(r["_session"] for r in rows)
    got = [
        (r["h_sID"], r["h_seqN"])
        for r in sorted(rows, key=lambda r: r["_seq"])
        if r["_session"] == first_session
    ]
    sent = sent_on_first_connection(record, "A")
    assert got == sent[: len(got)], "rows of the first connection are its frames, in order"
    assert len(got) >= seen["received_before"]  # type: ignore[operator]
    assert daemon.supervisor.workers["A"].stats.restarts >= 1

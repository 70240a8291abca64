"""The writer's two stages: the decode of a stripe's next batch overlaps the write of the current
one, and order and durability hold, also when a write fails while the next batch is decoded.

Mock clock: decoding and writing run inline after a fixed mock-time cost (an offload that
sleeps first, then does the real work), so every start and end below is exact.  The process
may run two jobs at once (the decode slots of a 2-core machine, whatever the test machine)."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import trio
from memnet import KEY, MemoryNet, SentCount, config, mock_clock, run, wait_for

from capture import faultpoints
from capture.app import Daemon
from capture.batching import PendingBatch
from capture.batchwrite import BatchWriter
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data
from capture.sim.server import Simulator

TYPES = ["OptionNbboQuote", "StockPrint"]
DECODE_S = 0.3  # mock seconds per decode ...
WRITE_S = 0.2  # ... and per write: a write ends while the next decode still runs


@dataclass
class Timeline:
    """(stage, type, first seq, start, end) of every decode and write, in start order."""

    jobs: list[tuple[str, str, int, float, float]] = field(default_factory=list)
    started: list[tuple[str, str, int, float]] = field(default_factory=list)
    fail_write: int | None = None  # fail the n-th write of a full batch (1-based)
    failed: tuple[str, int, float, float] | None = None
    full_writes: int = 0
    next_decode: trio.Event | None = None  # set when a batch after the failing one is decoded
    failing_seq: int = -1

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        stage = getattr(fn, "__name__", "")
        if getattr(fn, "__self__", None).__class__ is not BatchWriter or stage not in (
            "decode",
            "write",
        ):
            return fn(*args)
        pb = next(a for a in args if isinstance(a, PendingBatch))
        start = trio.current_time()
        self.started.append((stage, pb.msg_type, pb.seq[0], start))
        if stage == "decode" and self.next_decode is not None and pb.seq[0] > self.failing_seq:
            self.next_decode.set()
        await trio.sleep(DECODE_S if stage == "decode" else WRITE_S)
        if stage == "write" and len(pb.seq) == 1024:
            self.full_writes += 1
            if self.full_writes == self.fail_write:  # its row group write fails (a full disk) ...
                self.failing_seq, self.next_decode = pb.seq[0], trio.Event()
                await self.next_decode.wait()  # ... once the next batch is being decoded
                faultpoints.arm_failure("sink.write.A", errno.ENOSPC, 1)
                try:
                    return fn(*args)
                except OSError:
                    self.failed = (pb.msg_type, pb.seq[0], start, trio.current_time())
                    raise
        try:
            return fn(*args)
        finally:
            self.jobs.append((stage, pb.msg_type, pb.seq[0], start, trio.current_time()))


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("capture.app.decode_slots", lambda processes=1: 2)


def rows_of_stripe(root: Path) -> list[dict[str, Any]]:
    """Stripe A's rows, by ``_seq``; every file's rows in receive order."""
    rows = []
    for t in TYPES:
        if not (root / t).exists():
            continue
        for path in sorted((root / t).rglob("*.parquet")):
            seqs = pq.read_table(path, columns=["_seq"]).column("_seq").to_pylist()
            assert seqs == sorted(seqs), f"{path.name}: rows out of order"
        table = ds.dataset(root / t, partitioning="hive").to_table(
            columns=["stripe", "_seq", "_session", "h_sID", "h_seqN"]
        )
        rows += [{**r, "msg_type": t} for r in table.to_pylist() if r["stripe"] == "A"]
    return sorted(rows, key=lambda r: r["_seq"])


def sent_frames(record: Path, msg_type: str) -> list[tuple[int, int]]:
    """(sID, seqN) of every ``msg_type`` frame stripe A was sent, in send order."""
    bodies = load_sent_data(record).get((msg_type, "A"), [])
    return [(h["sID"], h["seqN"]) for h in (json.loads(b)["header"] for b in bodies)]


def stored(rows: list[dict[str, Any]], msg_type: str) -> list[tuple[int, int]]:
    return [(r["h_sID"], r["h_seqN"]) for r in rows if r["msg_type"] == msg_type]


def overlaps(timeline: Timeline) -> int:
    """Decodes that started while the write of the batch before them was still running."""
    writes = [j for j in timeline.jobs if j[0] == "write"]
    decodes = [j for j in timeline.jobs if j[0] == "decode"]
    return sum(1 for w in writes for d in decodes if d[2] != w[2] and w[3] <= d[3] < w[4])


def test_the_next_batch_is_decoded_while_this_one_is_written(tmp_path: Path) -> None:
    root, record = tmp_path / "data", tmp_path / "sent"
    cfg = config(root, ["A"], TYPES, pipeline={"batch_rows": 64, "flush_interval": 0.5})
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=400, seed=23, record_dir=record)
    timeline = Timeline()

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        worker = daemon.workers[0]
        await trio.sleep(6)
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        sent = SentCount(record)
        with trio.fail_after(60):
            await wait_for(lambda: worker.stats.messages == sent())

    daemon, code = trio.run(
        partial(run, offload=timeline.offload), sim_cfg, cfg, scenario, clock=mock_clock()
    )
    stats = daemon.workers[0].stats.snapshot()
    assert code == 0 and stats["restarts"] == 0, stats["last_error"]
    decodes = [j for j in timeline.jobs if j[0] == "decode"]
    writes = [j for j in timeline.jobs if j[0] == "write"]
    assert len(writes) == len(decodes) > 10
    # Every batch is written in the order it was decoded ...
    assert [j[1:3] for j in writes] == [j[1:3] for j in decodes]
    # ... and the decode of the next batch starts before the write of this one ends.
    assert overlaps(timeline) >= len(writes) // 2
    # Never more than one decoded batch waits: a decode starts only after the write of the
    # batch two before it has started.
    for i in range(2, len(decodes)):
        assert decodes[i][3] >= writes[i - 2][3]
    # What a user finds: every frame sent, once, in order.
    rows = rows_of_stripe(root)
    for t in TYPES:
        assert stored(rows, t) == sent_frames(record, t) != []
    assert len(rows) == stats["rows_written"]


def test_a_write_failing_while_the_next_batch_is_decoded_loses_and_reorders_nothing(
    tmp_path: Path,
) -> None:
    root, record = tmp_path / "data", tmp_path / "sent"
    cfg = config(
        root,
        ["A"],
        ["OptionNbboQuote"],
        pipeline={"batch_rows": 1024, "flush_interval": 20.0},
        output={"rotate_interval": 300, "row_group_rows": 1024},
        supervision={"backoff_initial": 2.0},
    )
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=600, seed=29, record_dir=record)
    timeline = Timeline(fail_write=2)
    seen: dict[str, Any] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        a = daemon.supervisor.workers["A"]
        with trio.fail_after(120):
            await wait_for(lambda: timeline.failed is not None)
            seen["received_before"] = a.stats.messages
            await wait_for(lambda: a.stats.state == "streaming" and a.stats.restarts >= 1)
        await trio.sleep(3)
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        sent = SentCount(record)
        with trio.fail_after(120):
            await wait_for(lambda: daemon.supervisor.workers["A"].stats.messages == sent())

    daemon, code = trio.run(
        partial(run, offload=timeline.offload), sim_cfg, cfg, scenario, clock=mock_clock()
    )
    faultpoints.disarm_failures()
    assert code == 0
    assert timeline.failed is not None
    _, failed_seq, _, w_end = timeline.failed
    # The failing write ran while the next batch was being decoded.
    meanwhile = [
        d for d in timeline.started if d[0] == "decode" and d[2] > failed_seq and d[3] <= w_end
    ]
    assert meanwhile, timeline.started
    assert not any(
        j[0] == "decode" and j[2] == meanwhile[0][2] and j[4] <= w_end for j in timeline.jobs
    )
    # Every frame sent is in Parquet once and in order (the failed batch and the one decoded
    # meanwhile came back from the journal).
    rows = rows_of_stripe(root)
    sent = sent_frames(record, "OptionNbboQuote")
    first_session = min(r["_session"] for r in rows)
    got = [(r["h_sID"], r["h_seqN"]) for r in rows if r["_session"] == first_session]
    assert got == sent[: len(got)], "rows of the first connection are its frames, in order"
    assert len(got) >= seen["received_before"] > 2 * 1024
    assert len({r["_seq"] for r in rows}) == len(rows)  # each frame received stored once
    assert daemon.supervisor.workers["A"].stats.restarts >= 1

"""Recovery does not hold the connection back (issue 15, item 10): after a crash the stripe
goes live at once and the journal is replayed beside it, with its own sequence numbers; the
resume point comes from the journal.  Real threads, in-memory WebSocket, real Parquet."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import trio
from journal_util import MSG_TYPE, write_journal
from memnet import BASE_NS, KEY, MemoryNet, config, inline, launch, mock_clock, run, wait_for

from capture.app import Daemon
from capture.clock import TrioWallClock
from capture.recovery import scan_committed
from capture.replay import plan, replay
from capture.sim.config import SimConfig
from capture.sim.server import Simulator
from capture.sink import PartitionSink, SinkSettings
from capture.verify import verify

LIVE_TYPE = "OptionNbboQuote"
FRAMES = 20_000
JOURNAL_NS = BASE_NS - 3600 * 10**9  # an hour before the restart


def stored(root: Path) -> int:
    if not (root / MSG_TYPE).is_dir():
        return 0
    return int(ds.dataset(root / MSG_TYPE, partitioning="hive").count_rows())


def test_the_stripe_goes_live_while_the_journal_is_replayed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    cfg = config(root, ["A"], [LIVE_TYPE, MSG_TYPE], pipeline={"batch_rows": 512})
    write_journal(cfg.journal.stripe_dir(root, "A"), FRAMES, JOURNAL_NS, segment_bytes=1 << 20)
    journal_last_sent = JOURNAL_NS + (FRAMES - 1) * 10**6  # the last frame's header sTim
    at_connect: list[int | None] = []

    async def main() -> None:
        clock = TrioWallClock(BASE_NS)
        sim = Simulator(
            SimConfig(api_keys=frozenset({KEY}), rate=30, seed=3, types=(LIVE_TYPE,)),
            clock_ns=clock.now_ns,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sim.run_market)
            net = MemoryNet(sim, nursery)

            class Watched:
                async def open(self) -> trio.abc.Stream:
                    # The stream requests of this connection were built just before: what
                    # they ask the server to resume from.
                    at_connect.append(worker.highwater.get(MSG_TYPE))
                    return await net.open()

            launched = launch(nursery, cfg, clock, Watched(), offload=trio.to_thread.run_sync)
            worker = launched.daemon.workers[0]
            await wait_for(lambda: worker.stats.messages > 100)
            with trio.fail_after(120):  # the replayed frames are all committed
                while stored(root) < FRAMES:  # noqa: ASYNC110 - polling the disk
                    await trio.sleep(0.5)
            await trio.sleep(2)
            await launched.stop()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert at_connect[0] == journal_last_sent  # the resume point is the journal's last record
    replayed = ds.dataset(root / MSG_TYPE, partitioning="hive").to_table(columns=["_seq"])
    assert sorted(replayed["_seq"].to_pylist()) == list(range(FRAMES))  # each frame once
    live = ds.dataset(root / LIVE_TYPE, partitioning="hive").to_table(columns=["_seq"])
    live_seqs = live["_seq"].to_pylist()
    assert live_seqs and min(live_seqs) >= FRAMES  # reserved before going live
    assert len(set(live_seqs)) == len(live_seqs)
    glob = f"{root}/capture_events/**/*.parquet"
    ((connect, recovery),) = duckdb.sql(
        "SELECT min(_recv_time_ns) FILTER (WHERE event = 'connect'), "
        "min(_recv_time_ns) FILTER (WHERE event = 'recovery'), "
        f"FROM read_parquet('{glob}')"
    ).fetchall()
    assert connect is not None and recovery is not None
    assert connect < recovery  # connected before the replay had finished


def test_start_up_reads_only_the_newest_dates_when_the_journal_refers_to_nothing(
    tmp_path: Path,
) -> None:
    """Issue 16: with no message in the journal, start-up read the footer of every committed
    file of the stripe, all dates; the newest date holds what it needs."""
    import pyarrow as pa

    day_ns = 86_400 * 10**9
    sink = PartitionSink(SinkSettings(root=tmp_path), stripe="A", session="s", now_ns=lambda: 0)
    seq = 0
    for day in range(5):
        for part in range(3):
            recv = [BASE_NS + day * day_ns + part * 10**9 + i for i in range(10)]
            sink.write(
                "T",
                pa.RecordBatch.from_pydict(
                    {
                        "_recv_time": pa.array([r // 1000 for r in recv], pa.int64()).cast(
                            pa.timestamp("us", tz="UTC")
                        ),
                        "_recv_time_ns": pa.array(recv, pa.int64()),
                        "_seq": pa.array(range(seq, seq + 10), pa.int64()),
                    }
                ),
            )
            seq += 10
            sink.rotate_all()
    sink.close()
    index = scan_committed(tmp_path, "A", since_ns=None)
    assert index.max_seq == seq - 1
    assert index.files == 6  # the newest date and the day before it, not all 15
    assert scan_committed(tmp_path, "A", since_ns=None, every_date=True).files == 15


def test_a_replay_around_a_committed_file_keeps_each_file_one_run(tmp_path: Path) -> None:
    """A run's live sink committed the first frames it numbered (SIGHUP), then the run was
    killed before its replay of the run before it had committed: the next start replays
    frames on both sides of that file.  Each frame is stored once and each file still holds
    one contiguous run of its type (what recovery's range lookup, ``verify`` and the lake
    rely on): before, the replay put 0..99 and 150..299 in one file, around 100..149."""
    root = tmp_path / "data"
    cfg = config(root, ["A"], [LIVE_TYPE, MSG_TYPE])
    write_journal(cfg.journal.stripe_dir(root, "A"), 300, JOURNAL_NS)
    # Frames 100..149 as the killed run's live sink committed them (through the real sink).
    other = tmp_path / "other"
    other_cfg = config(other, ["A"], [LIVE_TYPE, MSG_TYPE])
    write_journal(other_cfg.journal.stripe_dir(other, "A"), 150, JOURNAL_NS, first=100)
    out = tmp_path / "out"

    async def rebuild() -> None:
        await replay(
            other_cfg, out, plan(other_cfg, out), clock=TrioWallClock(BASE_NS), offload=inline
        )

    trio.run(rebuild, clock=mock_clock())
    (committed,) = (out / MSG_TYPE).rglob("*.parquet")
    (root / committed.relative_to(out)).parent.mkdir(parents=True)
    shutil.copy(committed, root / committed.relative_to(out))

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await trio.sleep(20)  # recovery replays beside live capture, then a clean stop

    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=20, seed=5, types=(LIVE_TYPE,))
    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())

    seqs = ds.dataset(root / MSG_TYPE, partitioning="hive").to_table(columns=["_seq"])
    assert sorted(seqs["_seq"].to_pylist()) == list(range(300))  # each frame once
    spans = []
    for path in (root / MSG_TYPE).rglob("*.parquet"):
        meta = pq.read_metadata(path).metadata
        spans.append((int(meta[b"mlink.seq_min"]), int(meta[b"mlink.seq_max"])))
    assert sorted(spans) == [(0, 99), (100, 149), (150, 299)]
    report = verify(root)
    assert report.ok, report.problems

"""The durability invariant, owned by capture.durability.DurabilityKeeper: a journal segment is
deleted only when every frame in it is in a committed Parquet file or in quarantine.  Real
journal, real Parquet sink, real threads."""

from __future__ import annotations

import errno
import json
import struct
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import trio
from journal_util import MSG_TYPE, write_journal
from memnet import BASE_NS as SIM_NS
from memnet import KEY, MemoryNet, config, launch, mock_clock, wait_for

from capture import faultpoints, journal
from capture.clock import TrioWallClock
from capture.durability import DurabilityKeeper
from capture.sim.config import SimConfig
from capture.sim.faults import Faults
from capture.sim.server import Simulator
from capture.sink import PartitionSink, SinkError, SinkSettings
from capture.verify import verify

STRIPE = "A"
BASE_NS = 1_780_000_000 * 10**9


def rows(lo: int, hi: int) -> pa.RecordBatch:
    """Rows for frames lo..hi-1, as the decoder makes them (receive time and seq)."""
    seqs = list(range(lo, hi))
    recv = pa.array([BASE_NS + s * 1000 for s in seqs], pa.int64())
    return pa.RecordBatch.from_pydict(
        {
            "_recv_time": recv.cast(pa.timestamp("ns", tz="UTC")).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "_recv_time_ns": recv,
            "_seq": pa.array(seqs, pa.int64()),
            "v": pa.array(seqs, pa.int64()),
        }
    )


def journal_frames(directory: Path) -> set[int]:
    out: set[int] = set()
    for _, rec in journal.read_records(directory):
        if isinstance(rec, journal.MessageRecord):
            out.update(range(rec.first_seq, rec.first_seq + rec.n_data))
    return out


@pytest.fixture(autouse=True)
def _disarm() -> None:
    yield  # type: ignore[misc]
    faultpoints.disarm_failures()


def test_a_write_failing_in_the_writer_thread_is_never_overtaken_by_a_sync_round(
    tmp_path: Path,
) -> None:
    """The race of issue 16: the sink aborts the open file (frames 0-499) under its lock in the
    writer thread; before the event loop learns of it, a sync round runs in another thread.
    It must retire nothing that holds frames 0-499."""
    jdir = tmp_path / "journal"
    writer = journal.JournalWriter(jdir, segment_bytes=2048)
    writer.begin_session("s1", STRIPE, BASE_NS, {})
    for seq in range(600):
        writer.append(BASE_NS + seq * 1000, seq, 1, b'{"frame":%d}' % seq)
    writer.flush_and_sync()
    writer.roll()
    writer.flush_and_sync()  # every segment with frames 0-599 is sealed and closed
    assert len(writer.segments()) > 10
    settings = SinkSettings(root=tmp_path / "data", row_group_rows=550)
    sink = PartitionSink(settings, stripe=STRIPE, session="run1", now_ns=lambda: BASE_NS)
    keeper = DurabilityKeeper(writer, sink)

    # Frames 0-499: taken by the writer, written into the open file, done.
    keeper.taken(0)
    assert sink.write("T", rows(0, 500)) == []
    keeper.done(0)
    keeper.taken(500)  # the next batch is handed over ...

    failed = threading.Event()
    loop_learns = threading.Event()
    outcome: list[BaseException] = []

    def writer_thread() -> None:
        faultpoints.arm_failure(f"sink.write.{STRIPE}", errno.EIO, 1)
        try:
            sink.write("T", rows(500, 600))  # the row group write fails: the file is aborted
        except SinkError as exc:
            outcome.append(exc)
        failed.set()
        loop_learns.wait(10)  # the event loop hears of it only later

    t = threading.Thread(target=writer_thread)
    t.start()
    assert failed.wait(10)
    # A sync round in between, in its own thread, with the watermark the loop took.
    loop_low = keeper.loop_watermark(600, [])
    assert loop_low == 500
    retired: list[list[Path]] = []
    syncer = threading.Thread(target=lambda: retired.append(keeper.sync_round(loop_low)))
    syncer.start()
    syncer.join(10)
    loop_learns.set()
    t.join(10)
    assert outcome and isinstance(outcome[0], SinkError)
    assert sink.uncommitted_seq_min() == 0  # the sink says what it dropped
    assert retired == [[]]
    assert journal_frames(jdir) == set(range(600))  # the next start can replay them all
    writer.close()
    sink.close()


def test_segments_go_once_their_frames_are_committed_and_not_before(tmp_path: Path) -> None:
    jdir = tmp_path / "journal"
    writer = journal.JournalWriter(jdir, segment_bytes=2048)
    writer.begin_session("s1", STRIPE, BASE_NS, {})
    for seq in range(600):
        writer.append(BASE_NS + seq * 1000, seq, 1, b'{"frame":%d}' % seq)
    writer.roll()
    settings = SinkSettings(root=tmp_path / "data")
    sink = PartitionSink(settings, stripe=STRIPE, session="run1", now_ns=lambda: BASE_NS)
    keeper = DurabilityKeeper(writer, sink)
    keeper.taken(0)
    sink.write("T", rows(0, 300))
    keeper.done(0)
    keeper.sync_round(keeper.loop_watermark(600, [300]))  # 300.. pending on the loop
    assert journal_frames(jdir) >= set(range(600))  # 0-299 only in an open file
    sink.rotate_all()
    keeper.sync_round(keeper.loop_watermark(600, [300]))
    left = journal_frames(jdir)
    assert set(range(299, 600)) <= left and min(left) > 200  # committed segments went
    keeper.hold("writer failed")
    before = [s.path for s in writer.segments()]
    assert keeper.sync_round(600) == []
    assert [s.path for s in writer.segments()] == before
    writer.close()
    sink.close()


class Refused:
    """A network where every connect attempt is refused: start-up recovery only."""

    async def open(self) -> trio.abc.Stream:
        raise OSError(errno.ECONNREFUSED, "connection refused")


def quarantine_lines(root: Path) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for path in sorted((root / "_quarantine").rglob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_a_restart_does_not_quarantine_again_what_a_previous_run_did(tmp_path: Path) -> None:
    """Issue 15, item 9: garbage in the last kept journal segment is replayed at every start;
    it is quarantined (and counted in health) once, by the run that received it."""
    root = tmp_path / "data"
    cfg = config(root, ["A"], ["OptionNbboQuote", "StockPrint"])
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}),
        rate=30,
        seed=5,
        faults=Faults(garbage_every=7, bad_json_every=11),
    )
    counted: list[int] = []
    lines: list[int] = []

    async def main() -> None:
        clock = TrioWallClock(SIM_NS)
        sim = Simulator(sim_cfg, clock_ns=clock.now_ns)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sim.run_market)
            for run in range(3):
                net = MemoryNet(sim, nursery) if run == 0 else Refused()
                launched = launch(nursery, cfg, clock, net)
                worker = launched.daemon.workers[0]
                if run == 0:
                    await wait_for(lambda w=worker: w.stats.quarantined > 8)
                else:
                    await wait_for(lambda w=worker: w.stats.restarts > 0)
                await trio.sleep(5)
                await launched.stop()
                counted.append(worker.stats.quarantined)
                lines.append(len(quarantine_lines(root)))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=mock_clock())
    assert counted[0] >= 8 and lines[0] == counted[0]
    assert counted[1:] == [0, 0]  # nothing new: health does not count it again
    assert lines[1:] == [lines[0], lines[0]]  # nor is a line added
    keys = [q["key"] for q in quarantine_lines(root)]
    assert len(set(keys)) == len(keys)


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each record, from the documented layout (u32 payload length at 8)."""
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from("<I", data, off + 8)
        out.append((off, off + journal.HEADER_SIZE + n))
        off += journal.HEADER_SIZE + n
    return out


def frames_of_record(data: bytes, start: int) -> set[int]:
    kind = data[start + 5]
    first, n = struct.unpack_from("<QI", data, start + 20)
    return set(range(first, first + n)) if kind == 2 else set()


def test_a_flipped_byte_in_a_sealed_segment_costs_only_its_own_record(tmp_path: Path) -> None:
    """Issue 15, item 6: every position of three records and the seal of a sealed segment in
    the middle of the journal.  Recovery checks it, cuts the damaged record alone (kept in
    corrupt/), reports the bytes, and every other frame is still there."""
    jdir = tmp_path / "j"
    write_journal(jdir, 80, SIM_NS, segment_bytes=1024)
    segments = sorted(jdir.glob("seg-*.mlj"))
    assert len(segments) >= 5
    victim = segments[len(segments) // 2]
    original = victim.read_bytes()
    spans = record_spans(original)
    assert original[spans[-1][0] + 5] == 3  # sealed
    everything = journal_frames(jdir)
    positions = [p for s, e in [*spans[1:3], spans[-2], spans[-1]] for p in range(s, e)]
    for pos in positions:
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        victim.write_bytes(bytes(damaged))
        start, end = next((s, e) for s, e in spans if s <= pos < e)
        report = journal.recover(jdir, verify_sealed=True)
        assert report.bytes_cut == end - start, pos
        (seg,) = [s for s in report.segments if s.path == victim]
        assert seg.reason is not None and seg.sealed, pos
        assert journal_frames(jdir) == everything - frames_of_record(original, start), pos
        kept = sorted((jdir / "corrupt").glob("*.cut"))
        assert b"".join(p.read_bytes() for p in kept) == bytes(damaged[start:end]), pos
        assert journal.recover(jdir, verify_sealed=True).clean, pos
        for p in kept:
            p.unlink()
        victim.write_bytes(original)
    assert len(positions) > 400


def test_recovery_reports_the_damage_and_verify_tells_the_truth(tmp_path: Path) -> None:
    root = tmp_path / "data"
    cfg = config(root, ["A"], [MSG_TYPE])
    jdir = cfg.journal.stripe_dir(root, "A")
    write_journal(jdir, 120, SIM_NS, segment_bytes=2048)
    victim = sorted(jdir.glob("seg-*.mlj"))[2]
    data = bytearray(victim.read_bytes())
    start, end = record_spans(bytes(data))[3]
    lost = frames_of_record(bytes(data), start)
    data[start + journal.HEADER_SIZE + 5] ^= 0x01  # one bit of a payload
    victim.write_bytes(bytes(data))
    before = verify(root)
    assert any(f"{end - start} byte(s) damaged" in p for p in before.problems), before.problems

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            launched = launch(nursery, cfg, TrioWallClock(SIM_NS + 10**12), Refused())
            worker = launched.daemon.workers[0]
            await wait_for(lambda: worker.stats.files_committed >= 2)
            await launched.stop()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=mock_clock())
    seqs = ds.dataset(root / MSG_TYPE, partitioning="hive").to_table(columns=["_seq"])
    assert sorted(seqs["_seq"].to_pylist()) == sorted(set(range(120)) - lost)
    events = (
        ds.dataset(root / "capture_events", partitioning="hive")
        .to_table(columns=["event", "bytes", "detail"])
        .to_pylist()
    )
    (rec,) = [e for e in events if e["event"] == "recovery"]
    assert rec["bytes"] == end - start and "crc mismatch" in rec["detail"]
    after = verify(root)
    assert after.ok, after.problems
    assert any(f"{end - start} byte(s) of damaged records were cut" in n for n in after.notes)

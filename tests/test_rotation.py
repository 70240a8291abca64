"""Rotation through the whole daemon on the mock clock: files commit at aligned clock
boundaries, each holding only rows received inside its interval; "rotate now" (SIGHUP)
commits everything open at once."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import trio
from memnet import BASE_NS, KEY, MemoryNet, SentCount, config, mock_clock, run, wait_for

from capture.app import Daemon
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data
from capture.sim.server import Simulator

S = 1_000_000_000


def quiet_market(seed: int, record_dir: Path) -> SimConfig:
    """About one OptionNbboQuote a second for stripe A: 10 a second over the whole market,
    generated for stripe A's keys only, in steps of half a second (a few hundred steps for
    minutes of mock time, instead of a hundred a second)."""
    return SimConfig(
        api_keys=frozenset({KEY}),
        rate=1,
        seed=seed,
        record_dir=record_dir,
        stripes=("A",),
        tick_interval=0.5,
    )


def committed(root: Path) -> list[Path]:
    return sorted(root.glob("OptionNbboQuote/**/*.parquet"))


def test_files_rotate_on_aligned_boundaries_and_hold_only_their_interval(tmp_path: Path) -> None:
    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = quiet_market(seed=8, record_dir=record)
    cfg = config(root, ["A"], ["OptionNbboQuote"], output={"rotate_interval": 60})

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await trio.sleep(200)  # 14:45:00 + 200 s: boundaries at 14:46, 14:47, 14:48
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        # A market step due at this same instant may have run first: its update is generated
        # but not sent yet. Let it go out before counting what was sent.
        await trio.sleep(1)
        sent = SentCount(record)
        await wait_for(lambda: daemon.workers[0].stats.messages == sent())

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    files = committed(root)
    assert len(files) == 4  # three interval files and the remainder at shutdown
    total = 0
    for path in files:
        table = pq.read_table(path)
        recv = table.column("_recv_time_ns").to_pylist()
        window = (min(recv) - BASE_NS) // (60 * S)
        assert (max(recv) - BASE_NS) // (60 * S) == window, f"{path.name} spans two intervals"
        total += table.num_rows
    assert total == len(load_sent_data(record)[("OptionNbboQuote", "A")])


def test_rotate_now_commits_every_open_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=10, seed=9, record_dir=tmp_path / "s")
    cfg = config(root, ["A", "M"], ["OptionNbboQuote"], output={"rotate_interval": 3600})
    counts: list[int] = []

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await wait_for(lambda: all(w.stats.rows_written > 0 for w in daemon.workers))
        counts.append(len(committed(root)))
        daemon.rotate()
        await wait_for(lambda: len(committed(root)) == 2)
        counts.append(len(committed(root)))

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert counts == [0, 2]


def test_the_last_file_of_a_type_that_goes_quiet_commits_at_its_grace_deadline(
    tmp_path: Path,
) -> None:
    """A type that stops sending in the middle of an interval: its file is committed once the
    interval ended and the grace passed (~302 s with 300 s files), not a whole interval late."""
    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = quiet_market(seed=10, record_dir=record)
    cfg = config(root, ["A"], ["OptionNbboQuote"], output={"rotate_interval": 300})
    seen: dict[str, float] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        # BASE is 14:45:00: the interval ends at 14:50:00 (300 s).
        await trio.sleep(100)
        sim.cfg = sim.cfg.with_overrides(rate=0.0)  # the type goes quiet
        await trio.sleep(195)  # (no need to poll the files until just before the deadline)
        assert not committed(root)
        seen["committed_at"] = await wait_for(lambda: len(committed(root)) == 1)

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    grace = 2.0  # output.commit_grace: max(2, 4 x flush_interval) with the tests' settings
    assert 300 + grace <= seen["committed_at"] <= 300 + grace + 0.5, seen


async def go_quiet(daemon: Daemon, sim: Simulator, record: Path) -> SentCount:
    """20 s of data, then none: returns once every row sent is written (to open files)."""
    await trio.sleep(20)
    sim.cfg = sim.cfg.with_overrides(rate=0.0)  # quiet from here on
    sent = SentCount(record)
    worker = daemon.workers[0]
    await wait_for(lambda: worker.stats.rows_written == sent() > 0)
    return sent


def test_rotate_now_commits_a_quiet_feeds_open_file_at_once(tmp_path: Path) -> None:
    """SIGHUP on a feed that sends nothing: the writer, waiting for the next batch, commits
    the open file now, not at the interval's end."""
    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=10, seed=11, record_dir=record)
    cfg = config(root, ["A"], ["OptionNbboQuote"], output={"rotate_interval": 3600})
    seen: dict[str, float] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        sent = await go_quiet(daemon, sim, record)
        await trio.sleep(30)  # the writer waits for a batch that does not come
        assert committed(root) == []
        asked = trio.current_time()
        daemon.rotate()
        seen["after"] = await wait_for(lambda: len(committed(root)) == 1) - asked
        seen["rows"] = pq.read_table(committed(root)[0]).num_rows
        seen["sent"] = sent()

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert seen["after"] < 1, seen  # not at 15:00, the next boundary 15 minutes away
    assert seen["rows"] == seen["sent"]


def test_rotate_now_asked_as_a_boundary_passes_while_the_writer_waits_to_commit(
    tmp_path: Path,
) -> None:
    """SIGHUP just before a clock boundary, while the process's decode slots are busy (every
    stripe rotates at once on SIGHUP or a pause): the boundary passing while the writer waits
    for a slot does not drop the request; the open file commits once a slot is free, not at
    its grace deadline after the boundary."""
    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=10, seed=11, record_dir=record)
    cfg = config(
        root,
        ["A"],
        ["OptionNbboQuote"],
        output={"rotate_interval": 60},
        pipeline={"flush_interval": 5.0},  # commit_grace 20 s
    )
    seen: dict[str, float] = {}

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        sent = await go_quiet(daemon, sim, record)
        worker = daemon.workers[0]
        await trio.sleep_until(59.5)  # the boundary: 14:46:00, trio time 60
        assert committed(root) == []
        limiter = worker.decode_limiter
        holders = [object() for _ in range(int(limiter.total_tokens))]
        for holder in holders:  # the other stripes' rotations hold every slot
            await limiter.acquire_on_behalf_of(holder)
        daemon.rotate()
        await trio.sleep_until(60.5)
        for holder in holders:
            limiter.release_on_behalf_of(holder)
        seen["at"] = await wait_for(lambda: len(committed(root)) == 1)
        seen["rows"] = pq.read_table(committed(root)[0]).num_rows
        seen["sent"] = sent()

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    assert seen["at"] < 61, seen  # not at 14:46:20, the boundary's grace deadline
    assert seen["rows"] == seen["sent"]


def test_a_storm_of_rotate_requests_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """SIGHUP again and again, in bursts and while data flows (an operator's reload loop): every
    row sent is in exactly one committed file."""
    root, record = tmp_path / "data", tmp_path / "sent"
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=40, seed=12, record_dir=record)
    cfg = config(root, ["A"], ["OptionNbboQuote"], output={"rotate_interval": 3600})

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        for i in range(300):
            for _ in range(1 + i % 7):  # bursts: requests with no checkpoint between them
                daemon.rotate()
            await trio.sleep(0 if i % 3 else 0.05)  # some while the writer works, some idle
        sent = await go_quiet(daemon, sim, record)
        daemon.rotate()
        await wait_for(lambda: sent() == sum(pq.read_metadata(p).num_rows for p in committed(root)))

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    seqs = [s for p in committed(root) for s in pq.read_table(p).column("_seq").to_pylist()]
    assert len(committed(root)) > 3  # the requests did rotate (one file without them)
    assert len(seqs) == len(set(seqs)) == len(load_sent_data(record)[("OptionNbboQuote", "A")])

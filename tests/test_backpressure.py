"""A writer slower than the socket: the reader waits (bounded queue), the stripe neither drops
nor crashes, and every frame sent reaches Parquet.  Mock clock; the writer is slowed by an
offload that waits before doing the work."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import trio
import trio.testing
from memnet import KEY, MemoryNet, SentCount, config, mock_clock, run, wait_for

from capture.app import Daemon
from capture.memory import InFlightBudget
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data
from capture.sim.server import Simulator

TYPES = ["OptionNbboQuote", "StockBookQuote", "StockPrint", "OptionPrint"]


async def slow(fn: Callable[..., Any], *args: Any) -> Any:
    await trio.sleep(0.1)  # a disk or CPU far slower than the feed
    return fn(*args)


def test_a_slow_writer_applies_backpressure_without_loss_or_crash(tmp_path: Path) -> None:
    root, record = tmp_path / "data", tmp_path / "sent"
    cfg = config(
        root,
        ["A"],
        TYPES,
        pipeline={"queue_batches": 1, "batch_rows": 16, "flush_interval": 0.05},
    )
    sim_cfg = SimConfig(api_keys=frozenset({KEY}), rate=80, seed=81, record_dir=record)

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        worker = daemon.workers[0]
        await trio.sleep(8)
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        sent = SentCount(record)
        with trio.fail_after(60):  # a crashed and restarted worker would never catch up
            await wait_for(lambda: worker.stats.messages == sent())

    daemon, code = trio.run(partial(run, offload=slow), sim_cfg, cfg, scenario, clock=mock_clock())
    stats = daemon.workers[0].stats.snapshot()
    assert code == 0
    assert stats["connects"] == 1 and stats["restarts"] == 0, stats["last_error"]
    assert stats["reader_wait_seconds"] > 1  # the reader did wait: backpressure, not a buffer
    sent = sum(len(v) for v in load_sent_data(record).values())
    rows = sum(ds.dataset(root / t, partitioning="hive").count_rows() for t in TYPES)
    assert rows == sent > 300


async def slower(fn: Callable[..., Any], *args: Any) -> Any:
    await trio.sleep(0.5)
    return fn(*args)


def test_the_stripes_share_one_in_flight_budget(tmp_path: Path) -> None:
    """Three stripes, writers far slower than the feed, channels long enough to hold
    everything: what bounds the frames waiting for a decoder is the process's budget (never
    exceeded: the readers queue for it in turn), and nothing is lost."""
    root, record = tmp_path / "data", tmp_path / "sent"
    stripes = ["A", "B", "C"]
    batch_rows = 16
    cfg = config(
        root,
        stripes,
        TYPES,
        pipeline={"queue_batches": 1000, "batch_rows": batch_rows, "flush_interval": 0.05},
    )
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=20, seed=82, record_dir=record, stripes=tuple(stripes)
    )
    limit = 24_000  # bytes: about two batches for the whole process

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        daemon.in_flight.limit = limit  # the real budget object, made small for this test
        await trio.sleep(8)
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        sent = SentCount(record)
        received = lambda: sum(w.stats.messages for w in daemon.workers)  # noqa: E731
        with trio.fail_after(600):
            await wait_for(lambda: received() == sent())
            await wait_for(lambda: daemon.in_flight.used == 0)

    daemon, code = trio.run(
        partial(run, offload=slower), sim_cfg, cfg, scenario, clock=mock_clock()
    )
    assert code == 0
    for w in daemon.workers:
        assert w.stats.restarts == 0, w.stats.last_error
    waited = sum(w.stats.reader_wait_s for w in daemon.workers)
    assert waited > 3  # the readers did wait ...
    # ... at the budget, not at their channels (1000 batches each would hold everything).
    bodies = load_sent_data(record).values()
    sent = sum(map(len, bodies))
    largest_batch = batch_rows * max(len(b) for group in bodies for b in group)
    assert largest_batch < limit  # so no batch may go over the budget on its own
    assert limit / 2 < daemon.in_flight.peak <= limit  # it was used, and it held
    assert daemon.in_flight.peak < sent * 300  # far less than the backlog would have taken
    assert daemon.in_flight.used == 0
    rows = sum(ds.dataset(root / t, partitioning="hive").count_rows() for t in TYPES)
    assert rows == sent > 1000


def test_the_budget_serves_waiting_readers_in_turn_and_never_goes_over() -> None:
    """The budget on its own: batches that fit go at once; the others queue and go first come,
    first served as bytes come back; a batch larger than the budget goes alone; a reader whose
    writer is gone stops waiting."""
    budget = InFlightBudget(100)
    order: list[str] = []
    gone = False

    async def reader(name: str, n: int, give_up: Callable[[], bool] = lambda: False) -> None:
        await budget.admit(n, give_up)
        budget.take(n)
        order.append(name)

    async def main() -> None:
        nonlocal gone
        async with trio.open_nursery() as nursery:
            await reader("a", 60)
            await reader("b", 40)  # fits exactly: no wait
            nursery.start_soon(reader, "c", 30)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(reader, "d", 10)  # would fit after c, but c came first
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["a", "b"] and budget.used == 100
            budget.release(40)
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["a", "b", "c", "d"] and budget.used == 100
            nursery.start_soon(reader, "big", 250)  # larger than the budget: waits for empty
            await trio.testing.wait_all_tasks_blocked()
            budget.release(60)
            await trio.testing.wait_all_tasks_blocked()
            assert "big" not in order
            budget.release(40)
            await trio.testing.wait_all_tasks_blocked()
            assert order[-1] == "big" and budget.used == 250
            nursery.start_soon(reader, "orphan", 10, lambda: gone)
            await trio.testing.wait_all_tasks_blocked()
            gone = True
            budget.wake()
        assert order[-1] == "orphan"
        assert budget.peak == 260  # the oversized batch, plus the orphan let through

    trio.run(main)


def test_a_pending_batch_is_handed_over_at_its_share_of_the_budget(tmp_path: Path) -> None:
    """``pipeline.batch_rows`` counts frames per stripe and type; the bytes of frames waiting
    for their batch to fill are bounded by the budget instead of growing with the number of
    stripes: a batch is handed over at budget / (3 x stripes) bytes.  Nothing is lost."""
    root, record = tmp_path / "data", tmp_path / "sent"
    stripes = ["A", "B"]
    cfg = config(
        root,
        stripes,
        ["OptionNbboQuote"],
        output={"memory_budget_mb": 16},
        pipeline={"batch_rows": 1_000_000, "flush_interval": 600.0},  # neither would hand over
    )
    cap = 16 * 2**20 // (3 * len(stripes))
    # A market of the two stripes' keys only: every update generated is one the daemon gets.
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}), rate=2000, seed=83, record_dir=record, stripes=tuple(stripes)
    )
    peak = 0

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        nonlocal peak
        with trio.fail_after(600):
            while not all(w.stats.bytes > 1.5 * cap for w in daemon.workers):
                peak = max(peak, *(w.batching_bytes for w in daemon.workers))
                await trio.sleep(0.01)
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        await trio.sleep(1)  # the burst the simulator was sending when the rate dropped
        sent = SentCount(record)
        received = lambda: sum(w.stats.messages for w in daemon.workers)  # noqa: E731
        with trio.fail_after(60):
            await wait_for(lambda: received() == sent())

    _, code = trio.run(partial(run), sim_cfg, cfg, scenario, clock=mock_clock())
    assert code == 0
    assert cap / 2 < peak <= cap + 4096  # filled to the bound (at most one frame over), held
    sent = sum(len(v) for v in load_sent_data(record).values())
    rows = ds.dataset(root / "OptionNbboQuote", partitioning="hive").count_rows()
    assert rows == sent

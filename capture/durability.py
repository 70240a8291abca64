"""The owner of one invariant: a journal segment is deleted only when every frame in it is in a
committed Parquet file or in quarantine.

A frame received by a stripe is, at any moment, in exactly one of these places, and the
:class:`DurabilityKeeper` is the one object that looks at all of them before it lets the
journal retire a segment:

* **on the event loop**: in a pending batch, or queued/handed to the writer and not yet written
  (:meth:`taken` / :meth:`done` bracket an item the writer holds; the worker passes the lowest
  seq of its pending batches to :meth:`loop_watermark`);
* **in the sink**: in a Parquet file not yet committed, or in a file the sink *aborted* after a
  failed write.  The sink reports both under its own lock
  (:meth:`capture.sink.PartitionSink.uncommitted_seq_min` counts aborted rows for as long as it
  lives), read here in the same critical section, so a write that fails in the writer thread
  can never be overtaken by a sync round that runs before the event loop learns of it;
* **committed** (or quarantined, fsynced): only then may its segment go.

The keeper also owns the fsync cadence (:func:`journal_opener` for the journal's own fsync
thread, :meth:`sync_round` every half ``durability_interval`` from :meth:`run`), the last round
at the end of a run (:meth:`finish`), the durable sequence number it publishes in the stripe's
stats, and the pruning of the archive that retired segments are moved to
(``journal.retain_hours``).  What it reads of the stripe's event loop is :class:`StripeLoop`
(capture.worker.StripeWorker).  Sequence numbers: see capture/journal/__init__.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from capture.batching import PendingBatch
from capture.config import JournalConfig
from capture.eventlog import EventLog
from capture.journal import JournalError, JournalWriter
from capture.lake.hold import JournalHold
from capture.sink import PartitionSink
from capture.stats import StripeStats

__all__ = ["DurabilityKeeper", "StripeLoop", "journal_opener", "prune_archive"]


class StripeLoop(Protocol):
    """What the keeper reads of a stripe's event loop (capture.worker.StripeWorker), on the
    loop: where the frames not yet with the writer are, and where to publish."""

    stats: StripeStats
    log: Any
    eventlog: EventLog  # queued capture events hold the journal at their seq

    @property
    def next_seq(self) -> int:
        """The next frame to be numbered."""
        ...

    @property
    def pending(self) -> Mapping[str, PendingBatch]:
        """The pending batches, per type."""
        ...


def journal_opener(jcfg: JournalConfig, *, syncs_itself: bool) -> Callable[[Path], JournalWriter]:
    """How a stripe's live journal is opened: its segment size and, when it fsyncs on its own
    thread's clock (``syncs_itself``), every quarter ``durability_interval``, so that a frame
    is on disk within the interval whatever the event loop is doing."""
    return partial(
        JournalWriter,
        segment_bytes=jcfg.segment_mb * 2**20,
        sync_interval=jcfg.durability_interval / 4 if syncs_itself else None,
    )


class DurabilityKeeper:
    """Decides what the journal may retire, and does the fsync and retirement rounds.

    Thread model: :meth:`taken`, :meth:`done`, :meth:`hold` and :meth:`loop_watermark` run on the
    event loop; :meth:`sync_round` and :meth:`close` in a worker thread.  A short lock guards
    the counts of items with the writer (capture.batching), so the thread may also read them."""

    def __init__(
        self,
        journal: JournalWriter,
        sink: PartitionSink | None,
        *,
        retain_hours: float = 0.0,
        hold: JournalHold | None = None,
        stripe: str = "",
        loop: StripeLoop | None = None,
        durability_interval: float = 1.0,
        syncs_itself: bool = False,
    ) -> None:
        self.journal = journal
        self.sink = sink
        self._loop = loop  # needed by the loop's side: commit_watermark, run, publish, finish
        # A round every half interval, so that a frame is on disk within the interval, fsync
        # time included; the round fsyncs unless the journal's own thread does.
        self._round_s = durability_interval / 2
        self._sync = not syncs_itself
        # With the lake on, frames are durable only once in a committed Iceberg snapshot: the
        # lake holds the journal below the lowest seq of a file not yet there (capture.lake).
        self._hold = hold
        self._stripe = stripe
        self._archive = journal.directory / "archive" if retain_hours > 0 else None
        self._retain_s = retain_hours * 3600
        self._lock = threading.Lock()
        self._with_writer: Counter[int] = Counter()  # lowest seq of each item with the writer
        self._held: str | None = None
        self._floor: int | None = None

    # -- the event loop's side ---------------------------------------------------------------

    def taken(self, low_seq: int) -> None:
        """An item whose frames (and bytes) start at ``low_seq`` left the pending batches for
        the writer: it holds the watermark until :meth:`done`."""
        with self._lock:
            self._with_writer[low_seq] += 1

    def done(self, low_seq: int) -> None:
        """The writer finished that item: its rows are in the sink (open, committed or
        aborted: the sink says which) or in fsynced quarantine."""
        with self._lock:
            left = self._with_writer[low_seq] - 1
            if left > 0:
                self._with_writer[low_seq] = left
            else:
                del self._with_writer[low_seq]

    def hold(self, reason: str) -> None:
        """Retire nothing more this run (the writer failed: what it held is in no file the
        sink tracks).  The next start replays the journal."""
        if self._held is None:
            self._held = reason

    @property
    def held(self) -> str | None:
        return self._held

    def hold_below(self, seq: int | None) -> None:
        """Retire nothing holding frames at or above ``seq`` (None: lift it).  Start-up
        replays the last run's segments beside live capture with a sink of its own: until it
        has committed, its frames are in no place this keeper watches."""
        self._floor = seq

    def loop_watermark(self, next_seq: int, pending_lows: list[int]) -> int:
        """Every frame below the result is, as far as the event loop knows, past the writer:
        ``next_seq`` is the next frame to be numbered, ``pending_lows`` the lowest seq of each
        pending batch or event list."""
        lows = [next_seq, *pending_lows]
        with self._lock:
            if self._with_writer:
                lows.append(min(self._with_writer))
        return min(lows)

    def commit_watermark(self) -> int:
        """:meth:`loop_watermark` of the stripe's event loop: its next seq, its pending batches
        and its queued capture events."""
        loop = self._loop
        assert loop is not None
        lows = [pb.seq[0] for pb in loop.pending.values() if pb.seq]
        if (low := loop.eventlog.low_seq()) is not None:
            lows.append(low)
        return self.loop_watermark(loop.next_seq, lows)

    async def run(
        self, offload: Callable[..., Awaitable[Any]], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        """Beside the stripe, on its loop: every half ``durability_interval`` a
        :meth:`sync_round` (``offload``: in a thread), then :meth:`publish`.  A failure ends
        it, and with it the stripe."""
        while True:
            await sleep(self._round_s)
            await offload(partial(self.sync_round, self.commit_watermark(), sync=self._sync))
            self.publish()

    def publish(self) -> None:
        """The journal's durable sequence number and lag, in the stripe's stats."""
        loop = self._loop
        assert loop is not None
        journal = self.journal
        for seq, synced_ns in journal.take_syncs():  # only the fsyncs that advanced it
            # For the benchmark's receive-to-durable latency (debug: a few times a second).
            loop.log.debug("journal synced", durable_seq=seq, synced_ns=synced_ns)
        durable = journal.durable_seq
        loop.stats.durable_seq = durable
        # Never negative: during a disk outage the journal's count can run ahead of this
        # stripe's (a restarted writer numbers from the journal's next_seq).
        loop.stats.journal_lag = max(0, loop.next_seq - (durable + 1 if durable is not None else 0))

    async def finish(self, offload: Callable[..., Awaitable[Any]]) -> None:
        """The end of the stripe's run, once the writer has closed the sink: the last sync
        and retirement (of only what it committed) in a thread, the journal closed, then
        :meth:`publish`.  A failure is logged: the next start replays what is left."""
        await offload(self._close_logged, self.commit_watermark)
        self.publish()

    def _close_logged(self, watermark: Callable[[], int]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            self.close(watermark())
        except (OSError, JournalError) as exc:
            loop.log.error("journal: final sync failed", error=str(exc))

    # -- the syncing thread's side -------------------------------------------------------------

    def watermark(self, loop_low: int) -> int | None:
        """Every frame below the result is committed or quarantined (None: retire nothing).
        ``loop_low`` must come from :meth:`loop_watermark` *before* this call: an item that
        left the loop after that is in the sink now, and the sink is read after."""
        if self._held is not None:
            return None
        floor = self._floor
        if floor is not None:
            loop_low = min(loop_low, floor)
        with self._lock:
            if self._with_writer:
                loop_low = min(loop_low, min(self._with_writer))
        sink_low = self.sink.uncommitted_seq_min() if self.sink is not None else None
        low = loop_low if sink_low is None else min(loop_low, sink_low)
        # After the sink: a file it committed meanwhile was handed to the hold under its lock.
        held = self._hold.floor(self._stripe) if self._hold is not None else None
        return low if held is None else min(low, held)

    def sync_round(self, loop_low: int, *, sync: bool = True) -> list[Path]:
        """fsync the journal (or, when its own thread does, check that it has not failed), then
        retire the segments below the watermark.  Returns the segments retired."""
        if sync:
            self.journal.flush_and_sync()
        else:
            self.journal.check()
        watermark = self.watermark(loop_low)
        if watermark is None:
            return []
        if self._archive is not None:
            prune_archive(self._archive, self._retain_s)
        retired = self.journal.retire(watermark, archive=self._archive)
        if self._hold is not None:
            lows = [s.min_seq for s in self.journal.segments() if s.min_seq is not None]
            self._hold.journal_low(self._stripe, min(lows) if lows else self.journal.next_seq)
        return retired

    def close(self, loop_low: int) -> None:
        """The last round, then close the journal (also when the round fails)."""
        try:
            self.sync_round(loop_low)
        finally:
            self.journal.close()


def prune_archive(archive: Path, retain_s: float) -> None:
    """Delete archived journal segments older than ``retain_s`` seconds."""
    if not archive.is_dir():
        return
    horizon = time.time() - retain_s
    for path in archive.glob("seg-*.mlj"):
        try:
            if path.stat().st_mtime < horizon:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            continue

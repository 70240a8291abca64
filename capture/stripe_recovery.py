"""One stripe's recovery at start-up: the one entry point, :func:`recover_stripe`.

What an earlier run of the stripe may have left, and where each piece is dealt with:

* files the sink had open (``.inprogress``): moved aside to ``ROOT/_quarantine/inprogress``
  (capture.sink.cleanup_in_progress, for this stripe only: other processes may share the root);
* journal segments a crash left open: cut at the last intact record (capture.journal.recover;
  sealed segments are trusted now and checked record by record beside live capture);
* a batch that crashed the decoder: the crash guard names it (capture.crashguard);
* what is already stored: the committed files' sequence ranges, the quarantined keys and the
  committed capture events the journal can refer to (capture.recovery, capture.quarantine),
  so that the replay stores every journaled frame exactly once;
* where the last run stopped: the resume point per type (the latest header send time received,
  in the journal or in Parquet), the gap's start, the first sequence number the live reader
  may hand out.

:func:`recover` is the entry point, called by the stripe's worker at every start before it
goes live: it runs :func:`recover_stripe` (sync code: reads files) in a thread, which does all
of the above and returns a :class:`RecoveryPlan`; hands the worker the live journal and its
:class:`capture.durability.DurabilityKeeper`, the resume point and the first sequence number;
and returns a :class:`StripeRecovery`, whose :meth:`StripeRecovery.beside` the worker runs
beside live capture: it checks the sealed segments, replays the frames in them that are not in
committed Parquet with a replayer of the stripe's own (capture.journal_replay), lets the
journal retire again and records the ``recovery`` event.  What recovery uses of the worker is
:class:`Stripe`.  No trio here: blocking work goes through the worker's ``offload``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from capture import journal as journal_mod
from capture import protocol, quarantine
from capture.config import Config
from capture.crashguard import CrashGuard, Note, Suspects
from capture.durability import DurabilityKeeper, StripeLoop, journal_opener
from capture.frames import FrameDecoder, Garbage
from capture.journal_replay import Replaying, replay
from capture.lake.hold import JournalHold
from capture.logs import get_logger
from capture.recovery import CommittedIndex, EventKey, committed_events, scan_committed
from capture.resume import ResumePoints
from capture.sink import PartitionSink, cleanup_in_progress
from capture.stats import StripeStats

__all__ = [
    "RecoveryAccount",
    "RecoveryPlan",
    "Replayer",
    "Stripe",
    "StripeRecovery",
    "account",
    "recover",
    "recover_stripe",
]

log = get_logger(component="recovery")


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """What start-up found before going live, for the replay that runs beside it."""

    journal: journal_mod.JournalWriter  # opened after recovery: the live run's
    report: journal_mod.RecoveryReport
    segments: list[Path]  # the segments the last run left (the live writer adds others)
    index: CommittedIndex
    guard: CrashGuard
    suspects: Suspects
    quarantined_before: frozenset[str]
    events_before: frozenset[EventKey]
    next_seq: int  # the live reader numbers frames from here: the replay owns every number below
    highwater: ResumePoints  # per type: the latest plausible send time received
    gap_from_ns: int | None  # the last message the last run received


class Replayer(Replaying, Protocol):
    """A replayer of the stripe (capture.worker.StripeWorker): its own sink and writer."""

    stats: StripeStats
    highwater: ResumePoints


class Stripe(StripeLoop, Protocol):
    """What recovery uses of a stripe's worker (capture.worker.StripeWorker)."""

    cfg: Config
    stripe: str
    highwater: ResumePoints  # per type: the resume point
    journal_syncs_itself: bool
    journal_hold: JournalHold | None
    offload: Callable[..., Awaitable[Any]]

    def take_over(self, plan: RecoveryPlan, keeper: DurabilityKeeper) -> None:
        """Go live from where the last run stopped: its journal, resume point, sequence
        numbers and gap."""
        ...

    def replayer(self, plan: RecoveryPlan, guard: Note) -> Replayer:
        """A worker of the same stripe, with a sink and writer of its own, that skips what
        ``plan`` says is stored and decodes under ``guard``."""
        ...

    def event(self, kind: str, **fields: Any) -> None:
        """Record a capture event."""
        ...


async def recover(stripe: Stripe, sink: PartitionSink) -> StripeRecovery | None:
    """The stripe's one recovery entry point, at every start before it goes live (``sink``:
    the live run's): recover what the last run left (:func:`recover_stripe`, in a thread),
    hand ``stripe`` the live journal and the keeper of its durability, its resume point and
    the sequence numbers the replay does not own.  Returns what is left to do beside live
    capture (None: no journal)."""
    cfg = stripe.cfg
    jcfg = cfg.journal
    root = cfg.output.root
    jdir = jcfg.stripe_dir(root, stripe.stripe) if jcfg.enabled else None
    open_journal = journal_opener(jcfg, syncs_itself=stripe.journal_syncs_itself)
    plan: RecoveryPlan | None = await stripe.offload(
        recover_stripe, root, stripe.stripe, jdir, open_journal
    )
    if plan is None:
        return None
    keeper = DurabilityKeeper(
        plan.journal,
        sink,
        retain_hours=jcfg.retain_hours,
        hold=stripe.journal_hold,
        stripe=stripe.stripe,
        loop=stripe,
        durability_interval=jcfg.durability_interval,
        syncs_itself=stripe.journal_syncs_itself,
    )
    stripe.take_over(plan, keeper)
    if plan.segments:
        keeper.hold_below(0)  # retire nothing until the replay has committed
    return StripeRecovery(stripe, plan, keeper)


class StripeRecovery:
    """What is left of a stripe's recovery once it is live: the replay beside it."""

    def __init__(self, stripe: Stripe, plan: RecoveryPlan, keeper: DurabilityKeeper) -> None:
        self.stripe = stripe
        self.plan = plan
        self.keeper = keeper

    async def beside(self) -> None:
        """Beside live capture: check the sealed segments the last run left, replay the frames
        in them that are not in committed Parquet (with their own sink and writer, so that
        each file still holds one contiguous run of one type), commit them, then let the
        journal retire again."""
        stripe, plan = self.stripe, self.plan
        checked = (
            await stripe.offload(journal_mod.check_segments, plan.segments)
            if plan.segments
            else None
        )
        guard = plan.guard.note("replay")
        replayer = stripe.replayer(plan, guard)
        try:
            replayed = await replay(
                replayer, [plan.journal.directory], committed=plan.index, only=plan.segments
            )
        finally:
            guard.close()
            done, stats = replayer.stats, stripe.stats
            stats.quarantined += done.quarantined
            stats.garbage_bytes += done.garbage_bytes
            stats.rows_written += done.rows_written
            stats.files_committed += done.files_committed
        stripe.highwater.merge(replayer.highwater)
        self.keeper.hold_below(None)
        done_account = account(plan, checked, replayed)
        stripe.event(
            "recovery", detail=done_account.detail, bytes=done_account.bytes_cut, count=replayed
        )
        if done_account.bytes_cut or replayed:
            stripe.log.warning(
                "recovered from the journal",
                bytes_cut=done_account.bytes_cut,
                frames_replayed=replayed,
                cuts=done_account.cuts,
            )
        else:
            stripe.log.debug("recovered: nothing to replay")


def recover_stripe(
    root: Path,
    stripe: str,
    journal_dir: Path | None,
    open_journal: Callable[[Path], journal_mod.JournalWriter],
) -> RecoveryPlan | None:
    """Recover what the last run of ``stripe`` left under ``root`` and in ``journal_dir``, open
    the live journal there with ``open_journal`` and say what the replay must do (None: no
    journal, only the unfinished files were moved aside)."""
    # Only this stripe's directories: other processes may share the root and write theirs.
    for path in cleanup_in_progress(root, [stripe]):
        log.warning("moved an unfinished file left by an earlier run", path=str(path))
    if journal_dir is None:
        return None
    # Before going live only what is cheap: seals are trusted and only the segments a crash
    # left open are read.  The sealed ones are checked record by record beside live capture.
    report = journal_mod.recover(journal_dir)
    journal = open_journal(journal_dir)
    try:
        return _plan(root, stripe, journal, report)
    except BaseException:
        journal.close()
        raise


def _plan(
    root: Path,
    stripe: str,
    journal: journal_mod.JournalWriter,
    report: journal_mod.RecoveryReport,
) -> RecoveryPlan:
    """Reads the journal's first and last segments and the footers of the committed files the
    journal can refer to."""
    directory = journal.directory
    oldest = [s.min_seq for s in report.segments if s.min_seq is not None]
    guard = CrashGuard(directory)
    suspects = guard.open(oldest_seq=min(oldest, default=None))
    segments = [s.path for s in report.segments if not s.removed]
    span = _journal_span(directory, segments)
    index = scan_committed(root, stripe, since_ns=span.first_ns)
    next_seq = journal.next_seq
    if index.max_seq is not None:
        # Committed files can hold rows whose journal records were not yet fsynced when the
        # process died: never hand out their sequence numbers again.
        next_seq = max(next_seq, index.max_seq + 1)
    # Resume from the last record received, durable in the journal, not only from the last
    # one committed (which lags: the difference would be stored twice).
    highwater = ResumePoints()
    highwater.merge(index.resume_points)
    highwater.merge(span.resume_points)
    return RecoveryPlan(
        journal=journal,
        report=report,
        segments=segments,
        index=index,
        guard=guard,
        suspects=suspects,
        quarantined_before=frozenset(quarantine.known_keys(root, stripe, since_ns=span.first_ns)),
        events_before=frozenset(committed_events(root, stripe, since_ns=span.first_ns)),
        next_seq=next_seq,
        highwater=highwater,
        gap_from_ns=span.last_ns,
    )


@dataclass(frozen=True, slots=True)
class RecoveryAccount:
    """What recovery did, for the capture event and the log."""

    bytes_cut: int
    replayed: int
    detail: str  # the recovery event's text
    cuts: list[str]  # per damaged segment: its name and why it was cut


def account(
    plan: RecoveryPlan, checked: journal_mod.RecoveryReport | None, replayed: int
) -> RecoveryAccount:
    """Recovery's account once the replay beside live capture is done: what the journal's
    recovery (at start-up, then ``checked`` for the sealed segments) cut, and how many
    frames not yet in Parquet were replayed."""
    cut = plan.report.cut + (checked.cut if checked is not None else [])
    bytes_cut = plan.report.bytes_cut + (checked.bytes_cut if checked is not None else 0)
    cuts = "".join(
        f"; {c.path.name}: {c.bytes_cut} byte(s) cut, {c.reason} ({c.detail})" for c in cut
    )
    return RecoveryAccount(
        bytes_cut=bytes_cut,
        replayed=replayed,
        detail=(
            f"journal: {len(plan.report.segments)} segment(s), {bytes_cut} byte(s) cut; "
            f"{replayed} frame(s) not yet in Parquet replayed{cuts}"
        ),
        cuts=[f"{c.path.name}: {c.reason}" for c in cut],
    )


@dataclass(slots=True)
class _JournalSpan:
    first_ns: int | None = None  # oldest message or event
    last_ns: int | None = None  # newest message
    resume_points: ResumePoints = field(default_factory=ResumePoints)  # latest header sTim


def _journal_span(directory: Path, segments: list[Path]) -> _JournalSpan:
    """Where a journal starts and ends, reading only its first segment holding a message or
    event and its last segment holding a message: the oldest time, the newest message's
    receive time and, per type, the latest header send time in that last segment (the
    resume point: what the server need not send again)."""
    span = _JournalSpan()
    for path in segments:
        for _, rec in journal_mod.read_records(directory, only=[path]):
            if isinstance(rec, journal_mod.MessageRecord):
                span.first_ns = rec.recv_ns
            elif isinstance(rec, journal_mod.EventRecord):
                span.first_ns = rec.time_ns
            else:
                continue
            break
        if span.first_ns is not None:
            break
    for path in reversed(segments):
        decoder = FrameDecoder()
        for _, rec in journal_mod.read_records(directory, only=[path]):
            if isinstance(rec, journal_mod.SessionRecord):
                if not rec.resumed:
                    decoder = FrameDecoder()
                continue
            if not isinstance(rec, journal_mod.MessageRecord):
                continue
            span.last_ns = rec.recv_ns
            for event in decoder.feed_typed(rec.payload):
                if isinstance(event, Garbage):
                    continue
                mtyp, _, body = event
                if not mtyp or mtyp in protocol.CONTROL_TYPES:
                    continue
                sent = _header_sent_ns(body)
                if sent is not None:
                    span.resume_points.offer(mtyp, sent, rec.recv_ns)
        if span.last_ns is not None:
            break
    return span


def _header_sent_ns(body: bytes) -> int | None:
    """The header's ``sTim`` without parsing the JSON (bodies are compact, header first)."""
    at = body.find(b'"sTim":"', 0, 512)
    if at < 0:
        return None
    start = at + 8
    end = body.find(b'"', start, start + 40)
    if end < 0:
        return None
    try:
        return protocol.header_time_ns(body[start:end].decode("ascii"))
    except UnicodeDecodeError:
        return None

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

:func:`recover_stripe` does all of it before the stripe goes live and returns a
:class:`RecoveryPlan`; the worker then replays the last run's segments beside live capture
(``StripeWorker._recover_beside``).  Sync code (reads files): the worker calls it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from capture import journal as journal_mod
from capture import protocol, quarantine
from capture.crashguard import CrashGuard, Suspects
from capture.frames import FrameDecoder, Garbage
from capture.recovery import CommittedIndex, EventKey, committed_events, scan_committed
from capture.sink import cleanup_in_progress

__all__ = ["RecoveryAccount", "RecoveryPlan", "account", "recover_stripe"]


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
    highwater: dict[str, int]  # per type: the latest header send time received (the resume point)
    gap_from_ns: int | None  # the last message the last run received


def recover_stripe(
    root: Path,
    stripe: str,
    journal_dir: Path | None,
    open_journal: Callable[[Path], journal_mod.JournalWriter],
) -> RecoveryPlan | None:
    """Recover what the last run of ``stripe`` left under ``root`` and in ``journal_dir``, open
    the live journal there with ``open_journal`` and say what the replay must do (None: no
    journal, only the unfinished files were moved aside)."""
    cleanup_in_progress(root, [stripe])  # (the sink logs what it moved)
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
    highwater: dict[str, int] = {}
    for source in (index.max_sent_ns, span.sent_ns):
        for msg_type, sent_ns in source.items():
            highwater[msg_type] = max(highwater.get(msg_type, 0), sent_ns)
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
    sent_ns: dict[str, int] = field(default_factory=dict)  # per type: latest header sTim


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
                if sent is not None and sent > span.sent_ns.get(mtyp, 0):
                    span.sent_ns[mtyp] = sent
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

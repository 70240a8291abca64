"""Recovering a journal a crash left: every segment made to end with its last whole, intact
record, and sealed.

recover() runs at start-up, before a writer opens the directory; check_segments() checks
sealed segments of a journal a writer has open.  A segment with damaged records inside it is
rewritten without them (the damaged bytes kept in ``corrupt/``) and with a new seal; a damaged
tail with nothing intact after it is cut.  A record of a newer format version is refused
(:class:`JournalFormatError`) and nothing is changed.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from capture.errors import JournalError
from capture.journal import fsops
from capture.journal.reader import CutReason, SegmentScan, inspect_segment
from capture.journal.records import encode_seal

__all__ = ["RecoveryReport", "SegmentReport", "check_segments", "recover"]

_COPY_CHUNK: Final = 1 << 20
_CORRUPT_DIR: Final = "corrupt"
_REWRITE_SUFFIX: Final = ".rewrite"  # a segment being rewritten without its damaged records


@dataclass(frozen=True, slots=True)
class SegmentReport:
    """recover()'s verdict on one segment."""

    path: Path
    size_before: int
    bytes_cut: int
    records_kept: int
    reason: CutReason | None  # None: nothing cut
    detail: str
    removed: bool  # empty after truncation (or empty to begin with), so deleted
    scanned: bool  # read and checked (False: trusted on its seal, see verify_sealed)
    sealed: bool  # sealed now
    preserved: Path | None  # where corrupt cut bytes were copied to
    min_seq: int | None
    max_seq: int | None
    next_seq: int | None


@dataclass(frozen=True)
class RecoveryReport:
    segments: list[SegmentReport]  # one per segment found, in append order
    bytes_cut: int
    records_kept: int
    directory: Path

    @property
    def removed(self) -> list[Path]:
        return [s.path for s in self.segments if s.removed]

    @property
    def cut(self) -> list[SegmentReport]:
        return [s for s in self.segments if s.bytes_cut]

    @property
    def clean(self) -> bool:
        """Nothing was cut or removed."""
        return not self.bytes_cut and not self.removed


def recover(
    directory: Path, *, verify_sealed: bool = False, preserve_corrupt: bool = True
) -> RecoveryReport:
    """Start-up pass: make every segment end with its last whole, intact record.

    Run it before opening a :class:`JournalWriter` (it takes the same directory lock).  For
    each segment in order: a sealed one is trusted unless ``verify_sealed``; otherwise its
    valid prefix is found, the file is truncated to it and fsynced, and it is sealed (so the
    next start-up need not read it).  A segment with no record left is deleted.  Bytes cut for
    a reason other than a torn write (a CRC mismatch, bad magic...) are first copied to
    ``corrupt/<segment>.<offset>.cut`` when ``preserve_corrupt`` (unless all zero, which is
    what a power loss leaves in unwritten blocks).  Idempotent: a second run changes nothing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return RecoveryReport([], 0, 0, directory)
    lock = fsops.DirLock(directory)
    try:
        reports: list[SegmentReport] = []
        removed_any = False
        for name in os.listdir(directory):
            if name.endswith(_REWRITE_SUFFIX):  # a rewrite a crash interrupted: the original
                (directory / name).unlink(missing_ok=True)  # segment is still in place
                removed_any = True
        for path, _, _ in fsops.segment_paths(directory):
            report = _recover_segment(path, verify_sealed, preserve_corrupt)
            removed_any |= report.removed
            reports.append(report)
        if removed_any:
            fsops.fsync_dir(directory)
    finally:
        lock.release()
    return RecoveryReport(
        reports,
        bytes_cut=sum(r.bytes_cut for r in reports),
        records_kept=sum(r.records_kept for r in reports),
        directory=directory,
    )


def check_segments(paths: Collection[Path], *, preserve_corrupt: bool = True) -> RecoveryReport:
    """recover(verify_sealed=True) for the given sealed segments of a journal a writer has
    open: every record's CRCs are checked and damage is cut as recover() cuts it.  Runs
    without the directory lock (the writer holds it), so the caller must keep these segments
    from being retired meanwhile; the writer never writes to a sealed segment."""
    reports = [_recover_segment(p, True, preserve_corrupt) for p in paths if p.exists()]
    directory = next(iter(paths)).parent if paths else Path()
    if any(r.removed for r in reports):
        fsops.fsync_dir(directory)
    return RecoveryReport(
        reports,
        bytes_cut=sum(r.bytes_cut for r in reports),
        records_kept=sum(r.records_kept for r in reports),
        directory=directory,
    )


def _recover_segment(path: Path, verify_sealed: bool, preserve: bool) -> SegmentReport:
    preserved: Path | None = None
    with open(path, "r+b", buffering=0) as f:
        scan = inspect_segment(f, trust_seal=not verify_sealed)
        size = scan.size
        scanned = verify_sealed or not scan.sealed or scan.reason is not None or scan.end < size
        bytes_cut = scan.bytes_cut
        if scan.holes:
            preserved = _rewrite_without_holes(f, path, scan, preserve)
        elif scan.end < size:
            if preserve and scan.reason is not None and not scan.reason.torn:
                preserved = _preserve(f, path, scan.end, size)
            f.truncate(scan.end)
            fsops.fsync(f.fileno())
        if scan.records and not scan.sealed:
            if scan.end == size:
                fsops.fsync(f.fileno())  # the seal must never reach the disk before the data
            seal = encode_seal(
                scan.end, scan.records, scan.min_seq, scan.max_seq, scan.next_seq, time.time_ns()
            )
            f.seek(scan.end)
            fsops.write_all(f.fileno(), [seal])
            fsops.fsync(f.fileno())
            scan.sealed = True
    removed = scan.records == 0
    if removed:
        path.unlink()
    reason, detail = scan.reason, scan.detail
    if scan.holes:
        reason = scan.holes[0][2] if reason is None else reason
        detail = "; ".join([*(f"{d} ({e - s} bytes)" for s, e, _, d in scan.holes), detail])
        detail = detail.rstrip("; ")
    return SegmentReport(
        path=path,
        size_before=size,
        bytes_cut=bytes_cut,
        records_kept=scan.records,
        reason=reason,
        detail=detail,
        removed=removed,
        scanned=scanned,
        sealed=scan.sealed and not removed,
        preserved=preserved,
        min_seq=scan.min_seq,
        max_seq=scan.max_seq,
        next_seq=scan.next_seq,
    )


def _rewrite_without_holes(
    f: io.FileIO, path: Path, scan: SegmentScan, preserve: bool
) -> Path | None:
    """Replace a segment with damaged stretches inside it by a copy of its intact records and
    a new seal (written beside it, fsynced, renamed over it).  Damaged bytes are copied to
    ``corrupt/`` first when ``preserve``.  Returns the first preserved file."""
    cuts = [(s, e) for s, e, _, _ in scan.holes]
    if scan.end < scan.size - scan.stale_seal:
        cuts.append((scan.end, scan.size - scan.stale_seal))
    preserved: Path | None = None
    if preserve:
        for start, end in cuts:
            kept = _preserve(f, path, start, end)
            preserved = preserved or kept
    keep: list[tuple[int, int]] = []
    at = 0
    for start, end, _, _ in scan.holes:
        if start > at:
            keep.append((at, start))
        at = end
    if scan.end > at:
        keep.append((at, scan.end))
    tmp = path.with_name(path.name + _REWRITE_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, fsops.FILE_MODE)
    try:
        written = 0
        for start, end in keep:
            f.seek(start)
            left = end - start
            while left > 0:
                data = f.read(min(left, _COPY_CHUNK))
                if not data:
                    raise JournalError(f"{path} shrank while it was being recovered")
                fsops.write_all(fd, [data])
                left -= len(data)
                written += len(data)
        if scan.records:
            fsops.fsync(fd)  # the seal must never reach the disk before the data
            seal = encode_seal(
                written, scan.records, scan.min_seq, scan.max_seq, scan.next_seq, time.time_ns()
            )
            fsops.write_all(fd, [seal])
            scan.sealed = True
        fsops.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsops.fsync_dir(path.parent)
    scan.end = scan.size  # nothing left to truncate: the file was replaced
    return preserved


def _preserve(f: io.FileIO, path: Path, start: int, end: int) -> Path | None:
    """Copy bytes [start, end) of ``f`` to ``corrupt/`` before they are cut, unless they are
    all zero (what a power loss leaves in blocks allocated but never written)."""

    def chunks() -> Iterator[bytes]:
        f.seek(start)
        left = end - start
        while left > 0:
            data = f.read(min(left, _COPY_CHUNK))
            if not data:
                return
            left -= len(data)
            yield data

    if not any(c.strip(b"\0") for c in chunks()):
        return None
    directory = path.parent / _CORRUPT_DIR
    fsops.ensure_dir(directory)
    dest = directory / f"{path.name}.{start}.cut"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, fsops.FILE_MODE)
    try:
        for c in chunks():
            fsops.write_all(fd, [c])
        fsops.fsync(fd)
    finally:
        os.close(fd)
    fsops.fsync_dir(directory)
    return dest

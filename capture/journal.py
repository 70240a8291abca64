"""Per-stripe raw journal: every WebSocket message, byte-exact, before anything else.

A Parquet file has no footer until it is closed, so a crash loses the file being written, and
the vendor's WebSocket cannot replay.  Each stripe worker therefore appends every message it
receives to this journal *before* decoding it (a kdb+ tickerplant log), fsyncs it at least every
``durability_interval`` and deletes a segment only once every frame in it is in committed
Parquet.  Recovery and ``replay`` feed the journal's messages through the same decode pipeline
as live data, so the journal holds raw WebSocket payloads, not parsed frames.

This module is synchronous and imports neither trio nor pyarrow.

Directory and segments
----------------------
One directory per stripe (``ROOT/_journal/stripe=<S>/``) holds::

    seg-<name_seq: 20 digits>-<generation: 10 digits>.mlj   segments, name order = append order
    LOCK                                                     flock(2): one writer (or recover)
    corrupt/<segment>.<offset>.cut                           bytes recover() cut as corrupt

A writer always starts a *new* segment (it never appends to a file a crash may have torn) and
rolls to a new one when the next record would take the segment past ``segment_bytes``, or on
:meth:`JournalWriter.roll`.  ``name_seq`` is the sequence number the segment's first data frame
gets (a lower bound for the first segment a writer opens); ``generation`` grows by one per
segment, so names are unique and sort in creation order.  A rolled segment begins with a copy of
the current SESSION record marked *resumed*, so every segment names its session.

A segment that is closed cleanly ends with a SEAL record: a summary (record count, seq range)
written only after the data before it was fsynced.  recover() trusts a seal and does not read
the segment; only unsealed segments (the one or two a crash left open) are scanned.  The seal
comes on top of ``segment_bytes``.

Writing and durability
----------------------
``append`` makes no system call (it runs on the event loop): it packs the header, computes the
CRCs and queues the bytes.  A thread of the writer hands them to the OS once 256 KiB are queued
and at least every 0.2 s, so a *process* crash (kill -9, OOM) loses at most that;
``flush_and_sync`` (every ``durability_interval``) writes the rest and fsyncs, so a *power
loss* loses at most what was appended after its last return.  If the disk stalls, ``append``
writes itself once 64 MiB are queued: memory stays bounded, the stall reaches the event loop.

Record layout (little-endian; 40-byte header, then ``payload_len`` payload bytes)::

    offset size  field
      0     4    magic        b"MLJR"
      4     1    version      1 (2 for an EVENT record: a reader before events refuses it)
      5     1    kind         1 SESSION, 2 MESSAGE, 3 SEAL, 4 EVENT
      6     1    flags        MESSAGE: bit 0 = text message; SESSION: bit 0 = resumed; SEAL: 0
      7     1    reserved     0
      8     4    payload_len  u32
     12     8    time_ns      i64  MESSAGE: recv_ns; SESSION: wall_ns; SEAL: time sealed
     20     8    first_seq    u64  MESSAGE: seq of its first data frame; otherwise 0
     28     4    n_data       u32  MESSAGE: data frames completed in it; otherwise 0
     32     4    header_crc   CRC-32 of bytes 0..31
     36     4    record_crc   CRC-32 of bytes 0..31 followed by the payload
                              (computed as zlib.crc32(payload, header_crc))

    MESSAGE payload  the WebSocket message; a text message is stored UTF-8 encoded
    SESSION payload  UTF-8 JSON {"session": str, "stripe": str, "context": {...}}
    EVENT payload    UTF-8 JSON object: a capture event (capture.events.Event's fields);
                     first_seq: the journal position, next_seq from then on
    SEAL payload     48 bytes: u64 offset of this record, u64 records before it (SESSION and
                     MESSAGE), u64 min_seq, u64 max_seq, u64 next_seq, u32 flags (bit 0:
                     min/max valid, bit 1: next_seq valid), u32 reserved = 0

Because the header has its own CRC, ``payload_len`` is trusted only when the header is intact,
so a reader tells apart a *torn header* (fewer than 40 bytes left), a *torn payload* (an intact
header announcing more bytes than the file has), *bad magic*, a *header crc mismatch* and a
*crc mismatch* (payload or record crc).  A damaged record costs only itself: readers and
recover() resynchronise on the next whole, intact record after it (magic, header CRC, version,
kind, flags, payload inside the file, record CRC and, for a MESSAGE, a first_seq not below the
segment's next_seq so far).  recover() rewrites such a segment without the damaged bytes (kept in
``corrupt/``) and with a new seal; a damaged tail with nothing intact after it is cut.
A header with a good CRC but a different ``version`` is not corruption: it raises
:class:`JournalFormatError` and nothing is changed.

Sequence numbers
----------------
The worker numbers data frames consecutively per stripe and tells :meth:`JournalWriter.append`
the ``first_seq`` and count ``n_data`` of the data frames *completed* in each message, so the
message's frames are ``first_seq .. first_seq + n_data - 1`` and ``first_seq + n_data`` is the
next number.  ``first_seq`` must never decrease, across restarts too (the writer refuses with
ValueError): start the worker's counter at :attr:`JournalWriter.next_seq`.

A frame split across two messages completes in (and is numbered with) the later one, but its
first bytes are in the earlier message, perhaps in the previous segment.  So a segment also
holds the start of frame ``next_seq`` (its ``last_seq + 1``), and :meth:`JournalWriter.retire`
deletes a segment only when ``next_seq < committed_below``: one frame more conservative than
"every frame completed in it is committed", so replay never lacks the head of a frame.

Replay
------
``read_records`` yields SESSION and MESSAGE records in append order (never SEAL records).
Reset the frame decoder at every SESSION record whose ``resumed`` is False (a new connection is
a new byte stream); a resumed copy only repeats the session at a segment boundary.  A reader
that starts at a later segment (``from_seq``) may see the tail of a frame split across the
boundary first; the decoder resyncs, and that frame is numbered below ``from_seq``.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import fcntl
import io
import json
import os
import re
import struct
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, cast
from zlib import crc32

from capture.durable import make_dirs
from capture.errors import (
    JournalBrokenError,
    JournalClosedError,
    JournalError,
    JournalFormatError,
    JournalLockedError,
)
from capture.faultpoints import crash_point, fail_point

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "HEADER_SIZE",
    "CutReason",
    "EventRecord",
    "JournalBrokenError",
    "JournalClosedError",
    "JournalError",
    "JournalFormatError",
    "JournalLockedError",
    "JournalStatistics",
    "JournalWriter",
    "MessageRecord",
    "Record",
    "RecoveryReport",
    "SegmentInfo",
    "SegmentReport",
    "SessionRecord",
    "check_segments",
    "list_segments",
    "read_records",
    "recover",
]

MAGIC: Final = b"MLJR"
VERSION: Final = 1
KIND_SESSION: Final = 1
KIND_MESSAGE: Final = 2
KIND_SEAL: Final = 3
KIND_EVENT: Final = 4
EVENT_VERSION: Final = 2  # an older reader refuses (JournalFormatError) instead of cutting it
FLAG_TEXT: Final = 0x01  # MESSAGE
FLAG_RESUMED: Final = 0x01  # SESSION
_ALLOWED_FLAGS: Final = {
    KIND_SESSION: FLAG_RESUMED,
    KIND_MESSAGE: FLAG_TEXT,
    KIND_SEAL: 0,
    KIND_EVENT: 0,
}
_KIND_VERSION: Final = {KIND_SESSION: 1, KIND_MESSAGE: 1, KIND_SEAL: 1, KIND_EVENT: EVENT_VERSION}
_VERSIONS: Final = frozenset(_KIND_VERSION.values())

_PREFIX: Final = struct.Struct("<4sBBBBIqQI")  # the CRC-covered header fields
_HEADER: Final = struct.Struct("<4sBBBBIqQIII")
_CRCS: Final = struct.Struct("<II")
_SEAL_BODY: Final = struct.Struct("<QQQQQII")
_SEAL_HAS_RANGE: Final = 0x01
_SEAL_HAS_NEXT: Final = 0x02

HEADER_SIZE: Final = _HEADER.size  # 40
_PREFIX_SIZE: Final = _PREFIX.size  # 32
SEAL_SIZE: Final = HEADER_SIZE + _SEAL_BODY.size  # 88
DEFAULT_SEGMENT_BYTES: Final = 64 * 2**20
MAX_SESSION_PAYLOAD: Final = 2**20

_DRAIN_BYTES: Final = 1 << 18  # queued bytes that wake the writing thread
_DRAIN_INTERVAL: Final = 0.2  # seconds queued bytes may wait for the writing thread at most
_MAX_PENDING_BYTES: Final = 64 * 2**20  # beyond this, append writes itself (disk stalled)
_SMALL_PAYLOAD: Final = 1 << 12  # up to this, header + payload are queued as one chunk
_SYNC_RETRY: Final = 0.005  # the writing thread's fsync found another sync running: retry after
_SYNC_LOG: Final = 1024  # fsyncs remembered for take_syncs()


def _iov_max() -> int:
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        n = -1
    return min(1024, n) if n >= 16 else 16


_IOV_MAX: Final = _iov_max()
_READ_CHUNK: Final = 1 << 22
_COPY_CHUNK: Final = 1 << 20
_SEGMENT_RE: Final = re.compile(r"seg-(\d{20})-(\d{10})\.mlj")
_LOCK_NAME: Final = "LOCK"
_CORRUPT_DIR: Final = "corrupt"
_REWRITE_SUFFIX: Final = ".rewrite"  # a segment being rewritten without its damaged records
_FILE_MODE: Final = 0o640

# Bound once: the hot path calls these per message.
_pack_prefix = _PREFIX.pack
_pack_crcs = _CRCS.pack


# --------------------------------------------------------------------------------------------
# Records, reports, errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Start of a connection session.  ``resumed`` marks the copy a rolled segment begins with:
    the same session continuing, so a replay must not reset its frame decoder there."""

    session: str
    stripe: str
    wall_ns: int
    context: Mapping[str, Any]
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One received WebSocket message (``payload`` is UTF-8 when ``is_text``)."""

    recv_ns: int
    first_seq: int
    n_data: int
    is_text: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A capture event (connect, disconnect, logon, gap, ...: capture.events) journaled when it
    happened, so that it is as durable as the data.  ``seq``: the journal position it was
    written at (not below the event's own ``seq`` field)."""

    time_ns: int
    seq: int
    fields: Mapping[str, Any]


Record = SessionRecord | MessageRecord | EventRecord


class CutReason(enum.StrEnum):
    """Why a segment's valid prefix ends before its last byte."""

    TORN_HEADER = "torn header"  # fewer than HEADER_SIZE bytes after the last whole record
    TORN_PAYLOAD = "torn payload"  # an intact header announces more bytes than the file has
    BAD_MAGIC = "bad magic"
    HEADER_CRC = "header crc mismatch"
    CRC_MISMATCH = "crc mismatch"  # payload (or the record crc field) does not match
    INVALID_RECORD = "invalid record"  # intact CRCs, but not a record a writer produces
    AFTER_SEAL = "data after seal"

    @property
    def torn(self) -> bool:
        """A write cut short by a crash, as opposed to bytes that changed after writing."""
        return self in (CutReason.TORN_HEADER, CutReason.TORN_PAYLOAD)


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What a segment holds.  ``min_seq``/``max_seq``: its data frames (None if none);
    ``next_seq``: first_seq + n_data of its last MESSAGE (None if it has no MESSAGE)."""

    path: Path
    size: int
    records: int
    min_seq: int | None
    max_seq: int | None
    next_seq: int | None
    sealed: bool


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


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    segments: int  # the open one included (its file appears with its first record)
    bytes_on_disk: int  # their sizes, bytes still queued included
    open_segment: Path | None
    appended_records: int  # SESSION and MESSAGE records written (resumed copies too)
    appended_bytes: int
    pending_bytes: int  # appended, not yet handed to the OS (lost if the process dies)
    unsynced_bytes: int  # appended, not yet fsynced (lost if the power fails)
    next_seq: int
    durable_seq: int | None  # every data frame up to this one is fsynced
    oldest_seq: int | None  # lowest data frame seq still in the journal
    last_sync_ns: int | None  # wall time the last flush_and_sync finished
    syncs: int
    rolls: int
    retired_segments: int
    retired_bytes: int
    broken: str | None  # the error that stopped the writer, if one did


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _record(
    kind: int, flags: int, time_ns: int, first_seq: int, n_data: int, payload: bytes
) -> bytes:
    version = _KIND_VERSION[kind]
    prefix = _pack_prefix(MAGIC, version, kind, flags, 0, len(payload), time_ns, first_seq, n_data)
    hcrc = crc32(prefix)
    return prefix + _pack_crcs(hcrc, crc32(payload, hcrc)) + payload


def _session_payload(session: str, stripe: str, context: Mapping[str, Any]) -> bytes:
    if not isinstance(session, str) or not isinstance(stripe, str):
        raise TypeError("session and stripe must be str")
    text = json.dumps(
        {"session": session, "stripe": stripe, "context": dict(context)},
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    payload = text.encode("utf-8")
    if len(payload) > MAX_SESSION_PAYLOAD:
        raise ValueError(f"session context too large ({len(payload)} bytes of JSON)")
    return payload


def _parse_event(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _parse_session(payload: bytes, wall_ns: int, flags: int) -> SessionRecord | None:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    session, stripe, context = obj.get("session"), obj.get("stripe"), obj.get("context")
    if not (isinstance(session, str) and isinstance(stripe, str) and isinstance(context, dict)):
        return None
    return SessionRecord(session, stripe, wall_ns, context, bool(flags & FLAG_RESUMED))


def _seal_record(
    offset: int,
    records: int,
    min_seq: int | None,
    max_seq: int | None,
    next_seq: int | None,
    now_ns: int,
) -> bytes:
    flags = (_SEAL_HAS_RANGE if min_seq is not None else 0) | (
        _SEAL_HAS_NEXT if next_seq is not None else 0
    )
    body = _SEAL_BODY.pack(offset, records, min_seq or 0, max_seq or 0, next_seq or 0, flags, 0)
    return _record(KIND_SEAL, 0, now_ns, 0, 0, body)


# --------------------------------------------------------------------------------------------
# Filesystem helpers (module-level so tests can observe exactly these syscalls)
# --------------------------------------------------------------------------------------------


def _fsync(fd: int) -> None:
    fail_point("journal.fsync")
    os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """mkdir -p, fsyncing the parent of every directory created, so the journal directory
    itself survives a power loss."""
    make_dirs(path, _fsync_dir)


class _DirLock:
    """An exclusive flock(2) on ``<dir>/LOCK`` for as long as the object lives; the kernel
    releases it when the process dies, so a stale lock cannot outlive a crash."""

    __slots__ = ("_fd",)

    def __init__(self, directory: Path) -> None:
        self._fd: int | None = None
        fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise JournalLockedError(
                    f"journal {directory} is in use by another writer or recovery"
                ) from exc
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the lock

    def __del__(self) -> None:  # a writer dropped without close() must not pin the lock
        self.release()


def _segment_paths(directory: Path) -> list[tuple[Path, int, int]]:
    """(path, name_seq, generation) of every segment, in append order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out: list[tuple[Path, int, int]] = []
    for name in names:
        m = _SEGMENT_RE.fullmatch(name)
        if m is not None:
            out.append((directory / name, int(m.group(1)), int(m.group(2))))
    out.sort(key=lambda t: (t[1], t[2]))
    return out


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Scan:
    """What a pass over one segment found; filled in as records are read."""

    size: int
    end: int = 0  # end of the valid prefix
    records: int = 0
    min_seq: int | None = None
    max_seq: int | None = None
    next_seq: int | None = None
    sealed: bool = False
    reason: CutReason | None = None
    detail: str = ""
    # Damaged stretches inside the valid prefix, skipped by resynchronising on the next intact
    # record: (start, end, reason, detail).
    holes: list[tuple[int, int, CutReason, str]] = field(default_factory=list)
    stale_seal: int = 0  # bytes of a seal that no longer matches (holes): dropped, not cut

    @property
    def bytes_cut(self) -> int:
        """Bytes that are not part of a whole, intact record: the holes and the tail."""
        return sum(e - s for s, e, _, _ in self.holes) + self.size - self.end - self.stale_seal

    def stop(self, reason: CutReason, detail: str) -> None:
        self.reason = reason
        self.detail = f"offset {self.end}: {detail}"

    def info(self, path: Path) -> SegmentInfo:
        return SegmentInfo(
            path, self.end, self.records, self.min_seq, self.max_seq, self.next_seq, self.sealed
        )


class _Chunks:
    """A window of a file read in large chunks; ``ensure(n)`` makes ``buf[pos:pos+n]`` valid."""

    __slots__ = ("base", "buf", "f", "pos", "size")

    def __init__(self, f: io.FileIO, size: int) -> None:
        self.f = f
        self.size = size  # the file is read no further than this
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0

    def ensure(self, n: int) -> bool:
        have = len(self.buf) - self.pos
        if have >= n:
            return True
        offset = self.base + self.pos
        if offset + n > self.size:
            return False
        want = min(max(n - have, _READ_CHUNK), self.size - offset - have)
        parts = [self.buf[self.pos :]]
        got = 0
        while have + got < n:
            data = self.f.read(want - got)
            if not data:
                return False  # the file shrank under us: treat as its end
            parts.append(data)
            got += len(data)
        self.buf = b"".join(parts)
        self.base = offset
        self.pos = 0
        return True


def _scan(f: io.FileIO, out: _Scan, *, build: bool) -> Iterator[Record]:
    """Verify the records of a segment from the start; yield them when ``build``.  A damaged
    record is skipped by resynchronising on the next whole, intact record after it (recorded in
    ``out.holes``); the scan stops at a torn tail or where nothing intact follows.  ``out`` says
    where and why it stopped."""
    r = _Chunks(f, out.size)
    size = out.size
    unpack = _HEADER.unpack_from

    def damaged(offset: int, reason: CutReason, detail: str) -> bool:
        """Skip to the next intact record after ``offset``; False: none (stop here)."""
        found = _resync(f, offset + 1, size, out.next_seq)
        if found is None:
            out.stop(reason, detail)
            return False
        out.holes.append((offset, found, reason, f"offset {offset}: {detail}"))
        f.seek(found)
        r.buf, r.base, r.pos = b"", found, 0
        return True

    while True:
        offset = r.base + r.pos
        out.end = offset
        if offset >= size:
            return
        if not r.ensure(HEADER_SIZE):
            left = size - offset
            tail = r.buf[r.pos : r.pos + left] if r.ensure(left) else b""
            if tail[:4] != MAGIC[: len(tail[:4])]:
                out.stop(CutReason.BAD_MAGIC, f"{left} trailing bytes, not a record")
            else:
                out.stop(CutReason.TORN_HEADER, f"{left} of {HEADER_SIZE} header bytes")
            return
        buf, pos = r.buf, r.pos
        magic, version, kind, flags, reserved, n, t, fs, nd, hcrc, rcrc = unpack(buf, pos)
        if magic != MAGIC:
            if damaged(offset, CutReason.BAD_MAGIC, f"magic {magic!r}"):
                continue
            return
        if crc32(buf[pos : pos + _PREFIX_SIZE]) != hcrc:
            if damaged(offset, CutReason.HEADER_CRC, "header crc mismatch"):
                continue
            return
        if version > _KIND_VERSION.get(kind, max(_VERSIONS)):  # a newer writer's: never cut
            raise JournalFormatError(
                f"{f.name!r}: record at offset {offset} (kind {kind}) has format version "
                f"{version}; this program reads version {_KIND_VERSION.get(kind, VERSION)}"
            )
        allowed = _ALLOWED_FLAGS.get(kind)
        if allowed is None or flags & ~allowed or reserved or _KIND_VERSION[kind] != version:
            detail = f"kind {kind} version {version} flags {flags:#x} reserved {reserved}"
            if damaged(offset, CutReason.INVALID_RECORD, detail):
                continue
            return
        need = HEADER_SIZE + n
        if not r.ensure(need):
            out.stop(CutReason.TORN_PAYLOAD, f"{size - offset - HEADER_SIZE} of {n} payload bytes")
            return
        buf, pos = r.buf, r.pos
        start = pos + HEADER_SIZE
        stop = pos + need
        if crc32(memoryview(buf)[start:stop], hcrc) != rcrc:
            if damaged(offset, CutReason.CRC_MISMATCH, "record crc mismatch"):
                continue
            return
        if kind == KIND_MESSAGE:
            if nd:
                if out.min_seq is None:
                    out.min_seq = fs
                out.max_seq = fs + nd - 1
            out.next_seq = fs + nd
            r.pos = stop
            out.records += 1
            if build:
                yield MessageRecord(t, fs, nd, bool(flags & FLAG_TEXT), buf[start:stop])
            continue
        if kind == KIND_EVENT:
            fields = _parse_event(buf[start:stop])
            if fields is None or (out.next_seq is not None and fs < out.next_seq):
                if damaged(offset, CutReason.INVALID_RECORD, "EVENT payload or seq is invalid"):
                    continue
                return
            out.next_seq = fs
            r.pos = stop
            out.records += 1
            if build:
                yield EventRecord(t, fs, fields)
            continue
        if kind == KIND_SESSION:
            rec = _parse_session(buf[start:stop], t, flags)
            if rec is None:
                detail = "SESSION payload is not the expected JSON"
                if damaged(offset, CutReason.INVALID_RECORD, detail):
                    continue
                return
            r.pos = stop
            out.records += 1
            if build:
                yield rec
            continue
        # KIND_SEAL: must describe exactly what precedes it, and end the segment.
        if out.holes and n == _SEAL_BODY.size and offset + need == size:
            # A seal written before the damage: it counts records that are gone.  It still
            # ends the segment; recover() writes a new one.
            out.stale_seal = need
            return
        if n != _SEAL_BODY.size or not _seal_matches(buf, start, offset, out):
            out.stop(CutReason.INVALID_RECORD, "seal does not match the records before it")
            return
        out.sealed = True
        out.end = offset + need
        if out.end < size:
            out.stop(CutReason.AFTER_SEAL, f"{size - out.end} bytes after the seal")
        return


def _resync(f: io.FileIO, start: int, size: int, next_seq: int | None) -> int | None:
    """The offset of the first whole, intact record at or after ``start`` (None: none).

    A candidate must have the magic, an intact header CRC, this version, a valid kind and
    flags, a payload inside the file with an intact record CRC and, for a MESSAGE, a
    ``first_seq`` not below ``next_seq`` (seq numbers never decrease in a segment): a
    payload that merely contains a record's bytes would also have to pass all of that."""
    fd = f.fileno()
    pos = start
    carry = b""
    while pos < size:
        chunk = os.pread(fd, min(_READ_CHUNK, size - pos), pos)
        if not chunk:
            return None
        window = carry + chunk
        base = pos - len(carry)
        i = window.find(MAGIC)
        while i >= 0:
            if _intact_at(fd, base + i, size, next_seq):
                return base + i
            i = window.find(MAGIC, i + 1)
        carry = window[-(len(MAGIC) - 1) :]
        pos += len(chunk)
    return None


def _intact_at(fd: int, offset: int, size: int, next_seq: int | None) -> bool:
    if offset + HEADER_SIZE > size:
        return False
    head = os.pread(fd, HEADER_SIZE, offset)
    if len(head) != HEADER_SIZE:
        return False
    magic, version, kind, flags, reserved, n, _t, fs, _nd, hcrc, rcrc = _HEADER.unpack(head)
    allowed = _ALLOWED_FLAGS.get(kind)
    if (
        magic != MAGIC
        or crc32(head[:_PREFIX_SIZE]) != hcrc
        or allowed is None
        or version != _KIND_VERSION[kind]
        or flags & ~allowed
        or reserved
        or offset + HEADER_SIZE + n > size
        or (kind in (KIND_MESSAGE, KIND_EVENT) and next_seq is not None and fs < next_seq)
    ):
        return False
    payload = os.pread(fd, n, offset + HEADER_SIZE)
    return len(payload) == n and bool(crc32(payload, hcrc) == rcrc)


def _seal_matches(buf: bytes, start: int, offset: int, scanned: _Scan) -> bool:
    seal_offset, records, lo, hi, nxt, flags, reserved = _SEAL_BODY.unpack_from(buf, start)
    return (
        seal_offset == offset
        and records == scanned.records
        and reserved == 0
        and (lo if flags & _SEAL_HAS_RANGE else None) == scanned.min_seq
        and (hi if flags & _SEAL_HAS_RANGE else None) == scanned.max_seq
        and (nxt if flags & _SEAL_HAS_NEXT else None) == scanned.next_seq
    )


def _read_seal(f: io.FileIO, size: int) -> _Scan | None:
    """The summary in a segment's final SEAL record, or None if it does not end with one."""
    if size < SEAL_SIZE:
        return None
    f.seek(size - SEAL_SIZE)
    data = f.read(SEAL_SIZE)
    if len(data) != SEAL_SIZE:
        return None
    magic, version, kind, flags, reserved, n, _t, _fs, _nd, hcrc, rcrc = _HEADER.unpack_from(data)
    if (
        magic != MAGIC
        or crc32(data[:_PREFIX_SIZE]) != hcrc
        or version != VERSION
        or kind != KIND_SEAL
        or flags
        or reserved
        or n != _SEAL_BODY.size
        or crc32(data[HEADER_SIZE:], hcrc) != rcrc
    ):
        return None
    seal_offset, records, lo, hi, nxt, sflags, sres = _SEAL_BODY.unpack_from(data, HEADER_SIZE)
    if seal_offset != size - SEAL_SIZE or sres:
        return None
    has_range = bool(sflags & _SEAL_HAS_RANGE)
    return _Scan(
        size=size,
        end=size,
        records=records,
        min_seq=lo if has_range else None,
        max_seq=hi if has_range else None,
        next_seq=nxt if sflags & _SEAL_HAS_NEXT else None,
        sealed=True,
    )


def _inspect(f: io.FileIO, *, trust_seal: bool = True) -> _Scan:
    size = os.fstat(f.fileno()).st_size
    if trust_seal:
        sealed = _read_seal(f, size)
        if sealed is not None:
            return sealed
        f.seek(0)
    out = _Scan(size)
    collections.deque(_scan(f, out, build=False), maxlen=0)
    return out


def list_segments(directory: Path) -> list[SegmentInfo]:
    """Every segment in append order with what it holds: from its seal when sealed, else by
    reading its valid prefix (``size`` is then the valid prefix, not the file size)."""
    out: list[SegmentInfo] = []
    for path, _, _ in _segment_paths(Path(directory)):
        try:
            with open(path, "rb", buffering=0) as f:
                out.append(_inspect(f).info(path))
        except FileNotFoundError:
            continue  # retired meanwhile
    return out


def read_records(
    directory: Path,
    *,
    from_seq: int | None = None,
    on_cut: Callable[[Path, CutReason, int, int], None] | None = None,
    only: Collection[Path] | None = None,
) -> Iterator[tuple[Path, Record]]:
    """Every valid SESSION and MESSAGE record of every segment, in append order.

    Each segment is read up to the end of its valid prefix, skipping a damaged record by
    resynchronising on the next intact one; damage never raises but, when given,
    ``on_cut(path, reason, start, end)`` is called for each damaged stretch and for a torn or
    corrupt tail (the live segment of a running writer may legitimately end mid-record).
    With ``from_seq``, leading segments that hold nothing at or above ``from_seq`` (by the
    same rule as retire: their ``next_seq < from_seq``) are skipped; records below
    ``from_seq`` in the first segment read are still yielded, so filter frames by seq.  With
    ``only``, just those segments are read (the ones a crashed run left, while a new writer
    appends to others).
    """
    directory = Path(directory)
    paths = [p for p, _, _ in _segment_paths(directory)]
    if only is not None:
        wanted = set(only)
        paths = [p for p in paths if p in wanted]
    if from_seq is not None:
        infos = list_segments(directory)
        skip = 0
        for i, info in enumerate(infos):
            if info.next_seq is not None and info.next_seq < from_seq:
                skip = i + 1
        keep = {info.path for info in infos[skip:]}
        paths = [p for p in paths if p in keep]
    for path in paths:
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            continue  # retired after listing: everything in it is committed
        with f:
            out = _Scan(os.fstat(f.fileno()).st_size)
            for record in _scan(f, out, build=True):
                yield path, record
            if on_cut is not None:
                for start, end, reason, _ in out.holes:
                    on_cut(path, reason, start, end)
                if out.reason is not None:
                    on_cut(path, out.reason, out.end, out.size)


# --------------------------------------------------------------------------------------------
# Recovery
# --------------------------------------------------------------------------------------------


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
    lock = _DirLock(directory)
    try:
        reports: list[SegmentReport] = []
        removed_any = False
        for name in os.listdir(directory):
            if name.endswith(_REWRITE_SUFFIX):  # a rewrite a crash interrupted: the original
                (directory / name).unlink(missing_ok=True)  # segment is still in place
                removed_any = True
        for path, _, _ in _segment_paths(directory):
            report = _recover_segment(path, verify_sealed, preserve_corrupt)
            removed_any |= report.removed
            reports.append(report)
        if removed_any:
            _fsync_dir(directory)
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
        _fsync_dir(directory)
    return RecoveryReport(
        reports,
        bytes_cut=sum(r.bytes_cut for r in reports),
        records_kept=sum(r.records_kept for r in reports),
        directory=directory,
    )


def _recover_segment(path: Path, verify_sealed: bool, preserve: bool) -> SegmentReport:
    preserved: Path | None = None
    with open(path, "r+b", buffering=0) as f:
        scan = _inspect(f, trust_seal=not verify_sealed)
        size = scan.size
        scanned = verify_sealed or not scan.sealed or scan.reason is not None or scan.end < size
        bytes_cut = scan.bytes_cut
        if scan.holes:
            preserved = _rewrite_without_holes(f, path, scan, preserve)
        elif scan.end < size:
            if preserve and scan.reason is not None and not scan.reason.torn:
                preserved = _preserve(f, path, scan.end, size)
            f.truncate(scan.end)
            _fsync(f.fileno())
        if scan.records and not scan.sealed:
            if scan.end == size:
                _fsync(f.fileno())  # the seal must never reach the disk before the data
            seal = _seal_record(
                scan.end, scan.records, scan.min_seq, scan.max_seq, scan.next_seq, time.time_ns()
            )
            f.seek(scan.end)
            _write_all(f.fileno(), [seal])
            _fsync(f.fileno())
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


def _rewrite_without_holes(f: io.FileIO, path: Path, scan: _Scan, preserve: bool) -> Path | None:
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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    try:
        written = 0
        for start, end in keep:
            f.seek(start)
            left = end - start
            while left > 0:
                data = f.read(min(left, _COPY_CHUNK))
                if not data:
                    raise JournalError(f"{path} shrank while it was being recovered")
                _write_all(fd, [data])
                left -= len(data)
                written += len(data)
        if scan.records:
            _fsync(fd)  # the seal must never reach the disk before the data
            seal = _seal_record(
                written, scan.records, scan.min_seq, scan.max_seq, scan.next_seq, time.time_ns()
            )
            _write_all(fd, [seal])
            scan.sealed = True
        _fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
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
    _ensure_dir(directory)
    dest = directory / f"{path.name}.{start}.cut"
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    try:
        for c in chunks():
            _write_all(fd, [c])
        _fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(directory)
    return dest


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _State(enum.Enum):
    OPEN = "open"  # the writer appends to it
    CLOSING = "closing"  # rolled: the next flush_and_sync fsyncs, seals and closes it
    CLOSED = "closed"


@dataclass(slots=True, eq=False)
class _Segment:
    path: Path
    state: _State
    file: io.FileIO | None = None  # created with its first bytes, by the writing thread
    pending: list[bytes] = field(default_factory=list)  # appended, not yet written
    size: int = 0  # bytes appended (pending ones included)
    records: int = 0
    carried: int = 0  # leading resumed SESSION copies: not a reason to roll or keep it
    min_seq: int | None = None
    max_seq: int | None = None
    next_seq: int | None = None
    sealed: bool = False


def _open_segment_file(path: Path) -> io.FileIO:
    """O_CREAT | O_EXCL: never append to (or clobber) a file that already exists."""
    return open(path, "xb", buffering=0, opener=lambda p, flags: os.open(p, flags, _FILE_MODE))


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """writev in batches of IOV_MAX, finishing any short write."""
    for i in range(0, len(chunks), _IOV_MAX):
        batch = chunks[i : i + _IOV_MAX]
        done = os.writev(fd, batch)
        if done == sum(map(len, batch)):
            continue
        for chunk in batch:  # short write (a signal, a nearly full disk): finish it slowly
            if done >= len(chunk):
                done -= len(chunk)
                continue
            view = memoryview(chunk)[done:]
            done = 0
            while view:
                view = view[os.write(fd, view) :]


def _drain(
    ref: weakref.ReferenceType[JournalWriter], wake: threading.Event, sync_interval: float | None
) -> None:
    """The writing thread: hands appended bytes to the OS soon after they are appended and,
    with ``sync_interval``, fsyncs them that often, whatever the appending thread is doing.

    Holds the writer only weakly between rounds, so a writer dropped without close() is
    collected (its descriptors closed, its lock released) and this thread then ends."""
    next_sync = time.monotonic() + sync_interval if sync_interval else None
    while True:
        timeout = _DRAIN_INTERVAL
        if next_sync is not None:
            timeout = min(timeout, max(0.0, next_sync - time.monotonic()))
        wake.wait(timeout)
        wake.clear()
        writer = ref()
        if writer is None:
            return
        if next_sync is not None and time.monotonic() >= next_sync:
            synced = writer._sync_round()
            if synced is None:
                return
            if synced:
                # Keep the beat (a slow fsync does not push every later one back), but never
                # run two back to back to catch up.
                now = time.monotonic()
                next_sync = max(next_sync + cast(float, sync_interval), now + _DRAIN_INTERVAL / 4)
            else:
                next_sync = time.monotonic() + _SYNC_RETRY  # someone else held the sync lock
        elif not writer._drain_round():
            return
        del writer


class JournalWriter:
    """Appends to one stripe's journal.

    Thread model: one thread appends (``append``, ``begin_session``, ``roll``: the event loop);
    ``flush_and_sync``, ``retire``, ``segments``, ``statistics`` and ``take_syncs`` may be
    called from any thread.  The appending thread never makes a system call: it packs the
    header, computes the CRCs and queues references to the bytes under a short lock.  A small
    internal thread writes queued bytes to the OS as soon as 256 KiB are queued, and at least
    every 0.2 s, so a *process* crash loses only that much; ``flush_and_sync`` writes the rest
    and fsyncs, so a *power* loss loses only what followed it.  With ``sync_interval`` the
    internal thread also calls it that often, on its own clock: durability then does not wait
    for a busy event loop.  Should the disk stall, at most 64 MiB are queued before ``append``
    writes itself.  A failed write or fsync, in any thread, breaks the writer: every later
    call raises (see :meth:`check`).

    Construction takes the directory lock, reads what the existing segments hold (seals make
    that cheap) and starts a new segment (the file appears with its first record); it does
    blocking I/O, so call it from a thread.  ``next_seq``, when the caller knows it, names the
    first segment exactly.  Use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        next_seq: int = 0,
        sync_interval: float | None = None,
    ) -> None:
        if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int):
            raise TypeError("segment_bytes must be an int")
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        if next_seq < 0:
            raise ValueError(f"next_seq must be >= 0, got {next_seq}")
        if sync_interval is not None and not sync_interval > 0:
            raise ValueError(f"sync_interval must be positive, got {sync_interval}")
        self._dir = Path(directory)
        self._limit = segment_bytes
        # Lock order: _sync_lock -> _io_lock -> _lock.  The appending thread takes only _lock.
        self._lock = threading.Lock()  # all state below; held for microseconds
        self._io_lock = threading.Lock()  # one thread hands bytes to the OS at a time, in order
        self._sync_lock = threading.Lock()  # one flush_and_sync / retire / close at a time
        self._segments: list[_Segment] = []  # on disk or to be, oldest first
        self._session_copy: bytes | None = None  # current SESSION record, flagged resumed
        self._state = _State.OPEN
        self._broken: BaseException | None = None
        self._dir_dirty = False  # a segment file was created since the last directory fsync
        self._pending_bytes = 0
        self._drain_requested = False
        self._appended_seq: int | None = None
        self._durable_seq: int | None = None
        self._appended_records = 0
        self._appended_bytes = 0
        self._synced_bytes = 0
        self._last_sync_ns: int | None = None
        self._syncs = 0
        self._sync_log: collections.deque[tuple[int, int]] = collections.deque(maxlen=_SYNC_LOG)
        self._rolls = 0
        self._retired_segments = 0
        self._retired_bytes = 0
        _ensure_dir(self._dir)
        self._dirlock = _DirLock(self._dir)
        try:
            self._next_seq = next_seq
            self._generation = 0
            self._adopt_existing()
            self._seg = self._new_segment()
        except BaseException:
            self._dirlock.release()
            raise
        self._wake = threading.Event()
        self._drainer = threading.Thread(
            target=_drain,
            args=(weakref.ref(self), self._wake, sync_interval),
            name=f"journal-writer:{self._dir.name}",
            daemon=True,
        )
        self._drainer.start()

    def _adopt_existing(self) -> None:
        for path, _, generation in _segment_paths(self._dir):
            with open(path, "rb", buffering=0) as f:
                scan = _inspect(f)
                if not scan.sealed:
                    _fsync(f.fileno())  # left by a crash: make it as durable as it will be
            self._segments.append(
                _Segment(
                    path,
                    _State.CLOSED,
                    size=scan.size,
                    records=scan.records,
                    min_seq=scan.min_seq,
                    max_seq=scan.max_seq,
                    next_seq=scan.next_seq,
                    sealed=scan.sealed,
                )
            )
            self._generation = max(self._generation, generation + 1)
            if scan.next_seq is not None:
                self._next_seq = max(self._next_seq, scan.next_seq)
            if scan.max_seq is not None and (
                self._durable_seq is None or scan.max_seq > self._durable_seq
            ):
                self._durable_seq = scan.max_seq

    # -- properties ------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def pending_bytes(self) -> int:
        """Appended, not yet handed to the OS: held in memory until the writing thread runs."""
        return self._pending_bytes

    @property
    def next_seq(self) -> int:
        """The lowest ``first_seq`` the next append may use (monotonic, across restarts)."""
        return self._next_seq

    # -- the appending thread --------------------------------------------------------------------

    def append(self, recv_ns: int, first_seq: int, n_data: int, payload: bytes | str) -> None:
        """Journal one received WebSocket message (text is stored UTF-8 encoded).

        ``first_seq``: seq of the first data frame completed in this message (or, with
        ``n_data`` 0, of the next one); it must not be below :attr:`next_seq`."""
        if isinstance(payload, str):
            data = payload.encode("utf-8", "surrogatepass")
            flags = FLAG_TEXT
        else:
            data = payload
            flags = 0
        n = len(data)
        prefix = _pack_prefix(MAGIC, VERSION, KIND_MESSAGE, flags, 0, n, recv_ns, first_seq, n_data)
        hcrc = crc32(prefix)
        head = prefix + _pack_crcs(hcrc, crc32(data, hcrc))
        size = HEADER_SIZE + n
        with self._lock:
            if self._state is not _State.OPEN or self._broken is not None:
                self._raise_unusable()
            if first_seq < self._next_seq:
                raise ValueError(
                    f"first_seq {first_seq} is below the journal's next_seq {self._next_seq}: "
                    "seq numbers must not decrease (start the counter at JournalWriter.next_seq)"
                )
            seg = self._seg
            if seg.size + size > self._limit and seg.records > seg.carried:
                seg = self._roll_locked()
            if n <= _SMALL_PAYLOAD:
                seg.pending.append(head + data)
            else:
                seg.pending.append(head)
                seg.pending.append(data)
            seg.size += size
            seg.records += 1
            if n_data:
                last = first_seq + n_data - 1
                if seg.min_seq is None:
                    seg.min_seq = first_seq
                seg.max_seq = self._appended_seq = last
            seg.next_seq = self._next_seq = first_seq + n_data
            self._appended_records += 1
            self._appended_bytes += size
            pending = self._pending_bytes = self._pending_bytes + size
            wake = False
            if pending >= _DRAIN_BYTES and not self._drain_requested:
                self._drain_requested = wake = True
        if wake:
            self._wake.set()
        if pending >= _MAX_PENDING_BYTES:
            self._write_out()  # the writing thread cannot keep up: wait for the disk here

    def append_event(self, time_ns: int, seq: int, fields: Mapping[str, Any]) -> None:
        """Journal a capture event at position ``seq`` (not below :attr:`next_seq`; it becomes
        the next_seq, so a segment holding an event is retired only once ``seq`` is committed).
        ``fields`` must be JSON-serialisable (at most 1 MiB of JSON)."""
        payload = json.dumps(
            dict(fields), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8", "surrogatepass")
        if len(payload) > MAX_SESSION_PAYLOAD:
            raise ValueError(f"event too large ({len(payload)} bytes of JSON)")
        record = _record(KIND_EVENT, 0, time_ns, seq, 0, payload)
        with self._lock:
            if self._state is not _State.OPEN or self._broken is not None:
                self._raise_unusable()
            if seq < self._next_seq:
                raise ValueError(
                    f"event seq {seq} is below the journal's next_seq {self._next_seq}"
                )
            seg = self._seg
            if seg.size + len(record) > self._limit and seg.records > seg.carried:
                seg = self._roll_locked()
            seg.pending.append(record)
            seg.size += len(record)
            seg.records += 1
            seg.next_seq = self._next_seq = seq
            self._appended_records += 1
            self._appended_bytes += len(record)
            self._pending_bytes += len(record)

    def begin_session(
        self, session: str, stripe: str, wall_ns: int, context: Mapping[str, Any]
    ) -> None:
        """Journal the start of a connection (replay resets its frame decoder here).
        ``context`` must be JSON-serialisable (at most 1 MiB of JSON)."""
        payload = _session_payload(session, stripe, context)
        record = _record(KIND_SESSION, 0, wall_ns, 0, 0, payload)
        copy = _record(KIND_SESSION, FLAG_RESUMED, wall_ns, 0, 0, payload)
        with self._lock:
            if self._state is not _State.OPEN or self._broken is not None:
                self._raise_unusable()
            seg = self._seg
            if seg.size + len(record) > self._limit and seg.records > seg.carried:
                seg = self._roll_locked(carry=False)
            seg.pending.append(record)
            self._session_copy = copy
            seg.size += len(record)
            seg.records += 1
            self._appended_records += 1
            self._appended_bytes += len(record)
            self._pending_bytes += len(record)

    def roll(self) -> None:
        """Start a new segment now (no-op if the open one holds nothing of its own)."""
        with self._lock:
            if self._state is not _State.OPEN or self._broken is not None:
                self._raise_unusable()
            if self._seg.records > self._seg.carried:
                self._roll_locked()

    def _roll_locked(self, *, carry: bool = True) -> _Segment:
        self._seg.state = _State.CLOSING
        seg = self._seg = self._new_segment()
        self._rolls += 1
        if carry and self._session_copy is not None:
            copy = self._session_copy
            seg.pending.append(copy)
            seg.size += len(copy)
            seg.records += 1
            seg.carried = 1
            self._appended_records += 1
            self._appended_bytes += len(copy)
            self._pending_bytes += len(copy)
        return seg

    def _new_segment(self) -> _Segment:
        """A segment in name only: its file is created by whoever first writes to it."""
        seg = _Segment(self._segment_path(), _State.OPEN)
        self._segments.append(seg)
        return seg

    def _segment_path(self) -> Path:
        generation = self._generation
        self._generation += 1
        return self._dir / f"seg-{self._next_seq:020d}-{generation:010d}.mlj"

    # -- handing bytes to the OS -----------------------------------------------------------------

    def _drain_round(self) -> bool:
        """One round of the writing thread; False when it should end."""
        if self._state is _State.CLOSED or self._broken is not None:
            return False
        try:
            self._write_out()
        except BaseException:  # noqa: BLE001 - kept in _broken; the next append raises it
            return False
        return True

    def _sync_round(self) -> bool | None:
        """The writing thread's timed fsync: True done, False skipped (another thread holds
        the sync lock: retire, close, an explicit flush_and_sync), None to end the thread."""
        if self._state is _State.CLOSED or self._broken is not None:
            return None
        # Never wait for the sync lock: close() holds it while it joins this thread.
        if not self._sync_lock.acquire(blocking=False):
            return False if self._drain_round() else None
        try:
            self._flush_and_sync_locked()
        except BaseException:  # noqa: BLE001 - kept in _broken; the next call raises it
            return None
        finally:
            self._sync_lock.release()
        return True

    def _write_out(self) -> tuple[int | None, int, list[_Segment], _Segment | None]:
        """Write every queued byte, in order, creating segment files as needed.

        Returns what was appended when the queue was taken (everything before it is now in
        the OS): the highest seq, the byte count, the rolled segments and the open one."""
        with self._io_lock:
            with self._lock:
                if self._broken is not None:
                    self._raise_unusable()
                active = self._active_locked()
                work = [(s, s.pending) for s in active if s.pending]
                for s, _ in work:
                    s.pending = []
                self._pending_bytes = 0
                self._drain_requested = False
                snapshot = (
                    self._appended_seq,
                    self._appended_bytes,
                    [s for s in active if s.state is _State.CLOSING],
                    self._seg if self._state is _State.OPEN else None,
                )
            try:
                for seg, chunks in work:
                    if seg.file is None:
                        self._create_file(seg)
                    _write_all(cast(io.FileIO, seg.file).fileno(), chunks)
            except BaseException as exc:
                with self._lock:
                    self._broken = exc
                raise
            return snapshot

    def _active_locked(self) -> list[_Segment]:
        """The segments not yet closed: always the newest ones (segments close in order)."""
        segments = self._segments
        i = len(segments)
        while i and segments[i - 1].state is not _State.CLOSED:
            i -= 1
        return segments[i:]

    def _create_file(self, seg: _Segment) -> None:
        try:
            seg.file = _open_segment_file(seg.path)
        except FileExistsError as exc:
            # Names come from the highest generation on disk and the directory is locked:
            # only something writing here behind the lock's back can have taken this one.
            raise JournalError(f"{seg.path} appeared behind the writer's back") from exc
        with self._lock:
            self._dir_dirty = True

    # -- durability ------------------------------------------------------------------------------

    def flush_and_sync(self) -> int | None:
        """Write what is queued and fsync: the open segment, the segments rolled since the last
        call (which are then sealed and closed) and, when a segment file was created, the
        directory.  Returns the highest data frame seq now durable (None if none).

        Raises the OSError of a failed write or fsync; the writer is then broken and every
        later call raises JournalBrokenError (restart, recover, open a new writer)."""
        with self._sync_lock:
            return self._flush_and_sync_locked()

    def _flush_and_sync_locked(self) -> int | None:
        with self._lock:
            if self._broken is not None:
                self._raise_unusable()
            if self._state is _State.CLOSED:
                return self._durable_seq
        seq, appended, rolled, current = self._write_out()
        try:
            for seg in rolled:
                self._seal_and_close(seg)
            with self._lock:
                fd = current.file.fileno() if current and current.file else None
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            # `current` may be rolled meanwhile, but only this (serialised) method closes
            # rolled segments, so `fd` stays valid until then.
            if fd is not None and (appended != self._synced_bytes or rolled):
                _fsync(fd)
            if dir_dirty:
                _fsync_dir(self._dir)
        except BaseException as exc:
            with self._lock:
                self._broken = exc
            raise
        with self._lock:
            self._synced_locked(seq, appended)
            return self._durable_seq

    @property
    def durable_seq(self) -> int | None:
        """The highest data frame seq fsynced so far (None if none)."""
        return self._durable_seq

    def take_syncs(self) -> list[tuple[int, int]]:
        """(durable_seq, wall time ns) of each fsync that made more frames durable since the
        last call (the latest 1024), oldest first."""
        with self._lock:
            syncs = list(self._sync_log)
            self._sync_log.clear()
            return syncs

    def check(self) -> None:
        """Raise JournalBrokenError if a write or fsync failed (e.g. in the writing thread)."""
        with self._lock:
            if self._broken is not None:
                self._raise_unusable()

    def _seal_and_close(self, seg: _Segment) -> None:
        """fsync a rolled segment, then seal it, fsync again and close it.  Its bytes are all
        written: it was rolled before the queue was last taken, and it receives no more."""
        f = cast(io.FileIO, seg.file)
        _fsync(f.fileno())  # the data is durable before the seal can be
        seal = _seal_record(
            seg.size, seg.records, seg.min_seq, seg.max_seq, seg.next_seq, time.time_ns()
        )
        _write_all(f.fileno(), [seal])
        _fsync(f.fileno())
        f.close()
        with self._lock:
            seg.size += len(seal)
            seg.sealed = True
            seg.file = None
            seg.state = _State.CLOSED

    def _synced_locked(self, seq: int | None, appended: int) -> None:
        """Record a completed sync of everything appended up to ``seq`` / ``appended`` bytes
        (caller holds ``_lock``); take_syncs() reports it if it made frames durable."""
        before = self._durable_seq
        self._advance_durable(seq)
        self._synced_bytes = appended
        self._last_sync_ns = now = time.time_ns()
        self._syncs += 1
        if self._durable_seq is not None and self._durable_seq != before:
            self._sync_log.append((self._durable_seq, now))

    def _advance_durable(self, seq: int | None) -> None:
        """Record that frames up to ``seq`` are fsynced (caller holds ``_lock``)."""
        if seq is not None and (self._durable_seq is None or seq > self._durable_seq):
            self._durable_seq = seq

    def retire(self, committed_below: int, *, archive: Path | None = None) -> list[Path]:
        """Delete the oldest closed segments whose data is all in committed Parquet, i.e. whose
        ``next_seq < committed_below`` (see the module docstring for why not ``<=``); segments
        with no MESSAGE go with them.  Stops at the first segment to keep, never deletes the
        open segment or one not yet sealed by flush_and_sync; fsyncs the directory.

        With ``archive`` (a directory on the same file system) the segments are moved there
        instead of deleted, for ``mlink-capture replay``; pruning the archive is the caller's."""
        crash_point("journal.retire")
        with self._sync_lock:
            with self._lock:
                if self._broken is not None or self._state is _State.CLOSED:
                    self._raise_unusable()
                victims: list[_Segment] = []
                for seg in self._segments:
                    if seg.state is not _State.CLOSED:
                        break
                    if seg.next_seq is not None and seg.next_seq >= committed_below:
                        break
                    victims.append(seg)
                del self._segments[: len(victims)]
            deleted: list[Path] = []
            try:
                if archive is not None and victims:
                    _ensure_dir(archive)
                for seg in victims:
                    with contextlib.suppress(FileNotFoundError):
                        if archive is None:
                            seg.path.unlink()
                        else:
                            os.replace(seg.path, archive / seg.path.name)
                    deleted.append(seg.path)
            finally:
                with self._lock:
                    self._segments[:0] = victims[len(deleted) :]  # a failed unlink keeps it
                    self._retired_segments += len(deleted)
                    self._retired_bytes += sum(s.size for s in victims[: len(deleted)])
                if deleted:
                    _fsync_dir(self._dir)
                    if archive is not None:
                        _fsync_dir(archive)
            return deleted

    def close(self) -> None:
        """Write, fsync, seal and close every segment; release the directory.  Idempotent.
        A segment holding nothing of its own (no record, or only a resumed SESSION copy) is
        deleted instead of sealed.  On a broken writer it only releases the files."""
        with self._sync_lock:
            with self._lock:
                if self._state is _State.CLOSED:
                    return
                self._state = _State.CLOSED  # appends now raise; the writing thread ends
            self._wake.set()
            if self._drainer is not threading.current_thread():
                self._drainer.join()
            try:
                if self._broken is None:
                    self._close_segments()
            finally:
                with self._lock:
                    for seg in self._segments:
                        _close_quietly(seg)
                self._dirlock.release()

    def _close_segments(self) -> None:
        try:
            seq, appended, _, _ = self._write_out()
            unlinked = False
            for seg in [s for s in self._segments if s.state is not _State.CLOSED]:
                if seg.records > seg.carried:
                    self._seal_and_close(seg)
                    continue
                _close_quietly(seg)
                if seg.size:  # only a resumed copy: the previous segment names the session
                    with contextlib.suppress(FileNotFoundError):
                        seg.path.unlink()
                    unlinked = True
                with self._lock:
                    self._segments.remove(seg)
            with self._lock:
                dir_dirty = self._dir_dirty or unlinked
                self._dir_dirty = False
            if dir_dirty:
                _fsync_dir(self._dir)
        except BaseException as exc:
            with self._lock:
                self._broken = exc
            raise
        with self._lock:
            self._synced_locked(seq, appended)

    def _abandon(self) -> None:
        """What a crash does to this writer: queued bytes are dropped, descriptors closed, the
        lock released; nothing is written or synced.  For tests and benchmarks."""
        with self._lock:
            self._state = _State.CLOSED
            for seg in self._segments:
                seg.pending = []
        self._wake.set()
        if self._drainer is not threading.current_thread():
            self._drainer.join()
        with self._lock:
            for seg in self._segments:
                _close_quietly(seg)
        self._dirlock.release()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- introspection ---------------------------------------------------------------------------

    def segments(self) -> list[SegmentInfo]:
        """The segments this writer knows, oldest first (sizes include queued bytes)."""
        with self._lock:
            return [
                SegmentInfo(s.path, s.size, s.records, s.min_seq, s.max_seq, s.next_seq, s.sealed)
                for s in self._segments
            ]

    def statistics(self) -> JournalStatistics:
        with self._lock:
            mins = [s.min_seq for s in self._segments if s.min_seq is not None]
            return JournalStatistics(
                segments=len(self._segments),
                bytes_on_disk=sum(s.size for s in self._segments),
                open_segment=self._seg.path if self._state is _State.OPEN else None,
                appended_records=self._appended_records,
                appended_bytes=self._appended_bytes,
                pending_bytes=self._pending_bytes,
                unsynced_bytes=self._appended_bytes - self._synced_bytes,
                next_seq=self._next_seq,
                durable_seq=self._durable_seq,
                oldest_seq=min(mins) if mins else None,
                last_sync_ns=self._last_sync_ns,
                syncs=self._syncs,
                rolls=self._rolls,
                retired_segments=self._retired_segments,
                retired_bytes=self._retired_bytes,
                broken=repr(self._broken) if self._broken is not None else None,
            )

    def _raise_unusable(self) -> NoReturn:
        if self._broken is not None:
            raise JournalBrokenError(
                f"journal writer for {self._dir} failed earlier: {self._broken!r}"
            ) from self._broken
        raise JournalClosedError(f"journal writer for {self._dir} is closed")


def _close_quietly(seg: _Segment) -> None:
    f, seg.file = seg.file, None
    if seg.state is not _State.CLOSED:
        seg.state = _State.CLOSED
    if f is not None:
        with contextlib.suppress(OSError):
            f.close()

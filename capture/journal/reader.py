"""Reading a journal: what its segments hold, and their records in append order.

Because a record's header has its own CRC, ``payload_len`` is trusted only when the header is
intact, so a reader tells apart a *torn header* (fewer than 40 bytes left), a *torn payload* (an
intact header announcing more bytes than the file has), *bad magic*, a *header crc mismatch* and
a *crc mismatch* (payload or record crc).  A damaged record costs only itself: readers and
recover() resynchronise on the next whole, intact record after it (magic, header CRC, version,
kind, flags, payload inside the file, record CRC and, for a MESSAGE, a first_seq not below the
segment's next_seq so far).  A header with a good CRC but a different ``version`` is not
corruption: it raises :class:`JournalFormatError`.  A sealed segment's summary is read from its
SEAL record alone.

Replay
------
``read_records`` yields SESSION, MESSAGE and EVENT records in append order (never SEAL
records).
Reset the frame decoder at every SESSION record whose ``resumed`` is False (a new connection
is a new byte stream); a resumed copy only repeats the session at a segment boundary.
A reader that starts at a later segment (``from_seq``) may see the tail of a frame split across
the boundary first; the decoder resyncs, and that frame is numbered below ``from_seq``.
"""

from __future__ import annotations

import collections
import enum
import io
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from zlib import crc32

from capture.errors import JournalFormatError
from capture.journal import fsops
from capture.journal.records import (
    ALLOWED_FLAGS,
    FLAG_TEXT,
    HEADER,
    HEADER_SIZE,
    KIND_EVENT,
    KIND_MESSAGE,
    KIND_SEAL,
    KIND_SESSION,
    KIND_VERSION,
    MAGIC,
    PREFIX_SIZE,
    SEAL_BODY,
    SEAL_HAS_NEXT,
    SEAL_HAS_RANGE,
    SEAL_SIZE,
    VERSION,
    VERSIONS,
    EventRecord,
    MessageRecord,
    Record,
    decode_event,
    decode_session,
)

__all__ = [
    "CutReason",
    "SegmentInfo",
    "SegmentScan",
    "inspect_segment",
    "list_segments",
    "read_records",
]

_READ_CHUNK: Final = 1 << 22


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


@dataclass(slots=True)
class SegmentScan:
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


def _scan(f: io.FileIO, out: SegmentScan, *, build: bool) -> Iterator[Record]:
    """Verify the records of a segment from the start; yield them when ``build``.  A damaged
    record is skipped by resynchronising on the next whole, intact record after it (recorded in
    ``out.holes``); the scan stops at a torn tail or where nothing intact follows.  ``out`` says
    where and why it stopped."""
    r = _Chunks(f, out.size)
    size = out.size
    unpack = HEADER.unpack_from

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
        if crc32(buf[pos : pos + PREFIX_SIZE]) != hcrc:
            if damaged(offset, CutReason.HEADER_CRC, "header crc mismatch"):
                continue
            return
        if version > KIND_VERSION.get(kind, max(VERSIONS)):  # a newer writer's: never cut
            raise JournalFormatError(
                f"{f.name!r}: record at offset {offset} (kind {kind}) has format version "
                f"{version}; this program reads version {KIND_VERSION.get(kind, VERSION)}"
            )
        allowed = ALLOWED_FLAGS.get(kind)
        if allowed is None or flags & ~allowed or reserved or KIND_VERSION[kind] != version:
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
            fields = decode_event(buf[start:stop])
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
            rec = decode_session(buf[start:stop], t, flags)
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
        if out.holes and n == SEAL_BODY.size and offset + need == size:
            # A seal written before the damage: it counts records that are gone.  It still
            # ends the segment; recover() writes a new one.
            out.stale_seal = need
            return
        if n != SEAL_BODY.size or not _seal_matches(buf, start, offset, out):
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
    magic, version, kind, flags, reserved, n, _t, fs, _nd, hcrc, rcrc = HEADER.unpack(head)
    allowed = ALLOWED_FLAGS.get(kind)
    if (
        magic != MAGIC
        or crc32(head[:PREFIX_SIZE]) != hcrc
        or allowed is None
        or version != KIND_VERSION[kind]
        or flags & ~allowed
        or reserved
        or offset + HEADER_SIZE + n > size
        or (kind in (KIND_MESSAGE, KIND_EVENT) and next_seq is not None and fs < next_seq)
    ):
        return False
    payload = os.pread(fd, n, offset + HEADER_SIZE)
    return len(payload) == n and bool(crc32(payload, hcrc) == rcrc)


def _seal_matches(buf: bytes, start: int, offset: int, scanned: SegmentScan) -> bool:
    seal_offset, records, lo, hi, nxt, flags, reserved = SEAL_BODY.unpack_from(buf, start)
    return (
        seal_offset == offset
        and records == scanned.records
        and reserved == 0
        and (lo if flags & SEAL_HAS_RANGE else None) == scanned.min_seq
        and (hi if flags & SEAL_HAS_RANGE else None) == scanned.max_seq
        and (nxt if flags & SEAL_HAS_NEXT else None) == scanned.next_seq
    )


def _read_seal(f: io.FileIO, size: int) -> SegmentScan | None:
    """The summary in a segment's final SEAL record, or None if it does not end with one."""
    if size < SEAL_SIZE:
        return None
    f.seek(size - SEAL_SIZE)
    data = f.read(SEAL_SIZE)
    if len(data) != SEAL_SIZE:
        return None
    magic, version, kind, flags, reserved, n, _t, _fs, _nd, hcrc, rcrc = HEADER.unpack_from(data)
    if (
        magic != MAGIC
        or crc32(data[:PREFIX_SIZE]) != hcrc
        or version != VERSION
        or kind != KIND_SEAL
        or flags
        or reserved
        or n != SEAL_BODY.size
        or crc32(data[HEADER_SIZE:], hcrc) != rcrc
    ):
        return None
    seal_offset, records, lo, hi, nxt, sflags, sres = SEAL_BODY.unpack_from(data, HEADER_SIZE)
    if seal_offset != size - SEAL_SIZE or sres:
        return None
    has_range = bool(sflags & SEAL_HAS_RANGE)
    return SegmentScan(
        size=size,
        end=size,
        records=records,
        min_seq=lo if has_range else None,
        max_seq=hi if has_range else None,
        next_seq=nxt if sflags & SEAL_HAS_NEXT else None,
        sealed=True,
    )


def inspect_segment(f: io.FileIO, *, trust_seal: bool = True) -> SegmentScan:
    size = os.fstat(f.fileno()).st_size
    if trust_seal:
        sealed = _read_seal(f, size)
        if sealed is not None:
            return sealed
        f.seek(0)
    out = SegmentScan(size)
    collections.deque(_scan(f, out, build=False), maxlen=0)
    return out


def list_segments(directory: Path) -> list[SegmentInfo]:
    """Every segment in append order with what it holds: from its seal when sealed, else by
    reading its valid prefix (``size`` is then the valid prefix, not the file size)."""
    out: list[SegmentInfo] = []
    for path, _, _ in fsops.segment_paths(Path(directory)):
        try:
            with open(path, "rb", buffering=0) as f:
                out.append(inspect_segment(f).info(path))
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
    """Every valid SESSION, MESSAGE and EVENT record of every segment, in append order.

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
    paths = [p for p, _, _ in fsops.segment_paths(directory)]
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
            out = SegmentScan(os.fstat(f.fileno()).st_size)
            for record in _scan(f, out, build=True):
                yield path, record
            if on_cut is not None:
                for start, end, reason, _ in out.holes:
                    on_cut(path, reason, start, end)
                if out.reason is not None:
                    on_cut(path, out.reason, out.end, out.size)

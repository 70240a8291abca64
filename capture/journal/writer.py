"""Writing a journal: :class:`JournalWriter` appends, hands bytes to the OS, fsyncs, seals
rolled segments and retires committed ones.

Writing and durability
----------------------
``append`` makes no system call (it runs on the event loop): it packs the header, computes the
CRCs and queues the bytes.  A thread of the writer hands them to the OS once 256 KiB are queued
and at least every 0.2 s, so a *process* crash (kill -9, OOM) loses at most that;
``flush_and_sync`` (every ``durability_interval``) writes the rest and fsyncs, so a *power
loss* loses at most what was appended after its last return.  If the disk stalls, ``append``
writes itself once 64 MiB are queued: memory stays bounded, the stall reaches the event loop.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import io
import json
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, cast
from zlib import crc32

from capture.errors import JournalBrokenError, JournalClosedError, JournalError
from capture.faultpoints import crash_point
from capture.journal import fsops
from capture.journal.reader import SegmentInfo, inspect_segment
from capture.journal.records import (
    FLAG_RESUMED,
    FLAG_TEXT,
    HEADER_SIZE,
    KIND_EVENT,
    KIND_MESSAGE,
    KIND_SESSION,
    MAGIC,
    MAX_SESSION_PAYLOAD,
    VERSION,
    encode_record,
    encode_seal,
    encode_session_payload,
    pack_crcs,
    pack_prefix,
)

__all__ = ["DEFAULT_SEGMENT_BYTES", "JournalStatistics", "JournalWriter"]

DEFAULT_SEGMENT_BYTES: Final = 64 * 2**20
_DRAIN_BYTES: Final = 1 << 18  # queued bytes that wake the writing thread
_DRAIN_INTERVAL: Final = 0.2  # seconds queued bytes may wait for the writing thread at most
_MAX_PENDING_BYTES: Final = 64 * 2**20  # beyond this, append writes itself (disk stalled)
_SMALL_PAYLOAD: Final = 1 << 12  # up to this, header + payload are queued as one chunk
_SYNC_RETRY: Final = 0.005  # the writing thread's fsync found another sync running: retry after
_SYNC_LOG: Final = 1024  # fsyncs remembered for take_syncs()


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    segments: int  # the open one included (its file appears with its first record)
    bytes_on_disk: int  # their sizes, bytes still queued included
    open_segment: Path | None
    appended_records: int  # SESSION, MESSAGE and EVENT records written (resumed copies too)
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
        fsops.ensure_dir(self._dir)
        self._dirlock = fsops.DirLock(self._dir)
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
        for path, _, generation in fsops.segment_paths(self._dir):
            with open(path, "rb", buffering=0) as f:
                scan = inspect_segment(f)
                if not scan.sealed:
                    fsops.fsync(f.fileno())  # left by a crash: make it as durable as it will be
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
        prefix = pack_prefix(MAGIC, VERSION, KIND_MESSAGE, flags, 0, n, recv_ns, first_seq, n_data)
        hcrc = crc32(prefix)
        head = prefix + pack_crcs(hcrc, crc32(data, hcrc))
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
        record = encode_record(KIND_EVENT, 0, time_ns, seq, 0, payload)
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
        payload = encode_session_payload(session, stripe, context)
        record = encode_record(KIND_SESSION, 0, wall_ns, 0, 0, payload)
        copy = encode_record(KIND_SESSION, FLAG_RESUMED, wall_ns, 0, 0, payload)
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
        return self._dir / fsops.segment_name(self._next_seq, generation)

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
                    fsops.write_all(cast(io.FileIO, seg.file).fileno(), chunks)
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
            seg.file = fsops.open_segment_file(seg.path)
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
                fsops.fsync(fd)
            if dir_dirty:
                fsops.fsync_dir(self._dir)
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
        fsops.fsync(f.fileno())  # the data is durable before the seal can be
        seal = encode_seal(
            seg.size, seg.records, seg.min_seq, seg.max_seq, seg.next_seq, time.time_ns()
        )
        fsops.write_all(f.fileno(), [seal])
        fsops.fsync(f.fileno())
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
        ``next_seq < committed_below`` (capture.journal's docstring, Sequence numbers, says why
        not ``<=``); segments with no MESSAGE go with them.  Stops at the first segment to keep,
        never deletes the open segment or one not yet sealed by flush_and_sync; fsyncs the
        directory.

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
                    fsops.ensure_dir(archive)
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
                    fsops.fsync_dir(self._dir)
                    if archive is not None:
                        fsops.fsync_dir(archive)
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
                fsops.fsync_dir(self._dir)
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

"""The per-stripe raw journal: round trips, torn tails, corruption, durability, retirement.

Sync code only.  Tests that exercise parsing (the torn-tail and bit-flip corpora) replace the
module's fsync with a no-op to stay fast; the durability tests observe the real calls.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture import faultpoints, journal
from capture.journal import (
    HEADER_SIZE,
    CutReason,
    JournalBrokenError,
    JournalClosedError,
    JournalFormatError,
    JournalLockedError,
    JournalWriter,
    MessageRecord,
    Record,
    SessionRecord,
    fsops,
    list_segments,
    read_records,
    recover,
)
from capture.journal import writer as journal_writer

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    return tmp_path / "_journal" / "stripe=A"


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing tests do not need the disk to be durable, only fast."""
    monkeypatch.setattr(fsops, "fsync", lambda fd: None)


def records(directory: Path, **kw: object) -> list[Record]:
    return [r for _, r in read_records(directory, **kw)]  # type: ignore[arg-type]


def own(recs: list[Record]) -> list[Record]:
    """Without the resumed SESSION copies rolled segments begin with."""
    return [r for r in recs if not (isinstance(r, SessionRecord) and r.resumed)]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.mlj"))


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under the directory (LOCK aside) and a hash of its bytes."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != "LOCK":
            out[str(p.relative_to(directory))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: int


def spans(data: bytes) -> list[Span]:
    """Record boundaries by the documented layout alone (payload_len is the u32 at offset 8,
    kind the byte at offset 5), independent of the module's reader."""
    out = []
    off = 0
    while off < len(data):
        (n,) = struct.unpack_from("<I", data, off + 8)
        out.append(Span(off, off + HEADER_SIZE + n, data[off + 5]))
        off += HEADER_SIZE + n
    assert off == len(data)
    return out


def raw_record(
    *,
    version: int = 1,
    kind: int = 2,
    flags: int = 0,
    time_ns: int = 0,
    first_seq: int = 0,
    n_data: int = 0,
    payload: bytes = b"",
) -> bytes:
    """A record built from the documented layout, for crafting what a writer never writes."""
    prefix = struct.pack(
        "<4sBBBBIqQI", b"MLJR", version, kind, flags, 0, len(payload), time_ns, first_seq, n_data
    )
    hcrc = zlib.crc32(prefix)
    return prefix + struct.pack("<II", hcrc, zlib.crc32(prefix + payload)) + payload


class Model:
    """Drives a writer and remembers what was appended, in order."""

    def __init__(self, writer: JournalWriter, seq: int = 0) -> None:
        self.w = writer
        self.seq = seq
        self.appended: list[Record] = []
        self.recv = 1_700_000_000_000_000_000

    def session(self, name: str, **context: object) -> None:
        self.recv += 1
        self.w.begin_session(name, "A", self.recv, context)
        self.appended.append(SessionRecord(name, "A", self.recv, context))

    def message(self, payload: bytes | str, n_data: int = 1) -> None:
        self.recv += 1
        self.w.append(self.recv, self.seq, n_data, payload)
        data = payload.encode() if isinstance(payload, str) else payload
        self.appended.append(
            MessageRecord(self.recv, self.seq, n_data, isinstance(payload, str), data)
        )
        self.seq += n_data

    def last_seq_of(self, index: int) -> int | None:
        """Highest data frame seq among appended[:index]."""
        best = None
        for r in self.appended[:index]:
            if isinstance(r, MessageRecord) and r.n_data:
                best = r.first_seq + r.n_data - 1
        return best


def crash(w: JournalWriter) -> None:
    """What dying does to a writer: bytes it has queued but not yet written are lost, its
    descriptors are closed and the kernel drops its lock."""
    w._abandon()


def fill(m: Model, count: int, size: int = 40) -> None:
    for i in range(count):
        m.message(bytes([65 + i % 26]) * (size + i % 7), n_data=1 + i % 3)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


def test_round_trip_sessions_and_messages_across_segments(jdir: Path) -> None:
    big = os.urandom(2**20)
    with JournalWriter(jdir, segment_bytes=4096) as w:
        m = Model(w)
        m.session("s1", types=["OptionNbboQuote", "StockBookQuote"], n=1)
        m.message(b"\r\nJ0000100002{}", n_data=1)
        m.message("text \u00e9\u4e2d\U0001f600", n_data=0)
        m.message(b"", n_data=0)
        m.message("", n_data=0)
        m.message(big, n_data=3)
        for i in range(60):
            m.message(os.urandom(100 + i), n_data=i % 4)
        m.session("s2", resumed_from="s1")
        m.message(big[:70_000], n_data=2)
        m.message(b"after", n_data=1)
    got = records(jdir)
    assert own(got) == m.appended
    files = segment_files(jdir)
    assert len(files) > 5
    # Every rolled segment starts by naming its session; text stays text.
    for path in files[1:]:
        first = next(r for p, r in read_records(jdir) if p == path)
        assert isinstance(first, SessionRecord)
    assert [r.is_text for r in got if isinstance(r, MessageRecord)][:4] == [
        False,
        True,
        False,
        True,
    ]
    # Names sort in append order and carry the seq of the segment's first data frame.
    assert files == sorted(files)
    for info in list_segments(jdir):
        assert info.sealed
        name_seq = int(info.path.name.split("-")[1])
        if info.min_seq is not None:
            assert name_seq <= info.min_seq


def test_resumed_copies_only_at_segment_starts_and_equal_to_the_session(jdir: Path) -> None:
    with JournalWriter(jdir, segment_bytes=512) as w:
        m = Model(w)
        m.session("s1", k="v")
        fill(m, 30)
    by_segment: dict[Path, list[Record]] = {}
    for path, rec in read_records(jdir):
        by_segment.setdefault(path, []).append(rec)
    assert len(by_segment) > 3
    first, *rest = by_segment.values()
    assert first[0] == SessionRecord("s1", "A", m.appended[0].wall_ns, {"k": "v"})  # type: ignore[union-attr]
    for recs in rest:
        assert recs[0] == SessionRecord(
            "s1",
            "A",
            m.appended[0].wall_ns,  # type: ignore[union-attr]
            {"k": "v"},
            resumed=True,
        )
        assert all(isinstance(r, MessageRecord) for r in recs[1:])


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("msg"), st.binary(max_size=300), st.integers(0, 5)),
        st.tuples(st.just("text"), st.text(max_size=100), st.integers(0, 5)),
        st.tuples(st.just("session"), st.text(min_size=1, max_size=12), st.just(0)),
        st.tuples(st.just("roll"), st.just(b""), st.just(0)),
        st.tuples(st.just("sync"), st.just(b""), st.just(0)),
        st.tuples(st.just("reopen"), st.just(b""), st.just(0)),
    ),
    max_size=60,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops, segment_bytes=st.sampled_from([64, 300, 2048, 1 << 20]))
def test_round_trip_any_sequence_of_operations(
    tmp_path_factory: pytest.TempPathFactory,
    no_fsync: None,
    ops: list[tuple[str, object, int]],
    segment_bytes: int,
) -> None:
    directory = tmp_path_factory.mktemp("j") / "stripe=A"
    w = JournalWriter(directory, segment_bytes=segment_bytes)
    m = Model(w)
    for op, value, n in ops:
        if op in ("msg", "text"):
            m.message(value, n_data=n)  # type: ignore[arg-type]
        elif op == "session":
            m.session(str(value), i=len(m.appended))
        elif op == "roll":
            w.roll()
        elif op == "sync":
            w.flush_and_sync()
        else:  # a clean restart: a new writer continues the journal
            w.close()
            w = m.w = JournalWriter(directory, segment_bytes=segment_bytes)
            assert w.next_seq == m.seq
    w.close()
    assert own(records(directory)) == m.appended
    assert recover(directory).clean


# --------------------------------------------------------------------------------------------
# Torn tails and corruption
# --------------------------------------------------------------------------------------------


def _crashed_journal(directory: Path, *, seal_last: bool) -> tuple[list[Record], Path]:
    """Three segments; the last one left as a crash leaves it (unsealed) or closed cleanly."""
    w = JournalWriter(directory, segment_bytes=1024)
    m = Model(w)
    m.session("s1", types=["X"])
    fill(m, 14, size=60)
    w.roll()
    m.session("s2")
    m.message(b"x" * 33, n_data=2)
    m.message("caf\u00e9 text", n_data=1)
    m.message(b"", n_data=0)
    m.message(b"y" * 150, n_data=4)
    if seal_last:
        w.close()
    else:
        w.flush_and_sync()  # writes the buffer and seals the rolled segments
        crash(w)
    last = segment_files(directory)[-1]
    assert len(segment_files(directory)) == 3
    return records(directory), last


@pytest.mark.parametrize("seal_last", [False, True], ids=["crashed", "closed"])
def test_torn_tail_corpus_every_offset_of_the_last_three_records(
    jdir: Path, no_fsync: None, seal_last: bool
) -> None:
    expected_all, last = _crashed_journal(jdir, seal_last=seal_last)
    original = last.read_bytes()
    layout = spans(original)
    data_spans = [s for s in layout if s.kind != 3]
    in_last = len([p for p, _ in read_records(jdir) if p == last])
    before_last = expected_all[: len(expected_all) - in_last]
    assert len(data_spans) == in_last >= 4
    start = data_spans[-3].start
    checked = 0
    for cut in range(start, len(original) + 1):
        last.write_bytes(original[:cut])
        report = recover(jdir)
        whole = [s for s in data_spans if s.end <= cut]
        valid_end = whole[-1].end if whole else 0
        seg = report.segments[-1]
        assert seg.path == last
        if cut == len(original):
            assert seg.bytes_cut == 0 and seg.reason is None
        else:
            assert seg.bytes_cut == cut - valid_end, cut
            assert report.bytes_cut == cut - valid_end
            torn_at = next((s for s in layout if s.start <= cut < s.end), None)
            if cut == valid_end:
                assert seg.reason is None
            else:
                assert torn_at is not None
                want = (
                    CutReason.TORN_HEADER
                    if cut - torn_at.start < HEADER_SIZE
                    else CutReason.TORN_PAYLOAD
                )
                assert seg.reason is want, (cut, seg)
            assert seg.preserved is None  # torn writes are not evidence worth keeping
        assert seg.records_kept == len(whole)
        assert records(jdir) == before_last + expected_all[len(before_last) :][: len(whole)]
        assert os.path.getsize(last) >= valid_end
        assert recover(jdir).clean  # idempotent
        checked += 1
    assert checked > 200


def _field_of(offset_in_record: int, payload_len: int) -> CutReason:
    if offset_in_record < 4:
        return CutReason.BAD_MAGIC
    if offset_in_record < 36:
        return CutReason.HEADER_CRC  # header fields and the header crc itself
    return CutReason.CRC_MISMATCH  # record crc and payload


def test_single_byte_corruption_cuts_exactly_the_damaged_record(
    jdir: Path, no_fsync: None
) -> None:
    """A flipped byte costs the record it is in, nothing more: the reader resynchronises on
    the next intact record (the last record's damage is a corrupt tail)."""
    expected_all, last = _crashed_journal(jdir, seal_last=False)
    original = last.read_bytes()
    data_spans = spans(original)
    in_last = len(data_spans)
    before_last = expected_all[: len(expected_all) - in_last]
    checked = 0
    for index in range(in_last - 3, in_last):
        span = data_spans[index]
        for pos in range(span.start, span.end):
            corrupt = bytearray(original)
            corrupt[pos] ^= 0xFF
            last.write_bytes(bytes(corrupt))
            report = recover(jdir)
            seg = report.segments[-1]
            own_records = expected_all[len(before_last) :]
            assert seg.records_kept == in_last - 1, pos
            assert seg.bytes_cut == span.end - span.start
            assert seg.reason is _field_of(pos - span.start, span.end - span.start), pos
            assert seg.preserved is not None
            assert seg.preserved.read_bytes() == bytes(corrupt[span.start : span.end])
            assert records(jdir) == before_last + own_records[:index] + own_records[index + 1 :]
            assert recover(jdir).clean
            checked += 1
    assert checked == data_spans[-1].end - data_spans[-3].start


def test_recover_is_idempotent_and_changes_no_bytes_the_second_time(
    jdir: Path, no_fsync: None
) -> None:
    _, last = _crashed_journal(jdir, seal_last=False)
    data = last.read_bytes()
    last.write_bytes(data[:-5] + b"\x00garbage-tail-bytes")  # a torn record plus junk
    first = recover(jdir)
    assert first.bytes_cut > 0 and not first.clean
    before = snapshot(jdir)
    mtimes = {p: p.stat().st_mtime_ns for p in jdir.rglob("*") if p.is_file()}
    second = recover(jdir)
    assert second.clean and second.bytes_cut == 0
    assert all(not s.scanned for s in second.segments)  # all sealed: nothing even read
    assert snapshot(jdir) == before
    assert {p: p.stat().st_mtime_ns for p in jdir.rglob("*") if p.is_file()} == mtimes
    third = recover(jdir, verify_sealed=True)
    assert third.clean and snapshot(jdir) == before


def test_empty_and_headerless_segments_are_removed(jdir: Path, no_fsync: None) -> None:
    with JournalWriter(jdir) as w:
        Model(w).message(b"keep", n_data=1)
    (jdir / f"seg-{1:020d}-{7:010d}.mlj").write_bytes(b"")
    (jdir / f"seg-{1:020d}-{8:010d}.mlj").write_bytes(b"MLJR\x01\x02")
    report = recover(jdir)
    assert [s.removed for s in report.segments] == [False, True, True]
    assert report.segments[2].reason is CutReason.TORN_HEADER
    assert len(segment_files(jdir)) == 1
    assert [r.payload for r in records(jdir)] == [b"keep"]  # type: ignore[union-attr]


def test_zero_filled_tail_is_cut_but_not_preserved(jdir: Path, no_fsync: None) -> None:
    expected, last = _crashed_journal(jdir, seal_last=False)
    with open(last, "ab") as f:
        f.write(b"\0" * 4096)  # what a power loss can leave in allocated, unwritten blocks
    seg = recover(jdir).segments[-1]
    assert seg.reason is CutReason.BAD_MAGIC and seg.bytes_cut == 4096
    assert seg.preserved is None
    assert records(jdir) == expected


def test_corruption_inside_a_sealed_segment(jdir: Path, no_fsync: None) -> None:
    with JournalWriter(jdir) as w:
        m = Model(w)
        fill(m, 10)
    (path,) = segment_files(jdir)
    data = bytearray(path.read_bytes())
    victim = spans(bytes(data))[6]
    data[victim.start + HEADER_SIZE + 3] ^= 0x01  # one bit of a payload
    path.write_bytes(bytes(data))
    # Trusted on its seal by default: nothing read, nothing changed.
    assert recover(jdir).clean
    # A reader finds it, says so instead of raising, and reads on after it.
    cuts: list[tuple[Path, CutReason, int, int]] = []
    survivors = m.appended[:6] + m.appended[7:]
    assert records(jdir, on_cut=lambda *a: cuts.append(a)) == survivors
    assert cuts == [(path, CutReason.CRC_MISMATCH, victim.start, victim.end)]
    # A full check cuts that record alone, keeps the evidence and seals what is left.
    report = recover(jdir, verify_sealed=True)
    (seg,) = report.segments
    assert seg.scanned and seg.reason is CutReason.CRC_MISMATCH and seg.records_kept == 9
    assert seg.bytes_cut == report.bytes_cut == victim.end - victim.start
    assert seg.preserved is not None
    assert seg.preserved.read_bytes() == bytes(data[victim.start : victim.end])
    assert seg.sealed and list_segments(jdir)[0].sealed
    assert records(jdir) == survivors
    assert recover(jdir, verify_sealed=True).clean


def test_data_after_a_seal_is_cut(jdir: Path, no_fsync: None) -> None:
    with JournalWriter(jdir) as w:
        m = Model(w)
        fill(m, 3)
    (path,) = segment_files(jdir)
    with open(path, "ab") as f:
        f.write(raw_record(first_seq=100, n_data=1, payload=b"stray"))
    seg = recover(jdir, verify_sealed=True).segments[0]
    assert seg.reason is CutReason.AFTER_SEAL and seg.records_kept == 3
    assert records(jdir) == m.appended


def test_records_a_writer_never_writes_are_cut_as_invalid(jdir: Path, no_fsync: None) -> None:
    w = JournalWriter(jdir)
    m = Model(w)
    fill(m, 2)
    w.close()
    (path,) = segment_files(jdir)
    body = path.read_bytes()[: -journal.SEAL_SIZE]  # unseal it
    for bad in (
        raw_record(kind=9),
        raw_record(kind=2, flags=0x80),
        raw_record(kind=1, payload=b"not json"),
        raw_record(kind=3, payload=b"\0" * 48),  # a seal that does not match
    ):
        path.write_bytes(body + bad)
        seg = recover(jdir).segments[0]
        assert seg.reason is CutReason.INVALID_RECORD and seg.records_kept == 2, bad
        assert records(jdir) == m.appended


def test_an_intact_record_of_a_newer_version_is_refused_not_cut(jdir: Path, no_fsync: None) -> None:
    w = JournalWriter(jdir)
    fill(Model(w), 2)
    w.close()
    (path,) = segment_files(jdir)
    body = path.read_bytes()[: -journal.SEAL_SIZE] + raw_record(version=2, payload=b"future")
    path.write_bytes(body)
    with pytest.raises(JournalFormatError, match="version 2"):
        recover(jdir)
    with pytest.raises(JournalFormatError):
        records(jdir)
    with pytest.raises(JournalFormatError):
        JournalWriter(jdir)
    assert path.read_bytes() == body


# --------------------------------------------------------------------------------------------
# Writers after a crash
# --------------------------------------------------------------------------------------------


def test_after_recover_a_new_writer_starts_a_new_segment(jdir: Path, no_fsync: None) -> None:
    expected, last = _crashed_journal(jdir, seal_last=False)
    last.write_bytes(last.read_bytes()[:-7])  # torn
    report = recover(jdir)
    kept = expected[: len(expected) - 1]
    assert report.segments[-1].reason is CutReason.TORN_PAYLOAD
    recovered = {p: p.read_bytes() for p in segment_files(jdir)}
    w = JournalWriter(jdir)
    assert w.next_seq == max(r.first_seq + r.n_data for r in kept if isinstance(r, MessageRecord))
    m = Model(w, seq=w.next_seq)
    m.session("s3")
    fill(m, 3)
    w.close()
    files = segment_files(jdir)
    assert files[: len(recovered)] == sorted(recovered)
    assert len(files) == len(recovered) + 1
    assert {p: p.read_bytes() for p in files[:-1]} == recovered  # old segments untouched
    assert records(jdir) == kept + m.appended


def test_without_recover_a_new_writer_never_appends_after_a_torn_tail(
    jdir: Path, no_fsync: None
) -> None:
    expected, last = _crashed_journal(jdir, seal_last=False)
    torn = last.read_bytes()[:-7]
    last.write_bytes(torn)
    with JournalWriter(jdir) as w:
        m = Model(w, seq=w.next_seq)
        fill(m, 2)
    assert last.read_bytes() == torn
    assert records(jdir) == expected[:-1] + m.appended


def test_seq_numbers_must_not_decrease_across_writers(jdir: Path) -> None:
    with JournalWriter(jdir) as w:
        w.append(1, 10, 5, b"a")
        with pytest.raises(ValueError, match="below the journal's next_seq 15"):
            w.append(2, 14, 1, b"b")
        w.append(3, 15, 0, b"c")  # equal is fine
        w.append(4, 20, 1, b"d")  # gaps are fine
        assert w.next_seq == 21
    with JournalWriter(jdir, next_seq=5) as w:
        assert w.next_seq == 21
        with pytest.raises(ValueError):
            w.append(5, 3, 1, b"e")
    with JournalWriter(jdir, next_seq=500) as w:
        assert w.next_seq == 500
        assert w.statistics().open_segment.name.startswith(f"seg-{500:020d}-")  # type: ignore[union-attr]


def test_the_directory_is_locked_against_a_second_writer_and_recovery(jdir: Path) -> None:
    w = JournalWriter(jdir)
    with pytest.raises(JournalLockedError):
        JournalWriter(jdir)
    with pytest.raises(JournalLockedError):
        recover(jdir)
    fill(Model(w), 1)
    w.close()
    assert recover(jdir).clean
    JournalWriter(jdir).close()


# --------------------------------------------------------------------------------------------
# Retirement
# --------------------------------------------------------------------------------------------


def _two_messages_per_segment(m: Model, count: int) -> None:
    """With segment_bytes=500: a SESSION (83 bytes) and two 190-byte MESSAGEs fit, a third
    does not, so segment k holds seqs 4k .. 4k+3 and has next_seq 4k+4."""
    for _ in range(count):
        m.message(b"z" * 150, n_data=2)


def test_retire_deletes_only_closed_segments_entirely_below_the_watermark(jdir: Path) -> None:
    w = JournalWriter(jdir, segment_bytes=500)
    m = Model(w)
    m.session("s1")
    _two_messages_per_segment(m, 12)
    w.flush_and_sync()
    segs = w.segments()
    assert [(s.min_seq, s.max_seq, s.next_seq) for s in segs] == [
        (0, 3, 4),
        (4, 7, 8),
        (8, 11, 12),
        (12, 15, 16),
        (16, 19, 20),
        (20, 23, 24),
    ]
    # A frame may straddle into the next segment, so a segment goes only once the frame
    # after its last one (its next_seq) is committed too.
    assert w.retire(4) == []
    assert w.retire(5) == [segs[0].path]
    assert w.retire(13) == [segs[1].path, segs[2].path]
    assert not segs[0].path.exists() and not segs[2].path.exists() and segs[3].path.exists()
    assert own(records(jdir)) == m.appended[7:]
    # Never the open segment, whatever the watermark.
    open_seg = w.statistics().open_segment
    assert open_seg == segs[-1].path
    assert w.retire(10**9) == [segs[3].path, segs[4].path]
    assert [s.path for s in w.segments()] == [open_seg]
    # A rolled segment is kept until flush_and_sync has sealed it.
    w.roll()
    assert w.retire(10**9) == []
    w.flush_and_sync()
    assert w.retire(10**9) == [open_seg]
    stats = w.statistics()
    assert stats.retired_segments == len(segs) and stats.segments == 1
    assert stats.retired_bytes > 0
    w.close()
    assert records(jdir) == []  # the open segment held only a resumed copy: removed on close


def test_retire_removes_a_prefix_only_and_adopts_old_segments(jdir: Path) -> None:
    with JournalWriter(jdir, segment_bytes=500) as w:
        m = Model(w)
        m.session("s1")
        _two_messages_per_segment(m, 6)
    old = list_segments(jdir)
    assert [s.next_seq for s in old] == [4, 8, 12]
    with JournalWriter(jdir, segment_bytes=500) as w:
        assert [s.path for s in w.segments()[:-1]] == [s.path for s in old]
        m.w = w
        m.session("s2")
        w.roll()
        m.message(b"new", n_data=1)
        w.flush_and_sync()
        sessions_only = w.segments()[3]
        assert sessions_only.next_seq is None and sessions_only.records == 1
        # Stops at the first segment to keep, even with a deletable one after it.
        assert w.retire(12) == [old[0].path, old[1].path]
        assert w.retire(13) == [old[2].path, sessions_only.path]
        assert own(records(jdir)) == [m.appended[-1]]
    with pytest.raises(JournalClosedError):
        w.retire(0)


def test_read_records_from_seq_skips_leading_segments(jdir: Path) -> None:
    with JournalWriter(jdir, segment_bytes=500) as w:
        m = Model(w)
        m.session("s1")
        _two_messages_per_segment(m, 8)
    infos = list_segments(jdir)
    everything = records(jdir)
    assert records(jdir, from_seq=0) == everything
    # from_seq 5 lies in the second segment (4-7): the first one (next_seq 4) is skipped.
    got = list(read_records(jdir, from_seq=5))
    assert got[0][0] == infos[1].path
    assert got[0][1] == SessionRecord("s1", "A", m.recv - 8, {}, resumed=True)
    assert own([r for _, r in got]) == m.appended[3:]
    # from_seq 4 is the first frame of the second segment, but may have started in the
    # first one (a frame split across messages): the first segment is kept.
    assert next(iter(read_records(jdir, from_seq=4)))[0] == infos[0].path
    assert records(jdir, from_seq=10**6) == []


# --------------------------------------------------------------------------------------------
# Durability
# --------------------------------------------------------------------------------------------


class FsyncLog:
    """Records (inode, is_directory, size) per fsync, then really fsyncs."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, int]] = []

    def __call__(self, fd: int) -> None:
        st_ = os.fstat(fd)
        self.calls.append((st_.st_ino, stat.S_ISDIR(st_.st_mode), st_.st_size))
        os.fsync(fd)

    def inodes(self) -> set[int]:
        return {ino for ino, _, _ in self.calls}

    def sizes(self, path: Path) -> list[int]:
        ino = path.stat().st_ino
        return [size for i, _, size in self.calls if i == ino]


@pytest.fixture
def fsync_log(monkeypatch: pytest.MonkeyPatch) -> FsyncLog:
    """Every fsync the journal makes, recorded (and still made)."""
    log = FsyncLog()
    monkeypatch.setattr(fsops, "fsync", log)
    return log


def test_fsync_reaches_the_file_and_the_directory_when_a_segment_is_created(
    jdir: Path, fsync_log: FsyncLog
) -> None:
    log = fsync_log
    w = JournalWriter(jdir, segment_bytes=200)
    # Creating the journal directory fsynced the parents that now name it.
    assert log.calls and all(is_dir for _, is_dir, _ in log.calls)
    assert jdir.parent.stat().st_ino in log.inodes()
    log.calls.clear()
    first = w.statistics().open_segment
    assert first is not None
    w.append(1, 0, 1, b"a" * 100)
    assert log.calls == []  # append never syncs
    assert w.flush_and_sync() == 0
    assert first.stat().st_ino in log.inodes()
    assert jdir.stat().st_ino in log.inodes()
    assert log.sizes(first) == [HEADER_SIZE + 100]

    log.calls.clear()
    w.append(2, 1, 1, b"b" * 100)  # rolls: the first segment is full
    second = w.statistics().open_segment
    assert second is not None and second != first
    assert log.calls == []
    assert w.flush_and_sync() == 1
    # The old segment: fsynced, then sealed, then fsynced again; the new one and the
    # directory entry that names it: fsynced.
    assert log.sizes(first) == [HEADER_SIZE + 100, HEADER_SIZE + 100 + journal.SEAL_SIZE]
    assert log.sizes(second) == [HEADER_SIZE + 100]
    dir_calls = [i for i, (ino, is_dir, _) in enumerate(log.calls) if is_dir]
    assert dir_calls and all(ino == jdir.stat().st_ino for ino, d, _ in log.calls if d)

    log.calls.clear()
    assert w.flush_and_sync() == 1
    assert log.calls == []  # nothing new: nothing to sync
    w.close()
    assert log.sizes(second)[-1] == HEADER_SIZE + 100 + journal.SEAL_SIZE


def test_flush_and_sync_returns_the_durable_seq(jdir: Path, no_fsync: None) -> None:
    with JournalWriter(jdir) as w:
        assert w.flush_and_sync() is None
        w.append(1, 0, 0, b"control only")
        assert w.flush_and_sync() is None
        w.append(2, 0, 3, b"three frames")
        w.append(3, 3, 0, b"none")
        assert w.statistics().unsynced_bytes > 0
        assert w.flush_and_sync() == 2
        assert w.pending_bytes == 0  # handed to the OS: nothing held in memory
        w.append(4, 3, 2, b"two")
        # held until the writing thread (which may already have run) hands it over
        assert w.pending_bytes in (0, HEADER_SIZE + 3)
        assert w.statistics().durable_seq == 2
        assert w.flush_and_sync() == 4
        stats = w.statistics()
        assert stats.unsynced_bytes == 0 and stats.last_sync_ns is not None
        assert w.pending_bytes == stats.pending_bytes == 0
    with JournalWriter(jdir) as w:
        assert w.statistics().durable_seq == 4  # what the journal already holds


def _eventually(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for the writer's own thread (real time; the bound only catches a hang)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.002)


def test_with_sync_interval_the_writing_thread_fsyncs_by_itself(
    jdir: Path, fsync_log: FsyncLog
) -> None:
    log = fsync_log
    w = JournalWriter(jdir, sync_interval=0.01)
    segment = w.statistics().open_segment
    assert segment is not None and w.durable_seq is None
    w.append(1, 0, 3, b"x" * 100)  # frames 0..2; nobody calls flush_and_sync
    _eventually(lambda: w.durable_seq == 2, "the thread's fsync")
    assert HEADER_SIZE + 100 in log.sizes(segment)  # the data was on the file when fsynced
    syncs = w.take_syncs()
    assert [seq for seq, _ in syncs] == [2] and syncs[0][1] > 0
    w.append(2, 3, 2, b"y" * 10)
    _eventually(lambda: w.durable_seq == 4, "the next fsync")
    assert [seq for seq, _ in w.take_syncs()] == [4]  # only fsyncs that made frames durable
    assert w.take_syncs() == []
    w.close()
    assert [r.first_seq for _, r in read_records(jdir) if isinstance(r, MessageRecord)] == [0, 3]


def test_a_failed_fsync_in_the_writing_thread_breaks_the_writer(
    jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = JournalWriter(jdir, sync_interval=0.01)
    w.check()
    faultpoints.arm_failure("journal.fsync", errno.EIO, 1)
    try:
        w.append(1, 0, 1, b"lost to a broken disk")
        _eventually(lambda: w.statistics().broken is not None, "the failed fsync")
    finally:
        faultpoints.disarm_failures()
    with pytest.raises(JournalBrokenError, match="Input/output error"):
        w.check()  # what the stripe's syncer calls: the stripe stops, recovery takes over
    with pytest.raises(JournalBrokenError):
        w.append(2, 1, 1, b"more")
    assert w.durable_seq is None
    w.close()  # releases the files and the lock
    JournalWriter(jdir).close()


def test_close_never_waits_forever_on_the_writing_threads_fsync(
    jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() holds the sync lock while it joins the thread; the thread must never block on
    that lock.  Many short-lived writers whose thread fsyncs as often as it can."""

    def slow_fsync(fd: int) -> None:
        time.sleep(0.0005)

    monkeypatch.setattr(fsops, "fsync", slow_fsync)
    done = threading.Event()

    def churn() -> None:
        for i in range(60):
            w = JournalWriter(jdir, sync_interval=0.0001)
            for k in range(20):
                w.append(k, w.next_seq, 1, b"z" * 64)
            if i % 2:
                w.flush_and_sync()
            w.close()
        done.set()

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    t.join(120)
    assert done.is_set(), "a writer's close() hung"
    frames = [r for _, r in read_records(jdir) if isinstance(r, MessageRecord)]
    assert len(frames) == 60 * 20 and [r.first_seq for r in frames] == list(range(1200))


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_dropping_the_writer_without_close_loses_at_most_what_followed_the_last_sync(
    jdir: Path,
) -> None:
    w = JournalWriter(jdir, segment_bytes=2048)
    m = Model(w)
    m.session("s1")
    fill(m, 25)
    durable = w.flush_and_sync()
    synced = len(m.appended)
    assert durable == m.last_seq_of(synced)
    fill(m, 25)
    m.w = None  # type: ignore[assignment]
    del w
    gc.collect()
    got = own(records(jdir))
    assert got == m.appended[: len(got)]  # a prefix, in order
    assert len(got) >= synced
    recover(jdir)
    assert own(records(jdir)) == got


_CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
from capture.journal import JournalWriter
w = JournalWriter(__import__("pathlib").Path(sys.argv[2]), segment_bytes=4096)
w.begin_session("s1", "A", 1, {})
seq = 0
for i in range(int(sys.argv[3])):
    w.append(i, seq, 1, bytes([65 + i % 26]) * (50 + i))
    seq += 1
print(w.flush_and_sync(), flush=True)
for i in range(int(sys.argv[3]), int(sys.argv[4])):
    w.append(i, seq, 1, bytes([65 + i % 26]) * (50 + i))
    seq += 1
os._exit(0)  # no close, no finalizers: a crash
"""


def test_a_process_crash_keeps_everything_up_to_the_last_sync(jdir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(REPO), str(jdir), "60", "80"],
        check=True,
        capture_output=True,
        text=True,
    )
    durable = int(out.stdout.strip())
    assert durable == 59
    recover(jdir)
    got = [r for r in records(jdir) if isinstance(r, MessageRecord)]
    expected = [bytes([65 + i % 26]) * (50 + i) for i in range(80)]
    assert [r.payload for r in got] == expected[: len(got)]
    assert [r.first_seq for r in got] == list(range(len(got)))
    assert len(got) >= durable + 1


class PowerLoss:
    """A disk that keeps only what was fsynced: a file keeps the size it had at its last
    fsync, a directory the entries it had at its last fsync (everything else is lost)."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.entries: dict[int, dict[str, int]] = {}

    def __call__(self, fd: int) -> None:
        st_ = os.fstat(fd)
        if stat.S_ISDIR(st_.st_mode):
            self.entries[st_.st_ino] = {
                name: os.stat(name, dir_fd=fd).st_ino for name in os.listdir(fd)
            }
        else:
            self.sizes[st_.st_ino] = st_.st_size

    def strike(self, directory: Path, junk: bytes) -> None:
        durable_names = self.entries.get(directory.stat().st_ino, {})
        for path in segment_files(directory):
            ino = path.stat().st_ino
            if durable_names.get(path.name) != ino:
                path.unlink()
                continue
            with open(path, "r+b") as f:
                f.truncate(self.sizes.get(ino, 0))
                f.seek(0, os.SEEK_END)
                f.write(junk)  # blocks allocated but never written, or stale data


@pytest.mark.parametrize("junk", [b"", b"\0" * 512, b"MLJR\x01\x02garbage"], ids=repr)
@pytest.mark.parametrize("after_sync", [0, 3, 12, 40])
def test_power_loss_keeps_everything_flush_and_sync_promised(
    jdir: Path, monkeypatch: pytest.MonkeyPatch, after_sync: int, junk: bytes
) -> None:
    disk = PowerLoss()
    monkeypatch.setattr(fsops, "fsync", disk)
    w = JournalWriter(jdir, segment_bytes=700)
    m = Model(w)
    m.session("s1")
    fill(m, 10, size=90)
    w.flush_and_sync()
    fill(m, 9, size=90)
    m.session("s2")
    durable = w.flush_and_sync()
    promised = len(m.appended)
    assert durable == m.last_seq_of(promised)
    fill(m, after_sync, size=90)  # rolls to segments whose names were never fsynced
    crash(w)
    disk.strike(jdir, junk)
    recover(jdir)
    got = own(records(jdir))
    assert got == m.appended[: len(got)]
    assert len(got) >= promised


def test_write_errors_break_the_writer_until_restart(
    jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = JournalWriter(jdir)
    fill(Model(w), 3)

    def eio(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsops, "fsync", eio)
    with pytest.raises(OSError, match="Input/output"):
        w.flush_and_sync()
    # A retried fsync could succeed falsely (the kernel may have dropped the pages).
    with pytest.raises(JournalBrokenError):
        w.flush_and_sync()
    with pytest.raises(JournalBrokenError):
        w.append(9, 100, 1, b"x")
    with pytest.raises(JournalBrokenError):
        w.roll()
    assert "Input/output" in (w.statistics().broken or "")
    w.close()  # releases the files and the lock; does not raise again
    w.close()
    monkeypatch.undo()
    assert recover(jdir).records_kept == 3
    JournalWriter(jdir).close()


def test_a_failed_write_in_the_writing_thread_surfaces_on_the_next_append(
    jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def enospc(fd: int, chunks: list[bytes]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsops, "write_all", enospc)
    w = JournalWriter(jdir)
    for i in range(3):  # past the 256 KiB that wake the writing thread
        w.append(i, i, 1, b"x" * 100_000)
    w._drainer.join(60)  # it ends after a failed round
    assert not w._drainer.is_alive()
    with pytest.raises(JournalBrokenError, match="No space left") as info:
        w.append(3, 3, 1, b"y")
    assert isinstance(info.value.__cause__, OSError)
    assert "No space left" in (w.statistics().broken or "")
    w.close()  # releases the lock without raising
    monkeypatch.undo()
    JournalWriter(jdir).close()


def test_close_is_idempotent_and_refuses_later_appends(jdir: Path) -> None:
    w = JournalWriter(jdir)
    fill(Model(w), 2)
    w.close()
    w.close()
    assert w.flush_and_sync() == 2  # seqs 0 and 1-2
    with pytest.raises(JournalClosedError):
        w.append(1, 100, 1, b"x")
    with pytest.raises(JournalClosedError):
        w.begin_session("s", "A", 1, {})
    assert w.statistics().open_segment is None
    # A writer that wrote nothing leaves no segment behind.
    JournalWriter(jdir).close()
    assert len(segment_files(jdir)) == 1


def test_begin_session_rejects_what_it_cannot_store(jdir: Path) -> None:
    with JournalWriter(jdir) as w:
        with pytest.raises(TypeError):
            w.begin_session("s", "A", 1, {"x": object()})
        with pytest.raises(ValueError):
            w.begin_session("s", "A", 1, {"x": float("nan")})
        with pytest.raises(ValueError, match="too large"):
            w.begin_session("s", "A", 1, {"x": "y" * (2**20 + 1)})
        w.append(1, 0, 1, b"still fine")
    assert len(records(jdir)) == 1


def test_one_appender_and_one_syncing_thread(jdir: Path) -> None:
    w = JournalWriter(jdir, segment_bytes=8192)
    m = Model(w)
    done = threading.Event()
    durables: list[int | None] = []
    errors: list[BaseException] = []

    def syncer() -> None:
        try:
            while not done.is_set():
                durables.append(w.flush_and_sync())
        except (OSError, journal.JournalError) as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        m.session("s1")
        for i in range(3000):
            m.message(bytes([i % 251]) * (50 + i % 400), n_data=i % 3)
            if i % 700 == 0:
                w.roll()
    finally:
        done.set()
        thread.join()
    w.close()
    assert errors == []
    seen = [d for d in durables if d is not None]
    assert seen == sorted(seen)
    assert not seen or seen[-1] <= m.seq - 1
    assert own(records(jdir)) == m.appended
    assert recover(jdir).clean


def test_the_writing_thread_hands_bytes_to_the_os_without_a_sync(
    jdir: Path, monkeypatch: pytest.MonkeyPatch, fsync_log: FsyncLog
) -> None:
    fsyncs = fsync_log
    payload = os.urandom(100_000)
    expected = 3 * (HEADER_SIZE + len(payload))
    written = threading.Event()
    writers: list[str] = []
    total = 0
    real_write_all = fsops.write_all

    def observed(fd: int, chunks: list[bytes]) -> None:
        nonlocal total
        real_write_all(fd, chunks)
        writers.append(threading.current_thread().name)
        total += sum(map(len, chunks))
        if total >= expected:  # in one round or several (its timer may fire in between)
            written.set()

    monkeypatch.setattr(fsops, "write_all", observed)
    w = JournalWriter(jdir)
    fsyncs.calls.clear()
    for i in range(3):  # 300 KB: past the 256 KiB that wake the writing thread
        w.append(i, i, 1, payload)
    assert written.wait(60), "the writing thread never wrote"
    (path,) = segment_files(jdir)
    assert path.stat().st_size == expected
    assert w.statistics().pending_bytes == 0
    assert fsyncs.calls == []  # in the OS (safe from a process crash), not yet durable
    assert writers and all(name.startswith("journal-writer:") for name in writers)
    w.close()


def test_a_stalled_writing_thread_bounds_the_queue(
    jdir: Path, no_fsync: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_writer, "_DRAIN_BYTES", 2**62)  # never woken by volume ...
    monkeypatch.setattr(journal_writer, "_DRAIN_INTERVAL", 3600.0)  # ... nor by time
    monkeypatch.setattr(journal_writer, "_MAX_PENDING_BYTES", 10_000)
    w = JournalWriter(jdir)
    for i in range(9):
        w.append(i, i, 1, b"p" * 1000)
    assert w.statistics().pending_bytes == 9 * (HEADER_SIZE + 1000)
    assert segment_files(jdir) == []
    w.append(9, 9, 1, b"p" * 1000)  # crosses the cap: the appender writes
    assert w.statistics().pending_bytes == 0
    (path,) = segment_files(jdir)
    assert path.stat().st_size == 10 * (HEADER_SIZE + 1000)
    w.close()


def test_statistics(jdir: Path, no_fsync: None) -> None:
    with JournalWriter(jdir, segment_bytes=300) as w:
        m = Model(w)
        m.session("s1")
        fill(m, 6, size=100)
        w.flush_and_sync()
        stats = w.statistics()
        assert stats.segments == len(w.segments()) >= 3
        assert stats.rolls == stats.segments - 1
        assert stats.appended_records == 7 + stats.rolls  # one resumed copy per roll
        assert stats.bytes_on_disk == sum(p.stat().st_size for p in segment_files(jdir))
        assert stats.next_seq == m.seq and stats.oldest_seq == 0
        assert stats.durable_seq == m.seq - 1 and stats.syncs == 1


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 65536])
def test_payload_sizes_around_the_write_paths(jdir: Path, no_fsync: None, n: int) -> None:
    payload = os.urandom(n)
    with JournalWriter(jdir) as w:
        w.append(1, 0, 1, payload)
        w.append(2, 1, 1, payload.hex()[:n])
    got = records(jdir)
    assert [r.payload for r in got] == [payload, payload.hex()[:n].encode()]  # type: ignore[union-attr]


def test_session_payload_is_the_documented_json(jdir: Path) -> None:
    with JournalWriter(jdir) as w:
        w.begin_session("20250101T000000-abcdef", "A", 42, {"types": ["T"], "url": "wss://x"})
    (path,) = segment_files(jdir)
    data = path.read_bytes()
    first = spans(data)[0]
    assert data[5] == 1 and struct.unpack_from("<q", data, 12)[0] == 42
    assert json.loads(data[HEADER_SIZE : first.end]) == {
        "session": "20250101T000000-abcdef",
        "stripe": "A",
        "context": {"types": ["T"], "url": "wss://x"},
    }


def test_event_records_round_trip_and_hold_their_segment(jdir: Path, no_fsync: None) -> None:
    w = JournalWriter(jdir, segment_bytes=300)
    m = Model(w)
    m.session("s1")
    fill(m, 3)
    w.append_event(m.recv, m.seq, {"event": "gap", "time_ns": m.recv, "seq": m.seq})
    with pytest.raises(ValueError, match="below"):
        w.append_event(m.recv, m.seq - 1, {})
    fill(m, 6)
    w.flush_and_sync()
    w.roll()
    w.flush_and_sync()
    events = [r for r in records(jdir) if isinstance(r, journal.EventRecord)]
    assert [(e.seq, e.fields["event"]) for e in events] == [(6, "gap")]
    holding = next(s for s in w.segments() if s.next_seq is not None and s.next_seq >= 6)
    w.retire(6)  # seq 6 not committed: the segment holding the event stays
    assert holding.path in [s.path for s in w.segments()]
    w.close()
    assert recover(jdir, verify_sealed=True).clean

"""A stripe's one recovery entry point (capture.stripe_recovery.recover_stripe): what it moves
aside, what it hands the live reader, and what it leaves to other stripes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from journal_util import MSG_TYPE, write_journal

from capture import journal
from capture.stripe_recovery import recover_stripe

BASE_NS = 1_748_875_500_000_000_000  # 2025-06-02 14:45:00 UTC
DAY = "date=2025-06-02"


def unfinished(root: Path, stripe: str) -> Path:
    """An in-progress part file as a killed writer leaves it (hidden, no footer)."""
    path = root / MSG_TYPE / DAY / f"stripe={stripe}" / ".part-x-000001.parquet.inprogress"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1 half a row group")
    return path


def test_a_stripe_moves_aside_only_its_own_unfinished_files(tmp_path: Path) -> None:
    """Also without a journal; another stripe's open file (another process may be writing
    it) stays where it is."""
    root = tmp_path / "data"
    mine, theirs = unfinished(root, "A"), unfinished(root, "B")

    assert recover_stripe(root, "A", None, partial(journal.JournalWriter)) is None

    moved = root / "_quarantine" / "inprogress" / MSG_TYPE / DAY / "stripe=A"
    assert [p.name for p in moved.iterdir()] == ["part-x-000001.parquet.inprogress"]
    assert (moved / "part-x-000001.parquet.inprogress").read_bytes() == b"PAR1 half a row group"
    assert not mine.exists()
    assert theirs.read_bytes() == b"PAR1 half a row group"


def test_the_plan_reserves_the_journals_numbers_and_resumes_after_its_last_frame(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    jdir = root / "_journal" / "stripe=A"
    write_journal(jdir, 50, BASE_NS)  # frames 0..49, 1 ms apart, nothing in Parquet

    plan = recover_stripe(root, "A", jdir, partial(journal.JournalWriter, segment_bytes=4096))

    assert plan is not None
    try:
        assert plan.next_seq == 50  # the live reader numbers from here; 0..49 are the replay's
        assert plan.gap_from_ns == BASE_NS + 49 * 10**6  # the last frame received
        assert plan.highwater == {MSG_TYPE: BASE_NS + 49 * 10**6}  # its header sTim
        assert plan.segments and all(p.parent == jdir for p in plan.segments)
        assert plan.index.files == 0 and plan.quarantined_before == frozenset()
        assert plan.journal.next_seq == 50  # the live journal is open and continues the old
    finally:
        plan.journal.close()

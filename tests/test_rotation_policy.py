"""capture.rotation.due: which open files to commit now, and when the next one falls due."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from capture.rotation import OpenInterval, due

S = 1_000_000_000
GRACE, IDLE = 2 * S, 300 * S


def test_nothing_open_means_nothing_due_and_no_wake_up() -> None:
    d = due([], 10 * S, grace_ns=GRACE, idle_ns=IDLE)
    assert d.files == [] and d.next_ns is None


def test_an_interval_is_due_after_its_grace_and_not_before() -> None:
    f = OpenInterval(boundary_ns=300 * S, last_write_ns=100 * S)
    before = due([("q", f)], 301 * S, grace_ns=GRACE, idle_ns=IDLE)
    assert before.files == [] and before.next_ns == 302 * S
    at = due([("q", f)], 302 * S, grace_ns=GRACE, idle_ns=IDLE)
    assert at.files == [("q", "interval")] and at.next_ns is None


def test_idle_wins_over_interval_and_the_earliest_deadline_is_the_wake_up() -> None:
    files = [
        ("idle", OpenInterval(boundary_ns=900 * S, last_write_ns=0)),
        ("late", OpenInterval(boundary_ns=400 * S, last_write_ns=350 * S)),
        ("soon", OpenInterval(boundary_ns=320 * S, last_write_ns=310 * S)),
    ]
    d = due(files, 300 * S, grace_ns=GRACE, idle_ns=IDLE)
    assert d.files == [("idle", "idle")]
    assert d.next_ns == 322 * S


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=20),
    st.integers(0, 2 * 10**6),
)
def test_every_file_is_due_now_or_at_or_after_the_wake_up(
    raw: list[tuple[int, int]], now: int
) -> None:
    files = [(i, OpenInterval(b, w)) for i, (b, w) in enumerate(raw)]
    d = due(files, now, grace_ns=7, idle_ns=300)
    due_keys = {k for k, _ in d.files}
    for key, f in files:
        deadline = min(f.boundary_ns + 7, f.last_write_ns + 300)
        if key in due_keys:
            assert deadline <= now
        else:
            assert d.next_ns is not None and now < d.next_ns <= deadline

"""A server that lies about time must not move the resume point into the future.

The daemon resumes a stream with ``highwaterTs`` = the latest send time it received; the server
then sends only what changed after it (PROTOCOL.md §6.1, §7.4).  A header ``sTim`` in the year
2200 or 9999, or a checkpoint ``highwaterTs`` of ``2**63 - 1``, taken as the resume point,
would have the server withhold every change until then: silent loss.  Such times are stored
as sent, and the resume point stays at the latest plausible time (capture.resume)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_hostile import Script, good_body, quarantined, rows_at_least, run_daemon, seqs_in_parquet

from capture.frames import encode_frame
from capture.resume import MAX_AHEAD_NS, ResumePoints, latest_plausible
from capture.verify import verify

LEGIT_STIM = "2025-06-02 14:45:09.876720"  # the sample's sTim: the latest plausible one
LEGIT_NS = int(dt.datetime.fromisoformat(LEGIT_STIM + "+00:00").timestamp()) * 10**9 + 876_720_000
QUERY_ID = 1000 + ord("A")  # the worker's queryID for its first type on stripe A


def with_stim(seq: int, stim: str) -> bytes:
    body = good_body(seq).replace(LEGIT_STIM.encode(), stim.encode(), 1)
    assert stim == LEGIT_STIM or body != good_body(seq)
    return encode_frame(2785, body)


def checkpoint(highwater: int) -> bytes:
    return encode_frame(
        3370,
        b'{"header":{"mTyp":"MLinkStreamCheckPt"},"message":{"queryID":%d,"state":"Active",'
        b'"highwaterTs":%d,"numMessagesSent":3}}' % (QUERY_ID, highwater),
    )


FUTURE = [
    with_stim(9001, "2200-01-01 00:00:00.000000"),
    with_stim(9002, "9999-12-31 23:59:59.999999"),
    checkpoint(2**63 - 1),
    checkpoint(7_258_118_400 * 10**9),  # 2200-01-01 in ns
]


def resumed_from(script: Script, connection: int) -> list[int | None]:
    """The highwaterTs of every stream request the client sent on ``connection``."""
    out: list[int | None] = []
    for n, raw in script.received:
        if n == connection and b'"MLinkStream"' in raw:
            found = re.search(rb'"highwaterTs":(-?\d+)', raw)
            out.append(int(found.group(1)) if found else None)
    return out


def test_future_send_times_do_not_move_the_resume_point_on_reconnect(tmp_path: Path) -> None:
    first = [b"".join(with_stim(s, LEGIT_STIM) for s in range(1, 51)), *FUTURE]
    script = Script(first, later=[with_stim(s, LEGIT_STIM) for s in range(51, 61)], hang_up=True)
    outcome = run_daemon(
        tmp_path,
        script,
        until=lambda d: len(resumed_from(script, 2)) == 1 and rows_at_least(62)(d),
        supervision={"backoff_initial": 1.0},
    )
    assert outcome.code == 0
    assert resumed_from(script, 2) == [LEGIT_NS]
    # The lying frames are data as sent, not lost: 50 + 2 + 10 rows, nothing quarantined.
    root = tmp_path / "a" / "b" / "data"
    assert seqs_in_parquet(root) == [*range(1, 61), 9001, 9002]
    assert quarantined(root) == []
    assert verify(root).ok


def test_future_send_times_do_not_move_the_resume_point_after_a_restart(tmp_path: Path) -> None:
    """After a restart the resume point comes from the journal and the committed files'
    statistics: those hold the lies too."""
    lies = Script([b"".join(with_stim(s, LEGIT_STIM) for s in range(1, 51)), *FUTURE[:2]])
    assert run_daemon(tmp_path, lies, until=rows_at_least(52)).code == 0
    fresh = Script([with_stim(s, LEGIT_STIM) for s in range(51, 61)])
    outcome = run_daemon(tmp_path, fresh, until=rows_at_least(10))
    assert outcome.code == 0
    assert resumed_from(fresh, 1) == [LEGIT_NS]


def test_the_latest_plausible_time_of_a_batch() -> None:
    recv = 1_748_875_510_000_000_000
    micros = [
        recv // 1000 - 5,
        recv // 1000 + 10,  # ahead of its receive time, within the skew allowed
        recv // 1000 + MAX_AHEAD_NS // 1000 + 1,  # beyond it
        253_402_300_799_999_999,  # 9999-12-31: beyond int64 nanoseconds as well
        -1,
        None,
    ]
    sent = pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    recv_ns = pa.array([recv] * len(micros), pa.int64())
    assert latest_plausible(sent, recv_ns) == ((recv // 1000 + 10) * 1000, recv)
    assert latest_plausible(sent[2:], recv_ns[2:]) is None


@pytest.mark.parametrize(
    ("sent", "taken"),
    [
        (1_000, True),
        (5_000 + MAX_AHEAD_NS, True),
        (5_001 + MAX_AHEAD_NS, False),
        (2**63 - 1, False),
        (2**200, False),
        (0, False),
        (-5, False),
    ],
)
def test_a_resume_point_is_offered_and_refused(sent: int, taken: bool) -> None:
    points = ResumePoints()
    assert points.offer("T", sent, 5_000) is taken
    assert dict(points) == ({"T": sent} if taken else {})
    assert points.rejected == (0 if taken else 1)


def test_resume_points_keep_the_latest_and_merge() -> None:
    a, b = ResumePoints(), ResumePoints()
    a.offer("T", 10, 100)
    a.offer("T", 5, 100)  # older: kept is the latest
    b.offer("T", 20, 100)
    b.offer("U", 7, 100)
    b.offer("U", 2**70, 100)
    a.merge(b)
    assert a == {"T": 20, "U": 7} and a.rejected == 1


@pytest.mark.parametrize(
    "sent",
    [
        pa.array(["2200-01-01", "zz"]),  # strings: their statistics are bytes
        pa.array([float("nan"), 1.7e18]),  # doubles
        pa.array([True, False]),
        pa.array([2**62, 2**63 - 1], pa.int64()),  # int64, not a timestamp: still a time
    ],
    ids=["string", "double", "bool", "int64"],
)
def test_a_committed_file_with_an_odd_h_stim_column_offers_no_odd_resume_point(
    tmp_path: Path, sent: pa.Array
) -> None:
    """Recovery reads the resume point from committed files' statistics: a file whose
    ``h_sTim`` or ``_recv_time_ns`` is not int64 underneath (another writer's, an old one, a
    tampered one) must not stop the stripe from starting, and offers no resume point."""
    from capture.recovery import scan_committed
    from capture.sink import META_MSG_TYPE, META_SEQ_MAX, META_SEQ_MIN, PartitionSink, SinkSettings

    recv = [1_748_875_510_000_000_000, 1_748_875_510_000_000_001]
    sink = PartitionSink(SinkSettings(root=tmp_path), stripe="A", session="s", now_ns=lambda: 0)
    sink.write("Odd", pa.RecordBatch.from_pydict({
        "_recv_time": pa.array([r // 1000 for r in recv], pa.int64()).cast(
            pa.timestamp("us", tz="UTC")),
        "_recv_time_ns": pa.array(recv, pa.int64()),
        "_seq": pa.array([0, 1], pa.int64()),
        "h_sTim": sent,
    }))  # fmt: skip
    sink.close()
    # Another writer's file (the sink refuses a non-int64 _recv_time_ns): a valid h_sTim, a
    # string _recv_time_ns, and the footer of a committed file of type OddRecv.
    (odd,) = (tmp_path / "Odd").rglob("*.parquet")
    meta = {k: v for k, v in (pq.read_metadata(odd).metadata or {}).items()}
    meta.update({META_MSG_TYPE.encode(): b"OddRecv", META_SEQ_MIN.encode(): b"2",
                 META_SEQ_MAX.encode(): b"3"})  # fmt: skip
    other = tmp_path / "OddRecv" / odd.parent.relative_to(tmp_path / "Odd") / odd.name
    other.parent.mkdir(parents=True)
    table = pa.table({
        "_recv_time_ns": pa.array(["x", "y"]),
        "h_sTim": pa.array([r // 1000 for r in recv], pa.int64()).cast(
            pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    pq.write_table(table.replace_schema_metadata(meta), other)
    index = scan_committed(tmp_path, "A", since_ns=None)
    assert index.files == 2 and index.max_seq == 3
    assert dict(index.resume_points) == {}

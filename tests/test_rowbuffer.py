"""RowBuffer: every row kept, in order, in a number of batches logarithmic in those appended."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sink import T0, Clock, make_batch, new_sink

from capture.rowbuffer import FANOUT, SMALL_ROWS, RowBuffer

SCHEMA = pa.schema(
    [
        ("_seq", pa.int64()),
        ("side", pa.dictionary(pa.int32(), pa.string())),
        ("note", pa.string()),
    ]
)


def batch(seq0: int, rows: int) -> pa.RecordBatch:
    seqs = list(range(seq0, seq0 + rows))
    # each batch brings its own enum dictionary, in its own order, as the decoder's do
    sides = pa.array([("Bid", "Ask", "Mid")[s % 3] for s in seqs]).dictionary_encode()
    notes = pa.array([None if s % 5 == 0 else f"n{s}" for s in seqs], pa.string())
    return pa.record_batch([pa.array(seqs, pa.int64()), sides, notes], schema=SCHEMA)


def rows_of(table: pa.Table) -> list[dict[str, object]]:
    return table.to_pylist()


def expected(sizes: list[int]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    seq = 0
    for n in sizes:
        out += batch(seq, n).to_pylist()
        seq += n
    return out


def fill(sizes: list[int]) -> RowBuffer:
    buf = RowBuffer(SCHEMA)
    seq = 0
    for n in sizes:
        buf.append(batch(seq, n))
        seq += n
    return buf


def test_many_one_row_batches_are_held_in_few_batches_with_every_row() -> None:
    n = 5_000
    buf = fill([1] * n)
    assert rows_of(buf.table()) == expected([1] * n)
    assert buf.rows == n
    # a base-FANOUT counter: at most FANOUT - 1 batches per level
    levels = math.ceil(math.log(n, FANOUT)) + 1
    assert buf.batch_count <= (FANOUT - 1) * levels
    assert buf.batch_count < 100  # instead of 5,000


def test_big_batches_are_held_as_they_are() -> None:
    sizes = [SMALL_ROWS] * (2 * FANOUT)
    buf = RowBuffer(SCHEMA)
    appended = []
    for i, n in enumerate(sizes):
        b = batch(i * n, n)
        appended.append(b)
        buf.append(b)
    assert buf.batch_count == len(sizes)
    held = buf.table().to_batches()
    # the busy path pays no copy: the very buffers appended are held
    assert all(
        h.column(0).buffers()[1].address == a.column(0).buffers()[1].address
        for h, a in zip(held, appended, strict=True)
    )


def test_nbytes_counts_rows_and_batches_and_goes_back_to_zero() -> None:
    buf = fill([3] * 10)
    assert buf.nbytes > sum(batch(0, 3).nbytes for _ in range(10))
    table = buf.table()
    buf.keep_from(table, table.num_rows)
    assert (buf.rows, buf.nbytes, buf.batch_count, bool(buf)) == (0, 0, 0, False)


def test_keep_from_holds_the_rest_in_order() -> None:
    sizes = [1] * 700 + [5] * 40
    buf = fill(sizes)
    table = buf.table()
    buf.keep_from(table, 333)
    assert rows_of(buf.table()) == expected(sizes)[333:]
    assert buf.batch_count < FANOUT
    buf.append(batch(sum(sizes), 2))
    assert rows_of(buf.table()) == expected([*sizes, 2])[333:]


def test_empty_batches_are_ignored() -> None:
    buf = fill([0, 0, 2, 0])
    assert buf.rows == 2 and buf.batch_count == 1


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 2 * SMALL_ROWS), max_size=120),
    cut=st.integers(0, 10**6),
)
def test_any_appends_and_cuts_keep_every_row_in_order(sizes: list[int], cut: int) -> None:
    buf = fill(sizes)
    want = expected(sizes)
    assert rows_of(buf.table()) == want
    table = buf.table()
    offset = cut % (table.num_rows + 1)
    buf.keep_from(table, offset)
    assert rows_of(buf.table()) == want[offset:]
    assert buf.rows == len(want) - offset


def test_a_sink_fed_one_row_at_a_time_writes_every_row(tmp_path: Path) -> None:
    """What a low-rate stripe does for a whole rotation interval: the file holds every row."""
    sink = new_sink(tmp_path, Clock(T0))
    for i in range(3_000):
        sink.write("T", make_batch(1, seq0=1 + i))
    assert sink.statistics().buffered_rows == 3_000
    [cf] = sink.rotate_all()
    assert pq.read_table(cf.path).column("_seq").to_pylist() == list(range(1, 3_001))

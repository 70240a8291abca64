"""A message field named like a partition key keeps its value in every reader.

The local layout is ``<type>/date=YYYY-MM-DD/stripe=<S>/``; readers with hive partitioning add
``date`` and ``stripe`` as columns.  StockMinuteBar (and five other types) has a ``date`` field
of its own: stored as ``date``, DuckDB and Spark showed the directory's date in its place and
pyarrow refused or overrode it.  It is stored as ``date__2`` (the schema mapping's collision
rule), and every reader sees both: the partition date and the bar's date as the server sent it.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
from test_hostile import Script, rows_at_least, run_daemon

from capture.frames import encode_frame
from capture.schemas import arrow_schema, registry
from capture.schemas.mapping import PARTITION_KEYS

BAR_DATES = ["2024-01-02", "2019-12-31", "not a date at all"]


def bar(seq: int, day: str) -> bytes:
    body = (
        b'{"header":{"mTyp":"StockMinuteBar","seqN":%d,"sTim":"2025-06-02 14:45:09.876720"},'
        b'"message":{"pkey":{"ticker":{"at":"EQT","ts":"NMS","tk":"AAPL"}},'
        b'"date":"%s","time":"09:31","prtLast":201.5}}' % (seq, day.encode())
    )
    return encode_frame(registry()["StockMinuteBar"].number, body)


def test_a_field_named_date_is_read_back_beside_the_partition_date(tmp_path: Path) -> None:
    script = Script([b"".join(bar(i + 1, d) for i, d in enumerate(BAR_DATES))])
    outcome = run_daemon(tmp_path, script, until=rows_at_least(len(BAR_DATES)))
    assert outcome.code == 0
    table_dir = tmp_path / "a" / "b" / "data" / "StockMinuteBar"
    partition_day = "2025-06-02"  # the receive date (the tests' clock)

    arrow = ds.dataset(table_dir, format="parquet", partitioning="hive").to_table()
    rows = sorted(zip(arrow["h_seqN"].to_pylist(), arrow["date__2"].to_pylist(), strict=True))
    assert [d for _, d in rows] == BAR_DATES
    assert {str(d) for d in arrow["date"].to_pylist()} == {partition_day}
    assert set(arrow["_extra"].to_pylist()) == {None}

    glob = f"{table_dir}/**/*.parquet"
    got = duckdb.sql(
        f"SELECT date::VARCHAR, date__2, stripe FROM read_parquet('{glob}', hive_partitioning = "
        "true) ORDER BY h_seqN"
    ).fetchall()
    assert got == [(partition_day, d, "A") for d in BAR_DATES]

    frame = pl.scan_parquet(glob, hive_partitioning=True).sort("h_seqN").collect()
    assert frame["date__2"].to_list() == BAR_DATES
    assert {str(d) for d in frame["date"].to_list()} == {partition_day}


def test_no_data_column_is_named_like_a_partition_key() -> None:
    claimed = []
    for name in registry():
        columns = {c.casefold() for c in arrow_schema(name).names}
        assert not columns & set(PARTITION_KEYS), name
        if "date__2" in columns:
            claimed.append(name)
    assert sorted(claimed) == [
        "FutureMinuteBar",
        "HistoricalVolatilities",
        "LiveSurfaceFixedGrid",
        "LiveSurfacePerf",
        "StockMinuteBar",
        "TheoSurfacePerf",
    ]

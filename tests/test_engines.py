"""Every engine reads the local files as they are: Spark (no flags), DuckDB, Polars and pandas.

One real capture (the daemon against the simulator) writes the tables of every type with a
hand-written generator plus a few dictionary types chosen so that every dictionary field type
appears (also inside Repeaters), and the capture-events table. Each engine then reads every
table, and its values must equal what pyarrow reads, integers and nanoseconds exactly.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
import trio
from e2e_util import KEY, daemon_config, run_capture

from capture import events
from capture.schemas import registry
from capture.sim.config import SimConfig
from capture.sim.market import GENERATED_TYPES
from capture.sim.record import load_sent_data

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STRIPES = ["A", "M", "X"]  # equities and their options, indexes, futures
ORDER = [("stripe", "ascending"), ("_seq", "ascending"), ("_recv_time_ns", "ascending")]


def _striped(name: str) -> bool:
    """The simulator sends a type on a stripe when its first key is a security key (types
    without one go only to streams without a stripe filter, which the daemon never opens)."""
    keys = registry()[name].key_fields
    return bool(keys) and keys[0].ftype in ("TickerKey", "ExpiryKey", "OptionKey")


def _covering_types() -> list[str]:
    """GENERATED_TYPES plus, greedily, striped dictionary types that bring a field type (top
    level or inside a Repeater) not yet covered. Every dictionary field type is then in some
    table, except Long, UInt and TimeSpan inside a Repeater (no striped type has them)."""

    def kinds(name: str) -> set[str]:
        return {("[]" if f.repeater else "") + f.ftype for f in registry()[name].fields}

    candidates = sorted(n for n in registry() if _striped(n))
    chosen = list(GENERATED_TYPES)
    covered = set().union(*(kinds(n) for n in chosen))
    wanted = set().union(*(kinds(n) for n in candidates))
    assert set().union(*(kinds(n) for n in registry())) - wanted == {
        "[]Long",
        "[]UInt",
        "[]TimeSpan",
    }
    while covered != wanted:
        best = max(candidates, key=lambda n: len(kinds(n) - covered))
        chosen.append(best)
        covered |= kinds(best)
    return chosen


TYPES = _covering_types()


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("engines")
    root, record = tmp / "data", tmp / "sent"
    sim = SimConfig(
        api_keys=frozenset({KEY}), rate=60, seed=17, record_dir=record, types=tuple(TYPES)
    )
    def every_type_sent() -> bool:  # rare types take longer on a busy machine
        return record.exists() and {t for t, _ in load_sent_data(record)} == set(TYPES)

    _, code = trio.run(
        lambda: run_capture(
            sim,
            lambda port: daemon_config(root, port, STRIPES, TYPES),
            seconds=2,
            until=every_type_sent,
        )
    )
    assert code == 0
    sent = load_sent_data(record)
    assert {t for t, _ in sent} == set(TYPES), "the simulator sent every type"
    yield root
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One small local Spark session for the module, with Spark's defaults for Parquet."""
    if shutil.which("java") is None:
        pytest.fail("Spark needs Java 17 on PATH (the CI image has it)")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("mlink-capture-engines")
        .config("spark.driver.memory", "512m")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")  # how Arrow results are labelled, no more
        # A short-lived JVM: the quick JIT tier only and one GC thread (the test's ~20 small
        # jobs spent more on compiling and collecting than on reading).
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        .getOrCreate()
    )
    yield session
    session.stop()


TABLES = [*TYPES, events.TABLE]


def arrow_table(root: Path, name: str) -> pa.Table:
    """What pyarrow reads (the reference), sorted by stripe and ``_seq``."""
    table = ds.dataset(root / name, format="parquet", partitioning="hive").to_table()
    assert table.num_rows > 0, name
    return table.sort_by(ORDER)


def normalised(table: pa.Table) -> pa.Table:
    """Engine-neutral form: dictionaries as strings, timestamps as int64 microseconds (nested
    ones too), partition columns as strings."""

    def norm(t: pa.DataType) -> pa.DataType:
        if pa.types.is_dictionary(t):
            return t.value_type
        if pa.types.is_timestamp(t):
            assert t.unit == "us" and t.tz in ("UTC", "+00:00", "Etc/UTC"), t
            return pa.int64()
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pa.list_(pa.field("element", norm(t.value_type)))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, norm(f.type)) for f in t])
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.utf8()
        return t

    columns = []
    for name in table.column_names:
        col = table.column(name)
        if name in ("date", "stripe"):
            col = pc.cast(col, pa.utf8())
        elif pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        columns.append(col.cast(norm(col.type)))
    return pa.table(columns, names=table.column_names)


def test_the_capture_covers_every_dictionary_field_type(captured: Path) -> None:
    for name in TABLES:
        schema = ds.dataset(captured / name, format="parquet", partitioning="hive").schema
        assert schema.field("_recv_time").type == pa.timestamp("us", tz="UTC")
        assert schema.field("_recv_time_ns").type == pa.int64()


US = "_us_minus_ns_div_1000"  # a column Spark computes beside the table's own


def test_spark_reads_every_table_with_no_flags(captured: Path, spark: Any) -> None:
    for name in TABLES:
        want = normalised(arrow_table(captured, name))
        frame = spark.read.parquet(str(captured / name))  # hive partitions: date, stripe
        # Spark's own arithmetic on the columns, in the same job: the microsecond is the exact
        # ns, truncated.
        frame = frame.selectExpr("*", f"unix_micros(_recv_time) - _recv_time_ns div 1000 AS {US}")
        read = frame.toArrow()
        assert read.column(US).to_pylist() == [0] * read.num_rows, name
        got = normalised(read.drop_columns([US]))
        got = got.select(want.column_names).sort_by(ORDER)
        assert got.num_rows == want.num_rows, name
        for column in want.column_names:
            assert got.column(column).equals(want.column(column)), (name, column)


def _integer_columns(table: pa.Table) -> list[str]:
    return [
        f.name for f in table.schema if pa.types.is_integer(f.type) and f.name not in ("stripe",)
    ]


def test_duckdb_reads_exact_integers_and_times(captured: Path) -> None:
    con = duckdb.connect()
    try:
        for name in TABLES:
            want = arrow_table(captured, name)
            ints = _integer_columns(want)
            assert "_recv_time_ns" in ints and "_seq" in ints
            select = ", ".join(f'"{c}"' for c in ints)
            glob = f"{captured / name}/**/*.parquet"
            rows = con.sql(
                f"SELECT {select}, epoch_us(_recv_time) FROM read_parquet('{glob}', "
                f"hive_partitioning = true) ORDER BY stripe, _seq, _recv_time_ns"
            ).fetchall()
            for i, column in enumerate(ints):
                assert [r[i] for r in rows] == want.column(column).to_pylist(), (name, column)
            exact = want.column("_recv_time_ns").to_pylist()
            assert [r[-1] for r in rows] == [ns // 1000 for ns in exact], name
    finally:
        con.close()


def test_polars_reads_exact_integers_and_times(captured: Path) -> None:
    for name in TABLES:
        want = arrow_table(captured, name)
        frame = (
            pl.scan_parquet(f"{captured / name}/**/*.parquet", hive_partitioning=True)
            .sort(["stripe", "_seq", "_recv_time_ns"])
            .collect()
        )
        assert frame.schema["_recv_time"] == pl.Datetime("us", "UTC")
        for column in _integer_columns(want):
            assert frame[column].to_list() == want.column(column).to_pylist(), (name, column)
        micros = frame["_recv_time"].dt.epoch("us").to_list()
        assert micros == [ns // 1000 for ns in want.column("_recv_time_ns").to_pylist()]


def test_pandas_reads_exact_integers_and_times(captured: Path) -> None:
    for name in TABLES:
        want = arrow_table(captured, name)
        # numpy_nullable: integer columns with nulls stay integers (not float64)
        frame = pd.read_parquet(captured / name, dtype_backend="numpy_nullable")
        frame = frame.sort_values(["stripe", "_seq", "_recv_time_ns"], kind="stable")
        for column in _integer_columns(want):
            got = [None if pd.isna(v) else int(v) for v in frame[column]]
            assert got == want.column(column).to_pylist(), (name, column)
        # the default backend too, for the columns that never hold nulls
        plain = pd.read_parquet(captured / name).sort_values(["stripe", "_seq", "_recv_time_ns"])
        assert plain["_recv_time_ns"].dtype == "int64" and plain["_seq"].dtype == "int64"
        assert plain["_recv_time_ns"].tolist() == want.column("_recv_time_ns").to_pylist()
        epoch = pd.Timestamp(0, tz="UTC")
        micros = [(t - epoch) // pd.Timedelta(microseconds=1) for t in plain["_recv_time"]]
        assert micros == [ns // 1000 for ns in want.column("_recv_time_ns").to_pylist()]
        assert str(plain["_recv_time"].dtype).endswith("UTC]")

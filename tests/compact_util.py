"""Live part files for the compaction tests, written by the real sink (capture.sink) in the
registry's OptionNbboQuote schema, and what a user reads back."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from capture.schemas import arrow_schema
from capture.sink import PartitionSink, SinkSettings

TYPE = "OptionNbboQuote"
NS = 1_000_000_000
ROOTS = ("AAPL", "MSFT", "SPY", "QQQ", "IWM")


def ns_of(iso: str) -> int:
    d = dt.datetime.fromisoformat(iso)
    assert d.tzinfo is not None
    return int(d.timestamp()) * NS + d.microsecond * 1000


def quote_rows(
    n: int, *, seq0: int, recv0: int, step_ns: int, seed: int, stripe: str = "3"
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        recv = recv0 + i * step_ns
        bid = round(rng.uniform(1, 50), 2)
        rows.append(
            {
                "_recv_time": recv,
                "_stripe": stripe,
                "_session": "sess1",
                "_snapshot": False,
                "_seq": seq0 + i,
                "_type_number": 4125,
                "h_seqN": 1000 + seq0 + i,
                "h_sID": 18409,
                "h_sTim": recv // 1000 - 500,
                "h_encT": recv // 1000 - 400,
                "okey_at": "EQT",
                "okey_ts": "NMS",
                "okey_tk": rng.choice(ROOTS),
                "okey_dt": dt.date(2026, 1, 16) + dt.timedelta(days=7 * rng.randrange(3)),
                "okey_xx": float(rng.randrange(90, 110)),
                "okey_cp": rng.choice(("Call", "Put")),
                "bidPrice": bid,
                "askPrice": bid + 0.05,
                "bidSize": rng.randrange(1, 500),
                "askSize": rng.randrange(1, 500),
            }
        )
    return rows


def quote_batch(rows: list[dict[str, Any]], *, recv_ns_column: bool = True) -> pa.RecordBatch:
    """Rows as the daemon's decoder emits them: ``_recv_time`` in us with the exact
    ``_recv_time_ns`` beside it (``recv_ns_column=False``: the older layout, ns in
    ``_recv_time`` and no ``_recv_time_ns``, as files written before that change hold)."""
    schema = arrow_schema(TYPE)
    recv = pa.array([r["_recv_time"] for r in rows], pa.int64())
    base = [{**r, "_recv_time": None, "_recv_time_ns": None} for r in rows]
    batch = pa.RecordBatch.from_pylist(base, schema=schema)
    idx = schema.get_field_index("_recv_time")
    us = recv.cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("us", tz="UTC"))
    batch = batch.set_column(idx, schema.field(idx), us)
    ns_idx = schema.get_field_index("_recv_time_ns")
    batch = batch.set_column(ns_idx, schema.field(ns_idx), recv)
    if recv_ns_column:
        return batch
    old = batch.drop_columns(["_recv_time_ns"])
    field = pa.field("_recv_time", pa.timestamp("ns", tz="UTC"))
    return old.set_column(idx, field, recv.cast(pa.timestamp("ns", tz="UTC")))


def write_live(
    root: Path,
    *,
    start_ns: int,
    seconds: int,
    rows: int,
    seq0: int = 0,
    stripe: str = "3",
    session: str = "sess1",
    host: str | None = None,
    tz: str = "UTC",
    rotate_interval_s: int = 300,
    batch_rows: int = 500,
    seed: int = 1,
    recv_ns_column: bool = True,
    row_group_rows: int = 8192,
) -> int:
    """``rows`` quotes received evenly over ``seconds`` from ``start_ns``, written as the daemon
    does (small batches, rotation, commit).  Returns the next sequence number."""
    settings = SinkSettings(
        root=root,
        rotate_interval_s=rotate_interval_s,
        tz=tz,
        row_group_rows=row_group_rows,
        host=host,
    )
    clock = [start_ns]
    sink = PartitionSink(settings, stripe=stripe, session=session, now_ns=lambda: clock[0])
    step = seconds * NS // rows
    for off in range(0, rows, batch_rows):
        n = min(batch_rows, rows - off)
        recs = quote_rows(n, seq0=seq0 + off, recv0=start_ns + off * step, step_ns=step,
                          seed=seed * 100_003 + off, stripe=stripe)  # fmt: skip
        clock[0] = recs[-1]["_recv_time"]
        sink.write(TYPE, quote_batch(recs, recv_ns_column=recv_ns_column))
        sink.rotate_due()
    sink.close()
    return seq0 + rows


def write_lake_layout_file(
    root: Path, *, start_ns: int, seconds: int, rows: int, seq0: int, stripe: str = "3"
) -> Path:
    """A committed part file as the lake branch's sink writes it: ``_recv_time`` in us and the
    exact ``_recv_time_ns`` beside it (this branch's sink still writes ns)."""
    recs = quote_rows(rows, seq0=seq0, recv0=start_ns, step_ns=seconds * NS // rows, seed=7,
                      stripe=stripe)  # fmt: skip
    table = pa.Table.from_batches([quote_batch(recs, recv_ns_column=True)])
    day = dt.datetime.fromtimestamp(start_ns // NS, dt.UTC).date()
    directory = root / TYPE / f"date={day.isoformat()}" / f"stripe={stripe}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"part-{start_ns}-lake-000001.parquet"
    meta = {"mlink.msg_type": TYPE, "mlink.stripe": stripe, "mlink.session": "lake",
            "mlink.seq_min": str(seq0), "mlink.seq_max": str(seq0 + rows - 1),
            "mlink.rows": str(rows)}  # fmt: skip
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **meta}), path)
    return path


USER_COLUMNS = ("_seq", "_session", "okey_tk", "okey_dt", "okey_xx", "okey_cp", "bidPrice",
                "askSize", "h_sTim")  # fmt: skip


def duck_rows(root: Path, table: str = TYPE) -> list[tuple[Any, ...]]:
    """Rows (a multiset, sorted) a DuckDB user reads over ``**/*.parquet``, with the receive
    time as exact epoch ns whatever its stored type."""
    cols = ", ".join(USER_COLUMNS)
    con = duckdb.connect()
    try:
        rows = con.execute(
            f"SELECT {cols}, epoch_ns(_recv_time::TIMESTAMP_NS) AS recv, date, stripe "
            f"FROM read_parquet('{root}/{table}/**/*.parquet', hive_partitioning = true, "
            "union_by_name = true)"
        ).fetchall()
    finally:
        con.close()
    return sorted(rows, key=repr)


def arrow_rows(root: Path, table: str = TYPE) -> list[tuple[Any, ...]]:
    """The same through pyarrow.dataset (which ignores _ and . prefixed paths)."""
    d = ds.dataset(root / table, format="parquet", partitioning="hive")
    t = d.to_table(columns=[*USER_COLUMNS, "date"])
    return sorted(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True), key=repr)


def parquet_files(root: Path, table: str = TYPE) -> list[Path]:
    return sorted((root / table).glob("**/*.parquet"))

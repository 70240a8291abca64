"""Schema drift end to end: the simulator adds a field mid-stream, turns an int field into a
float, and sends a message type no dictionary knows.  Nothing is lost, and every table is read
whole, across files written before and after the drift, by DuckDB, Polars and pyarrow.dataset.
The README's queries run on the result."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest
import trio
from e2e_util import data_bodies
from memnet import KEY, MemoryNet, SentCount, config, mock_clock, run, wait_for

from capture.app import Daemon
from capture.sim.config import SimConfig
from capture.sim.faults import UNKNOWN_TYPE_NAME, Faults
from capture.sim.server import Simulator

TYPES = ["OptionNbboQuote", "StockPrint", "StockBookQuote"]
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    tmp = tmp_path_factory.mktemp("drift")
    root, record = tmp / "data", tmp / "sent"
    sim_cfg = SimConfig(
        api_keys=frozenset({KEY}),
        rate=20,
        seed=71,
        record_dir=record,
        faults=Faults(
            new_field_after_messages=400, int_to_float_after_messages=600, unknown_type_every=50
        ),
    )
    cfg = config(root, ["A", "M"], TYPES, output={"rotate_interval": 60})

    async def scenario(daemon: Daemon, sim: Simulator, net: MemoryNet) -> None:
        await trio.sleep(70)  # files before the drift (at ~4 s), and after: 60 s, the stop
        sim.cfg = sim.cfg.with_overrides(rate=0.0)
        total = SentCount(record, data_bodies)  # parsed again only when the record grows
        await wait_for(lambda: sum(w.stats.messages for w in daemon.workers) == total())

    trio.run(run, sim_cfg, cfg, scenario, clock=mock_clock())
    sent = Counter({t: 0 for t in [*TYPES, UNKNOWN_TYPE_NAME]})
    for (msg_type, _), bodies in data_bodies(record).items():
        sent[msg_type] += len(bodies)
    return root, dict(sent)


def test_nothing_is_lost_and_every_reader_reads_every_table_whole(
    drifted: tuple[Path, dict[str, int]],
) -> None:
    root, sent = drifted
    assert sent[UNKNOWN_TYPE_NAME] > 0
    for table, count in sent.items():
        glob = f"{root}/{table}/**/*.parquet"
        files = list((root / table).rglob("*.parquet"))
        assert len(files) >= 4, f"{table}: files from before and after the drift"
        n = duckdb.sql(
            f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true, "
            "union_by_name = true)"
        ).fetchall()[0][0]
        assert n == count, (table, n, count)
        assert (
            pl.scan_parquet(glob, hive_partitioning=True).select(pl.len()).collect().item() == count
        )
        assert ds.dataset(root / table, partitioning="hive").count_rows() == count


def test_drifted_values_are_kept_and_readable(drifted: tuple[Path, dict[str, int]]) -> None:
    root, _ = drifted
    extra = duckdb.sql(
        f"SELECT _extra FROM read_parquet('{root}/OptionNbboQuote/**/*.parquet') "
        "WHERE _extra IS NOT NULL"
    ).fetchall()
    kept = [json.loads(e[0])["message"] for e in extra]
    assert any(m.get("prcFramework") == "Equity" for m in kept)  # the new field
    assert any(isinstance(v, float) and not v.is_integer() for m in kept for v in m.values())
    unknown = duckdb.sql(
        f"SELECT _mtyp, message FROM read_parquet('{root}/{UNKNOWN_TYPE_NAME}/**/*.parquet')"
    ).fetchall()
    assert {r[0] for r in unknown} == {UNKNOWN_TYPE_NAME}
    assert all(isinstance(json.loads(r[1]), dict) for r in unknown)


def test_the_readme_queries_run(drifted: tuple[Path, dict[str, int]]) -> None:
    root, _ = drifted
    queries = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    statements = [s.strip() for q in queries for s in q.split(";") if s.strip()]
    assert len(statements) == 4
    for sql in statements:
        sql = sql.replace("'data/", f"'{root}/").replace("DATE '2026-11-24'", "DATE '2025-06-02'")
        sql = sql.replace("stripe = 'C'", "stripe = 'A'")
        result = duckdb.sql(sql).arrow()  # Arrow: tz-aware timestamps need no pytz
        result = result.read_all() if hasattr(result, "read_all") else result
        if "capture_events" not in sql:
            assert result.num_rows > 0, sql

"""The lake with stripe-group processes (``supervision.processes = 2``): the real
``mlink-capture run``, each group process with its own lake task for its stripes, both
committing to the same Iceberg tables (one SQLite catalog file) on moto's S3 server on loopback.
Every (stripe, seq) is in the tables exactly once, and the parent's health file shows the lake
of both processes as one."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from moto.server import ThreadedMotoServer
from pyiceberg.catalog.sql import SqlCatalog
from test_process import BIN, _wait, simulator, write_config

from capture.lake.tables import CATALOG_NAME, HW_PREFIX

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
__all__ = ["simulator"]  # the fixture, shared with test_process

TYPES = ["OptionNbboQuote", "StockPrint"]
S3_ENV = {"AWS_ACCESS_KEY_ID": "groups-id", "AWS_SECRET_ACCESS_KEY": "groups-secret"}


@pytest.fixture
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _health(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc


def _ids(table: pa.Table) -> list[tuple[str, int]]:
    stripes = pc.cast(table.column("_stripe"), pa.utf8()).to_pylist()
    return sorted(zip(stripes, table.column("_seq").to_pylist(), strict=True))


def test_two_group_processes_commit_every_stripe_seq_once(
    tmp_path: Path, simulator: tuple[int, Path], moto_url: str
) -> None:
    port, _ = simulator
    boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y",
    ).create_bucket(Bucket="groups")  # fmt: skip
    cfg = write_config(tmp_path, port, processes=2)
    cfg.write_text(
        cfg.read_text()
        + f"""
[lake]
host_id = "grouphost"
bucket = "groups"
endpoint = "{moto_url}"
commit_interval = 0.5
disk_budget_mb = 512
"""
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLINK_API_KEY", "NOTIFY_SOCKET")}
    log = tmp_path / "daemon.log"
    with log.open("w") as log_file:
        daemon = subprocess.Popen(
            [str(BIN), "run", "--config", str(cfg)],
            env={**env, **S3_ENV}, stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    health_file = tmp_path / "run" / "health.json"
    try:

        def streaming() -> bool:
            doc = _health(health_file)
            stripes = doc.get("stripes", {})
            return doc.get("lake", {}).get("processes") == 2 and len(stripes) == 2 and all(
                v["state"] == "streaming" and v["rows_written"] > 0 for v in stripes.values()
            )

        _wait(streaming, 60, "both stripes streaming with rows written")
        daemon.send_signal(signal.SIGHUP)  # rotate: the files so far are committed, then lake

        def both_committed() -> bool:
            doc = _health(health_file)
            lake = doc.get("lake", {})
            return (
                len(doc.get("process", {}).get("processes", [])) == 2
                and lake.get("processes") == 2
                and lake.get("commits", 0) >= 2 * len(TYPES)
            )

        _wait(both_committed, 90, "both group processes committing")
        lake = _health(health_file)["lake"]
        assert lake["state"] == "ok" and lake["conflicts"] == 0
        assert lake["disk_budget_mb"] == 512  # 256 each: the budget is split between them
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert sum(e["event"] == "stopped" for e in events) == 3  # both groups and the parent
    # (a commit that fails under load is retried by the lake: what counts is the tables)

    root = tmp_path / "data"
    cat = SqlCatalog(
        CATALOG_NAME, uri=f"sqlite:///{root / '_lake' / 'catalog.db'}",
        **{"s3.endpoint": moto_url, "s3.region": "us-east-1",
           "s3.access-key-id": S3_ENV["AWS_ACCESS_KEY_ID"],
           "s3.secret-access-key": S3_ENV["AWS_SECRET_ACCESS_KEY"]},
    )  # fmt: skip
    for table in TYPES:
        tbl = cat.load_table(("mlink", table))
        in_table = _ids(tbl.scan().to_arrow())
        local = _ids(ds.dataset(root / table, format="parquet", partitioning="hive").to_table())
        assert in_table == local, table  # every (stripe, seq) written, once
        assert len(set(in_table)) == len(in_table), table
        assert {s for s, _ in in_table} == {"A", "M"}, table
        # each process wrote its own stripe's watermark into the shared table's snapshots
        for stripe in ("A", "M"):
            marks = [
                int(v) for snap in tbl.snapshots() if snap.summary is not None
                for k, v in snap.summary.additional_properties.items()
                if k == f"{HW_PREFIX}grouphost.{stripe}"
            ]  # fmt: skip
            assert max(marks) == max(q for s, q in in_table if s == stripe), (table, stripe)

"""Crashes between the lake's steps, with real processes: SIGKILL the daemon right after an
upload, right after a catalog commit, while the journal retires, right after a local delete;
restart it; every frame the simulator sent (and that was durable) is in the Iceberg tables
exactly once (moto's S3 server on loopback, the default SQLite catalog)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from crash_harness import LAKE_ENV, TYPES, Harness, Stored, frame_keys
from moto.server import ThreadedMotoServer
from pyiceberg.catalog.sql import SqlCatalog

from capture import journal
from capture.lake.tables import CATALOG_NAME

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def table_rows(h: Harness, url: str) -> Stored:
    cat = SqlCatalog(
        CATALOG_NAME,
        uri=f"sqlite:///{h.root / '_lake' / 'catalog.db'}",
        **{
            "s3.endpoint": url,
            "s3.region": "us-east-1",
            "s3.access-key-id": LAKE_ENV["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": LAKE_ENV["AWS_SECRET_ACCESS_KEY"],
        },
    )
    rows = Stored()
    for t in TYPES:
        rows.add(cat.load_table(("mlink", t)).scan().to_arrow())
    return rows


def local_files(h: Harness) -> list[Path]:
    return [p for t in TYPES for p in (h.root / t).rglob("*.parquet")]


def committed_files(h: Harness) -> set[str]:
    """The data files the daemon runs logged as committed (locally)."""
    return {line.split('"path": "')[1].split('"')[0]
            for log in h.logs for line in log.read_text().splitlines()
            if '"event": "committed"' in line and "capture_events" not in line}  # fmt: skip


@pytest.mark.parametrize(
    ("point", "delete_local"),
    [
        ("lake.uploaded", False),
        ("lake.committed", False),
        ("journal.retire", False),
        ("lake.committed", True),
        ("lake.deleted", True),
    ],
)
def test_a_kill_between_lake_steps_keeps_every_frame_once(
    tmp_path: Path, moto_url: str, point: str, delete_local: bool
) -> None:
    bucket = f"crash-{point.replace('.', '-')}-{int(delete_local)}"
    boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y",
    ).create_bucket(Bucket=bucket)  # fmt: skip
    h = Harness(tmp_path)
    h.lake = {
        "host_id": "crash-host",
        "bucket": bucket,
        "endpoint": moto_url,
        "commit_interval": 0.2,
        "delete_local": delete_local,
    }
    h.start_simulator()
    try:
        # A kill anywhere first: a run's journal segment is closed only at the next start, and
        # only closed segments are retired, which local deletion waits for. (A run's seconds
        # count from its first "connecting": imports done, signal handlers in place.)
        h.kill_after(2.5, hup_at=2.0)
        for n in (1, 2):  # twice at the point: the first restart recovers, then again
            h.crash_at(f"{point}:{n}", hup_at=1.0)
        h.graceful(1.0)  # recovers; its stop commits the rest to the lake (shutdown flush)
        if delete_local:  # retires what the previous run sealed: its files can go
            h.graceful(1.0, until=lambda: len(local_files(h)) < len(committed_files(h)))
    finally:
        h.stop()
    in_table = table_rows(h, moto_url)
    counts = h.check(in_table)  # the tables: nothing twice, nothing never sent, nothing lost
    assert counts["required"] > 200, counts
    if not delete_local:
        local = h.check()  # and the local files still hold exactly the same frames
        assert local["rows"] == counts["rows"]
    else:
        # A file is deleted once it is in a snapshot and its frames are out of the journal
        # (else recovery would write them again); the files committed at the last shutdown
        # stay until the next start retires their journal segments.
        low = min(
            (r.first_seq for _, r in journal.read_records(h.root / "_journal" / "stripe=A")
             if isinstance(r, journal.MessageRecord)),
            default=None,
        )  # fmt: skip
        left, written = local_files(h), committed_files(h)
        assert len(left) < len(written), "some files were deleted"
        for path in left:
            meta = pq.read_metadata(path).metadata
            assert low is not None and int(meta[b"mlink.seq_max"]) >= low, path
            assert set(frame_keys(pq.read_table(path))) <= set(in_table.count), path

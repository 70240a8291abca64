"""Compaction of the Iceberg tables: one replace snapshot per closed partition, against moto's
S3 server on loopback and the SQLite catalog. A reader scanning the table in a loop sees exactly
the rows that were there before; SIGKILL after an upload or a commit leaves the old files or the
new ones, and a rerun finishes; reruns change nothing."""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from compact_util import NS, TYPE, ns_of, write_live
from moto.server import ThreadedMotoServer
from pyiceberg.catalog.sql import SqlCatalog
from runtime_env import runtime_env

from capture.compact import CompactionSettings
from capture.config import LakeConfig
from capture.lake.files import scan_local, sha256_of
from capture.lake.store import ObjectStore
from capture.lake.tables import CATALOG_NAME, LakeTables
from capture.lakecompact import SUMMARY_RANGES, compact_lake, partition_files
from capture.lakeretention import SUMMARY_BEFORE, apply_lake

S3_ENV = {"AWS_ACCESS_KEY_ID": "lake-test-id", "AWS_SECRET_ACCESS_KEY": "lake-test-secret"}
HOST = "host1"
DAY1, DAY2 = "2026-01-05", "2026-01-06"
NOW = ns_of("2026-01-08T00:00:00+00:00")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def lake(tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> LakeConfig:
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    bucket = f"lc-{abs(hash(str(tmp_path))) % 10**12}"
    boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y",
    ).create_bucket(Bucket=bucket)  # fmt: skip
    return LakeConfig(host_id=HOST, bucket=bucket, endpoint=moto_url)


def catalog(root: Path, url: str) -> SqlCatalog:
    return SqlCatalog(
        CATALOG_NAME,
        uri=f"sqlite:///{(root / '_lake' / 'catalog.db').absolute()}",
        **{"s3.endpoint": url, "s3.region": "us-east-1",
           "s3.access-key-id": S3_ENV["AWS_ACCESS_KEY_ID"],
           "s3.secret-access-key": S3_ENV["AWS_SECRET_ACCESS_KEY"]},
    )  # fmt: skip


def publish(root: Path, cfg: LakeConfig, stripes: tuple[str, ...]) -> int:
    """Upload and commit the committed local files above the table's watermark, as the
    daemon's lake task does (one commit per stripe, its watermark in the summary). Returns how
    many files."""
    store, tables = ObjectStore(cfg), LakeTables(cfg, root)
    n = 0
    for stripe in stripes:
        hw = tables.watermarks(TYPE, [stripe]).get(stripe, -1)
        files = [f for f in scan_local(root, stripe, since=None) if f.seq_max > hw]
        if not files:
            continue
        uris = []
        for f in files:
            key = f.key(cfg.prefix, cfg.host_id)
            store.put_new(key, f.path, size=f.size, sha256=sha256_of(f.path))
            uris.append(f"s3://{cfg.bucket}/{key}")
        schema = pq.read_schema(files[0].path)
        tables.commit(TYPE, schema, uris, {stripe: max(f.seq_max for f in files)})
        n += len(files)
    return n


def write_days(root: Path) -> None:
    seq = 0
    for stripe in ("3", "7"):
        for day in (DAY1, DAY2):
            seq = write_live(root, start_ns=ns_of(f"{day}T13:00:00+00:00"), seconds=1800,
                             rows=3000, seq0=seq, stripe=stripe, seed=seq + 1)  # fmt: skip


def row_ids(table: pa.Table) -> Counter[tuple[Any, ...]]:
    """What a user reads, as a multiset: stripe, sequence, contract, price, exact receive ns."""
    cols = [pc.cast(table.column("_stripe"), pa.utf8()).to_pylist()]
    cols += [table.column(c).to_pylist() for c in ("_seq", "okey_tk", "okey_xx", "bidPrice",
                                                   "_recv_time_ns")]  # fmt: skip
    return Counter(zip(*cols, strict=True))


def table_state(cat: SqlCatalog) -> tuple[Counter[tuple[Any, ...]], dict[Any, list[str]]]:
    tbl = cat.load_table(("mlink", TYPE))
    files = {k: sorted(f.file_path.rsplit("/", 1)[-1] for f in v)
             for k, v in partition_files(tbl).items()}  # fmt: skip
    return row_ids(tbl.scan().to_arrow()), files


def settings(root: Path) -> CompactionSettings:
    return CompactionSettings(root=root, row_group_rows=4096)


def test_a_reader_scanning_in_a_loop_sees_exactly_the_rows_before(
    tmp_path: Path, lake: LakeConfig, moto_url: str
) -> None:
    root = tmp_path / "data"
    write_days(root)
    assert publish(root, lake, ("3", "7")) > 8
    cat = catalog(root, moto_url)
    before, files_before = table_state(cat)
    assert sum(before.values()) == 12_000 and len(files_before) == 4
    assert all(len(v) > 1 for v in files_before.values())

    stop = threading.Event()
    scans: list[Counter[tuple[Any, ...]]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        cat_r = catalog(root, moto_url)
        while not stop.is_set():
            try:  # refreshed every time: the newest snapshot when the scan is planned
                scans.append(row_ids(cat_r.load_table(("mlink", TYPE)).scan().to_arrow()))
            except BaseException as exc:  # noqa: BLE001 - the assertion below reports it
                errors.append(exc)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        while len(scans) < 2 and not errors:  # the loop runs before the first commit
            stop.wait(0.05)
        out = compact_lake(lake, settings(root), root=root, now_ns=NOW)
        seen = len(scans)
        while len(scans) < seen + 2 and not errors:  # and after the last one
            stop.wait(0.05)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert out.failed == [] and out.units_compacted == 4, out
    assert len(scans) >= 4
    assert all(s == before for s in scans), [sum(s.values()) for s in scans]

    after, files_after = table_state(cat)
    assert after == before
    assert set(files_after) == set(files_before)
    for names in files_after.values():  # one compacted file each, none of the old ones
        assert len(names) == 1 and names[0].startswith(f"{HOST}_") and "-c" in names[0]
    tbl = cat.load_table(("mlink", TYPE))
    snap = tbl.current_snapshot()
    assert snap is not None and snap.summary is not None
    assert snap.summary["operation"].value == "overwrite"
    assert snap.summary[SUMMARY_RANGES]  # the replaced files' receive-sequence ranges
    # the compacted object itself: sorted by the key, large row groups, its ranges
    path = next(f.file_path for f in partition_files(tbl)[(dt.date(2026, 1, 5), "3")])
    with tbl.io.new_input(path).open() as stream:
        pf = pq.ParquetFile(pa.BufferReader(stream.read()))
    kv = {k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items()}
    assert kv["mlink.compacted"] == "1" and kv["mlink.seq_ranges"] == "0-2999"
    assert pf.metadata.row_group(0).num_rows == 3000
    tk = pf.read(columns=["okey_tk"]).column(0).cast(pa.utf8()).to_pylist()
    assert tk == sorted(tk)

    # A rerun changes nothing; a file committed late into a closed day (a restart's replay)
    # is compacted with that day's file on the next run.
    again = compact_lake(lake, settings(root), root=root, now_ns=NOW)
    assert again.units_compacted == 0 and again.failed == []
    assert cat.load_table(("mlink", TYPE)).current_snapshot() == snap
    write_live(root, start_ns=ns_of(f"{DAY2}T20:00:00+00:00"), seconds=60, rows=500,
               seq0=20_000, stripe="7", seed=99)  # fmt: skip
    publish(root, lake, ("7",))
    grown, _ = table_state(cat)
    assert sum(grown.values()) == 12_500
    third = compact_lake(lake, settings(root), root=root, now_ns=NOW)
    assert third.units_compacted == 1 and third.files_in == 2, third
    final, files_final = table_state(cat)
    assert final == grown and all(len(v) == 1 for v in files_final.values())


def test_an_open_day_and_another_hosts_files_are_left_alone(
    tmp_path: Path, lake: LakeConfig, moto_url: str
) -> None:
    root = tmp_path / "data"
    write_days(root)
    publish(root, lake, ("3",))
    other = tmp_path / "other"
    write_live(other, start_ns=ns_of(f"{DAY1}T14:00:00+00:00"), seconds=600, rows=1000,
               seq0=0, stripe="3", seed=5)  # fmt: skip
    shared = f"sqlite:///{(root / '_lake' / 'catalog.db').absolute()}"  # one catalog, two hosts
    publish(other, LakeConfig(host_id="host2", bucket=lake.bucket, endpoint=lake.endpoint,
                              catalog_uri=shared), ("3",))  # fmt: skip
    cat = catalog(root, moto_url)
    before, files_before = table_state(cat)
    # DAY2 ends at 2026-01-07T00:00; with min_age 1 h it is still open at 00:30
    out = compact_lake(lake, settings(root), root=root,
                       now_ns=ns_of("2026-01-07T00:30:00+00:00"))  # fmt: skip
    assert out.units_compacted == 1 and out.failed == []
    after, files_after = table_state(cat)
    assert after == before
    day1 = files_after[(dt.date(2026, 1, 5), "3")]
    assert [n for n in day1 if n.startswith("host2_")] == [
        n for n in files_before[(dt.date(2026, 1, 5), "3")] if n.startswith("host2_")
    ]
    assert len([n for n in day1 if n.startswith(f"{HOST}_")]) == 1
    assert files_after[(dt.date(2026, 1, 6), "3")] == files_before[(dt.date(2026, 1, 6), "3")]


CONFIG = """
[source]
url = "ws://127.0.0.1:9/mlink/jsonf"
stripes = ["A"]
[output]
root = "{root}"
[compaction]
row_group_rows = 4096
[lake]
host_id = "host1"
bucket = "{bucket}"
endpoint = "{url}"
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "committed"),  # committed: partitions whose replace snapshot went through
    [
        ("lake_compact.uploaded", 0),
        ("lake_compact.uploaded:3", 2),
        ("lake_compact.committed", 1),
        ("lake_compact.committed:2", 2),
    ],
)
def test_sigkill_at_each_step_leaves_old_or_new_and_a_rerun_finishes(
    tmp_path: Path, lake: LakeConfig, moto_url: str, point: str, committed: int
) -> None:
    root = tmp_path / "data"
    write_days(root)
    publish(root, lake, ("3", "7"))
    cat = catalog(root, moto_url)
    before, files_before = table_state(cat)

    config = tmp_path / "capture.toml"
    config.write_text(CONFIG.format(root=root, bucket=lake.bucket, url=moto_url))

    def run(crash: str | None) -> subprocess.CompletedProcess[str]:
        """``mlink-capture compact`` (the local tree is compacted first, then the lake)."""
        env = runtime_env(**S3_ENV, PYTHONPATH=str(REPO))  # as installed: no numpy, pandas
        env.pop("MLINK_CAPTURE_CRASH_AT", None)
        if crash:
            env["MLINK_CAPTURE_CRASH_AT"] = crash
        return subprocess.run(
            [sys.executable, "-m", "capture", "compact", "--config", str(config)],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    def lake_units(done: subprocess.CompletedProcess[str]) -> int:
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        summary = json.loads(done.stdout[done.stdout.index("{") :])
        assert summary["lake_compaction"]["failed"] == []
        return int(summary["lake_compaction"]["units_compacted"])

    crashed = run(point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    rows, files = table_state(cat)
    assert rows == before
    compacted = [k for k, v in files.items() if v != files_before[k]]
    assert len(compacted) == committed
    for key in compacted:  # the new file alone, never beside the old ones
        assert len(files[key]) == 1 and not set(files[key]) & set(files_before[key])

    assert lake_units(run(None)) == 4 - committed
    rows, files = table_state(cat)
    assert rows == before and all(len(v) == 1 for v in files.values())
    snap = cat.load_table(("mlink", TYPE)).current_snapshot()
    assert lake_units(run(None)) == 0
    assert cat.load_table(("mlink", TYPE)).current_snapshot() == snap


def objects(lake: LakeConfig, day: str) -> list[str]:
    client = boto3.client(
        "s3", endpoint_url=lake.endpoint, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y",
    )  # fmt: skip
    prefix = f"{lake.prefix}/data/{TYPE}/date={day}/"
    listed = client.list_objects_v2(Bucket=lake.bucket, Prefix=prefix).get("Contents", [])
    # (deleting through pyarrow's S3 file system leaves empty "directory" markers: not data)
    return sorted(o["Key"].rsplit("/", 1)[-1] for o in listed if not o["Key"].endswith("/"))


def test_retention_deletes_whole_days_expires_and_frees_the_objects(
    tmp_path: Path, lake: LakeConfig, moto_url: str
) -> None:
    root = tmp_path / "data"
    write_days(root)
    publish(root, lake, ("3", "7"))
    assert compact_lake(lake, settings(root), root=root, now_ns=NOW).units_compacted == 4
    seq = 30_000

    def a_new_day() -> None:  # the daemon goes on committing (new watermark carriers)
        nonlocal seq
        for stripe in ("3", "7"):
            seq = write_live(root, start_ns=ns_of("2026-01-07T10:00:00+00:00") + seq * NS,
                             seconds=60, rows=200, seq0=seq, stripe=stripe, seed=seq)  # fmt: skip
        publish(root, lake, ("3", "7"))

    a_new_day()
    cat = catalog(root, moto_url)
    before, _ = table_state(cat)
    day2_compacted = [n for n in objects(lake, DAY2) if "-c" in n]
    assert len(objects(lake, DAY1)) > 2 and len(day2_compacted) == 2

    now = time.time_ns() + 60 * NS
    today = dt.datetime.fromtimestamp(now // NS, dt.UTC).date()
    days = (today - dt.date(2026, 1, 6)).days  # DAY1 is past the bound, DAY2 is not
    short = LakeConfig(host_id=HOST, bucket=lake.bucket, endpoint=lake.endpoint,
                       snapshot_retention_hours=0.001)  # fmt: skip
    out = apply_lake(short, lambda t: days, root=root, now_ns=now)
    assert out.failed == [] and out.partitions_removed == [
        f"{TYPE}/date={DAY1}/stripe=3", f"{TYPE}/date={DAY1}/stripe=7"]  # fmt: skip
    after, files = table_state(cat)
    assert after == Counter({k: v for k, v in before.items() if not (
        ns_of(f"{DAY1}T00:00:00+00:00") <= k[5] < ns_of(f"{DAY2}T00:00:00+00:00"))})  # fmt: skip
    assert sum(before.values()) - sum(after.values()) == 6000
    assert {d for d, _ in files} == {dt.date(2026, 1, 6), dt.date(2026, 1, 7)}
    tbl = cat.load_table(("mlink", TYPE))
    assert any(s.summary is not None and s.summary[SUMMARY_BEFORE] for s in tbl.snapshots())
    # the live objects compaction replaced are no snapshot's any more: deleted
    assert objects(lake, DAY2) == day2_compacted
    # the removed day's compacted objects: freed once the watermark carriers moved on
    a_new_day()
    again = apply_lake(short, lambda t: days, root=root, now_ns=time.time_ns() + 60 * NS)
    assert again.failed == [] and again.partitions_removed == []
    assert objects(lake, DAY1) == []
    assert objects(lake, DAY2) == day2_compacted
    final, _ = table_state(cat)
    assert sum(final.values()) == sum(after.values()) + 400


def test_verify_lake_accepts_compacted_files(tmp_path: Path, lake: LakeConfig) -> None:
    """``verify --lake`` after compaction: the local files under the watermark are in the
    table's compacted files (by the receive-sequence span), a unit's parts may overlap."""
    from capture.config import Config
    from capture.lake.verify import verify_lake

    root = tmp_path / "data"
    seq = 0
    for stripe in ("A", "M"):
        for day in (DAY1, DAY2):
            seq = write_live(root, start_ns=ns_of(f"{day}T13:00:00+00:00"), seconds=1800,
                             rows=3000, seq0=seq, stripe=stripe, seed=seq + 1)  # fmt: skip
    publish(root, lake, ("A", "M"))
    cfg = Config.from_mapping({
        "source": {"url": "ws://127.0.0.1:9/mlink/jsonf", "stripes": ["A", "M"]},
        "output": {"root": str(root)},
        "lake": {"host_id": HOST, "bucket": lake.bucket, "endpoint": lake.endpoint},
    })  # fmt: skip
    assert verify_lake(cfg).problems == []
    # small files: every unit becomes several parts whose _seq spans overlap
    small = CompactionSettings(root=root, row_group_rows=1024, target_file_bytes=1)
    out = compact_lake(lake, small, root=root, now_ns=NOW)
    assert out.units_compacted == 4 and out.files_out > 4
    report = verify_lake(cfg)
    assert report.problems == [] and report.data_files == out.files_out


def test_objects_the_daemons_own_expiry_left_behind_are_swept(
    tmp_path: Path, lake: LakeConfig, moto_url: str
) -> None:
    """The daemon expires snapshots too (hourly) and deletes no objects: the files compaction
    replaced are then referenced by no snapshot, and the next run deletes them by their keys."""
    root = tmp_path / "data"
    write_days(root)
    publish(root, lake, ("3", "7"))
    assert compact_lake(lake, settings(root), root=root, now_ns=NOW).units_compacted == 4
    seq = 40_000
    for stripe in ("3", "7"):  # the daemon commits on: new watermark carriers
        seq = write_live(root, start_ns=ns_of("2026-01-07T10:00:00+00:00") + seq * NS,
                         seconds=60, rows=200, seq0=seq, stripe=stripe, seed=seq)  # fmt: skip
    publish(root, lake, ("3", "7"))
    cat = catalog(root, moto_url)
    before, _ = table_state(cat)
    short = LakeConfig(host_id=HOST, bucket=lake.bucket, endpoint=lake.endpoint,
                       snapshot_retention_hours=0.001)  # fmt: skip
    now = time.time_ns() + 60 * NS
    assert LakeTables(short, root).expire(TYPE, now // 1_000_000) > 0  # the daemon's expiry
    live_keys = [n for n in objects(lake, DAY1) if "-c" not in n]
    assert len(live_keys) > 2  # left behind: no snapshot names them any more

    out = apply_lake(short, lambda t: 0, root=root, now_ns=now)
    assert out.failed == [] and out.partitions_removed == []
    assert out.objects_deleted >= len(live_keys)
    assert [n for n in objects(lake, DAY1) if "-c" not in n] == []
    assert len(objects(lake, DAY1)) == 2  # the compacted files of both stripes stay
    assert table_state(cat)[0] == before


class _RaceStore(ObjectStore):
    """The real store; after its first compacted upload, another compaction of the same lake
    runs to the end (a second `mlink-capture compact` of this host, say) before the first
    one commits."""

    def __init__(self, cfg: LakeConfig, race: Any) -> None:
        super().__init__(cfg)
        self._race = race

    def put_new(self, key: str, path: Path, *, size: int, sha256: str) -> Any:
        done = super().put_new(key, path, size=size, sha256=sha256)
        race, self._race = self._race, None
        if race is not None:
            race()
        return done


def test_a_compaction_that_loses_its_partition_to_another_plans_again(
    tmp_path: Path, lake: LakeConfig, moto_url: str
) -> None:
    """pyiceberg retries the lost commit on the refreshed table and finds the files it
    replaces gone (ValidationException).  Was: the exception ended the whole run with a
    traceback (seen under load in the SIGKILL test).  Now the partition is planned again
    from the new snapshot and found done."""
    root = tmp_path / "data"
    write_days(root)
    publish(root, lake, ("3", "7"))
    cat = catalog(root, moto_url)
    before, files_before = table_state(cat)
    other: list[Any] = []

    def race() -> None:
        other.append(compact_lake(lake, settings(root), root=root, now_ns=NOW))

    out = compact_lake(lake, settings(root), root=root, now_ns=NOW, store=_RaceStore(lake, race))
    (second,) = other
    assert second.failed == [] and second.units_compacted == 4, second
    assert out.failed == [] and out.units_compacted == 0 and out.commit_retries == 1, out
    after, files_after = table_state(cat)
    assert after == before and set(files_after) == set(files_before)
    assert all(len(v) == 1 for v in files_after.values())

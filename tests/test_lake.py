"""The lake: uploads to a real S3 API (moto's server on loopback) that never overwrite, Iceberg
commits through pyiceberg's SQL catalog (SQLite), exactly one row per (stripe, seq) sent.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import trio
import trio.testing
from e2e_util import KEY, daemon_config, run_capture
from moto.server import ThreadedMotoServer
from pyiceberg.catalog.sql import SqlCatalog

from capture import events
from capture.config import Config, ConfigError, LakeConfig
from capture.credentials import SecretRef
from capture.lake.files import LakeFile, scan_local, sha256_of
from capture.lake.pipeline import Lake
from capture.lake.store import ObjectConflict, ObjectStore, StoreError
from capture.lake.tables import CATALOG_NAME, HW_PREFIX, LakeTables
from capture.lake.verify import verify_lake
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data

TYPES = ["OptionNbboQuote", "StockPrint", "LiveSurfaceCurve"]
STRIPES = ["A", "M"]
S3_ENV = {"AWS_ACCESS_KEY_ID": "lake-test-id", "AWS_SECRET_ACCESS_KEY": "lake-test-secret"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_url: str, request: pytest.FixtureRequest) -> str:
    name = "lake-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    s3(moto_url).create_bucket(Bucket=name)
    return name


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's own chain (no key sources in [lake]) finds these; moto accepts any key."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)


def s3(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )


def lake_section(url: str, bucket: str, **over: Any) -> dict[str, Any]:
    return {"host_id": "host1", "bucket": bucket, "endpoint": url, "commit_interval": 0.5, **over}


def catalog(cfg: Config, url: str) -> SqlCatalog:
    assert cfg.lake is not None
    uri = f"sqlite:///{(cfg.output.root / '_lake' / 'catalog.db').absolute()}"
    props = {"s3.endpoint": url, "s3.region": "us-east-1", **_fileio_keys()}
    return SqlCatalog(CATALOG_NAME, uri=uri, **props)


def _fileio_keys() -> dict[str, str]:
    return {
        "s3.access-key-id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "s3.secret-access-key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
    }


def local_rows(root: Path, table: str) -> pa.Table:
    return ds.dataset(root / table, format="parquet", partitioning="hive").to_table()


def ids(table: pa.Table) -> list[tuple[str, int]]:
    stripes = pc.cast(table.column("_stripe"), pa.utf8()).to_pylist()
    return sorted(zip(stripes, table.column("_seq").to_pylist(), strict=True))


# -- the object store ----------------------------------------------------------------------------


def test_moto_refuses_a_second_conditional_put(moto_url: str, bucket: str) -> None:
    """The premise of the uploads: the S3 API on loopback implements If-None-Match: *."""
    client = s3(moto_url)
    client.put_object(Bucket=bucket, Key="k", Body=b"one", IfNoneMatch="*")
    with pytest.raises(client.exceptions.ClientError) as info:
        client.put_object(Bucket=bucket, Key="k", Body=b"two", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"


def test_put_new_never_overwrites_and_recognises_its_own_retry(
    tmp_path: Path, moto_url: str, bucket: str
) -> None:
    environ = {"KID": "lake-key-id", "KSEC": "lake-secret"}
    cfg = LakeConfig(
        host_id="h", bucket=bucket, endpoint=moto_url,
        access_key_id=SecretRef(env="KID"), secret_access_key=SecretRef(env="KSEC"),
    )  # fmt: skip
    store = ObjectStore(cfg, environ)
    ours, other = tmp_path / "ours", tmp_path / "other"
    ours.write_bytes(b"PAR1 ours")
    other.write_bytes(b"PAR1 someone else's")
    size, digest = ours.stat().st_size, sha256_of(ours)
    assert store.put_new("x/a.parquet", ours, size=size, sha256=digest) == "put"
    assert store.put_new("x/a.parquet", ours, size=size, sha256=digest) == "there"
    with pytest.raises(ObjectConflict, match="different content"):
        store.put_new(
            "x/a.parquet", other, size=other.stat().st_size, sha256=sha256_of(other)
        )
    assert s3(moto_url).get_object(Bucket=bucket, Key="x/a.parquet")["Body"].read() == b"PAR1 ours"


def test_store_errors_are_one_type_and_name_no_secret(tmp_path: Path, bucket: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    dead = LakeConfig(
        host_id="h", bucket=bucket, endpoint="http://127.0.0.1:9",
        access_key_id=SecretRef(env="KID"), secret_access_key=SecretRef(env="KSEC"),
    )  # fmt: skip
    store = ObjectStore(dead, {"KID": "id-123", "KSEC": "very-secret-value"})
    with pytest.raises(StoreError) as info:
        store.put_new("k", path, size=1, sha256=sha256_of(path))
    assert "very-secret-value" not in str(info.value)
    missing = ObjectStore(dead, {})  # configured sources, nothing in them
    with pytest.raises(StoreError, match="KID"):
        missing.put_new("k", path, size=1, sha256=sha256_of(path))


def test_keys_are_deterministic_and_per_host() -> None:
    import datetime as dt

    f = LakeFile(Path("p"), "OptionNbboQuote", dt.date(2026, 12, 3), "A1", 7, 1234, 10, 99)
    key = f.key("mlink", "host1")
    assert key == (
        "mlink/data/OptionNbboQuote/date=2026-12-03/stripe=A1/"
        "host1_A1_00000000000000000007_00000000000000001234.parquet"
    )
    assert f.key("mlink", "host2") != key and f.key("", "host1").startswith("data/")


# -- configuration -------------------------------------------------------------------------------


def test_lake_config_problems_name_their_keys(tmp_path: Path) -> None:
    def problems(lake: dict[str, Any], **output: Any) -> list[str]:
        raw: dict[str, Any] = {
            "source": {"url": "ws://127.0.0.1:1/mlink/jsonf", "stripes": ["A"]},
            "output": {"root": str(tmp_path), **output},
            "lake": lake,
        }
        with pytest.raises(ConfigError) as info:
            Config.from_mapping(raw)
        return info.value.problems

    got = problems({"bucket": "Bad_Bucket", "secret_access_key": "s3cr3t", "color": 1})
    text = "; ".join(got)
    assert "capture.host_id: required with [lake] (or lake.host_id, its old name)" in text
    assert "lake.bucket: must be an S3 bucket name" in text
    assert "lake.secret_access_key: secrets are not read from the TOML" in text
    assert "lake.color" in text
    assert "s3cr3t" not in text
    got = problems(
        {"host_id": "h", "bucket": "b-1", "catalog_uri": "postgresql://u:pw@db/x"},
        timezone="America/Chicago",
    )
    assert any(p.startswith("lake.catalog_uri: holds a password") for p in got)
    assert any('output.timezone must be "UTC"' in p for p in got)
    assert "pw" not in "".join(got).replace("password", "")
    assert problems({"host_id": "h", "bucket": "b-1", "catalog": "rest"}) == [
        'lake.catalog_uri: required when lake.catalog = "rest"'
    ]
    assert problems({"host_id": "h", "bucket": "b-1", "access_key_id_env": "K"}) == [
        "lake.secret_access_key_env: configure both lake.access_key_id and "
        "lake.secret_access_key, or neither (lake.access_key_id_env is configured)"
    ]
    ok = Config.from_mapping(
        {
            "source": {"url": "ws://127.0.0.1:1/mlink/jsonf", "stripes": ["A"]},
            "output": {"root": str(tmp_path)},
        }
    )
    assert ok.lake is None  # no section: local files only, as before


# -- the daemon with the lake ----------------------------------------------------------------------


def capture_with_lake(
    tmp_path: Path, moto_url: str, bucket: str, *, seconds: float = 2.0, **over: Any
) -> tuple[Config, dict[tuple[str, str], list[bytes]], dict[str, Any]]:
    record, root = tmp_path / "sent", tmp_path / "data"
    sim = SimConfig(api_keys=frozenset({KEY}), rate=120, seed=23, record_dir=record)
    lake = lake_section(moto_url, bucket, **over)
    daemon, code = trio.run(
        lambda: run_capture(
            sim,
            lambda port: daemon_config(root, port, STRIPES, TYPES, lake=lake),
            seconds=seconds,
        )
    )
    assert code == 0
    return daemon.cfg, load_sent_data(record), daemon.health_doc()


@pytest.mark.e2e
def test_every_row_sent_is_in_the_iceberg_table_exactly_once(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None
) -> None:
    cfg, sent, doc = capture_with_lake(tmp_path, moto_url, bucket)
    cat = catalog(cfg, moto_url)
    total = 0
    for table in [*TYPES, events.TABLE]:
        tbl = cat.load_table(("mlink", table))
        scanned = tbl.scan().to_arrow()
        local = local_rows(cfg.output.root, table)
        assert ids(scanned) == ids(local), table  # every (stripe, seq): once, none missing
        if table != events.TABLE:  # (events share the _seq of their moment)
            assert len(set(ids(scanned))) == scanned.num_rows
            # and that is every data message the simulator sent
            assert scanned.num_rows == sum(len(b) for (t, _), b in sent.items() if t == table)
        total += scanned.num_rows
        # the snapshot carries this host's high-water _seq per stripe
        summary = tbl.current_snapshot().summary
        for stripe in STRIPES:
            seqs = pc.filter(
                local.column("_seq"), pc.equal(pc.cast(local.column("_stripe"), pa.utf8()), stripe)
            )
            if len(seqs):
                assert summary[f"{HW_PREFIX}host1.{stripe}"] == str(pc.max(seqs).as_py())
        # partitioned like the local layout: UTC day of _recv_time, stripe
        assert [f.name for f in tbl.spec().fields] == ["recv_day", "stripe"]
        # exact nanoseconds survive the lake too
        assert scanned.schema.field("_recv_time_ns").type == pa.int64()
    assert total > 500
    # every object is a readable Parquet file under the deterministic key
    client = s3(moto_url)
    listing = client.list_objects_v2(Bucket=bucket, Prefix="mlink/data/")
    keys = [o["Key"] for o in listing["Contents"]]
    root = cfg.output.root
    local_files = [
        p for p in root.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)
    ]  # fmt: skip
    assert len(keys) == len(local_files)
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        meta = pq.read_metadata(io.BytesIO(body)).metadata
        stripe = meta[b"mlink.stripe"].decode()
        lo, hi = int(meta[b"mlink.seq_min"]), int(meta[b"mlink.seq_max"])
        assert key.endswith(f"/host1_{stripe}_{lo:020d}_{hi:020d}.parquet")
    lake = doc["lake"]
    assert lake["upload_lag_files"] == 0 and lake["uncommitted_files"] == 0
    assert lake["state"] == "ok" and lake["conflicts"] == 0


# -- crashes between the steps, outages ----------------------------------------------------------


def fresh_lake(cfg: Config, **kw: Any) -> Lake:
    return Lake(cfg, STRIPES, os.environ, **kw)


def flush(lake: Lake) -> None:
    """``lake.flush()`` with its pauses between attempts on trio's mock clock: the attempts,
    their uploads and commits are real (in threads); a pause is skipped once the loop has been
    idle for 20 ms (a threshold of 0 would spin the loop while a thread works)."""
    trio.run(lake.flush, clock=trio.testing.MockClock(autojump_threshold=0.02))


@pytest.fixture(scope="module")
def captured_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A capture without the lake, run once per module: ``local_capture`` copies it."""
    tmp = tmp_path_factory.mktemp("local-capture")
    record, root = tmp / "sent", tmp / "data"
    sim = SimConfig(api_keys=frozenset({KEY}), rate=120, seed=29, record_dir=record)
    _, code = trio.run(
        lambda: run_capture(
            sim, lambda port: daemon_config(root, port, STRIPES, TYPES), seconds=1.5
        )
    )
    assert code == 0
    return tmp


@pytest.fixture
def local_capture(captured_once: Path, tmp_path: Path) -> Config:
    """The files of a capture without the lake (what a crashed lake left behind), this test's
    own copy under ``tmp_path``: its config, as the capture ran with it."""
    for part in ("sent", "data"):
        shutil.copytree(captured_once / part, tmp_path / part, symlinks=True)
    return daemon_config(tmp_path / "data", 1, STRIPES, TYPES)


def with_lake(cfg: Config, url: str, bucket: str, **over: Any) -> Config:
    raw_lake = lake_section(url, bucket, **over)
    return Config(
        source=cfg.source, auth=cfg.auth, output=cfg.output, pipeline=cfg.pipeline,
        journal=cfg.journal, supervision=cfg.supervision, health=cfg.health,
        logging=cfg.logging, lake=LakeConfig.from_table(raw_lake),
    )  # fmt: skip


def table_ids(cfg: Config, url: str, table: str) -> list[tuple[str, int]]:
    return ids(catalog(cfg, url).load_table(("mlink", table)).scan().to_arrow())


@pytest.mark.e2e
def test_a_restart_after_each_step_adds_nothing_twice(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None, local_capture: Config
) -> None:
    base = local_capture
    cfg = with_lake(base, moto_url, bucket)
    tables = [*TYPES, events.TABLE]
    want = {t: ids(local_rows(cfg.output.root, t)) for t in tables}

    # 1. uploaded, then "crash" (the lake's memory is lost) before the catalog commit
    first = fresh_lake(cfg)
    trio.run(first._startup_scans)
    trio.run(first._uploads)
    assert first.stats.uploaded_files == sum(len(scan_local(cfg.output.root, s, since=None))
                                             for s in STRIPES)  # fmt: skip
    # 2. the next run finds the objects there (412: the same files) and commits them
    second = fresh_lake(cfg)
    flush(second)
    assert second.stats.already_there == first.stats.uploaded_files
    assert second.stats.uploaded_files == 0 and second.stats.conflicts == 0
    assert {t: table_ids(cfg, moto_url, t) for t in tables} == want
    # 3. committed, then "crash" before the journal retire / the state file: a third run
    #    recognises every file by the watermarks and commits nothing
    (cfg.output.root / "_lake").joinpath("host1.A.since").unlink()
    third = fresh_lake(cfg)
    flush(third)
    assert third.stats.recognised_committed == first.stats.uploaded_files
    assert third.stats.commits == 0
    assert {t: table_ids(cfg, moto_url, t) for t in tables} == want
    assert third.floor("A") is None and third.floor("M") is None  # nothing held any more

    # verify --lake agrees; then a file added twice (under another key) is a problem it names
    report = verify_lake(cfg, os.environ)
    assert report.problems == [] and report.pending_local == 0
    assert report.data_files == first.stats.uploaded_files and report.tables == len(tables)
    f = scan_local(cfg.output.root, "A", since=None)[0]
    key = "mlink/data/again.parquet"
    s3(moto_url).upload_file(str(f.path), bucket, key)
    schema = pq.read_schema(f.path)
    third.tables.commit(f.table, schema, [f"s3://{bucket}/{key}"], {"A": 10**9})
    problems = verify_lake(cfg, os.environ).problems
    assert any(f"stripe A _seq {f.seq_min}..{f.seq_max}" in p for p in problems), problems


@pytest.mark.e2e
def test_store_outage_holds_the_journal_and_catches_up(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None, local_capture: Config
) -> None:
    base = local_capture
    dead = with_lake(base, "http://127.0.0.1:9", bucket)
    lake = fresh_lake(dead)
    flush(lake)  # the store cannot be reached: nothing uploaded, nothing lost
    doc = lake.health()
    files = sum(len(scan_local(base.output.root, s, since=None)) for s in STRIPES)
    assert doc["upload_lag_files"] == files > 0
    assert doc["upload_lag_bytes"] > 0 and doc["last_commit_age_s"] is None
    assert doc["errors"] == 5 and "PutObject" in doc["last_error"]  # flush tried 5 times
    lows = {s: min(f.seq_min for f in scan_local(base.output.root, s, since=None)) for s in STRIPES}
    assert {s: lake.floor(s) for s in STRIPES} == lows  # the journal keeps those frames
    # the store is back
    lake.store = ObjectStore(with_lake(base, moto_url, bucket).lake)  # type: ignore[arg-type]
    lake.tables = fresh_lake(with_lake(base, moto_url, bucket)).tables
    flush(lake)
    doc = lake.health()
    assert doc["upload_lag_files"] == 0 and doc["uncommitted_files"] == 0
    assert doc["last_commit_age_s"] is not None
    assert {s: lake.floor(s) for s in STRIPES} == {"A": None, "M": None}
    cfg = with_lake(base, moto_url, bucket)
    for t in [*TYPES, events.TABLE]:
        assert table_ids(cfg, moto_url, t) == ids(local_rows(base.output.root, t))


@pytest.mark.e2e
def test_a_zombie_with_the_same_host_id_never_overwrites(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None, local_capture: Config
) -> None:
    base = local_capture
    cfg = with_lake(base, moto_url, bucket)
    files = scan_local(base.output.root, "A", since=None)
    victim = files[0]
    key = victim.key("mlink", "host1")
    s3(moto_url).put_object(Bucket=bucket, Key=key, Body=b"another host's bytes")
    lake = fresh_lake(cfg)
    flush(lake)
    doc = lake.health()
    assert doc["state"] == "conflict" and doc["conflicts"] == 1
    assert s3(moto_url).get_object(Bucket=bucket, Key=key)["Body"].read() == b"another host's bytes"
    # its rows are held (journal and local file), the other tables went in
    assert lake.floor("A") is not None and lake.floor("A") <= victim.seq_min
    in_table = table_ids(cfg, moto_url, victim.table)
    assert not any(s == "A" and victim.seq_min <= n <= victim.seq_max for s, n in in_table)


# -- snapshot expiry ---------------------------------------------------------------------------


def test_expiry_keeps_every_hosts_newest_watermark(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None
) -> None:
    """Old snapshots go, but for each watermark key the newest snapshot carrying it stays (a
    restart reads it), and the table's rows are untouched."""
    cfg = LakeConfig(host_id="h1", bucket=bucket, endpoint=moto_url)
    other = LakeConfig(host_id="h2", bucket=bucket, endpoint=moto_url)
    root = tmp_path / "data"
    mine, theirs = LakeTables(cfg, root), LakeTables(other, root)
    client = s3(moto_url)
    for i in range(6):
        table = pa.table(
            {
                "_recv_time": pa.array([1_796_000_000_000_000 + i], pa.timestamp("us", tz="UTC")),
                "_stripe": pa.array(["A" if i < 2 else "M"]).dictionary_encode(),
                "_seq": pa.array([i], pa.int64()),
            }
        )
        path = tmp_path / f"{i}.parquet"
        pq.write_table(table, path)
        client.upload_file(str(path), bucket, f"d/{i}.parquet")
        tables, stripe = (mine, "A") if i < 2 else (theirs, "M")  # h1 stops committing early
        tables.commit("T", table.schema, [f"s3://{bucket}/d/{i}.parquet"], {stripe: i})
    tbl = mine.catalog().load_table(("mlink", "T"))
    assert len(tbl.snapshots()) == 6
    expired = mine.expire("T", older_than_ms=2**62)  # everything is old
    tbl = mine.catalog().load_table(("mlink", "T"))
    kept = {s.snapshot_id for s in tbl.snapshots()}
    assert expired == 6 - len(kept) and len(kept) == 2  # h1's last commit and the current one
    assert mine.watermarks("T", ["A"]) == {"A": 1}
    assert theirs.watermarks("T", ["M"]) == {"M": 5}
    assert sorted(tbl.scan().to_arrow().column("_seq").to_pylist()) == list(range(6))
    assert tbl.properties["commit.manifest-merge.enabled"] == "true"


def test_lake_demo_shows_the_tables_with_every_local_row(tmp_path: Path) -> None:
    """``mlink-capture demo --lake``, as a user runs it (its own process: it sets up logging)."""
    root = tmp_path / "demo"
    cli = Path(sys.executable).parent / "mlink-capture"
    done = subprocess.run(
        [str(cli), "demo", "--lake", "--seconds", "3", "--root", str(root)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    shown = {
        line.split()[0].removeprefix("mlink."): int(line.split()[1])
        for line in done.stdout.splitlines()
        if line.startswith("  mlink.")
    }
    assert events.TABLE in shown and "OptionNbboQuote" in shown
    for table, rows in shown.items():
        assert rows == local_rows(root, table).num_rows > 0, table


@pytest.mark.e2e
def test_catalog_outage_uploads_go_on_and_commits_catch_up(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None, local_capture: Config
) -> None:
    base = local_capture
    down = with_lake(base, moto_url, bucket, catalog_uri="postgresql+psycopg2://u@127.0.0.1:9/x")
    lake = fresh_lake(down)
    flush(lake)
    doc = lake.health()
    files = sum(len(scan_local(base.output.root, s, since=None)) for s in STRIPES)
    assert doc["upload_lag_files"] == 0, "the store is up: every file was uploaded"
    assert doc["uncommitted_files"] == files and doc["last_commit_age_s"] is None
    assert "opening the catalog" in doc["last_error"] and "port 9 failed" in doc["last_error"]
    assert all(lake.floor(s) is not None for s in STRIPES)  # the journal keeps the frames
    # the catalog is back (the default SQLite one)
    up = with_lake(base, moto_url, bucket)
    lake.tables = fresh_lake(up).tables
    flush(lake)
    doc = lake.health()
    assert doc["uncommitted_files"] == 0 and doc["last_commit_age_s"] is not None
    assert lake.stats.uploaded_files == files  # uploaded once, not again
    for t in [*TYPES, events.TABLE]:
        assert table_ids(up, moto_url, t) == ids(local_rows(base.output.root, t))


@pytest.mark.e2e
def test_a_file_below_the_watermark_is_added_once_or_held_if_it_overlaps(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None, local_capture: Config
) -> None:
    """Recovery can rewrite rows a sink error aborted after later files of the table were
    committed: such a file lies below the watermark but is not in the table. It is added if
    no data file of its stripe overlaps it, and held (a conflict, never added) if one does."""
    base = local_capture
    cfg = with_lake(base, moto_url, bucket)
    flush(fresh_lake(cfg))
    local = scan_local(base.output.root, "A", since=None)
    # The first StockPrint file (a capture that crosses a minute boundary commits two): one
    # below its first frame overlaps no file of the table.
    committed = min((f for f in local if f.table == "StockPrint"), key=lambda f: f.seq_min)
    assert committed.seq_min > 0
    rows = pq.read_table(committed.path).slice(0, 1)

    def rewritten(seq: int, name: str) -> Path:
        row = rows.set_column(rows.schema.get_field_index("_seq"), "_seq", pa.array([seq]))
        meta = {
            "mlink.msg_type": "StockPrint", "mlink.stripe": "A", "mlink.rows": "1",
            "mlink.seq_min": str(seq), "mlink.seq_max": str(seq),
        }  # fmt: skip
        path = committed.path.parent / name
        pq.write_table(row.replace_schema_metadata(meta), path)
        return path

    rewritten(committed.seq_min - 1, "part-rewritten-below.parquet")  # no overlap
    rewritten(committed.seq_min, "part-rewritten-overlap.parquet")  # its row is in the table
    second = fresh_lake(cfg)
    flush(second)
    in_table = table_ids(cfg, moto_url, "StockPrint")
    assert in_table.count(("A", committed.seq_min - 1)) == 1
    assert in_table.count(("A", committed.seq_min)) == 1
    assert second.health()["conflicts"] == 1 and second.health()["state"] == "conflict"
    assert second.floor("A") == committed.seq_min  # the overlapping file keeps its frames held


# -- verify --lake, as an operator runs it -----------------------------------------------------


def _verify_cli(cfg_path: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "mlink-capture"
    return subprocess.run(
        [str(cli), "verify", "--config", str(cfg_path), "--lake"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **S3_ENV},
    )  # fmt: skip


@pytest.mark.e2e
def test_verify_lake_command_exit_codes_and_what_it_prints(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None, local_capture: Config
) -> None:
    base = local_capture
    cfg = with_lake(base, moto_url, bucket)
    flush(fresh_lake(cfg))
    toml = tmp_path / "capture.toml"
    head = f"""
[source]
url = "ws://127.0.0.1:1/mlink/jsonf"
stripes = {STRIPES!r}
message_types = {TYPES!r}

[auth]
api_key_env = "MLINK_TEST_KEY"

[output]
root = "{base.output.root}"
"""
    toml.write_text(head)
    done = _verify_cli(toml)
    assert done.returncode == 2 and "needs --config with a [lake] section" in done.stderr
    toml.write_text(
        head + f'\n[lake]\nhost_id = "host1"\nbucket = "{bucket}"\nendpoint = "{moto_url}"\n'
    )
    files = sum(len(scan_local(base.output.root, s, since=None)) for s in STRIPES)

    # A clean table: exit 0, the counts, no problem.
    done = _verify_cli(toml)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == (
        f"lake: {len(TYPES) + 1} tables, {files} data files, "
        "0 local files not committed yet, 0 problems"
    )
    assert "lake problem" not in done.stdout

    # Rows missing: stripe M's rows deleted from the table (its data files dropped), while the
    # local files that hold them are under the watermark. (One file, or two when the capture
    # crossed a rotation boundary: a problem line for each.)
    cat = catalog(cfg, moto_url)
    quotes = cat.load_table(("mlink", "OptionNbboQuote"))
    victims = [f for f in scan_local(base.output.root, "M", since=None)
               if f.table == "OptionNbboQuote"]  # fmt: skip
    assert victims
    quotes.delete("_stripe == 'M'")
    done = _verify_cli(toml)
    assert done.returncode == 1
    problems = [line for line in done.stdout.splitlines() if line.startswith("lake problem: ")]
    assert sorted(problems) == sorted(
        f"lake problem: OptionNbboQuote: {v.path} is under the watermark but not in the table"
        for v in victims
    ), done.stdout

    # A row twice: one local file of StockPrint added again under another key.
    twice = min((f for f in scan_local(base.output.root, "A", since=None)
                 if f.table == "StockPrint"), key=lambda f: f.seq_min)  # fmt: skip
    key = "mlink/data/StockPrint/again.parquet"
    s3(moto_url).upload_file(str(twice.path), bucket, key)
    LakeTables(cfg.lake, cfg.output.root).commit(  # type: ignore[arg-type]
        "StockPrint", pq.read_schema(twice.path), [f"s3://{bucket}/{key}"], {"A": twice.seq_max}
    )
    done = _verify_cli(toml)
    assert done.returncode == 1
    assert any(
        line.startswith(f"lake problem: StockPrint: stripe A _seq {twice.seq_min}..{twice.seq_max}")
        for line in done.stdout.splitlines()
    ), done.stdout
    assert done.stdout.splitlines()[-1].endswith(f", {len(victims) + 1} problems")

    # The catalog cannot be read: exit 1, one line on stderr naming the step.
    toml.write_text(
        head + f'\n[lake]\nhost_id = "host1"\nbucket = "{bucket}"\nendpoint = "{moto_url}"\n'
        'catalog_uri = "postgresql+psycopg2://u@127.0.0.1:9/x"\n'
    )
    done = _verify_cli(toml)
    assert done.returncode == 1
    assert done.stderr.startswith("lake: opening the catalog"), done.stderr[-2000:]


# -- orphan objects after snapshot expiry ------------------------------------------------


@pytest.mark.e2e
def test_orphan_objects_older_than_the_safety_age_go_referenced_and_pending_stay(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None, local_capture: Config
) -> None:
    import datetime as dt
    import time

    base = local_capture
    cfg = with_lake(base, moto_url, bucket)
    flush(fresh_lake(cfg))
    sim = SimConfig(api_keys=frozenset({KEY}), rate=120, seed=41, record_dir=tmp_path / "sent2")
    _, code = trio.run(
        lambda: run_capture(
            sim, lambda port: daemon_config(base.output.root, port, STRIPES, TYPES), seconds=1.5
        )
    )  # a second run: more files, a second snapshot of every table
    assert code == 0
    lake = fresh_lake(cfg)
    flush(lake)
    client = s3(moto_url)
    table = "StockPrint"
    tbl = catalog(cfg, moto_url).load_table(("mlink", table))
    first, second = sorted(tbl.snapshots(), key=lambda s: s.timestamp_ms)
    assert lake.tables.expire(table, older_than_ms=2**62) == 1  # the first one goes
    day = scan_local(base.output.root, "A", since=None)[0].date.isoformat()
    where = f"mlink/data/{table}/date={day}/stripe=A/"

    def put(key: str) -> str:
        client.put_object(Bucket=bucket, Key=key, Body=b"PAR1 not in any snapshot")
        return key

    ours = put(where + "host1_A_00000000000000999000_00000000000000999001.parquet")
    theirs = put(where + "host2_A_00000000000000999000_00000000000000999001.parquet")
    # a file uploaded and not committed yet (the catalog is slow, say): it must stay
    f = [f for f in scan_local(base.output.root, "A", since=None) if f.table == table][-1]
    held = f.path.parent / "part-held.parquet"
    meta = {
        "mlink.msg_type": table, "mlink.stripe": "A", "mlink.rows": "1",
        "mlink.seq_min": "999100", "mlink.seq_max": "999100",
    }  # fmt: skip
    one = pq.read_table(f.path).slice(0, 1)
    one = one.set_column(one.schema.get_field_index("_seq"), "_seq", pa.array([999100]))
    pq.write_table(one.replace_schema_metadata(meta), held)
    lake._ready.clear()
    trio.run(lake._startup_scans)
    trio.run(lake._uploads)
    pending = [e for e in lake._entries.values() if e.file.path == held]
    assert pending and pending[0].uri is not None
    time.sleep(1.1)
    cutoff = dt.datetime.now(dt.UTC)
    time.sleep(1.1)
    young = put(where + "host1_A_00000000000000999200_00000000000000999201.parquet")

    before = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    removed = lake.remove_orphans(table, cutoff)
    after = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    gone = before - after
    prefix = f"s3://{bucket}/"
    refs, _ = lake.tables.referenced(table)
    assert second.manifest_list in refs and first.manifest_list not in refs
    assert {r.removeprefix(prefix) for r in refs} <= after  # every referenced object stays
    assert first.manifest_list.removeprefix(prefix) in gone  # the expired snapshot's list
    assert ours in gone
    assert theirs in after and young in after  # another host's; younger than the safety age
    assert pending[0].uri.removeprefix(prefix) in after  # uploaded, not committed yet
    assert removed == len(gone) and all("/data/" not in k or k == ours for k in gone)
    # nothing the table needs went: it reads exactly as before
    tbl = catalog(cfg, moto_url).load_table(("mlink", table))
    assert ids(tbl.scan().to_arrow()) == [
        i for i in ids(local_rows(base.output.root, table)) if i != ("A", 999100)
    ]

"""The lake through a REST catalog: the daemon commits over HTTP on loopback to an Iceberg REST
server (tests/rest_catalog_server.py: the REST protocol, with pyiceberg's SqlCatalog doing the
metadata work) that requires a bearer token, objects in moto's S3 server. What a user sees:
every (stripe, seq) sent is in ``table.scan()`` (read through a REST client) exactly once, the
snapshots carry the watermarks, and no secret reaches logs, health or error messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trio
from e2e_util import KEY, daemon_config, run_capture
from pyiceberg.catalog import Catalog, load_catalog
from rest_catalog_server import RestCatalogServer
from test_lake import (  # noqa: F401 - fixtures
    S3_ENV,
    aws_env,
    bucket,
    captured_once,
    flush,
    ids,
    local_capture,
    local_rows,
    moto_url,
    s3,
    with_lake,
)

from capture import events
from capture.config import Config, ConfigError, LakeConfig
from capture.credentials import SecretRef
from capture.lake.pipeline import Lake
from capture.lake.tables import HW_PREFIX, CatalogError, LakeTables
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data

TYPES = ["OptionNbboQuote", "StockPrint", "LiveSurfaceCurve"]
STRIPES = ["A", "M"]
CLIENT_ID = "capture-host1"
CLIENT_SECRET = "rest-client-secret-7f3a9c"
TOKEN = "rest-bearer-token-c41d2e"  # what the token endpoint issues
SECRETS = (CLIENT_SECRET, TOKEN)


def fileio(moto: str) -> dict[str, str]:
    return {
        "s3.endpoint": moto,
        "s3.region": "us-east-1",
        "s3.access-key-id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "s3.secret-access-key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture
def rest(tmp_path: Path, moto_url: str, bucket: str) -> Iterator[RestCatalogServer]:  # noqa: F811
    server = RestCatalogServer(
        tmp_path / "rest-catalog.db", f"s3://{bucket}/warehouse",
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token=TOKEN, fileio=fileio(moto_url),
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


def reader(url: str, moto: str, **auth: str) -> Catalog:
    """A REST client as an analyst would open one (its own credential)."""
    return load_catalog(
        "reader", type="rest", uri=url, warehouse="lake",
        **{"oauth2-server-uri": f"{url}/v1/oauth/tokens"},
        **(auth or {"credential": f"{CLIENT_ID}:{CLIENT_SECRET}"}), **fileio(moto),
    )  # fmt: skip


def rest_lake(url: str, secret_file: Path, **over: Any) -> dict[str, Any]:
    return {
        "catalog": "rest",
        "catalog_uri": url,
        "catalog_warehouse": "lake",
        "catalog_oauth2_uri": f"{url}/v1/oauth/tokens",
        "catalog_credential": {"file": str(secret_file)},
        **over,
    }


def secret_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rest-credential"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


# -- the daemon, end to end --------------------------------------------------------------------


@pytest.mark.e2e
def test_the_daemon_commits_through_a_rest_catalog_exactly_once(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None,  # noqa: F811
    rest: RestCatalogServer, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    url = rest.url
    cred = secret_file(tmp_path, f"{CLIENT_ID}:{CLIENT_SECRET}")
    record, root = tmp_path / "sent", tmp_path / "data"
    sim = SimConfig(api_keys=frozenset({KEY}), rate=120, seed=37, record_dir=record)
    lake = {"host_id": "host1", "bucket": bucket, "endpoint": moto_url, "commit_interval": 0.5,
            **rest_lake(url, cred)}  # fmt: skip
    daemon, code = trio.run(
        lambda: run_capture(
            sim, lambda port: daemon_config(root, port, STRIPES, TYPES, lake=lake), seconds=2.0
        )
    )
    assert code == 0
    sent = load_sent_data(record)
    doc = daemon.health_doc()

    cat = reader(url, moto_url)
    assert sorted(cat.list_tables("mlink")) == sorted(("mlink", t) for t in [*TYPES, events.TABLE])
    for table in [*TYPES, events.TABLE]:
        tbl = cat.load_table(("mlink", table))
        scanned = tbl.scan().to_arrow()
        local = local_rows(root, table)
        assert ids(scanned) == ids(local), table  # every (stripe, seq) once, none missing
        if table != events.TABLE:
            assert len(set(ids(scanned))) == scanned.num_rows
            assert scanned.num_rows == sum(len(b) for (t, _), b in sent.items() if t == table)
        summary = tbl.current_snapshot().summary  # type: ignore[union-attr]
        for stripe in STRIPES:
            seqs = [n for s, n in ids(local) if s == stripe]
            if seqs:
                assert summary[f"{HW_PREFIX}host1.{stripe}"] == str(max(seqs))
        assert [f.name for f in tbl.spec().fields] == ["recv_day", "stripe"]
        assert tbl.metadata_location.startswith(f"s3://{bucket}/warehouse/")
    assert doc["lake"]["state"] == "ok" and doc["lake"]["uncommitted_files"] == 0

    # it went over REST, authenticated: a token from the credential, tables staged and created
    # by a commit, data added by commits; no request was refused
    paths = rest.requests
    assert ("POST", "/v1/oauth/tokens") in paths
    assert ("GET", "/v1/config") in paths
    tables_path = "/v1/wh1/namespaces/mlink/tables/"
    commits = [p for m, p in paths if m == "POST" and p.startswith(tables_path)]
    assert len(commits) >= 2 * (len(TYPES) + 1)  # a create and at least one append each
    assert rest.refused == 0

    # no secret in the logs, the health file or the health document
    out, err = capfd.readouterr()
    logs = out + err
    assert "lake: committed" in logs  # the logs are there to look at
    health_file = (root / "health.json").read_text()
    for secret in SECRETS:
        assert secret not in logs
        assert secret not in health_file
        assert secret not in json.dumps(doc)
        assert secret not in repr(daemon.cfg)


# -- credentials --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_wrong_credential_is_refused_and_named_without_its_secret(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None, local_capture: Config,  # noqa: F811
    rest: RestCatalogServer,
) -> None:  # fmt: skip
    url = rest.url
    base = local_capture
    wrong = "wrong-secret-0d9e8b"
    cred = secret_file(tmp_path, f"{CLIENT_ID}:{wrong}")
    cfg = with_lake(base, moto_url, bucket, **rest_lake(url, cred))
    lake = Lake(cfg, STRIPES, {})
    flush(lake)
    doc = lake.health()
    assert doc["upload_lag_files"] == 0, "the store is up: every file was uploaded"
    assert doc["uncommitted_files"] > 0 and doc["last_commit_age_s"] is None
    assert doc["last_error"].startswith("opening the catalog: OAuthError: invalid_client")
    assert wrong not in json.dumps(doc) and rest.refused > 0
    # the right one: everything is committed
    cred.write_text(f"{CLIENT_ID}:{CLIENT_SECRET}\n")
    lake.tables = LakeTables(cfg.lake, cfg.output.root, {})  # type: ignore[arg-type]
    flush(lake)
    assert lake.health()["uncommitted_files"] == 0
    tbl = reader(url, moto_url).load_table(("mlink", "StockPrint"))
    assert ids(tbl.scan().to_arrow()) == ids(local_rows(base.output.root, "StockPrint"))


def one_row_file(tmp_path: Path, moto: str, name: str) -> tuple[pa.Schema, str]:
    table = pa.table({
        "_recv_time": pa.array([1_796_000_000_000_000], pa.timestamp("us", tz="UTC")),
        "_stripe": pa.array(["A"]).dictionary_encode(),
        "_seq": pa.array([7], pa.int64()),
    })  # fmt: skip
    path = tmp_path / "one.parquet"
    pq.write_table(table, path)
    s3(moto).upload_file(str(path), name, "d/one.parquet")
    return table.schema, f"s3://{name}/d/one.parquet"


def test_a_bearer_token_and_a_prefix_from_the_configuration(
    tmp_path: Path, moto_url: str, bucket: str, aws_env: None,  # noqa: F811
    rest: RestCatalogServer,
) -> None:  # fmt: skip
    """A catalog that does not announce its path prefix: ``catalog_prefix`` supplies it; a
    bearer token (``catalog_token``) instead of a credential: no token request is made."""
    url = rest.url
    rest.announce_prefix = False
    environ = {"REST_TOKEN": TOKEN}
    section = {
        "host_id": "h1", "bucket": bucket, "endpoint": moto_url, "catalog": "rest",
        "catalog_uri": url, "catalog_warehouse": "lake", "catalog_token": {"env": "REST_TOKEN"},
    }  # fmt: skip
    without = LakeTables(LakeConfig.from_table(section), tmp_path, environ)
    with pytest.raises(CatalogError, match=r"opening the catalog: .*NoSuchWarehouseException"):
        without.catalog()
    cfg = LakeConfig.from_table({**section, "catalog_prefix": "wh1"})
    tables = LakeTables(cfg, tmp_path, environ)
    schema, uri = one_row_file(tmp_path, moto_url, bucket)
    tables.commit("T", schema, [uri], {"A": 7})
    assert tables.watermarks("T", ["A"]) == {"A": 7}
    assert ("POST", "/v1/oauth/tokens") not in rest.requests
    assert ("POST", "/v1/wh1/namespaces/mlink/tables/T") in rest.requests
    tbl = reader(url, moto_url, token=TOKEN, prefix="wh1").load_table(("mlink", "T"))
    assert tbl.scan().to_arrow().column("_seq").to_pylist() == [7]
    # a wrong token: refused, and the message does not carry it
    wrong = LakeTables(cfg, tmp_path, {"REST_TOKEN": "not-the-token-5e6f"})
    with pytest.raises(CatalogError) as info:
        wrong.catalog()
    assert "NotAuthorizedException" in str(info.value)
    assert "not-the-token-5e6f" not in str(info.value)


def test_the_warehouse_asked_for_is_the_configured_one(
    tmp_path: Path, moto_url: str, bucket: str, rest: RestCatalogServer  # noqa: F811
) -> None:
    url = rest.url
    section = {
        "host_id": "h1", "bucket": bucket, "endpoint": moto_url, "catalog": "rest",
        "catalog_uri": url, "catalog_token": {"env": "REST_TOKEN"},
    }  # fmt: skip
    environ = {"REST_TOKEN": TOKEN}
    for warehouse in (None, "other"):  # the default (the bucket's location), another name
        over = {"catalog_warehouse": warehouse} if warehouse else {}
        tables = LakeTables(LakeConfig.from_table({**section, **over}), tmp_path, environ)
        with pytest.raises(CatalogError, match="no such warehouse"):
            tables.catalog()
    ok = LakeTables(LakeConfig.from_table({**section, "catalog_warehouse": "lake"}),
                    tmp_path, environ)  # fmt: skip
    assert ok.catalog().list_namespaces() == [("mlink",)]


# -- configuration --------------------------------------------------------------------------------


def problems(tmp_path: Path, lake: dict[str, Any]) -> list[str]:
    raw: dict[str, Any] = {
        "source": {"url": "ws://127.0.0.1:1/mlink/jsonf", "stripes": ["A"]},
        "output": {"root": str(tmp_path)},
        "capture": {"host_id": "h"},
        "lake": {"bucket": "b-1", **lake},
    }
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw)
    return info.value.problems


def test_rest_keys_are_read_and_their_problems_name_the_key(tmp_path: Path) -> None:
    rest = {"catalog": "rest", "catalog_uri": "https://catalog.example.net/api/catalog"}
    cfg = LakeConfig.from_table({
        "host_id": "h", "bucket": "b-1", **rest, "catalog_warehouse": "prod",
        "catalog_credential": {"credential": "rest-cred"}, "catalog_scope": "PRINCIPAL_ROLE:ALL",
        "catalog_oauth2_uri": "https://idp.example.net/token", "catalog_prefix": "prod",
    })  # fmt: skip
    assert cfg.catalog_credential == SecretRef(credential="rest-cred")
    assert cfg.catalog_warehouse == "prod" and cfg.catalog_prefix == "prod"
    assert cfg.catalog_scope == "PRINCIPAL_ROLE:ALL"
    assert cfg.catalog_oauth2_uri == "https://idp.example.net/token"
    old = LakeConfig.from_table(
        {"host_id": "h", "bucket": "b-1", **rest, "catalog_token_env": "REST_TOKEN"}
    )  # the flat spelling every secret key has
    assert old.catalog_token == SecretRef(env="REST_TOKEN")

    # a secret written in the file: refused, never echoed
    got = problems(tmp_path, {**rest, "catalog_token": "tok-3b1c9d", "catalog_credential": "id:s"})
    assert any(p.startswith("lake.catalog_token: secrets are not read from the TOML") for p in got)
    assert any(p.startswith("lake.catalog_credential: secrets are not read") for p in got)
    assert "tok-3b1c9d" not in "; ".join(got) and "id:s" not in "; ".join(got)
    # both ways of authenticating at once
    assert problems(tmp_path, {
        **rest, "catalog_token": {"env": "T"}, "catalog_credential": {"env": "C"},
    }) == [
        "lake.catalog_token: configure lake.catalog_credential (an OAuth2 client credential) "
        "or lake.catalog_token (a bearer token), not both"
    ]  # fmt: skip
    # REST keys with the SQL catalog: they would be ignored, so they are refused
    assert problems(
        tmp_path, {"catalog_warehouse": "prod", "catalog_token": {"env": "T"}}
    ) == [
        'lake.catalog_token: only with lake.catalog = "rest"',
        'lake.catalog_warehouse: only with lake.catalog = "rest"',
    ]
    got = problems(tmp_path, {**rest, "catalog_oauth2_uri": "idp/token", "catalog_prefix": "/x"})
    assert got == [
        "lake.catalog_oauth2_uri: must start with https://",
        "lake.catalog_prefix: must be path components of letters, digits, '_', '.', '=', '-' "
        "joined by '/'",
    ]


# -- a hostile catalog ---------------------------------------------------------------------------

HOSTILE_ANSWERS: dict[str, tuple[int, bytes]] = {
    "not json": (200, b"<html>gateway</html>"),
    "truncated json": (200, b'{"metadata-location": "s3://x/y", "metadata": {"format-ver'),
    "deeply nested": (200, b'{"metadata":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "huge error": (500, json.dumps({"error": {"message": "x" * 5_000_000, "code": 500}}).encode()),
    "wrong shape": (200, b'{"metadata-location": 7, "metadata": [], "config": "no"}'),
    "odd status": (418, b"{}"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("answer", sorted(HOSTILE_ANSWERS))
def test_a_hostile_catalog_answer_is_an_error_in_health_and_loses_nothing(
    answer: str, tmp_path: Path, moto_url: str, aws_env: None, local_capture: Config,  # noqa: F811
    rest: RestCatalogServer,
) -> None:  # fmt: skip
    """Whatever the catalog answers, the lake reports it and keeps the files for later; once
    the catalog behaves, everything is committed exactly once."""
    name = f"lake-hostile-{sorted(HOSTILE_ANSWERS).index(answer)}"  # a bucket per answer
    s3(moto_url).create_bucket(Bucket=name)
    base = local_capture
    cred = secret_file(tmp_path, f"{CLIENT_ID}:{CLIENT_SECRET}")
    cfg = with_lake(base, moto_url, name, **rest_lake(rest.url, cred))
    rest.sabotage = lambda method, path: HOSTILE_ANSWERS[answer]
    lake = Lake(cfg, STRIPES, {})
    flush(lake)  # returns: nothing the catalog says escapes as an exception
    doc = lake.health()
    assert doc["uncommitted_files"] > 0 and doc["last_commit_age_s"] is None
    assert doc["last_error"], "the failure is in health"
    assert len(doc["last_error"]) < 10_000, "a huge answer is not copied into health"
    rest.sabotage = None
    lake.tables = LakeTables(cfg.lake, cfg.output.root, {})  # type: ignore[arg-type]
    flush(lake)
    assert lake.health()["uncommitted_files"] == 0
    tbl = reader(rest.url, moto_url).load_table(("mlink", "StockPrint"))
    scanned = ids(tbl.scan().to_arrow())
    assert scanned == ids(local_rows(base.output.root, "StockPrint"))
    assert len(set(scanned)) == len(scanned)

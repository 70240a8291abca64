"""Many hosts, one lake: three daemons (different host ids, stripes and local disks) commit to the
same Iceberg tables at the same time through a real PostgreSQL catalog and moto's S3 server, all
on loopback. One scan of each table sees every host's rows, each (stripe, seq) exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import trio
from e2e_util import KEY, KEY_ENV, daemon_config, received, sent_count
from moto.server import ThreadedMotoServer
from pg_server import postgres
from pyiceberg.catalog.sql import SqlCatalog

from capture import events
from capture.app import Daemon
from capture.lake.tables import CATALOG_NAME, HW_PREFIX
from capture.sim.config import SimConfig
from capture.sim.record import load_sent_data
from capture.sim.server import Simulator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TYPES = ["OptionNbboQuote", "StockPrint"]
HOSTS = {"host-a": ["A"], "host-m": ["M"], "host-s": ["S", "C"]}
S3_ENV = {"AWS_ACCESS_KEY_ID": "hosts-id", "AWS_SECRET_ACCESS_KEY": "hosts-secret"}


@pytest.fixture(scope="module")
def pg_uri() -> Iterator[str]:
    with postgres() as uri:
        yield uri


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


async def three_hosts(tmp: Path, sim_cfg: SimConfig, lake: dict[str, Any]) -> list[Daemon]:
    """The simulator and one daemon per host, quiesced and stopped like run_capture does."""
    assert sim_cfg.record_dir is not None
    sim = Simulator(sim_cfg)
    daemons: list[Daemon] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.run)
        for host, stripes in HOSTS.items():
            cfg = daemon_config(
                tmp / host, port, stripes, TYPES, lake={**lake, "host_id": host}
            )
            daemons.append(Daemon(cfg, environ={KEY_ENV: KEY}, install_signals=False))
        exits: list[int] = []
        for d in daemons:
            async def run(d: Daemon = d) -> None:
                exits.append(await d.run())

            nursery.start_soon(run)
        await trio.sleep(3.0)
        sim.cfg = sim.cfg.with_overrides(rate=0.0, type_rates={})
        with trio.fail_after(30):
            while sum(received(d) for d in daemons) != sent_count(sim_cfg.record_dir):  # noqa: ASYNC110 - polls counters
                await trio.sleep(0.05)
            await trio.sleep(0.5)
        for d in daemons:
            d.stop()
        with trio.fail_after(60):
            while len(exits) < len(daemons):  # noqa: ASYNC110 - three tasks, one list
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert exits == [0, 0, 0]
    return daemons


def test_three_daemons_commit_to_the_same_tables_through_postgresql(
    tmp_path: Path, pg_uri: str, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    import boto3

    boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y",
    ).create_bucket(Bucket="many-hosts")  # fmt: skip
    lake = {
        "bucket": "many-hosts",
        "endpoint": moto_url,
        "catalog_uri": pg_uri,
        "commit_interval": 0.2,  # commits of the three overlap all the time
    }
    sim = SimConfig(api_keys=frozenset({KEY}), rate=150, seed=31, record_dir=tmp_path / "sent")
    daemons = trio.run(three_hosts, tmp_path, sim, lake)
    sent = load_sent_data(tmp_path / "sent")

    cat = SqlCatalog(
        CATALOG_NAME, uri=pg_uri,
        **{"s3.endpoint": moto_url, "s3.region": "us-east-1",
           "s3.access-key-id": S3_ENV["AWS_ACCESS_KEY_ID"],
           "s3.secret-access-key": S3_ENV["AWS_SECRET_ACCESS_KEY"]},
    )  # fmt: skip
    for table in [*TYPES, events.TABLE]:
        tbl = cat.load_table(("mlink", table))
        rows = tbl.scan().to_arrow()
        stripes = pc.cast(rows.column("_stripe"), pa.utf8()).to_pylist()
        keys = list(zip(stripes, rows.column("_seq").to_pylist(), strict=True))
        if table != events.TABLE:
            assert len(set(keys)) == len(keys), f"{table}: a (stripe, seq) twice"
            for host, host_stripes in HOSTS.items():
                for stripe in host_stripes:
                    n = sum(1 for s, _ in keys if s == stripe)
                    assert n == len(sent.get((table, stripe), [])), (table, host, stripe)
            assert {s for s, _ in keys} == {s for t, s in sent if t == table}, table
        else:
            assert {s for s, _ in keys} == {s for ss in HOSTS.values() for s in ss}
        # every host's watermark of every stripe it has rows of, in the snapshot history
        for host, host_stripes in HOSTS.items():
            for stripe in host_stripes:
                seqs = [q for s, q in keys if s == stripe]
                if not seqs:
                    continue
                key = f"{HW_PREFIX}{host}.{stripe}"
                found = next(
                    (
                        snap.summary[key]
                        for snap in sorted(
                            tbl.snapshots(), key=lambda s: s.timestamp_ms, reverse=True
                        )
                        if snap.summary is not None and snap.summary[key] is not None
                    ),
                    None,
                )
                assert found == str(max(seqs)), (table, key)
    for d in daemons:
        lake_doc = d.health_doc()["lake"]
        assert isinstance(lake_doc, dict)
        assert lake_doc["uncommitted_files"] == 0 and lake_doc["conflicts"] == 0
        assert lake_doc["commits"] > 0

"""``mlink-capture demo --lake``: the demo with the lake on, all on loopback: moto's S3 server
(a test dependency: ``pip install 'moto[server]'``) and the SQLite catalog under the demo's root.
Afterwards each Iceberg table's rows, snapshots and this host's watermarks are shown."""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from capture.config import LakeConfig
from capture.errors import LakeDemoError as LakeDemoError
from capture.lake.store import ObjectStore
from capture.lake.tables import LakeTables, read_watermarks

BUCKET = "mlink-demo"
HOST_ID = "demo-host"
KEY_ID_ENV, SECRET_ENV = "MLINK_DEMO_S3_KEY_ID", "MLINK_DEMO_S3_SECRET"


@contextmanager
def s3_on_loopback() -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """Yields the ``[lake]`` section and the environment holding its (throw-away) keys."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise LakeDemoError(
            "the lake demo needs moto's S3 server: pip install 'moto[server]' "
            "(make venv installs it)"
        ) from None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        environ = {KEY_ID_ENV: "demo-" + secrets.token_hex(4), SECRET_ENV: secrets.token_hex(16)}
        section: dict[str, Any] = {
            "host_id": HOST_ID,
            "bucket": BUCKET,
            "endpoint": url,
            "access_key_id": {"env": KEY_ID_ENV},
            "secret_access_key": {"env": SECRET_ENV},
            "commit_interval": 5.0,
        }
        ObjectStore(LakeConfig.from_table(section), environ).create_bucket()
        print(f"demo: S3 (moto) on {url}, bucket {BUCKET}", file=sys.stderr)
        yield section, environ
    finally:
        server.stop()


def show(section: dict[str, Any], environ: dict[str, str], root: Path) -> None:
    """Each table in the catalog: rows, snapshots, watermarks (read back through pyiceberg)."""
    cfg = LakeConfig.from_table(section)
    tables = LakeTables(cfg, root, environ)
    catalog = tables.catalog()
    print(f"\nIceberg tables (SQLite catalog {root / '_lake' / 'catalog.db'}):")
    for ident in sorted(catalog.list_tables(cfg.namespace)):
        tbl = catalog.load_table(ident)
        rows = tbl.scan().to_arrow()
        stripes = sorted({str(s) for s in rows.column("_stripe").to_pylist()})
        marks = read_watermarks(tbl, HOST_ID, stripes)
        print(
            f"  {'.'.join(ident):32} {rows.num_rows:>8} rows  {len(tbl.snapshots()):>3} "
            f"snapshots  high-water _seq {marks}"
        )

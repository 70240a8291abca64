"""A private PostgreSQL server for a test: initdb in a temporary directory, listening on loopback
only, stopped afterwards. Needs the server binaries (Debian: ``apt-get install postgresql``); as
root they run as the ``postgres`` user (initdb refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def postgres() -> Iterator[str]:
    """Yields a SQLAlchemy URI (psycopg2) of an empty database on 127.0.0.1."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    prefix: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="mlink-pg-"))
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(tmp, "postgres")
    data, port = tmp / "data", _free_port()
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run([*prefix, initdb, "-A", "trust", "-U", "capture", "-D", str(data)], **run)
    options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(tmp / "log"), "-w", "start"],
        **run,
    )
    try:
        yield f"postgresql+psycopg2://capture@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], **run)
        shutil.rmtree(tmp, ignore_errors=True)

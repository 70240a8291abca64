"""A committed local file as the lake sees it, and where its object goes."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from capture.sink import (
    META_MSG_TYPE,
    META_ROWS,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_STRIPE,
    CommittedFile,
)

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class LakeFile:
    """One committed local Parquet file: a contiguous run of one table's rows of one stripe."""

    path: Path
    table: str
    date: dt.date
    stripe: str
    seq_min: int
    seq_max: int
    rows: int
    size: int

    @classmethod
    def of(cls, committed: CommittedFile) -> LakeFile:
        return cls(
            path=committed.path,
            table=committed.msg_type,
            date=committed.date,
            stripe=committed.stripe,
            seq_min=committed.seq_min,
            seq_max=committed.seq_max,
            rows=committed.rows,
            size=committed.bytes,
        )

    def key(self, prefix: str, host_id: str) -> str:
        """The object key: deterministic (the same file always maps to the same key, so a retry
        finds its own earlier upload) and unique per (host, stripe, table, seq range), so two
        hosts wrongly given the same stripe never write the same key."""
        name = f"{host_id}_{self.stripe}_{self.seq_min:020d}_{self.seq_max:020d}.parquet"
        parts = [prefix] if prefix else []
        parts += ["data", self.table, f"date={self.date.isoformat()}", f"stripe={self.stripe}"]
        return "/".join([*parts, name])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan_local(root: Path, stripe: str, *, since: dt.date | None) -> list[LakeFile]:
    """Committed files of ``stripe`` under ``root`` dated ``since`` or later (None: all), read
    from their footers; files whose footer is unreadable or not ours are left out (recovery
    reports those)."""
    out: list[LakeFile] = []
    if not root.is_dir():
        return out
    for table_dir in sorted(root.iterdir()):
        if not table_dir.is_dir() or table_dir.name.startswith(("_", ".")):
            continue
        for day_dir in sorted(table_dir.glob("date=*")):
            try:
                day = dt.date.fromisoformat(day_dir.name.removeprefix("date="))
            except ValueError:
                continue
            if since is not None and day < since:
                continue
            for path in sorted((day_dir / f"stripe={stripe}").glob("*.parquet")):
                found = _from_footer(path, day, stripe)
                if found is not None:
                    out.append(found)
    return out


def _from_footer(path: Path, day: dt.date, stripe: str) -> LakeFile | None:
    try:
        meta = pq.read_metadata(path)
        size = os.stat(path).st_size
    except (OSError, ValueError):
        return None
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
    if kv.get(META_STRIPE) != stripe or META_SEQ_MIN not in kv or META_MSG_TYPE not in kv:
        return None
    try:
        return LakeFile(
            path=path,
            table=kv[META_MSG_TYPE],
            date=day,
            stripe=stripe,
            seq_min=int(kv[META_SEQ_MIN]),
            seq_max=int(kv[META_SEQ_MAX]),
            rows=int(kv.get(META_ROWS, meta.num_rows)),
            size=size,
        )
    except (KeyError, ValueError):
        return None

"""Retention in the Iceberg tables (``[lake]`` on): whole partitions past a table's bound are
deleted in one snapshot per table, then old snapshots are expired and the data objects only
they referenced are deleted from the store.

A partition (UTC day ``D``, any stripe, every host) goes when ``capture.retention.expired``
says so for ``D`` in UTC (the lake's days are UTC days): never the current day, never a row
younger than the bound.  The delete is one snapshot (pyiceberg's overwrite producer with only
file deletes; readers see the day or none of it), its summary saying ``mlink.retention.before``.

Expiry: snapshots older than ``lake.snapshot_retention_hours`` go, except the current one and
the newest carrier of every host's watermark (``capture.lake.tables.expirable``: a restart
reads those).  Before expiring, the data files the doomed snapshots reference and no kept
snapshot does are listed; after the expiry commit they are deleted from the store, so the bytes
of removed partitions and of files replaced by compaction go too.  A carrier snapshot that
still names a removed day keeps its files until a later run (the daemon commits every minute,
so the next hourly run frees them).

Sync code.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow.fs as pafs

from capture.config import LakeConfig
from capture.lake.tables import CatalogError, LakeTables, expirable
from capture.lakecompact import partition_files
from capture.logs import get_logger
from capture.retention import expired

log = get_logger(component="lakeretention")

__all__ = ["LakeRetentionOutcome", "apply_lake"]

NS: Final = 1_000_000_000
SUMMARY_BEFORE: Final = "mlink.retention.before"


@dataclass
class LakeRetentionOutcome:
    partitions_removed: list[str] = field(default_factory=list)
    files_removed: int = 0
    bytes_removed: int = 0
    snapshots_expired: int = 0
    objects_deleted: int = 0
    planned: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def apply_lake(
    cfg: LakeConfig,
    days_for: Callable[[str], int],
    *,
    root: Path,
    now_ns: int | None = None,
    dry_run: bool = False,
    tables: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    lake_tables: LakeTables | None = None,
) -> LakeRetentionOutcome:
    """Remove expired partitions, expire snapshots, delete unreferenced data objects, per table.
    Raises CatalogError when the catalog cannot be read at all."""
    out = LakeRetentionOutcome()
    now = time.time_ns() if now_ns is None else now_ns
    lt = lake_tables or LakeTables(cfg, root, environ)
    try:
        names = sorted(ident[-1] for ident in lt.catalog().list_tables(cfg.namespace))
    except CatalogError:
        raise
    except Exception as exc:  # noqa: BLE001 - the catalog's failures: one contract
        raise CatalogError(f"listing the lake's tables: {type(exc).__name__}: {exc}") from None
    for name in names:
        if tables is not None and name not in tables:
            continue
        try:
            _table(lt, cfg, name, days_for(name), now, dry_run, out)
        except Exception as exc:  # noqa: BLE001 - one table's failure; the others go on
            log.error("lake_retention.failed", table=name, error=str(exc)[:500])
            out.failed.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
    return out


def _table(
    lt: LakeTables,
    cfg: LakeConfig,
    name: str,
    days: int,
    now: int,
    dry_run: bool,
    out: LakeRetentionOutcome,
) -> None:
    tbl = lt.catalog().load_table((cfg.namespace, name))
    parts = partition_files(tbl)
    doomed = {k: v for k, v in parts.items() if expired(k[0], days, now_ns=now, tz="UTC")}
    where = [f"{name}/date={d.isoformat()}/stripe={s}" for d, s in sorted(doomed)]
    if dry_run:
        out.planned += where
        return
    if doomed:
        bound = min(d for d, _ in doomed)
        props = {SUMMARY_BEFORE: (bound + dt.timedelta(days=1)).isoformat()}
        with tbl.transaction() as tx:
            with tx.update_snapshot(snapshot_properties=props).overwrite() as drop:
                for files in doomed.values():
                    for f in files:
                        drop.delete_data_file(f)
        removed = [f for files in doomed.values() for f in files]
        out.partitions_removed += where
        out.files_removed += len(removed)
        out.bytes_removed += sum(f.file_size_in_bytes for f in removed)
        log.info("lake_retention.removed", table=name, partitions=where, files=len(removed),
                 bytes=sum(f.file_size_in_bytes for f in removed))  # fmt: skip
        tbl = lt.catalog().load_table((cfg.namespace, name))
    if cfg.snapshot_retention_hours <= 0:
        return
    older_than_ms = (now // NS - int(cfg.snapshot_retention_hours * 3600)) * 1000
    ids = set(expirable(tbl, older_than_ms))
    if ids:
        kept = {s.snapshot_id for s in tbl.snapshots()} - ids
        gone = _data_paths(tbl, ids) - _data_paths(tbl, kept)
        tbl.maintenance.expire_snapshots().by_ids(sorted(ids)).commit()
        out.snapshots_expired += len(ids)
        for path in sorted(gone):
            tbl.io.delete(path)
            out.objects_deleted += 1
        log.info("lake_retention.expired", table=name, snapshots=len(ids), objects=len(gone))
        tbl = lt.catalog().load_table((cfg.namespace, name))
    swept = _sweep(tbl, cfg, name, days, now)
    out.objects_deleted += swept
    if swept:
        log.info("lake_retention.swept", table=name, objects=swept)


_LIVE_KEY: Final = re.compile(r"^(.+)_(\d{20})_(\d{20})(?:-c([0-9a-f]{16})-\d{3})?\.parquet$")


def _sweep(tbl: Any, cfg: LakeConfig, name: str, days: int, now: int) -> int:
    """Delete the data objects no snapshot references that are certainly dead: in a partition
    past retention, or (this host's) within the sequence span of a current compacted file of
    their partition and not that file's rewrite.  What the daemon's own hourly expiry left
    behind (it deletes no objects), and what a crashed run uploaded and then replaced."""
    referenced = _data_paths(tbl, {s.snapshot_id for s in tbl.snapshots()})
    current = partition_files(tbl)
    parts = [cfg.prefix] if cfg.prefix else []
    base = "/".join([f"s3://{cfg.bucket}", *parts, "data", name])
    scheme, netloc, path = tbl.io.parse_location(base)
    fs = tbl.io.fs_by_scheme(scheme, netloc)
    deleted = 0
    for day_dir in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        try:
            day = dt.date.fromisoformat(day_dir.base_name.removeprefix("date="))
        except ValueError:
            continue
        past = expired(day, days, now_ns=now, tz="UTC")
        files = fs.get_file_info(pafs.FileSelector(day_dir.path, recursive=True))
        for info in files:
            if info.type != pafs.FileType.File or f"{scheme}://{info.path}" in referenced:
                continue
            if not past and not _replaced(info.path, day, current, cfg.host_id):
                continue
            fs.delete_file(info.path)
            deleted += 1
    return deleted


def _replaced(path: str, day: dt.date, current: dict[Any, list[Any]], host: str) -> bool:
    stripe = path.rsplit("/", 2)[-2].removeprefix("stripe=")
    m = _LIVE_KEY.match(path.rsplit("/", 1)[-1])
    if m is None or m.group(1) != f"{host}_{stripe}":
        return False
    lo, hi, digest = int(m.group(2)), int(m.group(3)), m.group(4)
    for f in current.get((day, stripe), []):
        c = _LIVE_KEY.match(f.file_path.rsplit("/", 1)[-1])
        if c is None or c.group(4) is None or c.group(1) != f"{host}_{stripe}":
            continue  # only a current compacted file of this host tells what it replaced
        if int(c.group(2)) <= lo and hi <= int(c.group(3)) and digest != c.group(4):
            return True
    return False


def _data_paths(tbl: Any, snapshot_ids: set[int]) -> set[str]:
    """Data files the given snapshots reference."""
    paths: set[str] = set()
    seen: set[str] = set()
    for snap in tbl.snapshots():
        if snap.snapshot_id not in snapshot_ids:
            continue
        for manifest in snap.manifests(tbl.io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(tbl.io, discard_deleted=True):
                paths.add(entry.data_file.file_path)
    return paths

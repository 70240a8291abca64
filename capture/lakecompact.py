"""Compaction of the Iceberg tables (``[lake]`` on): one replace snapshot per closed partition.

A partition is one table's (UTC day, stripe) as the lake partitions it (``day(_recv_time)``,
``_stripe``).  Once the day has ended and ``min_age_s`` has passed, this host's data files of
it (``<host>_<stripe>_...`` keys: another host's files are left alone) are read, rewritten by
``capture.compact.rewrite`` (sorted, large row groups, measured encodings), uploaded under
deterministic keys with ``If-None-Match: *`` (``capture.lake.store``) and committed in **one**
snapshot that deletes the old data files and adds the new ones (pyiceberg's overwrite producer
with explicit file deletes: no predicate, no row rewrite by pyiceberg).  A reader planning a
scan sees the snapshot before or the one after, never both sets.

Idempotent and crash-safe without local state: the new keys are a function of the replaced
files (``<host>_<stripe>_<seq lo>_<seq hi>-c<digest of the replaced paths>-<part>.parquet``)
and the rewrite is deterministic, so a rerun after a crash between upload and commit finds its
own objects ("there") and commits; after the commit the partition holds only compacted files of
one digest and is not touched again.  A concurrent commit (the daemon appending) makes ours
fail; the partition is planned again from the new snapshot (a new file in it: the unit is
rewritten with it).  Old objects are not deleted here: older snapshots still name them, and
readers of those keep working (``capture.lakeretention`` deletes them once no snapshot does).

The snapshot summary records ``mlink.compacted.unit``, ``.host``, ``.replaced`` and
``.seq_ranges``; the first new file's footer the same keys as a local compacted file.

Sync code; it must not run on an event loop.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.io.pyarrow import parquet_file_to_data_file

from capture.compact import (
    COMPACTED_PREFIX,
    META_INPUTS,
    META_PART,
    META_UNIT,
    CompactionSettings,
    Outcome,
    rewrite,
    unit_ranges,
)
from capture.config import LakeConfig
from capture.errors import LakeCompactionError as LakeCompactionError
from capture.faultpoints import crash_point
from capture.lake.files import sha256_of
from capture.lake.store import ObjectStore, StoreError
from capture.lake.tables import CatalogError, LakeTables
from capture.logs import get_logger
from capture.recovery import format_seq_ranges
from capture.sink import (
    META_COMPACTED,
    META_HOST,
    META_MSG_TYPE,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SEQ_RANGES,
    META_SESSION,
    META_STRIPE,
    META_WRITER,
    WRITER_ID,
)

log = get_logger(component="lakecompact")

__all__ = ["LakeCompactionError", "LakeOutcome", "compact_lake", "partition_files"]

NS: Final = 1_000_000_000
DAY_NS: Final = 86_400 * NS
SUMMARY_UNIT: Final = "mlink.compacted.unit"
SUMMARY_HOST: Final = "mlink.compacted.host"
SUMMARY_REPLACED: Final = "mlink.compacted.replaced"
SUMMARY_RANGES: Final = "mlink.compacted.seq_ranges"
COMMIT_ATTEMPTS: Final = 5
#: ``<host>_<stripe>_<lo>_<hi>-c<digest>-<part>.parquet``: a compacted object of this module.
_COMPACTED_KEY: Final = re.compile(r"-c([0-9a-f]{16})-\d{3}\.parquet$")


@dataclass
class LakeOutcome(Outcome):
    """What one run did to the lake's tables: local compaction's account, plus the commits
    retried after losing a race with another writer."""

    commit_retries: int = 0


def _spec_positions(tbl: Any) -> tuple[int, int]:
    """Positions of the day and the stripe field in the table's partition records."""
    names = [f.name for f in tbl.spec().fields]
    return names.index("recv_day"), names.index("stripe")


def partition_files(tbl: Any) -> dict[tuple[dt.date, str], list[Any]]:
    """The current snapshot's data files per (UTC day, stripe)."""
    out: dict[tuple[dt.date, str], list[Any]] = {}
    snap = tbl.current_snapshot()
    if snap is None:
        return out
    day_at, stripe_at = _spec_positions(tbl)
    epoch = dt.date(1970, 1, 1)
    for manifest in snap.manifests(tbl.io):
        for entry in manifest.fetch_manifest_entry(tbl.io, discard_deleted=True):
            df = entry.data_file
            part = df.partition
            day = epoch + dt.timedelta(days=int(part[day_at]))
            out.setdefault((day, str(part[stripe_at])), []).append(df)
    for files in out.values():
        files.sort(key=lambda d: d.file_path)
    return out


def _mine(files: Iterable[Any], host: str, stripe: str) -> list[Any]:
    return [f for f in files if f.file_path.rsplit("/", 1)[-1].startswith(f"{host}_{stripe}_")]


def _needs_work(files: Sequence[Any]) -> bool:
    digests = {m.group(1) if (m := _COMPACTED_KEY.search(f.file_path)) else None for f in files}
    return None in digests or len(digests) > 1


def _digest(files: Sequence[Any]) -> str:
    text = "\n".join(sorted(f.file_path for f in files))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class _Ctx:
    cfg: LakeConfig
    settings: CompactionSettings
    tables: LakeTables
    store: ObjectStore
    scratch: Path
    outcome: LakeOutcome


def compact_lake(
    cfg: LakeConfig,
    settings: CompactionSettings,
    *,
    root: Path,
    now_ns: int | None = None,
    tables: Sequence[str] | None = None,
    dates: Sequence[dt.date] | None = None,
    dry_run: bool = False,
    environ: Mapping[str, str] | None = None,
    lake_tables: LakeTables | None = None,
    store: ObjectStore | None = None,
) -> LakeOutcome:
    """Compact every closed partition of this host's files in every table of the lake's
    namespace (or ``tables``).  Raises CatalogError when the catalog cannot be read at all;
    a partition that fails is reported in the outcome, the others go on."""
    outcome = LakeOutcome()
    now = time.time_ns() if now_ns is None else now_ns
    lt = lake_tables or LakeTables(cfg, root, environ)
    st = store or ObjectStore(cfg, environ)
    try:
        names = sorted(ident[-1] for ident in lt.catalog().list_tables(cfg.namespace))
    except CatalogError:
        raise
    except Exception as exc:  # noqa: BLE001 - the catalog's failures: one contract
        raise CatalogError(f"listing the lake's tables: {type(exc).__name__}: {exc}") from None
    scratch = Path(tempfile.mkdtemp(prefix="lake-compact-"))
    ctx = _Ctx(cfg, settings, lt, st, scratch, outcome)
    try:
        for name in names:
            if tables is not None and name not in tables:
                continue
            try:
                tbl = lt.catalog().load_table((cfg.namespace, name))
                parts = partition_files(tbl)
            except Exception as exc:  # noqa: BLE001
                outcome.failed.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
                continue
            horizon = now - settings.min_age_s * NS
            for (day, stripe), files in sorted(parts.items()):
                if dates is not None and day not in dates:
                    continue
                end = (day - dt.date(1970, 1, 1)).days * DAY_NS + DAY_NS
                mine = _mine(files, cfg.host_id, stripe)
                if end > horizon or not mine or not _needs_work(mine):
                    continue
                where = f"{name}/date={day.isoformat()}/stripe={stripe}"
                if dry_run:
                    rows = sum(f.record_count for f in mine)
                    outcome.planned.append(f"{where}: {len(mine)} files, {rows} rows")
                    continue
                try:
                    _compact_partition(ctx, name, day, stripe)
                except (LakeCompactionError, CatalogError, StoreError, OSError,
                        pa.ArrowException, ValueError) as exc:  # fmt: skip
                    log.error("lake_compact.failed", partition=where, error=str(exc)[:500])
                    outcome.failed.append(f"{where}: {type(exc).__name__}: {exc}"[:500])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return outcome


def _compact_partition(ctx: _Ctx, name: str, day: dt.date, stripe: str) -> None:
    """Plan, rewrite, upload, commit; a lost commit race plans again from the new snapshot."""
    cfg = ctx.cfg
    where = f"{name}/date={day.isoformat()}/stripe={stripe}"
    for attempt in range(COMMIT_ATTEMPTS):
        tbl = ctx.tables.catalog().load_table((cfg.namespace, name))
        old = _mine(partition_files(tbl).get((day, stripe), []), cfg.host_id, stripe)
        if not old or not _needs_work(old):
            return  # done meanwhile (an earlier attempt's commit went through)
        size = sum(f.file_size_in_bytes for f in old)
        if size * 8 > ctx.settings.max_unit_bytes:  # Arrow data is several times the Parquet
            ctx.outcome.skipped.append(f"{where}: {size} bytes of Parquet: over max_unit_bytes")
            return
        uris, stats = _rewrite(ctx, tbl, name, day, stripe, old)
        new = [parquet_file_to_data_file(tbl.io, tbl.metadata, u) for u in uris]
        props = {
            SUMMARY_UNIT: where,
            SUMMARY_HOST: cfg.host_id,
            SUMMARY_REPLACED: str(len(old)),
            SUMMARY_RANGES: stats["ranges"],
        }
        try:
            with tbl.transaction() as tx:
                with tx.update_snapshot(snapshot_properties=props).overwrite() as replace:
                    for f in old:
                        replace.delete_data_file(f)
                    for f in new:
                        replace.append_data_file(f)
        except (CommitFailedException, ValidationException):
            # Lost to a concurrent commit.  pyiceberg retries a failed commit itself on the
            # refreshed table, and raises ValidationException when the files this one replaces
            # are gone from it (compacted meanwhile); neither landed: plan again.
            ctx.outcome.commit_retries += 1
            log.info("lake_compact.retry", partition=where, attempt=attempt)
            continue
        crash_point("lake_compact.committed")
        o = ctx.outcome
        o.units_compacted += 1
        o.files_in += len(old)
        o.files_out += len(new)
        o.rows_in += sum(f.record_count for f in old)
        o.rows_out += sum(f.record_count for f in new)
        o.bytes_in += sum(f.file_size_in_bytes for f in old)
        o.bytes_out += sum(f.file_size_in_bytes for f in new)
        log.info("lake_compact.partition", partition=where, files_in=len(old), files_out=len(new))
        return
    raise LakeCompactionError(f"{where}: {COMMIT_ATTEMPTS} commits lost to concurrent ones")


def _rewrite(
    ctx: _Ctx, tbl: Any, name: str, day: dt.date, stripe: str, old: Sequence[Any]
) -> tuple[list[str], dict[str, str]]:
    """Read ``old``, write the compacted files, upload them; their URIs."""
    cfg = ctx.cfg
    work = ctx.scratch / f"{name}-{day.isoformat()}-{stripe}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    parts: list[pa.Table] = []
    footers: list[dict[str, str]] = []
    for f in old:
        with tbl.io.new_input(f.file_path).open() as stream:
            data = stream.read()
        pf = pq.ParquetFile(pa.BufferReader(data))
        footers.append({k.decode(): v.decode() for k, v in (pf.metadata.metadata or {}).items()})
        parts.append(pf.read())
    rows_in = sum(p.num_rows for p in parts)
    ranges = unit_ranges(footers)
    digest = _digest(old)
    first_meta = {
        META_SEQ_RANGES: format_seq_ranges(ranges),
        META_INPUTS: json.dumps([f.file_path.rsplit("/", 1)[-1] for f in old]),
    }
    if ranges:
        first_meta[META_SEQ_MIN] = str(ranges[0][0])
        first_meta[META_SEQ_MAX] = str(ranges[-1][1])
    common = {
        META_MSG_TYPE: name,
        META_STRIPE: stripe,
        META_SESSION: "compaction",
        META_WRITER: WRITER_ID,
        META_COMPACTED: "1",
        META_UNIT: f"day:{day.isoformat()}",
        META_HOST: cfg.host_id,
    }
    lo, hi = (ranges[0][0], ranges[-1][1]) if ranges else (0, 0)
    base = f"{COMPACTED_PREFIX}{digest}"
    paths, rows_out = rewrite(parts, name, work, base, first_meta, common, ctx.settings)
    if rows_out != rows_in:
        raise LakeCompactionError(f"{name} {day} {stripe}: {rows_in} rows read, {rows_out} written")
    prefix = [cfg.prefix] if cfg.prefix else []
    uris = []
    for path in paths:
        part = int(pq.read_metadata(path).metadata[META_PART.encode()])
        key = "/".join([
            *prefix, "data", name, f"date={day.isoformat()}", f"stripe={stripe}",
            f"{cfg.host_id}_{stripe}_{lo:020d}_{hi:020d}-c{digest}-{part:03d}.parquet",
        ])  # fmt: skip
        ctx.store.put_new(key, path, size=path.stat().st_size, sha256=sha256_of(path))
        crash_point("lake_compact.uploaded")
        uris.append(f"s3://{cfg.bucket}/{key}")
    shutil.rmtree(work, ignore_errors=True)
    return uris, {"ranges": format_seq_ranges(ranges)}

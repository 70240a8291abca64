"""Retention: whole date partitions older than a table's bound are removed, atomically.

A partition ``ROOT/<Type>/date=D`` goes when both hold (``tz`` is ``output.timezone``, the zone
the dates are in):

* by the calendar: ``D < today - days`` (so never the current day, nor yesterday with 1 day);
* by the clock: every row of D is at least ``days`` x 24 h old, i.e. local midnight after D
  plus ``days`` x 86,400 s is not in the future (on a 23-hour DST day the calendar alone would
  remove data an hour young).

Removal is one rename of ``date=D`` into ``ROOT/_compaction/trash/`` (a reader sees the whole
day or none of it), then a recursive delete; a crash in between leaves only the trash, which
the next run empties.  Each removal is logged and counted.  Archived journal segments
(``journal/stripe=S/archive/seg-*.mlj``, kept by ``journal.retain_hours``) older than
``journal_archive_days`` go too.

Sync code.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from capture import dirswap
from capture.logs import get_logger
from capture.rotation import day_start_ns, time_zone

log = get_logger(component="retention")

NS: Final = 1_000_000_000
TRASH: Final = Path("_compaction") / "trash"


@dataclass
class RetentionOutcome:
    partitions_removed: list[str] = field(default_factory=list)
    files_removed: int = 0
    bytes_removed: int = 0
    journal_segments_removed: int = 0
    planned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def expired(day: dt.date, days: int, *, now_ns: int, tz: str) -> bool:
    """Whether partition ``day`` is older than ``days`` (0: never) at ``now_ns``."""
    if days <= 0:
        return False
    zone = time_zone(tz)
    today = dt.datetime.fromtimestamp(now_ns // NS, zone).date()
    if not day < today - dt.timedelta(days=days):
        return False
    day_end = day_start_ns(day + dt.timedelta(days=1), tz)
    return day_end + days * 86_400 * NS <= now_ns


def _empty_trash(root: Path) -> None:
    trash = root / TRASH
    if trash.is_dir():
        shutil.rmtree(trash)


def apply(
    root: Path,
    days_for: Any,
    *,
    tz: str,
    now_ns: int | None = None,
    journal_dir: Path | None = None,
    journal_archive_days: int = 0,
    dry_run: bool = False,
) -> RetentionOutcome:
    """Remove expired partitions under ``root``; ``days_for(table)`` gives each table's bound."""
    now = time.time_ns() if now_ns is None else now_ns
    out = RetentionOutcome()
    if not root.is_dir():
        return out
    if not dry_run:
        _empty_trash(root)
    for tdir in sorted(root.iterdir()):
        if not tdir.is_dir() or tdir.name.startswith(("_", ".")):
            continue
        days = int(days_for(tdir.name))
        for ddir in sorted(tdir.glob("date=*")):
            try:
                day = dt.date.fromisoformat(ddir.name.removeprefix("date="))
            except ValueError:
                continue
            if not expired(day, days, now_ns=now, tz=tz):
                continue
            rel = f"{tdir.name}/{ddir.name}"
            files = [p for p in ddir.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            if dry_run:
                out.planned.append(f"{rel}: {len(files)} files, {size} bytes")
                continue
            dest = root / TRASH / tdir.name / f"{ddir.name}-{now:x}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(ddir, dest)
            dirswap.fsync_dir(tdir)
            shutil.rmtree(dest)
            out.partitions_removed.append(rel)
            out.files_removed += len(files)
            out.bytes_removed += size
            log.info("retention.removed", partition=rel, files=len(files), bytes=size, days=days)
    if journal_dir is not None and journal_archive_days > 0 and journal_dir.is_dir():
        horizon = now / NS - journal_archive_days * 86_400
        for seg in sorted(journal_dir.glob("stripe=*/archive/seg-*.mlj")):
            if seg.stat().st_mtime < horizon:
                if dry_run:
                    out.planned.append(f"journal archive {seg.parent.parent.name}/{seg.name}")
                    continue
                seg.unlink()
                out.journal_segments_removed += 1
        if out.journal_segments_removed:
            log.info("retention.journal_archive", segments=out.journal_segments_removed)
    return out

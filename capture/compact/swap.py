"""The swap: the work area beside a partition, and the cleanup after a directory exchange (or a
crash before or after one), which a later run repeats (``recover``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from capture import dirswap
from capture.compact.names import (
    COMPACTED_PREFIX,
    COMPACTION_DIR,
    LIVE_PREFIX,
    META_INPUTS,
)
from capture.compact.settings import Outcome
from capture.errors import CompactionError
from capture.logs import get_logger
from capture.sink import (
    INPROGRESS_SUFFIX,
)

log = get_logger(component="compact")


def _work_dir(root: Path, table: str, day: dt.date, stripe: str) -> Path:
    return root / COMPACTION_DIR / "work" / table / f"date={day.isoformat()}" / f"stripe={stripe}"


def _listing(directory: Path) -> set[str]:
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def _manifest_inputs(directory: Path) -> set[str] | None:
    """File names the compacted files visible in ``directory`` say they replaced; None when a
    compacted file's list cannot be read (then nobody can tell a replaced file from a stray)."""
    names: set[str] = set()
    for path in directory.glob(f"{COMPACTED_PREFIX}*.parquet"):
        try:
            kv = pq.read_metadata(path).metadata or {}
            raw = kv.get(META_INPUTS.encode())
            listed = json.loads(raw.decode()) if raw is not None else []
        except (OSError, ValueError):
            return None
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            return None
        names.update(listed)
    return names


def _finish_work_dir(visible: Path, work: Path) -> list[str]:
    """After an exchange (or a crash before or after one): move back every committed part file
    in ``work`` that the visible set neither holds nor replaced, then delete ``work``.

    Before the exchange ``work`` holds new compacted files and hard links of visible files:
    nothing is moved.  After it, it holds the old set: inputs (replaced), links (still
    visible) and any file a daemon committed meanwhile (moved back)."""
    rescued: list[str] = []
    if not work.is_dir():
        return rescued
    present = _listing(visible)
    strays = [
        n for n in sorted(_listing(work))
        if n.startswith(LIVE_PREFIX) and n.endswith(".parquet") and n not in present
    ]  # fmt: skip
    replaced = _manifest_inputs(visible) if strays else set()
    if replaced is None:
        raise CompactionError(
            f"{work}: left in place: the compacted files in {visible} do not say which files "
            "they replaced, so its part files can be neither moved back nor deleted"
        )
    for name in strays:
        if name not in replaced:
            os.rename(work / name, visible / name)
            rescued.append(name)
            # A sink committed it in the old directory after its in-progress file had been
            # linked into the new one: that link is the same file under its hidden name.
            link = visible / f".{name}{INPROGRESS_SUFFIX}"
            if link.exists() and os.path.samefile(link, visible / name):
                link.unlink()
    if rescued:
        dirswap.fsync_dir(visible)
        log.warning("compact.rescued", directory=str(visible), files=rescued)
    shutil.rmtree(work)
    dirswap.fsync_dir(work.parent)
    return rescued


def recover(root: Path, outcome: Outcome) -> set[str]:
    """Finish what a crashed run left in the work area (idempotent): cleaned-up partitions go
    to ``outcome.recovered``, ones that cannot be to ``outcome.failed``; returns the latter
    (this run leaves them alone)."""
    base = root / COMPACTION_DIR / "work"
    stuck: set[str] = set()
    if not base.is_dir():
        return stuck
    for work in sorted(base.glob("*/date=*/stripe=*")):
        rel = work.relative_to(base)
        visible = root / rel
        try:
            if visible.is_dir():
                _finish_work_dir(visible, work)
            else:  # retention removed the partition since: nothing of it is to come back
                shutil.rmtree(work)
        except (OSError, CompactionError) as exc:
            log.error("compact.recover_failed", partition=str(rel), error=str(exc))
            outcome.failed.append(f"{rel}: {exc}")
            stuck.add(str(rel))
            continue
        outcome.recovered.append(str(rel))
    return stuck

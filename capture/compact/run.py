"""One compaction run over a root: every closed partition that needs it, under the root's lock,
after finishing what a crashed run left."""

from __future__ import annotations

import datetime as dt
import errno
import time
from collections.abc import Sequence

import pyarrow as pa

from capture import dirswap
from capture.compact.names import (
    COMPACTION_DIR,
)
from capture.compact.partition import _compact_partition
from capture.compact.planning import (
    _partitions,
)
from capture.compact.rootlock import _Lock
from capture.compact.settings import CompactionSettings, Outcome, _Context
from capture.compact.swap import recover
from capture.errors import CompactionError
from capture.logs import get_logger
from capture.sink import (
    QUARANTINE_DIR,
)

log = get_logger(component="compact")


def compact(
    settings: CompactionSettings,
    *,
    now_ns: int | None = None,
    tables: Sequence[str] | None = None,
    dates: Sequence[dt.date] | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Compact every closed partition of ``settings.root`` that needs it.  Raises
    ``BlockingIOError`` when another run holds the lock and ``dirswap.ExchangeUnsupported``
    when the file system cannot swap directories (before touching anything)."""
    root = settings.root
    outcome = Outcome()
    if not root.is_dir():
        return outcome
    ctx = _Context(settings, time.time_ns() if now_ns is None else now_ns, dry_run, outcome)
    if settings.peers:
        from capture.abmerge import merge

        ctx.merge = merge
    with _Lock(root):
        if not dry_run:
            if not dirswap.supported(root / COMPACTION_DIR):
                raise dirswap.ExchangeUnsupported(
                    errno.EINVAL, "this file system cannot exchange directories", str(root)
                )
        stuck = recover(root, outcome) if not dry_run else set()
        for table, day, stripe in _partitions([root, *settings.peers], tables, dates):
            where = f"{table}/date={day.isoformat()}/stripe={stripe}"
            if table == QUARANTINE_DIR or where in stuck:
                continue
            try:
                _compact_partition(ctx, table, day, stripe)
            except (OSError, ValueError, pa.ArrowException, CompactionError) as exc:
                log.error("compact.failed", partition=where, error=f"{type(exc).__name__}: {exc}")
                outcome.failed.append(f"{where}: {type(exc).__name__}: {exc}")
    return outcome

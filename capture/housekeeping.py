"""``mlink-capture compact``: one housekeeping run (compaction, then retention), or one every
``--every`` seconds (the compose service's scheduled mode; systemd uses a timer instead).

Exit codes: 0 done (also: nothing to do); 1 some partition failed (the rest was done; the next
run retries it); 2 bad usage or configuration; 3 the file system cannot exchange directories
atomically (nothing was changed); 75 another compaction holds the root's lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from capture import compact, dirswap, retention
from capture.config import Config
from capture.logs import get_logger

log = get_logger(component="housekeeping")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_EXCHANGE = 3
EXIT_LOCKED = 75


def settings(cfg: Config) -> compact.CompactionSettings:
    c = cfg.compaction
    return compact.CompactionSettings(
        root=cfg.output.root,
        tz=cfg.output.timezone,
        granularity=c.granularity,
        min_age_s=c.min_age,
        row_group_rows=c.row_group_rows,
        row_group_bytes=c.row_group_mb * 2**20,
        target_file_bytes=c.target_file_mb * 2**20,
        compression_level=c.compression_level,
        max_unit_bytes=c.max_unit_mb * 2**20,
        host_id=cfg.capture.host_id,
        peers=c.peers,
        sort=c.sort,
    )


def run_once(
    cfg: Config,
    *,
    tables: Sequence[str] | None = None,
    dates: Sequence[dt.date] | None = None,
    dry_run: bool = False,
    now_ns: int | None = None,
) -> tuple[int, dict[str, Any]]:
    """Compaction then retention; (exit code, summary)."""
    summary: dict[str, Any] = {"dry_run": dry_run}
    try:
        outcome = compact.compact(
            settings(cfg), now_ns=now_ns, tables=tables, dates=dates, dry_run=dry_run
        )
    except BlockingIOError:
        return EXIT_LOCKED, {"error": "another compaction is running on this root"}
    except dirswap.ExchangeUnsupported as exc:
        return EXIT_NO_EXCHANGE, {
            "error": f"{cfg.output.root}: cannot exchange directories atomically ({exc.strerror})"
            "; compaction needs ext4, XFS, btrfs or tmpfs (not NFS or overlayfs)"
        }
    except OSError as exc:  # the root itself (lock, work area): nothing was swapped
        where = exc.filename or cfg.output.root
        return EXIT_FAILED, {"error": f"{where}: {exc.strerror or exc}"}
    summary["compaction"] = outcome.as_dict()
    lake_failed = False
    if cfg.lake is not None:
        from capture.lake.tables import CatalogError
        from capture.lakecompact import compact_lake

        try:
            lake_out = compact_lake(
                cfg.lake, settings(cfg), root=cfg.output.root, now_ns=now_ns, tables=tables,
                dates=dates, dry_run=dry_run,
            )  # fmt: skip
            summary["lake_compaction"] = lake_out.as_dict()
            lake_failed = bool(lake_out.failed)
        except CatalogError as exc:
            summary["lake_compaction"] = {"error": str(exc)}
            lake_failed = True
    r = cfg.retention
    try:
        root_exists = cfg.output.root.is_dir()
        with compact.lock(cfg.output.root) if root_exists else contextlib.nullcontext():
            kept = retention.apply(
                cfg.output.root,
                lambda table: r.days_for(table) if tables is None or table in tables else 0,
                tz=cfg.output.timezone,
                now_ns=now_ns,
                journal_dir=cfg.journal.directory or cfg.output.root / "_journal",
                journal_archive_days=r.journal_archive_days,
                dry_run=dry_run,
            )
    except BlockingIOError:
        return EXIT_LOCKED, {**summary, "error": "another compaction is running on this root"}
    summary["retention"] = kept.as_dict()
    if cfg.lake is not None:
        from capture.lake.tables import CatalogError
        from capture.lakeretention import apply_lake

        try:
            lake_kept = apply_lake(
                cfg.lake,
                lambda table: r.days_for(table) if tables is None or table in tables else 0,
                root=cfg.output.root, now_ns=now_ns, dry_run=dry_run,
            )  # fmt: skip
            summary["lake_retention"] = lake_kept.as_dict()
            lake_failed = lake_failed or bool(lake_kept.failed)
        except CatalogError as exc:
            summary["lake_retention"] = {"error": str(exc)}
            lake_failed = True
    log.info(
        "housekeeping.done",
        units=outcome.units_compacted,
        files_in=outcome.files_in,
        files_out=outcome.files_out,
        duplicates_dropped=outcome.duplicates_dropped,
        failed=len(outcome.failed),
        partitions_removed=len(kept.partitions_removed),
    )
    return (EXIT_FAILED if outcome.failed or lake_failed else EXIT_OK), summary


def main(
    cfg: Config,
    *,
    tables: Sequence[str] | None,
    dates: Sequence[dt.date] | None,
    dry_run: bool,
    every: float | None,
) -> int:
    stop = threading.Event()
    if every is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while True:
        code, summary = run_once(cfg, tables=tables, dates=dates, dry_run=dry_run)
        print(json.dumps(summary, indent=2, default=str), flush=True)
        if code != EXIT_OK and "error" in summary:
            print(f"mlink-capture compact: {summary['error']}", file=sys.stderr)
        if every is None or code == EXIT_NO_EXCHANGE:
            return code
        if stop.wait(every):
            return EXIT_OK
        time.sleep(0)

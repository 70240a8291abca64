"""The daemon's lake task: upload committed local files, commit them to Iceberg in batches,
hold the journal until then, and report the lag.

Order of the steps for one file, and what a crash between two of them leaves (docs/lake.md):
local commit -> upload (``If-None-Match: *``) -> catalog commit (snapshot carries the
high-water ``_seq``) -> journal retire (the floor moves) -> local delete (if configured). The
lake's state is in memory only; after a restart it is rebuilt from the local files (a scan from
the date in ``_lake/<host>.<stripe>.since``) and the tables' watermarks, so every step is
redone or recognised as done.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import structlog
import trio

from capture import events
from capture.config import Config
from capture.errors import CatalogError
from capture.faultpoints import crash_point
from capture.lake.files import LakeFile, scan_local, sha256_of
from capture.lake.store import ObjectConflict, ObjectStore, StoreError
from capture.sink import CommittedFile

if TYPE_CHECKING:  # pyiceberg is imported when the catalog is first needed (a thread)
    from capture.lake.tables import LakeTables

log = structlog.get_logger("capture.lake")

TICK_S = 1.0  # how often the task looks for work (uploads go as soon as a file is there)
EXPIRE_EVERY_S = 3600.0  # snapshot expiry per table, at most this often
RETRY_MAX_S = 60.0
BUDGET_TICK_S = 0.5  # how often the bytes held locally are measured against the budget
NEAR_BUDGET = 0.8  # health says near_budget from here; paused capture resumes below it


@dataclass(slots=True)
class _Entry:
    file: LakeFile
    uri: str | None = None  # set once the object is in the store
    conflict: str | None = None


@dataclass(slots=True)
class LakeStats:
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    already_there: int = 0  # 412 on a retry: the same file was there
    committed_files: int = 0
    commits: int = 0
    recognised_committed: int = 0  # found at start-up already in the table
    deleted_local: int = 0
    conflicts: int = 0
    expired_snapshots: int = 0
    orphans_removed: int = 0
    last_commit_ns: int | None = None
    last_error: str | None = None
    errors: int = 0
    commit_seconds: list[float] = field(default_factory=list)


class Lake:
    """One per daemon process, for its stripes. The hold methods are thread-safe; ``run`` is
    the trio task."""

    def __init__(
        self,
        cfg: Config,
        stripes: Iterable[str],
        environ: Mapping[str, str] | None = None,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        store: ObjectStore | None = None,
        tables: LakeTables | None = None,
    ) -> None:
        assert cfg.lake is not None
        self.cfg = cfg
        self.lake_cfg = cfg.lake
        self.root = cfg.output.root
        self.stripes = tuple(stripes)
        self.store = store or ObjectStore(cfg.lake, environ)
        self._environ = environ
        self._tables = tables
        self.now_ns = now_ns
        self.stats = LakeStats()
        self._lock = threading.Lock()
        self._entries: dict[Path, _Entry] = {}
        self._ready: set[str] = set()
        self._hw: dict[str, dict[str, int]] = {}  # table -> stripe -> high-water _seq
        self._last_commit: dict[str, int] = {}  # table -> ns of its last commit
        self._to_delete: dict[Path, LakeFile] = {}  # in a snapshot; delete_local pending
        self._journal_low: dict[str, int] = {}  # stripe -> no journal frame below this
        self._last_expiry: dict[str, int] = {}  # table -> ns of its last expiry
        self._last_orphans: dict[str, int] = {}  # table -> ns of its last orphan cleanup
        self._busy = trio.Lock()  # one step at a time: the task's and the shutdown flush
        self.retry_max_s = RETRY_MAX_S
        self._paused: str | None = None  # why capture is paused (the disk budget), or None
        self._journal_bytes = 0  # closed journal segments of our stripes, last measured
        for name in ("botocore", "boto3"):  # whole requests (signed headers) at DEBUG
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.INFO:
                logger.setLevel(logging.INFO)
        # "Iceberg does not have a dictionary type ... inferred as string": by design, per file
        logging.getLogger("pyiceberg.io.pyarrow").setLevel(logging.ERROR)
        # pyiceberg's own warnings (a commit retried after a concurrent one, ...) as our log
        # lines, not as plain text on stderr from logging's last-resort handler
        pyiceberg_log = logging.getLogger("pyiceberg")
        if not any(isinstance(h, _ToStructlog) for h in pyiceberg_log.handlers):
            pyiceberg_log.addHandler(_ToStructlog())
            pyiceberg_log.propagate = False

    @property
    def tables(self) -> LakeTables:
        """The catalog side. Built (pyiceberg imported: half a second) when first needed, so
        that a daemon's stripes connect without waiting for it; the task builds it in a
        thread (:meth:`step`)."""
        if self._tables is None:
            from capture.lake.tables import LakeTables

            self._tables = LakeTables(self.lake_cfg, self.root, self._environ)
        return self._tables

    @tables.setter
    def tables(self, tables: LakeTables) -> None:
        self._tables = tables

    # -- the hold (capture.lake.hold.JournalHold) ------------------------------------------------

    def file_committed(self, committed: CommittedFile) -> None:
        f = LakeFile.of(committed)
        with self._lock:
            self._entries.setdefault(f.path, _Entry(f))

    def floor(self, stripe: str) -> int | None:
        with self._lock:
            if stripe not in self._ready:
                return 0
            lows = [e.file.seq_min for e in self._entries.values() if e.file.stripe == stripe]
        return min(lows) if lows else None

    def journal_low(self, stripe: str, low: int) -> None:
        with self._lock:
            self._journal_low[stripe] = low

    def paused(self) -> str | None:
        return self._paused

    # -- the disk budget -----------------------------------------------------------------------

    def check_budget(self) -> None:
        """Measure the bytes held locally for the lake (local files not yet in a snapshot, and
        the closed journal segments of our stripes, which keep their frames) and pause or
        resume capture: paused at ``disk_budget_mb``, resumed below ``NEAR_BUDGET`` of it.
        Blocking (directory listings): run it in a thread."""
        jcfg = self.cfg.journal
        journal = 0
        if jcfg.enabled:
            for stripe in self.stripes:
                journal += closed_segment_bytes(jcfg.stripe_dir(self.root, stripe))
        with self._lock:
            self._journal_bytes = journal
            held = journal + sum(e.file.size for e in self._entries.values())
        budget = self.lake_cfg.disk_budget_mb * 2**20
        if budget and held >= budget and self._paused is None:
            self._paused = (
                f"lake: {held / 2**20:.1f} MiB held locally for the lake reached "
                f"lake.disk_budget_mb = {self.lake_cfg.disk_budget_mb}; capture paused until "
                f"the store and catalog take them (below {NEAR_BUDGET:.0%})"
            )
            log.error("lake: disk budget reached; capture paused", held_bytes=held,
                      budget_bytes=budget, last_error=self.stats.last_error)  # fmt: skip
        elif self._paused is not None and (not budget or held < NEAR_BUDGET * budget):
            self._paused = None
            log.warning("lake: below the disk budget again; capture resumes", held_bytes=held)

    async def _watch_budget(self) -> None:
        while True:
            await trio.to_thread.run_sync(self.check_budget)
            await trio.sleep(BUDGET_TICK_S)

    # -- figures -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._lock:
            entries = list(self._entries.values())
            journal_bytes = self._journal_bytes
        waiting = [e for e in entries if e.uri is None]
        local_bytes = sum(e.file.size for e in entries)
        held = local_bytes + journal_bytes
        s, now = self.stats, self.now_ns()
        budget = self.lake_cfg.disk_budget_mb * 2**20
        state = "ok"
        if self._paused is not None:
            state = "over_budget"  # capture paused
        elif budget and held >= NEAR_BUDGET * budget:
            state = "near_budget"
        if s.conflicts:
            state = "conflict"
        return {
            "state": state,
            "upload_lag_files": len(waiting),
            "upload_lag_bytes": sum(e.file.size for e in waiting),
            "uncommitted_files": len(entries),
            "uncommitted_bytes": local_bytes,
            "last_commit_age_s": (
                None if s.last_commit_ns is None else round((now - s.last_commit_ns) / 1e9, 1)
            ),
            "committed_files": s.committed_files,
            "commits": s.commits,
            "conflicts": s.conflicts,
            "errors": s.errors,
            "last_error": s.last_error,
            "held_bytes": held,
            "journal_held_bytes": journal_bytes,
            "disk_budget_mb": self.lake_cfg.disk_budget_mb,
            "capture_paused": self._paused,
        }

    # -- the task ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_budget)
            task_status.started()
            backoff = TICK_S
            while True:
                try:
                    await self._startup_scans()
                    await self.step(force=False)
                    backoff = TICK_S
                except (StoreError, CatalogError, OSError) as exc:
                    self._failed(exc)
                    backoff = min(self.retry_max_s, backoff * 2)
                await trio.sleep(backoff)

    async def flush(self, *, attempts: int = 5) -> None:
        """Upload and commit everything held now (shutdown; the caller bounds the time).
        Failures are retried a few times, then logged, not raised: what is left is found again
        at the next start."""
        delay = 0.2
        for _ in range(attempts):
            try:
                await self._startup_scans()
                await self.step(force=True)
            except (StoreError, CatalogError, OSError) as exc:
                self._failed(exc)
                await trio.sleep(delay)
                delay *= 2
                continue
            with self._lock:
                if not any(e.conflict is None for e in self._entries.values()):
                    return

    async def step(self, *, force: bool) -> None:
        """Upload what is waiting; commit tables whose interval is over (all with ``force``)."""
        async with self._busy:
            if self._tables is None:  # (not in the event loop: it would stall the stripes)
                await trio.to_thread.run_sync(lambda: self.tables)
            await self._uploads()
            await self._commits(force=force)
            await trio.to_thread.run_sync(self._delete_local)
            await self._expire(force=False)
            await self._clean_orphans(force=False)

    def _failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)[:300]
        log.warning("lake: will retry", error=self.stats.last_error)

    async def _startup_scans(self) -> None:
        for stripe in self.stripes:
            if stripe in self._ready:
                continue
            since = _read_since(self._since_path(stripe))
            found = await trio.to_thread.run_sync(
                partial(scan_local, self.root, stripe, since=since)
            )
            with self._lock:
                for f in found:
                    self._entries.setdefault(f.path, _Entry(f))
                self._ready.add(stripe)
            if found:
                log.info("lake: local files to check", stripe=stripe, files=len(found))

    async def _uploads(self) -> None:
        with self._lock:
            todo = [e for e in self._entries.values() if e.uri is None and e.conflict is None]
        for entry in sorted(todo, key=lambda e: (e.file.stripe, e.file.table, e.file.seq_min)):
            key = self._key(entry.file)
            try:
                outcome = await trio.to_thread.run_sync(self._upload, entry.file, key)
            except ObjectConflict as exc:
                entry.conflict = str(exc)
                self.stats.conflicts += 1
                log.error("lake: object conflict; file kept locally", error=str(exc))
                continue
            crash_point("lake.uploaded")
            entry.uri = self._uri(entry.file)
            if outcome == "there":
                self.stats.already_there += 1
            else:
                self.stats.uploaded_files += 1
                self.stats.uploaded_bytes += entry.file.size

    def _key(self, f: LakeFile) -> str:
        return f.key(self.lake_cfg.prefix, self.lake_cfg.host_id)

    def _uri(self, f: LakeFile) -> str:
        return f"s3://{self.lake_cfg.bucket}/{self._key(f)}"

    def _upload(self, f: LakeFile, key: str) -> str:
        return self.store.put_new(key, f.path, size=f.size, sha256=sha256_of(f.path))

    async def _commits(self, *, force: bool) -> None:
        with self._lock:
            by_table: dict[str, list[_Entry]] = {}
            for e in self._entries.values():
                by_table.setdefault(e.file.table, []).append(e)
        interval_ns = int(self.lake_cfg.commit_interval * 1e9)
        now = self.now_ns()
        for table, entries in sorted(by_table.items()):
            if table not in self._hw:
                hw = await trio.to_thread.run_sync(self.tables.watermarks, table, self.stripes)
                self._hw[table] = hw
                await self._retire_known(table, entries)
                entries = [e for e in entries if e.file.path in self._entries]
            if not force and now - self._last_commit.get(table, 0) < interval_ns:
                continue
            batch = _committable(entries)
            if batch:
                await self._commit(table, batch)

    async def _expire(self, *, force: bool) -> None:
        """Expire old snapshots of the tables this process committed to (docs/lake.md)."""
        hours = self.lake_cfg.snapshot_retention_hours
        if not hours:
            return
        now = self.now_ns()
        for table in sorted(self._last_commit):
            if not force and now - self._last_expiry.get(table, 0) < EXPIRE_EVERY_S * 1e9:
                continue
            older_than_ms = (now - int(hours * 3600e9)) // 1_000_000
            expired = await trio.to_thread.run_sync(self.tables.expire, table, older_than_ms)
            self._last_expiry[table] = now
            self.stats.expired_snapshots += expired

    async def _clean_orphans(self, *, force: bool) -> None:
        """Hourly per table this process committed to: :meth:`remove_orphans`."""
        hours = self.lake_cfg.orphan_age_hours
        if not hours or len(self._ready) < len(self.stripes):
            return  # (until the start-up scans are done, uploads not yet committed are unknown)
        now = self.now_ns()
        before = dt.datetime.fromtimestamp((now - hours * 3600e9) / 1e9, dt.UTC)
        for table in sorted(self._last_commit):
            if not force and now - self._last_orphans.get(table, 0) < EXPIRE_EVERY_S * 1e9:
                continue
            self._last_orphans[table] = now  # a failure is tried again in an hour, not at once
            removed = await trio.to_thread.run_sync(self.remove_orphans, table, before)
            self.stats.orphans_removed += removed

    def remove_orphans(self, table: str, before: dt.datetime) -> int:
        """Delete the objects of ``table`` last modified before ``before`` that no snapshot
        kept references: in the table's metadata directory (manifests and manifest lists of
        expired snapshots, metadata files no longer logged) and this host's data objects of this
        process's stripes, except those uploaded and not committed yet. Returns how many.
        Blocking. Raises StoreError, CatalogError."""
        refs, metadata_dir = self.tables.referenced(table)
        bucket = f"s3://{self.lake_cfg.bucket}/"
        with self._lock:
            keep = {self._uri(e.file) for e in self._entries.values()}
        mine = tuple(f"{self.lake_cfg.host_id}_{stripe}_" for stripe in self.stripes)
        data_dir = "/".join([*([self.lake_cfg.prefix] if self.lake_cfg.prefix else []), "data",
                             table, ""])  # fmt: skip
        keys = [
            k for k in self.store.list_before(data_dir, before)
            if k.rsplit("/", 1)[-1].startswith(mine)
        ]  # fmt: skip
        if metadata_dir.startswith(bucket):
            keys += self.store.list_before(metadata_dir.removeprefix(bucket), before)
        doomed = [k for k in keys if bucket + k not in refs and bucket + k not in keep]
        if doomed:
            self.store.delete(doomed)
            log.info("lake: orphan objects deleted", table=table, objects=len(doomed))
        return len(doomed)

    async def _retire_known(self, table: str, entries: list[_Entry]) -> None:
        """At start: local files at or below the watermark. Normally a previous run committed
        them (a crash came after the catalog commit): their objects are in the table. One that
        is not (recovery rewrote rows a sink error had aborted, after later files of the table
        were committed) is added if no data file of its stripe overlaps its ``_seq`` range, and
        held as a conflict (never added: rows would be there twice) if one does."""
        hw = self._hw[table]
        below = [e for e in entries if e.file.seq_max <= hw.get(e.file.stripe, -1)]
        if not below:
            return
        paths, spans = await trio.to_thread.run_sync(self.tables.data_files, table)
        done: list[_Entry] = []
        for e in below:
            if self._uri(e.file) in paths:
                done.append(e)
            elif table != events.TABLE and any(
                lo <= e.file.seq_max and e.file.seq_min <= hi
                for lo, hi in spans.get(e.file.stripe, [])
            ):
                e.conflict = f"{e.file.path}: _seq range overlaps data files already in {table}"
                self.stats.conflicts += 1
                log.error("lake: file overlaps the table; kept locally", error=e.conflict)
            else:
                log.warning("lake: file below the watermark, not in the table: adding it",
                            path=str(e.file.path))  # fmt: skip
        if done:
            self.stats.recognised_committed += len(done)
            log.info("lake: files already in the table", table=table, files=len(done))
            self._done(done)

    async def _commit(self, table: str, batch: list[_Entry]) -> None:
        hw = dict(self._hw.get(table, {}))
        for e in batch:
            hw[e.file.stripe] = max(hw.get(e.file.stripe, -1), e.file.seq_max)
        schema = await trio.to_thread.run_sync(_schema_of, [e.file.path for e in batch])
        uris = [e.uri for e in batch if e.uri is not None]
        started = time.perf_counter()
        await trio.to_thread.run_sync(self.tables.commit, table, schema, uris, hw)
        crash_point("lake.committed")
        self.stats.commit_seconds.append(time.perf_counter() - started)
        del self.stats.commit_seconds[:-1000]
        self._hw[table] = hw
        now = self.now_ns()
        self._last_commit[table] = now
        self.stats.last_commit_ns = now
        self.stats.commits += 1
        self.stats.committed_files += len(batch)
        log.info("lake: committed", table=table, files=len(batch), watermarks=hw)
        self._done(batch)

    def _done(self, entries: list[_Entry]) -> None:
        with self._lock:
            for e in entries:
                self._entries.pop(e.file.path, None)
                if self.lake_cfg.delete_local:
                    self._to_delete[e.file.path] = e.file
        for stripe in {e.file.stripe for e in entries}:
            self._write_since(stripe)

    def _delete_local(self) -> None:
        """Delete the local files in a snapshot whose frames the journal no longer has."""
        with self._lock:
            due = [
                f for f in self._to_delete.values()
                if f.seq_max < self._journal_low.get(f.stripe, -1)
            ]  # fmt: skip
        for f in due:
            try:
                f.path.unlink()
                self.stats.deleted_local += 1
                crash_point("lake.deleted")
            except FileNotFoundError:
                pass
            with self._lock:
                self._to_delete.pop(f.path, None)

    def _since_path(self, stripe: str) -> Path:
        return self.root / "_lake" / f"{self.lake_cfg.host_id}.{stripe}.since"

    def _write_since(self, stripe: str) -> None:
        """The date from which the next start scans: the oldest file still held, or yesterday
        (a file of yesterday may still be committed after midnight: rotation plus grace)."""
        with self._lock:
            dates = [e.file.date for e in self._entries.values() if e.file.stripe == stripe]
            dates += [f.date for f in self._to_delete.values() if f.stripe == stripe]
        today = dt.datetime.fromtimestamp(self.now_ns() / 1e9, dt.UTC).date()
        day = min(dates) if dates else today - dt.timedelta(days=1)
        path = self._since_path(stripe)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(day.isoformat() + "\n", encoding="ascii")
        os.replace(tmp, path)


class _ToStructlog(logging.Handler):
    """A standard-library log record of pyiceberg, as a line of ours."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        level = "warning" if record.levelno < logging.ERROR else "error"
        getattr(log, level)("lake: pyiceberg", message=text[:500], logger=record.name)


def _committable(entries: list[_Entry]) -> list[_Entry]:
    """Per stripe, the files uploaded in ``_seq`` order up to the first one that is not (or
    is held as a conflict): a table's watermark may only cover files that are in it."""
    out: list[_Entry] = []
    by_stripe: dict[str, list[_Entry]] = {}
    for e in entries:
        by_stripe.setdefault(e.file.stripe, []).append(e)
    for group in by_stripe.values():
        for e in sorted(group, key=lambda e: e.file.seq_min):
            if e.uri is None or e.conflict is not None:
                break
            out.append(e)
    return out


def _schema_of(paths: list[Path]) -> pa.Schema:
    schemas = [pq.read_schema(p) for p in paths]
    return schemas[0] if len(schemas) == 1 else pa.unify_schemas(schemas)


def closed_segment_bytes(directory: Path) -> int:
    """Bytes of a stripe's journal segments but the newest (the one being written: it is
    bounded by ``journal.segment_mb`` and retired only once closed)."""
    try:
        sizes = sorted(
            (entry.name, entry.stat().st_size)
            for entry in os.scandir(directory)
            if entry.name.startswith("seg-") and entry.name.endswith(".mlj")
        )
    except OSError:
        return 0
    return sum(size for _, size in sizes[:-1])


def _read_since(path: Path) -> dt.date | None:
    try:
        return dt.date.fromisoformat(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None  # no record yet: scan every date (the first run also backfills)

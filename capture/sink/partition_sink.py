"""The sink: one stripe's batches -> per-(type, date, interval) Parquet part files, buffered into
row groups, rotated, and committed atomically.

Commit is: flush buffered rows -> write footer -> fsync file -> rename to the final name ->
fsync the directory.  A reader therefore never sees a partial file under a ``.parquet`` name.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from capture.durable import make_dirs
from capture.errors import (
    SinkClosedError,
    SinkCommitError,
    SinkError,
    SinkOpenError,
    SinkWriteError,
)
from capture.faultpoints import crash_point, fail_point
from capture.rotation import (
    NS_PER_S,
    Due,
    OpenInterval,
    day_window,
    next_boundary_ns,
)
from capture.rotation import due as due_files
from capture.rowbuffer import RowBuffer
from capture.sink import fs
from capture.sink.footer import (
    META_HOST,
    META_MSG_TYPE,
    META_ROWS,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SESSION,
    META_STRIPE,
    META_WRITER,
    WRITER_ID,
)
from capture.sink.layout import _TS_FORMAT, _check_component, _inprogress_name, _session_tag
from capture.sink.settings import CommittedFile, SinkSettings, SinkStatistics

log = structlog.get_logger(__name__)

# The footer carries seq ranges known only at commit time, which needs
# ParquetWriter.add_key_value_metadata (pyarrow >= 17).  Fail at import, not at the first
# commit hours into a run.
if not hasattr(pq.ParquetWriter, "add_key_value_metadata"):  # pragma: no cover
    raise ImportError(f"capture.sink needs pyarrow >= 17 (found {pa.__version__})")

RECV_NS_COLUMN: Final = "_recv_time_ns"  # exact receive time: files and dates follow it
SEQ_COLUMN: Final = "_seq"
RECV_TIME_TYPE: Final = pa.int64()

_KNOWN_DIRS_MAX: Final = 4096
_DATA_PAGE_SIZE: Final = 1 << 20  # 1 MiB: Arrow's default, stated explicitly
# Memory an open ParquetWriter keeps per column chunk written (its footer metadata), measured
# with pyarrow 26: ~0.9 KB, statistics or not (bench/HISTORY.md, item 18).
FOOTER_BYTES_PER_COLUMN_CHUNK: Final = 1024


_FileKey = tuple[str, dt.date, int]  # (message type, local date, interval end ns)


def _sink_error(
    cls: type[SinkError], exc: OSError, what: str, path: Path, f: _OpenFile | None = None
) -> SinkError:
    """``cls`` for ``exc``, naming the rows of ``f`` that reach no committed file (if any)."""
    if f is None or f.rows == 0:
        return cls.from_os_error(exc, what, path)
    return cls.from_os_error(
        exc, what, path, msg_type=f.msg_type, seq_min=f.seq_min, seq_max=f.seq_max
    )


def _leaf_columns(t: Any) -> int:
    """Parquet column chunks per row group for an Arrow type (struct and list fields nest)."""
    if pa.types.is_struct(t):
        return sum(_leaf_columns(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaf_columns(t.key_type) + _leaf_columns(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaf_columns(t.value_type)
    return 1


@dataclass(slots=True, eq=False)
class _OpenFile:
    msg_type: str
    date: dt.date
    directory: Path
    final_name: str
    inprogress: Path
    schema: Any
    stream: Any
    writer: Any
    opened_ns: int
    boundary_ns: int
    last_write_ns: int
    buffer: RowBuffer = field(init=False)
    rows: int = 0
    seq_min: int = 0
    seq_max: int = 0
    row_groups: int = 0
    leaf_columns: int = 1
    last_use: int = 0  # the sink's write counter at the last write (least recently written)

    def __post_init__(self) -> None:
        self.buffer = RowBuffer(self.schema)

    @property
    def buffered_rows(self) -> int:
        return self.buffer.rows

    @property
    def buffered_bytes(self) -> int:
        return self.buffer.nbytes

    def approx_bytes(self) -> int:
        return int(self.stream.tell()) + self.buffered_bytes

    def footer_bytes(self) -> int:
        """Estimated memory of the footer being built (measured ~0.9 KB per column chunk)."""
        return self.row_groups * self.leaf_columns * FOOTER_BYTES_PER_COLUMN_CHUNK


class PartitionSink:
    """Writes one stripe's batches into per-(msg_type, date) Parquet part files.

    Not async and not meant for the event loop.  Public methods are serialised by an internal
    lock, so a timer thread may call rotate_due() while another thread writes.
    """

    def __init__(
        self,
        settings: SinkSettings,
        *,
        stripe: str,
        session: str,
        now_ns: Callable[[], int] = time.time_ns,
        on_commit: Callable[[CommittedFile], None] | None = None,
    ) -> None:
        _check_component("stripe", stripe)
        # Called with each committed file while the lock is held: before uncommitted_seq_min()
        # stops counting its rows (capture.lake.hold). Must be quick and must not raise.
        self._on_commit = on_commit
        self._settings = settings
        self._stripe = stripe
        self._session = session
        self._tag = _session_tag(session)
        self._now_ns = now_ns
        self._compression = settings.compression.lower()
        self._lock = threading.Lock()
        # One open file per (message type, local date, interval end): rows are filed by the
        # interval of their receive time, whenever they reach the sink.
        self._files: dict[_FileKey, _OpenFile] = {}
        self._known_dirs: set[Path] = set()
        self._checked_msg_types: set[str] = set()
        self._counter = 0
        self._uses = 0
        self._closed = False
        self._buffered_bytes = 0
        self._rows_written = 0
        self._rows_committed = 0
        self._files_committed = 0
        self._bytes_committed = 0
        self._row_groups = 0
        self._files_aborted = 0
        # Lowest seq of any row in a file this sink abandoned: those rows are in no file and
        # never will be this run, so the journal must keep them (see uncommitted_seq_min).
        self._aborted_seq_min: int | None = None

    # ---------------------------------------------------------------- public API

    @property
    def settings(self) -> SinkSettings:
        return self._settings

    @property
    def stripe(self) -> str:
        return self._stripe

    @property
    def session_tag(self) -> str:
        """The token used in file names for this session."""
        return self._tag

    def write(self, msg_type: str, batch: Any) -> list[CommittedFile]:
        """Buffer ``batch`` into the open file for (msg_type, date); returns files committed
        as a side effect (interval boundary passed, schema change, size bound).

        ``batch`` needs a non-null ``_recv_time_ns`` (int64 ns since the epoch) and ``_seq``
        (int64).  Rows are filed under the local date of ``_recv_time_ns`` in ``tz``; a batch
        that spans local midnight (against the caller's contract) is split, never misfiled.

        On SinkError, treat ``batch`` as not written: the error names the file that was
        abandoned (``msg_type``/``seq_min``/``seq_max``), and ``committed`` lists files that
        did get committed by this call.
        """
        out: list[CommittedFile] = []
        with self._lock:
            if self._closed:
                raise SinkClosedError("write() on a closed PartitionSink")
            if msg_type not in self._checked_msg_types:
                _check_component("msg_type", msg_type)
                self._checked_msg_types.add(msg_type)
            if batch.num_rows == 0:
                return out
            recv = self._validated_recv(batch)
            try:
                for day, day_part in self._split_by_date(batch, recv):
                    for boundary, part in self._split_by_interval(day_part):
                        self._write_part(msg_type, day, boundary, part, out)
            except SinkError as exc:
                exc.committed = tuple(out) + exc.committed
                raise
        return out

    def rotate_due(self) -> list[CommittedFile]:
        """Commit files whose interval ended ``commit_grace_s`` ago or that had no write for
        ``rotate_interval_s`` (capture.rotation.due)."""
        with self._lock:
            return self._commit_many(self._due().files)

    def next_due_ns(self) -> int | None:
        """When the next open file falls due (None: no file open): the writer loop wakes then,
        so that the last file of a type that went quiet is committed at its grace deadline."""
        with self._lock:
            return self._due().next_ns

    def _due(self) -> Due[_FileKey]:
        s = self._settings
        return due_files(
            ((key, OpenInterval(f.boundary_ns, f.last_write_ns)) for key, f in self._files.items()),
            self._now_ns(),
            grace_ns=int(s.commit_grace_s * NS_PER_S),
            idle_ns=s.rotate_interval_s * NS_PER_S,
        )

    def rotate_all(self, reason: str = "manual") -> list[CommittedFile]:
        """Commit every open file now (SIGHUP "rotate now"; shutdown)."""
        with self._lock:
            return self._commit_many([(key, reason) for key in self._files])

    def close(self) -> list[CommittedFile]:
        """rotate_all("shutdown") and refuse further writes.  Idempotent."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            return self._commit_many([(key, "shutdown") for key in self._files])

    def uncommitted_seq_min(self) -> int | None:
        """Lowest receive sequence number held by a file not yet committed, or by a file this
        sink aborted after a failed write (None: none).

        Takes the lock, so a file in the middle of its commit still counts, and a file aborted
        in the writer thread counts from the moment it is dropped (before the caller of write()
        even sees the error): journal segments are retired below this, and must never be
        retired for rows that are in no committed file.
        """
        with self._lock:
            mins = [f.seq_min for f in self._files.values() if f.rows]
            if self._aborted_seq_min is not None:
                mins.append(self._aborted_seq_min)
            return min(mins) if mins else None

    @property
    def aborted_seq_min(self) -> int | None:
        """Lowest seq of the rows of every file aborted so far (None: no rows lost)."""
        return self._aborted_seq_min

    @property
    def open_file_count(self) -> int:
        """Files currently open (lock-free: safe to read from the event loop while a worker
        thread writes; ``len`` of a dict is atomic)."""
        return len(self._files)

    @property
    def buffered_bytes(self) -> int:
        """Decoded bytes waiting for their row group (lock-free, like open_file_count)."""
        return self._buffered_bytes

    @property
    def open_footer_bytes(self) -> int:
        """Estimated memory of the footers of the open files (row-group metadata)."""
        return sum(f.footer_bytes() for f in list(self._files.values()))

    def statistics(self) -> SinkStatistics:
        with self._lock:
            return SinkStatistics(
                open_files=len(self._files),
                buffered_bytes=self._buffered_bytes,
                buffered_rows=sum(f.buffered_rows for f in self._files.values()),
                rows_written=self._rows_written,
                rows_committed=self._rows_committed,
                files_committed=self._files_committed,
                bytes_committed=self._bytes_committed,
                row_groups_written=self._row_groups,
                files_aborted=self._files_aborted,
            )

    # ---------------------------------------------------------------- write path

    @staticmethod
    def _validated_recv(batch: Any) -> Any:
        schema = batch.schema
        for name, want in ((RECV_NS_COLUMN, RECV_TIME_TYPE), (SEQ_COLUMN, pa.int64())):
            idx = schema.get_field_index(name)
            if idx < 0:
                raise ValueError(f"batch has no {name!r} column")
            if schema.field(idx).type != want:
                raise ValueError(f"column {name!r} must be {want}, got {schema.field(idx).type}")
            if batch.column(idx).null_count:
                raise ValueError(f"column {name!r} must not contain nulls")
        return batch.column(RECV_NS_COLUMN)

    def _split_by_date(self, batch: Any, recv: Any) -> Iterator[tuple[dt.date, Any]]:
        tz = self._settings.tz
        mm = pc.min_max(recv)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        start, end, day = day_window(lo, tz)
        if hi < end:  # the caller's contract: one date per batch
            yield day, batch
            return
        # Contract broken (e.g. a batch straddling midnight): split rather than misfile.
        remaining = batch.num_rows
        while remaining:
            mask = pc.and_(pc.greater_equal(recv, start), pc.less(recv, end))
            part = batch.filter(mask)
            if part.num_rows:
                remaining -= part.num_rows
                yield day, part
            start, end, day = day_window(end, tz)

    def _split_by_interval(self, part: Any) -> Iterator[tuple[int, Any]]:
        """(interval end, rows received in that interval) for the rows of one local date."""
        s = self._settings
        recv = part.column(RECV_NS_COLUMN)
        mm = pc.min_max(recv)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        boundary = next_boundary_ns(lo, s.rotate_interval_s, s.tz)
        if hi < boundary:  # the common case: one interval
            yield boundary, part
            return
        start = lo
        while start <= hi:
            chunk = part.filter(pc.and_(pc.greater_equal(recv, start), pc.less(recv, boundary)))
            if chunk.num_rows:
                yield boundary, chunk
            start, boundary = boundary, next_boundary_ns(boundary, s.rotate_interval_s, s.tz)

    def _write_part(
        self, msg_type: str, day: dt.date, boundary: int, part: Any, out: list[CommittedFile]
    ) -> None:
        s = self._settings
        key = (msg_type, day, boundary)
        now = self._now_ns()
        # Rows of a later interval arrived: this type's earlier intervals are complete (each
        # type's batches reach the sink in receive order), so commit them without waiting for
        # the grace period.
        for earlier in [k for k in self._files if k[0] == msg_type and k[2] < boundary]:
            self._commit(earlier, "interval", out)
        f = self._files.get(key)
        if f is not None and not f.schema.equals(part.schema, check_metadata=False):
            self._commit(key, "schema", out)
            f = None
        if f is None:
            bound = s.max_open_files
            while bound is not None and len(self._files) >= bound:
                lru = min(self._files, key=lambda k: self._files[k].last_use)
                self._commit(lru, "open_files", out)
            f = self._open(msg_type, day, part, now, boundary)
        self._uses += 1
        f.last_use = self._uses

        seq = pc.min_max(part.column(SEQ_COLUMN))
        seq_lo, seq_hi = seq["min"].as_py(), seq["max"].as_py()
        if f.rows == 0:
            f.seq_min, f.seq_max = seq_lo, seq_hi
        else:
            f.seq_min, f.seq_max = min(f.seq_min, seq_lo), max(f.seq_max, seq_hi)
        held = f.buffered_bytes
        f.buffer.append(part)
        f.rows += part.num_rows
        f.last_write_ns = now
        self._buffered_bytes += f.buffered_bytes - held
        self._rows_written += part.num_rows

        if f.buffered_bytes >= s.row_group_bytes:
            self._flush(f, full=True)
        elif f.buffered_rows >= s.row_group_rows:
            self._flush(f, full=False)
        self._enforce_memory_budget()
        if f.approx_bytes() >= s.max_file_bytes:
            self._commit(key, "size", out)
        self._enforce_footer_budget(out)

    def _enforce_footer_budget(self, out: list[CommittedFile]) -> None:
        s = self._settings
        budget = s.footer_budget_bytes or s.memory_budget_bytes
        while self._files and self.open_footer_bytes > budget:
            key = max(self._files, key=lambda k: self._files[k].footer_bytes())
            self._commit(key, "footer", out)

    def _enforce_memory_budget(self) -> None:
        budget = self._settings.memory_budget_bytes
        while self._buffered_bytes > budget:
            largest = max(self._files.values(), key=lambda f: f.buffered_bytes)
            if largest.buffered_bytes == 0:  # pragma: no cover - accounting invariant
                break
            self._flush(largest, full=True)

    def _flush(self, f: _OpenFile, *, full: bool) -> None:
        """Write buffered rows as row groups of at most row_group_rows rows.

        full=False writes only whole row groups and keeps the remainder buffered, so many
        small batches make few, evenly sized row groups.
        """
        if not f.buffer:
            return
        rg_rows = self._settings.row_group_rows
        table = f.buffer.table()
        take = table.num_rows if full else (table.num_rows // rg_rows) * rg_rows
        if take == 0:
            return
        try:
            fail_point(f"sink.write.{self._stripe}")
            f.writer.write_table(table.slice(0, take), row_group_size=rg_rows)
        except OSError as exc:
            self._abort(f)
            raise _sink_error(SinkWriteError, exc, "writing row group", f.inprogress, f) from exc
        except BaseException:
            self._abort(f)
            raise
        groups = -(-take // rg_rows)
        f.row_groups += groups
        self._row_groups += groups
        held = f.buffered_bytes
        f.buffer.keep_from(table, take)
        self._buffered_bytes -= held - f.buffered_bytes

    # ---------------------------------------------------------------- open / commit / abort

    def _partition_dir(self, msg_type: str, day: dt.date) -> Path:
        date_dir = f"date={day.isoformat()}"
        return self._settings.root / msg_type / date_dir / f"stripe={self._stripe}"

    def _ensure_dir(self, path: Path) -> None:
        """mkdir -p, fsyncing the parent of every directory created so a new partition
        directory survives a power loss together with the files committed into it."""
        if path in self._known_dirs:
            return
        make_dirs(path, fs.fsync_dir)
        if len(self._known_dirs) >= _KNOWN_DIRS_MAX:  # one entry per (msg_type, date)
            self._known_dirs.clear()
        self._known_dirs.add(path)

    def _open(self, msg_type: str, day: dt.date, first: Any, now: int, boundary: int) -> _OpenFile:
        s = self._settings
        directory = self._partition_dir(msg_type, day)
        first_recv = pc.min(first.column(RECV_NS_COLUMN)).as_py()
        stamp = dt.datetime.fromtimestamp(first_recv // NS_PER_S, dt.UTC).strftime(_TS_FORMAT)
        try:
            self._ensure_dir(directory)
            while True:
                self._counter += 1
                final_name = f"part-{stamp}-{self._tag}-{self._counter:06d}.parquet"
                inprogress = directory / _inprogress_name(final_name)
                if (directory / final_name).exists():
                    continue
                try:
                    fs.create_exclusive(inprogress)
                except FileExistsError:
                    continue
                except FileNotFoundError:
                    # The directory vanished after we cached it (e.g. a retention job removed
                    # an old date).  Recreate it once; a second failure is a real error.
                    self._known_dirs.discard(directory)
                    self._ensure_dir(directory)
                    fs.create_exclusive(inprogress)
                break
        except OSError as exc:
            raise _sink_error(SinkOpenError, exc, "creating part file", directory) from exc
        stream = None
        try:
            stream = fs.open_output(inprogress)
            writer = pq.ParquetWriter(
                stream,
                first.schema,
                # Tables hold microsecond timestamps (INT64 TIMESTAMP(MICROS, true)), which
                # Spark, Iceberg v2, DuckDB, Polars and pandas all read as they are; exact
                # nanoseconds live in int64 columns (_recv_time_ns).  No coercion, no INT96
                # (deprecated, no usable statistics).
                version="2.6",
                use_dictionary=True,
                compression=self._compression,
                compression_level=s.compression_level,
                write_statistics=True,
                data_page_size=_DATA_PAGE_SIZE,
                data_page_version="1.0",  # v2 data pages are less widely supported
                use_deprecated_int96_timestamps=False,
                coerce_timestamps=None,
                store_schema=True,  # restores tz="UTC" and exact Arrow types on read
            )
        except OSError as exc:
            self._discard_empty(stream, inprogress)
            raise _sink_error(SinkOpenError, exc, "opening part file", inprogress) from exc
        except BaseException:
            self._discard_empty(stream, inprogress)
            raise
        f = _OpenFile(
            msg_type=msg_type,
            date=day,
            directory=directory,
            final_name=final_name,
            inprogress=inprogress,
            schema=first.schema,
            stream=stream,
            writer=writer,
            opened_ns=now,
            boundary_ns=boundary,
            last_write_ns=now,
            leaf_columns=sum(_leaf_columns(field.type) for field in first.schema),
        )
        self._files[(msg_type, day, boundary)] = f
        return f

    @staticmethod
    def _discard_empty(stream: Any, inprogress: Path) -> None:
        """Undo a half-done open: the file holds no rows, so removing it loses nothing."""
        try:
            if stream is not None:
                stream.close()
            inprogress.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("sink.discard_failed", path=str(inprogress), error=str(exc))

    def _commit_many(self, due: list[tuple[_FileKey, str]]) -> list[CommittedFile]:
        """Commit each listed file; one failure does not stop the others.  The first error
        is raised at the end, carrying everything that was committed."""
        out: list[CommittedFile] = []
        first_error: SinkError | None = None
        for key, reason in due:
            try:
                self._commit(key, reason, out)
            except SinkError as exc:
                if first_error is None:
                    first_error = exc
                else:
                    log.error("sink.commit_failed", path=str(exc.path), error=str(exc))
        if first_error is not None:
            first_error.committed = tuple(out)
            raise first_error
        return out

    def _commit(self, key: _FileKey, reason: str, out: list[CommittedFile]) -> None:
        f = self._files[key]
        self._flush(f, full=True)  # on failure _flush aborts the file and raises
        del self._files[key]
        try:
            f.writer.add_key_value_metadata(
                {
                    META_MSG_TYPE: f.msg_type,
                    META_STRIPE: self._stripe,
                    META_SESSION: self._session,
                    META_SEQ_MIN: str(f.seq_min),
                    META_SEQ_MAX: str(f.seq_max),
                    META_ROWS: str(f.rows),
                    META_WRITER: WRITER_ID,
                    **({META_HOST: s_host} if (s_host := self._settings.host) else {}),
                }
            )
            f.writer.close()  # writes the footer
            size = int(f.stream.tell())
            crash_point("sink.commit.footer")
        except OSError as exc:
            self._abort(f, registered=False)
            raise _sink_error(SinkWriteError, exc, "writing footer", f.inprogress, f) from exc
        except BaseException:
            self._abort(f, registered=False)
            raise
        try:
            fs.fsync_fd(f.stream.fileno())
        except OSError as exc:
            self._abort(f, registered=False)
            raise _sink_error(SinkCommitError, exc, "fsync of part file", f.inprogress, f) from exc
        crash_point("sink.commit.fsync")
        try:
            f.stream.close()
        except OSError as exc:
            self._abort(f, registered=False)
            raise _sink_error(SinkCommitError, exc, "closing part file", f.inprogress, f) from exc

        final = f.directory / f.final_name
        try:
            if final.exists():  # never overwrite: names are unique by construction, but check
                final = self._fresh_final(f)
            fs.rename(f.inprogress, final)
        except OSError as exc:
            self._files_aborted += 1
            self._lost(f)
            raise _sink_error(SinkCommitError, exc, "renaming part file", f.inprogress, f) from exc
        crash_point("sink.commit.rename")

        committed = CommittedFile(
            path=final,
            msg_type=f.msg_type,
            date=f.date,
            stripe=self._stripe,
            rows=f.rows,
            bytes=size,
            seq_min=f.seq_min,
            seq_max=f.seq_max,
            reason=reason,
        )
        out.append(committed)
        if self._on_commit is not None:
            self._on_commit(committed)
        self._files_committed += 1
        self._rows_committed += f.rows
        self._bytes_committed += size
        try:
            fs.fsync_dir(f.directory)
        except OSError as exc:
            # The file is complete and visible; only the durability of its name is in doubt.
            raise _sink_error(SinkCommitError, exc, "fsync of directory", f.directory) from exc
        crash_point("sink.commit.done")

    def _fresh_final(self, f: _OpenFile) -> Path:
        stem = f.final_name.removesuffix(".parquet")
        n = 1
        while (candidate := f.directory / f"{stem}.{n}.parquet").exists():
            n += 1
        return candidate

    def _lost(self, f: _OpenFile) -> None:
        """Remember that ``f``'s rows are in no committed file (caller holds the lock)."""
        if f.rows and (self._aborted_seq_min is None or f.seq_min < self._aborted_seq_min):
            self._aborted_seq_min = f.seq_min

    def _abort(self, f: _OpenFile, *, registered: bool = True) -> None:
        """Close an in-progress file after an error and leave it in place (hidden) for
        cleanup_in_progress() and journal replay.  Never raises."""
        if registered:
            self._files.pop((f.msg_type, f.date, f.boundary_ns), None)
        self._buffered_bytes -= f.buffered_bytes
        f.buffer.clear()
        self._files_aborted += 1
        self._lost(f)
        for what, close in (("writer", f.writer.close), ("stream", f.stream.close)):
            try:
                close()
            except (OSError, pa.ArrowException, ValueError) as exc:
                log.warning(
                    "sink.abort_close_failed", what=what, path=str(f.inprogress), error=str(exc)
                )
        # A failed close leaves pyarrow's wrapper "open"; its __del__ would retry the footer
        # write on a closed stream.  The file is being abandoned, so mark it closed.
        f.writer.is_open = False
        log.error(
            "sink.file_aborted",
            path=str(f.inprogress),
            msg_type=f.msg_type,
            rows=f.rows,
            seq_min=f.seq_min,
            seq_max=f.seq_max,
        )

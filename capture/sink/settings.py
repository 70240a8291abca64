"""What the sink is told (``SinkSettings``) and what it tells (``CommittedFile``,
``SinkStatistics``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfoNotFoundError

import pyarrow as pa

from capture.rotation import check_interval, time_zone

_COMPRESSIONS: Final = frozenset({"none", "snappy", "gzip", "brotli", "lz4", "zstd"})


@dataclass(frozen=True, slots=True)
class SinkSettings:
    root: Path
    #: Files rotate at clock boundaries aligned in ``tz`` (300 -> :00, :05, ...; 3600 -> top
    #: of the hour).  Must divide 86400.
    rotate_interval_s: int = 300
    #: Size bound (approximate: bytes written so far plus Arrow bytes still buffered).
    max_file_bytes: int = 512 * 2**20
    #: Target rows per row group.
    row_group_rows: int = 131_072
    #: ... or this many buffered Arrow bytes, whichever comes first.
    row_group_bytes: int = 64 * 2**20
    #: Total buffered Arrow bytes across all open files of one sink; above it the largest
    #: buffer is flushed as a (smaller) row group.
    memory_budget_bytes: int = 256 * 2**20
    #: An open file's footer (the metadata of every row group written so far) lives in memory
    #: until the file is committed: ~1 KB per column chunk, ~33 KB per row group of
    #: OptionNbboQuote.  Above this total across the sink's open files, the file with the most
    #: is committed early (reason "footer").  Without it, memory grew with the time a file stays
    #: open times its row groups: ~130 MB at full rate with 5-minute files.  None: the same as
    #: ``memory_budget_bytes``.
    footer_budget_bytes: int | None = None
    compression: str = "zstd"
    compression_level: int | None = None
    #: IANA zone for the date partition and for rotation alignment (DST-correct).
    tz: str = "UTC"
    #: Rows belong to the interval of their receive time.  A file stays open this long past
    #: its boundary for rows received before the boundary that are still on their way from
    #: the socket (pending batches, the decode queue); later ones go to a file of their own.
    commit_grace_s: float = 2.0
    #: Files held open at once (one per type, date and interval; [limits] max_open_types);
    #: past it the least recently written one is committed early (reason "open_files"), like
    #: pyarrow's ``max_open_files``: a server sending thousands of types cannot exhaust file
    #: descriptors or memory.  None: no bound.
    max_open_files: int | None = None
    #: Written to every footer as ``mlink.host`` (None: not written).
    host: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # tolerate str from config code
        check_interval(self.rotate_interval_s)
        if not 0 <= self.commit_grace_s < self.rotate_interval_s:
            raise ValueError(
                "commit_grace_s must be >= 0 and below rotate_interval_s, "
                f"got {self.commit_grace_s!r}"
            )
        for name in ("max_file_bytes", "row_group_rows", "row_group_bytes", "memory_budget_bytes",
                     "footer_budget_bytes"):  # fmt: skip
            value = getattr(self, name)
            if value is None and name == "footer_budget_bytes":
                continue  # the default: memory_budget_bytes
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        codec = self.compression.lower()
        if codec not in _COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {sorted(_COMPRESSIONS)}, got {self.compression!r}"
            )
        if codec != "none" and not pa.Codec.is_available(codec):
            raise ValueError(f"compression {self.compression!r} is not available in this pyarrow")
        if self.compression_level is not None:
            if codec == "none":
                raise ValueError("compression_level cannot be set with compression='none'")
            try:
                pa.Codec(codec, self.compression_level)
            except (ValueError, pa.ArrowException) as exc:
                raise ValueError(
                    f"compression_level {self.compression_level!r} is invalid for "
                    f"{self.compression!r}: {exc}"
                ) from exc
        try:
            time_zone(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"tz must be an IANA time zone name, got {self.tz!r}") from exc


@dataclass(frozen=True, slots=True)
class CommittedFile:
    path: Path
    msg_type: str
    date: dt.date
    stripe: str
    rows: int
    bytes: int
    seq_min: int
    seq_max: int
    #: "interval" | "size" | "footer" | "idle" | "schema" | "shutdown" | "manual" (or the
    #: reason given to rotate_all)
    reason: str


@dataclass(frozen=True, slots=True)
class SinkStatistics:
    open_files: int
    #: Arrow bytes buffered (not yet written as a row group) across all open files.
    buffered_bytes: int
    buffered_rows: int
    #: Rows accepted by write() since construction (committed, in open files, or lost to a
    #: SinkError on an aborted file).
    rows_written: int
    rows_committed: int
    files_committed: int
    bytes_committed: int
    row_groups_written: int
    #: Files abandoned in place after an OS error (left hidden for recovery).
    files_aborted: int

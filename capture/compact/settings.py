"""What one compaction run is told (``CompactionSettings``), what it reports (``Outcome``), and
what its steps share (``_Context``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class CompactionSettings:
    root: Path
    tz: str = "UTC"
    granularity: str = "day"  # "day" | "hour"
    #: A unit is closed this long after its end (rows still on their way, a restart's replay).
    min_age_s: int = 3600
    row_group_rows: int = 1_048_576
    row_group_bytes: int = 256 * 2**20  # Arrow bytes per row group at most
    target_file_bytes: int = 512 * 2**20
    compression_level: int = 6
    #: One unit is sorted in memory: a day whose inputs hold more Arrow bytes than this is
    #: compacted hour by hour; an hour over it is skipped (logged).
    max_unit_bytes: int = 4 * 2**30
    #: This root's capture host (rows of files without ``mlink.host`` in their footer).
    host_id: str = "local"
    #: Other hosts' capture roots for the A/B merge (read only).
    peers: tuple[Path, ...] = ()
    #: Rows are ordered by "underlier" (the key up to its ticker: an underlier's rows in
    #: receive order) or "instrument" (every key column: a contract's rows together), then by
    #: receive time.  Both let a ticker filter skip row groups; "instrument" also a contract
    #: filter; "underlier" compresses the time columns better, the one that meets the bytes
    #: target (docs/compaction.md, measured).
    sort: str = "underlier"


@dataclass
class Outcome:
    """What one run did (printed by the CLI, and the scheduled mode's log line)."""

    units_compacted: int = 0
    files_in: int = 0
    files_out: int = 0
    rows_in: int = 0
    rows_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duplicates_dropped: int = 0
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)  # dry run: what would be compacted
    recovered: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Context:
    settings: CompactionSettings
    now_ns: int
    dry_run: bool
    outcome: Outcome
    merge: Any = None  # capture.abmerge.merge, when peers are configured

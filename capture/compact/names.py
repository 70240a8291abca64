"""Compaction's names on disk: its work area, its file-name prefixes, the footer keys only it
writes, and which files it rewrites."""

from __future__ import annotations

from typing import Final

from capture.events import TABLE as EVENTS_TABLE

#: Under ROOT: the work area (``work/``) and the lock file.  Leading ``_``: no table, and
#: pyarrow.dataset/Spark skip it.
COMPACTION_DIR: Final = "_compaction"
HOST_COLUMN: Final = "_host"
COMPACTED_PREFIX: Final = "compacted-"
LIVE_PREFIX: Final = "part-"
COVERAGE_PREFIX: Final = "coverage-"  # A/B coverage reports in the events table

# Footer keys written only by compaction (the ones shared with the sink live in capture.sink).
META_UNIT: Final = "mlink.unit"
META_INPUTS: Final = "mlink.inputs"  # JSON list of the own root's file names replaced
META_PEER_INPUTS: Final = "mlink.peer_inputs"  # JSON {peer root: digest of its files}
META_PART: Final = "mlink.part"


def _is_data_file(name: str) -> bool:
    """A file readers read (``*.parquet``, not hidden, not ``_``-prefixed)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _is_input(table: str, name: str) -> bool:
    """A data file compaction rewrites: any but an A/B coverage report (the events table holds
    those beside the events; each is replaced whole by the merge that wrote it)."""
    return _is_data_file(name) and not (table == EVENTS_TABLE and name.startswith(COVERAGE_PREFIX))

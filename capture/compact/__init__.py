"""Compaction: rewrite closed partitions into few large, sorted files, swapped in atomically.

A partition is one ``ROOT/<Type>/date=D/stripe=S`` directory.  A *unit* is what one rewrite
covers: the whole local day (``granularity = "day"``) or one UTC-aligned hour of it
(``"hour"``).  A unit is rewritten only when it is closed (its end plus ``min_age_s`` has
passed, so never the current day's open interval) and when it holds something not yet
compacted (a live part file, compacted files of another unit size, or new peer data).

Each unit's rows are sorted by the type's instrument key (the ``pkey`` columns of the schema
registry) then receive time, and written as row groups of ``row_group_rows`` rows (fewer if
``row_group_bytes`` of Arrow data come first) into files of about ``target_file_bytes``, zstd
and dictionary encoded.

Atomic replacement (docs/compaction.md): the new contents of ``stripe=S`` (compacted files
plus hard links to every file left alone) are built in ``ROOT/_compaction/work/<Type>/
date=D/stripe=S``, fsynced, then the two directory names are exchanged with
``renameat2(RENAME_EXCHANGE)`` (``capture.dirswap``).  A reader listing ``stripe=S`` sees the
old set or the new set.  After the exchange the work path holds the old files; committed part
files in it that the new set does not account for (a daemon committed one meanwhile) are moved
back, then it is deleted.  A crash at any step leaves the old or the new set visible; the next
run finishes the cleanup the same way (``recover``) and carries on: reruns are idempotent.

The first compacted file of a unit records in its footer the receive-sequence ranges of the
own root's files it replaced (``mlink.seq_ranges``), so ``capture.recovery`` and ``verify``
know those frames are stored even where the A/B merge dropped a row as another host's
duplicate.

The pieces, one module each:

* ``settings``: ``CompactionSettings``, ``Outcome``, and what a run's steps share;
* ``names``: the work area, file-name prefixes, footer keys, which files are rewritten;
* ``planning``: partitions, their files (from the footers), units, which units are due;
* ``rewriting``: one unit's rows sorted and written (``rewrite``, also used by the lake);
* ``encodings``: each column's encoding, measured on a sample;
* ``swap``: the work area, and the cleanup after an exchange or a crash (``recover``);
* ``coverage``: the A/B merge's gap events and coverage reports in the events table;
* ``partition``: one partition planned, rewritten and exchanged;
* ``rootlock``: the root's housekeeping lock;
* ``run``: ``compact``, a run over the whole root.

Sync code; it must not run on an event loop.
"""

from capture.compact.encodings import encodings_for
from capture.compact.names import (
    COMPACTED_PREFIX,
    COMPACTION_DIR,
    COVERAGE_PREFIX,
    HOST_COLUMN,
    LIVE_PREFIX,
    META_INPUTS,
    META_PART,
    META_PEER_INPUTS,
    META_UNIT,
)
from capture.compact.rewriting import key_columns, rewrite, sort_rows, unit_ranges
from capture.compact.rootlock import lock
from capture.compact.run import compact
from capture.compact.settings import CompactionSettings, Outcome
from capture.compact.swap import recover
from capture.errors import CompactionError

__all__ = [
    "COMPACTED_PREFIX",
    "COMPACTION_DIR",
    "COVERAGE_PREFIX",
    "HOST_COLUMN",
    "LIVE_PREFIX",
    "META_INPUTS",
    "META_PART",
    "META_PEER_INPUTS",
    "META_UNIT",
    "CompactionError",
    "CompactionSettings",
    "Outcome",
    "compact",
    "encodings_for",
    "key_columns",
    "lock",
    "recover",
    "rewrite",
    "sort_rows",
    "unit_ranges",
]

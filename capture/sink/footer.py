"""What every part file's footer says: the key-value metadata keys, and the writer's name.

A recovery pass can rely on this invariant: for one msg_type in one stripe, rows are appended
to files in the order the worker writes them and only one file per (msg_type, date) is open at a
time, so each committed file holds a contiguous run of that msg_type's records and
[seq_min, seq_max] ranges of committed files do not overlap.  "Is (msg_type, seq) already
durable?" is a range lookup over the footers (or over the CommittedFile records the worker
journals).
"""

from __future__ import annotations

from typing import Final

from capture import __version__

META_MSG_TYPE: Final = "mlink.msg_type"
META_STRIPE: Final = "mlink.stripe"
META_SESSION: Final = "mlink.session"
META_SEQ_MIN: Final = "mlink.seq_min"
META_SEQ_MAX: Final = "mlink.seq_max"
META_ROWS: Final = "mlink.rows"
META_WRITER: Final = "mlink.writer"
#: The capture host (``capture.host_id``): which of two redundant captures wrote the file.
META_HOST: Final = "mlink.host"
#: Compacted files only (capture.compact): present on every compacted file, and the receive
#: sequence ranges ("lo-hi,lo-hi") of this root's files it replaced, on the first of a unit.
META_COMPACTED: Final = "mlink.compacted"
META_SEQ_RANGES: Final = "mlink.seq_ranges"

WRITER_ID: Final = f"mlink-capture {__version__}"

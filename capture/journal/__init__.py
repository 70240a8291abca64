"""Per-stripe raw journal: every WebSocket message, byte-exact, before anything else.

A Parquet file has no footer until it is closed, so a crash loses the file being written, and
the vendor's WebSocket cannot replay.  Each stripe worker therefore appends every message it
receives to this journal *before* decoding it (a kdb+ tickerplant log), fsyncs it at least every
``durability_interval`` and deletes a segment only once every frame in it is in committed
Parquet.  Recovery and ``replay`` feed the journal's messages through the same decode pipeline
as live data, so the journal holds raw WebSocket payloads, not parsed frames.

This package is synchronous and imports neither trio nor pyarrow.  One module per concept:

* ``records``   a record on disk (layout, encoding, decoding) and the records a reader yields;
* ``fsops``     the syscalls that make it durable, the directory lock, segment file names;
* ``reader``    what segments hold, and their records in append order;
* ``recovery``  recover() and check_segments(): segments a crash left, cut and sealed;
* ``writer``    JournalWriter: append, write-out thread, fsync, seal, roll, retire.

Import from here (``from capture.journal import JournalWriter``); the modules are its parts.

Directory and segments
----------------------
One directory per stripe (``ROOT/_journal/stripe=<S>/``) holds::

    seg-<name_seq: 20 digits>-<generation: 10 digits>.mlj   segments, name order = append order
    LOCK                                                     flock(2): one writer (or recover)
    corrupt/<segment>.<offset>.cut                           bytes recover() cut as corrupt

A writer always starts a *new* segment (it never appends to a file a crash may have torn) and
rolls to a new one when the next record would take the segment past ``segment_bytes``, or on
:meth:`JournalWriter.roll`.  ``name_seq`` is the sequence number the segment's first data frame
gets (a lower bound for the first segment a writer opens); ``generation`` grows by one per
segment, so names are unique and sort in creation order.  A rolled segment begins with a copy of
the current SESSION record marked *resumed*, so every segment names its session.

A segment that is closed cleanly ends with a SEAL record: a summary (record count, seq range)
written only after the data before it was fsynced.  recover() trusts a seal and does not read
the segment; only unsealed segments (the one or two a crash left open) are scanned.  The seal
comes on top of ``segment_bytes``.

Sequence numbers
----------------
The worker numbers data frames consecutively per stripe and tells :meth:`JournalWriter.append`
the ``first_seq`` and count ``n_data`` of the data frames *completed* in each message, so the
message's frames are ``first_seq .. first_seq + n_data - 1`` and ``first_seq + n_data`` is the
next number.  ``first_seq`` must never decrease, across restarts too (the writer refuses with
ValueError): start the worker's counter at :attr:`JournalWriter.next_seq`.

A frame split across two messages completes in (and is numbered with) the later one, but its
first bytes are in the earlier message, perhaps in the previous segment.  So a segment also
holds the start of frame ``next_seq`` (its ``last_seq + 1``), and :meth:`JournalWriter.retire`
deletes a segment only when ``next_seq < committed_below``: one frame more conservative than
"every frame completed in it is committed", so replay never lacks the head of a frame.
"""

from __future__ import annotations

from capture.errors import (
    JournalBrokenError,
    JournalClosedError,
    JournalError,
    JournalFormatError,
    JournalLockedError,
)
from capture.journal.reader import CutReason, SegmentInfo, list_segments, read_records
from capture.journal.records import (
    HEADER_SIZE,
    SEAL_SIZE,
    EventRecord,
    MessageRecord,
    Record,
    SessionRecord,
)
from capture.journal.recovery import RecoveryReport, SegmentReport, check_segments, recover
from capture.journal.writer import DEFAULT_SEGMENT_BYTES, JournalStatistics, JournalWriter

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "HEADER_SIZE",
    "SEAL_SIZE",
    "CutReason",
    "EventRecord",
    "JournalBrokenError",
    "JournalClosedError",
    "JournalError",
    "JournalFormatError",
    "JournalLockedError",
    "JournalStatistics",
    "JournalWriter",
    "MessageRecord",
    "Record",
    "RecoveryReport",
    "SegmentInfo",
    "SegmentReport",
    "SessionRecord",
    "check_segments",
    "list_segments",
    "read_records",
    "recover",
]

"""Parquet part-file sink: hive-partitioned layout, row-group buffering, rotation, atomic commit.

Layout (one sink per stripe; see docs/sink.md)::

    ROOT/<MsgType>/date=YYYY-MM-DD/stripe=<S>/part-<UTC start>-<session tag>-<counter>.parquet

A file being written lives in the same directory under a hidden name that does not end in
``.parquet`` (``.part-....parquet.inprogress``), so neither ``**/*.parquet`` globs nor
``pyarrow.dataset`` discovery (which skips names starting with ``.`` or ``_``) can see it.
Commit is: flush buffered rows -> write footer -> fsync file -> rename to the final name ->
fsync the directory.  A reader therefore never sees a partial file under a ``.parquet`` name.

The pieces, one module each:

* ``settings``: ``SinkSettings``, and what the sink reports (``CommittedFile``,
  ``SinkStatistics``);
* ``footer``: the footer's key-value metadata keys and the writer's name;
* ``layout``: names on disk (in-progress names, the quarantine directory, session tags);
* ``fs``: the filesystem calls, one function each (the error-path tests replace one);
* ``partition_sink``: ``PartitionSink``, the sink itself;
* ``cleanup``: ``cleanup_in_progress``, the start-up cleanup of a crash's leftovers.

This package is synchronous on purpose: the worker calls it from a worker thread, never on the
event loop.  It must not import trio.
"""

from capture.errors import (
    SinkClosedError,
    SinkCommitError,
    SinkError,
    SinkOpenError,
    SinkWriteError,
)
from capture.rotation import partition_date
from capture.sink.cleanup import cleanup_in_progress
from capture.sink.footer import (
    META_COMPACTED,
    META_HOST,
    META_MSG_TYPE,
    META_ROWS,
    META_SEQ_MAX,
    META_SEQ_MIN,
    META_SEQ_RANGES,
    META_SESSION,
    META_STRIPE,
    META_WRITER,
    WRITER_ID,
)
from capture.sink.layout import INPROGRESS_SUFFIX, QUARANTINE_DIR
from capture.sink.partition_sink import (
    FOOTER_BYTES_PER_COLUMN_CHUNK,
    RECV_NS_COLUMN,
    RECV_TIME_TYPE,
    SEQ_COLUMN,
    PartitionSink,
)
from capture.sink.settings import CommittedFile, SinkSettings, SinkStatistics

__all__ = [
    "FOOTER_BYTES_PER_COLUMN_CHUNK",
    "INPROGRESS_SUFFIX",
    "META_COMPACTED",
    "META_HOST",
    "META_MSG_TYPE",
    "META_ROWS",
    "META_SEQ_MAX",
    "META_SEQ_MIN",
    "META_SEQ_RANGES",
    "META_SESSION",
    "META_STRIPE",
    "META_WRITER",
    "QUARANTINE_DIR",
    "RECV_NS_COLUMN",
    "RECV_TIME_TYPE",
    "SEQ_COLUMN",
    "WRITER_ID",
    "CommittedFile",
    "PartitionSink",
    "SinkClosedError",
    "SinkCommitError",
    "SinkError",
    "SinkOpenError",
    "SinkSettings",
    "SinkStatistics",
    "SinkWriteError",
    "cleanup_in_progress",
    "partition_date",
]

"""Every exception the package raises across a module boundary, in one place.

The rule (docs/design.md, "Errors"): a public exception class is defined here and nowhere else;
the module that raises it re-exports it, so that a caller catches it from the layer it calls
(``capture.sink.SinkError``, as h11 re-exports its ``RemoteProtocolError``) and both names are
the same class.  Only private exceptions that never leave their module (``_Unreachable`` in
:mod:`capture.cognito`, say) stay beside the code that raises and catches them.

Each layer has one type for bad *input*: the protocol layer :class:`RemoteProtocolError`
(:class:`ControlParseError` for control messages), the configuration :class:`ConfigError`.
This module imports nothing of the package.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Self

# -- a stripe's connection (raised by capture.transport and capture.cognito, handled by the
#    worker's connect loop; here so that neither edge imports the other) -------------------


class TransportError(Exception):
    """The network or the WebSocket failed: reconnect with backoff."""


class ConnectionLost(TransportError):
    """The peer closed the connection or it broke: reconnect with backoff."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(reason)


class StaleConnection(TransportError):
    """No frame at all (data or heartbeat) for the stale timeout: reconnect with backoff."""


class AuthRejected(Exception):
    """The server refused our credentials: long backoff, health state auth_failed."""


class CredentialError(Exception):
    """No usable credential (missing, unreadable or refused): the stripe backs off (auth_failed)."""


# -- bad input: one type per layer ----------------------------------------------------------


class RemoteProtocolError(ValueError):
    """What the server sent is not usable: the one exception the protocol layer
    (:mod:`capture.frames`, :mod:`capture.bounds` and :mod:`capture.protocol`) raises for bad
    input, whatever the input.

    Like h11's ``RemoteProtocolError``: a caller handles bad input by catching this type only;
    anything else escaping the protocol layer is a bug (the worker still contains it).
    """


class ControlParseError(RemoteProtocolError):
    """A control frame whose body is not the JSON object the protocol describes (the
    protocol layer's one exception for bad input, :class:`RemoteProtocolError`)."""


class FrameDecoderError(Exception):
    """The decoder's input is unusable as configured (e.g. a buffer bound smaller than a frame)."""


class ConfigError(ValueError):
    """The configuration cannot be used; ``problems`` lists every ``key: problem``."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


# -- storage: Parquet files (capture.sink), the journal (capture.journal), directories ------


class SinkError(OSError):
    """An OS error while opening, writing or committing a part file.

    ``errno``/``strerror``/``filename`` are those of an OSError; ``path`` is the file or
    directory involved.  When raised, no partial file is visible under a ``.parquet`` name:
    the affected in-progress file has been closed and left (hidden) where it is, for a later
    ``cleanup_in_progress``/journal replay.  ``msg_type``/``seq_min``/``seq_max`` describe the
    rows that did NOT reach a committed file (``None`` when no rows were affected).
    ``committed`` lists files (``capture.sink.CommittedFile``) that the same call committed
    successfully before (or despite) the failure, so the caller's bookkeeping stays exact.
    """

    def __init__(
        self,
        errno_: int,
        strerror: str,
        path: Path,
        *,
        msg_type: str | None = None,
        seq_min: int | None = None,
        seq_max: int | None = None,
        committed: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(errno_, strerror, str(path))
        self.path = path
        self.msg_type = msg_type
        self.seq_min = seq_min
        self.seq_max = seq_max
        self.committed = committed

    @classmethod
    def from_os_error(
        cls,
        exc: OSError,
        what: str,
        path: Path,
        *,
        msg_type: str | None = None,
        seq_min: int | None = None,
        seq_max: int | None = None,
    ) -> Self:
        """``what: <the OS's reason>`` with the errno of ``exc`` (EIO if it has none)."""
        code = exc.errno if isinstance(exc.errno, int) else errno.EIO
        detail = exc.strerror or str(exc) or os.strerror(code)
        return cls(
            code, f"{what}: {detail}", path, msg_type=msg_type, seq_min=seq_min, seq_max=seq_max
        )


class SinkOpenError(SinkError):
    """Creating a partition directory or a new in-progress file failed."""


class SinkWriteError(SinkError):
    """Writing a row group or the footer into an in-progress file failed."""


class SinkCommitError(SinkError):
    """fsync of the file, the rename, or fsync of the directory failed.

    If only the final directory fsync failed, the file is complete under its final name and is
    included in ``committed`` (its name may not survive a power loss; the data is fsynced).
    """


class SinkClosedError(RuntimeError):
    """write() after close()."""


class JournalError(Exception):
    """Base class of the journal's errors (capture.journal)."""


class JournalFormatError(JournalError):
    """A segment holds an intact record this version does not understand (a newer format):
    nothing is changed, so a newer writer's data is never cut."""


class JournalLockedError(JournalError):
    """Another writer (or recover) holds this journal directory."""


class JournalClosedError(JournalError):
    """The writer was closed."""


class JournalBrokenError(JournalError):
    """An earlier write or fsync failed; the writer accepts nothing more.  After a failed
    fsync the kernel may have dropped the pages, so retrying could claim durability falsely:
    restart, run recover() and open a new writer."""


class ExchangeUnsupported(OSError):
    """This kernel or file system cannot exchange two names atomically (capture.dirswap)."""


# -- the lake (capture.lake) -----------------------------------------------------------------


class StoreError(Exception):
    """The store could not be reached or refused the request; retry later (nothing is lost:
    the local file stays, the journal keeps its frames)."""


class ObjectConflict(StoreError):
    """The key holds a different object; never retried, never overwritten."""


class CapturePaused(Exception):
    """The lake asked the stripe to stop receiving (its local disk budget is reached); the
    stripe disconnects and waits until ``JournalHold.paused`` says None (capture.reconnect)."""


class CatalogError(Exception):
    """The catalog could not be reached, or refused a commit; retry later."""


class LakeDemoError(Exception):
    """The lake demo cannot run (moto missing)."""


# -- commands and processes ----------------------------------------------------------------


class LakeCompactionError(Exception):
    """A partition of a lake table could not be compacted; the table is unchanged
    (capture.lakecompact)."""


class CompactionError(Exception):
    """A partition could not be compacted; nothing visible changed."""


class ReplayError(ValueError):
    """The replay cannot run as asked (same root as the live data, no journal)."""


class StatusError(Exception):
    """The health file cannot be read as a health document (missing, unreadable, not JSON)."""


class ForkServerError(Exception):
    """A group could not be started through the fork server (it is gone, or fork failed)."""


# -- the simulator (capture.sim) -------------------------------------------------------------


class WhereError(ValueError):
    """A ``where`` or ``view`` clause the simulator's server cannot use."""

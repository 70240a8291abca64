"""The root's housekeeping lock (``ROOT/_compaction/lock``): one run per root at a time."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from capture.compact.names import (
    COMPACTION_DIR,
)


class _Lock:
    """``ROOT/_compaction/lock`` (flock): one housekeeping run per root at a time."""

    def __init__(self, root: Path) -> None:
        self.path = root / COMPACTION_DIR / "lock"
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BlockingIOError(exc.errno, "another compaction is running") from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def lock(root: Path) -> _Lock:
    """The root's housekeeping lock (raises BlockingIOError when another run holds it)."""
    return _Lock(root)

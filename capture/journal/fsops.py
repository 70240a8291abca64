"""The journal's file-system operations: the syscalls that make it durable, its directory
lock and the names of its segment files.

Module-level functions, looked up through this module by every caller (``fsops.fsync(fd)``),
so that tests observe, slow down or fail exactly these syscalls in one place; the fault point
``journal.fsync`` fails the next fsyncs the same way.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
from pathlib import Path
from typing import Final

from capture.durable import make_dirs
from capture.errors import JournalLockedError
from capture.faultpoints import fail_point

__all__ = [
    "FILE_MODE",
    "DirLock",
    "ensure_dir",
    "fsync",
    "fsync_dir",
    "open_segment_file",
    "segment_name",
    "segment_paths",
    "write_all",
]

FILE_MODE: Final = 0o640
_LOCK_NAME: Final = "LOCK"
_SEGMENT_RE: Final = re.compile(r"seg-(\d{20})-(\d{10})\.mlj")


def _iov_max() -> int:
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        n = -1
    return min(1024, n) if n >= 16 else 16


_IOV_MAX: Final = _iov_max()


def fsync(fd: int) -> None:
    fail_point("journal.fsync")
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """mkdir -p, fsyncing the parent of every directory created, so the journal directory
    itself survives a power loss."""
    make_dirs(path, fsync_dir)


class DirLock:
    """An exclusive flock(2) on ``<dir>/LOCK`` for as long as the object lives; the kernel
    releases it when the process dies, so a stale lock cannot outlive a crash."""

    __slots__ = ("_fd",)

    def __init__(self, directory: Path) -> None:
        self._fd: int | None = None
        fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise JournalLockedError(
                    f"journal {directory} is in use by another writer or recovery"
                ) from exc
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the lock

    def __del__(self) -> None:  # a writer dropped without close() must not pin the lock
        self.release()


def segment_name(name_seq: int, generation: int) -> str:
    """The file name of a segment: name order is append order (see segment_paths)."""
    return f"seg-{name_seq:020d}-{generation:010d}.mlj"


def segment_paths(directory: Path) -> list[tuple[Path, int, int]]:
    """(path, name_seq, generation) of every segment, in append order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out: list[tuple[Path, int, int]] = []
    for name in names:
        m = _SEGMENT_RE.fullmatch(name)
        if m is not None:
            out.append((directory / name, int(m.group(1)), int(m.group(2))))
    out.sort(key=lambda t: (t[1], t[2]))
    return out


def open_segment_file(path: Path) -> io.FileIO:
    """O_CREAT | O_EXCL: never append to (or clobber) a file that already exists."""
    return open(path, "xb", buffering=0, opener=lambda p, flags: os.open(p, flags, FILE_MODE))


def write_all(fd: int, chunks: list[bytes]) -> None:
    """writev in batches of IOV_MAX, finishing any short write."""
    for i in range(0, len(chunks), _IOV_MAX):
        batch = chunks[i : i + _IOV_MAX]
        done = os.writev(fd, batch)
        if done == sum(map(len, batch)):
            continue
        for chunk in batch:  # short write (a signal, a nearly full disk): finish it slowly
            if done >= len(chunk):
                done -= len(chunk)
                continue
            view = memoryview(chunk)[done:]
            done = 0
            while view:
                view = view[os.write(fd, view) :]

"""Swap two directories atomically: ``renameat2(RENAME_EXCHANGE)``.

Compaction replaces a whole ``stripe=S`` partition directory in one step: it builds the new
contents elsewhere on the same file system, then exchanges the two names.  A reader that lists
the directory sees the old files or the new ones, never both and never neither.  Linux >= 3.15
on ext4, XFS, btrfs, tmpfs, f2fs supports it; NFS, overlayfs (Docker's storage driver: mount
the data volume instead) and some FUSE file systems do not.

``exchange`` raises :class:`ExchangeUnsupported` where the kernel or file system refuses, so the
caller can decide; it never falls back silently to two renames (a window with no partition).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import cache
from pathlib import Path
from typing import Final

from capture.errors import ExchangeUnsupported

__all__ = ["ExchangeUnsupported", "exchange", "fsync_dir", "supported"]

_AT_FDCWD: Final = -100
_RENAME_EXCHANGE: Final = 2
# EINVAL: the file system does not implement the flag; ENOSYS: no renameat2 (old kernel or a
# seccomp filter); EOPNOTSUPP/ENOTSUP: some FUSE file systems.
_UNSUPPORTED: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


@cache
def _renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # no libc symbol (glibc < 2.28, musl < 1.2.?)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> None:
    """Atomically swap the names ``a`` and ``b`` (both must exist, on one file system)."""
    fn = _renameat2()
    if fn is None:
        raise ExchangeUnsupported(errno.ENOSYS, "renameat2 is not available in this C library")
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        raise ExchangeUnsupported(code, f"RENAME_EXCHANGE refused: {os.strerror(code)}", str(a))
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def supported(directory: Path) -> bool:
    """Whether ``exchange`` works in ``directory`` (tried for real with two empty
    directories, which are removed again)."""
    probe_a = directory / ".mlink-exchange-probe-a"
    probe_b = directory / ".mlink-exchange-probe-b"
    try:
        for p in (probe_a, probe_b):
            p.mkdir(exist_ok=True)
        exchange(probe_a, probe_b)
        return True
    except ExchangeUnsupported:
        return False
    finally:
        for p in (probe_a, probe_b):
            try:
                p.rmdir()
            except OSError:
                pass


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The filesystem calls the sink makes, one function each.

Called through this module (``fs.rename(...)``), so that an error-path test replaces exactly
one call, for the sink and the start-up cleanup alike, by patching it here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa


def fsync_fd(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def create_exclusive(path: Path) -> None:
    # 0o666: the umask decides (output.file_mode, set by capture.cli)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    os.close(fd)


def open_output(path: Path) -> Any:
    """Native (C++) output stream: written without the GIL, exposes tell() and fileno()."""
    return pa.OSFile(str(path), "wb")

"""Small file-system helpers shared by the journal and the Parquet sink."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def make_dirs(path: Path, fsync_dir: Callable[[Path], None]) -> None:
    """``mkdir -p`` that fsyncs the parent of every directory it creates, so a new directory
    survives a power loss together with the files later made durable inside it.  The caller
    passes its own ``fsync_dir`` (tests replace it per module)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        fsync_dir(d.parent)

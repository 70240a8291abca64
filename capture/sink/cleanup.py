"""Start-up cleanup: in-progress part files left by a crash are moved aside, never published."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import structlog

from capture.errors import SinkError
from capture.sink import fs
from capture.sink.layout import QUARANTINE_DIR, _is_inprogress_name

log = structlog.get_logger(__name__)


def cleanup_in_progress(root: Path, stripes: Collection[str] | None = None) -> list[Path]:
    """Move in-progress files left by a crash to ``ROOT/_quarantine/inprogress/``.

    They are never renamed to a ``.parquet`` name (they may lack a footer or rows); the bytes
    are kept for a recovery pass.  The relative directory is preserved, and the leading dot is
    dropped so operators see them (the name still does not end in ``.parquet``).  Returns the
    new paths.

    Call it before any sink on ``root`` for these stripes is opened: it would quarantine a
    live file.  When several processes share a root (one per stripe group), pass ``stripes``
    to touch only the ``stripe=<code>`` directories of those stripes.
    """
    moved: list[Path] = []
    if not root.is_dir():
        return moved
    qroot = root / QUARANTINE_DIR / "inprogress"
    want_dirs = None if stripes is None else {f"stripe={code}" for code in stripes}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d != QUARANTINE_DIR]
        if want_dirs is not None:  # other stripes' directories are not even listed
            dirnames[:] = [d for d in dirnames if not d.startswith("stripe=") or d in want_dirs]
        names = sorted(n for n in filenames if _is_inprogress_name(n))
        if not names or (want_dirs is not None and here.name not in want_dirs):
            continue
        dest_dir = qroot / here.relative_to(root)
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            for name in names:
                dest = dest_dir / name[1:]
                n = 1
                while dest.exists():
                    dest = dest_dir / f"{name[1:]}.{n}"
                    n += 1
                fs.rename(here / name, dest)
                moved.append(dest)
            fs.fsync_dir(dest_dir)
            fs.fsync_dir(here)
        except OSError as exc:
            path = Path(exc.filename) if isinstance(exc.filename, str) else here
            raise SinkError.from_os_error(exc, "quarantining in-progress file", path) from exc
    if moved:
        log.warning("sink.quarantined_inprogress", count=len(moved), root=str(root))
    return moved

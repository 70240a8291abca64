"""The environment of a daemon (or other ``mlink-capture``) process a test starts: this one's,
with only the package's runtime dependencies importable.

The test extras (pandas, and numpy which it brings) are installed in the test environment, and
pyarrow imports numpy at start-up and pandas at its first conversion whenever they are there:
about 0.3 s of CPU per process start (half of a daemon's start-up) that a daemon installed
from the wheel never spends, since neither is a dependency of it.  ``tests/runtime_only``
holds modules of those names that raise ImportError; first on ``PYTHONPATH``, they stand in
for the missing packages, as on a production host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

RUNTIME_ONLY = Path(__file__).resolve().parent / "runtime_only"


def runtime_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) plus ``extra``, with the test extras
    hidden from the process."""
    env = {**(os.environ if base is None else base), **extra}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(RUNTIME_ONLY) + (os.pathsep + path if path else "")
    return env

"""Suite-wide pytest hooks: the order in which the suite's modules run.

``make test`` runs the suite with pytest-xdist, a whole module per worker (``--dist loadfile``:
a module-scoped fixture such as the Spark session or a captured data set is made once). Modules
with ``slow`` tests go first, so that the long ones start while the short ones fill the other
workers, instead of one long module finishing alone at the end. The order within a module is
kept, and the real-time (``e2e``) modules stay spread over the run rather than all starting at
once.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = {_module(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: _module(item) not in slow)  # stable: order within a module kept


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


Reap = Callable[..., None]


@pytest.fixture
def reap() -> Iterator[Reap]:
    """Hand it each process a test starts: one still running at teardown (an assertion failed,
    a wait timed out) is killed, so that no daemon outlives its test."""
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

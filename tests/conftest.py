"""Suite-wide pytest hooks: the order in which the suite's modules run.

``make test`` runs the suite with pytest-xdist, a whole module per worker (``--dist loadfile``:
a module-scoped fixture such as the Spark session or a captured data set is made once). The
modules start longest first (a longest-processing-time schedule), so that the long ones run
while the short ones fill the other workers, instead of one long module finishing alone at the
end. The order within a module is kept.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

# Wall seconds of the longest modules in ``make test`` on a 2-vCPU machine (bench/HISTORY.md,
# item 36). Only the order matters: a module missing here starts after these, in file order,
# a module with ``slow`` tests first among those.
_SECONDS = {
    "test_lake_crash.py": 75,
    "test_lake_compact.py": 74,
    "test_crash.py": 55,
    "test_lake.py": 50,
    "test_lake_rest.py": 35,
    "test_faults.py": 29,
    "test_engines.py": 24,
    "test_compact_crash.py": 19,
    "test_lake_budget.py": 17,
    "test_process.py": 16,
    "test_compact.py": 14,
    "test_groups.py": 14,
    "test_install.py": 13,
    "test_e2e.py": 12,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = {_module(item) for item in items if item.get_closest_marker("slow")}

    def seconds(item: pytest.Item) -> int:
        module = _module(item)
        return _SECONDS.get(module.rsplit("/", 1)[-1], 10 if module in slow else 0)

    items.sort(key=seconds, reverse=True)  # stable: order within a module kept


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

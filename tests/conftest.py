"""Suite-wide pytest hooks: keeping the suite correct when it runs on several workers.

``make test`` runs the suite with pytest-xdist (``-n``, ``--dist loadgroup``). A test that uses a
module- or session-scoped fixture of this suite (a moto server, a Spark session, a captured
data set) is put in one xdist group per defining module, so that its module's tests run on one
worker and the expensive setup is made once, not once per worker.

Modules with ``slow`` tests run first: the long tests start while the short ones fill the other
workers, instead of one long test finishing alone at the end. Tests keep their order within a
module, and the real-time (``e2e``) modules stay spread over the run.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = {_module(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: _module(item) not in slow)  # stable: order within a module kept
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        shared = sorted(
            {
                d.baseid
                for defs in info.name2fixturedefs.values()
                for d in defs
                if d.scope != "function" and d.baseid  # ours: pytest's own have no baseid
            }
        )
        if shared:
            item.add_marker(pytest.mark.xdist_group(name="+".join(shared)))


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]

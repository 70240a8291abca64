"""Suite-wide pytest hooks: keeping the suite correct when it runs on several workers.

``make test`` runs the suite with pytest-xdist (``-n``, ``--dist loadgroup``). A test that uses a
module- or session-scoped fixture of this suite (a moto server, a Spark session, a captured
data set) is put in one xdist group per defining module, so that its module's tests run on one
worker and the expensive setup is made once, not once per worker.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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

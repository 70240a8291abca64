"""Imports point one way: pure modules stay pure, each edge library has one owner."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "capture"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules() -> dict[str, set[str]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        out[name] = imports_of(path)
    return out


def uses(imports: set[str], lib: str) -> bool:
    return any(i == lib or i.startswith(lib + ".") for i in imports)


def test_sans_io_modules_import_neither_trio_nor_pyarrow() -> None:
    mods = modules()
    for pure in ("capture.frames", "capture.protocol", "capture.stripes", "capture.backoff"):
        assert not uses(mods[pure], "trio"), pure
        assert not uses(mods[pure], "pyarrow"), pure


def test_sync_io_modules_do_not_import_trio() -> None:
    mods = modules()
    for sync in ("capture.sink", "capture.batches", "capture.health", "capture.stats",
                 "capture.durability", "capture.journal"):  # fmt: skip
        assert not uses(mods[sync], "trio"), sync


def test_one_owner_per_edge_library() -> None:
    mods = modules()
    owners = {
        "trio_websocket": {"capture.transport", "capture.sim.server"},
        "wsproto": {"capture.transport"},
        "pycognito": {"capture.auth"},
    }
    for lib, allowed in owners.items():
        users = {m for m, imps in mods.items() if uses(imps, lib)}
        assert users <= allowed, f"{lib} imported by {sorted(users - allowed)}"


def test_lower_layers_never_import_upward() -> None:
    mods = modules()
    upper = {"capture.cli", "capture.app", "capture.demo", "capture.supervisor"}
    lower = ("capture.frames", "capture.protocol", "capture.batches", "capture.sink",
             "capture.schemas", "capture.worker", "capture.transport", "capture.config")
    for name in lower:
        bad = {i for i in mods[name] if i in upper}
        assert not bad, f"{name} imports {bad}"

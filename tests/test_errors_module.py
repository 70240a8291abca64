"""Errors in one module (capture/errors.py, docs/design.md "Errors"): no other module defines a
public exception class, and each layer's name for an error is the very class defined there."""

from __future__ import annotations

import ast
import builtins
import importlib

from test_layers import PACKAGE, module_name

import capture.errors

ERRORS = {
    name
    for name, value in vars(capture.errors).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}
BUILTIN = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def _is_exception(base: ast.expr) -> bool:
    name = ast.unparse(base).rpartition(".")[2]
    return name in ERRORS or name in BUILTIN


def test_no_module_but_errors_defines_a_public_exception() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) == "capture.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ClassDef)
                and any(_is_exception(b) for b in node.bases)
                and not node.name.startswith("_")
            ):
                found.append(f"{module_name(path)}.{node.name}")
    assert found == [], "define exceptions in capture/errors.py and re-export them"


def test_the_layers_reexport_the_same_classes() -> None:
    where = {
        "capture.frames": ["RemoteProtocolError", "FrameDecoderError"],
        "capture.protocol": ["RemoteProtocolError", "ControlParseError"],
        "capture.config": ["ConfigError"],
        "capture.sink": ["SinkError", "SinkOpenError", "SinkWriteError", "SinkCommitError"],
        "capture.journal": ["JournalError", "JournalBrokenError", "JournalLockedError"],
        "capture.dirswap": ["ExchangeUnsupported"],
        "capture.replay": ["ReplayError"],
        "capture.status": ["StatusError"],
        "capture.forkserver": ["ForkServerError"],
    }
    for module, names in where.items():
        mod = importlib.import_module(module)
        for name in names:
            assert getattr(mod, name) is getattr(capture.errors, name), f"{module}.{name}"

"""Imports point one way: every module has a layer and imports only its own layer or lower,
nothing imports in a cycle, pure modules stay pure, each edge library has one owner.

Every import form counts: ``import capture.x``, ``from capture import x``, ``from capture.x
import y``, relative imports, imports inside functions (lazy imports are still dependencies) and
``importlib.import_module("capture.x")``.  Only imports under ``if TYPE_CHECKING:`` are left
out of the cycle check (they never run); they still obey the layers.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "capture"

# Lowest first.  A new module must be placed here (test_every_module_has_a_layer).
LAYERS: list[set[str]] = [
    {  # pure leaves: no other module of ours
        "capture", "capture.bounds", "capture.clock", "capture.durable", "capture.errors",
        "capture.dirswap", "capture.crashguard", "capture.lake",
        "capture.faultpoints", "capture.frames", "capture.logs", "capture.memory",
        "capture.protocol", "capture.rotation", "capture.sdnotify", "capture.stats",
        "capture.stripes", "capture.sim.tls", "capture.states", "capture.wsframes",
        "capture.sim.universe", "capture.sim.pricing",
        "capture.journal.records",
        "capture.totp", "capture.resume",
    },
    {
        "capture.schemas", "capture.schemas.mapping", "capture.config", "capture.credentials",
        "capture.session", "capture.masking",
        "capture.events",
        "capture.journal.fsops",
    },
    {  # the edges and the storage layers
        "capture.backoff", "capture.auth", "capture.cognito", "capture.transport", "capture.sink",
        "capture.journal", "capture.decode", "capture.health", "capture.recovery",
        "capture.metrics", "capture.retention", "capture.abmerge", "capture.quarantine",
        "capture.durability", "capture.lake.hold", "capture.rowbuffer", "capture.restart",
        "capture.forkserver",
        "capture.eventlog",
        "capture.stripe_recovery", "capture.batching", "capture.batchwrite",
        "capture.driftlog", "capture.link", "capture.journal_replay",
        "capture.reconnect",
        "capture.journal.reader", "capture.journal.recovery", "capture.journal.writer",
        "capture.decode.results", "capture.decode.shape", "capture.decode.jsontext",
        "capture.decode.leaves", "capture.decode.slowpath", "capture.decode.bookkeeping",
        "capture.decode.decoder", "capture.sink.settings", "capture.sink.footer",
        "capture.sink.layout", "capture.sink.fs", "capture.sink.partition_sink",
        "capture.sink.cleanup",
    },
    {  # one stripe; the simulator; offline checks
        "capture.worker", "capture.verify", "capture.compact", "capture.sim.market",
        "capture.lake.files", "capture.lake.store", "capture.lake.tables", "capture.lake.pipeline",
        "capture.lake.verify", "capture.lake.demo", "capture.lakecompact",
        "capture.lakeretention",
        "capture.compact.settings", "capture.compact.names", "capture.compact.planning",
        "capture.compact.encodings", "capture.compact.rewriting", "capture.compact.swap",
        "capture.compact.coverage", "capture.compact.partition", "capture.compact.rootlock",
        "capture.compact.run",
        "capture.sim.faults",
        "capture.sim.encoding", "capture.sim.cached_record", "capture.sim.securities",
        "capture.sim.generic", "capture.sim.generators",
        "capture.sim.control_messages", "capture.sim.cognito_jwt", "capture.sim.inbound",
        "capture.sim.stream_filters", "capture.sim.subscriptions", "capture.sim.connection",
        "capture.sim.record", "capture.sim.config", "capture.sim.server", "capture.sim",
    },
    {
        "capture.supervisor", "capture.replay", "capture.status", "capture.housekeeping",
        "capture.service",
    },
    {"capture.app"},
    {"capture.groups", "capture.demo"},
    {"capture.cli", "capture.__main__"},
]
LAYER_OF = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__"
    )


ALL = {module_name(p) for p in PACKAGE.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    out: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                out.update(ast.walk(child))
    return out


def imports_of(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every module of the package (and every outside module) ``path`` imports."""
    return imports_in(
        path.read_text(encoding="utf-8"),
        module_name(path),
        is_package=path.name == "__init__.py",
        runtime_only=runtime_only,
    )


def imports_in(
    source: str, name: str, *, is_package: bool = False, runtime_only: bool = False
) -> set[str]:
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(source)
    skip = _type_checking_nodes(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in ALL)
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func).endswith("import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    found.discard(name)
    return found


def modules(*, runtime_only: bool = False) -> dict[str, set[str]]:
    return {
        module_name(p): imports_of(p, runtime_only=runtime_only) for p in PACKAGE.rglob("*.py")
    }


def ours(imports: set[str]) -> set[str]:
    return {i for i in imports if i in ALL}


def uses(imports: set[str], lib: str) -> bool:
    return any(i == lib or i.startswith(lib + ".") for i in imports)


def test_the_import_walker_sees_every_form() -> None:
    source = (
        "import capture.frames\n"
        "from capture import protocol\n"
        "from capture.sink import PartitionSink\n"
        "from . import market\n"
        "from ..journal import JournalWriter\n"
        "import importlib\n"
        "def f():\n"
        "    from capture import worker\n"
        "    return importlib.import_module('capture.verify')\n"
        "if TYPE_CHECKING:\n"
        "    from capture import app\n"
    )
    runtime = ours(imports_in(source, "capture.sim.probe", runtime_only=True))
    assert runtime == {
        "capture", "capture.frames", "capture.protocol", "capture.sink", "capture.sim",
        "capture.sim.market", "capture.journal", "capture.worker", "capture.verify",
    }
    every = ours(imports_in(source, "capture.sim.probe"))
    assert every == runtime | {"capture.app"}  # TYPE_CHECKING imports obey the layers too


def test_every_module_has_a_layer() -> None:
    assert ALL - set(LAYER_OF) == set(), "place new modules in LAYERS"
    assert set(LAYER_OF) - ALL == set(), "LAYERS names modules that do not exist"


def test_no_module_imports_a_higher_layer() -> None:
    bad = [
        f"{m} (layer {LAYER_OF[m]}) imports {i} (layer {LAYER_OF[i]})"
        for m, imps in modules().items()
        for i in sorted(ours(imps))
        if LAYER_OF[i] > LAYER_OF[m]
    ]
    assert bad == []


def test_no_import_cycles() -> None:
    graph = {m: ours(imps) for m, imps in modules(runtime_only=True).items()}
    # A package and its own submodules may import each other (the package re-exports them).
    def related(a: str, b: str) -> bool:
        return a.startswith(b + ".") or b.startswith(a + ".")

    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start and not all(related(a, b) for a, b in itertools.pairwise(path)):
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []


def test_sans_io_modules_import_neither_trio_nor_pyarrow() -> None:
    mods = modules()
    pure = ("capture.frames", "capture.protocol", "capture.stripes", "capture.backoff",
            "capture.rotation", "capture.errors", "capture.session", "capture.bounds",
            "capture.states", "capture.journal.records")
    for name in pure:
        assert not uses(mods[name], "trio"), name
        assert not uses(mods[name], "pyarrow"), name


def test_sync_io_modules_do_not_import_trio() -> None:
    mods = modules()
    for sync in ("capture.sink", "capture.decode", "capture.health", "capture.stats",
                 "capture.journal", "capture.recovery", "capture.verify", "capture.durability",
                 "capture.quarantine", "capture.crashguard", "capture.eventlog",
                 "capture.stripe_recovery", "capture.batchwrite", "capture.journal.fsops",
                 "capture.journal.reader", "capture.journal.recovery", "capture.journal.writer",
                 *(m for m in ALL if m.startswith(("capture.decode.", "capture.sink.")))):
        assert not uses(mods[sync], "trio"), sync


def test_one_owner_per_edge_library() -> None:
    mods = modules()
    owners = {
        "trio_websocket": {"capture.transport", "capture.sim.server", "capture.sim.connection"},
        "wsproto": {"capture.transport"},
        "pycognito": {"capture.cognito"},
        "pyiceberg": {
            "capture.lake.tables", "capture.lake.pipeline", "capture.lake.verify",
            "capture.lake.demo", "capture.lake.files",
            "capture.lakecompact",  # the replace commit (pyiceberg's overwrite producer)
        },
        "prometheus_client": {"capture.metrics"},
    }
    for lib, allowed in owners.items():
        users = {m for m, imps in mods.items() if uses(imps, lib)}
        assert users <= allowed, f"{lib} imported by {sorted(users - allowed)}"

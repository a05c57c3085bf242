"""The package graph: layers without cycles, private modules private.

Reads every module's imports (top-level and deferred, inside functions) with ``ast``:
nothing is executed, so an import hidden in a function to keep start-up fast still counts.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "edgeai"
# docs/ARCHITECTURE.md's picture: a package imports only from its own layer or below.
LAYERS = {
    "cli": 5,
    **dict.fromkeys(("server", "agent", "fleet", "simulation"), 4),
    **dict.fromkeys(("flower", "compile", "serving", "artifacts", "telemetry", "discovery"), 3),
    **dict.fromkeys(("task", "models", "privacy", "data", "runtime", "profiles"), 2),
    **dict.fromkeys(("plumbing", "errors", "configfile", "cache", "logs"), 1),
}
# Same layer, still one way: the daemons share nothing but what is below them.
NEVER = {("agent", "server"), ("server", "agent"), ("compile", "serving"), ("runtime", "compile")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(ROOT.rglob("*.py")):
        if "_proto" in path.parts:
            continue
        name = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found[name].update(t for t in targets if t.startswith("edgeai."))
    return found


def package(module: str) -> str:
    """``edgeai.server.collector.store`` -> ``server``; ``edgeai.errors`` -> ``errors``."""
    return module.split(".")[1]


def known_modules() -> set[str]:
    return {module_name(p) for p in ROOT.rglob("*.py")} | {"edgeai"}


def test_no_private_module_is_imported_from_another_package() -> None:
    offenders = []
    for importer, targets in imports().items():
        for target in targets:
            parts = target.split(".")
            for i, part in enumerate(parts[1:], start=1):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])
                    if not (importer == owner or importer.startswith(owner + ".")):
                        offenders.append(f"{importer} imports {target}")
                    break
    assert offenders == []


def package_graph() -> dict[str, set[str]]:
    modules = known_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, targets in imports().items():
        for target in targets:
            if target not in modules:  # "from edgeai.x import name": the module is edgeai.x
                continue
            a, b = package(importer), package(target)
            if a != b and importer != "edgeai.cli":
                graph[a].add(b)
    return graph


def test_packages_form_no_cycle() -> None:
    graph = package_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_every_package_has_a_layer() -> None:
    packages = {package(m) for m in known_modules() if m != "edgeai"} - {"__main__"}
    assert packages - set(LAYERS) == set(), "place new packages in LAYERS and ARCHITECTURE.md"


def test_imports_go_down_the_layers() -> None:
    upward = [
        f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]})"
        for a, targets in package_graph().items()
        for b in targets
        if LAYERS.get(a, 0) < LAYERS.get(b, 0) or (a, b) in NEVER
    ]
    assert upward == []


def test_the_graph_is_read_at_all() -> None:
    graph = package_graph()
    assert "plumbing" in graph["server"]
    assert "flower" in graph["simulation"]

"""The packages' import graph: no circles, counting every module-level import (a late import
inside a function would hide one; those are for optional heavy dependencies only), and no
package importing one above it, counting every import, late ones too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("neutreno", "bench", "training", "service", "export", "models")
# What each package may import (docs/ARCHITECTURE.md): the architectures at the bottom; export
# on them; the serving path on the torch-free bundle contract only; training and benchmarks on
# top; the command line dispatches to all of them. neutreno.command (CommandError and the
# argument parser every subcommand shares) imports no project module.
MAY_IMPORT = {
    "models": {"models"},
    "export": {"export", "models", "neutreno.command"},
    "service": {"service", "export"},
    "training": {"training", "models", "export", "service", "neutreno"},
    "bench": {"bench", "service", "export", "models", "neutreno"},
    "neutreno": set(PACKAGES),
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if any(part.startswith(".venv") for part in path.parts):
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path], late: bool = False) -> set[str]:
    """Project modules `path` imports when it is imported (module-level statements), or
    anywhere in it when `late`."""
    targets: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if late else tree.body:
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {t for t in targets if t in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append([v, *component])

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    assert len(graph) > 50 and graph["service.frontend.app"], "the graph was not read"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "c", "b"]]


def test_no_package_imports_one_above_it() -> None:
    known = modules()
    upward = sorted(
        f"{name} imports {target}"
        for name, path in known.items()
        for target in imports(path, known, late=True)
        if not {target, target.split(".")[0]} & MAY_IMPORT[name.split(".")[0]]
    )
    assert len(known) > 50, "the graph was not read"
    assert upward == []


# The processes of a running server (docs/ARCHITECTURE.md): the engine never imports the front
# end; the front end reaches the engine only through the wire types (service.wire,
# service.messages) and its client, which also builds an in-process engine (tests, library use).
FRONTEND_MAY_IMPORT_ENGINE = {"service.frontend.client", "service.frontend.app"}


def test_the_engine_never_imports_the_front_end() -> None:
    known = modules()
    found = sorted(
        f"{name} imports {target}"
        for name, path in known.items()
        if name.startswith("service.engine")
        for target in imports(path, known, late=True)
        if target.startswith("service.frontend")
    )
    assert any(n.startswith("service.engine.") for n in known), "the graph was not read"
    assert found == []


def test_the_front_end_reaches_the_engine_only_through_its_client() -> None:
    known = modules()
    found = sorted(
        f"{name} imports {target}"
        for name, path in known.items()
        if name.startswith("service.frontend") and name not in FRONTEND_MAY_IMPORT_ENGINE
        for target in imports(path, known, late=True)
        if target.startswith("service.engine")
    )
    assert any(n.startswith("service.frontend.") for n in known), "the graph was not read"
    assert found == []

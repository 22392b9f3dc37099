"""The emulator's modules import one another in one direction only: no import circle, TYPE_CHECKING included.

The emulator wires the API modules together; they reach its state through ``registry.Services`` and never import
``emulator.py`` back (see ``xnat_provider/testing/registry.py``). Read from the source with :mod:`ast`, so that
imports under ``if TYPE_CHECKING:`` and inside functions count as much as those at the top of a module: a circle
through them still ties the modules together, for a reader and for a type checker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import xnat_provider.testing as testing

PACKAGE = testing.__name__
FOLDER = Path(testing.__file__).parent
MODULES = {p.stem for p in FOLDER.glob("*.py")}
# The modules that may import emulator.py: the package's lazy export, the command line and the pytest fixture.
EMULATOR_IMPORTERS = {"__init__", "cli", "pytest_plugin"}


def _target(absolute: str) -> str | None:
    """The module of this package that an absolute module name is, or lies in; None outside the package."""
    if absolute == PACKAGE:
        return "__init__"
    if absolute.startswith(PACKAGE + "."):
        return absolute[len(PACKAGE) + 1:].split(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source (relative or absolute imports)."""
    tree = ast.parse((FOLDER / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(t for alias in node.names if (t := _target(alias.name)) is not None)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # every module here is directly in the package: level 1 is the package itself
                base = ".".join(PACKAGE.split(".")[: len(PACKAGE.split(".")) - node.level + 1])
                absolute = f"{base}.{node.module}" if node.module else base
            else:
                absolute = node.module or ""
            target = _target(absolute)
            if target == "__init__":  # ``from . import x``: the module x, or a name the package defines
                found.update(alias.name if alias.name in MODULES else "__init__" for alias in node.names)
            elif target is not None:
                found.add(target)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in sorted(MODULES)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, as the strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_parser_sees_type_checking_and_function_level_imports() -> None:
    """Without this the other tests could pass on a graph with no edges at all."""
    graph = import_graph()
    assert "emulator" in graph["__init__"]  # under TYPE_CHECKING
    assert "prearchive" in graph["access"]  # inside a function
    assert {"archive_api", "registry", "server"} <= graph["emulator"]
    assert "extra" in graph["uploads"]  # inside an ``except``
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_among_the_emulator_modules() -> None:
    graph = import_graph()
    assert cycles(graph) == [], {m: sorted(graph[m]) for c in cycles(graph) for m in c}


def test_only_the_entry_points_import_the_emulator() -> None:
    importers = {m for m, targets in import_graph().items() if "emulator" in targets}
    assert importers <= EMULATOR_IMPORTERS, importers - EMULATOR_IMPORTERS


def test_the_registry_reaches_no_api_module() -> None:
    """``Services`` and the ``ApiModule`` protocol are what the API modules depend on, never the other way."""
    from xnat_provider.testing.emulator import API_MODULES

    api = {m.__name__.rpartition(".")[2] for m in API_MODULES}
    graph = import_graph()
    assert not reachable(graph, "registry") & (api | {"emulator", "server", "control"})
    for name in api:  # each declares ``register(router, services)`` with the registry's types
        assert "registry" in graph[name], name


def test_the_layout_names_every_module() -> None:
    """registry.py documents which module serves what: a module added without a word there fails here."""
    import xnat_provider.testing.registry as registry

    doc = registry.__doc__ or ""
    missing = sorted(m for m in MODULES - {"__init__", "__main__", "registry"} if f"{m}.py" not in doc)
    assert not missing, missing

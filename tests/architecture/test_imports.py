"""The package's import graph: no cycles, and the layers import only downwards.

Every module of ``atmflow`` is parsed (not imported) with ``ast``; every ``import atmflow...`` and
``from atmflow... import ...`` counts, at module level and inside functions alike (a deferred import
still ties the two modules together), except those under ``if TYPE_CHECKING:``, which never run.
``from atmflow.x import y`` is an edge to ``atmflow.x.y`` when that is a module, else to ``atmflow.x``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import atmflow

PACKAGE = Path(atmflow.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve_relative(node: ast.ImportFrom, importer: str) -> str:
    """The absolute module of ``from .x import y`` inside ``importer``."""
    package = importer if modules()[importer].name == "__init__.py" else importer.rpartition(".")[0]
    parts = package.split(".")
    base = parts[:len(parts) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def type_checking_only(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports for annotations, never executed."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    for child in ast.iter_child_nodes(node):
        if type_checking_only(child):
            assert isinstance(child, ast.If)
            for other in child.orelse:
                yield other
                yield from runtime_nodes(other)
            continue
        yield child
        yield from runtime_nodes(child)


def imported(importer: str) -> Iterator[str]:
    """The package modules that ``importer`` imports (when it runs)."""
    tree = ast.parse(modules()[importer].read_text(), filename=str(modules()[importer]))
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "atmflow" or alias.name.startswith("atmflow."):
                    yield nearest_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_relative(node, importer) if node.level else node.module or ""
            if source != "atmflow" and not source.startswith("atmflow."):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield submodule if submodule in modules() else nearest_module(source)


def nearest_module(name: str) -> str:
    """``name`` if it is a module of the package, else its closest enclosing one."""
    while name not in modules() and "." in name:
        name = name.rpartition(".")[0]
    return name


@cache
def graph() -> dict[str, frozenset[str]]:
    return {m: frozenset(d for d in imported(m) if d != m) for m in modules()}


def find_cycle(edges: dict[str, frozenset[str]], within: set[str] | None = None) -> list[str] | None:
    """One cycle of the graph (``[a, b, ..., a]``) among the nodes ``within`` (default all), or None."""
    nodes = set(edges) if within is None else within
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(edges.get(node, frozenset()) & nodes):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    for start in sorted(nodes):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def tangles(edges: dict[str, frozenset[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (each holds at least one cycle)."""
    reach = {m: reachable(edges, m) for m in edges}
    seen: set[str] = set()
    out = []
    for m in sorted(edges):
        if m in seen:
            continue
        component = {m} | {n for n in reach[m] if m in reach[n]}
        seen |= component
        if len(component) > 1:
            out.append(component)
    return out


def reachable(edges: dict[str, frozenset[str]], start: str) -> set[str]:
    found: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), frozenset()):
            if nxt not in found:
                found.add(nxt)
                todo.append(nxt)
    return found


def importers_of(prefixes: tuple[str, ...], within: str) -> dict[str, list[str]]:
    """``{module under within: [what it imports from prefixes]}``, for the modules that do."""
    found = {}
    for m, deps in graph().items():
        if m == within or m.startswith(within + "."):
            bad = sorted(d for d in deps if any(d == p or d.startswith(p + ".") for p in prefixes))
            if bad:
                found[m] = bad
    return found


def test_the_graph_sees_the_known_imports() -> None:
    """The parser itself: relative, deferred and submodule imports resolve to the right modules."""
    assert len(modules()) > 50
    assert "atmflow.merging.rule" in graph()["atmflow.merging.registry"]
    assert "atmflow.merging.rules" in graph()["atmflow.merging.registry"]  # from atmflow.merging import rules
    assert "atmflow.merging.select" in graph()["atmflow.merging.rules.ties"]  # imported inside a method
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset()}) is None
    assert tangles({"a": frozenset({"b"}), "b": frozenset({"a"}), "c": frozenset({"a"})}) == [{"a", "b"}]
    assert "atmflow.config" not in graph()["atmflow.data.tasks"]  # under `if TYPE_CHECKING:` only


def test_no_import_cycles() -> None:
    cycles = [" -> ".join(find_cycle(graph(), component) or []) for component in tangles(graph())]
    assert not cycles, "import cycles (one per tangle of modules):\n  " + "\n  ".join(cycles)


def test_the_cli_is_imported_by_no_module() -> None:
    users = sorted(m for m, deps in graph().items() if "atmflow.cli" in deps)
    assert not users, f"atmflow.cli is the entry point, imported by nothing; imported by {users}"


def test_strategies_do_not_import_the_server() -> None:
    assert importers_of(("atmflow.server",), "atmflow.strategies") == {}


def test_the_client_imports_neither_server_nor_strategies() -> None:
    assert importers_of(("atmflow.server", "atmflow.strategies"), "atmflow.client") == {}

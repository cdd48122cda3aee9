"""Imports run one way: no cycle between first-party modules, none between packages.

The graph is read from the source with `ast` (every import statement, also those inside
functions: a lazy import that closes a loop is still a loop), so this needs no Django.
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("api", "bench", "chaos", "config", "harness", "monitoring", "stockflow", "tasks",
               "tests", "workers")  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {}
    for top in FIRST_PARTY:
        for path in (ROOT / top).rglob("*.py"):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports pkg.mod when it is a module
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    modules = _modules()

    def package_of(name: str) -> str:
        return name if modules[name].name == "__init__.py" else name.rpartition(".")[0] or name

    packages: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        for target in targets:
            if package_of(source) != package_of(target):
                packages[package_of(source)].add(package_of(target))
    return packages


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

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
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_loop_and_only_the_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_the_layers():
    graph = import_graph()
    assert "stockflow.stock.services.runner" in graph["tasks.jobs"]
    assert "workers.celery" in graph["workers.publish"]


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
    assert cycles(package_graph(import_graph())) == []


def test_the_domain_imports_no_transport():
    """stockflow/ is pure of HTTP and Celery: api → stockflow ← tasks, workers at the edge."""
    outward = {
        (source, target)
        for source, targets in import_graph().items()
        if source.startswith("stockflow")
        for target in targets
        if not target.startswith("stockflow")
    }
    assert outward == set()


def test_no_module_imports_a_test_module():
    """Shared helpers live in harness/, monitoring/ or tests/*.py helpers, never in a test."""
    imports_of_tests = {
        (source, target)
        for source, targets in import_graph().items()
        for target in targets
        if target.rpartition(".")[2].startswith("test_")
    }
    assert imports_of_tests == set()

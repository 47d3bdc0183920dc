"""No import circles in the container's package, byoctl or devkit: every `import` and `from ... import` of their
modules (at module level or inside a function alike) makes an edge, and the graph has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from devkit.project import CONTAINER, ROOT


def module_names(root: Path, package: str = "mxnet_byoc") -> dict[str, Path]:
    names = {}
    for path in (root / package).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[:len(package) - node.level + 1], *([node.module] if node.module else [])]) \
                if node.level else node.module or ""
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {target for target in targets if target in modules and target != name}
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path of names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_container_package_has_no_import_circle():
    modules = module_names(CONTAINER)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 40 and graph["mxnet_byoc.serve.device"] == {"mxnet_byoc.serve.capi"}
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


@pytest.mark.parametrize("package", ["byoctl", "devkit"])
def test_the_client_and_the_kit_have_no_import_circle(package):
    modules = module_names(ROOT, package)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 5 and cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_a_circle_is_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]

"""Imports flow one way (README "Layout"), and no module cycle hides in a function-level import.

Every ``import`` / ``from ... import`` statement anywhere in a module (module level or inside a
function) counts as an edge, so a cycle dodged by importing inside a function is still found.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ntt_batch"

# The packages from the bottom up: each may import only the ones before it (and the package's leaf
# modules _version, _public, hashing, plugins). No exceptions; function-level imports count.
ORDER = [
    "storage",
    "references",
    "models",
    "method",
    "bank",
    "sources",
    "output",
    "exports",
    "eval",
    "viz",
    "corrections",
    "pipeline",
    "workflows",
]
ALLOWED = {layer: set(ORDER[:i]) for i, layer in enumerate(ORDER)}
LEAVES = {"_version", "_public", "hashing", "plugins"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges[mod] |= {n for n in names if n in modules and n != mod}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_no_import_cycles():
    cycles = _cycles(_imports())
    assert not cycles, f"import cycles (function-level imports count): {cycles}"


def test_imports_flow_one_way():
    wrong = []
    for mod, targets in _imports().items():
        layer = _layer(mod)
        if layer not in ALLOWED:
            continue  # the top: api, cli, benchmark, demo
        for t in targets:
            other = _layer(t)
            if other != layer and other not in LEAVES and other not in ALLOWED[layer]:
                wrong.append(f"{mod} imports {t}")
    assert not wrong, "\n".join(sorted(wrong))

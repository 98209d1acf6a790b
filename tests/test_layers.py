"""The import layers written in docs/DESIGN.md hold in the code: every import of an obbslim module,
including those inside functions, points to the same package or to a package lower in the order, and
no obbslim modules import each other in a cycle. The order is read from DESIGN.md itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "obbslim"


def layer_order() -> list[str]:
    """The ``Layers: a < b < ...`` line of docs/DESIGN.md."""
    text = (REPO / "docs" / "DESIGN.md").read_text()
    m = re.search(r"^Layers \(lowest first\): (.+)$", text, re.M)
    assert m, "docs/DESIGN.md has no 'Layers (lowest first): ...' line"
    return [name.strip(" `") for name in m.group(1).split("<")]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every obbslim import in the file, at any depth (functions, conditionals)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            base = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod; ``from pkg import name`` imports pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out += [(node.lineno, n) for n in names if n == "obbslim" or n.startswith("obbslim.")]
    return out


def package(module: str) -> str:
    """obbslim.engine.train -> engine; obbslim.errors -> errors; obbslim -> obbslim (the facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "obbslim"


MODULES = modules()
GRAPH = {name: imports(path, set(MODULES)) for name, path in MODULES.items()}


def test_design_lists_every_package():
    order = layer_order()
    found = {package(m) for m in MODULES} - {"obbslim", "__main__"}
    assert set(order) == found, f"DESIGN.md layers {order} vs packages {sorted(found)}"


def test_no_upward_import():
    """A module imports its own package or lower ones; the root package (``__version__`` and the lazy
    ``obbslim.Detector``) may be imported from anywhere and, like ``__main__``, imports from the top."""
    rank = {name: i for i, name in enumerate(layer_order())}
    bad = []
    for mod, deps in GRAPH.items():
        src = package(mod)
        if src in ("obbslim", "__main__"):
            continue
        for line, dep in deps:
            dst = package(dep)
            if dst != "obbslim" and rank[dst] > rank[src]:
                bad.append(f"{MODULES[mod].relative_to(REPO)}:{line}: {src} imports {dep} ({dst} is above)")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle():
    """No cycle among modules (hence none among packages): Tarjan's strongly connected components."""
    edges = {m: sorted({d for _, d in deps if d in GRAPH} - {m}) for m, deps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_walker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    if True:\n        from obbslim.engine import train\n")
    assert imports(f, {"obbslim.engine.train"}) == [(3, "obbslim.engine.train")]


@pytest.mark.parametrize("name", ["obbslim.engine.train", "obbslim.inference.detector", "obbslim.model.yolo"])
def test_known_modules_are_walked(name):
    assert name in GRAPH and GRAPH[name], name

"""The layout's rules, checked on the source (README "Architecture"):

* no import circle anywhere in ``app/`` (every import counts, lazy ones too);
* ``app/engine`` imports numpy, the standard library and itself only;
* the job machinery (``app/jobs``) imports no capability: capabilities register handlers;
* a route module validates, checks scope and calls one service method: no query, no unit
  of work, no polling loop;
* ``app/core`` imports no capability.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
CAPABILITIES = (
    "pipelines",
    "events",
    "webhooks",
    "registry",
    "predict",
    "online",
    "feedback",
    "jobs",
    "training",
    "compression",
    "migration",
    "keys",
    "operations",
)


def module_name(path: Path) -> str:
    rel = path.relative_to(APP.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in APP.rglob("*.py")}


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (absolute and relative)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def app_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports_of(path, name) if m in mods and m != name} for name, path in mods.items()}


def test_no_import_circles_in_app():
    graph = app_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_the_check_finds_a_circle(tmp_path: Path):
    """The graph builder sees lazy and relative imports (a check that cannot fail proves nothing)."""
    a = tmp_path / "app" / "x" / "a.py"
    a.parent.mkdir(parents=True)
    a.write_text("def f():\n    from .b import g\n")
    assert "app.x.b.g" in imports_of(a, "app.x.a") and "app.x.b" in imports_of(a, "app.x.a")


def test_engine_imports_numpy_and_the_standard_library_only():
    stdlib = set(sys.stdlib_module_names)
    for name, path in modules().items():
        if not name.startswith("app.engine"):
            continue
        for imp in imports_of(path, name):
            top = imp.split(".")[0]
            assert top in stdlib or top == "numpy" or imp.startswith("app.engine"), (name, imp)


@pytest.mark.parametrize("package", ["jobs", "core"])
def test_jobs_and_core_import_no_capability(package: str):
    others = [c for c in CAPABILITIES if c != package]
    for name, path in modules().items():
        if not name.startswith(f"app.{package}") or name.endswith(".router"):  # routers sit on top
            continue
        for imp in imports_of(path, name):
            assert not imp.startswith(tuple(f"app.{c}" for c in others)), (name, imp)
            assert not imp.startswith(("app.context", "app.main", "app.background", "app.deps")), (name, imp)


def route_modules() -> list[tuple[str, Path]]:
    return sorted((n, p) for n, p in modules().items() if n.endswith(".router"))


#: Packages that present the capabilities rather than being one: they sit on top, beside
#: the routers (the dashboard reads through the capability services, as routers do).
PRESENTATION = ("ui",)


def test_every_capability_has_its_router():
    assert {n.split(".")[1] for n, _ in route_modules()} == set(CAPABILITIES) | set(PRESENTATION)


def test_the_dashboard_is_a_top_layer_over_the_services():
    """``app.ui`` goes through the app context's services (never a repository, table or
    session), and nothing but ``app.main`` depends on it."""
    for name, path in modules().items():
        imported = imports_of(path, name)
        if name.startswith("app.ui"):
            assert not any(i.startswith(("sqlalchemy", "app.core.tables", "app.core.db")) for i in imported), name
            assert not any(".repository" in i for i in imported), name
        elif name != "app.main":
            assert not any(i.startswith("app.ui") for i in imported), name


@pytest.mark.parametrize("name,path", route_modules(), ids=lambda x: x if isinstance(x, str) else "")
def test_route_modules_hold_no_query_no_unit_of_work_no_polling(name: str, path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        assert not isinstance(node, ast.While), f"{name}:{node.lineno}: a polling loop belongs in a service"
        if isinstance(node, ast.Attribute):
            assert node.attr not in ("read", "write", "execute", "scalars", "scalar"), (
                f"{name}:{node.lineno}: .{node.attr} — units of work and queries belong in services and repositories"
            )
        if isinstance(node, ast.Name):
            assert node.id not in ("select", "sa", "Session"), f"{name}:{node.lineno}: {node.id}"
    imported = imports_of(path, name)
    assert not any(i.startswith(("sqlalchemy", "app.core.tables", "app.core.db")) for i in imported), name
    assert not any(i.endswith(".repository") or ".repository." in i for i in imported), name

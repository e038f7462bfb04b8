"""No import circles in ``broker/``: the graph of every ``import`` the code makes (at module
level or inside a function; ``if TYPE_CHECKING:`` blocks excluded, as they never run) has no
cycle. An edge goes to the module named, not to its parent packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BROKER = Path(__file__).resolve().parent.parent / "broker"


def _module(path: Path) -> str:
    parts = path.relative_to(BROKER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            # `from . import routes` imports a module; `from .x import name` imports x
            targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = targets or [base]
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for p in BROKER.rglob("*.py")]
    modules = {_module(p) for p in files}
    return {_module(p): _imports(p, modules) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_detector_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_broker_has_no_import_circles():
    graph = import_graph()
    assert "broker.config" in graph and "broker.backends" in graph["broker.config"]
    assert cycles(graph) == []


def test_config_and_settings_import_no_backend_kind():
    """The declarations are below the kinds: a kind imports them, never the reverse."""
    graph = import_graph()
    for module in ("broker.settings", "broker.workflow", "broker.declare"):
        assert not {m for m in graph[module] if m.startswith("broker.backends")}, module
    kinds = {"hosted", "gateway", "agent", "mock"}
    direct = {m for m in graph["broker.config"] if m.split(".")[2:3] and m.split(".")[2] in kinds}
    assert direct == set()


@pytest.mark.parametrize(
    "module",
    [
        # hosted and gateway deployments have no thread database (12.8 MB of RSS)
        "sqlalchemy",
        # the settings are a plain pydantic model: pydantic-settings' sources cost 6.9 MB
        "pydantic_settings",
        # /openapi.json is built on its first request (2.6 MB)
        "broker.openapi",
    ],
)
def test_a_hosted_process_does_not_load_what_it_does_not_use(module: str):
    """The app and CLI modules leave out what a hosted-only broker never runs (the mint's
    80 MB bound at 512 connections, issue 24)."""
    code = f"import sys, broker.app, broker.cli; print({module!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

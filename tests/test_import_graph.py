"""The import graph of rpchat/: no cycles (function-level imports count too), and the core never imports the TUI.

Read from the source with ``ast``, so a lazy import inside a function that only dodges a cycle is still a cycle.
Importing ``a.b.c`` also runs the package ``a.b``'s ``__init__``, so that counts as an edge too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rpchat"

# Allowed to import the TUI: the TUI itself and the command line that starts it.
TUI = "rpchat.tui"
FRONT_ENDS = ("rpchat.cli", "rpchat.__main__")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every rpchat module that ``name`` imports, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else source)
    edges: set[str] = set()
    for target in targets:
        if target not in modules:
            continue
        edges.add(target)
        parts = target.split(".")
        for i in range(2, len(parts)):  # the packages above it run their __init__ first
            above = ".".join(parts[:i])
            if not name.startswith(above + ".") and above in modules:
                edges.add(above)
    edges.discard(name)
    return edges


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "\n".join(f"  {m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_the_graph_is_read_from_the_source() -> None:
    graph = _graph()
    # Known edges, one of each kind: absolute, relative package import, and a lazy one inside a function.
    assert "rpchat.chat.model" in graph["rpchat.chat.store"]
    assert "rpchat.tui.app" in graph["rpchat.cli"]  # imported inside cmd_chat's function body
    assert "rpchat.prompt" in graph["rpchat.session"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_rpchat_has_no_import_cycle() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module -> what it imports inside the cycle):\n" + "\n\n".join(
        _describe(graph, c) for c in cycles)


def test_the_core_imports_nothing_from_the_tui() -> None:
    graph = _graph()
    wrong = {
        name: sorted(t for t in targets if t == TUI or t.startswith(TUI + ".") or t in FRONT_ENDS)
        for name, targets in graph.items()
        if not (name == TUI or name.startswith(TUI + ".") or name in FRONT_ENDS)
    }
    assert not {k: v for k, v in wrong.items() if v}

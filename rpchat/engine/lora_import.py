"""Convert a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) to a GGUF LoRA adapter.

Only ``gguf``, ``safetensors`` and numpy: no torch. The layout follows llama.cpp's own
convert_lora_to_gguf.py: each target ``W`` gets ``<base name>.lora_a`` (PEFT's lora_A, shape r x in)
and ``<base name>.lora_b`` (lora_B, out x r); llama.cpp adds ``(alpha / r) * B @ A @ x``. For the llama
architecture the base GGUF's q and k rows are permuted (convert_hf_to_gguf's ``permute``), so lora_B of
q_proj/k_proj is permuted the same way. Mixtral's per-expert adapters are stacked like its expert weights.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rpchat.errors import ModelError
from rpchat.paths import profile

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLED = ("adapter_model.bin", "adapter_model.pt")
_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
_EXPERT = re.compile(r"^(?P<pre>.+\.experts)\.(?P<e>\d+)\.(?P<w>w[123])$")
# The architectures whose converter permutes q/k rows (convert_hf_to_gguf.py LlamaModel.modify_tensors).
_PERMUTED_ARCHS = frozenset({"llama"})


@dataclass(frozen=True)
class ImportedLora:
    """What `import_lora` wrote."""

    path: Path
    rank: int
    alpha: float
    targets: tuple[str, ...]  # base tensor names, e.g. blk.0.attn_q.weight
    n_tensors: int


def _in_hub_cache(folder: Path) -> bool:
    # <cache>/models--org--name/snapshots/<commit>/
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


def adapter_name(folder: Path) -> str:
    """The adapter's name: its folder, or its repo's name when it sits in the Hugging Face cache
    (``hf download`` puts it under a commit hash), so model rules can recognise it."""
    folder = folder.resolve()
    if _in_hub_cache(folder):
        return folder.parent.parent.name.split("--")[-1]
    return folder.name


def _fail(problem: str, source: Path) -> ModelError:
    return ModelError(problem, source)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.is_file():
        raise _fail(f"no {CONFIG} here: not a PEFT adapter folder", folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(f"cannot read it: {e}", path) from None
    if not isinstance(data, dict):
        raise _fail("must be a JSON object", path)
    kind = str(data.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise _fail(f"peft_type {kind} is not a LoRA adapter", path)
    if data.get("use_dora"):
        raise _fail("DoRA adapters are not supported by llama.cpp", path)
    if data.get("fan_in_fan_out"):
        raise _fail("fan_in_fan_out adapters (GPT-2 style Conv1D) are not supported", path)
    if data.get("alpha_pattern"):
        raise _fail("alpha_pattern (a different alpha per module) cannot be expressed in one GGUF adapter", path)
    alpha = data.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise _fail("lora_alpha must be a positive number", path)
    return data


def _bf16_reader(path: Path) -> Callable[[str], np.ndarray]:
    # numpy has no bfloat16: read the raw 16-bit words (the safetensors header says where) and widen them.
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))

    def read(name: str) -> np.ndarray:
        entry = header[name]
        start, end = entry["data_offsets"]
        raw = np.fromfile(path, dtype="<u2", count=(end - start) // 2, offset=8 + n + start)
        wide: np.ndarray = (raw.astype(np.uint32) << 16).view(np.float32)
        return wide.reshape(tuple(int(d) for d in entry["shape"]))

    return read


def _load_weights(folder: Path) -> tuple[dict[str, np.ndarray], bool]:
    """The adapter's tensors as float32, and whether any was stored in 16 bits."""
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS
    if not path.is_file():
        for name in PICKLED:
            if (folder / name).is_file():
                raise _fail("a pickled PyTorch file; it cannot be read safely without torch: "
                            f"save the adapter as {WEIGHTS} (PEFT's save_pretrained(safe_serialization=True))",
                            folder / name)
        raise _fail(f"no {WEIGHTS} here", folder)
    out: dict[str, np.ndarray] = {}
    sixteen = False
    try:
        with safe_open(str(path), framework="numpy") as f:
            bf16: Callable[[str], np.ndarray] | None = None
            for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                dtype = f.get_slice(name).get_dtype()
                sixteen = sixteen or dtype in ("F16", "BF16")
                if dtype == "BF16":
                    bf16 = bf16 or _bf16_reader(path)
                    out[name] = bf16(name)
                elif dtype in ("F32", "F16", "F64"):
                    out[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
                else:
                    raise _fail(f"tensor {name} has type {dtype}; only F32, F16 and BF16 adapters are supported",
                                path)
    except SafetensorError as e:
        raise _fail(f"not a valid safetensors file: {e}", path) from None
    except (OSError, ValueError, KeyError) as e:
        raise _fail(f"cannot read it: {e}", path) from None
    return out, sixteen


def _permute_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    # convert_hf_to_gguf.py LlamaModel.permute, on the rows (the output side) that lora_B holds.
    split: np.ndarray = b.reshape(n_head, 2, b.shape[0] // n_head // 2, *b.shape[1:]).swapaxes(1, 2)
    return split.reshape(b.shape)


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def import_lora(folder: Path, base: Path, out: Path | None = None, *, outtype: str | None = None) -> ImportedLora:
    """Write ``folder``'s PEFT adapter as a GGUF LoRA for the GGUF model ``base``; ModelError on any mismatch.

    The default output is ``folder/<name>.gguf``, or ``<models folder>/<name>.gguf`` for an adapter in
    the Hugging Face cache.

    ``outtype`` is "f32" or "f16"; by default f32 adapters stay f32 and f16/bf16 ones are written as f16.
    """
    import gguf

    folder, base = Path(folder).expanduser(), Path(base).expanduser()
    if not folder.is_dir():
        raise _fail("not a folder (give the folder with adapter_config.json)", folder)
    config = _read_config(folder)
    weights, sixteen = _load_weights(folder)
    if not base.is_file():
        raise _fail("base model file not found", base)
    try:
        reader = gguf.GGUFReader(str(base))
    except (ValueError, OSError, struct.error) as e:
        raise _fail(f"not a valid GGUF file: {e}", base) from None
    if str(_field(reader, "general.type") or "model") == "adapter":
        raise _fail("is itself an adapter; give the base model GGUF", base)
    arch = str(_field(reader, "general.architecture") or "")
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        raise _fail(f"unknown architecture {arch!r}", base)
    n_blocks = int(_field(reader, f"{arch}.block_count") or 0)
    n_head = int(_field(reader, f"{arch}.attention.head_count") or 0)
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv") or n_head)
    names = gguf.get_tensor_name_map(arch_enum, n_blocks)
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}  # ggml order: ne0 (in) first

    # Pair A and B per module; expert modules are gathered per merged expert tensor.
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        m = _LORA.match(key)
        if m is None:
            if "lora_embedding" in key or key.endswith((".embed_tokens.weight", ".lm_head.weight")):
                raise _fail(f"{key}: adapters that train the embeddings (new tokens) are not supported",
                            folder / WEIGHTS)
            raise _fail(f"unexpected tensor {key}: not a lora_A or lora_B weight", folder / WEIGHTS)
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    if not pairs:
        raise _fail("holds no LoRA tensors", folder / WEIGHTS)

    experts: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    tensors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise _fail(f"{module} has lora_{'A' if 'A' in ab else 'B'} without its partner", folder / WEIGHTS)
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise _fail(f"{module}: lora_A {a.shape} and lora_B {b.shape} do not share a rank", folder / WEIGHTS)
        em = _EXPERT.match(module)
        if em is not None:
            merged = names.get_name(f"{em['pre']}.{em['w']}")
            if merged is None:
                raise _fail(f"{module}: the {arch} base model has no such expert tensor", base)
            experts.setdefault(merged + ".weight", {})[int(em["e"])] = (a, b)
            continue
        target = names.get_name(module)
        if target is None:
            raise _fail(f"{module}: no matching tensor in this {arch} base model ({n_blocks} layers); "
                        "was the adapter trained on another model?", base)
        if arch in _PERMUTED_ARCHS and target.endswith((".attn_q", ".attn_k")):
            heads = n_head if target.endswith(".attn_q") else n_head_kv
            if heads <= 0 or b.shape[0] % (2 * heads):
                raise _fail(f"{module}: {b.shape[0]} outputs do not split into {heads} heads", base)
            b = _permute_rows(b, heads)
        tensors[target + ".weight"] = (a, b)
    for target, per_expert in experts.items():
        n = len(per_expert)
        if sorted(per_expert) != list(range(n)):
            raise _fail(f"{target}: the adapter misses some experts", folder / WEIGHTS)
        tensors[target] = (np.stack([per_expert[e][0] for e in range(n)]),
                           np.stack([per_expert[e][1] for e in range(n)]))

    for target, (a, b) in tensors.items():
        shape = shapes.get(target)
        if shape is None:
            raise _fail(f"the adapter targets {target}, which this base model does not have", base)
        # ggml ne of W: [in, out(, n_expert)]; A is (.., r, in) and B (.., out, r) in numpy order.
        want_in, want_out = shape[0], shape[1]
        if a.shape[-1] != want_in or b.shape[-2] != want_out or a.shape[:-2] != tuple(shape[2:][::-1]):
            raise _fail(f"does not fit this base model: {target} is {want_out}x{want_in} but the adapter "
                        f"expects {b.shape[-2]}x{a.shape[-1]} (was it trained on another model?)", base)

    alpha = float(config["lora_alpha"])
    ranks = {int(t[0].shape[-2]) for t in tensors.values()}
    if config.get("use_rslora"):
        # PEFT scales rsLoRA by alpha/sqrt(r); llama.cpp by alpha/r: fold the difference into alpha.
        if len(ranks) != 1:
            raise _fail("rsLoRA with different ranks per module cannot be expressed in one GGUF adapter",
                        folder / CONFIG)
        alpha *= float(np.sqrt(next(iter(ranks))))

    f16 = outtype == "f16" if outtype else sixteen
    dtype = np.float16 if f16 else np.float32
    name = adapter_name(folder)
    if out is None:
        # Not inside the Hugging Face cache (its snapshot folders belong to the library): the models folder.
        out = profile().models_dir / f"{name}.gguf" if _in_hub_cache(folder) else folder / f"{name}.gguf"
        out.parent.mkdir(parents=True, exist_ok=True)
    out = Path(out).expanduser()
    writer = gguf.GGUFWriter(str(out) + ".partial", arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    writer.add_name(name)
    base_name = config.get("base_model_name_or_path")
    if isinstance(base_name, str) and base_name:
        writer.add_uint32("general.base_model.count", 1)
        writer.add_string("general.base_model.0.name", base_name)
    for target, (a, b) in sorted(tensors.items()):
        writer.add_tensor(target + ".lora_a", np.ascontiguousarray(a, dtype=dtype))
        writer.add_tensor(target + ".lora_b", np.ascontiguousarray(b, dtype=dtype))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        Path(str(out) + ".partial").replace(out)  # never a half-written adapter under the real name
    except OSError as e:
        Path(str(out) + ".partial").unlink(missing_ok=True)
        raise _fail(f"cannot write the adapter: {e.strerror or e}", out) from None
    return ImportedLora(out, max(ranks), alpha, tuple(sorted(tensors)), 2 * len(tensors))


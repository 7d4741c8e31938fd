"""A synthetic GGUF of Mistral-7B's shape, for measuring rpchat at real scale without downloading a model.

32 layers, 4096 wide, 32 heads with 8 KV heads, a 14336 FFN and LLaMA's 32k SentencePiece
vocabulary, every matrix random Q4_0 (written block by block, with fp16 scales that keep the
activations in range). It computes what a 7B model computes, at the same cost, and writes nonsense.
``rpchat bench --shape 7b`` generates it once (about 4 GB) into the cache folder.

The tokenizer is copied from llama.cpp's ``models/ggml-vocab-llama-spm.gguf``. rpchat does not
ship that file: it is found beside the llama.cpp sources (see `find_spm_vocab`) or passed as a path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpchat.errors import ModelError
from rpchat.paths import profile

SPM_VOCAB = "ggml-vocab-llama-spm.gguf"
_QK4_0 = 32  # weights per Q4_0 block
_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of 4-bit values


@dataclass(frozen=True)
class Shape:
    """The dimensions of a llama-architecture model."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rope_base: float


SHAPES = {
    "7b": Shape("mistral-7b-shape", 32, 4096, 32, 8, 14336, 32000, 32768, 1_000_000.0),
}


def synthetic_model_path(shape: str = "7b") -> Path:
    """Where the synthetic model of ``shape`` lives (in the cache folder; it may not exist yet)."""
    return profile().cache_dir / "synthetic" / f"{SHAPES[shape].name}-q4_0.gguf"


def find_spm_vocab() -> Path | None:
    """llama.cpp's LLaMA SentencePiece vocabulary file, looked for beside the llama.cpp sources:
    ``$LLAMA_CPP_DIR/models`` and the ``vendor/llama.cpp/models`` of a llama-cpp-python source tree."""
    places: list[Path] = []
    if os.environ.get("LLAMA_CPP_DIR"):
        places.append(Path(os.environ["LLAMA_CPP_DIR"]).expanduser() / "models")
    try:
        import llama_cpp

        root = Path(llama_cpp.__file__).resolve().parent.parent
        places.append(root / "vendor" / "llama.cpp" / "models")
    except ImportError:
        pass
    for place in places:
        if (place / SPM_VOCAB).is_file():
            return place / SPM_VOCAB
    return None


def ensure_synthetic_model(
    shape: str = "7b", vocab: Path | None = None, log: Callable[[str], None] | None = None
) -> Path:
    """The synthetic model of ``shape``, generated first if the cache does not hold it yet."""
    path = synthetic_model_path(shape)
    if path.is_file():
        return path
    source = vocab if vocab is not None else find_spm_vocab()
    if source is None or not Path(source).is_file():
        raise ModelError(
            f"the synthetic model needs llama.cpp's {SPM_VOCAB}: pass --vocab PATH or set LLAMA_CPP_DIR "
            "(it is in llama.cpp's models/ folder and in the llama-cpp-python sdist's vendor/llama.cpp/models/)",
            source,
        )
    if log:
        log(f"writing a synthetic {shape} model (random Q4_0, once) to {path}")
    write_synthetic_model(path, SHAPES[shape], Path(source))
    return path


def write_synthetic_model(path: Path, shape: Shape, vocab: Path, seed: int = 0) -> Path:
    """Write the model to ``path`` (through a temporary file, so a killed run leaves nothing half-written)."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

    keys = _tokenizer_keys(GGUFReader(str(vocab)), vocab)
    n_vocab = len(keys["tokenizer.ggml.tokens"][1])
    if n_vocab != shape.n_vocab:
        raise ModelError(f"has {n_vocab} tokens, the {shape.name} needs {shape.n_vocab}", vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = GGUFWriter(str(tmp), "llama")
    writer.add_name(f"synthetic {shape.name} (random Q4_0)")
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_file_type(2)  # MOSTLY_Q4_0
    for key, (vtype, value, sub) in keys.items():
        writer.add_key_value(key, value, vtype, sub_type=sub)

    rng = np.random.default_rng(seed)
    plan = list(_tensors(shape))
    for name, rows, cols in plan:
        if rows == 0:
            writer.add_tensor_info(name, (cols,), np.dtype(np.float32), cols * 4)
        else:
            writer.add_tensor_info(
                name, (rows, cols // _QK4_0 * _BLOCK_BYTES), np.dtype(np.uint8),
                rows * cols // _QK4_0 * _BLOCK_BYTES, raw_dtype=GGMLQuantizationType.Q4_0,
            )
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _name, rows, cols in plan:
            writer.write_tensor_data(np.ones(cols, np.float32) if rows == 0 else _q4_0(rng, rows, cols))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def _tensors(s: Shape) -> Iterator[tuple[str, int, int]]:
    """(name, rows, columns) in llama.cpp's naming; rows 0 marks a norm vector of ``columns`` floats."""
    kv = s.n_embd // s.n_head * s.n_head_kv
    yield "token_embd.weight", s.n_vocab, s.n_embd
    for i in range(s.n_layer):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", 0, s.n_embd
        yield p + "attn_q.weight", s.n_embd, s.n_embd
        yield p + "attn_k.weight", kv, s.n_embd
        yield p + "attn_v.weight", kv, s.n_embd
        yield p + "attn_output.weight", s.n_embd, s.n_embd
        yield p + "ffn_norm.weight", 0, s.n_embd
        yield p + "ffn_gate.weight", s.n_ff, s.n_embd
        yield p + "ffn_up.weight", s.n_ff, s.n_embd
        yield p + "ffn_down.weight", s.n_embd, s.n_ff
    yield "output_norm.weight", 0, s.n_embd
    yield "output.weight", s.n_vocab, s.n_embd


def _q4_0(rng: Any, rows: int, cols: int) -> Any:
    """Random Q4_0 blocks: 4-bit values uniform in -8..7 times a scale that gives each output
    a variance near 1 for unit inputs (as trained weights roughly do), varied by +-25 % per block."""
    import numpy as np

    n_blocks = rows * cols // _QK4_0
    blocks = np.empty((n_blocks, _BLOCK_BYTES), dtype=np.uint8)
    blocks[:, 2:] = np.frombuffer(rng.bytes(n_blocks * 16), dtype=np.uint8).reshape(n_blocks, 16)
    # A uniform 4-bit value minus 8 has a standard deviation of about 4.6.
    base = 1.0 / (4.6 * math.sqrt(cols))
    scales = (base * rng.uniform(0.75, 1.25, n_blocks)).astype(np.float16)
    blocks[:, :2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, cols // _QK4_0 * _BLOCK_BYTES)


def _tokenizer_keys(reader: Any, source: Path) -> dict[str, tuple[Any, Any, Any]]:
    """Every ``tokenizer.*`` key of a GGUF vocabulary file as (value type, value, item type)."""
    from gguf import GGUFValueType

    out: dict[str, tuple[Any, Any, Any]] = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        out[key] = (vtype, field.contents(), sub)
    if "tokenizer.ggml.tokens" not in out:
        raise ModelError("is not a GGUF vocabulary file (no tokenizer.ggml.tokens)", source)
    return out


__all__ = ["SHAPES", "Shape", "ensure_synthetic_model", "find_spm_vocab", "synthetic_model_path",
           "write_synthetic_model"]

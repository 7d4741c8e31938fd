"""GGUF metadata for the model picker, read by a bounded header parser.

The reader never trusts a count or a length in the file: each is checked against the bytes that
are left and against fixed caps, so a hostile header fails with a ModelError at once instead of
allocating gigabytes or looping for minutes.
"""

from __future__ import annotations

import mmap
import re
import stat
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rpchat.errors import ModelError

MAGIC = b"GGUF"
MAX_KV = 1 << 20
MAX_TENSORS = 1 << 20
MAX_KEY_LEN = 1 << 16
MAX_STRING_LEN = 64 << 20
MAX_ARRAY_LEN = 1 << 26
MAX_DIMS = 8

# GGUF value types -> struct format of a scalar (8 = string, 9 = array are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# llama_ftype values (general.file_type) -> the usual quantization label.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}
# ggml tensor types, to guess the quantization when general.file_type is missing.
_TENSOR_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}
_KEPT = frozenset({"tokenizer.chat_template", "adapter.type"})
_KEPT_SUFFIXES = (".context_length", ".block_count", ".embedding_length", ".attention.head_count",
                  ".attention.head_count_kv", ".attention.key_length", ".attention.value_length")
_SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelInfo:
    """What the model picker shows about one GGUF file."""

    path: Path
    name: str
    architecture: str
    context_length: int | None
    quantization: str
    size_bytes: int
    parameter_count: int | None
    block_count: int | None = None
    error: str | None = None  # set by scan_models for a file it could not read
    # The text keys that say what the model is: general.* (name, basename, finetune, base_model.N.*,
    # type), adapter.type and tokenizer.chat_template, for recognising a model (engine/recognize.py).
    metadata: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    kv_bytes_per_token: int | None = None  # f16 KV cache per token of context, when the header says enough

    @property
    def size_label(self) -> str:
        """Parameter count like ``268M`` or ``7.2B``, when known."""
        n = self.parameter_count
        if not n:
            return ""
        return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


class _Reader:
    """Bounded little-endian reads over a memory map."""

    def __init__(self, buf: mmap.mmap | bytes, source: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.source = source

    def fail(self, problem: str) -> ModelError:
        return ModelError(f"not a valid GGUF file: {problem}", self.source)

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated header at byte {self.pos}")

    def unpack(self, fmt: str) -> int | float | bool:
        size = struct.calcsize("<" + fmt)
        self.need(size)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value  # type: ignore[no-any-return]

    def count(self, what: str, cap: int, min_item: int, wide: bool) -> int:
        n = int(self.unpack("Q" if wide else "I"))
        # Each item takes at least min_item bytes, so a count beyond the file is a lie.
        if n > cap or n * min_item > len(self.buf) - self.pos:
            raise self.fail(f"absurd {what} count {n}")
        return n

    def string(self, cap: int, wide: bool) -> bytes:
        n = self.count("string length", cap, 1, wide)
        self.need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw

    def skip_string(self, wide: bool) -> None:
        n = self.count("string length", MAX_STRING_LEN, 1, wide)
        self.need(n)
        self.pos += n

    def value(self, vtype: int, wide: bool, keep: bool) -> object:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            if not keep:
                self.skip_string(wide)
                return None
            return self.string(MAX_STRING_LEN, wide).decode("utf-8", "replace")
        if vtype == _ARRAY:
            item_type = int(self.unpack("I"))
            if item_type not in _SCALARS and item_type != _STRING:
                raise self.fail(f"bad array item type {item_type}")
            item_size = struct.calcsize("<" + _SCALARS[item_type]) if item_type in _SCALARS else 8
            n = self.count("array", MAX_ARRAY_LEN, item_size if wide else min(item_size, 4), wide)
            if item_type in _SCALARS:
                self.need(n * item_size)
                self.pos += n * item_size
            else:
                for _ in range(n):
                    self.skip_string(wide)
            return n  # arrays are skipped; their length is all the picker needs
        raise self.fail(f"bad value type {vtype}")


def read_gguf_info(path: str | Path) -> ModelInfo:
    """Read one GGUF file's metadata; raises ModelError for a missing, foreign or corrupt file."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            raise ModelError("not a regular file", path)  # opening a FIFO would wait forever
        size = info.st_size
        with path.open("rb") as fh:
            if size < 24:
                head = fh.read()
                if head[:4] != MAGIC:
                    raise ModelError("not a GGUF file (bad magic)", path)
                raise ModelError("not a valid GGUF file: truncated header", path)
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Reader(buf, path), path, size)
    except FileNotFoundError:
        raise ModelError("model file not found", path) from None
    except IsADirectoryError:
        raise ModelError("is a folder, not a GGUF file", path) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file: {exc.strerror or exc}", path) from None


def _parse(r: _Reader, path: Path, size: int) -> ModelInfo:
    if bytes(r.buf[:4]) != MAGIC:
        raise ModelError("not a GGUF file (bad magic)", path)
    r.pos = 4
    version = int(r.unpack("I"))
    if version not in (1, 2, 3):
        raise r.fail(f"unsupported version {version}")
    wide = version >= 2  # v1 used 32-bit counts and lengths
    n_tensors = r.count("tensor", MAX_TENSORS, 24, wide)
    n_kv = r.count("key/value", MAX_KV, 12, wide)

    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string(MAX_KEY_LEN, wide).decode("utf-8", "replace")
        vtype = int(r.unpack("I"))
        keep = key.startswith("general.") or key in _KEPT or key.endswith(_KEPT_SUFFIXES)
        value = r.value(vtype, wide, keep)
        # An array's value is its length: never mistake it for a number (per-layer head counts).
        meta[key] = ("array", value) if vtype == _ARRAY else value

    params = 0
    tensor_types: Counter[int] = Counter()
    for _ in range(n_tensors):
        r.skip_string(wide)
        n_dims = int(r.unpack("I"))
        if n_dims > MAX_DIMS:
            raise r.fail(f"absurd tensor rank {n_dims}")
        n = 1
        for _ in range(n_dims):
            n *= int(r.unpack("Q" if wide else "I"))
        ttype = int(r.unpack("I"))
        r.unpack("Q")  # data offset
        params += n
        tensor_types[ttype] += n

    arch = str(meta.get("general.architecture") or "unknown")
    ctx = meta.get(f"{arch}.context_length")
    blocks = meta.get(f"{arch}.block_count")
    file_type = meta.get("general.file_type")
    if isinstance(file_type, int) and file_type in _FILE_TYPES:
        quant = _FILE_TYPES[file_type]
    elif tensor_types:
        quant = _TENSOR_TYPES.get(tensor_types.most_common(1)[0][0], "unknown")
    else:
        quant = "unknown"
    declared = meta.get("general.parameter_count")
    kv = _kv_bytes_per_token(meta, arch)
    name = str(meta.get("general.name") or "").strip() or path.stem
    return ModelInfo(
        path=path,
        name=" ".join(name.split())[:200],
        architecture=arch,
        context_length=int(ctx) if isinstance(ctx, int) and ctx > 0 else None,
        quantization=quant,
        size_bytes=size,
        parameter_count=int(declared) if isinstance(declared, int) and declared > 0 else (params or None),
        block_count=int(blocks) if isinstance(blocks, int) and blocks > 0 else None,
        metadata={k: v for k, v in meta.items() if isinstance(v, str)},
        kv_bytes_per_token=kv,
    )


def _kv_bytes_per_token(meta: dict[str, object], arch: str) -> int | None:
    """K and V, f16, for every layer: layers x kv_heads x (key + value head size) x 2 bytes."""
    def num(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    layers, embd, heads = num("block_count"), num("embedding_length"), num("attention.head_count")
    if layers is None or embd is None or heads is None:
        return None
    kv_heads = num("attention.head_count_kv") or heads
    key_len = num("attention.key_length") or embd // heads
    value_len = num("attention.value_length") or embd // heads
    return layers * kv_heads * (key_len + value_len) * 2


def scan_models(folder: str | Path) -> list[ModelInfo]:
    """Every GGUF model under ``folder`` (recursively), sorted by name.

    Unreadable files are listed with ``error`` set, so the picker can show why; later parts of a
    split model and multimodal projector files are left out.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found: list[ModelInfo] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() != ".gguf" or not path.is_file():
            continue
        part = _SPLIT_PART.search(path.name)
        if (part and part.group(1) != "00001") or path.name.lower().startswith("mmproj"):
            continue
        try:
            found.append(read_gguf_info(path))
        except ModelError as exc:
            size = path.stat().st_size if path.exists() else 0
            found.append(
                ModelInfo(path, path.stem, "unknown", None, "unknown", size, None, error=exc.problem)
            )
    found.sort(key=lambda m: (m.name.lower(), str(m.path)))
    return found

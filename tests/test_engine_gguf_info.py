"""GGUF metadata for the model picker, including hostile headers that must fail fast."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest
from tinymodel import write_tiny_model

from rpchat.engine.gguf_info import read_gguf_info, scan_models
from rpchat.errors import ModelError


def header(version: int = 3, n_tensors: int = 0, n_kv: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def gguf_string(s: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(s) if length is None else length) + s


def test_reads_tiny_model(tiny_model: Path) -> None:
    info = read_gguf_info(tiny_model)
    assert info.name == "tiny-llama"
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert info.quantization == "F32"
    assert info.block_count == 2
    assert info.size_bytes == tiny_model.stat().st_size
    # 512x64 embeddings + output, 2 norms + per block 4x64x64 attention, 3x64x128 FFN, 2 norms.
    assert info.parameter_count == 2 * 512 * 64 + 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64)


def test_reads_quantization_of_a_quantized_model(tiny_model: Path, tmp_path: Path) -> None:
    import llama_cpp

    out = tmp_path / "q8.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(str(tiny_model).encode(), str(out).encode(), ctypes.byref(params)) == 0
    assert read_gguf_info(out).quantization == "Q8_0"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "bad magic"),
        (b"PK\x03\x04" + b"\0" * 40, "bad magic"),
        (b"GGUF\x03\0\0", "truncated"),
        (header(version=99), "unsupported version"),
        (header(n_tensors=1 << 62), "absurd tensor count"),
        (header(n_kv=(1 << 64) - 1), "absurd key/value count"),
        (header(n_kv=1) + gguf_string(b"x", length=1 << 40), "absurd string length"),
        (header(n_kv=1) + gguf_string(b"general.name") + struct.pack("<I", 77), "bad value type"),
        (header(n_kv=1) + gguf_string(b"general.name") + struct.pack("<IQ", 8, 1 << 33), "absurd string length"),
        (header(n_kv=1) + gguf_string(b"tokens") + struct.pack("<IIQ", 9, 8, 1 << 50), "absurd array count"),
        (header(n_kv=1) + gguf_string(b"tokens") + struct.pack("<IIQ", 9, 4, 1000) + b"\0" * 16, "absurd array"),
        (header(n_kv=1) + gguf_string(b"nested") + struct.pack("<IIQ", 9, 9, 10) + b"\0" * 64, "bad array item"),
        (header(n_tensors=1) + gguf_string(b"t") + struct.pack("<I", 4096) + b"\0" * 32, "absurd tensor rank"),
        (header(n_kv=2) + gguf_string(b"general.name") + struct.pack("<I", 8) + gguf_string(b"ok"), "truncated"),
    ],
)
def test_hostile_headers_fail_without_reading_on(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data + b"\0" * 8 if data else data)
    with pytest.raises(ModelError) as info:
        read_gguf_info(path)
    assert problem in str(info.value)
    assert "hostile.gguf" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        read_gguf_info(tmp_path / "missing.gguf")
    with pytest.raises(ModelError, match="folder"):
        read_gguf_info(tmp_path)


def test_scan_models_lists_models_and_broken_files(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "sub").mkdir(parents=True)
    write_tiny_model(folder / "sub" / "b-model.gguf", name="B model")
    write_tiny_model(folder / "a-model.gguf", name="A model")
    (folder / "broken.gguf").write_bytes(b"GGUF\x03\0\0\0")
    (folder / "notes.txt").write_text("not a model")
    (folder / "mmproj-vision.gguf").write_bytes(tiny_model.read_bytes())
    (folder / "big-00002-of-00002.gguf").write_bytes(b"later part")
    found = scan_models(folder)
    names = [(m.name, m.error is None) for m in found]
    assert names == [("A model", True), ("B model", True), ("broken", False)]
    assert "truncated" in (found[2].error or "")
    assert scan_models(tmp_path / "nowhere") == []

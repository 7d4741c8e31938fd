"""`rpchat lora import`: a PEFT adapter becomes a GGUF LoRA that llama.cpp applies as W + (alpha/r)·B·A.

The adapter is made for the tiny test model in Hugging Face layout (as PEFT saves it: q/k rows not yet
permuted the way llama.cpp's converter stores the base). The reference is a second tiny GGUF with the
same random weights plus the update merged in numpy; llama.cpp's logits must match it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tinymodel import write_tiny_model

from rpchat.config import load_config
from rpchat.paths import profile

N_EMBD, N_HEAD, N_FF, N_LAYER = 64, 4, 128, 2
RANK, ALPHA = 4, 8.0  # scale alpha/r = 2, so a wrong scale shows
PREFIX = "base_model.model.model.layers"
TARGETS = {  # PEFT module -> (GGUF tensor, in, out)
    "self_attn.q_proj": ("attn_q", N_EMBD, N_EMBD),
    "self_attn.k_proj": ("attn_k", N_EMBD, N_EMBD),
    "self_attn.v_proj": ("attn_v", N_EMBD, N_EMBD),
    "self_attn.o_proj": ("attn_output", N_EMBD, N_EMBD),
    "mlp.gate_proj": ("ffn_gate", N_EMBD, N_FF),
    "mlp.up_proj": ("ffn_up", N_EMBD, N_FF),
    "mlp.down_proj": ("ffn_down", N_FF, N_EMBD),
}


def hf_to_gguf_rows(n_out: int, n_head: int) -> np.ndarray:
    """Row order of a q/k matrix in a llama GGUF: per head, the two rotary halves are interleaved."""
    d = n_out // n_head
    order = []
    for h in range(n_head):
        for i in range(d // 2):
            order += [h * d + i, h * d + d // 2 + i]
    return np.array(order)


def make_adapter(folder: Path, *, dtype: str = "F32", seed: int = 7) -> dict[str, np.ndarray]:
    """A PEFT adapter folder for the tiny model; returns the merged update per GGUF tensor."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    delta: dict[str, np.ndarray] = {}
    for layer in range(N_LAYER):
        for module, (gguf_name, n_in, n_out) in TARGETS.items():
            a = (rng.standard_normal((RANK, n_in)) * 0.1).astype(np.float32)
            b = (rng.standard_normal((n_out, RANK)) * 0.1).astype(np.float32)
            if dtype == "BF16":  # what the file will hold: the reference uses the same rounded numbers
                a = (a.view(np.uint32) & 0xFFFF0000).view(np.float32)
                b = (b.view(np.uint32) & 0xFFFF0000).view(np.float32)
            elif dtype == "F16":
                a, b = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
            update = (ALPHA / RANK) * (b @ a)  # PEFT: W + (alpha/r) B A, in Hugging Face row order
            if gguf_name in ("attn_q", "attn_k"):
                update = update[hf_to_gguf_rows(n_out, N_HEAD)]
            delta[f"blk.{layer}.{gguf_name}.weight"] = update
            tensors[f"{PREFIX}.{layer}.{module}.lora_A.weight"] = a
            tensors[f"{PREFIX}.{layer}.{module}.lora_B.weight"] = b
    if dtype == "BF16":
        _save_bf16(tensors, folder / "adapter_model.safetensors")
    else:
        np_type = np.float16 if dtype == "F16" else np.float32
        save_file({k: v.astype(np_type) for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "base_model_name_or_path": "tiny-llama",
        "target_modules": [m.split(".")[-1] for m in TARGETS], "task_type": "CAUSAL_LM",
    }), encoding="utf-8")
    return delta


def _save_bf16(tensors: dict[str, np.ndarray], path: Path) -> None:
    # safetensors' numpy API cannot write bfloat16 (numpy has none): the format is a JSON header and raw bytes.
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, value in tensors.items():
        raw = (value.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def logits(model: Path, lora: Path | None, tokens: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(str(model), lora_path=str(lora) if lora else None, n_ctx=64, n_threads=1, logits_all=True,
                verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()


def run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RPCHAT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "rpchat", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


TOKENS = [1, 300, 301, 320, 350, 400, 410, 290, 305]


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_imported_adapter_matches_the_numpy_merge(dtype: str, tmp_path: Path, profile_home: Path) -> None:
    base = write_tiny_model(tmp_path / "base.gguf", n_layer=N_LAYER, n_embd=N_EMBD)
    delta = make_adapter(tmp_path / "my-adapter", dtype=dtype)
    merged = write_tiny_model(tmp_path / "merged.gguf", n_layer=N_LAYER, n_embd=N_EMBD, delta=delta)

    res = run(["lora", "import", str(tmp_path / "my-adapter"), "--base", str(base)], profile_home)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "my-adapter" / "my-adapter.gguf"
    assert f"wrote {out}: rank 4, alpha 8, 14 target tensors" in res.stderr
    assert not list(tmp_path.glob("my-adapter/*.partial"))

    plain = logits(base, None, TOKENS)
    applied = logits(base, out, TOKENS)
    reference = logits(merged, None, TOKENS)
    scale = np.abs(reference).max()
    # The adapter changes the output a lot; llama.cpp's result equals the numpy merge up to rounding
    # (f16 output tensors for the 16-bit adapters).
    assert np.abs(applied - plain).max() > 0.1 * scale
    tol = 1e-3 if dtype == "F32" else 3e-3  # llama.cpp keeps the KV cache in f16
    assert np.abs(applied - reference).max() < tol * scale

    # It is now the engine's LoRA, on that base, and rpchat's own loader accepts it.
    cfg = load_config(profile())
    assert cfg.engine.lora == str(out.resolve()) and cfg.engine.model == str(base.resolve())
    from rpchat.engine.factory import make_engine

    engine = make_engine(cfg)
    engine.load()
    engine.close()


def test_the_adapter_gguf_says_what_it_is(tmp_path: Path, profile_home: Path) -> None:
    from rpchat.engine.gguf_info import read_gguf_info

    base = write_tiny_model(tmp_path / "base.gguf", n_layer=N_LAYER, n_embd=N_EMBD)
    make_adapter(tmp_path / "limarp-zloss-mixtral-8x7b-qlora")
    res = run(["lora", "import", str(tmp_path / "limarp-zloss-mixtral-8x7b-qlora"), "--base", str(base),
               "--out", str(tmp_path / "a.gguf"), "--no-configure"], profile_home)
    assert res.returncode == 0, res.stderr
    meta = read_gguf_info(tmp_path / "a.gguf").metadata
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.name"] == "limarp-zloss-mixtral-8x7b-qlora"  # what recognition matches on
    assert not (profile_home / "config" / "config.yaml").exists()


def _one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpchat: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_pickled_adapter_is_refused_in_one_line(tmp_path: Path, profile_home: Path) -> None:
    base = write_tiny_model(tmp_path / "base.gguf", n_layer=N_LAYER, n_embd=N_EMBD)
    folder = tmp_path / "old"
    make_adapter(folder)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    res = run(["lora", "import", str(folder), "--base", str(base)], profile_home)
    _one_line_error(res, "adapter_model.bin", "pickled", "adapter_model.safetensors")


def test_an_adapter_for_another_model_is_refused(tmp_path: Path, profile_home: Path) -> None:
    other = write_tiny_model(tmp_path / "small.gguf", n_layer=N_LAYER, n_embd=32)
    make_adapter(tmp_path / "ad")
    res = run(["lora", "import", str(tmp_path / "ad"), "--base", str(other)], profile_home)
    _one_line_error(res, "small.gguf", "does not fit this base model", "trained on another model")
    fewer = write_tiny_model(tmp_path / "one-layer.gguf", n_layer=1, n_embd=N_EMBD)
    res = run(["lora", "import", str(tmp_path / "ad"), "--base", str(fewer)], profile_home)
    _one_line_error(res, "one-layer.gguf", "model.layers.1.", "no matching tensor", "(1 layers)")
    assert not list(tmp_path.glob("ad/*.gguf*"))


def test_broken_inputs_get_one_line(tmp_path: Path, profile_home: Path) -> None:
    base = write_tiny_model(tmp_path / "base.gguf", n_layer=N_LAYER, n_embd=N_EMBD)
    res = run(["lora", "import", str(tmp_path / "nothing"), "--base", str(base)], profile_home)
    _one_line_error(res, "nothing", "not a folder")
    folder = tmp_path / "ad"
    make_adapter(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    _one_line_error(run(["lora", "import", str(folder), "--base", str(base)], profile_home), "adapter_model.safetensors")
    make_adapter(folder)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "lora_alpha": 8, "use_dora": true}')
    _one_line_error(run(["lora", "import", str(folder), "--base", str(base)], profile_home), "DoRA")


def test_a_mixtral_style_adapter_on_the_experts_matches_the_numpy_merge(tmp_path: Path, profile_home: Path) -> None:
    # Seed 001 is a Mixtral QLoRA: PEFT saves one A/B pair per expert (experts.E.w1/w2/w3); the GGUF holds
    # the experts stacked (ffn_gate_exps / ffn_down_exps / ffn_up_exps), and so must the adapter.
    n_expert = 2
    base = write_tiny_model(tmp_path / "moe.gguf", n_layer=1, n_embd=N_EMBD, n_expert=n_expert)
    rng = np.random.default_rng(3)
    tensors: dict[str, np.ndarray] = {}
    delta: dict[str, np.ndarray] = {}
    shapes = {"w1": ("ffn_gate_exps", N_EMBD, N_FF), "w3": ("ffn_up_exps", N_EMBD, N_FF),
              "w2": ("ffn_down_exps", N_FF, N_EMBD)}
    for w, (gguf_name, n_in, n_out) in shapes.items():
        updates = []
        for e in range(n_expert):
            a = (rng.standard_normal((RANK, n_in)) * 0.2).astype(np.float32)
            b = (rng.standard_normal((n_out, RANK)) * 0.2).astype(np.float32)
            tensors[f"{PREFIX}.0.block_sparse_moe.experts.{e}.{w}.lora_A.weight"] = a
            tensors[f"{PREFIX}.0.block_sparse_moe.experts.{e}.{w}.lora_B.weight"] = b
            updates.append((ALPHA / RANK) * (b @ a))
        delta[f"blk.0.{gguf_name}.weight"] = np.stack(updates)
    folder = tmp_path / "moe-adapter"
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA}))
    merged = write_tiny_model(tmp_path / "moe-merged.gguf", n_layer=1, n_embd=N_EMBD, n_expert=n_expert, delta=delta)

    res = run(["lora", "import", str(folder), "--base", str(base), "--no-configure"], profile_home)
    assert res.returncode == 0, res.stderr
    out = folder / "moe-adapter.gguf"
    plain, applied, reference = (logits(base, None, TOKENS), logits(base, out, TOKENS),
                                 logits(merged, None, TOKENS))
    scale = np.abs(reference).max()
    assert np.abs(applied - plain).max() > 0.1 * scale
    assert np.abs(applied - reference).max() < 1e-3 * scale


def test_an_adapter_from_the_hub_cache_keeps_its_repo_name(tmp_path: Path, profile_home: Path) -> None:
    # `hf download` leaves the adapter under models--org--name/snapshots/<commit>/: the name comes from the
    # repo (what the model rules match), and the GGUF goes to rpchat's models folder, not into the cache.
    from rpchat.engine.gguf_info import read_gguf_info
    from rpchat.engine.recognize import choose_for_model

    base = write_tiny_model(tmp_path / "mixtral-8x7b-v0.1.gguf", n_layer=N_LAYER, n_embd=N_EMBD,
                            name="mistralai_mixtral-8x7b-v0.1")
    snap = tmp_path / "hf" / "models--someone--limarp-zloss-mixtral-8x7b-qlora" / "snapshots" / ("c" * 40)
    make_adapter(snap)
    res = run(["lora", "import", str(snap), "--base", str(base)], profile_home)
    assert res.returncode == 0, res.stderr
    out = profile().models_dir / "limarp-zloss-mixtral-8x7b-qlora.gguf"
    assert read_gguf_info(out).metadata["general.name"] == "limarp-zloss-mixtral-8x7b-qlora"
    assert not list(snap.glob("*.gguf"))
    cfg = load_config(profile())
    choices = choose_for_model(cfg, model=Path(cfg.engine.model), lora=Path(cfg.engine.lora))
    assert (choices.format.value, choices.preset.value, choices.model) == (
        "limarp-v3-mixtral", "limarp-zloss-mixtral", "limarp-zloss-mixtral-8x7b-qlora")

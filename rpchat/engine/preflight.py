"""A one-time crash test of llama.cpp's weight repacking (AMX and friends), run in a subprocess.

Some CPUs advertise AMX but fault on its tile instructions (certain VMs): loading a quantized model
with llama.cpp's extra buffer types then segfaults on the first decode, taking the app down. Rather
than turning repacking off everywhere, rpchat asks a child process to load a tiny quantized model
with repacking on and decode a few tokens. The verdict is remembered per llama.cpp build and CPU,
so the test runs once; where the child dies, models load with ``use_extra_bufts=False``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rpchat.atomic import write_atomic
from rpchat.engine.llama_log import route_llama_logs
from rpchat.paths import profile

VERDICT_FILE = "preflight.json"
PROBE_TIMEOUT_S = 120.0
PROBE_OK = "rpchat-preflight-ok"


@dataclass(frozen=True)
class RepackVerdict:
    """Whether weight repacking is safe on this CPU with this llama.cpp build."""

    use_extra_bufts: bool
    detail: str  # e.g. "probe decoded fine" or "probe died with SIGSEGV"
    key: str
    cached: bool = False

    @property
    def notice(self) -> str | None:
        """The one-line notice shown when repacking had to be turned off."""
        if self.use_extra_bufts:
            return None
        return f"CPU weight repacking (AMX) is off: a test run {self.detail} on this CPU"


def build_key() -> str:
    """Identifies the llama.cpp build and the CPU: a new wheel or machine gets a fresh test."""
    import llama_cpp

    parts = [
        str(getattr(llama_cpp, "__version__", "?")),
        llama_cpp.llama_print_system_info().decode("utf-8", "replace"),
        platform.machine(),
        _cpu_flags(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[-1].strip()
    except OSError:
        pass
    return platform.processor()


def _verdict_path() -> Path:
    return profile().cache_dir / VERDICT_FILE


def _load_verdicts() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_verdict_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered_verdict() -> RepackVerdict | None:
    """The stored verdict for this build and CPU, if the test already ran."""
    key = build_key()
    entry = _load_verdicts().get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("ok"), bool):
        return None
    return RepackVerdict(bool(entry["ok"]), str(entry.get("detail", "")), key, cached=True)


def repack_verdict(
    *, probe_argv: Sequence[str] | None = None, timeout: float = PROBE_TIMEOUT_S
) -> RepackVerdict:
    """The remembered verdict, or run the probe once and remember it.

    ``probe_argv`` replaces the probe command (tests use one that crashes on purpose).
    """
    known = remembered_verdict()
    if known is not None:
        return known
    key = build_key()
    argv = list(probe_argv) if probe_argv is not None else _default_probe_argv()
    ok, detail = _run_probe(argv, timeout)
    verdicts = _load_verdicts()
    verdicts[key] = {"ok": ok, "detail": detail, "checked": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        write_atomic(_verdict_path(), json.dumps(verdicts, indent=2).encode())
    except OSError:
        pass  # an unwritable cache only means the probe runs again next time
    return RepackVerdict(ok, detail, key)


def _default_probe_argv() -> list[str]:
    model = profile().cache_dir / "preflight" / "probe-q4_k_m.gguf"
    return [sys.executable, "-m", "rpchat.engine.preflight", str(model)]


def _run_probe(argv: list[str], timeout: float) -> tuple[bool, str]:
    # The child must import this very rpchat, installed or run from a source checkout.
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return False, f"hung for {timeout:.0f} s"
    except OSError as exc:
        return False, f"could not start ({exc.strerror or exc})"
    if proc.returncode == 0 and PROBE_OK in proc.stdout:
        return True, "decoded fine with repacking on"
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return False, f"crashed with {name}"
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return False, f"failed (exit {proc.returncode}: {last})"


def write_probe_model(path: Path) -> Path:
    """A tiny random llama model quantized to Q4_K_M: small, but its matrices take the repack paths."""
    import llama_cpp
    import numpy as np
    from gguf import GGUFWriter, TokenType

    path.parent.mkdir(parents=True, exist_ok=True)
    f32 = path.with_suffix(".f32.tmp")
    rng = np.random.default_rng(0)
    n_embd, n_ff, n_vocab, n_layer = 256, 512, 512, 1
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(n_vocab - len(tokens))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * (n_vocab - len(types))
    w = GGUFWriter(str(f32), "llama")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", rand(n_vocab, n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", rand(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", rand(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    tmp = path.with_suffix(".q.tmp")
    rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp).encode(), ctypes.byref(params))
    f32.unlink(missing_ok=True)
    if rc != 0:
        raise RuntimeError(f"quantizing the probe model failed ({rc})")
    tmp.replace(path)
    return path


def _probe(model: Path) -> int:
    """Child process: load ``model`` with extra buffer types on, decode a batch and one token."""
    import llama_cpp

    route_llama_logs()
    if not model.exists():
        write_probe_model(model)
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.use_extra_bufts = True
    mparams.n_gpu_layers = 0
    m = llama_cpp.llama_model_load_from_file(str(model).encode(), mparams)
    if not m:
        print("probe model did not load", file=sys.stderr)
        return 3
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = 256
    cparams.n_batch = cparams.n_ubatch = 64
    ctx = llama_cpp.llama_init_from_model(m, cparams)
    if not ctx:
        print("probe context did not start", file=sys.stderr)
        return 3
    # A multi-token batch and a single token: the repacked kernels differ between the two.
    for n in (32, 1):
        toks = (llama_cpp.llama_token * n)(*[(3 + i) for i in range(n)])
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(toks, n)) != 0:
            print("probe decode failed", file=sys.stderr)
            return 3
    print(PROBE_OK, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_probe(Path(sys.argv[1])))

"""llama.cpp's own programs, as references for `rpchat bench`: ``llama-bench`` for prompt evaluation and
``llama-server`` for generation, run from a folder of binaries built from the same llama.cpp source as the
installed llama-cpp-python (tests/llamaserver.py builds both into ``~/.cache/rpchat-tests``)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TOOLS = ("llama-bench", "llama-server")
START_TIMEOUT_S = 300  # a 4 GB model on a busy machine reads for a while before /health answers


def find_tools(folder: Path) -> dict[str, Path]:
    """The tools found in ``folder`` (a ``bin`` folder, or a build folder holding ``bin/``)."""
    found: dict[str, Path] = {}
    for where in (folder, folder / "bin", folder / "build" / "bin"):
        for tool in TOOLS:
            path = where / tool
            if tool not in found and path.is_file():
                found[tool] = path
    return found


def llama_bench_pp(binary: Path, model: Path, n_prompt: int, threads: int) -> float:
    """llama-bench's prompt-processing rate (tok/s) for ``n_prompt`` tokens, one repetition, no warm-up."""
    cmd = [str(binary), "-m", str(model), "-p", str(n_prompt), "-n", "0", "-t", str(threads), "-r", "1",
           "--no-warmup", "-o", "json"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"llama-bench failed (rc={out.returncode}): {out.stderr.strip()[-300:]}")
    rows = json.loads(out.stdout)
    return float(rows[0]["avg_ts"])


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def wait_until_up(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> bool:
    """Poll ``url`` until it answers 200 (True), ``proc`` exits or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False

class LlamaServer:
    """One llama-server process on a free loopback port; `stop` kills it."""

    def __init__(self, binary: Path, model: Path, log: Path, *, n_ctx: int, threads: int = 2,
                 extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.n_ctx = n_ctx
        # One slot, so the whole context is one conversation's and prompt caching is per conversation.
        cmd = [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(self.port),
               "--ctx-size", str(n_ctx), "--threads", str(threads), "--parallel", "1", "--no-webui", *extra]  # fmt: skip
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait_until_up(self.proc, self.url + "/health", START_TIMEOUT_S):
            return
        self.stop()
        raise RuntimeError(f"llama-server did not become healthy; its log:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as when the server crashes or is killed by the OOM killer."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@dataclass(frozen=True)
class ServerGeneration:
    """llama-server's own account of one completion (its ``timings``)."""

    tokens: int
    tok_s: float
    prompt_n: int
    cache_n: int


def server_completion(url: str, body: dict[str, Any]) -> ServerGeneration:
    """POST ``body`` to ``/completion`` without streaming and read the server's timings."""
    answer = httpx.post(url + "/completion", json={**body, "stream": False}, timeout=3600).json()
    t = answer.get("timings", {})
    return ServerGeneration(int(t.get("predicted_n", 0)), float(t.get("predicted_per_second", 0.0)),
                            int(t.get("prompt_n", 0)), int(t.get("cache_n", 0)))

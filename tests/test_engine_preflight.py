"""The repack (AMX) preflight: run once in a subprocess, remembered, and a crash turns repacking off."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rpchat.engine import preflight
from rpchat.engine.base import Sampling
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.prompt.segments import Segment

CRASH = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
NEVER_RUN = [sys.executable, "-c", "raise SystemExit('the verdict should have been remembered')"]


def test_real_probe_gives_a_verdict_and_is_remembered(tmp_path: Path) -> None:
    """Whether this CPU repacks without faulting is the machine's to say (the AMX kernels of some builds
    fault); either way the verdict is explained, stored, and not probed again."""
    verdict = preflight.repack_verdict()
    assert not verdict.cached and verdict.detail
    assert (verdict.notice is None) is verdict.use_extra_bufts, verdict.detail
    stored = json.loads((tmp_path / "home" / "cache" / "preflight.json").read_text())
    assert stored[verdict.key]["ok"] is verdict.use_extra_bufts
    again = preflight.repack_verdict(probe_argv=NEVER_RUN)
    assert again.cached and again.use_extra_bufts is verdict.use_extra_bufts


def test_a_crashing_probe_turns_repacking_off_with_a_notice() -> None:
    verdict = preflight.repack_verdict(probe_argv=CRASH)
    assert not verdict.use_extra_bufts
    assert "SIGSEGV" in verdict.detail
    assert verdict.notice is not None and "repacking" in verdict.notice and "\n" not in verdict.notice
    remembered = preflight.repack_verdict(probe_argv=NEVER_RUN)
    assert remembered.cached and not remembered.use_extra_bufts


def test_a_hanging_probe_counts_as_unsafe() -> None:
    hang = [sys.executable, "-c", "import time; time.sleep(30)"]
    verdict = preflight.repack_verdict(probe_argv=hang, timeout=0.5)
    assert not verdict.use_extra_bufts and "hung" in verdict.detail


def test_engine_uses_the_verdict_for_quantized_models(demo_model: Path) -> None:
    preflight.repack_verdict(probe_argv=CRASH)  # pretend this CPU faults
    engine = LocalEngine(LocalSettings(demo_model, n_ctx=512, n_threads=2))
    engine.load()
    assert engine.info.notice is not None and "repacking" in engine.info.notice
    gen = engine.stream([Segment("The island was", "user")], Sampling(temperature=0.0, max_tokens=3))
    assert len(list(gen)) > 0 and gen.result.tokens_generated == 3
    engine.close()


def test_quantized_model_decodes_with_the_real_verdict(demo_model: Path) -> None:
    engine = LocalEngine(LocalSettings(demo_model, n_ctx=512, n_threads=2))
    engine.load()  # runs the real preflight, then loads with its verdict, whichever it is here
    verdict = preflight.remembered_verdict()
    if verdict is not None and not verdict.use_extra_bufts:
        assert engine.info.notice is not None and "repacking" in engine.info.notice
    elif verdict is not None:
        assert engine.info.notice is None
    gen = engine.stream([Segment("The island was", "user")], Sampling(temperature=0.0, max_tokens=3))
    assert "".join(gen).strip() and gen.result.tokens_generated == 3
    engine.close()

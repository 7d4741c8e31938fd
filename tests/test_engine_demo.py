"""The bundled demo model: assembled once, atomically; and one end-to-end chat through the real pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rpchat.engine import demo
from rpchat.engine.base import Sampling
from rpchat.engine.diagnostics import doctor_report
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.errors import ModelError


def test_demo_model_is_assembled_once(demo_model: Path, tmp_path: Path) -> None:
    path = demo.demo_model_path()
    assert path.parent == tmp_path / "home" / "cache" / "models"
    assert path.stat().st_size == demo_model.stat().st_size
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    mtime = path.stat().st_mtime_ns
    assert demo.demo_model_path() == path and path.stat().st_mtime_ns == mtime


def test_missing_demo_package_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, demo.PACKAGE, None)  # as if the extra were not installed
    with pytest.raises(ModelError, match=r'pip install "rpchat\[demo\]"'):
        demo.demo_model_path()


def test_doctor_report_rows(demo_model: Path) -> None:
    rows = dict(doctor_report())
    assert "AVX" in rows["llama.cpp build"] or "NEON" in rows["llama.cpp build"]
    assert "CPU" in rows["backends"]
    assert rows["GPU offload"]
    assert "not tested" in rows["AMX/repack"]
    assert "first use" in rows["demo model"] or "assembled" in rows["demo model"]


def test_end_to_end_chat_with_the_demo_model(demo_model: Path) -> None:
    from rpchat.bench import _turn
    from rpchat.bench_data import CARD, PERSONA
    from rpchat.prompt.builder import build_prompt
    from rpchat.prompt.formats import load_format

    engine = LocalEngine(LocalSettings(demo_model, n_ctx=1024, n_threads=2))
    engine.load()
    assert engine.info.model_name == "Gemma 3 270m" and engine.info.total_layers == 18
    history = [_turn(False, CARD.first_mes), _turn(True, "Where am I?")]
    built = build_prompt(load_format("limarp-v3"), CARD, PERSONA, history, length="short",
                         counter=engine.count_tokens, n_ctx=engine.n_ctx, max_new=16)
    gen = engine.stream(built.segments, Sampling(temperature=0.0, max_tokens=16), stop=built.stop)
    text = "".join(gen)
    r = gen.result
    assert r.finish_reason in ("length", "stop", "eos") and r.tokens_generated > 0
    assert text == r.text and text.strip()
    assert not any(s in text for s in built.stop)
    assert r.prompt_tokens_evaluated == r.prompt_tokens == len(engine.tokenize_prompt(built.segments))
    # The next turn reuses the cached prompt up to the last response header (its length modifier moves).
    history += [_turn(False, text.strip()), _turn(True, "Thank you.")]
    built = build_prompt(load_format("limarp-v3"), CARD, PERSONA, history, length="short",
                         counter=engine.count_tokens, n_ctx=engine.n_ctx, max_new=16)
    gen = engine.stream(built.segments, Sampling(temperature=0.0, max_tokens=4), stop=built.stop)
    list(gen)
    assert gen.result.prompt_tokens_reused >= r.prompt_tokens - 12
    engine.close()

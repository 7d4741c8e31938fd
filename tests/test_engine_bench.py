"""`rpchat bench` figures on the tiny model (a smoke run of the whole pipeline, no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

from rpchat.bench import format_bench, run_bench


def test_bench_reports_every_figure(tiny_model: Path) -> None:
    result = run_bench(tiny_model, turns=3, n_threads=2, n_ctx=2048, gen_tokens=16, overflow_ctx=2048, speed_rounds=2)
    json.dumps(result)  # --json must work
    assert len(result["turns"]) == 3
    first, second = result["turns"][0], result["turns"][1]
    assert first["evaluated"] == first["prompt_tokens"] and first["reused"] == 0
    assert second["reused"] > 0 and second["evaluated"] < second["prompt_tokens"]
    assert result["regenerate"]["evaluated"] == 1
    shift, redo = result["overflow"]["shift"], result["overflow"]["reevaluate"]
    assert shift["turn"] == redo["turn"] and shift["prompt_tokens"] == redo["prompt_tokens"]
    assert shift["evaluated"] < redo["evaluated"]
    assert result["peak_rss_mib"] > 0 and result["reference_tok_s"] > 0 and result["app_loop_tok_s"] > 0
    text = format_bench(result)
    banned = result["banned"]
    assert banned["off"]["rewinds"] == 0 and banned["off"]["resampled"] == 0 and banned["shipped"]["tok_s"] > 0
    for label in ("generation", "prompt", "regenerate", "overflow", "reference", "peak RSS", "banned"):
        assert label in text

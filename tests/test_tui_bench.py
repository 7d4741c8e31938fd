"""`run_tui_bench` (behind `rpchat bench`) runs headless and reports its figures (no timing asserted)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rpchat.tui.bench import run_tui_bench
from rpchat.tui.transcript import WINDOW


def test_tui_bench_reports_stall_and_open_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "mine"))
    before = os.getcwd()
    figures = run_tui_bench(history_turns=20, open_turns=120, rate=400.0, words=60)
    assert os.getcwd() == before and os.environ["RPCHAT_HOME"] == str(tmp_path / "mine")
    assert not (tmp_path / "mine").exists()  # the bench used its own throwaway profile
    assert figures["open_turns"] == 120 and figures["mounted_turns"] == WINDOW
    assert figures["stream_tokens"] == 60
    assert figures["stall_samples"] > 0
    for key in ("open_2000_turns_s", "open_2000_turns_cpu_s", "stream_stall_p50_ms", "stream_stall_p99_ms",
                "stream_stall_max_ms"):
        assert isinstance(figures[key], float) and figures[key] >= 0
    assert figures["stream_stall_p50_ms"] <= figures["stream_stall_p99_ms"] <= figures["stream_stall_max_ms"]

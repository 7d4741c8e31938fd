"""`rpchat bench`'s long-chat figures on the tiny model: what each kind of turn evaluates (token counts, never
times), and the rates against llama.cpp's own tools, or one line when they are absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rpchat.bench_longchat import format_long_chat, run_long_chat


@pytest.fixture(autouse=True)
def _profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPCHAT_HOME", str(tmp_path / "home"))


def test_each_kind_of_turn_evaluates_what_it_should(tiny_model: Path) -> None:
    r = run_long_chat(tiny_model, 2, chat_tokens=300, gen_tokens=2)
    json.dumps(r)  # --json must work
    cold = r["cold"]
    assert cold["evaluated"] == cold["prompt_tokens"] > 150
    new = r["new_turn"]
    assert 0 < new["evaluated"] < new["prompt_tokens"] // 3 and new["reused"] + new["evaluated"] == new["prompt_tokens"]
    assert r["regenerate"]["evaluated"] == 1
    assert 0 < r["edit_last"]["evaluated"] < new["evaluated"]
    # After the restart the saved state serves everything the last reply left in the cache.
    reopen = r["reopen"]
    assert reopen["restored"] == reopen["reused"] > cold["prompt_tokens"] and reopen["evaluated"] < new["evaluated"] * 2
    assert r["save_last"]["state_mib"] > 0
    depth, top = r["lore_depth"], r["lore_top"]
    # At most the token just before the insertion point again, when the inserted text merges into it.
    assert depth["evaluated"] <= depth["after_insertion"] + 1 and depth["after_insertion"] < depth["prompt_tokens"] // 2
    assert top["evaluated"] >= top["after_insertion"] > depth["after_insertion"]
    overflow = r["overflow"]
    assert overflow["dropped"] > 0 and overflow["evaluated"] < overflow["prompt_tokens"] // 2
    text = "\n".join(format_long_chat(r))
    for label in ("cold", "new_turn", "regenerate", "edit_last", "reopen", "lore_depth", "overflow", "lore_top",
                  "state", "goal"):
        assert label in text


def test_without_llama_cpp_tools_the_bench_says_so_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    r = run_long_chat(tiny_model, 2, chat_tokens=300, gen_tokens=2, llama_cpp=empty)
    lines = list(format_long_chat(r))
    assert [line for line in lines if line.startswith("llama.cpp")] == [
        f"llama.cpp  llama-bench and llama-server not found in {empty}: no rate against it"
    ]
    assert any(line.startswith("reopen ") for line in lines) and any(line.startswith("lore_top") for line in lines)


def test_rates_against_llama_bench_and_llama_server_built_from_the_same_source(
    tiny_model: Path, llama_server_binary: Path
) -> None:
    import llamaserver

    try:
        llamaserver.llama_tool_binary("llama-bench")
    except llamaserver.BuildUnavailable as exc:
        pytest.skip(str(exc))
    r = run_long_chat(tiny_model, 2, chat_tokens=300, gen_tokens=2, llama_cpp=llama_server_binary.parent,
                      ref_tokens=8, rounds=2)
    lc = r["llama_cpp"]
    assert lc["tools"] == ["llama-bench", "llama-server"]
    assert lc["llama_bench_pp_tok_s"] > 0 and lc["cold_vs_llama_bench"] > 0
    for chain in ("greedy", "chain"):
        assert lc["generation"][chain]["server_tok_s"] > 0 and lc["generation"][chain]["ratio"] > 0
    text = "\n".join(format_long_chat(r))
    assert "vs llama-bench pp" in text and "vs llama-server" in text and "not found" not in text

"""LocalEngine on tiny generated GGUF models: tokenization, KV reuse, cancel, UTF-8, stop strings, errors."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import pytest
from tinymodel import EOS, token_id, write_tiny_lora, write_tiny_model

from rpchat.engine.base import Sampling
from rpchat.engine.kvreuse import common_prefix
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.errors import EngineError, ModelError
from rpchat.prompt.segments import Segment

GREEDY = Sampling(temperature=0.0, max_tokens=8)


def make_engine(model: Path, **kw: object) -> LocalEngine:
    settings = {"n_ctx": 2048, "n_threads": 2, "use_extra_bufts": True, **kw}
    engine = LocalEngine(LocalSettings(model, **settings))  # type: ignore[arg-type]
    engine.load()
    return engine


@pytest.fixture
def engine(tiny_model: Path) -> LocalEngine:
    e = make_engine(tiny_model)
    yield e
    e.close()


@pytest.fixture(scope="module")
def scripted_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Greedy decoding after "▁Hello" spells "é the world### Input" (é as two byte tokens), then EOS."""
    chain = ["▁Hello", "<0xC3>", "<0xA9>", "▁the", "▁world", "###", "▁Input", "</s>"]
    ids = [token_id(t) for t in chain]
    return write_tiny_model(
        tmp_path_factory.mktemp("scripted") / "scripted.gguf", successors=dict(itertools.pairwise(ids))
    )


def turn(i: int) -> list[Segment]:
    """One chat turn of about 40 tokens: template headers around user text."""
    words = " ".join(["the world said hello to you"] * 4)
    return [Segment(f"### Input:\nUser {i}: ", "template"), Segment(f"{words} {i}", "user"), Segment("\n\n", "template")]


SYSTEM = [Segment("### Instruction:\nThe roleplay chat between Theo and Marisol.\n\n", "template")]
TAIL = [Segment("### Response:\nMarisol:", "template")]


def run(engine: LocalEngine, prompt: list[Segment], sampling: Sampling = GREEDY, **kw: object):
    gen = engine.stream(prompt, sampling, **kw)  # type: ignore[arg-type]
    pieces = list(gen)
    return pieces, gen.result


# --- loading and errors ---------------------------------------------------------------------------


def test_load_reports_model_and_context(engine: LocalEngine) -> None:
    assert engine.info.model_name == "tiny-llama"
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():  # a GPU build offloads every layer by default
        assert engine.info.gpu_layers > 0 and engine.info.backend != "CPU"
    else:
        assert engine.info.gpu_layers == 0 and engine.info.backend == "CPU"
    assert engine.info.total_layers == 2
    assert engine.n_ctx == 2048
    assert engine.info.notice is None


def test_n_ctx_is_rounded_to_256_and_capped_by_training(tiny_model: Path) -> None:
    e = make_engine(tiny_model, n_ctx=700)
    assert e.n_ctx == 768
    e.close()
    e = make_engine(tiny_model, n_ctx=100_000)
    assert e.n_ctx == 2048  # the tiny model was trained on 2048
    e.close()


def test_logs_go_to_the_log_file_not_the_terminal(tiny_model: Path, tmp_path: Path, capfd) -> None:
    e = make_engine(tiny_model)
    run(e, SYSTEM + TAIL)
    e.close()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    log = tmp_path / "home" / "cache" / "logs" / "llama.log"
    assert "llama" in log.read_text()


def test_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found") as info:
        make_engine(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(info.value)


def test_non_gguf_file_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("just some text, not a model\n" * 10)
    with pytest.raises(ModelError, match="not a GGUF file") as info:
        make_engine(bad)
    assert "notes.gguf" in str(info.value) and "\n" not in str(info.value)


def test_truncated_model_is_a_model_error(tiny_model: Path, tmp_path: Path) -> None:
    data = tiny_model.read_bytes()
    for cut in (100, len(data) // 2):
        broken = tmp_path / f"cut{cut}.gguf"
        broken.write_bytes(data[:cut])
        with pytest.raises(ModelError) as info:
            make_engine(broken)
        assert f"cut{cut}.gguf" in str(info.value)


def _memory_bytes() -> int:
    """RAM plus swap: the most one allocation can get here (the kernel refuses more)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    meminfo = Path("/proc/meminfo")
    for line in meminfo.read_text().splitlines() if meminfo.exists() else ():
        if line.startswith("SwapTotal:"):
            total += int(line.split()[1]) * 1024
    return total


def test_context_too_big_for_memory_is_a_model_error(tmp_path: Path) -> None:
    overcommit = Path("/proc/sys/vm/overcommit_memory")
    if overcommit.exists() and overcommit.read_text().strip() == "1":
        pytest.skip("the kernel grants any allocation (overcommit 1): clearing the cache would summon the OOM killer")
    # 8M tokens x 256 bytes of KV per token per layer = 2 GiB per layer: enough layers for twice this
    # machine's RAM and swap (at least 128 GiB), so it fails on any machine, a GPU's memory included.
    layers = max(64, -(-2 * _memory_bytes() // (2 << 30)))
    model = write_tiny_model(tmp_path / "huge-ctx.gguf", n_ctx=1 << 23, n_layer=layers)
    with pytest.raises(ModelError, match="not enough memory") as info:
        make_engine(model, n_ctx=1 << 23)
    assert "huge-ctx.gguf" in str(info.value)


def test_missing_lora_is_a_model_error(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="LoRA") as info:
        make_engine(tiny_model, lora_path=tmp_path / "adapter.gguf")
    assert "adapter.gguf" in str(info.value)


def test_prompt_longer_than_context_is_an_engine_error(tiny_model: Path) -> None:
    e = make_engine(tiny_model, n_ctx=256)
    with pytest.raises(EngineError, match="context holds 256"):
        run(e, [Segment("the world " * 300, "user")])
    e.close()


# --- tokenization ---------------------------------------------------------------------------------


def test_bos_once_and_control_tokens_only_in_template_text(engine: LocalEngine) -> None:
    eos = EOS
    im_end = token_id("<|im_end|>")
    prompt = [
        Segment("### Input:</s>", "template"),
        Segment("I typed </s> and <|im_end|> here", "user"),
        Segment("<|im_end|>", "template"),
    ]
    tokens = engine.tokenize_prompt(prompt)
    assert tokens[0] == 1 and tokens.count(1) == 1  # BOS once
    assert tokens.count(eos) == 1 and tokens.count(im_end) == 1  # only the template's
    assert tokens[-1] == im_end
    # The user's "</s>" is text: it round-trips through the vocabulary as characters.
    user_tokens = tokens[tokens.index(eos) + 1 : -1]
    assert eos not in user_tokens and im_end not in user_tokens


def test_prompt_tokens_match_llama_cpp_on_the_joined_text(engine: LocalEngine) -> None:
    prompt = SYSTEM + turn(1) + TAIL
    joined = "".join(s.text for s in prompt)
    assert engine.tokenize_prompt(prompt) == [1] + engine.tokenize(joined, special=True)


def test_count_tokens_is_plain_text(engine: LocalEngine) -> None:
    assert engine.count_tokens("") == 0
    assert engine.count_tokens("</s>") > 1  # text, not the control token


# --- KV cache reuse -------------------------------------------------------------------------------


def test_new_turn_evaluates_only_new_tokens_and_regenerate_at_most_one(engine: LocalEngine) -> None:
    p1 = SYSTEM + turn(1) + TAIL
    _, r1 = run(engine, p1)
    n1 = len(engine.tokenize_prompt(p1))
    assert (r1.prompt_tokens, r1.prompt_tokens_evaluated, r1.prompt_tokens_reused) == (n1, n1, 0)

    p2 = p1 + [Segment(" hello\n\n", "user")] + turn(2) + TAIL
    _, r2 = run(engine, p2)
    assert r2.prompt_tokens_reused >= n1
    assert r2.prompt_tokens_evaluated == r2.prompt_tokens - r2.prompt_tokens_reused
    assert r2.prompt_tokens_evaluated <= r2.prompt_tokens - n1 + 1

    pieces, r3 = run(engine, p2)  # regenerate
    assert r3.prompt_tokens_evaluated == 1
    assert r3.prompt_tokens_reused == r3.prompt_tokens - 1
    # Same prompt, greedy: the state is consistent, so the reply is the same.
    assert "".join(pieces) == r2.text


def test_dropped_middle_turn_is_shifted_not_reevaluated(tiny_model: Path) -> None:
    turns = [turn(i) for i in range(1, 6)]
    full = SYSTEM + [s for t in turns for s in t] + TAIL
    cut = SYSTEM + [s for t in turns[2:] for s in t] + TAIL  # the fitter dropped turns 1-2

    shifting = make_engine(tiny_model)
    run(shifting, full)
    _, shifted = run(shifting, cut)
    reeval = make_engine(tiny_model, context_shift=False)
    run(reeval, full)
    _, redone = run(reeval, cut)

    full_tokens, cut_tokens = shifting.tokenize_prompt(full), shifting.tokenize_prompt(cut)
    same = common_prefix(full_tokens, cut_tokens)
    assert same < 60 and redone.prompt_tokens == len(cut_tokens) > 190
    assert redone.prompt_tokens_evaluated == len(cut_tokens) - same  # everything after the cut
    assert shifted.prompt_tokens_evaluated <= 1  # only the logits token
    assert shifted.prompt_tokens_reused == shifted.prompt_tokens - shifted.prompt_tokens_evaluated
    # The shifted cache is consistent: a regenerate still evaluates one token and replies.
    _, again = run(shifting, cut)
    assert again.prompt_tokens_evaluated == 1 and again.tokens_generated > 0
    assert shifting.cached_tokens[: again.prompt_tokens] == shifting.tokenize_prompt(cut)
    shifting.close()
    reeval.close()


# --- cancel ---------------------------------------------------------------------------------------


class CancelAtCheck(threading.Event):
    """Cancels itself when the engine asks for the n-th time (a chunk boundary)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def is_set(self) -> bool:
        self.left -= 1
        if self.left == 0:
            self.set()
        return super().is_set()


def test_cancel_between_prompt_chunks_keeps_the_cache_consistent(tiny_model: Path) -> None:
    e = make_engine(tiny_model, n_batch=16)
    prompt = SYSTEM + [s for i in range(1, 6) for s in turn(i)] + TAIL
    pieces, r = run(e, prompt, cancel=CancelAtCheck(3))
    assert r.finish_reason == "cancelled" and pieces == [] and r.tokens_generated == 0
    assert r.prompt_tokens_evaluated == 32  # two chunks of 16, then the cancel was seen
    _, again = run(e, prompt)
    assert again.prompt_tokens_reused == 32
    assert again.prompt_tokens_evaluated == again.prompt_tokens - 32
    e.close()


def test_cancel_aborts_inside_a_long_prompt_chunk(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "wide.gguf", n_embd=512, n_ctx=4096)
    e = make_engine(model, n_ctx=4096, n_batch=4096)
    prompt = [Segment("the world said hello " * 500, "user")]

    class CancelSoon(threading.Event):
        # Before the only chunk starts, arm a timer: the cancel lands inside llama_decode.
        def is_set(self) -> bool:
            if not hasattr(self, "timer"):
                self.timer = threading.Timer(0.01, self.set)
                self.timer.start()
            return super().is_set()

    _, r = run(e, prompt, cancel=CancelSoon())
    assert r.finish_reason == "cancelled"
    assert r.prompt_tokens_evaluated < r.prompt_tokens  # stopped inside the single 4096 chunk
    _, again = run(e, prompt, Sampling(temperature=0.0, max_tokens=1))
    assert again.prompt_tokens_reused == r.prompt_tokens_evaluated
    assert again.finish_reason in ("length", "eos")
    e.close()


def test_cancel_during_generation_stops_within_one_token(engine: LocalEngine) -> None:
    cancel = threading.Event()
    gen = engine.stream(SYSTEM + TAIL, Sampling(temperature=0.0, max_tokens=500), cancel=cancel)
    got = []
    for piece in gen:
        got.append(piece)
        cancel.set()  # Esc as soon as the first text shows
    assert gen.result.finish_reason == "cancelled"
    assert gen.result.tokens_generated <= 2
    _, r = run(engine, SYSTEM + TAIL)
    assert r.prompt_tokens_evaluated == 1  # the prompt is still cached


def test_worker_thread_and_lock(engine: LocalEngine) -> None:
    out: dict[str, object] = {}

    def worker() -> None:
        _, result = run(engine, SYSTEM + TAIL)
        out["result"] = result

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert out["result"].tokens_generated > 0  # type: ignore[attr-defined]


# --- text: UTF-8 and stop strings ---------------------------------------------------------------


def test_utf8_split_across_tokens_comes_out_whole(scripted_model: Path) -> None:
    e = make_engine(scripted_model)
    pieces, r = run(e, [Segment("Hello", "user")], Sampling(temperature=0.0, max_tokens=20))
    assert pieces[0] == "é"  # <0xC3> alone showed nothing; <0xA9> completed the character
    assert "".join(pieces) == r.text == "é the world### Input"
    assert r.finish_reason == "eos" and r.tokens_generated == 6
    e.close()


@pytest.mark.parametrize(
    ("stop", "text"),
    [("###", "é the world"), ("ld##", "é the wor"), ("é", ""), (" Inp", "é the world###"), ("zzz", None)],
)
def test_stop_strings_are_never_emitted(scripted_model: Path, stop: str, text: str | None) -> None:
    e = make_engine(scripted_model)
    pieces, r = run(e, [Segment("Hello", "user")], Sampling(temperature=0.0, max_tokens=20), stop=[stop])
    if text is None:
        assert r.finish_reason == "eos" and r.text == "é the world### Input"
    else:
        assert r.finish_reason == "stop"
        assert "".join(pieces) == r.text == text
    e.close()


def test_length_finish_and_counts(scripted_model: Path) -> None:
    e = make_engine(scripted_model)
    _, r = run(e, [Segment("Hello", "user")], Sampling(temperature=0.0, max_tokens=3))
    assert r.finish_reason == "length" and r.tokens_generated == 3 and r.text == "é the"
    assert r.ttft_s > 0 and r.gen_time_s > 0 and r.tok_per_s > 0
    e.close()


def test_lora_adapter_changes_the_model(scripted_model: Path, tmp_path: Path) -> None:
    lora = write_tiny_lora(scripted_model, tmp_path / "redirect.gguf",
                           after=token_id("▁Hello"), instead=token_id("▁you"))
    e = make_engine(scripted_model, lora_path=lora)
    _, r = run(e, [Segment("Hello", "user")], Sampling(temperature=0.0, max_tokens=1))
    assert r.text == " you"  # without the adapter: "é"
    e.close()


def test_continue_evaluates_at_most_one_token(scripted_model: Path) -> None:
    e = make_engine(scripted_model)
    prompt = [Segment("### Response:\nMarisol: Hello", "template")]
    _, first = run(e, prompt, Sampling(temperature=0.0, max_tokens=20))
    assert first.text == "é the world### Input"
    _, cont = run(e, [*prompt, Segment(first.text, "user")], Sampling(temperature=0.0, max_tokens=5))
    assert cont.prompt_tokens == first.prompt_tokens + 6
    assert cont.prompt_tokens_evaluated <= 1
    e.close()


def test_a_cpu_reads_big_models_in_micro_batches_esc_can_stop_between() -> None:
    # Esc waits for one graph node (the biggest matmul of a micro-batch): at 7B shape on a CPU a 512-token
    # micro-batch made that ~200 ms, 128 tokens read as fast and stop in tens of ms. GPUs keep 512.
    from rpchat.engine.loader import prompt_micro_batch

    seven_b, demo = (7_240_000_000, 32), (268_000_000, 18)
    assert prompt_micro_batch(512, *seven_b, gpu=False) == 128
    assert prompt_micro_batch(512, *seven_b, gpu=True) == 512
    assert prompt_micro_batch(512, *demo, gpu=False) == 512  # small models keep the faster big batches
    assert prompt_micro_batch(512, 70_000_000_000, 80, gpu=False) == 64  # never below 64
    assert prompt_micro_batch(16, *seven_b, gpu=False) == 16  # never above n_batch
    assert prompt_micro_batch(512, 0, 0, gpu=False) == 512  # unknown size: llama.cpp's default


def _flash_attn_logged() -> str:
    """What llama.cpp says the last context it created uses: enabled, disabled or auto."""
    from rpchat.paths import profile

    lines = (profile().log_dir / "llama.log").read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.startswith("llama_context: flash_attn")][-1].split("=")[-1].strip()


@pytest.mark.parametrize(("setting", "logged"), [("off", "disabled"), ("on", "enabled"), ("auto", "auto")])
def test_flash_attention_setting_reaches_llama_cpp(tiny_model: Path, setting: str, logged: str) -> None:
    make_engine(tiny_model, flash_attn=setting).close()
    assert _flash_attn_logged() == logged


def test_flash_attention_off_from_the_config_reaches_llama_cpp(tiny_model: Path, tmp_path: Path) -> None:
    """`flash_attn: off` in config.yaml is forced off (unticked used to mean auto); old bools still read."""
    import subprocess
    import sys

    from session_support import make_card

    from rpchat.config import load_config
    from rpchat.paths import profile

    paths = profile()
    paths.config_file.parent.mkdir(parents=True, exist_ok=True)
    for old, new in ((False, "auto"), (True, "on")):
        paths.config_file.write_text(f"engine:\n  flash_attn: {str(old).lower()}\n", encoding="utf-8")
        assert load_config(paths).engine.flash_attn == new
    paths.config_file.write_text(f"engine:\n  model: {tiny_model}\n  n_ctx: 512\n  flash_attn: 'off'\n"
                                 "max_new_tokens: 2\n", encoding="utf-8")
    card = make_card(tmp_path)
    res = subprocess.run([sys.executable, "-m", "rpchat", "reply", str(card), "--chat", str(tmp_path / "c.jsonl"),
                          "--say", "Hi"], check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _flash_attn_logged() == "disabled"

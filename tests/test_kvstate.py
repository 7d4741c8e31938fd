"""Saved chat states (KV cache on disk) with real llama.cpp: the tiny model and the demo model."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinymodel import write_tiny_model

from rpchat.engine.base import Result, Sampling
from rpchat.engine.kvstate import KVStates, usage
from rpchat.engine.llama import LocalEngine, LocalSettings

GREEDY = Sampling(temperature=0.0, max_tokens=12)
TEXT = "the world said hello to you and she smiles at the beach, Theo. " * 80


def load(model: Path, folder: Path, budget: int = 1 << 30, **kw: object) -> LocalEngine:
    settings = {"n_ctx": 2048, "n_threads": 2, "use_extra_bufts": True, **kw}
    engine = LocalEngine(LocalSettings(model, **settings))  # type: ignore[arg-type]
    engine.load()
    engine.kv_states = KVStates(folder, budget)
    return engine


def evaluate(engine: LocalEngine, tokens: list[int], sampling: Sampling = GREEDY) -> tuple[str, Result, list[float]]:
    """Greedy text for ``tokens``, the result, and the next-token logits after the prompt."""
    import llama_cpp

    probe = engine.generate_tokens(tokens, Sampling(temperature=0.0, max_tokens=0))
    list(probe)
    model = engine.loaded
    assert model is not None
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.tokenizer.vocab))
    ptr = llama_cpp.llama_get_logits_ith(model.ctx, -1)
    logits = list(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))[:n_vocab])
    gen = engine.generate_tokens(tokens, sampling)
    text = "".join(gen)
    return text, probe.result, logits


def save(engine: LocalEngine, chat: str) -> Path:
    states = engine.kv_states
    assert states is not None
    states.claim(chat)
    path = states.save(engine, chat)
    assert path is not None and path.is_file()
    return path


def close(*engines: LocalEngine) -> None:
    for e in engines:
        e.close()


def assert_close(a: list[float], b: list[float], tol: float) -> None:
    assert len(a) == len(b)
    worst = max(abs(x - y) for x, y in zip(a, b, strict=True))
    assert worst <= tol, worst


# --- restoring gives the same reply ----------------------------------------------------------------


def test_restored_state_gives_the_same_logits_and_reply_as_warm_and_cold(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "states"
    first = load(tiny_model, folder)
    tokens = first.tokenize(TEXT)[:1200]
    head, full = tokens[:900], tokens
    evaluate(first, head)
    save(first, "chat")
    warm_text, warm, warm_logits = evaluate(first, full)  # the same process, cache in memory
    assert warm.prompt_tokens_restored == 0
    close(first)

    restarted = load(tiny_model, folder)
    text, result, logits = evaluate(restarted, full)
    # The cache after the first evaluation holds the prompt only (max_tokens=0).
    assert result.prompt_tokens_restored == 900
    assert result.prompt_tokens_reused == 900
    assert result.prompt_tokens_evaluated == len(full) - 900
    assert restarted.kv_states is not None and restarted.kv_states.take_notices() == []
    assert logits == warm_logits  # the state is a memory copy: bit for bit what the warm process had
    assert text == warm_text
    close(restarted)

    cold = LocalEngine(LocalSettings(tiny_model, n_ctx=2048, n_threads=2, use_extra_bufts=True))
    cold.load()
    cold_text, cold_result, cold_logits = evaluate(cold, full)
    assert cold_result.prompt_tokens_evaluated == len(full)
    assert_close(logits, cold_logits, 1e-2)
    assert text == cold_text
    close(cold)


def test_the_state_sharing_the_longest_prefix_is_chosen(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "states"
    e = load(tiny_model, folder)
    tokens = e.tokenize(TEXT)[:1300]
    other = e.tokenize("Where am I? " * 200)[:700]
    evaluate(e, tokens[:400])
    save(e, "short")
    evaluate(e, other)
    save(e, "unrelated")
    evaluate(e, tokens[:1000])
    save(e, "long")
    close(e)

    again = load(tiny_model, folder)
    _, result, _ = evaluate(again, tokens[:1100])
    assert result.prompt_tokens_restored == 1000
    assert result.prompt_tokens_evaluated == 100
    # Switching to the other chat restores its own state over the one in memory.
    _, switched, _ = evaluate(again, other + tokens[:50])
    assert switched.prompt_tokens_restored == 700
    assert switched.prompt_tokens_evaluated == 50
    close(again)


# --- states that must not be used ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garble", "other-build"])
def test_a_damaged_state_is_ignored_with_one_notice(tiny_model: Path, tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "states"
    e = load(tiny_model, folder)
    tokens = e.tokenize(TEXT)[:1000]
    evaluate(e, tokens[:800])
    path = save(e, "chat")
    close(e)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 1000]
    elif damage == "garble":
        for i in range(len(data) - 5000, len(data) - 4000):
            data[i] ^= 0x5A
    else:
        data = data.replace(b'"llama_cpp": "', b'"llama_cpp": "9.')
    path.write_bytes(bytes(data))

    fresh = load(tiny_model, folder)
    text, result, logits = evaluate(fresh, tokens)
    assert result.prompt_tokens_restored == 0
    assert result.prompt_tokens_evaluated == len(tokens)
    assert fresh.kv_states is not None
    notices = fresh.kv_states.take_notices()
    assert len(notices) == 1 and "ignored" in notices[0], notices
    evaluate(fresh, tokens + tokens[:20])
    assert fresh.kv_states.take_notices() == []  # one notice, not one per reply
    close(fresh)

    cold = LocalEngine(LocalSettings(tiny_model, n_ctx=2048, n_threads=2, use_extra_bufts=True))
    cold.load()
    cold_text, _, cold_logits = evaluate(cold, tokens)
    assert text == cold_text
    assert_close(logits, cold_logits, 1e-2)
    close(cold)


def test_a_state_from_another_context_size_or_model_is_not_used(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "states"
    e = load(tiny_model, folder)
    tokens = e.tokenize(TEXT)[:1000]
    evaluate(e, tokens[:800])
    save(e, "chat")
    close(e)

    smaller = load(tiny_model, folder, n_ctx=1536)
    _, result, _ = evaluate(smaller, tokens)
    assert result.prompt_tokens_restored == 0 and result.prompt_tokens_evaluated == len(tokens)
    close(smaller)

    other_model = write_tiny_model(tmp_path / "other.gguf", seed=7)  # same vocabulary, other weights
    other = load(other_model, folder)
    _, result, _ = evaluate(other, tokens)
    assert result.prompt_tokens_restored == 0 and result.prompt_tokens_evaluated == len(tokens)
    close(other)

    f32 = load(tiny_model, folder, kv_type="f32")
    _, result, _ = evaluate(f32, tokens)
    assert result.prompt_tokens_restored == 0
    close(f32)


def test_kill_during_save_never_leaves_a_bad_state_in_use(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "states"
    script = tmp_path / "saver.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from rpchat.engine.base import Sampling\n"
        "from rpchat.engine.kvstate import KVStates\n"
        "from rpchat.engine.llama import LocalEngine, LocalSettings\n"
        "e = LocalEngine(LocalSettings(Path(sys.argv[1]), n_ctx=2048, n_threads=1, use_extra_bufts=True))\n"
        "e.load()\n"
        "e.kv_states = KVStates(Path(sys.argv[2]), 1 << 30)\n"
        f"tokens = e.tokenize({TEXT!r})[:1500]\n"
        "n = 600\n"
        "while True:\n"
        "    n = 600 if n >= 1400 else n + 50\n"
        "    list(e.generate_tokens(tokens[:n], Sampling(temperature=0.0, max_tokens=0)))\n"
        "    e.kv_states.claim('chat')\n"
        "    e.kv_states.save(e, 'chat')\n"
        "    print(n, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    probe = load(tiny_model, tmp_path / "unused")
    tokens = probe.tokenize(TEXT)[:1500]
    close(probe)
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(tiny_model), str(folder)], stdout=subprocess.PIPE,
                                text=True, env=env)
        assert proc.stdout is not None
        for _ in range(2 + round_):
            assert proc.stdout.readline()  # a few saves are done; the next is under way
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        e = load(tiny_model, folder)
        text, result, logits = evaluate(e, tokens)
        assert e.kv_states is not None and e.kv_states.take_notices() == []
        assert 600 <= result.prompt_tokens_restored <= 1400
        close(e)
        cold = LocalEngine(LocalSettings(tiny_model, n_ctx=2048, n_threads=2, use_extra_bufts=True))
        cold.load()
        cold_text, _, cold_logits = evaluate(cold, tokens)
        close(cold)
        assert text == cold_text
        assert_close(logits, cold_logits, 1e-2)
    assert [p.name for p in folder.glob("*/*.kvstate")] == ["chat.kvstate"]


# --- the disk budget and an unwritable folder ---------------------------------------------------------


def test_least_recently_used_states_go_first_within_the_budget(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "states"
    e = load(tiny_model, folder)
    tokens = e.tokenize(TEXT)
    prompts = {name: e.tokenize(f"{name} {name}: ") + tokens[:600] for name in "abcd"}
    evaluate(e, prompts["a"])
    one = save(e, "a").stat().st_size
    states = e.kv_states
    assert states is not None
    states.budget = int(one * 2.5)  # room for two
    then = time.time() - 100
    for i, name in enumerate("bc"):
        evaluate(e, prompts[name])
        save(e, name)
    names = sorted(p.stem for p in folder.glob("*/*.kvstate"))
    assert names == ["b", "c"]  # a, the oldest, went
    for i, name in enumerate("bc"):
        os.utime(next(folder.glob(f"*/{name}.kvstate")), (then + i, then + i))
    # Reopening b uses its state, which makes it the most recently used: c goes next.
    _, result, _ = evaluate(e, prompts["b"] + tokens[:30])
    assert result.prompt_tokens_restored == len(prompts["b"])
    evaluate(e, prompts["d"])
    save(e, "d")
    assert sorted(p.stem for p in folder.glob("*/*.kvstate")) == ["b", "d"]
    used = usage(folder, states.budget)
    assert used.files == 2 and used.size <= states.budget
    close(e)


def test_an_unwritable_cache_folder_leaves_replies_working(tiny_model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "states"
    blocker.write_text("a file where the folder should be")
    e = load(tiny_model, blocker)
    tokens = e.tokenize(TEXT)[:700]
    text1, _, _ = evaluate(e, tokens)
    states = e.kv_states
    assert states is not None
    states.claim("chat")
    assert states.save(e, "chat") is None
    notices = states.take_notices()
    assert len(notices) == 1 and "not saved" in notices[0]
    _, result2, _ = evaluate(e, tokens + tokens[:40])
    assert result2.prompt_tokens_reused == len(tokens) and result2.prompt_tokens_evaluated == 40
    assert states.save(e, "chat") is None and states.take_notices() == []
    close(e)
    assert text1


# --- the demo model (a sliding-window model) ----------------------------------------------------------


def test_demo_model_restored_state_matches_warm_and_cold(demo_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "states"
    e = load(demo_model, folder, n_ctx=2048)
    story = " ".join(f"On day {i} Seraphina tends the glade, counts {i * 7} birds and hums to the traveller."
                     for i in range(120))
    tokens = e.tokenize(story)[:1400]
    assert len(tokens) == 1400
    # An edit 500 tokens back: the prompt cuts into the saved tokens, past Gemma 3's 512-token window.
    edited = tokens[:900] + e.tokenize(" The traveller wakes up and asks where he is.")
    evaluate(e, tokens[:1100])
    save(e, "chat")
    warm_text, _, warm_logits = evaluate(e, tokens)
    warm_edited_text, _, warm_edited_logits = evaluate(e, edited)
    close(e)

    again = load(demo_model, folder, n_ctx=2048)
    text, result, logits = evaluate(again, tokens)
    # The saved cache also holds the greedy reply, which may match the next few prompt tokens.
    assert 1100 <= result.prompt_tokens_restored < 1400
    assert result.prompt_tokens_evaluated == 1400 - result.prompt_tokens_restored
    # Gemma's Q4_K kernels round differently from run to run (up to ~1.2 in a logit between two warm
    # runs here), so the demo model is held to the same greedy reply and the same top token.
    assert text == warm_text and top(logits) == top(warm_logits)
    edited_text, edited_result, edited_logits = evaluate(again, edited)
    assert edited_result.prompt_tokens_reused == 900
    assert edited_text == warm_edited_text and top(edited_logits) == top(warm_edited_logits)
    close(again)

    cold = LocalEngine(LocalSettings(demo_model, n_ctx=2048, n_threads=2))
    cold.load()
    cold_text, _, cold_logits = evaluate(cold, tokens)
    close(cold)
    assert text == cold_text and top(logits) == top(cold_logits)


def top(logits: list[float]) -> int:
    return logits.index(max(logits))


# --- rpchat reply and doctor -------------------------------------------------------------------------


def test_rpchat_reply_restores_the_chat_after_a_restart(tiny_model: Path, tmp_path: Path) -> None:
    card = tmp_path / "marisol.json"
    card.write_text(json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Marisol", "description": "Marisol is on the island with Theo. " * 20, "personality": "",
        "scenario": "the beach", "first_mes": "Hello, Theo.", "mes_example": ""}}), encoding="utf-8")
    home, chat = tmp_path / "home", tmp_path / "chat.jsonl"
    env = {**os.environ, "RPCHAT_HOME": str(home)}

    def reply(say: str) -> str:
        res = subprocess.run([sys.executable, "-m", "rpchat", "reply", str(card), "--chat", str(chat), "--say", say,
                              "--model", str(tiny_model), "--max-new", "8", "--seed", "1"],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
        assert res.returncode == 0, res.stderr
        return res.stderr.strip().splitlines()[-1]

    reply("Hello there.")
    second = reply("Where am I?")  # a new process: the last one's state is read back from disk
    assert "restored from disk" in second, second
    restored = int(second.split(" reused (")[1].split()[0])
    evaluated = int(second.split("prompt ")[1].split()[0])
    assert restored > 5 * evaluated, second
    doctor = subprocess.run([sys.executable, "-m", "rpchat", "doctor"], capture_output=True, text=True, env=env,
                            timeout=120, check=False).stdout
    line = next(row for row in doctor.splitlines() if row.startswith("chat states"))
    assert "1 saved" in line and "of 4096 MiB" in line, line


# --- the TUI ------------------------------------------------------------------------------------------


def test_tui_saves_after_a_reply_and_on_quit_and_restores_on_reopen(
    tiny_model: Path, tmp_path: Path
) -> None:
    import asyncio

    from session_support import make_card, open_chat_from_library, tiny_config, wait_for, write_profile_config

    from rpchat.chat.library import list_chats
    from rpchat.paths import profile
    from rpchat.tui.app import RpchatApp
    from rpchat.tui.chat import ChatScreen

    write_profile_config(tiny_config(tiny_model))
    profile().cards_dir.mkdir(parents=True)
    card = make_card(profile().cards_dir, "Zephyrine")
    folder = profile().cache_dir / "kvstates"

    def saved() -> list[Path]:
        return list(folder.glob("*/*.kvstate"))

    async def send(pilot, screen: ChatScreen, text: str) -> None:  # type: ignore[no-untyped-def]
        screen.input.focus()
        screen.input.text = text
        await pilot.press("enter")
        await pilot.pause()
        await wait_for(pilot, lambda: not screen.generating)

    async def first() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_chat_from_library(pilot, app, "Zephyrine")
            await wait_for(pilot, lambda: app.engine_state == "ready")
            await send(pilot, screen, "Where am I? Tell me about the island and the lighthouse, please.")
            await wait_for(pilot, lambda: len(saved()) == 1)  # written by a worker after the reply
            saved()[0].unlink()
            await app.action_quit()  # saves the chat the engine holds before exiting
        assert len(saved()) == 1

    async def second() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.engine_state == "ready")
            app.open_chat(card, list_chats(card, "Zephyrine")[0].path)
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            await send(pilot, screen, "And then?")
            result = screen.session.last_result
            assert result is not None and result.prompt_tokens_restored > 3 * result.prompt_tokens_evaluated
            assert f"{result.prompt_tokens_restored:,} restored from disk" in screen.status_text()

    asyncio.run(first())
    asyncio.run(second())


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set from /proc")
def test_a_state_buffer_is_not_zeroed_while_holding_the_gil() -> None:
    # `(c_uint8 * n)()` zeroes every page holding the GIL (80-90 ms for a 44 MiB state on a busy machine,
    # a UI stall while a worker saves); the pages of a state buffer are left for llama.cpp to fill.
    from rpchat.engine.kvstate import c_buffer

    def resident_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    before = resident_mib()
    buf = c_buffer(256 << 20)
    assert len(buf) == 256 << 20 and buf[0] == 0 and buf[len(buf) - 1] == 0
    assert resident_mib() - before < 32

"""`rpchat bench`, long chat: what each kind of turn costs in a 3,000-token chat, and the two rates against
llama.cpp's own tools (``--against-llama-cpp``).

One engine reads the chat cold, then plays a new turn, a regenerate, an edit of the last message, a lore
entry starting to fire at depth 4 and one at the top, saving its state after each reply as the app does
(the main thread meanwhile runs an asyncio loop whose lateness is the UI stall). A second engine, as after a
restart, reopens the chat from the saved state for the next turn, then plays a turn where old turns fall out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from rpchat.chat.model import Turn
from rpchat.engine.base import Result, Sampling
from rpchat.engine.kvstate import KVStates
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.engine.loader import default_threads
from rpchat.prompt.builder import BuiltPrompt, build_prompt
from rpchat.prompt.formats import load_format
from rpchat.prompt.lorebook import Lorebook, LoreEntry

CHAT_TOKENS = 3000
DEPTH_KEY, TOP_KEY = "lantern", "compass"
LORE = Lorebook("bench", (
    LoreEntry("depth", (DEPTH_KEY,), "The lantern of Gull Island was lit by every keeper since 1887.",
              position="at_depth", depth=4),
    LoreEntry("top", (TOP_KEY,), "The old brass compass in the lighthouse always points to the wreck.",
              position="before_char"),
))
REPLIES = [
    '*Marisol shrugs and tightens the rope around the crate.* "Storm season. Nobody sails in storm season."',
    '"The ferry comes on Thursdays, if the captain is sober." *She hands you a chipped mug of coffee.*',
    "*She checks the barometer, taps it twice and frowns at the needle.* \"Another night of this, then.\"",
    '"You ask a lot of questions for a man who nearly drowned." *A small smile, quickly hidden.*',
]
USER = [
    "Where am I? *I sit up, coughing, and pull the blanket tight.*",
    "Is there a ferry? I need to call someone back on the mainland.",
    '*I look up at the tower.* "You live up there alone, all year?"',
    "What happened to the last keeper? People in town tell stories about him.",
    '"Can I help with the lamp tonight? I owe you that much at least."',
    "*I follow you up the stairs, counting them under my breath.*",
]


def _turn(is_user: bool, text: str) -> Turn:
    from rpchat.bench_data import CARD, PERSONA

    return Turn(is_user=is_user, name=PERSONA.name if is_user else CARD.name, swipes=[text])


def _chat(n_pairs: int) -> list[Turn]:
    from rpchat.bench_data import CARD

    history = [_turn(False, CARD.first_mes)]
    for i in range(n_pairs):
        history.append(_turn(True, f"{USER[i % len(USER)]} ({i})"))
        history.append(_turn(False, REPLIES[i % len(REPLIES)]))
    return history


class _Builder:
    def __init__(self, engine: LocalEngine, max_new: int) -> None:
        from rpchat.bench_data import CARD, PERSONA

        self.engine, self.max_new, self.card, self.persona = engine, max_new, CARD, PERSONA
        self.fmt = load_format("limarp-v3")

    def tokens(self, history: list[Turn]) -> int:
        return self(history).n_tokens or 0

    def __call__(self, history: list[Turn], n_ctx: int | None = None, *, lore: bool = True) -> BuiltPrompt:
        return build_prompt(self.fmt, self.card, self.persona, history, length="medium",
                            counter=self.engine.count_tokens, n_ctx=n_ctx or self.engine.n_ctx,
                            max_new=self.max_new, lorebook=LORE if lore else None)


def _run(engine: LocalEngine, built: BuiltPrompt, sampling: Sampling) -> Result:
    gen = engine.stream(built.segments, sampling, stop=built.stop)
    for _ in gen:
        pass
    return gen.result


def _case(r: Result, **extra: Any) -> dict[str, Any]:
    return {"prompt_tokens": r.prompt_tokens, "evaluated": r.prompt_tokens_evaluated,
            "reused": r.prompt_tokens_reused, "restored": r.prompt_tokens_restored,
            "ttft_s": round(r.ttft_s, 3), **extra}


def loop_stall(work: Callable[[], Any], tick_s: float = 0.01) -> tuple[Any, float]:
    """Run ``work`` in a thread while this thread's asyncio loop ticks every ``tick_s``; returns its
    value and the loop's worst lateness in ms (the stall a Textual app would show meanwhile)."""
    box: dict[str, Any] = {}

    async def main() -> float:
        worst = 0.0
        thread = threading.Thread(target=lambda: box.update(value=work()), daemon=True)
        thread.start()
        while thread.is_alive():
            t = time.perf_counter()
            await asyncio.sleep(tick_s)
            worst = max(worst, time.perf_counter() - t - tick_s)
        thread.join()
        return worst

    worst = asyncio.run(main())
    return box.get("value"), round(worst * 1000, 1)


def _save(states: KVStates, engine: LocalEngine) -> dict[str, Any]:
    """Save the state in a worker thread as the app does; size, copy and write time, UI stall."""
    times: list[float] = [time.perf_counter()]

    def work() -> Path | None:
        snap = states.capture(engine, "chat")
        times.append(time.perf_counter())
        path = states.write(snap) if snap is not None else None
        times.append(time.perf_counter())
        return path

    path, stall = loop_stall(work)
    if path is None or len(times) < 3:
        return {"stall_ms": stall}
    return {"state_mib": round(path.stat().st_size / 2**20, 1), "capture_s": round(times[1] - times[0], 3),
            "write_s": round(times[2] - times[1], 3), "stall_ms": stall}


def _engine(model_path: Path, threads: int, n_ctx: int, folder: Path) -> LocalEngine:
    engine = LocalEngine(LocalSettings(model_path, n_ctx=n_ctx, n_threads=threads))
    engine.kv_states = KVStates(folder, 1 << 40)
    engine.load()
    engine.kv_states.claim("chat")
    return engine


def _pairs_for(build: _Builder, target: int) -> int:
    """Chat turn pairs whose prompt is about ``target`` tokens."""
    probe = build.tokens(_chat(10))
    per_pair = max(1.0, (build.tokens(_chat(20)) - probe) / 10)
    return max(2, 10 + int((target - probe) / per_pair))


def run_long_chat(
    model_path: Path,
    n_threads: int | None = None,
    *,
    chat_tokens: int = CHAT_TOKENS,
    gen_tokens: int = 8,
    llama_cpp: Path | None = None,
    ref_tokens: int = 64,
    rounds: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The long-chat figures as a JSON-able dict (see `format_long_chat`); ``llama_cpp`` (a folder with llama-bench
    and llama-server) adds the rates against them."""
    say = log or (lambda _msg: None)
    threads = n_threads or default_threads()
    sampling = Sampling(temperature=0.0, max_tokens=gen_tokens)
    out: dict[str, Any] = {"model": str(model_path), "threads": threads}
    with tempfile.TemporaryDirectory(prefix="rpchat-bench-states-") as tmp:
        folder = Path(tmp)
        engine = _engine(model_path, threads, chat_tokens + 1024, folder)
        states = engine.kv_states
        assert states is not None
        try:
            build = _Builder(engine, gen_tokens)
            # A model trained on a shorter context (the test models) gets a chat that fits it.
            target = min(chat_tokens, engine.n_ctx - 512)
            history = _chat(_pairs_for(build, target))
            history.append(_turn(True, "Tell me about the wreck on the north rocks."))
            built = cold_prompt = build(history)
            t0 = time.perf_counter()
            r = _run(engine, built, sampling)
            cold_prompt_s = time.perf_counter() - t0
            out["cold"] = _case(r, tok_s=round(r.prompt_tokens_evaluated / max(r.ttft_s, 1e-9), 1))
            say(f"cold: {r.prompt_tokens_evaluated} tokens in {cold_prompt_s:.1f} s")
            out["save"] = _save(states, engine)
            say(f"state saved: {out['save']}")

            def reply_then(user: str, n_ctx: int | None = None) -> BuiltPrompt:
                history.append(_turn(False, REPLIES[len(history) % len(REPLIES)]))
                history.append(_turn(True, user))
                return build(history, n_ctx)

            r = _run(engine, reply_then("And then? Did anyone survive the wreck?"), sampling)
            out["new_turn"] = _case(r)
            _save(states, engine)
            built = build(history)
            out["regenerate"] = _case(_run(engine, built, sampling))
            history[-1] = _turn(True, "And then? Did anybody survive it, or was the whole crew lost?")
            out["edit_last"] = _case(_run(engine, build(history), sampling))
            say("new turn, regenerate, edit measured")
            out["save_last"] = _save(states, engine)  # as the app does after a reply
        finally:
            engine.close()
        # A restart: a new engine (another process would be the same) reads the saved state back.
        engine = _engine(model_path, threads, chat_tokens + 1024, folder)
        try:
            build = _Builder(engine, gen_tokens)
            built = reply_then("*I sit by the window and watch the storm.* How long will it last?")
            r, stall = loop_stall(lambda: _run(engine, built, sampling))
            out["reopen"] = _case(r, stall_ms=stall)
            say(f"reopen: {r.prompt_tokens_restored} restored, {r.prompt_tokens_evaluated} evaluated")
            built = reply_then(f"*I point at the {DEPTH_KEY} on the shelf.* What is that?")
            r = _run(engine, built, sampling)
            out["lore_depth"] = _case(r, after_insertion=_tokens_after(engine, built, build(history, lore=False)))
            say(f"lore at depth: {r.prompt_tokens_evaluated} evaluated")
            _run(engine, reply_then("I see. *I sip the coffee.*"), sampling)  # the entry stops firing
            # Old turns fall out: the budget is what the chat needs now, so the next turn overflows it.
            budget = build.tokens(history) + gen_tokens
            built = reply_then("Then we wait. *I pull up a chair.*", budget)
            out["overflow"] = _case(_run(engine, built, sampling), dropped=len(built.dropped))
            say("overflow measured")
            built = reply_then(f"*I point at the {TOP_KEY} on the shelf.* What is that?", budget)
            r = _run(engine, built, sampling)
            out["lore_top"] = _case(r, after_insertion=_tokens_after(engine, built, build(history, budget, lore=False)),
                                    dropped=len(built.dropped))
            say(f"lore at the top: {r.prompt_tokens_evaluated} evaluated")
        finally:
            engine.close()
    if llama_cpp is not None:
        from rpchat.llamacpp_tools import find_tools

        tools = find_tools(llama_cpp)
        again = _cold_rate(model_path, threads, chat_tokens + 1024, cold_prompt, sampling)
        try:
            rates = against_llama_cpp(model_path, threads, tools, out["cold"], again, gen_tokens=ref_tokens,
                                      rounds=rounds, log=say)
        except (RuntimeError, OSError, ValueError, httpx.HTTPError) as exc:  # a tool that fails costs its rows, not the figures
            rates = {"tools": sorted(tools), "error": f"{type(exc).__name__}: {exc}"}
        out["llama_cpp"] = {"folder": str(llama_cpp), **rates}
    return out


def _tokens_after(engine: LocalEngine, built: BuiltPrompt, without: BuiltPrompt) -> int:
    """Prompt tokens from the insertion point (where ``built`` first differs from the same chat
    ``without`` the entry) to the end."""
    from rpchat.prompt.segments import Segment

    cut = next((i for i, (a, b) in enumerate(zip(built.text, without.text, strict=False)) if a != b),
               min(len(built.text), len(without.text)))
    head: list[Segment] = []
    left = cut
    for s in built.segments:
        if left <= 0:
            break
        head.append(Segment(s.text[:left], s.kind))
        left -= len(s.text)
    return len(engine.tokenize_prompt(built.segments)) - len(engine.tokenize_prompt(head))


# --- the rates against llama.cpp's own tools ------------------------------------------------------

GEN_CHAINS = {
    "greedy": Sampling(temperature=0.0),
    "chain": Sampling(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, repeat_last_n=64,
                      seed=1234),
}


def _cold_rate(model_path: Path, threads: int, n_ctx: int, built: BuiltPrompt, sampling: Sampling
               ) -> Callable[[], float]:
    """A cold evaluation of ``built`` on demand (a fresh engine), as prompt tokens per second."""

    def rate() -> float:
        engine = LocalEngine(LocalSettings(model_path, n_ctx=n_ctx, n_threads=threads))
        engine.load()
        try:
            r = _run(engine, built, sampling)
        finally:
            engine.close()
        return r.prompt_tokens_evaluated / max(r.ttft_s, 1e-9)

    return rate


def against_llama_cpp(model_path: Path, threads: int, tools: dict[str, Path], cold: dict[str, Any],
                      cold_again: Callable[[], float] | None, *, gen_tokens: int = 64, rounds: int = 3,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cold prompt evaluation against llama-bench pp at the same length (taking turns, ``rounds`` times
    with the first cold evaluation counted), and generation against a llama-server on the same model
    with the same sampler chain (the server's own timings)."""
    from rpchat.llamacpp_tools import llama_bench_pp

    say = log or (lambda _msg: None)
    out: dict[str, Any] = {"tools": sorted(tools)}
    if "llama-bench" in tools:
        ours, theirs = [cold["tok_s"]], []
        for i in range(rounds):
            theirs.append(llama_bench_pp(tools["llama-bench"], model_path, cold["prompt_tokens"], threads))
            if i + 1 < rounds and cold_again is not None:
                ours.append(cold_again())
        pp, app = statistics.median(theirs), statistics.median(ours)
        out.update(llama_bench_pp_tok_s=round(pp, 1), cold_tok_s=round(app, 1), pp_rounds=len(theirs),
                   cold_vs_llama_bench=round(app / pp, 3) if pp else None)
        say(f"llama-bench pp{cold['prompt_tokens']}: {theirs} tok/s; rpchat cold {ours}")
    if "llama-server" in tools:
        out["generation"] = _generation_vs_server(model_path, threads, tools["llama-server"], gen_tokens, rounds)
        say("generation against llama-server measured")
    return out


@dataclasses.dataclass
class _Rates:
    rpchat: list[float] = dataclasses.field(default_factory=list)
    server: list[float] = dataclasses.field(default_factory=list)
    rpchat_cpu_ms: list[float] = dataclasses.field(default_factory=list)
    server_cpu_ms: list[float] = dataclasses.field(default_factory=list)


def _cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; None where /proc does not say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _generation_vs_server(model_path: Path, threads: int, binary: Path, n: int, rounds: int
                          ) -> dict[str, Any]:
    """Generation speed of rpchat and llama-server taking turns on the same prompt: wall-clock rates, and
    CPU time per token, which other processes on a shared machine disturb much less."""
    from rpchat.engine.remote import RemoteEngine
    from rpchat.engine.remote_apis import request_body
    from rpchat.llamacpp_tools import LlamaServer, server_completion

    n_ctx = 1024
    engine = LocalEngine(LocalSettings(model_path, n_ctx=n_ctx, n_threads=threads))
    engine.load()
    rates = {name: _Rates() for name in GEN_CHAINS}
    with tempfile.TemporaryDirectory(prefix="rpchat-bench-server-") as tmp:
        server = LlamaServer(binary, model_path, Path(tmp) / "server.log", n_ctx=n_ctx, threads=threads)
        remote = RemoteEngine(server.url, api="llama.cpp")
        try:
            remote.load()
            built = _Builder(engine, n)(_chat(3))
            tokens = engine.tokenize_prompt(built.segments)
            for _ in range(rounds):  # they take turns, so noise from other processes hits both
                for name, chain in GEN_CHAINS.items():
                    sampling = dataclasses.replace(chain, max_tokens=n)
                    gen = engine.generate_tokens(tokens, sampling)
                    pieces = iter(gen)
                    next(pieces, None)  # the prompt is read by then
                    c0 = time.process_time()
                    for _ in pieces:
                        pass
                    rates[name].rpchat_cpu_ms.append((time.process_time() - c0) * 1000
                                                     / max(1, gen.result.tokens_generated - 1))
                    rates[name].rpchat.append(gen.result.tok_per_s)
                    body = request_body(remote._require(), built.segments, sampling, (), n_ctx)
                    body.update(prompt=tokens, ignore_eos=True)
                    server_completion(server.url, {**body, "n_predict": 1})  # the prompt is read by then
                    p0 = _cpu_s(server.proc.pid)
                    answer = server_completion(server.url, body)
                    p1 = _cpu_s(server.proc.pid)
                    rates[name].server.append(answer.tok_s)
                    if p0 is not None and p1 is not None:
                        rates[name].server_cpu_ms.append((p1 - p0) * 1000 / max(1, answer.tokens))
        finally:
            remote.close()
            server.stop()
            engine.close()
    out: dict[str, Any] = {"tokens": n, "rounds": rounds}
    for name, r in rates.items():
        app, ref = statistics.median(r.rpchat), statistics.median(r.server)
        out[name] = {"rpchat_tok_s": round(app, 2), "server_tok_s": round(ref, 2),
                     "ratio": round(app / ref, 3) if ref else None}
        if r.server_cpu_ms:
            ours, theirs = statistics.median(r.rpchat_cpu_ms), statistics.median(r.server_cpu_ms)
            out[name].update(rpchat_cpu_ms=round(ours, 2), server_cpu_ms=round(theirs, 2),
                             cpu_ratio=round(theirs / ours, 3) if ours else None)
    return out


def format_long_chat(r: dict[str, Any]) -> Iterator[str]:
    """The long-chat figures as plain-text lines."""
    cold = r["cold"]
    yield f"long chat  {cold['prompt_tokens']:,} tokens, {r['threads']} threads ({r['model']})"
    yield "case         prompt  evaluated  reused  restored  ttft(s)"
    for name in ("cold", "new_turn", "regenerate", "edit_last", "reopen", "lore_depth", "overflow", "lore_top"):
        c = r.get(name)
        if not c:
            continue
        note = ""
        if "after_insertion" in c:
            note = f"  ({c['after_insertion']} tokens from the insertion point on)"
            if c.get("dropped"):
                note += f", {c['dropped']} old turns out"
        elif name == "cold":
            note = f"  ({c['tok_s']} tok/s)"
        elif name == "overflow":
            note = f"  ({c['dropped']} old turns fell out)"
        elif name == "reopen":
            note = f"  (after a restart; UI stall {c['stall_ms']} ms)"
        yield (f"{name:<11}  {c['prompt_tokens']:>6}  {c['evaluated']:>9}  {c['reused']:>6}  {c['restored']:>8}  "
               f"{c['ttft_s']:>7.3f}{note}")
    s = r.get("save_last") or {}
    if "state_mib" in s:
        yield (f"state      {s['state_mib']} MiB; save {s['capture_s']:.3f} s copy + {s['write_s']:.3f} s write "
               f"(UI stall {s['stall_ms']} ms); restore inside the reopen's ttft")
    if r.get("new_turn") and r.get("reopen"):
        ratio = r["reopen"]["ttft_s"] / max(r["new_turn"]["ttft_s"], 1e-9)
        yield f"goal       reopen ttft / new turn ttft = {ratio:.2f} (goal <= 1.5)"
    lc = r.get("llama_cpp")
    if lc is not None:
        if "llama_bench_pp_tok_s" in lc:
            yield (f"llama.cpp  cold evaluation {lc['cold_tok_s']} tok/s vs llama-bench pp{cold['prompt_tokens']} "
                   f"{lc['llama_bench_pp_tok_s']} tok/s: {lc['cold_vs_llama_bench']} (goal >= 0.95; "
                   f"medians of {lc['pp_rounds']} alternating runs)")
        g = lc.get("generation")
        if g:
            for name in GEN_CHAINS:
                x = g[name]
                cpu = (f"; CPU per token {x['rpchat_cpu_ms']} vs {x['server_cpu_ms']} ms: {x['cpu_ratio']}"
                       if "cpu_ratio" in x else "")
                yield (f"llama.cpp  generation {name:<6} {x['rpchat_tok_s']} tok/s vs llama-server "
                       f"{x['server_tok_s']} tok/s: {x['ratio']}{cpu} (goal >= 1.0)")
        if lc.get("error"):
            yield f"llama.cpp  the comparison failed: {lc['error']}"
        missing = [t for t in ("llama-bench", "llama-server") if t not in lc["tools"]]
        if missing:
            yield f"llama.cpp  {' and '.join(missing)} not found in {lc['folder']}: no rate against it"

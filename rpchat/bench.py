"""`rpchat bench`: a scripted multi-turn chat through the real pipeline, with figures.

prompt builder -> LocalEngine -> stream consumer, turn after turn, then a regenerate, then a chat
long enough to overflow a small context (once shifting the KV cache, once re-evaluating), and a
plain llama-cpp-python ``create_completion(stream=True)`` loop on the same prompt as reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rpchat.bench_data import CARD, FILLER, PERSONA, USER_LINES
from rpchat.chat.model import Turn
from rpchat.engine.base import Result, Sampling
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.engine.loader import default_threads
from rpchat.prompt.builder import BuiltPrompt, build_prompt
from rpchat.prompt.formats import load_format


@dataclasses.dataclass
class _Turn:
    prompt_tokens: int
    evaluated: int
    reused: int
    ttft_s: float
    tokens: int
    tok_s: float
    finish: str
    dropped: int


def _consume(engine: LocalEngine, built: BuiltPrompt, sampling: Sampling) -> tuple[Result, float]:
    """The stream consumer: take pieces as they come (like the chat view), time the prompt."""
    gen = engine.stream(built.segments, sampling, stop=built.stop)
    chars = 0
    for piece in gen:
        chars += len(piece)
    r = gen.result
    prompt_s = r.ttft_s
    return r, prompt_s


def _row(r: Result, built: BuiltPrompt) -> _Turn:
    return _Turn(r.prompt_tokens, r.prompt_tokens_evaluated, r.prompt_tokens_reused, round(r.ttft_s, 4),
                 r.tokens_generated, round(r.tok_per_s, 2), r.finish_reason, len(built.dropped))


def _build(engine: LocalEngine, history: list[Turn], max_new: int) -> BuiltPrompt:
    fmt = load_format("limarp-v3")
    return build_prompt(fmt, CARD, PERSONA, history, length="medium", counter=engine.count_tokens,
                        n_ctx=engine.n_ctx, max_new=max_new)


def _turn(is_user: bool, text: str) -> Turn:
    return Turn(is_user=is_user, name=PERSONA.name if is_user else CARD.name, swipes=[text])


def run_bench(
    model_path: Path | None = None,
    turns: int = 6,
    n_threads: int | None = None,
    *,
    gen_tokens: int = 128,
    n_ctx: int = 2048,
    overflow_ctx: int = 512,
    sampling: Sampling | None = None,
    reference: bool = True,
    speed_rounds: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the scripted chat and return the figures as a JSON-able dict (see `format_bench`).

    ``model_path`` None uses the demo model; ``log`` gets one line per step. The headless TUI timings
    are not here: the core never imports the TUI, so `rpchat bench` adds them (`rpchat.tui.bench`).
    """
    say = log or (lambda _msg: None)
    if model_path is None:
        from rpchat.engine.demo import demo_model_path

        model_path = demo_model_path()
    max_new = gen_tokens
    threads = n_threads or default_threads()
    sampling = sampling or Sampling(temperature=0.8, min_p=0.05, max_tokens=max_new, seed=1234)
    out: dict[str, Any] = {"model": str(model_path), "threads": threads, "n_ctx": n_ctx, "max_new": max_new}

    t0 = time.perf_counter()
    engine = LocalEngine(LocalSettings(Path(model_path), n_ctx=n_ctx, n_threads=threads))
    engine.load()
    out["load_s"] = round(time.perf_counter() - t0, 3)
    out["backend"] = engine.info.backend
    out["notice"] = engine.info.notice
    try:
        history = [_turn(False, CARD.first_mes)]
        rows: list[_Turn] = []
        prompt_tokens = prompt_time = 0.0
        generated = gen_time = 0.0
        built = None
        for i in range(turns):
            history.append(_turn(True, USER_LINES[i % len(USER_LINES)]))
            built = _build(engine, history, max_new)
            r, prompt_s = _consume(engine, built, sampling)
            rows.append(_row(r, built))
            prompt_tokens += r.prompt_tokens_evaluated
            prompt_time += prompt_s
            generated += max(0, r.tokens_generated - 1)
            gen_time += r.gen_time_s
            history.append(_turn(False, r.text.strip() or "..."))
            say(f"turn {i + 1}: {r.prompt_tokens_evaluated} prompt tokens, {r.tok_per_s:.1f} tok/s")
        out["turns"] = [dataclasses.asdict(t) for t in rows]
        out["gen_tok_s"] = round(generated / gen_time, 2) if gen_time else 0.0
        out["prompt_tok_s"] = round(prompt_tokens / prompt_time, 2) if prompt_time else 0.0

        # Regenerate: the same prompt again (the last reply is dropped first, as the app does).
        history.pop()
        assert built is not None
        r, _ = _consume(engine, built, sampling)
        out["regenerate"] = {"evaluated": r.prompt_tokens_evaluated, "ttft_s": round(r.ttft_s, 4)}
        say(f"regenerate: {r.prompt_tokens_evaluated} prompt tokens")

        out["peak_rss_mib"] = round(_peak_rss_mib(), 1)  # the app alone: before the reference loads

        # Generation speed on one fixed prompt, app and plain loop taking turns (noise hits both).
        last_prompt = engine.tokenize_prompt(built.segments)
        llm = _reference_llama(Path(model_path), threads, n_ctx) if reference else None
        app: list[float] = []
        ref: list[float] = []
        try:
            for _ in range(speed_rounds):
                app += _app_loop(engine, last_prompt, sampling)
                if llm is not None:
                    ref += _reference_loop(llm, built.text, sampling)
        finally:
            if llm is not None:
                llm.close()
        # The median time between tokens: robust against other processes stealing the CPU.
        out["app_loop_tok_s"] = _median_rate(app)
        if ref:
            out["reference_tok_s"] = _median_rate(ref)
        say("generation speed measured")
        out["banned"] = _banned_cost(engine, last_prompt, sampling, max(speed_rounds, 1))
        say("banned phrases measured")
        out["alternatives"] = _alternatives_cost(engine, last_prompt, sampling, max(speed_rounds, 1))
        say("token alternatives measured")
    finally:
        engine.close()

    out["overflow"] = {
        "shift": _overflow(Path(model_path), threads, overflow_ctx, True),
        "reevaluate": _overflow(Path(model_path), threads, overflow_ctx, False),
    }
    say("overflow measured")
    from rpchat.bench_summary import summary_cost

    out["summary"] = summary_cost(Path(model_path), threads)
    say("story-so-far summary measured")
    return out


def _app_loop(engine: LocalEngine, prompt: list[int], sampling: Sampling) -> list[float]:
    """Seconds between text pieces of the engine on a fixed prompt (cached after the first run)."""
    stamps = [time.perf_counter() for _ in engine.generate_tokens(prompt, sampling)]
    return [b - a for a, b in itertools.pairwise(stamps)]


def _banned_cost(engine: LocalEngine, prompt: list[int], sampling: Sampling, rounds: int) -> dict[str, Any]:
    """Tokens per second (kept tokens over the generation time, rewinds included) and tokens
    resampled per reply on a fixed prompt: no list, the shipped list, and the shipped list plus
    three word pairs from the reply itself, so that rewinds really happen."""
    from rpchat.engine.banned import default_phrases

    def reply(phrases: tuple[str, ...]) -> Result:
        engine.reset_cache()  # each reply evaluates the prompt alike, so only the list differs
        gen = engine.generate_tokens(prompt, dataclasses.replace(sampling, banned_phrases=phrases))
        for _ in gen:
            pass
        return gen.result

    pairs = tuple(re.findall(r"[A-Za-z']+ [A-Za-z']+", reply(()).text)[:3])
    lists = {"off": (), "shipped": default_phrases(), "forced": default_phrases() + pairs}
    runs: dict[str, list[Result]] = {name: [] for name in lists}
    for _ in range(rounds):  # the lists take turns, so noise from other processes hits each
        for name, phrases in lists.items():
            runs[name].append(reply(phrases))
    out: dict[str, Any] = {"forced_extra": list(pairs), "phrases": len(lists["shipped"])}
    for name, results in runs.items():
        out[name] = {
            "tok_s": round(statistics.median(r.tok_per_s for r in results), 2),
            "rewinds": round(statistics.mean(r.rewinds for r in results), 2),
            "resampled": round(statistics.mean(r.tokens_resampled for r in results), 2),
            "tokens": round(statistics.mean(r.tokens_generated for r in results), 1),
        }
    return out


def _alternatives_cost(engine: LocalEngine, prompt: list[int], sampling: Sampling, rounds: int) -> dict[str, Any]:
    """Tokens per second (median gap between pieces) on a fixed prompt with the top-5 capture off
    and on, taking turns so that noise from other processes hits both."""
    from rpchat.engine.alternatives import TOP_K

    gaps: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for name, n_probs in (("off", 0), ("on", TOP_K)):
            gaps[name] += _app_loop(engine, prompt, dataclasses.replace(sampling, n_probs=n_probs))
    off, on = _median_rate(gaps["off"]), _median_rate(gaps["on"])
    return {"off_tok_s": off, "on_tok_s": on, "cost_pct": round(100 * (1 - on / off), 1) if off else 0.0}


def _median_rate(gaps: list[float]) -> float:
    return round(1.0 / statistics.median(gaps), 2) if gaps else 0.0


def _overflow(model_path: Path, threads: int, n_ctx: int, shift: bool) -> dict[str, Any]:
    """Grow a chat past a small context; report the prompt cost of the turn where old turns fall out."""
    engine = LocalEngine(LocalSettings(model_path, n_ctx=n_ctx, n_threads=threads, context_shift=shift))
    engine.load()
    sampling = Sampling(temperature=0.0, max_tokens=8)
    history = [_turn(False, CARD.first_mes)]
    try:
        first_kept = None
        for i in range(200):
            history.append(_turn(True, f"{USER_LINES[i % len(USER_LINES)]} {FILLER}"))
            built = _build(engine, history, 8)
            r, prompt_s = _consume(engine, built, sampling)
            kept = built.first_kept if built.first_kept is not None else -1
            if first_kept is not None and kept != first_kept:
                return {"evaluated": r.prompt_tokens_evaluated, "reused": r.prompt_tokens_reused,
                        "prompt_tokens": r.prompt_tokens, "prompt_s": round(prompt_s, 4), "turn": i + 1}
            first_kept = kept
            history.append(_turn(False, f"*Marisol nods.* {FILLER}"))
    finally:
        engine.close()
    return {}


@contextlib.contextmanager
def _repack_setting(use_extra_bufts: bool) -> Iterator[None]:
    # Llama() has no use_extra_bufts argument: wrap the defaults it starts from.
    import llama_cpp.llama as high

    low: Any = high.llama_cpp  # type: ignore[attr-defined]
    original = low.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = use_extra_bufts
        return params

    low.llama_model_default_params = patched
    try:
        yield
    finally:
        low.llama_model_default_params = original


def _reference_llama(model_path: Path, threads: int, n_ctx: int) -> Any:
    from llama_cpp import Llama

    from rpchat.engine.preflight import repack_verdict

    with _repack_setting(repack_verdict().use_extra_bufts):
        return Llama(str(model_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)


def _reference_loop(llm: Any, prompt: str, sampling: Sampling) -> list[float]:
    """Seconds between chunks of a plain llama-cpp-python stream loop, same prompt and samplers."""
    chunks = llm.create_completion(prompt, max_tokens=sampling.max_tokens, stream=True,
                                   temperature=sampling.temperature, min_p=sampling.min_p,
                                   top_p=1.0, top_k=0, seed=1234)
    stamps = [time.perf_counter() for _ in chunks]
    return [b - a for a, b in itertools.pairwise(stamps)]


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def format_bench(result: dict[str, Any]) -> str:
    """The figures as a small plain-text report."""
    lines = [
        f"model      {result['model']}",
        (f"backend    {result.get('backend')}, {result['threads']} threads, n_ctx {result['n_ctx']}, "
         f"load {result.get('load_s', 0):.2f} s"),
    ]
    if result.get("notice"):
        lines.append(f"notice     {result['notice']}")
    lines.append("turn  prompt  evaluated  reused  ttft(s)  tokens  tok/s  finish")
    for i, t in enumerate(result.get("turns", []), 1):
        lines.append(f"{i:>4}  {t['prompt_tokens']:>6}  {t['evaluated']:>9}  {t['reused']:>6}  "
                     f"{t['ttft_s']:>7.3f}  {t['tokens']:>6}  {t['tok_s']:>5.1f}  {t['finish']}")
    lines.append(f"generation {result.get('gen_tok_s', 0):.1f} tok/s over the chat turns; "
                 f"{result.get('app_loop_tok_s', 0):.1f} tok/s (median gap) on the last prompt")
    lines.append(f"prompt     {result.get('prompt_tok_s', 0):.1f} tok/s")
    regen = result.get("regenerate", {})
    lines.append(f"regenerate {regen.get('evaluated')} prompt tokens evaluated, ttft {regen.get('ttft_s', 0):.3f} s")
    for mode, o in result.get("overflow", {}).items():
        if o:
            lines.append(f"overflow   {mode:<10} {o['evaluated']} of {o['prompt_tokens']} prompt tokens "
                         f"evaluated ({o['prompt_s']:.3f} s) when old turns fell out")
    if result.get("summary"):
        from rpchat.bench_summary import format_summary_cost

        lines += format_summary_cost(result["summary"])
    if "reference_tok_s" in result:
        ref = result["reference_tok_s"]
        app = result.get("app_loop_tok_s", 0)
        ratio = f" (app/reference {app / ref:.2f})" if ref else ""
        lines.append(f"reference  {ref:.1f} tok/s (median gap) plain llama-cpp-python stream loop{ratio}")
    banned = result.get("banned")
    if banned:
        for name in ("off", "shipped", "forced"):
            b = banned[name]
            lines.append(f"banned     {name:<8} {b['tok_s']:>6.1f} tok/s, {b['tokens']:.0f} tokens, "
                         f"{b['rewinds']:.1f} rewinds, {b['resampled']:.1f} tokens resampled per reply")
        lines.append(f"           shipped = {banned['phrases']} phrases; forced adds {banned['forced_extra']}")
    alts = result.get("alternatives")
    if alts:
        lines.append(f"token alts top 5 kept: {alts['on_tok_s']:.1f} tok/s, off: {alts['off_tok_s']:.1f} tok/s "
                     f"(median gap; cost {alts['cost_pct']:.1f}%)")
    lines.append(f"peak RSS   {result.get('peak_rss_mib', 0):.0f} MiB")
    for key, value in result.get("tui", {}).items():
        lines.append(f"tui        {key} {value}")
    return "\n".join(lines)


# --- `rpchat bench --shape 7b`: waiting at real scale ----------------------------------------------


def run_shape_bench(
    model_path: Path,
    n_threads: int | None = None,
    *,
    prompt_tokens: int = 1536,
    gen_tokens: int = 16,
    cancels: int = 3,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Prompt reading, progress reports, Esc latency and generation on a big (synthetic) model.

    Esc latency is measured from setting the cancel event while a prompt chunk is being evaluated
    to the moment the engine hands the thread back; afterwards the cache must still serve the prompt.
    """
    import threading

    from rpchat.engine.base import PromptProgress

    say = log or (lambda _msg: None)
    threads = n_threads or default_threads()
    out: dict[str, Any] = {"model": str(model_path), "threads": threads, "prompt_tokens": prompt_tokens}
    t0 = time.perf_counter()
    stages: list[str] = []
    engine = LocalEngine(LocalSettings(Path(model_path), n_ctx=prompt_tokens + 512, n_threads=threads))
    engine.load(lambda _v, stage="": stages.append(stage) if stage else None)
    out["load_s"] = round(time.perf_counter() - t0, 2)
    out["load_stages"] = stages
    loaded = engine.loaded
    out["graph_nodes"] = loaded.graph_nodes if loaded is not None else 0
    say(f"loaded in {out['load_s']} s ({'; '.join(stages)})")
    words = (FILLER * (prompt_tokens // 40 + 1)).split()
    tokens = engine.tokenize(" ".join(words))[:prompt_tokens]
    sampling = Sampling(temperature=0.8, min_p=0.05, max_tokens=gen_tokens, seed=1)

    def stream(toks: list[int], cancel: threading.Event | None = None,
               on: Callable[[PromptProgress], None] | None = None) -> tuple[Result, list[PromptProgress]]:
        reports: list[PromptProgress] = []

        def report(p: PromptProgress) -> None:
            reports.append(p)
            if on is not None:
                on(p)

        gen = engine.generate_tokens(toks, sampling, cancel=cancel, progress=report)
        for _ in gen:
            pass
        return gen.result, reports

    latencies: list[float] = []
    for i in range(cancels):
        engine.reset_cache()
        cancel = threading.Event()
        pressed: list[float] = []
        seen = [0]

        def press(cancel: threading.Event = cancel, pressed: list[float] = pressed) -> None:
            pressed.append(time.perf_counter())
            cancel.set()

        def arm(p: PromptProgress, seen: list[int] = seen, target: int = i + 1, press: Any = press,
                delay: float = 0.05 + 0.07 * i) -> None:
            # Esc from another thread (as the UI's), a moment after the n-th report: mid-node, mid-chunk.
            if p.done > 0:
                seen[0] += 1
                if seen[0] == target:
                    threading.Timer(delay, press).start()

        result, reports = stream(tokens, cancel, arm)
        returned = time.perf_counter()
        if pressed:
            latencies.append(returned - pressed[0])
            say(f"Esc after {reports[-1].done} prompt tokens: stopped in {latencies[-1] * 1000:.0f} ms")
        kept = result.prompt_tokens_evaluated
        again, _ = stream(tokens[: kept + 1], None)
        if again.prompt_tokens_reused != kept:
            raise RuntimeError(f"after Esc the cache held {again.prompt_tokens_reused}, not {kept} tokens")
    out["esc_ms"] = [round(x * 1000) for x in latencies]

    engine.reset_cache()
    result, reports = stream(tokens)
    out["prompt_s"] = round(result.ttft_s, 2)
    out["prompt_tok_s"] = round(result.prompt_tokens_evaluated / result.ttft_s, 1) if result.ttft_s else 0.0
    out["progress_reports"] = len(reports)
    gaps = [b.elapsed_s - a.elapsed_s for a, b in itertools.pairwise(reports)]
    out["progress_gap_max_s"] = round(max(gaps), 2) if gaps else 0.0
    out["progress_last"] = reports[-1].describe() if reports else ""
    out["gen_tok_s"] = round(result.tok_per_s, 2)
    say(f"prompt {result.prompt_tokens_evaluated} tokens in {out['prompt_s']} s, {len(reports)} progress reports")
    engine.close()
    return out


def format_shape_bench(result: dict[str, Any]) -> str:
    """The `run_shape_bench` figures as plain text."""
    esc = ", ".join(f"{ms} ms" for ms in result.get("esc_ms", [])) or "-"
    return "\n".join([
        f"model      {result['model']}",
        f"load       {result['load_s']:.1f} s, {result['threads']} threads ({'; '.join(result['load_stages'])})",
        f"prompt     {result['prompt_tokens']} tokens in {result['prompt_s']:.1f} s ({result['prompt_tok_s']} tok/s)",
        (f"progress   {result['progress_reports']} reports, longest gap {result['progress_gap_max_s']:.2f} s; "
         f"last: {result['progress_last']}"),
        f"esc        {esc} from cancel to the engine returning, mid-chunk",
        f"generation {result['gen_tok_s']} tok/s",
    ])

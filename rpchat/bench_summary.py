"""`rpchat bench`'s story-so-far row: what a summary update costs and whether the user waits for it.

A chat long enough that turns fall out of a small context; then, through `RoleplaySession` as the app
drives it: a reply, a summary update on the side sequence, and the next reply (with and without the
prefill that reads the new prompt start ahead of it); and a reply sent while a summary is being written
(it preempts the summary). A ticker thread measures how late a 10 ms timer fires meanwhile: what an
event loop on another thread would feel (the GIL).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rpchat.chat.model import Chat
from rpchat.chat.store import ChatStore
from rpchat.config import SummaryConfig
from rpchat.engine.base import Sampling
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.memory import update_summary
from rpchat.prompt.formats import load_format
from rpchat.session import RoleplaySession

TICK_S = 0.01


class _Ticker:
    """The worst lateness of a 10 ms timer on another thread while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(TICK_S)
            self.worst = max(self.worst, time.perf_counter() - t - TICK_S)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _session(engine: LocalEngine, folder: Path, turns: int) -> RoleplaySession:
    from rpchat.bench_data import CARD, FILLER, PERSONA, USER_LINES

    chat = Chat.start(CARD.name, PERSONA.name, [CARD.first_mes])
    for i in range(turns):
        chat.add(True, f"{USER_LINES[i % len(USER_LINES)]} {FILLER}")
        chat.add(False, f"*Marisol nods.* {FILLER}")
    session = RoleplaySession(CARD, chat, ChatStore(folder / f"chat-{time.monotonic_ns()}.jsonl"), PERSONA,
                              load_format("limarp-v3"), Sampling(temperature=0.0), engine=engine, max_new=16)
    session.summary_config = SummaryConfig(min_turns=2, chunk_turns=6, max_tokens=96)
    session.save()
    return session


def _reply(session: RoleplaySession, text: str) -> dict[str, Any]:
    session.send(text)
    r = session.reply(lambda _: None)
    return {"evaluated": r.prompt_tokens_evaluated, "reused": r.prompt_tokens_reused, "ttft_s": round(r.ttft_s, 4)}


def summary_cost(model_path: Path, threads: int, n_ctx: int = 1024, turns: int = 12) -> dict[str, Any]:
    """The figures as a dict: ``update`` (side-sequence tokens and time), the next reply with and without
    prefill, and a reply that preempts a summary against a plain one."""
    out: dict[str, Any] = {"n_ctx": n_ctx}
    engine = LocalEngine(LocalSettings(model_path, n_ctx=n_ctx, n_threads=threads, side_ctx=n_ctx // 2))
    engine.load()
    try:
        with tempfile.TemporaryDirectory(prefix="rpchat-bench-summary-") as tmp:
            for prefill in (False, True):
                session = _session(engine, Path(tmp), turns)
                engine.reset_cache()
                _reply(session, "*I watch the lamp turn.*")  # the chat's cache, as after any reply
                ticker = _Ticker()
                ticker.start()
                try:
                    update = update_summary(session, prefill=prefill)
                finally:
                    ticker.stop()
                if update is None or not update.applied:
                    return out | {"problem": "no summary was written"}
                out["update"] = {"turns": len(update.turns), "prompt_tokens": update.prompt_tokens,
                                 "generated": update.tokens_generated, "seconds": round(update.seconds, 3),
                                 "worst_tick_late_ms": round(ticker.worst * 1000, 1)}
                key = "next_reply_prefilled" if prefill else "next_reply"
                out[key] = _reply(session, "What now?") | ({"prefilled": update.prefilled} if prefill else {})
            out["plain_reply"] = _reply(session, "*I nod.*")

            # A send while a summary is being written: the summary is preempted, the reply goes ahead.
            session = _session(engine, Path(tmp), turns)
            session.summary_config = SummaryConfig(min_turns=2, chunk_turns=6, max_tokens=400)
            engine.reset_cache()
            _reply(session, "*I watch the lamp turn.*")
            box: dict[str, Any] = {}
            worker = threading.Thread(target=lambda: box.setdefault("u", update_summary(session)))
            worker.start()
            deadline = time.monotonic() + 60
            while engine.side._job is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.2)  # well inside the summary's generation
            preempting = _reply(session, "Wait!")
            worker.join()
            u = box.get("u")
            out["preempting_reply"] = preempting | {"summary": u.finish_reason if u is not None else "none"}
        out["preempt_ms"] = {phase: _preempt_ms(engine, phase) for phase in ("prompt", "generation")}
    finally:
        engine.close()
    return out


def _preempt_ms(engine: LocalEngine, phase: str) -> float:
    """How long a reply waits for the engine after preempting a side job reading its prompt or writing."""
    from rpchat.prompt.segments import Segment

    line = "The lamp turns. "
    # A prompt of most of the side sequence's cells, so the preempt lands while it is being read.
    repeats = max(1, int(0.8 * engine.side.cells) // max(1, engine.count_tokens(line))) if phase == "prompt" else 8
    prompt = [Segment(line * repeats, "user")]
    box: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: box.setdefault(
        "r", engine.generate_aside(prompt, Sampling(temperature=0.0, max_tokens=400))))
    worker.start()
    while engine.side._job is None and worker.is_alive():
        time.sleep(0.001)
    time.sleep(0.3 if phase == "prompt" else 2.0)
    t0 = time.perf_counter()
    engine.side.preempt()
    with engine.lock:
        waited = time.perf_counter() - t0
    worker.join()
    return round(waited * 1000, 1)


def format_summary_cost(s: dict[str, Any]) -> list[str]:
    """Lines for `rpchat.bench.format_bench`."""
    if "update" not in s:
        return [f"summary    {s.get('problem', 'not measured')}"]
    u = s["update"]
    lines = [(f"summary    update: {u['turns']} turns, {u['prompt_tokens']} tokens evaluated + {u['generated']} "
              f"written on the side sequence in {u['seconds']:.2f} s; a 10 ms timer elsewhere ran at most "
              f"{u['worst_tick_late_ms']:.1f} ms late")]
    for key, label in (("next_reply", "next reply"), ("next_reply_prefilled", "prefilled"),
                       ("plain_reply", "plain turn"), ("preempting_reply", "preempting")):
        r = s.get(key)
        if r:
            extra = f" (summary {r['summary']})" if "summary" in r else ""
            lines.append(f"           {label:<11} {r['evaluated']} evaluated / {r['reused']} reused, "
                         f"ttft {r['ttft_s']:.3f} s{extra}")
    p = s.get("preempt_ms")
    if p:
        lines.append(f"           a reply waits {p['prompt']:.1f} ms (summary reading its prompt) / "
                     f"{p['generation']:.1f} ms (writing) for the preempted summary to let go")
    return lines

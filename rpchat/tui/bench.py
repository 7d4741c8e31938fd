"""Headless TUI timings for `rpchat bench`: event-loop stall while streaming, and opening a long chat.

The stall is measured with a timer that asks to run every 10 ms and records how late each call is:
the lateness is exactly how long the event loop was busy elsewhere (rendering, layout, messages).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rpchat.engine.base import EngineInfo, Result, Sampling
from rpchat.prompt.segments import Segment

TICK_S = 0.010
FILLER = (
    '*She glances at the horizon, then back at you.* "The tide turns at dusk," she says, '
    "_and nobody listens until it does._ "
)


class PacedGeneration:
    """Pieces of a fixed text at a fixed rate; stops at once when cancelled."""

    def __init__(self, pieces: list[str], interval: float, cancel: threading.Event | None) -> None:
        self.result = Result()
        self._pieces, self._interval, self._cancel = pieces, interval, cancel

    def __iter__(self) -> Iterator[str]:
        start = time.perf_counter()
        sent: list[str] = []
        for i, piece in enumerate(self._pieces):
            if self._cancel is not None and self._cancel.wait(self._interval):
                self.result.finish_reason = "cancelled"
                break
            if self._cancel is None:
                time.sleep(self._interval)
            if i == 0:
                self.result.ttft_s = time.perf_counter() - start
            sent.append(piece)
            yield piece
        else:
            self.result.finish_reason = "length"
        self.result.text = "".join(sent)
        self.result.tokens_generated = len(sent)
        self.result.gen_time_s = time.perf_counter() - start


class PacedEngine:
    """A stand-in engine that streams words at ``rate`` per second (UI timing and cancel tests only)."""

    def __init__(self, rate: float = 200.0, words: int = 300, n_ctx: int = 8192) -> None:
        self.rate, self.words, self._n_ctx = rate, words, n_ctx
        self.loaded = False

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(model_name="paced-test-engine", backend="CPU", n_ctx=self._n_ctx)

    def load(self, progress: Any = None) -> None:
        if progress is not None:
            progress(1.0)
        self.loaded = True

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def stream(self, prompt: Sequence[Segment], sampling: Sampling, stop: Sequence[str] = (),
               cancel: threading.Event | None = None, progress: Any = None) -> PacedGeneration:
        words = (FILLER * (self.words // 20 + 1)).split(" ")[: self.words]
        pieces = [(" " if i else "") + w for i, w in enumerate(words)]
        return PacedGeneration(pieces, 1.0 / self.rate, cancel)

    def close(self) -> None:
        self.loaded = False


def _long_chat(card_name: str, user: str, turns: int) -> Any:
    from rpchat.chat.model import Chat

    chat = Chat.start(card_name, user, ['*waves* "Hello there."'])
    for i in range(turns - 1):
        chat.add(i % 2 == 0, f"Turn {i}. " + FILLER * (1 + i % 3))
    return chat


def _write_fixture(home: Path, turns: int) -> tuple[Path, Path]:
    from rpchat.cards import Card, save_card
    from rpchat.chat.library import new_chat_path
    from rpchat.chat.store import ChatStore

    card = Card(name="Bench", description="A benchmark character.", first_mes='*waves* "Hello there."')
    card_path = home / "bench.json"
    save_card(card, card_path)
    chat_path = new_chat_path(card.name)
    ChatStore(chat_path).save(_long_chat(card.name, "User", turns))
    return card_path, chat_path


async def _measure(history_turns: int, open_turns: int, rate: float, words: int) -> dict[str, Any]:
    from rpchat.tui.app import RpchatApp
    from rpchat.tui.chat import ChatScreen

    home = Path.cwd()
    card_path, stream_chat = _write_fixture(home, history_turns)
    _, big_chat = _write_fixture(home, open_turns)
    engine = PacedEngine(rate=rate, words=words)
    app = RpchatApp(engine_factory=lambda _cfg: engine)
    out: dict[str, Any] = {}
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(200):
            if app.engine_state == "ready":
                break
            await pilot.pause(0.01)
        # Opening a long chat: from the request to the first paint of the chat screen.
        t0, c0 = time.perf_counter(), time.process_time()
        app.open_chat(card_path, big_chat)
        await pilot.pause()  # returns once the new screen and all its widgets processed their messages
        out["open_2000_turns_s"] = round(time.perf_counter() - t0, 4)
        # CPU time too: on a busy machine the wall time also counts other processes.
        out["open_2000_turns_cpu_s"] = round(time.process_time() - c0, 4)
        out["open_turns"] = open_turns
        out["mounted_turns"] = len(app.screen.query("TurnView"))
        app.pop_screen()
        await pilot.pause()

        app.open_chat(card_path, stream_chat)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        lateness: list[float] = []
        expected = [time.perf_counter() + TICK_S]

        def tick() -> None:
            now = time.perf_counter()
            lateness.append(max(0.0, now - expected[0]))
            expected[0] = now + TICK_S

        timer = screen.set_interval(TICK_S, tick)
        screen.generate("reply")
        while screen.generating:
            await asyncio.sleep(0.02)
        timer.stop()
        result = screen.session.last_result
    stalls = sorted(lateness)
    if stalls:
        out["stream_stall_p50_ms"] = round(statistics.median(stalls) * 1000, 2)
        out["stream_stall_p99_ms"] = round(stalls[min(len(stalls) - 1, int(len(stalls) * 0.99))] * 1000, 2)
        out["stream_stall_max_ms"] = round(stalls[-1] * 1000, 2)
    out["stream_history_turns"] = history_turns
    out["stream_tokens"] = result.tokens_generated if result else 0
    out["stream_rate_tok_s"] = rate
    out["stall_samples"] = len(stalls)
    return out


def run_tui_bench(history_turns: int = 200, open_turns: int = 2000, rate: float = 200.0,
                  words: int = 400) -> dict[str, Any]:
    """Measure the TUI headless in a throwaway profile; returns the figures as a dict.

    ``stream_stall_p99_ms`` (target < 50) and ``open_2000_turns_s`` (target < 1) are the headline.
    """
    import os
    import tempfile

    old_home, old_cwd = os.environ.get("RPCHAT_HOME"), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="rpchat-bench-") as tmp:
        os.environ["RPCHAT_HOME"] = tmp
        os.chdir(tmp)
        try:
            return asyncio.run(_measure(history_turns, open_turns, rate, words))
        finally:
            os.chdir(old_cwd)
            if old_home is None:
                os.environ.pop("RPCHAT_HOME", None)
            else:
                os.environ["RPCHAT_HOME"] = old_home

"""The engine interface: a built prompt in, a stream of text pieces out, a `Result` at the end."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Literal, Protocol

from rpchat.prompt.segments import Segment

FinishReason = Literal["stop", "length", "eos", "cancelled", "error"]


@dataclass(frozen=True)
class Sampling:
    """Sampler settings. Neutral defaults: a value at its default turns that sampler off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    tfs_z: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int | None = None
    max_tokens: int = 300
    # added by the sampler helper: dynamic temperature (temp +/- range) and sampler order
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    temperature_last: bool = True
    # Phrases the local engine rewinds and resamples around (see `rpchat.engine.banned`).
    banned_phrases: tuple[str, ...] = ()


# The one place the defaults are read from: presets save only what differs, the sampler form marks what is
# on, and remote requests leave neutral samplers out.
NEUTRAL_SAMPLING = Sampling()


@dataclass
class Result:
    """What one generation did, for the status line and the benchmark."""

    text: str = ""
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0
    prompt_tokens_restored: int = 0  # of the reused, read back from a saved chat state on disk
    tokens_generated: int = 0
    ttft_s: float = 0.0
    gen_time_s: float = 0.0
    finish_reason: FinishReason = "stop"
    error: str | None = None
    unsupported: list[str] = field(default_factory=list)
    rewinds: int = 0  # banned phrases taken back (local engine)
    tokens_resampled: int = 0  # tokens thrown away by those rewinds

    @property
    def tok_per_s(self) -> float:
        """Generation speed, after the first token."""
        if self.tokens_generated <= 1 or self.gen_time_s <= 0:
            return 0.0
        return (self.tokens_generated - 1) / self.gen_time_s


@dataclass(frozen=True)
class EngineInfo:
    """What the user sees about the running engine."""

    model_name: str
    backend: str  # "CPU", "CUDA", "Metal", "Vulkan", or "remote (llama.cpp server)" ...
    n_ctx: int
    gpu_layers: int = 0
    total_layers: int = 0
    notice: str | None = None  # e.g. "AMX repacking disabled: it faults on this CPU"


class ProgressCallback(Protocol):
    """Loading progress: ``value`` from 0.0 to 1.0; ``stage`` says what the engine is doing now
    ("reading 4.1 GB", "warming up"...), empty when that has not changed."""

    def __call__(self, value: float, stage: str = "") -> None: ...


@dataclass(frozen=True)
class PromptProgress:
    """How far one reply's prompt has been read: ``done`` of ``total`` tokens, ``elapsed_s`` in.

    Both counts leave out the tokens reused from the cache: ``total`` is what this reply has to
    evaluate. ``total`` 0 means the engine cannot tell (a server that reports nothing); then
    only ``elapsed_s`` is known.
    """

    done: int
    total: int
    elapsed_s: float

    @property
    def tok_per_s(self) -> float | None:
        """Prompt tokens evaluated per second so far; None before anything was measured."""
        if self.done <= 0 or self.elapsed_s <= 0:
            return None
        return self.done / self.elapsed_s

    @property
    def remaining_s(self) -> float | None:
        """Seconds until the whole prompt is read, at the speed so far; None when unknown."""
        rate = self.tok_per_s
        if rate is None or self.total <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def describe(self, since_s: float = 0.0) -> str:
        """One short line for a status bar, ``since_s`` seconds after this report was made (the
        clock and the time left move on between reports): ``prompt 1,024/3,323 tok, 41 tok/s, 56 s left``."""
        if self.total <= 0:
            return f"reading prompt, {format_seconds(self.elapsed_s + since_s)}"
        line = f"prompt {self.done:,}/{self.total:,} tok"
        rate, left = self.tok_per_s, self.remaining_s
        if rate is not None:
            line += f", {rate:,.0f} tok/s" if rate >= 10 else f", {rate:.1f} tok/s"
        if left is not None and self.done < self.total:
            line += f", {format_seconds(max(0.0, left - since_s))} left"
        elif rate is None:
            line += f", {format_seconds(self.elapsed_s + since_s)}"
        return line


PromptProgressCallback = Callable[[PromptProgress], None]


def format_seconds(value: float) -> str:
    """``4.2 s``, ``56 s``, ``3 min 05 s``."""
    value = max(0.0, value)
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    return f"{int(value) // 60} min {int(value) % 60:02d} s"


def throttle(callback: PromptProgressCallback, interval_s: float = 0.25) -> PromptProgressCallback:
    """``callback`` called at most every ``interval_s``; the first report and the last (all read)
    always pass, so a display starts at once and ends at the total."""
    last = [-float("inf")]

    def report(progress: PromptProgress) -> None:
        now = monotonic()
        final = progress.total > 0 and progress.done >= progress.total
        if final or now - last[0] >= interval_s:
            last[0] = now
            callback(progress)

    return report


class Generation(Protocol):
    """An iterator of text pieces; ``result`` is complete once iteration ends."""

    result: Result

    def __iter__(self) -> Iterator[str]: ...


class Engine(Protocol):
    """A text-completion backend (local llama.cpp or a remote server)."""

    @property
    def n_ctx(self) -> int: ...

    @property
    def info(self) -> EngineInfo: ...

    def load(self, progress: ProgressCallback | None = None) -> None:
        """Load the model (or connect); raises ModelError / EngineError with a one-line message."""

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as plain text (no special tokens, no BOS)."""

    def stream(
        self,
        prompt: Sequence[Segment],
        sampling: Sampling,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        progress: PromptProgressCallback | None = None,
    ) -> Generation:
        """Start generating; iterate the returned object for text pieces.

        ``progress`` hears, on the iterating thread, how far the prompt has been read: first with
        ``done`` 0, then after each evaluated chunk, last with ``done == total`` (or, from a server
        that reports nothing, with ``total`` 0 until the first token).
        """

    def close(self) -> None:
        """Free the model or connection."""

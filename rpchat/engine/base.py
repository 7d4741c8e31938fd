"""The engine interface: a built prompt in, a stream of text pieces out, a `Result` at the end."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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


@dataclass
class Result:
    """What one generation did, for the status line and the benchmark."""

    text: str = ""
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0
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


ProgressCallback = Callable[[float], None]


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
    ) -> Generation:
        """Start generating; iterate the returned object for text pieces."""

    def close(self) -> None:
        """Free the model or connection."""

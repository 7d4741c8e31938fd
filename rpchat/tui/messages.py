"""Typed messages between workers, screens and the app (harlequin style: one class per event)."""

from __future__ import annotations

from textual.message import Message

from rpchat.config import Config
from rpchat.engine.base import EngineInfo, PromptProgress, Result


class ModelLoading(Message):
    """Loading progress, 0.0 .. 1.0, and what the engine is doing (empty: unchanged)."""

    def __init__(self, progress: float, stage: str = "") -> None:
        super().__init__()
        self.progress = progress
        self.stage = stage


class ModelLoaded(Message):
    """The engine is ready."""

    def __init__(self, info: EngineInfo) -> None:
        super().__init__()
        self.info = info


class ModelFailed(Message):
    """The engine could not load; ``problem`` is the one-line reason."""

    def __init__(self, problem: str) -> None:
        super().__init__()
        self.problem = problem


class TokensArrived(Message):
    """A piece of text from the engine for the live reply."""

    def __init__(self, text: str, generation: int) -> None:
        super().__init__()
        self.text = text
        self.generation = generation


class ReplyFinished(Message):
    """A generation ended (done, stopped or failed); the chat is already saved."""

    def __init__(self, result: Result, mode: str, generation: int) -> None:
        super().__init__()
        self.result = result
        self.mode = mode
        self.generation = generation


class ReplyFailed(Message):
    """A generation could not start or crashed; ``problem`` is the one-line reason."""

    def __init__(self, problem: str, mode: str, generation: int) -> None:
        super().__init__()
        self.problem = problem
        self.mode = mode
        self.generation = generation


class PromptMeasured(Message):
    """The prompt for the next reply was built: token count and where older turns were cut."""

    def __init__(self, n_tokens: int | None, n_ctx: int | None, first_kept: int | None) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx
        self.first_kept = first_kept


class PromptProgressed(Message):
    """The engine has read more of the prompt (posted a few times a second at most)."""

    def __init__(self, progress: PromptProgress, generation: int) -> None:
        super().__init__()
        self.progress = progress
        self.generation = generation


class StateSaved(Message):
    """A chat's KV state was saved to disk in the background (or could not be: see the session's notices)."""


class SettingsChanged(Message, bubble=False):
    """The app posts this to every screen when the user saved new settings (a chat re-picks its format,
    preset and reply budget)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

"""Memory of what fell out of the context: the story-so-far summary of a session's chat, kept up to date.

`update_summary` runs the model on the local engine's side sequence (`rpchat.engine.sideseq`), so the
chat's KV cache survives, and any reply preempts it. The TUI calls it from a background worker after
each reply; ``rpchat reply`` calls it after printing the reply. Both go through `RoleplaySession`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rpchat.chat.model import StorySummary
from rpchat.engine.base import Sampling
from rpchat.errors import RpchatError
from rpchat.prompt.summary import SummaryRequest, finish_summary, summary_request, turns_to_summarise

if TYPE_CHECKING:
    from rpchat.engine.sideseq import SideResult
    from rpchat.session import RoleplaySession

# Summaries should be plain and faithful: near-greedy, with a light repetition penalty.
SUMMARY_SAMPLING = Sampling(temperature=0.3, min_p=0.1, repeat_penalty=1.1, repeat_last_n=256, seed=7)


@dataclass(frozen=True)
class SummaryUpdate:
    """What one summary update did."""

    applied: bool  # the chat's summary was replaced (False: preempted, stale, or the model wrote nothing)
    turns: tuple[int, ...]  # history indices it summarised
    text: str = ""
    prompt_tokens: int = 0  # tokens evaluated in the side sequence (it keeps no cache)
    tokens_generated: int = 0
    seconds: float = 0.0
    finish_reason: str = ""
    prefilled: int = 0  # prompt tokens then read into the chat's cache ahead of the next reply
    problem: str = ""  # why the model could not run, when finish_reason is "error"


def summary_active(session: RoleplaySession) -> bool:
    """Whether this session's prompts carry the summary (the config's and the chat's switch)."""
    return session.summary_config.enabled and session.chat.summary.enabled


def pending_turns(session: RoleplaySession) -> tuple[int, ...]:
    """The turns an update would summarise now; () when none is due (or the engine cannot)."""
    engine = session.engine
    side = getattr(engine, "side", None)
    if not summary_active(session) or side is None or not side.available:
        return ()
    cfg = session.summary_config
    with session.lock:
        built = session.build()
        return turns_to_summarise(session.chat.turns, built, session.chat.summary,
                                  min_turns=cfg.min_turns, chunk_turns=cfg.chunk_turns)


def update_summary(
    session: RoleplaySession, cancel: threading.Event | None = None, *, prefill: bool = False
) -> SummaryUpdate | None:
    """Bring the summary up to date when an update is due; None when none is.

    The chat lock is held only to read and to apply: a reply may start meanwhile, and then preempts
    the model. A summary whose turns or earlier summary changed while it was written is dropped.
    ``prefill`` then reads the next prompt (whose start the new summary changed) into the chat's cache,
    also preemptible, so the next reply evaluates only its own tail.
    """
    turns = pending_turns(session)
    if not turns:
        return None
    engine = session.engine
    assert engine is not None  # pending_turns checked the side sequence
    with session.lock:
        before = session.chat.summary
        request = _fit(session, turns, before.text)
        covered = [session.chat.turns[i] for i in request.turns]
    sampling = replace(SUMMARY_SAMPLING, max_tokens=max(16, session.summary_config.max_tokens))
    try:
        result: SideResult = engine.generate_aside(request.segments, sampling, request.stop, cancel)  # type: ignore[attr-defined]
    except RpchatError as e:
        return SummaryUpdate(False, request.turns, finish_reason="error", problem=e.problem)
    text = finish_summary(result.text) if result.finish_reason not in ("cancelled", "error") else ""
    update = SummaryUpdate(False, request.turns, text, result.prompt_tokens, result.tokens_generated,
                           result.seconds, result.finish_reason)
    if not text:
        return update
    with session.lock:
        chat = session.chat
        now = chat.summary
        stale = (now != before or len(chat.turns) <= request.turns[-1]
                 or any(chat.turns[i] is not t for i, t in zip(request.turns, covered, strict=True)))
        if stale:
            return update
        set_summary(session, StorySummary(text, request.turns[-1], now.pinned, now.enabled))
    update = replace(update, applied=True)
    if prefill and not (cancel is not None and cancel.is_set()):
        update = replace(update, prefilled=prefill_next(session, cancel))
    return update


def prefill_next(session: RoleplaySession, cancel: threading.Event | None = None) -> int:
    """Read the next reply's prompt into the chat's cache ahead of time (after its start changed), on the
    local engine, preempted by any reply; returns the tokens read (0 when there is no side sequence)."""
    engine = session.engine
    side = getattr(engine, "side", None)
    if side is None or not side.available:
        return 0
    from rpchat.engine.kvstate import chat_id, states_of

    states = states_of(engine)
    if states is not None:
        states.claim(chat_id(session.path))  # the cache now holds this chat: its state may be saved
    try:
        return int(side.prefill(engine, session.build().segments, cancel).prompt_tokens_evaluated)
    except RpchatError:
        return 0  # the next reply meets the same problem and reports it


def _fit(session: RoleplaySession, turns: tuple[int, ...], previous: str) -> SummaryRequest:
    """The request for as many of ``turns`` as fit the side sequence with the summary's room."""
    engine = session.engine
    cells = int(getattr(getattr(engine, "side", None), "cells", 0))
    room = cells - max(16, session.summary_config.max_tokens)
    chat = session.chat
    take = len(turns)
    while True:
        request = summary_request(session.fmt, session.card.display_name, session.persona.name, chat.turns,
                                  turns[:take], previous)
        if take == 1 or engine is None or sum(engine.count_tokens(s.text) for s in request.segments) <= room:
            return request
        take -= 1


def set_summary(session: RoleplaySession, value: StorySummary) -> None:
    """Store ``value`` as the chat's summary and save; on a failed save the chat is left as it was."""
    with session.change() as chat:
        chat.summary = value


def default_covers(session: RoleplaySession) -> int:
    """Which turn a summary the user writes by hand covers: the current one's, else the last turn out of
    the prompt, else the first turn."""
    summary = session.chat.summary
    if summary.covers >= 0:
        return summary.covers
    built = session.last_built
    return built.dropped[-1] if built is not None and built.dropped else 0


__all__ = ["SummaryUpdate", "pending_turns", "set_summary", "summary_active", "update_summary"]

"""The story-so-far summary: when to update it, and the request that has the model write it.

Turns leave the prompt in chunks (`rpchat.prompt.fitting`). Once at least ``min_turns`` of them have
fallen out past what the summary covers, the oldest ``chunk_turns`` of those are summarised
together with the earlier summary into a new one. Between updates the summary, and so the prompt's
start, stays byte-identical, and the engine's prefix cache keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rpchat.chat.model import StorySummary, Turn
from rpchat.prompt.builder import BuiltPrompt
from rpchat.prompt.formats import SUMMARY_VARS, PromptFormat, Template, parse_template
from rpchat.prompt.macros import clean_text
from rpchat.prompt.segments import Segment

# For a format without ``summary_prompt``: these paragraphs, each after the format's own header.
DEFAULT_REQUEST = (
    "Summarize the roleplay between {{char}} and {{user}} in a few sentences: past tense, third person, "
    "keeping names, places, what was promised or decided and what is still unresolved. When an earlier "
    "summary is given, continue it: keep what still matters from it and add the new events."
)


@dataclass(frozen=True)
class SummaryRequest:
    """A summarisation prompt and the turns it covers."""

    segments: tuple[Segment, ...]
    stop: tuple[str, ...]
    turns: tuple[int, ...]  # history indices summarised; the last is what the new summary covers


def turns_to_summarise(
    history: Sequence[Turn], built: BuiltPrompt, summary: StorySummary, *, min_turns: int, chunk_turns: int
) -> tuple[int, ...]:
    """The turns the next update should summarise, or () when no update is due.

    Due when the summary is on, not pinned, and at least ``min_turns`` turns left out of ``built``
    (hidden ones aside) lie past the turns it already covers; at most ``chunk_turns`` are taken.
    """
    if not summary.enabled or summary.pinned:
        return ()
    pending = [i for i in built.dropped if i > summary.covers and i < len(history) and not history[i].hidden]
    if len(pending) < max(1, min_turns):
        return ()
    return tuple(pending[: max(1, chunk_turns)])


def _paragraphs(fmt: PromptFormat) -> tuple[Template, ...]:
    if fmt.summary_prompt:
        return fmt.summary_prompt
    where = "default summary_prompt"
    texts = [
        *([fmt.preamble] if fmt.preamble else []),
        _headed(fmt.instruction_header, DEFAULT_REQUEST),
        "Earlier summary: {{summary}}",
        _headed(fmt.input_header, "{{messages}}"),
        _headed(fmt.response_header, "Summary:"),
    ]
    return tuple(parse_template(t, SUMMARY_VARS, where, fmt.name) for t in texts)


def _headed(header: str, text: str) -> str:
    return f"{header}\n{text}" if header else text


def summary_request(
    fmt: PromptFormat, char: str, user: str, history: Sequence[Turn], turns: Sequence[int], previous: str
) -> SummaryRequest:
    """The format's summarisation prompt for ``turns`` of ``history``, continuing ``previous``."""
    char = " ".join(char.split()) or "Character"
    user = " ".join(user.split()) or "User"
    lines = []
    for i in turns:
        turn = history[i]
        text = clean_text(turn.text, char, user)
        lines.append(text if turn.narrator else f"{user if turn.is_user else char}: {text}")
    values = {"char": char, "user": user, "summary": clean_text(previous, char, user), "messages": "\n".join(lines)}
    segments: list[Segment] = []
    for tpl in _paragraphs(fmt):
        if ("summary", True) in tpl and not values["summary"]:
            continue
        if segments:
            segments.append(Segment(fmt.block_separator, "template"))
        for text, is_var in tpl:
            # Names, the earlier summary and the chat are data: never parsed for control tokens.
            segments.append(Segment(values[text], "user") if is_var else Segment(text, "template"))
    # The format's headers end the summary; names do not (a summary may begin "Anna: ..." lines).
    headers = (fmt.input_header, fmt.instruction_header, fmt.response_header)
    stop = tuple(dict.fromkeys("\n" + h.strip() for h in headers if h.strip()))
    return SummaryRequest(tuple(s for s in segments if s.text), stop, tuple(turns))


def finish_summary(text: str) -> str:
    """The model's summary as one paragraph (list dashes dropped), ending at its last full sentence."""
    lines = [line.strip().removeprefix("- ").removeprefix("* ") for line in text.strip().split("\n\n")[0].split("\n")]
    text = " ".join(" ".join(lines).split())
    end = max(text.rfind(c) for c in ".!?\"*")
    return text[: end + 1] if end >= len(text) // 2 else text

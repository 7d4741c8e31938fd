"""What a lorebook entry costs when it starts firing, through the real engine's prefix reuse (tiny model):
at depth only the tokens after its insertion point are evaluated; at the top, the whole chat is."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpchat.cards.model import Card
from rpchat.chat.model import Chat
from rpchat.engine.base import Result, Sampling
from rpchat.engine.kvreuse import common_prefix
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.personas import Persona
from rpchat.prompt import BuiltPrompt, build_prompt, load_format
from rpchat.prompt.lorebook import parse_lorebook
from rpchat.prompt.segments import Segment

FMT = load_format("limarp-v3")
ADA = Card(name="Ada", description="An inventor who lives in a tower full of clocks.", scenario="A stormy night.")
THEO = Persona("Theo", "A sailor.")
LORE = "Every gear in the tower was cast from the bells of the drowned city."


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> LocalEngine:
    e = LocalEngine(LocalSettings(tiny_model, n_ctx=2048, n_threads=2))
    e.load()
    yield e
    e.close()


def chat() -> Chat:
    c = Chat.start("Ada", "Theo", ["The door creaks open."])
    for i in range(4):
        c.add(True, f"Theo looks around the room, counting the clocks ({i}).")
        c.add(False, f"Ada winds the nearest clock and smiles ({i}).")
    return c


def run(engine: LocalEngine, built: BuiltPrompt) -> Result:
    gen = engine.stream(list(built.segments), Sampling(temperature=0.0, max_tokens=2))
    for _ in gen:
        pass
    return gen.result


def before(built: BuiltPrompt, marker: str) -> list[Segment]:
    """The prompt's segments up to the first ``marker`` (the insertion point)."""
    left = built.text.index(marker)
    out: list[Segment] = []
    for s in built.segments:
        if left <= 0:
            break
        out.append(Segment(s.text[:left], s.kind))
        left -= len(s.text)
    return out


def starts_firing(engine: LocalEngine, entry: dict[str, object]) -> tuple[
        Result, BuiltPrompt]:
    """Evaluate a chat where the entry is quiet, then the next turn, whose message fires it."""
    book = parse_lorebook({"entries": {"0": {"uid": 0, "key": ["gear"], "content": LORE, **entry}}}, "w", "World")
    c = chat()
    quiet = build_prompt(FMT, ADA, THEO, c.turns, lorebook=book)
    assert LORE not in quiet.text
    run(engine, quiet)
    c.add(False, "Ada hands Theo a brass key.")
    c.add(True, "Theo turns the key over. Is that a gear on it?")
    firing = build_prompt(FMT, ADA, THEO, c.turns, lorebook=book)
    assert LORE in firing.text
    return run(engine, firing), firing


def test_an_entry_firing_at_depth_evaluates_only_what_follows_its_insertion_point(engine: LocalEngine) -> None:
    result, built = starts_firing(engine, {"position": 4, "depth": 2, "role": 0})
    full = engine.tokenize_prompt(list(built.segments))
    # The tokens after the insertion point: those the prompt does not share with its text before it.
    after = len(full) - common_prefix(full, engine.tokenize_prompt(before(built, "### Input:\n" + LORE)))
    assert result.prompt_tokens == len(full)
    assert result.prompt_tokens_evaluated <= after
    assert result.prompt_tokens_evaluated < len(full) // 3


def test_an_entry_firing_at_the_top_evaluates_the_whole_chat(engine: LocalEngine) -> None:
    depth, _ = starts_firing(engine, {"position": 4, "depth": 2, "role": 0})
    top, built = starts_firing(engine, {"position": 0})
    header = engine.tokenize_prompt([Segment("### Instruction:\n", "template")])
    assert built.text.startswith("### Instruction:\n" + LORE)
    assert top.prompt_tokens_evaluated >= top.prompt_tokens - len(header)
    assert top.prompt_tokens_evaluated > 3 * depth.prompt_tokens_evaluated

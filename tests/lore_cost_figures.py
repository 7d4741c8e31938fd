"""Tokens evaluated when a lore entry or the author's note starts showing, by placement (README figures).

The real engine's prefix reuse decides: a 26-message chat is evaluated, then the next turn, whose user
message holds the entry's key. ``python3 tests/lore_cost_figures.py [MODEL.gguf]`` (default: the demo model
in tests/.cache) prints a Markdown table. Seconds depend on the machine; the token counts do not.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rpchat.cards import load_card
from rpchat.chat.model import AuthorsNote, Chat
from rpchat.engine.base import Sampling
from rpchat.engine.llama import LocalEngine, LocalSettings
from rpchat.personas import Persona
from rpchat.prompt import BuiltPrompt, build_prompt, load_format
from rpchat.prompt.lorebook import parse_lorebook

HERE = Path(__file__).parent
LORE = "The glade's wards were woven by the first druids from moonlight and oak roots; they weaken in storms."
NOTE = AuthorsNote("Seraphina is tired; she speaks briefly.", interval=13)  # due at the 13th user message
CASES: list[tuple[str, dict[str, object], AuthorsNote | None]] = [
    ("new turn, no lore (reference)", {"key": ["nothing-matches"]}, None),
    ("entry fires at depth 0", {"position": 4, "depth": 0, "role": 0}, None),
    ("entry fires at depth 4 (ST's default)", {"position": 4, "depth": 4, "role": 0}, None),
    ("author's note comes due at depth 4", {"key": ["nothing-matches"]}, NOTE),
    ("entry fires after the character", {"position": 1}, None),
    ("entry fires before the character", {"position": 0}, None),
]


def chat(name: str, greeting: str) -> Chat:
    c = Chat.start(name, "Theo", [greeting])
    for i in range(12):
        c.add(True, f"Theo limps after her through the trees and asks about the path, the lanterns and the birds "
                    f"({i}). He keeps a hand on his knife, but his voice is calm and curious.")
        c.add(False, f"*Seraphina smiles and points at the old oaks ({i}).* \"The forest remembers everyone who "
                     "walks here. Stay close to me, keep to the moss, and do not touch the blue flowers.\"")
    return c


def run(engine: LocalEngine, built: BuiltPrompt) -> tuple[int, int, int, float]:
    start = time.perf_counter()
    gen = engine.stream(list(built.segments), Sampling(temperature=0.0, max_tokens=1))
    for _ in gen:
        pass
    r = gen.result
    return r.prompt_tokens, r.prompt_tokens_evaluated, r.prompt_tokens_reused, time.perf_counter() - start


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / ".cache" / "gemma-3-270m-q4_k_m.gguf"
    card = load_card(HERE / "fixtures" / "default_Seraphina.png")
    card.character_book = None
    fmt = load_format("limarp-v3")
    me = Persona("Theo", "A young sailor with a bad leg and a good memory.")
    engine = LocalEngine(LocalSettings(model, n_ctx=4096, n_threads=2))
    engine.load()
    print("| case | prompt tokens | evaluated | reused | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for label, entry, note in CASES:
        book = parse_lorebook({"entries": {"0": {"uid": 0, "key": ["wards"], "content": LORE, **entry}}}, "w")
        c = chat(card.name, card.first_mes)
        run(engine, build_prompt(fmt, card, me, c.turns, lorebook=book, note=note))
        c.add(False, "*She stops at the edge of the glade.* \"We are safe here. Rest.\"")
        c.add(True, "Theo sits on a root and looks at the shimmer in the air. Are those the wards?")
        n, evaluated, reused, secs = run(engine, build_prompt(fmt, card, me, c.turns, lorebook=book, note=note))
        print(f"| {label} | {n:,} | {evaluated:,} | {reused:,} | {secs:.2f} |", flush=True)
    engine.close()


if __name__ == "__main__":
    main()

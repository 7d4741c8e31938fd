"""SillyTavern world-info positions (before/after the character, the author's note, @depth with a role) and
the per-chat author's note, read from ST files, placed in the LimaRP prompt, kept in ST's chat metadata."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from session_support import make_card

from rpchat.cards.model import Card
from rpchat.chat.model import AuthorsNote, Chat, Turn
from rpchat.chat.store import load_chat, save_chat
from rpchat.personas import Persona
from rpchat.prompt import build_prompt, load_format
from rpchat.prompt.lorebook import load_lorebook, lorebook_from_card, parse_lorebook

FIXTURES = Path(__file__).parent / "fixtures"
THEO = Persona("Theo", "A sailor.")
ADA = Card(name="Ada", description="An inventor.", scenario="A workshop.")
V3 = load_format("limarp-v3")


def world(*entries: dict[str, Any]) -> Any:
    """A SillyTavern world-info file's data (entries keyed by uid, ST's field names)."""
    base = {"key": ["gear"], "keysecondary": [], "selective": True, "constant": True, "order": 100,
            "disable": False}
    return {"entries": {str(i): {"uid": i, **base, **e} for i, e in enumerate(entries)}}


def chat(*texts: str) -> list[Turn]:
    """Ada's greeting, then Theo and Ada by turns."""
    c = Chat.start("Ada", "Theo", ["Hello."])
    for i, text in enumerate(texts):
        c.add(i % 2 == 0, text)
    return c.turns


def prompt(history: list[Turn], data: Any = None, **kw: Any) -> str:
    lore = parse_lorebook(data, "test", "Test") if data is not None else None
    return build_prompt(V3, ADA, THEO, history, lorebook=lore, **kw).text


# --- reading positions --------------------------------------------------------------------------------------
def test_world_info_positions_depths_and_roles_are_read(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(world(
        {"content": "0", "position": 0}, {"content": "1", "position": 1}, {"content": "2", "position": 2},
        {"content": "3", "position": 3}, {"content": "4", "position": 4, "depth": 2, "role": 1},
        {"content": "5", "position": 5}, {"content": "6", "position": 6}, {"content": "7", "position": 7},
        {"content": "8", "position": 4, "depth": None, "role": None},
        {"content": "9", "position": 4, "depth": 7, "role": 2},
    )))
    book = load_lorebook(path)
    assert [(e.position, e.depth, e.role) for e in book.entries] == [
        ("before_char", 4, "system"), ("after_char", 4, "system"), ("an_top", 4, "system"),
        ("an_bottom", 4, "system"), ("at_depth", 2, "user"), ("em_top", 4, "system"),
        ("em_bottom", 4, "system"), ("outlet", 4, "system"), ("at_depth", 4, "system"),
        ("at_depth", 7, "assistant"),
    ]


def test_card_book_positions_follow_sillytaverns_extensions() -> None:
    card = Card(name="Ada", character_book={"entries": [
        # SillyTavern reads its extensions.position before the spec's before_char/after_char.
        {"keys": ["a"], "content": "A", "position": "before_char",
         "extensions": {"position": 4, "depth": 2, "role": 1}},
        {"keys": ["b"], "content": "B", "position": "before_char", "extensions": {}},
        {"keys": ["c"], "content": "C", "position": "after_char", "extensions": {"position": 3}},
        {"keys": ["d"], "content": "@@depth 3\n@@role assistant\nD"},
        {"keys": ["e"], "content": "E", "extensions": {"position": 4, "depth": -5, "role": 9}},
    ]})
    book = lorebook_from_card(card)
    assert book is not None
    assert [(e.position, e.depth, e.role, e.content) for e in book.entries] == [
        ("at_depth", 2, "user", "A"), ("before_char", 4, "system", "B"), ("an_bottom", 4, "system", "C"),
        ("at_depth", 3, "assistant", "D"), ("at_depth", 4, "system", "E"),
    ]


# --- placement in the prompt --------------------------------------------------------------------------------
HEAD = ("### Instruction:\nAda's Persona: An inventor.\n\nTheo's Persona: A sailor.\n\nScenario: A workshop.\n\n"
        "Play the role of Ada. You must engage in a roleplaying chat with Theo below this line. Do not write "
        "dialogues and narration for Theo.\n\n### Response:\nAda: Hello.\n\n")


def test_an_at_depth_entry_goes_into_the_chat_as_a_nameless_input_block() -> None:
    history = chat("I found a gear.", "Show me.", "Here it is.")
    lore = world({"content": "Gears are {{user}}'s passion.", "position": 4, "depth": 2, "role": 0})
    text = prompt(history, lore)
    assert text == HEAD + (
        "### Input:\nTheo: I found a gear.\n\n"
        "### Input:\nGears are Theo's passion.\n\n"  # two messages from the end, spoken by no one
        "### Response:\nAda: Show me.\n\n### Input:\nTheo: Here it is.\n\n### Response:\nAda:"
    )
    # Everything before the insertion point is what the prompt was without the entry.
    quiet = prompt(history)
    cut = text.index("### Input:\nGears")
    assert quiet[:cut] == text[:cut] and quiet[cut:].startswith("### Response:\nAda: Show me.")


def test_depth_roles_depth_zero_and_a_depth_past_the_chat() -> None:
    history = chat("A gear.", "Yes.", "Two gears.")
    lore = world(
        {"content": "As system.", "position": 4, "depth": 1, "role": 0, "order": 1},
        {"content": "As user.", "position": 4, "depth": 1, "role": 1},
        {"content": "As char.", "position": 4, "depth": 1, "role": 2},
        {"content": "Also system.", "position": 4, "depth": 1, "role": 0, "order": 2},
        {"content": "At the end.", "position": 4, "depth": 0},
        {"content": "At the start.", "position": 4, "depth": 50},
    )
    text = prompt(history, lore)
    assert text.endswith(
        "### Response:\nAda: Yes.\n\n"
        # One depth: the character's, the user's, then the system's message (SillyTavern's order);
        # entries of one depth and role make one message, in insertion order.
        "### Response:\nAda: As char.\n\n### Input:\nTheo: As user.\n\n### Input:\nAs system.\nAlso system.\n\n"
        "### Input:\nTheo: Two gears.\n\n### Input:\nAt the end.\n\n### Response:\nAda:"
    )
    assert "this line. Do not write dialogues and narration for Theo.\n\n### Input:\nAt the start.\n\n" \
           "### Response:\nAda: Hello." in text


def test_continue_never_splits_the_continued_message() -> None:
    history = chat("A gear.", "It spins")
    text = prompt(history, world({"content": "Gear lore.", "position": 4, "depth": 0}), mode="continue")
    assert text.endswith("### Input:\nTheo: A gear.\n\n### Input:\nGear lore.\n\n### Response:\nAda: It spins")


def test_hidden_turns_do_not_count_for_depth() -> None:
    history = chat("A gear.", "Yes.", "More gears.")
    history[2].hidden = True  # "Yes." is hidden from the AI
    text = prompt(history, world({"content": "Gear lore.", "position": 4, "depth": 2}))
    assert "Yes." not in text
    assert text.endswith("### Input:\nGear lore.\n\n### Input:\nTheo: A gear.\n\n### Input:\nTheo: More gears."
                         "\n\n### Response:\nAda:")


def test_example_positions_go_after_the_character_and_outlets_nowhere() -> None:
    lore = world({"content": "Top.", "position": 5}, {"content": "Bottom.", "position": 6},
                 {"content": "Outlet.", "position": 7})
    text = prompt(chat("gear"), lore)
    assert "Ada's Persona: An inventor.\n\nTop.\nBottom.\n\nTheo's Persona" in text and "Outlet." not in text


# --- the author's note --------------------------------------------------------------------------------------
def test_authors_note_at_depth_and_its_interval() -> None:
    history = chat("Hi.", "Hello, Theo.", "What now?")  # two user messages
    note = AuthorsNote("Keep {{char}} curious.", depth=1, interval=1)
    assert prompt(history, note=note).endswith(
        "### Response:\nAda: Hello, Theo.\n\n### Input:\nKeep Ada curious.\n\n### Input:\nTheo: What now?\n\n"
        "### Response:\nAda:")
    # Every N user messages (SillyTavern's rule): two user messages take an interval of 2, not 3.
    assert "Keep Ada curious." in prompt(history, note=AuthorsNote("Keep {{char}} curious.", interval=2))
    assert "Keep Ada curious." not in prompt(history, note=AuthorsNote("Keep {{char}} curious.", interval=3))
    assert "Keep Ada curious." not in prompt(history, note=AuthorsNote("Keep {{char}} curious.", interval=0))
    built = build_prompt(V3, ADA, THEO, history, note=AuthorsNote("N.", depth=1, role="assistant"))
    assert "### Response:\nAda: N.\n\n### Input:\nTheo: What now?" in built.text and built.note is not None


def test_authors_note_before_and_after_the_instruction() -> None:
    history = chat("Hi.")
    before = prompt(history, note=AuthorsNote("Slow burn.", position="before_instruction"))
    assert before.startswith("### Instruction:\nSlow burn.\n\nAda's Persona: An inventor.\n\n")
    after = prompt(history, note=AuthorsNote("Slow burn.", position="after_instruction"))
    assert "Do not write dialogues and narration for Theo.\n\nSlow burn.\n\n### Response:\nAda: Hello." in after


def test_authors_note_lore_entries_join_the_note() -> None:
    lore = world({"content": "AN top.", "position": 2}, {"content": "AN bottom.", "position": 3})
    history = chat("gear", "Yes.", "Ok.")
    text = prompt(history, lore, note=AuthorsNote("Note.", depth=2))
    assert "### Input:\nAN top.\nNote.\nAN bottom.\n\n### Response:\nAda: Yes." in text
    # Without a note of its own the chat uses SillyTavern's defaults: every time, depth 4, as the system.
    assert "### Input:\nAN top.\nAN bottom.\n\n### Response:\nAda: Hello." in prompt(history, lore)
    # When the note's interval leaves it out, its entries are left out too.
    assert "AN top." not in prompt(history, lore, note=AuthorsNote("Note.", interval=0))


def test_note_keys_are_sillytaverns_and_odd_values_read_as_defaults() -> None:
    c = Chat.start("Ada", "Theo", ["Hello."])
    assert c.note == AuthorsNote()
    c.note = AuthorsNote("Be brief.", depth=2, interval=3, position="before_instruction", role="user")
    assert {k: v for k, v in c.metadata.items() if k.startswith("note_")} == {
        "note_prompt": "Be brief.", "note_depth": 2, "note_interval": 3, "note_position": 2, "note_role": 1}
    c.metadata.update(note_prompt=5, note_depth=-1, note_interval="x", note_position=9, note_role=float("nan"))
    assert c.note == AuthorsNote()


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RPCHAT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "rpchat", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def test_note_from_a_sillytavern_chat_is_prompted_and_survives_import_and_export(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "kael.jsonl"
    shutil.copy(FIXTURES / "st_chat_kael.jsonl", src)
    loaded = load_chat(src)
    loaded.metadata.update(note_prompt="The wards are failing.", note_interval=1, note_depth=1, note_position=1,
                           note_role=0)
    save_chat(loaded, src)
    res = run(home, "chat", "import", str(src), "--card", str(FIXTURES / "default_Seraphina.png"))
    assert res.returncode == 0, res.stderr
    (imported,) = (home).rglob("chats/*/*.jsonl")
    shown = run(home, "prompt", str(FIXTURES / "default_Seraphina.png"), "--chat", str(imported))
    assert shown.returncode == 0, shown.stderr
    # One message from the end: just before the user's last message.
    assert "### Input:\nThe wards are failing.\n\n### Input:\nKael:" in shown.stdout
    out = tmp_path / "out.jsonl"
    res = run(home, "chat", "export", str(imported), str(out))
    assert res.returncode == 0, res.stderr
    meta = json.loads(out.read_text(encoding="utf-8").splitlines()[0])["chat_metadata"]
    assert {k: meta[k] for k in ("note_prompt", "note_interval", "note_depth", "note_position", "note_role")} == {
        "note_prompt": "The wards are failing.", "note_interval": 1, "note_depth": 1, "note_position": 1,
        "note_role": 0}


def test_reply_note_flags_set_the_note_in_the_chat_file(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "home"
    card = make_card(tmp_path)
    path = tmp_path / "chat.jsonl"
    common = ["reply", str(card), "--chat", str(path), "--model", str(tiny_model), "--preset", "deterministic",
              "--max-new", "2", "--n-ctx", "512"]
    res = run(home, *common, "--say", "Hi.", "--note", "Mention the {{char}}'s lamp.", "--note-depth", "0")
    assert res.returncode == 0, res.stderr
    note = load_chat(path).note
    assert (note.text, note.depth, note.interval) == ("Mention the {{char}}'s lamp.", 0, 1)
    res = run(home, *common, "--say", "And?", "--note-interval", "2")
    assert res.returncode == 0, res.stderr
    assert load_chat(path).note == AuthorsNote("Mention the {{char}}'s lamp.", depth=0, interval=2)
    shown = run(home, "prompt", str(card), "--chat", str(path))
    assert shown.stdout.endswith("### Input:\nMention the Marisol's lamp.\n\n### Response: (length = medium)\n"
                                 "Marisol:")
    bad = run(home, *common, "--say", "x", "--note-depth", "-3")
    assert bad.returncode == 2 and "note-depth" in bad.stderr and "Traceback" not in bad.stderr


def test_an_insertion_stays_at_its_depth_when_old_turns_are_cut_to_fit() -> None:
    history = chat(*[f"Message {i} " + "word " * 30 for i in range(20)])
    lore = world({"content": "Depth lore.", "position": 4, "depth": 3})

    def count(text: str) -> int:
        return len(text.split())
    built = build_prompt(V3, ADA, THEO, history, lorebook=parse_lorebook(lore, "t"), counter=count, n_ctx=400,
                         max_new=50)
    assert built.dropped and built.n_tokens is not None and built.n_tokens <= 350
    assert built.n_tokens == count(built.text)
    blocks = built.text.split("\n\n### ")
    assert blocks[-5] == "Input:\nDepth lore."  # then three messages and the reply header

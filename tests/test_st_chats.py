"""SillyTavern chats mean here what they mean in SillyTavern: hidden messages, narration, the user's name,
one way to open a chat for the app, `rpchat reply` and `rpchat prompt`, and where `rpchat chat import` files a chat.

The chat fixture (fixtures/st_chat_kael.jsonl) is written the way SillyTavern 1.12 writes one: a message hidden
with /hide (``is_system: true``), a /sys narrator message (``extra.type: "narrator"``, name "System") and a
user who plays Kael.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from session_support import make_card, write_world

from rpchat.cards import load_card
from rpchat.cards.library import list_cards
from rpchat.chat.library import ChatEntry, export_st_chat, list_chats
from rpchat.chat.store import load_chat
from rpchat.config import Config, save_config
from rpchat.errors import ChatError
from rpchat.paths import profile
from rpchat.personas import Persona, PersonaBook
from rpchat.prompt import build_prompt, load_format
from rpchat.session import open_chat_session

FIXTURES = Path(__file__).parent / "fixtures"
SERAPHINA = FIXTURES / "default_Seraphina.png"
KAEL_CHAT = FIXTURES / "st_chat_kael.jsonl"
HIDDEN = "three silver moons"
NARRATION = "A storm rolls over the glade; the wards flicker."


def run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RPCHAT_HOME": str(home / "home")}
    return subprocess.run([sys.executable, "-m", "rpchat", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def kael_chat(home: Path) -> Path:
    path = home / "kael.jsonl"
    shutil.copy(KAEL_CHAT, path)
    return path


# --- the prompt builder ------------------------------------------------------------------------------------
def test_hidden_messages_never_reach_the_prompt_or_the_lorebook_scan() -> None:
    chat = load_chat(KAEL_CHAT)
    card = load_card(SERAPHINA)
    card.character_book = {"entries": [{"keys": ["silver moons"], "content": "Moons are coins.", "enabled": True,
                                        "insertion_order": 100}]}
    built = build_prompt(load_format("limarp-v3"), card, Persona("Kael"), chat.turns)
    assert HIDDEN not in built.text and "OOC" not in built.text
    assert built.lore_fired == ()  # the key is only in the hidden message
    assert chat.turns[2].hidden and HIDDEN in chat.turns[2].text  # still in the chat
    # What stays is the rest of the conversation, in order.
    assert "Kael: *I sit up slowly.* Where am I?\n\n### Input:\n" + NARRATION in built.text


def test_narration_is_a_nameless_input_block_never_the_characters_words() -> None:
    chat = load_chat(KAEL_CHAT)
    built = build_prompt(load_format("limarp-v3"), load_card(SERAPHINA), Persona("Kael"), chat.turns,
                         card_lorebook=False)
    assert built.text.endswith(
        "### Input:\nKael: *I sit up slowly.* Where am I?\n\n"
        f"### Input:\n{NARRATION}\n\n"
        "### Input:\nKael: *I look up at the sky.* Is that your doing?\n\n"
        "### Response:\nSeraphina:"
    )
    assert "System:" not in built.text and f"Seraphina: {NARRATION}" not in built.text


def test_a_chat_ending_in_narration_or_a_hidden_reply_has_nothing_to_continue() -> None:
    fmt, card = load_format("limarp-v3"), load_card(SERAPHINA)
    turns = load_chat(KAEL_CHAT).turns
    with pytest.raises(ChatError, match="nothing to continue"):
        build_prompt(fmt, card, Persona("Kael"), turns[:4], mode="continue")  # ends with the narration
    with pytest.raises(ChatError, match="nothing to continue"):
        build_prompt(fmt, card, Persona("Kael"), turns[:3], mode="continue")  # ends with the hidden reply


def test_context_cut_reports_chat_indices_around_hidden_turns() -> None:
    chat = load_chat(KAEL_CHAT)
    for i in range(30):
        chat.add(i % 2 == 0, f"message {i} " + "words " * 30)
    for i in range(6, len(chat.turns), 3):
        chat.turns[i].hidden = True
    built = build_prompt(load_format("limarp-v3"), load_card(SERAPHINA), Persona("Kael"), chat.turns,
                         counter=len, n_ctx=5000, card_lorebook=False)
    assert built.dropped and built.first_kept is not None
    assert not any(chat.turns[i].hidden for i in built.dropped)
    assert not chat.turns[built.first_kept].hidden
    # The first kept turn is the first message after the instruction block.
    first_block = built.text.split("\n\n### ")[1]
    assert chat.turns[built.first_kept].text.strip() in first_block


# --- opening a chat: the user's name --------------------------------------------------------------------------
def test_an_imported_chat_is_played_prompted_and_continued_as_its_user_name(tmp_path: Path) -> None:
    path = kael_chat(tmp_path)
    session = open_chat_session(SERAPHINA, path, config=Config(), personas=PersonaBook())
    assert session.persona.name == "Kael"
    built = session.build()
    assert "Kael: *I look up at the sky.*" in built.text and "User:" not in built.text
    assert "chat with Kael below this line" in built.text
    assert "\nKael:" in built.stop and not any("User" in s for s in built.stop)
    session.send("*I shiver.*")
    saved = load_chat(path)
    assert saved.turns[-1].name == "Kael" and saved.user_name == "Kael"


@pytest.mark.parametrize("header", [
    {"user_name": "unused", "character_name": "unused", "chat_metadata": {}},  # as SillyTavern tools write it
    {"chat_metadata": {}},  # no names at all
])
def test_a_header_without_real_names_takes_them_from_the_messages(tmp_path: Path, header: dict[str, object]) -> None:
    """A header whose names are SillyTavern's "unused" placeholder (or missing) must not make the user
    "unused" (or "User") when every user turn says Kael."""
    path = tmp_path / "kael.jsonl"
    lines = KAEL_CHAT.read_text(encoding="utf-8").splitlines()
    narration = {"name": "System", "is_user": False, "mes": "Night falls.", "extra": {"type": "narrator"}}
    path.write_text("\n".join([json.dumps(header), json.dumps(narration), *lines[1:]]) + "\n", encoding="utf-8")
    chat = load_chat(path)
    assert (chat.user_name, chat.character_name) == ("Kael", "Seraphina")
    session = open_chat_session(SERAPHINA, path, config=Config(), personas=PersonaBook())
    built = session.build()
    assert "chat with Kael below this line" in built.text and "unused" not in built.text
    assert "\nKael:" in built.stop


def test_the_chat_user_name_picks_the_persona_of_that_name(tmp_path: Path) -> None:
    book = PersonaBook(personas=[Persona("User"), Persona("Kael", "A ranger with a limp.")], default="User")
    session = open_chat_session(SERAPHINA, kael_chat(tmp_path), config=Config(), personas=book)
    assert session.persona == Persona("Kael", "A ranger with a limp.")
    assert "Kael's Persona: A ranger with a limp." in session.build().text


def test_picking_a_persona_renames_the_users_turns_in_the_file_and_the_export(tmp_path: Path) -> None:
    path = kael_chat(tmp_path)
    session = open_chat_session(SERAPHINA, path, config=Config(), personas=PersonaBook())
    session.set_persona(Persona("Theo", "A castaway."))
    session.send("Hello?")
    saved = load_chat(path)
    assert saved.user_name == "Theo"
    assert [t.name for t in saved.turns if t.is_user] == ["Theo", "Theo", "Theo"]
    assert [t.name for t in saved.turns if not t.is_user] == ["Seraphina", "Seraphina", "System"]
    out = tmp_path / "export.jsonl"
    export_st_chat(saved, out)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["user_name"] == "Theo" and "rpchat" not in lines[0]["chat_metadata"]
    assert {x["name"] for x in lines[1:] if x["is_user"]} == {"Theo"}
    # Reopened, the chat is still Theo's, prompted as Theo.
    again = open_chat_session(SERAPHINA, path, config=Config(), personas=PersonaBook())
    assert again.persona.name == "Theo" and "\nTheo:" in again.build().stop


def test_hiding_a_turn_is_saved_as_sillytavern_does_and_leaves_the_prompt(tmp_path: Path) -> None:
    path = kael_chat(tmp_path)
    session = open_chat_session(SERAPHINA, path, config=Config(), personas=PersonaBook())
    assert "Where am I?" in session.build().text
    session.set_hidden(1, True)
    assert "Where am I?" not in session.build().text
    raw = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert raw[2]["is_system"] is True and raw[3]["is_system"] is True  # line 0 is the header
    session.set_hidden(2, False)
    assert HIDDEN in session.build().text
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[3])["is_system"] is False


def test_regenerate_and_swipes_leave_narration_and_hidden_turns_alone(tmp_path: Path) -> None:
    session = open_chat_session(SERAPHINA, kael_chat(tmp_path), config=Config(), personas=PersonaBook())
    del session.chat.turns[4:]  # the chat now ends with the narration
    assert session.last_reply_index() is None and session.swipe(1) == "none"
    del session.chat.turns[3:]  # ... now with the hidden reply
    assert session.last_reply_index() is None and session.swipe(1) == "none"


# --- `rpchat prompt` prints what the app and `rpchat reply` send ----------------------------------------------
def _chat_with_settings(home: Path) -> Path:
    """A chat opened the way the app opens it, then given a persona, scenario, length and a world."""
    PersonaBook(personas=[Persona("User"), Persona("Theo", "A castaway who lost his ship.")],
                default="User").save(profile().personas_file)
    save_config(profile(), Config(default_length="short"))
    card = make_card(home)
    session = open_chat_session(card)
    session.set_persona(PersonaBook.load().get("Theo"))
    session.set_scenario("A storm traps {{user}} in the lighthouse.")
    session.set_length("huge")
    session.attach_world(write_world(home / "gull.json"))
    session.send("Tell me about the lighthouse.")
    return session.path


def test_prompt_for_a_chat_is_exactly_what_the_session_sends(tmp_path: Path) -> None:
    path = _chat_with_settings(tmp_path)
    expected = open_chat_session(make_card(tmp_path), path).build().text
    assert "Theo's Persona: A castaway who lost his ship." in expected
    assert "Scenario: A storm traps Theo in the lighthouse." in expected
    assert "built in 1887" in expected  # the attached world fired
    assert expected.endswith("### Input:\nTheo: Tell me about the lighthouse.\n\n### Response: (length = huge)\nMarisol:")
    before = path.read_bytes()
    res = run(["prompt", str(make_card(tmp_path)), "--chat", str(path)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected
    assert path.read_bytes() == before  # printing a prompt changes nothing


def test_prompt_flags_override_the_chats_settings_for_that_prompt_only(tmp_path: Path) -> None:
    path = _chat_with_settings(tmp_path)
    before = path.read_bytes()
    res = run(["prompt", str(make_card(tmp_path)), "--chat", str(path), "--length", "none", "--user", "Ana",
               "--persona", "A lighthouse inspector.", "--scenario", "Noon.", "--no-lore"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("### Input:\nAna: Tell me about the lighthouse.\n\n### Response:\nMarisol:")
    assert "Ana's Persona: A lighthouse inspector." in res.stdout and "Scenario: Noon." in res.stdout
    assert path.read_bytes() == before


def test_prompt_without_a_chat_is_a_new_chats_first_prompt(tmp_path: Path) -> None:
    save_config(profile(), Config(default_length="short"))
    res = run(["prompt", str(SERAPHINA), "--no-lore"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("### Response: (length = short)\nSeraphina:")
    assert not profile().chats_dir.exists()  # nothing was saved


def test_prompt_of_the_st_chat_uses_kael_and_leaves_hidden_text_out(tmp_path: Path) -> None:
    res = run(["prompt", str(SERAPHINA), "--chat", str(KAEL_CHAT), "--no-lore"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert HIDDEN not in res.stdout and "User:" not in res.stdout
    assert res.stdout.endswith("### Input:\nKael: *I look up at the sky.* Is that your doing?\n\n"
                               "### Response:\nSeraphina:")


# --- `rpchat chat import` files a chat where the library shows it ------------------------------------------------
def card_chats(name: str) -> list[ChatEntry]:
    """The chats the library lists under its card called ``name``."""
    (card,) = [c for c in list_cards() if c.name == name]
    return list_chats(card.path, card.name)


def test_chat_import_without_its_card_in_the_library_refuses_and_says_how(tmp_path: Path) -> None:
    res = run(["chat", "import", str(KAEL_CHAT)], tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpchat: error: ")
    assert "Seraphina" in lines[0] and "--card" in lines[0]
    assert not profile().chats_dir.exists()


def test_chat_import_with_a_card_file_adds_the_card_and_files_the_chat_under_it(tmp_path: Path) -> None:
    res = run(["chat", "import", str(KAEL_CHAT), "--card", str(SERAPHINA)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "card Seraphina added to the library" in res.stderr and "pick Seraphina" in res.stderr
    entries = card_chats("Seraphina")
    assert len(entries) == 1 and str(entries[0].path) in res.stderr
    assert [p.suffix for p in profile().cards_dir.iterdir()] == [".png"]
    # A second import finds the card in the library by name now, and adds no second card.
    res = run(["chat", "import", str(KAEL_CHAT)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "added" not in res.stderr
    assert len(card_chats("Seraphina")) == 2 and len(list(profile().cards_dir.iterdir())) == 1


def test_chat_import_under_another_library_card_by_name(tmp_path: Path) -> None:
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, "Marisol")
    res = run(["chat", "import", str(KAEL_CHAT), "--card", "marisol"], tmp_path)
    assert res.returncode == 0, res.stderr
    (entry,) = card_chats("Marisol")
    chat = load_chat(entry.path)
    assert chat.character_name == "Marisol"
    assert [t.name for t in chat.turns] == ["Marisol", "Kael", "Marisol", "System", "Kael"]
    res = run(["chat", "import", str(KAEL_CHAT), "--card", "Nobody"], tmp_path)
    assert res.returncode == 2 and "Nobody" in res.stderr and "Traceback" not in res.stderr

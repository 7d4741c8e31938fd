"""Group chats end to end: `rpchat group`, `rpchat reply --group`, the group session on the tiny model,
SillyTavern group files in and out, and salvage of a damaged group chat."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from session_support import make_card

from rpchat.chat.model import Turn
from rpchat.chat.store import load_chat
from rpchat.cli import main
from rpchat.engine.factory import make_engine
from rpchat.errors import ChatError
from rpchat.group.library import chat_path, find_group, groups_dir
from rpchat.group.model import load_group
from rpchat.group.turns import Member, natural_order
from rpchat.paths import profile
from rpchat.session import RoleplaySession, open_chat_session

NAME = "Marisol"


def _oskar(talk: str = "0.5") -> Path:
    return make_card(profile().cards_dir, "Oskar", description="{{char}} rows the ferry.",
                     first_mes="*Oskar waves from his boat.*", alternate_greetings=[],
                     extensions={"talkativeness": talk})


def _group(capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    _oskar()
    assert main(["group", "new", "Island", "Marisol", "oskar.png", *extra]) == 0
    capsys.readouterr()
    return find_group("Island")


def _session(engine: bool = True) -> RoleplaySession:
    from rpchat.config import load_config

    config = load_config(profile())
    eng = make_engine(config) if engine else None
    if eng is not None:
        eng.load()
    s = open_chat_session(None, config=config, engine=eng, group="Island")
    assert s.cast is not None
    return s


def test_group_new_writes_a_sillytavern_group_and_a_chat_opening_with_each_greeting(home, capsys) -> None:
    path = _group(capsys)
    raw = json.loads(path.read_text())
    assert path.parent == groups_dir() and path.name == f"{raw['id']}.json"
    assert raw["members"] == ["marisol.png", "oskar.png"]
    assert raw["activation_strategy"] == 0 and raw["disabled_members"] == [] and raw["chats"] == [raw["chat_id"]]
    s = _session(engine=False)
    chat = load_chat(chat_path(raw["chat_id"]))
    assert [(t.name, t.unknown["original_avatar"]) for t in chat.turns] == [
        ("Marisol", "marisol.png"), ("Oskar", "oskar.png")]
    assert chat.turns[0].swipes[1] == '"Another one from the sea," she sighs.'  # alternate greetings as swipes
    assert s.path == chat_path(raw["chat_id"])


def test_group_new_needs_two_cards_and_names_a_missing_one(home, capsys) -> None:
    assert main(["group", "new", "Solo", "Marisol"]) == 2
    assert "two or more" in capsys.readouterr().err
    assert main(["group", "new", "Duo", "Marisol", "Nobody"]) == 2
    err = capsys.readouterr().err
    assert "no card 'Nobody'" in err and len(err.strip().splitlines()) == 1


def _member(name: str, talk: float) -> Member:
    from rpchat.cards.model import Card

    return Member(f"{name.lower()}.png", Card(name=name), name, talk)


def test_natural_order_follows_sillytavern() -> None:
    marisol, oskar = _member("Marisol", 0.0), _member("Oskar", 0.0)
    said = Turn(True, "Theo", ["Row us across, OSKAR!"])
    # Named in the last message: that member, whatever the dice say.
    assert natural_order([marisol, oskar], said, rng=random.Random(1)) == [oskar]
    # Nobody named and nobody talkative: one member at random, never nobody.
    quiet = Turn(True, "Theo", ["Hello?"])
    assert len(natural_order([marisol, oskar], quiet, rng=random.Random(2))) == 1
    # Talkativeness 1 always speaks; the one who spoke last is skipped unless self-responses are allowed.
    chatty = _member("Marisol", 1.0)
    after_her = Turn(False, "Marisol", ["Tea?"])
    assert natural_order([chatty, _member("Oskar", 1.0)], after_her, rng=random.Random(3)) == [_member("Oskar", 1.0)]
    both = natural_order([chatty, _member("Oskar", 1.0)], after_her, allow_self=True, rng=random.Random(3))
    assert sorted(m.name for m in both) == ["Marisol", "Oskar"]


def test_reply_group_natural_mention_speaks_first_and_saves_the_speaker(home, capsys) -> None:
    _oskar("0")
    card = profile().cards_dir / "marisol.png"
    from rpchat.cards import load_card, save_card

    quiet = load_card(card)
    quiet.extensions["talkativeness"] = "0"
    save_card(quiet, card)
    assert main(["group", "new", "Island", "Marisol", "Oskar"]) == 0
    assert main(["reply", "--group", "Island", "--say", "Oskar, are you there?", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("Oskar: ")
    chat = load_chat(chat_path(load_group(find_group("Island")).chat_id))
    assert chat.turns[-1].name == "Oskar" and chat.turns[-1].unknown["original_avatar"] == "oskar.png"
    assert chat.turns[-2].text == "Oskar, are you there?"


def test_round_robin_lets_every_unmuted_member_speak_in_order(home, capsys) -> None:
    make_card(profile().cards_dir, "Wren", first_mes="", alternate_greetings=[])
    _group(capsys, "wren.png", "--order", "round-robin")
    assert main(["group", "mute", "Island", "wren"]) == 0
    assert main(["reply", "--group", "Island", "--say", "Hi all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[-2:]] == ["Marisol", "Oskar"]
    chat = load_chat(chat_path(load_group(find_group("Island")).chat_id))
    assert [t.name for t in chat.turns[-3:]] == ["User", "Marisol", "Oskar"]
    assert load_group(find_group("Island")).disabled_members == ["wren.png"]


def test_manual_turns_wait_for_a_speaker_and_the_user_may_pass(home, capsys) -> None:
    _group(capsys, "--order", "manual")
    assert main(["reply", "--group", "Island", "--say", "Anyone?"]) == 2
    assert "--speaker" in capsys.readouterr().err
    assert [t.name for t in load_chat(chat_path(load_group(find_group("Island")).chat_id)).turns] == [
        "Marisol", "Oskar"]  # refused before anything was sent
    assert main(["reply", "--group", "Island", "--say", "Anyone?", "--speaker", "Nobody"]) == 2
    assert "not in group Island" in capsys.readouterr().err
    assert main(["reply", "--group", "Island", "--say", "Anyone?", "--speaker", "oskar"]) == 0
    # Passing the turn (no --say): the picked member speaks on.
    assert main(["reply", "--group", "Island", "--speaker", "Marisol"]) == 0
    chat = load_chat(chat_path(load_group(find_group("Island")).chat_id))
    assert [t.name for t in chat.turns[-3:]] == ["User", "Oskar", "Marisol"]
    assert main(["prompt", "--group", "Island", "--speaker", "Marisol"]) == 0
    prompt = capsys.readouterr().out
    assert prompt.endswith("### Response: (length = medium)\nMarisol:")
    assert "Play the roles of Marisol and Oskar." in prompt


def test_swipe_and_continue_use_the_member_who_wrote_the_message(home, capsys) -> None:
    _group(capsys)
    s = _session()
    try:
        s.send("Tell me about the ferry.")
        s.reply(lambda _: None, speaker="Oskar")
        assert s.last_built is not None and s.last_built.text.endswith("Oskar:")
        assert "\nMarisol:" in s.last_built.stop and "\nUser:" in s.last_built.stop
        assert s.swipe(+1) == "generate"
        s.speak_as("Marisol")  # whoever was picked last, the swipe is Oskar's
        s.reply(lambda _: None, mode="regenerate")
        turn = s.chat.turns[-1]
        assert (turn.name, len(turn.swipes), turn.swipe_id) == ("Oskar", 2, 1)
        assert s.last_built.text.endswith("Oskar:")
        assert s.swipe(-1) == "moved" and s.chat.turns[-1].swipe_id == 0
        first = turn.swipes[0]
        s.reply(lambda _: None, mode="continue")
        assert s.last_built.text.endswith("Oskar: " + first)
        assert s.chat.turns[-1].swipes[0].startswith(first)
        on_disk = load_chat(s.path).turns[-1]
        assert on_disk.name == "Oskar" and len(on_disk.swipes) == 2
    finally:
        s.close()


def test_edit_delete_and_branch_work_per_message(home, capsys) -> None:
    _group(capsys)
    s = _session(engine=False)
    s.edit(1, "*Oskar ties up the boat.*")
    assert load_chat(s.path).turns[1].text == "*Oskar ties up the boat.*"
    branch = s.branch(0)
    assert branch.cast is not None
    group = load_group(find_group("Island"))
    assert group.chat_id == branch.path.stem and branch.path.stem in group.chats and len(group.chats) == 2
    assert [t.name for t in load_chat(branch.path).turns] == ["Marisol"]
    s.delete(1)
    assert [t.name for t in load_chat(s.path).turns] == ["Marisol"]


def test_members_join_and_leave_during_the_chat(home, capsys) -> None:
    _group(capsys)
    make_card(profile().cards_dir, "Wren", first_mes="", alternate_greetings=[])
    s = _session(engine=False)
    with s.change():
        wren = s.cast.add_member("Wren")
    assert load_group(s.cast.group_file).members == ["marisol.png", "oskar.png", "wren.png"]
    assert "Wren's Persona" in s.build().text
    with s.change():
        s.cast.set_muted(wren, True)
    built = s.build()
    assert "Wren's Persona" not in built.text and "\nWren:" in built.stop
    with s.change():
        s.cast.remove_member(wren)
    assert load_group(s.cast.group_file).members == ["marisol.png", "oskar.png"]
    with pytest.raises(ChatError, match="at least two"), s.change():
        s.cast.remove_member(s.cast.member("Oskar"))
    assert main(["group", "remove", "Island", "Nobody"]) == 2
    assert "not in group Island" in capsys.readouterr().err


def _st_data(tmp: Path) -> Path:
    """A SillyTavern data folder as an older SillyTavern writes it: the group chat has no header line and
    its metadata sits in the group file."""
    data = tmp / "st"
    chars = data / "characters"
    chars.mkdir(parents=True)
    make_card(chars, "Marisol")
    shutil.copy(Path(__file__).parent / "fixtures" / "default_Seraphina.png", chars / "default_Seraphina.png")
    group = {
        "id": "1718000000000", "name": "Forest", "members": ["marisol.png", "default_Seraphina.png"],
        "avatar_url": "img/ai4.png", "allow_self_responses": False, "activation_strategy": 1,
        "generation_mode": 0, "disabled_members": [], "chat_metadata": {"note_prompt": "It is raining."},
        "fav": False, "chat_id": "2024-06-10@12h00m00s", "chats": ["2024-06-10@12h00m00s"],
        "auto_mode_delay": 5, "generation_mode_join_prefix": "", "generation_mode_join_suffix": "",
        "past_metadata": {}, "hideMutedSprites": True,
    }
    (data / "groups").mkdir()
    (data / "groups" / "1718000000000.json").write_text(json.dumps(group, indent=4))
    lines = [
        {"name": "Marisol", "is_user": False, "is_system": False, "send_date": "June 10, 2024 12:00pm",
         "mes": "Up you get.", "original_avatar": "marisol.png", "extra": {"gen_id": 1},
         "force_avatar": "/thumbnail?type=avatar&file=marisol.png", "swipes": ["Up you get."], "swipe_id": 0},
        {"name": "You", "is_user": True, "send_date": "June 10, 2024 12:01pm", "mes": "Hello Seraphina",
         "extra": {}},
        {"name": "Seraphina", "is_user": False, "send_date": "June 10, 2024 12:02pm", "mes": "*smiles*",
         "original_avatar": "default_Seraphina.png", "extra": {}, "swipes": ["*smiles*", "*nods*"], "swipe_id": 0},
    ]
    (data / "group chats").mkdir()
    (data / "group chats" / "2024-06-10@12h00m00s.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return data


def test_sillytavern_group_import_and_export_round_trip(home, capsys, tmp_path) -> None:
    src = _st_data(tmp_path)
    assert main(["group", "import", str(src)]) == 0
    capsys.readouterr()
    group = load_group(find_group("Forest"))
    assert group.strategy_name == "round-robin" and group.members == ["marisol.png", "default_Seraphina.png"]
    s = _session_for("Forest")
    assert [t.name for t in s.chat.turns] == ["Marisol", "You", "Seraphina"]
    assert s.chat.note.text == "It is raining."  # the old group file's chat metadata came along
    assert s.cast.author(s.chat.turns[2]) is s.cast.member("Seraphina")
    assert "Seraphina's Persona" in s.build().text
    out = tmp_path / "out"
    assert main(["group", "export", "Forest", str(out), "--cards"]) == 0
    # the group file, its chat and both member cards
    assert f"wrote 4 file(s) under {out}" in capsys.readouterr().out
    exported = json.loads((out / "groups" / "1718000000000.json").read_text())
    original = json.loads((src / "groups" / "1718000000000.json").read_text())
    assert exported == original
    chat = load_chat(out / "group chats" / "2024-06-10@12h00m00s.jsonl")
    assert [(t.name, t.swipes, t.unknown.get("original_avatar")) for t in chat.turns] == [
        ("Marisol", ["Up you get."], "marisol.png"), ("You", ["Hello Seraphina"], None),
        ("Seraphina", ["*smiles*", "*nods*"], "default_Seraphina.png")]
    assert "rpchat" not in chat.metadata
    assert (out / "characters" / "default_Seraphina.png").read_bytes() == (
        src / "characters" / "default_Seraphina.png").read_bytes()


def _session_for(name: str) -> RoleplaySession:
    s = open_chat_session(None, engine=None, group=name)
    assert s.cast is not None
    return s


def test_a_damaged_group_chat_keeps_every_readable_line(home, capsys) -> None:
    _group(capsys)
    s = _session(engine=False)
    s.send("first")
    s.send("second")
    lines = s.path.read_bytes().split(b"\n")
    lines[3] = b'{"name": "User", "is_user": tru'
    s.path.write_bytes(b"\n".join(lines))
    again = _session(engine=False)
    assert [t.text for t in again.chat.turns][-1] == "second"
    assert "line 4" in again.chat.warnings[0]
    assert list(s.path.parent.glob("*.corrupt-*.jsonl"))


def test_a_renamed_card_stays_a_member_and_keeps_its_messages(home, capsys) -> None:
    from rpchat.cards import load_card
    from rpchat.chat.library import rename_card
    from rpchat.group.library import rename_member

    path = _group(capsys)
    s = _session(engine=False)
    card = load_card(profile().cards_dir / "oskar.png")
    card.name = "Oskar Lund"
    new = rename_card(card, profile().cards_dir / "oskar.png", "Oskar")
    rename_member("oskar.png", new.name)  # what the card editor does after a rename
    assert load_group(path).members == ["marisol.png", new.name]
    chat = load_chat(s.path)
    assert chat.turns[1].unknown["original_avatar"] == new.name
    s.cast.reload()
    s.reload_chat()
    assert s.cast.author(s.chat.turns[1]) is s.cast.member("Oskar Lund")


def test_each_members_greeting_swipes_through_its_alternates(home, capsys) -> None:
    make_card(profile().cards_dir, "Oskar", first_mes="*Oskar waves.*", alternate_greetings=["*Oskar nods.*"])
    assert main(["group", "new", "Island", "Marisol", "oskar.png"]) == 0
    s = _session(engine=False)
    assert s.swipe(+1) == "moved" and s.chat.turns[-1].text == "*Oskar nods.*"
    assert s.swipe(+1) == "moved" and s.chat.turns[-1].text == "*Oskar waves.*"  # wraps, never generates
    assert load_chat(s.path).turns[-1].swipe_id == 0


def test_import_never_reads_outside_the_data_folder(home, capsys, tmp_path) -> None:
    src = _st_data(tmp_path)
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"user_name":"x","character_name":"y"}\n{"name":"x","is_user":true,"mes":"private"}')
    group_file = src / "groups" / "1718000000000.json"
    data = json.loads(group_file.read_text())
    data["chats"].append("../../secret")
    data["members"].append("../../secret.png")
    group_file.write_text(json.dumps(data))
    assert main(["group", "import", str(src)]) == 0
    err = capsys.readouterr().err
    assert "'../../secret' is not a file name" in err and "'../../secret.png' is not a card file name" in err
    assert not any("private" in p.read_text() for p in (profile().data_dir / "group chats").glob("*.jsonl"))

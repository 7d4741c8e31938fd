"""SIGKILL `rpchat reply` and a card-save loop 20 times at random moments; nothing saved may be lost.

The figures for 100+ kills come from ``python3 tests/crash_harness.py --runs 100``.
"""

from __future__ import annotations

import json
import random

import pytest
from crash_harness import (
    calibrate,
    check_chat,
    make_world,
    race,
    run_card_loop,
    run_reply,
    temp_files,
    turn_lines,
)

from rpchat.cards import Card, list_cards, load_card, save_card
from rpchat.chat import ChatStore


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("crash"))


def test_killed_replies_keep_every_saved_turn(world):
    rng = random.Random(5)
    chat = world.chats / "kills.jsonl"
    full_s = calibrate(world, chat)
    modes = ["timer", "generation", "save"] * 4 + ["generation", "timer"]  # 14 kills
    outcomes = [run_reply(world, chat, f"Message {i}.", mode, rng, full_s) for i, mode in enumerate(modes)]
    problems = [(o.mode, o.check) for o in outcomes if not o.check.intact or o.check.lost or o.check.detail]
    assert not problems
    killed = [o for o in outcomes if o.killed]
    assert len(killed) >= 11  # a timer may fire after a run ended; the rest are real kills
    assert any(o.check.phase == "generating" for o in killed), "no kill landed mid-generation"
    # Every user message of a run that got as far as saving it is still there, in order.
    said = [t["mes"] for t in turn_lines(chat) if t["is_user"]]
    expected = ["Hello there."] + [f"Message {i}." for i, o in enumerate(outcomes) if o.check.phase != "startup"]
    assert said == expected
    # The next open removes whatever temp file a killed save left, and keeps nothing aside as corrupt.
    ChatStore(chat).open()
    assert temp_files(world.chats) == []
    assert list(world.chats.glob("*.corrupt-*")) == []


def test_killed_card_saves_leave_a_whole_card(world):
    rng = random.Random(6)
    card = world.root / "cards" / "loop.png"
    save_card(Card(name="Loop", description="revision 0"), card)
    outcomes = [run_card_loop(world, card, rng, mode) for mode in ("timer", "save") * 3]  # 6 kills
    assert all(o.killed for o in outcomes)
    assert [o.detail for o in outcomes if not o.intact] == []
    assert load_card(card).name == "Loop"
    assert outcomes[-1].found >= outcomes[0].found  # saves went on between kills; none went back


def test_card_temp_files_do_not_pile_up(world, tmp_path):
    folder = tmp_path / "cards"
    card = folder / "loop.png"
    save_card(Card(name="Loop", description="revision 0"), card)
    rng = random.Random(7)
    for _ in range(10):
        run_card_loop(world, card, rng, "save")  # killed before or just after the rename
        if temp_files(folder):
            break
    assert temp_files(folder), "no kill left a temp file to clean"
    # The next look at the folder (the library) and the next save are where a cleanup would run.
    list_cards([(folder, False)])
    save_card(load_card(card), card)
    assert temp_files(folder) == []


@pytest.mark.parametrize("delay_s", [0.0, 1.0])
def test_two_processes_on_one_chat_lose_nothing_silently(world, delay_s):
    outcome = race(world, world.chats / f"race-{delay_s}.jsonl", delay_s, seed=int(delay_s * 10))
    assert outcome.silently_lost == []
    assert outcome.lost_before == 0
    # The runs overlap, so one of them must have been stopped and told where its version went.
    assert any(outcome.told.values()), outcome


def test_the_checker_notices_a_lost_or_changed_turn(world, tmp_path):
    chat = tmp_path / "c.jsonl"
    calibrate(world, chat)
    before = turn_lines(chat)
    lines = chat.read_bytes().split(b"\n")
    chat.write_bytes(b"\n".join(lines[:-1]))  # drop the last turn
    assert check_chat(before, chat, "x").lost == 1
    edited = json.loads(lines[1])
    edited["mes"] = "changed"
    chat.write_bytes(b"\n".join([lines[0], json.dumps(edited).encode(), *lines[2:]]))
    assert check_chat(before, chat, "x").lost == 1
    chat.write_bytes(b"\n".join(lines)[:-5] + b"\xff")
    assert check_chat(before, chat, "x").lost >= 1

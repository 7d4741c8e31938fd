"""The prompt builder: paragraphs, macros, cleaning, segments, stop strings and modes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpchat.cards.model import Card
from rpchat.chat.model import Chat, Turn
from rpchat.errors import ChatError, ConfigError
from rpchat.personas import Persona
from rpchat.prompt import build_prompt, load_format


def _turns(*pairs: tuple[bool, str], card: Card | None = None) -> list[Turn]:
    card = card or CARD
    chat = Chat.start(card.name, "Theo", card.greetings)
    for is_user, text in pairs:
        chat.add(is_user, text)
    return chat.turns


CARD = Card(name="Ada", description="A clockwork inventor.", first_mes="Hello there.")
THEO = Persona("Theo", "")
V3 = "limarp-v3"


def test_persona_paragraph_omitted_when_empty() -> None:
    text = build_prompt(load_format(V3), CARD, THEO, _turns((True, "Hi"))).text
    assert text == (
        "### Instruction:\n"
        "Ada's Persona: A clockwork inventor.\n\n"
        "Play the role of Ada. You must engage in a roleplaying chat with Theo below this line. "
        "Do not write dialogues and narration for Theo.\n\n"
        "### Response:\nAda: Hello there.\n\n"
        "### Input:\nTheo: Hi\n\n"
        "### Response:\nAda:"
    )


def test_whitespace_only_persona_is_empty() -> None:
    text = build_prompt(load_format(V3), CARD, Persona("Theo", "  \r\n "), _turns()).text
    assert "Theo's Persona" not in text


def test_scenario_override_and_card_scenario() -> None:
    card = Card(name="Ada", description="d", scenario="In the workshop.")
    fmt = load_format(V3)
    assert "\n\nScenario: In the workshop.\n\n" in build_prompt(fmt, card, THEO, []).text
    over = build_prompt(fmt, card, THEO, [], scenario="On the airship with {{user}}.").text
    assert "\n\nScenario: On the airship with Theo.\n\n" in over
    assert "workshop" not in over
    # An explicit empty override removes the scenario paragraph.
    assert "Scenario:" not in build_prompt(fmt, card, THEO, [], scenario="").text


def test_personality_on_its_own_line_and_alone() -> None:
    fmt = load_format(V3)
    both = Card(name="Ada", description="Inventor.", personality="curious")
    assert "Ada's Persona: Inventor.\ncurious\n\n" in build_prompt(fmt, both, THEO, []).text
    only = Card(name="Ada", personality="curious")
    assert "Ada's Persona: curious\n\n" in build_prompt(fmt, only, THEO, []).text
    neither = Card(name="Ada")
    assert "Persona" not in build_prompt(fmt, neither, THEO, []).text


def test_macros_in_card_persona_and_chat() -> None:
    card = Card(
        name="Ada",
        description="{{char}} builds gears for {{USER}}. <BOT> likes <USER>. {{ Char }}!",
        first_mes="Hi {{user}}, I am {{char}}.",
    )
    persona = Persona("Theo", "{{user}} admires {{char}}.")
    text = build_prompt(load_format(V3), card, persona, _turns((True, "I'm {{user}}."), card=card)).text
    assert "Ada's Persona: Ada builds gears for Theo. Ada likes Theo. Ada!\n" in text
    assert "Theo's Persona: Theo admires Ada.\n" in text
    assert "Ada: Hi Theo, I am Ada.\n" in text
    assert "Theo: I'm Theo.\n" in text
    assert "{{" not in text and "<BOT>" not in text


def test_macro_expansion_is_one_pass() -> None:
    # A persona named like a macro stays as typed; it is not expanded a second time.
    persona = Persona("{{char}}", "I am {{user}}.")
    text = build_prompt(load_format(V3), CARD, persona, []).text
    assert "{{char}}'s Persona: I am {{char}}." in text


def test_nickname_is_the_display_name() -> None:
    card = Card(name="Ada Lovelace", nickname="Ada", description="{{char}} computes.")
    text = build_prompt(load_format(V3), card, THEO, []).text
    assert "Ada's Persona: Ada computes." in text
    assert text.endswith("### Response:\nAda:")


def test_crlf_and_trimming() -> None:
    card = Card(name="Ada", description="  Line one.\r\nLine two.\r\n\r\n", first_mes="\r\n  Hello.\r\n  ")
    turns = _turns((True, "   first\r\nsecond   \n\n"), card=card)
    text = build_prompt(load_format(V3), card, THEO, turns).text
    assert "\r" not in text
    assert "Ada's Persona: Line one.\nLine two.\n\n" in text
    assert "### Response:\nAda: Hello.\n\n### Input:\nTheo: first\nsecond\n\n### Response:\nAda:" in text


def test_segments_tag_user_text() -> None:
    card = Card(name="Ada</s>", description="<|im_end|> desc", first_mes="<start_of_turn>hi")
    persona = Persona("Theo", "p")
    built = build_prompt(load_format(V3), card, persona, _turns((True, "a </s> b"), card=card), length="short")
    template = "".join(s.text for s in built.segments if s.kind == "template")
    user = [s.text for s in built.segments if s.kind == "user"]
    for token in ("</s>", "<|im_end|>", "<start_of_turn>"):
        assert token not in template
    assert "a </s> b" in user
    assert "Ada</s>" in user and "Theo" in user
    assert "### Response: (length = short)\n" in template
    assert "".join(s.text for s in built.segments) == built.text
    # Neighbouring segments of the same kind are merged.
    assert all(a.kind != b.kind for a, b in zip(built.segments, built.segments[1:]))


def test_length_goes_on_the_last_header_only_and_earlier_text_is_stable() -> None:
    fmt = load_format(V3)
    turns = _turns((True, "one"), (False, "two"), (True, "three"))
    first = build_prompt(fmt, CARD, THEO, turns[:2], length="medium").text
    second = build_prompt(fmt, CARD, THEO, turns, length="medium").text
    assert second.count("(length = medium)") == 1
    stable = first[: first.rindex("### Response: (length = medium)")]
    assert second.startswith(stable)


def test_unknown_length_and_mode() -> None:
    with pytest.raises(ConfigError, match="unknown length 'gigantic'"):
        build_prompt(load_format(V3), CARD, THEO, [], length="gigantic")
    # limamono was trained up to "huge".
    with pytest.raises(ConfigError):
        build_prompt(load_format("limamono"), CARD, THEO, [], length="unlimited")
    with pytest.raises(ValueError):
        build_prompt(load_format(V3), CARD, THEO, [], mode="sing")


def test_limamono_input_length_on_input_headers() -> None:
    turns = _turns((True, "a"), (False, "b"), (True, "c"))
    text = build_prompt(load_format("limamono"), CARD, THEO, turns, input_length="short").text
    assert text.count("### Input: (length = short)\nTheo:") == 2
    assert text.endswith("### Input: (length = short)\nTheo: c\n### Response:\nAda:")
    # LimaRP v3 takes no input modifier: it is left out.
    limarp = build_prompt(load_format(V3), CARD, THEO, turns, input_length="short").text
    assert "(length" not in limarp


def test_limamono_has_no_blank_lines() -> None:
    persona = Persona("Theo", "a sailor")
    turns = _turns((True, "a"), (False, "b"))
    text = build_prompt(load_format("limamono"), Card(name="Ada", description="d", scenario="s"), persona, turns).text
    assert "\n\n" not in text
    assert text.splitlines()[1:4] == ["### Instruction:", "Ada", "d"]
    # Limamono was trained without a user persona paragraph.
    assert "a sailor" not in text


def test_continue_mode_ends_with_the_unfinished_message() -> None:
    fmt = load_format(V3)
    turns = _turns((True, "Tell me a story."), (False, "  Once upon a time, "))
    built = build_prompt(fmt, CARD, THEO, turns, mode="continue", length="long")
    assert built.text.endswith("### Input:\nTheo: Tell me a story.\n\n### Response: (length = long)\nAda: Once upon a time, ")
    assert built.stop[-1] == "\nTheo:"
    reply = build_prompt(fmt, CARD, THEO, turns[:-1], length="long").text
    assert built.text.startswith(reply)


def test_continue_needs_a_character_message() -> None:
    with pytest.raises(ChatError):
        build_prompt(load_format(V3), CARD, THEO, _turns((True, "hi")), mode="continue")
    with pytest.raises(ChatError):
        build_prompt(load_format(V3), CARD, THEO, [], mode="continue")


def test_impersonate_mode() -> None:
    turns = _turns((True, "hi"), (False, "hello"))
    built = build_prompt(load_format(V3), CARD, THEO, turns, mode="impersonate", length="medium")
    assert built.text.endswith("### Response:\nAda: hello\n\n### Input:\nTheo:")
    assert "(length" not in built.text
    assert built.stop == ("\n### Input", "\n### Response", "\n### Instruction", "\nAda:")
    mono = build_prompt(load_format("limamono"), CARD, THEO, turns, mode="impersonate", input_length="tiny")
    assert mono.text.endswith("Ada: hello\n### Input: (length = tiny)\nTheo:")


def test_no_greeting_and_empty_message() -> None:
    card = Card(name="Ada", description="d")
    fmt = load_format(V3)
    assert build_prompt(fmt, card, THEO, []).text.endswith("Theo.\n\n### Response:\nAda:")
    chat = Chat(user_name="Theo", character_name="Ada")
    chat.add(True, "   ")
    assert build_prompt(fmt, card, THEO, chat.turns).text.endswith("### Input:\nTheo:\n\n### Response:\nAda:")


def test_selected_swipe_is_used() -> None:
    card = Card(name="Ada", description="d", first_mes="first", alternate_greetings=["second"])
    turns = _turns(card=card)
    turns[0].swipe_id = 1
    assert "Ada: second" in build_prompt(load_format(V3), card, THEO, turns).text


def test_user_format_with_greeting_in_instruction(tmp_path) -> None:
    folder = tmp_path / "home" / "config" / "formats"
    folder.mkdir(parents=True)
    shipped = load_format(V3).source
    assert shipped is not None
    text = shipped.read_text().replace(
        '  - "Scenario: {{scenario}}"', '  - "Scenario: {{scenario}}"\n  - "First message: {{greeting}}"'
    )
    (folder / "greet.yaml").write_text(text)
    built = build_prompt(load_format("greet"), CARD, THEO, _turns((True, "hi")))
    assert "First message: Hello there.\n\nPlay the role" in built.text
    assert "### Response:\nAda: Hello there." not in built.text
    assert built.text.endswith("### Input:\nTheo: hi\n\n### Response:\nAda:")


def test_names_are_one_line() -> None:
    card = Card(name="Ada\nLovelace", description="d")
    built = build_prompt(load_format(V3), card, Persona("  Theo \n Sailor ", ""), [])
    assert "Ada Lovelace's Persona: d" in built.text
    assert built.text.endswith("Ada Lovelace:")
    assert built.stop[-1] == "\nTheo Sailor:"


def test_damaged_swipe_id_does_not_fail() -> None:
    turns = _turns((True, "hi"), (False, "reply"))
    turns[-1].swipe_id = 7
    assert "Ada: reply\n" in build_prompt(load_format(V3), CARD, THEO, turns).text


_PIECES = [*"ab \n\r\t{}<>/|:#", "</s>", "<|im_end|>", "{{char}}", "<USER>", "### Input:"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=20).map("".join)


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.tuples(st.booleans(), _TEXT), max_size=8),
    description=_TEXT,
    persona=_TEXT,
    fmt_name=st.sampled_from(["limarp-v3", "limarp-v3-mixtral", "limamono"]),
)
def test_any_chat_builds_with_user_text_tagged(messages, description, persona, fmt_name) -> None:
    card = Card(name="Ada", description=description, first_mes="Hello.")
    turns = _turns(*messages, card=card)
    built = build_prompt(load_format(fmt_name), card, Persona("Theo", persona), turns, length="short")
    assert "".join(s.text for s in built.segments) == built.text
    assert "\r" not in built.text
    assert built.text.endswith("### Response: (length = short)\nAda:")
    template = "".join(s.text for s in built.segments if s.kind == "template")
    assert "</s>" not in template and "<|im_end|>" not in template and "{{" not in template

"""SillyTavern import as a user does it: `rpchat presets|formats import FILE`, then the lists and flags.

Real SillyTavern files (tests/fixtures/st_*.json); the prompt an imported Alpaca-Roleplay builds is
compared with the one SillyTavern's documented instruct-mode assembly gives for the same card and chat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rpchat.cards import save_card
from rpchat.cards.model import Card
from rpchat.chat.model import Chat
from rpchat.cli import main
from rpchat.engine.presets import load_preset
from rpchat.paths import profile
from rpchat.personas import Persona
from rpchat.prompt import build_prompt, load_format

FIXTURES = Path(__file__).resolve().parent / "fixtures"
UNIVERSAL_LIGHT = FIXTURES / "st_textgen_Universal-Light.json"
ALPACA_I, ALPACA_C = FIXTURES / "st_instruct_Alpaca.json", FIXTURES / "st_context_Alpaca.json"
RP_I, RP_C = FIXTURES / "st_instruct_Alpaca-Roleplay.json", FIXTURES / "st_context_Alpaca-Roleplay.json"
SERAPHINA = FIXTURES / "default_Seraphina.png"

CARD = Card(name="Ada", description="A clockwork inventor.", personality="curious",
            scenario="In the workshop.", first_mes="Hello there.")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def chat_with_hi() -> Chat:
    chat = Chat.start("Ada", "Theo", CARD.greetings)
    chat.add(True, "Hi")
    return chat


# --- sampler presets -------------------------------------------------------------------------------


def test_presets_import_saves_a_yaml_preset_named_after_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "presets", "import", str(UNIVERSAL_LIGHT))
    assert code == 0, err
    path = profile().user_presets_dir / "st_textgen_universal-light.yaml"
    assert path.is_file() and str(path) in out
    s = load_preset("st_textgen_universal-light").sampling
    assert (s.temperature, s.min_p, s.top_k, s.top_p, s.temperature_last) == (1.25, 0.1, 0, 1.0, False)
    # The settings rpchat does not apply are named once, in one note, not silently dropped.
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "samplers" in notes[0] and "sampler_order" in notes[0]

    code, out, _ = cli(capsys, "presets")
    line = next(line for line in out.splitlines() if line.startswith("st_textgen_universal-light "))
    assert "user" in line.split() and "Universal-Light.json" in line
    assert "built-in" in next(line for line in out.splitlines() if line.startswith("neutral "))


def test_presets_import_lists_unknown_samplers_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(UNIVERSAL_LIGHT.read_text())
    data.update(top_a=0.2, my_new_sampler=True)
    src = tmp_path / "Odd.json"
    src.write_text(json.dumps(data))
    code, out, _ = cli(capsys, "presets", "import", str(src))
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "top_a=0.2" in notes[0] and "my_new_sampler=true" in notes[0]
    assert "top_a" in load_preset("odd").description  # and kept with the preset


def test_imported_preset_is_used_by_reply(tiny_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RPCHAT_HOME": str(tmp_path / "home")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rpchat", *args], capture_output=True, text=True, env=env,
                              timeout=300, check=False)

    card = tmp_path / "ada.json"
    save_card(CARD, card)
    reply = ["reply", str(card), "--chat", str(tmp_path / "c.jsonl"), "--say", "Hi", "--model",
             str(tiny_model), "--max-new", "4", "--n-ctx", "512", "--preset", "universal-light"]
    before = run(*reply)
    assert before.returncode == 2 and "no sampler preset named 'universal-light'" in before.stderr
    src = tmp_path / "Universal-Light.json"
    src.write_bytes(UNIVERSAL_LIGHT.read_bytes())
    assert run("presets", "import", str(src)).returncode == 0
    after = run(*reply)
    assert after.returncode == 0, after.stderr


def test_import_never_hides_a_builtin_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "Neutral.json"
    src.write_bytes(UNIVERSAL_LIGHT.read_bytes())
    code, out, _ = cli(capsys, "presets", "import", str(src))
    assert code == 0
    assert "'neutral-st'" in out and "built-in sampler preset 'neutral' keeps its name" in out
    assert load_preset("neutral").sampling.temperature == 1.0  # the built-in is untouched
    assert load_preset("neutral-st").sampling.temperature == 1.25


@pytest.mark.parametrize(("name", "saved"), [("../../evil", "evil"), ("a/b\\c", "a-b-c"), ("..", None),
                                             ("con", None), ("NUL.x", None)])
def test_imported_names_stay_in_the_folder(
    name: str, saved: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "presets", "import", str(UNIVERSAL_LIGHT), "--name", name)
    folder = profile().user_presets_dir
    if saved is None:
        assert code == 2 and err.startswith("rpchat: error: ") and len(err.strip().splitlines()) == 1
    else:
        assert code == 0, err
        assert (folder / f"{saved}.yaml").is_file()
    written = [p for p in tmp_path.rglob("*.yaml")]
    assert all(p.parent == folder for p in written)


def test_json_dropped_in_the_presets_folder_is_loaded_or_reported(capsys: pytest.CaptureFixture[str]) -> None:
    folder = profile().user_presets_dir
    folder.mkdir(parents=True)
    (folder / "Light.json").write_bytes(UNIVERSAL_LIGHT.read_bytes())
    (folder / "broken.json").write_text('{"temp": "hot"}')
    (folder / "readme.txt").write_text("my presets")
    code, out, err = cli(capsys, "presets")
    assert code == 0
    assert any(line.startswith("light ") for line in out.splitlines())
    assert load_preset("light").sampling.temperature == 1.25
    warnings = err.strip().splitlines()
    assert len(warnings) == 2
    assert any("broken.json" in w and "temperature" in w for w in warnings)
    assert any("readme.txt" in w and "ignored" in w for w in warnings)


# --- prompt formats --------------------------------------------------------------------------------


def test_formats_import_alpaca_roleplay_builds_what_sillytavern_sends(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "formats", "import", str(RP_I), str(RP_C), "--name", "Alpaca-Roleplay")
    assert code == 0, err
    assert (profile().user_formats_dir / "alpaca-roleplay.yaml").is_file()
    text = build_prompt(load_format("alpaca-roleplay"), CARD, Persona("Theo", "A sailor."), chat_with_hi().turns)
    # SillyTavern: the story string (Handlebars, {{#if}} blocks), the chat start line, each message as
    # sequence + "\n" + "Name: text" + "\n\n" ("always" names), the last one's final newline dropped, then
    # "\n" + last_output_sequence + "\n" + "Ada:".
    assert text.text == (
        "You're Ada in this fictional never-ending uncensored roleplay with Theo.\n\n"
        "Develop the plot slowly, always stay in character. Describe all actions in full, elaborate, explicit, "
        "graphic, and vivid detail. Mention all relevant sensory perceptions.\n\n"
        "### Input:\n"
        "A clockwork inventor.\n"
        "Ada's personality: curious\n"
        "Scenario: In the workshop.\n"
        "A sailor.\n"
        "\n\n"
        "### New Roleplay:\n"
        "### Response:\nAda: Hello there.\n\n"
        "### Instruction:\nTheo: Hi\n\n"
        "### Response (2 paragraphs, engaging, natural, authentic, descriptive, creative):\nAda:"
    )
    assert "\n### Instruction:" in text.stop and "\nTheo:" in text.stop
    # What the format cannot say is named once.
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "system_sequence" in notes[0]


def test_alpaca_without_names_and_empty_fields_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "formats", "import", str(ALPACA_I), str(ALPACA_C), "--name", "alpaca")[0] == 0
    card = Card(name="Ada", description="A clockwork inventor.", first_mes="Hello there.")
    chat = Chat.start("Ada", "Theo", card.greetings)
    chat.add(True, "Hi")
    text = build_prompt(load_format("alpaca"), card, Persona("Theo", ""), chat.turns).text
    # names_behavior "force" shows no names in a one-to-one chat; no personality/scenario/persona lines.
    assert text == (
        "A clockwork inventor.\n\n\n"
        "### Response:\nHello there.\n\n"
        "### Instruction:\nHi\n\n"
        "### Response:\n"
    )


def test_context_alone_is_sillytavern_plain_chat(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "formats", "import", str(ALPACA_C), "--name", "plain")[0] == 0
    text = build_prompt(load_format("plain"), CARD, Persona("Theo", ""), chat_with_hi().turns).text
    assert text.endswith("Scenario: In the workshop.\n\n\nAda: Hello there.\nTheo: Hi\nAda:")


def test_prompt_command_uses_an_imported_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "formats", "import", str(RP_I), str(RP_C))[0] == 0
    code, out, _ = cli(capsys, "formats")
    line = next(line for line in out.splitlines() if line.startswith("st_instruct_alpaca-roleplay "))
    assert "user" in line.split()
    code, out, err = cli(capsys, "prompt", str(SERAPHINA), "--user", "Theo", "--format", "st_instruct_alpaca-roleplay")
    assert code == 0, err
    assert out.startswith("You're Seraphina in this fictional never-ending uncensored roleplay with Theo.")
    assert out.endswith("### Response (2 paragraphs, engaging, natural, authentic, descriptive, creative):\n"
                        "Seraphina:")


def test_format_import_of_non_templates_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for content in ('{"temp": 1}', "[1]", "{nope", '{"story_string": "{{#each x}}{{/each}}"}'):
        src = tmp_path / "x.json"
        src.write_text(content)
        code, _, err = cli(capsys, "formats", "import", str(src))
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(src) in err, err
    assert not profile().user_formats_dir.exists()


def test_format_import_never_hides_a_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "formats", "import", str(RP_I), str(RP_C), "--name", "limarp-v3")
    assert code == 0 and "'limarp-v3-st'" in out and "keeps its name" in out
    assert load_format("limarp-v3").instruction_header == "### Instruction:"


def test_json_dropped_in_the_formats_folder_is_loaded_or_reported(capsys: pytest.CaptureFixture[str]) -> None:
    folder = profile().user_formats_dir
    folder.mkdir(parents=True)
    (folder / "alpaca.json").write_bytes(ALPACA_I.read_bytes())
    (folder / "textgen.json").write_bytes(UNIVERSAL_LIGHT.read_bytes())
    (folder / "bad name!.yaml").write_text("x: 1")
    code, out, err = cli(capsys, "formats")
    assert code == 0
    assert any(line.startswith("alpaca ") for line in out.splitlines())
    assert load_format("alpaca").input_header == "### Instruction:"
    warnings = err.strip().splitlines()
    assert len(warnings) == 2
    assert any("bad name!.yaml" in w and "ignored" in w for w in warnings)
    assert any("textgen.json" in w and "not a SillyTavern instruct or context template" in w for w in warnings)


def test_a_format_without_lengths_shows_none_and_offers_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rpchat.session import open_chat_session

    assert cli(capsys, "formats", "import", str(RP_I), str(RP_C), "--name", "rp")[0] == 0
    card = tmp_path / "ada.json"
    save_card(CARD, card)
    # config.yaml's default length (medium) means nothing to a format that places no length.
    session = open_chat_session(card, tmp_path / "c.jsonl", format_name="rp", create_missing=True)
    try:
        assert session.chat.length == "medium"
        assert session.length is None and session.lengths == (None,)
        assert session.cycle_length() is None
    finally:
        session.close()

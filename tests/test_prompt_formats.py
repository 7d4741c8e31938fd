"""Prompt formats as YAML data: shipped ones, user overrides and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpchat.errors import ConfigError
from rpchat.prompt import list_formats, load_format, load_formats
from rpchat.prompt.formats import SHIPPED_DIR


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "home" / "config" / "formats"
    folder.mkdir(parents=True)
    return folder


def _shipped(name: str) -> str:
    return (SHIPPED_DIR / f"{name}.yaml").read_text(encoding="utf-8")


def test_shipped_formats_load() -> None:
    assert {"limarp-v3", "limarp-v3-mixtral", "limamono"} <= set(list_formats())
    mono = load_format("limamono")
    assert mono.preamble and mono.preamble.startswith("Below is an instruction")
    assert mono.block_separator == "\n" and mono.input_length
    assert mono.lengths[-1] == "huge"
    v3 = load_format("limarp-v3")
    assert v3.block_separator == "\n\n" and not v3.input_length and v3.preamble is None
    assert v3.lengths == (
        "micro", "tiny", "short", "medium", "long", "massive", "huge", "enormous", "humongous", "unlimited",
    )
    assert not v3.greeting_in_instruction


def test_user_format_overrides_and_adds(user_dir: Path) -> None:
    (user_dir / "limarp-v3.yaml").write_text(_shipped("limarp-v3").replace("Play the role of", "Be"))
    (user_dir / "mine.yaml").write_text(_shipped("limamono"))
    assert "mine" in list_formats()
    assert load_format("limarp-v3").source == user_dir / "limarp-v3.yaml"
    assert load_format("mine").name == "mine"
    formats, errors = load_formats()
    assert errors == [] and {"mine", "limarp-v3", "limamono"} <= set(formats)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t + "\nbogus: 1\n", "unknown key 'bogus'"),
        (lambda t: t.replace("{{scenario}}", "{{scenery}}"), "unknown variable {{scenery}}"),
        (lambda t: t.replace('input_header: "### Input:"\n', ""), "missing 'input_header'"),
        (lambda t: t.replace('block_separator: "\\n\\n"', "block_separator: [1]"), "'block_separator' must be str"),
        (lambda t: t.replace('message: "{{name}}: {{message}}"', 'message: "{{name}}:"'), "must contain {{message}}"),
        (lambda t: "instruction: [unclosed\n", "invalid YAML"),
        (lambda t: "- just\n- a list\n", "must be a mapping"),
        (lambda t: "x: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
        (lambda t: "a: &a [1]\nb: *a\n", "aliases"),
    ],
)
def test_bad_user_format(user_dir: Path, change, problem: str) -> None:
    path = user_dir / "broken.yaml"
    path.write_text(change(_shipped("limarp-v3")))
    with pytest.raises(ConfigError) as info:
        load_format("broken")
    assert problem in str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    formats, errors = load_formats()
    assert "broken" not in formats and "limarp-v3" in formats
    assert len(errors) == 1 and str(path) in str(errors[0])


def test_broken_override_falls_back_to_shipped(user_dir: Path) -> None:
    (user_dir / "limamono.yaml").write_text("stop: 5\n")
    with pytest.raises(ConfigError):
        load_format("limamono")
    formats, errors = load_formats()
    assert len(errors) == 1
    assert formats["limamono"].source == SHIPPED_DIR / "limamono.yaml"


def test_not_utf8_format(user_dir: Path) -> None:
    (user_dir / "latin.yaml").write_bytes(b"description: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_format("latin")


@pytest.mark.parametrize("name", ["nope", "../etc/passwd", "", ".hidden", "a/b"])
def test_unknown_or_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        load_format(name)

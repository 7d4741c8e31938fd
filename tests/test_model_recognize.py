"""A model's GGUF metadata picks its prompt format, preset, stops and starting length (issue 11, part 1).

Each seed model is a tiny GGUF carrying the names its real GGUF files carry, in the way the converters of
their time wrote them (llama.cpp's convert.py put a name in general.name; newer ones split basename,
finetune and base_model.N.*). Sessions are opened through `open_chat_session`
and the CLI, as the app and `rpchat reply` open them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from session_support import make_card
from tinymodel import write_tiny_model

from rpchat.config import Config, EngineConfig, save_config
from rpchat.paths import profile
from rpchat.session import open_chat_session

ALPACA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}"
    "\n\n### Response:\n{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"

# (file name, metadata, expected format, preset, starting length)
SEEDS = {
    "000 Mixtral LimaRP-ZLoss (TheBloke-style name)": (
        "mixtral-8x7b-instruct-v0.1-limarp-zloss.Q4_K_M.gguf",
        {"general.name": "doctor-shotgun_mixtral-8x7b-instruct-v0.1-limarp-zloss"},
        "limarp-v3-mixtral", "limarp-zloss-mixtral", "medium",
    ),
    "002 ZephRP-m7b": (
        "zephrp-m7b.Q5_K_M.gguf", {"general.name": "ZephRP-m7b"}, "limarp-v3", "ashhlimarp", "medium",
    ),
    "003 AshhLimaRP, generic name, file name fallback": (
        "AshhLimaRP-Mistral-7B.Q4_K_M.gguf", {"general.name": "LLaMA v2"}, "limarp-v3", "ashhlimarp", "medium",
    ),
    "004 Limamono, split metadata": (
        "model-q6.gguf",
        {"general.name": "Limamono Mistral 7B v0.50", "general.basename": "Limamono-Mistral",
         "general.size_label": "7B", "general.base_model.0.name": "Mistral 7B v0.1"},
        "limamono", "limamono", "long",
    ),
    "004 Limamono, named only by its finetune": (
        "m.gguf", {"general.name": "Mistral 7B", "general.finetune": "limamono-v0.50"}, "limamono", "limamono", "long",
    ),
}


def _model(folder: Path, file: str, metadata: dict[str, str]) -> Path:
    return write_tiny_model(folder / file, metadata=metadata, n_layer=1)


@pytest.mark.parametrize("seed", list(SEEDS))
def test_each_seed_model_gets_its_format_preset_and_length(seed: str, tmp_path: Path, profile_home: Path) -> None:
    file, meta, fmt, preset, length = SEEDS[seed]
    model = _model(tmp_path, file, meta)
    card = make_card(tmp_path)
    session = open_chat_session(card, config=Config(engine=EngineConfig(model=str(model))))
    assert session.fmt.name == fmt
    assert session.preset_name == preset
    assert session.chat.length == length  # the new chat starts at the card's recommended length
    assert session.choices is not None
    assert session.choices.origins()[0] == f"format {fmt}, from the model"
    assert any(n.startswith("Recognised ") for n in session.notices)


def test_the_demo_model_keeps_the_defaults(tmp_path: Path, profile_home: Path) -> None:
    session = open_chat_session(make_card(tmp_path), config=Config())
    assert session.fmt.name == "limarp-v3"
    assert session.choices is not None
    assert session.choices.origins()[:2] == ["format limarp-v3, from the default", "preset ashhlimarp, from the default"]


def test_explicit_settings_win_over_the_model(tmp_path: Path, profile_home: Path) -> None:
    model = _model(tmp_path, "limamono-7b.gguf", {"general.name": "Limamono-7B"})
    cfg = Config(engine=EngineConfig(model=str(model)), format="limarp-v3-mixtral", preset="creative",
                 default_length="short")
    session = open_chat_session(make_card(tmp_path), config=cfg)
    assert (session.fmt.name, session.preset_name, session.chat.length) == ("limarp-v3-mixtral", "creative", "short")
    assert session.choices is not None
    assert session.choices.origins() == [
        "format limarp-v3-mixtral, from your settings", "preset creative, from your settings",
        "length short, from your settings",
    ]
    # Only what the user set wins: the format alone leaves the preset to the model.
    only_format = Config(engine=EngineConfig(model=str(model)), format="limarp-v3-mixtral")
    session = open_chat_session(make_card(tmp_path), config=only_format)
    assert (session.fmt.name, session.preset_name) == ("limarp-v3-mixtral", "limamono")


def test_a_resumed_chat_keeps_its_own_length(tmp_path: Path, profile_home: Path) -> None:
    model = _model(tmp_path, "limamono-7b.gguf", {"general.name": "Limamono-7B"})
    cfg = Config(engine=EngineConfig(model=str(model)))
    first = open_chat_session(make_card(tmp_path), config=cfg)
    first.set_length("tiny")
    again = open_chat_session(make_card(tmp_path), first.path, config=cfg)
    assert again.chat.length == "tiny"
    assert again.fmt.name == "limamono"
    assert again.choices is not None and "length tiny, from this chat" in again.choices.origins()


def test_the_seed_qlora_is_recognised_through_the_configured_lora(tmp_path: Path, profile_home: Path) -> None:
    base = _model(tmp_path, "mixtral-8x7b-v0.1.Q4_K_M.gguf", {"general.name": "mistralai_mixtral-8x7b-v0.1"})
    lora = _model(tmp_path, "adapter.gguf", {"general.name": "limarp-zloss-mixtral-8x7b-qlora",
                                            "general.type": "adapter", "adapter.type": "lora"})
    session = open_chat_session(make_card(tmp_path), config=Config(engine=EngineConfig(model=str(base), lora=str(lora))))
    assert (session.fmt.name, session.preset_name) == ("limarp-v3-mixtral", "limarp-zloss-mixtral")
    assert "the LoRA's general.name" in session.notices[0]
    # Without the adapter the same base is just Mixtral: no rule, the defaults and a notice.
    plain = open_chat_session(make_card(tmp_path), config=Config(engine=EngineConfig(model=str(base))))
    assert plain.fmt.name == "limarp-v3"
    assert any("does not know the model" in n for n in plain.notices)
    # On another base model the adapter still picks its format, with a warning.
    other = _model(tmp_path, "mistral.gguf", {"general.name": "Mistral-7B-v0.1"})
    odd = open_chat_session(make_card(tmp_path), config=Config(engine=EngineConfig(model=str(other), lora=str(lora))))
    assert odd.fmt.name == "limarp-v3-mixtral"
    assert any("trained on another base model" in n for n in odd.notices)


def test_unknown_models_get_the_default_and_a_template_guess(tmp_path: Path, profile_home: Path) -> None:
    alpaca = _model(tmp_path, "some-alpaca.gguf", {"general.name": "Some Alpaca 7B",
                                                   "tokenizer.chat_template": ALPACA_TEMPLATE})
    session = open_chat_session(make_card(tmp_path), config=Config(engine=EngineConfig(model=str(alpaca))))
    assert session.fmt.name == "limarp-v3"
    assert session.notices == [
        ("rpchat does not know the model Some Alpaca 7B; its chat template is Alpaca-style, which suggests "
         "the limarp-v3 format")
    ]
    chatml = _model(tmp_path, "qwen.gguf", {"general.name": "Qwen", "tokenizer.chat_template": CHATML_TEMPLATE})
    session = open_chat_session(make_card(tmp_path), config=Config(engine=EngineConfig(model=str(chatml))))
    assert "its chat template is ChatML, which no rpchat format follows" in session.notices[0]


def test_a_user_rule_adds_a_model_with_its_stops(tmp_path: Path, profile_home: Path) -> None:
    rules = profile().config_dir / "model_rules.yaml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(
        "models:\n  - name: My Merge\n    match: ['my-merge']\n    format: limamono\n    preset: neutral\n"
        "    length: short\n    stop: [\"\\n{{user}} says\", 'THE END']\n",
        encoding="utf-8",
    )
    model = _model(tmp_path, "x.gguf", {"general.name": "My_Merge 13B"})
    card = make_card(tmp_path)
    session = open_chat_session(card, config=Config(engine=EngineConfig(model=str(model))))
    assert (session.fmt.name, session.preset_name, session.chat.length) == ("limamono", "neutral", "short")
    built = session.build()
    assert "THE END" in built.stop and "\nUser says" in built.stop
    assert "\n### Input" in built.stop  # the format's own stops stay

    rules.write_text("models: [{name: broken, match: '('}]\n", encoding="utf-8")
    session = open_chat_session(card, config=Config(engine=EngineConfig(model=str(model))))
    assert session.fmt.name == "limarp-v3"  # the shipped rules still work
    assert any("model_rules.yaml" in n and "bad regular expression" in n for n in session.notices)


def test_cli_prompt_uses_the_models_format(tmp_path: Path, profile_home: Path) -> None:
    model = _model(tmp_path, "limamono-7b.Q4_K_M.gguf", {"general.name": "Limamono-7B"})
    card = make_card(tmp_path)
    env = {**os.environ, "RPCHAT_HOME": str(profile_home)}
    res = subprocess.run([sys.executable, "-m", "rpchat", "prompt", str(card), "--model", str(model)],
                         check=False, capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Below is an instruction that describes background information")
    assert "rpchat: note: Recognised Limamono-7B (general.name 'Limamono-7B'): format limamono, from the model" \
        in res.stderr
    res = subprocess.run([sys.executable, "-m", "rpchat", "prompt", str(card), "--model", str(model),
                          "--format", "limarp-v3"], check=False, capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.stdout.startswith("### Instruction:"), res.stderr
    assert "format limarp-v3, from the command line" in res.stderr


def test_settings_saved_with_the_defaults_do_not_hide_the_model(tmp_path: Path, profile_home: Path) -> None:
    # The settings screen writes every field; a config equal to the defaults still lets the model choose.
    model = _model(tmp_path, "limamono-7b.gguf", {"general.name": "Limamono-7B"})
    cfg = Config(engine=EngineConfig(model=str(model)))
    save_config(profile(), cfg)
    session = open_chat_session(make_card(tmp_path))
    assert session.fmt.name == "limamono"

"""Sampler presets: the seeds' exact numbers, user presets, bad files, SillyTavern import."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rpchat.engine.base import Sampling
from rpchat.engine.presets import (
    SAMPLER_HELP,
    SamplerPreset,
    import_st_textgen,
    list_presets,
    load_preset,
    save_preset,
)
from rpchat.errors import ConfigError
from rpchat.paths import profile

FIXTURES = Path(__file__).resolve().parent / "fixtures"
UNIVERSAL_LIGHT = FIXTURES / "st_textgen_Universal-Light.json"


def user_dir() -> Path:
    folder = profile().user_presets_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_seed_000_preset_has_the_exact_numbers() -> None:
    p = load_preset("limarp-zloss-mixtral")
    s = p.sampling
    assert (s.temperature, s.min_p, s.repeat_penalty, s.repeat_last_n) == (1.25, 0.05, 1.05, 1024)
    assert (s.top_k, s.top_p, s.tfs_z) == (0, 1.0, 1.0)
    assert "000" in p.description


@pytest.mark.parametrize(("name", "seed", "temperature", "tfs"), [
    ("ashhlimarp", "003", 0.70, 0.90),
    ("limamono", "004", 1.0, 0.85),
])
def test_seed_003_and_004_presets_have_the_exact_numbers(
    name: str, seed: str, temperature: float, tfs: float
) -> None:
    p = load_preset(name)
    s = p.sampling
    assert (s.temperature, s.tfs_z, s.repeat_penalty, s.repeat_last_n) == (temperature, tfs, 1.11, 2048)
    assert (s.top_k, s.top_p, s.min_p) == (0, 1.0, 0.0)
    assert seed in p.description


def test_neutral_presets_ship_too() -> None:
    names = {p.name for p in list_presets()}
    assert {"limarp-zloss-mixtral", "ashhlimarp", "limamono", "neutral", "deterministic", "creative"} <= names
    assert load_preset("neutral").sampling == Sampling()
    assert load_preset("deterministic").sampling.temperature == 0.0
    creative = load_preset("creative").sampling
    assert creative.min_p > 0 and creative.dry_multiplier > 0 and creative.xtc_probability > 0


def test_every_sampling_field_has_help_text() -> None:
    fields = {f.name for f in dataclasses.fields(Sampling)}
    assert set(SAMPLER_HELP) == fields
    assert all(text and "\n" not in text for text in SAMPLER_HELP.values())


def test_user_preset_overrides_a_shipped_one_by_name() -> None:
    (user_dir() / "ashhlimarp.yaml").write_text("description: mine\nsampling:\n  temperature: 0.5\n")
    p = load_preset("AshhLimaRP")
    assert p.description == "mine" and p.sampling.temperature == 0.5 and p.sampling.tfs_z == 1.0
    assert p.source.startswith(str(user_dir()))
    assert [q.description for q in list_presets() if q.name == "ashhlimarp"] == ["mine"]


def test_save_and_load_round_trip() -> None:
    sampling = Sampling(temperature=0.8, tfs_z=0.92, dry_sequence_breakers=("\n", "*"), seed=7)
    path = save_preset(SamplerPreset("My-Preset", "for tests", sampling, ""))
    assert path == user_dir() / "my-preset.yaml"
    loaded = load_preset("my-preset")
    assert loaded.sampling == sampling and loaded.description == "for tests"


def test_save_refuses_a_name_that_is_not_a_file_name() -> None:
    with pytest.raises(ConfigError, match="preset name"):
        save_preset(SamplerPreset("../evil", "", Sampling(), ""))


@pytest.mark.parametrize(("text", "problem"), [
    ("sampling: [1, 2", "invalid YAML"),
    ("- just a list", "must be a mapping"),
    ("sampling:\n  temprature: 1.0\n", "unknown sampler setting 'temprature'"),
    ("sampling:\n  top_k: lots\n", "sampling.top_k must be a number"),
    ("sampling:\n  top_p: 1.5\n", "sampling.top_p = 1.5 is outside"),
    ("sampling:\n  temperature_last: 1\n", "must be true or false"),
    ("sampling:\n  dry_sequence_breakers: 3\n", "list of non-empty strings"),
    ("colour: red\n", "unknown key 'colour'"),
    ("sampling:\n  top_k: 2.5\n", "whole number"),
])
def test_bad_preset_file_is_one_line_config_error_naming_the_file(text: str, problem: str) -> None:
    path = user_dir() / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_preset("broken")
    message = str(info.value)
    assert problem in message and str(path) in message and "\n" not in message
    errors: list[ConfigError] = []
    names = {p.name for p in list_presets(errors=errors)}
    assert "broken" not in names and "ashhlimarp" in names
    assert [e.source for e in errors] == [str(path)]


def test_unknown_preset_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="no sampler preset named 'nope'.*ashhlimarp"):
        load_preset("nope")


def test_import_sillytavern_universal_light() -> None:
    preset = import_st_textgen(UNIVERSAL_LIGHT)
    s = preset.sampling
    assert (s.temperature, s.min_p, s.top_p, s.top_k, s.typical_p, s.tfs_z) == (1.25, 0.1, 1.0, 0, 1.0, 1.0)
    assert (s.repeat_penalty, s.presence_penalty, s.frequency_penalty) == (1.0, 0.0, 0.0)
    assert (s.dry_multiplier, s.dry_base, s.dry_allowed_length) == (0.0, 1.75, 2)
    assert s.dry_sequence_breakers == ("\n", ":", '"', "*")
    assert (s.mirostat, s.mirostat_tau, s.mirostat_eta, s.seed) == (0, 5.0, 0.1, None)
    assert s.temperature_last is False
    assert preset.name == "st_textgen_universal-light"
    assert preset.unmapped == ()  # every sampler it sets to a non-neutral value is mapped
    save_preset(preset)
    assert load_preset(preset.name).sampling == s


def test_import_lists_what_it_could_not_map(tmp_path: Path) -> None:
    data = json.loads(UNIVERSAL_LIGHT.read_text())
    data.update(top_a=0.2, smoothing_factor=0.3, my_new_sampler=True, rep_pen=1.1, rep_pen_range=0,
                dynatemp=True, min_temp=0.5, max_temp=1.5, seed=42, dry_multiplier=0.8,
                dry_penalty_last_n=0, xtc_probability=0.5, xtc_threshold=0.15)
    path = tmp_path / "Odd Preset!.json"
    path.write_text(json.dumps(data))
    preset = import_st_textgen(path)
    assert [u.split("=")[0] for u in preset.unmapped] == ["top_a", "smoothing_factor", "my_new_sampler"]
    assert "top_a" in preset.description
    s = preset.sampling
    assert (s.repeat_penalty, s.repeat_last_n, s.dry_penalty_last_n) == (1.1, -1, -1)  # 0 = whole context
    assert (s.temperature, s.dynatemp_range, s.seed) == (1.0, 0.5, 42)
    assert (s.xtc_probability, s.xtc_threshold, s.dry_multiplier) == (0.5, 0.15, 0.8)
    assert preset.name == "odd-preset"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"temp": "hot"}', b"\xff\xfe"])
def test_import_of_a_bad_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        import_st_textgen(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_import_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such preset file"):
        import_st_textgen(tmp_path / "missing.json")


@pytest.mark.parametrize(("fixture", "hint"), [
    ("st_instruct_Alpaca.json", "an instruct or context template: import it with `rpchat formats import`"),
    ("st_context_Alpaca-Roleplay.json", "an instruct or context template: import it with `rpchat formats import`"),
])
def test_import_of_a_template_is_refused_and_points_to_formats_import(fixture: str, hint: str) -> None:
    """SillyTavern's instruct/context templates are JSON too; imported as a sampler preset they made a
    'preset' of neutral samplers whose every field was 'not applied'."""
    with pytest.raises(ConfigError, match=fixture) as err:
        import_st_textgen(FIXTURES / fixture)
    assert hint in str(err.value)


def test_import_of_json_without_any_sampler_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "settings.json"
    src.write_text(json.dumps({"theme": "dark", "font_size": 14}), encoding="utf-8")
    with pytest.raises(ConfigError, match="no sampler settings"):
        import_st_textgen(src)

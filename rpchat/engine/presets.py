"""Sampler presets: named `Sampling` settings stored as YAML files users can copy and edit.

Shipped presets live in ``rpchat/engine/preset_files/*.yaml``; a file of the same name in the user's
``presets`` folder overrides one. A preset file looks like::

    description: What it is for and where the numbers come from.
    sampling:
      temperature: 0.7
      tfs_z: 0.9

A preset's name is its file name (lower case); fields left out keep the neutral `Sampling` defaults.
SillyTavern text-generation presets (JSON) are converted by `import_st_textgen`: `import_preset` saves
the result as YAML in the user's folder, and a JSON file dropped there by hand is converted when read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpchat.atomic import write_atomic
from rpchat.engine.base import NEUTRAL_SAMPLING, Sampling
from rpchat.errors import ConfigError
from rpchat.importname import NAME, Imported, import_name
from rpchat.paths import profile
from rpchat.userfile import read_json_object
from rpchat.yamlfile import dump_yaml, load_yaml

SHIPPED_DIR = Path(__file__).resolve().parent / "preset_files"
MAX_ST_PRESET_BYTES = 1024 * 1024

SAMPLER_HELP: dict[str, str] = {
    "temperature": "Scales randomness: below 1 sharper and safer, above 1 wilder; 0 always picks the top token.",
    "top_k": "Keep only the K most likely tokens; 0 turns it off.",
    "top_p": "Keep the smallest set of tokens whose probabilities add up to P (nucleus); 1 turns it off.",
    "min_p": "Drop tokens less likely than min-p times the top token's probability; 0 turns it off.",
    "typical_p": "Locally typical sampling: keep tokens close to the expected surprise; 1 turns it off.",
    "tfs_z": "Tail-free sampling: cut the flat tail of the sorted distribution; 0.85-0.95 is usual, 1 is off.",
    "repeat_penalty": "Make tokens seen in the last N tokens of the chat less likely; 1 turns it off.",
    "repeat_last_n": "How many tokens of chat history (prompt and reply) the repetition penalty looks at; "
    "-1 means the whole context.",
    "presence_penalty": "Subtract this from every token already present in the penalty window; 0 is off.",
    "frequency_penalty": "Subtract this per occurrence of a token in the penalty window; 0 is off.",
    "dry_multiplier": "DRY: penalize continuing a sequence that already appeared; 0 turns it off, 0.8 is common.",
    "dry_base": "DRY: how fast the penalty grows with the length of the repeated sequence.",
    "dry_allowed_length": "DRY: repeated sequences up to this many tokens are not penalized.",
    "dry_penalty_last_n": "DRY: how many tokens of history to scan; -1 means the whole context.",
    "dry_sequence_breakers": "DRY: strings that end a repeated sequence (newline, colon, quotes, asterisk).",
    "banned_phrases": "Phrases the local engine takes back and rewrites (any case, curly quotes alike).",
    "xtc_probability": "XTC: chance per token to exclude the top choices, for more varied prose; 0 is off.",
    "xtc_threshold": "XTC: tokens above this probability count as top choices (all but the least are dropped).",
    "mirostat": "Mirostat: 1 or 2 replaces the other truncation samplers and steers perplexity; 0 is off.",
    "mirostat_tau": "Mirostat: target surprise (entropy); lower is more focused.",
    "mirostat_eta": "Mirostat: learning rate of the steering.",
    "n_probs": "Token alternatives kept per generated token; rpchat sets it (the token view), not a preset.",
    "seed": "Random seed; empty picks a new one per reply, a number makes replies repeatable.",
    "max_tokens": "The most tokens one reply may have.",
    "dynatemp_range": "Dynamic temperature: vary temperature by up to this much with the model's certainty; 0 is off.",
    "dynatemp_exponent": "Dynamic temperature: curve of the variation.",
    "temperature_last": "Apply temperature after the truncation samplers (llama.cpp and SillyTavern default).",
}

_FIELDS = {f.name: f for f in dataclasses.fields(Sampling)}


@dataclass(frozen=True)
class SamplerPreset:
    """A named set of sampler settings and where it came from."""

    name: str
    description: str
    sampling: Sampling
    source: str  # the file it was read from ("" for one made in code)
    unmapped: tuple[str, ...] = ()  # imported keys rpchat could not apply, as "key=value"
    ignored: tuple[str, ...] = ()  # imported keys that set the backend or UI, not sampling

    @property
    def builtin(self) -> bool:
        """True for a preset shipped with rpchat (not one in the user's folder)."""
        return bool(self.source) and Path(self.source).parent == SHIPPED_DIR


def _bad(where: str, what: str, source: str | Path) -> ConfigError:
    return ConfigError(f"sampling.{where} {what}", source)


def _number(key: str, value: Any, source: str | Path, *, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, f"must be a number, not {type(value).__name__}", source)
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise _bad(key, "must be a whole number", source)
        return int(value)
    if not math.isfinite(value):
        raise _bad(key, "must be a finite number", source)
    return float(value)


# (low, high) inclusive bounds; None = unbounded
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0, 10),
    "top_k": (0, None),
    "top_p": (0, 1),
    "min_p": (0, 1),
    "typical_p": (0, 1),
    "tfs_z": (0, 1),
    "repeat_penalty": (0.01, 10),
    "repeat_last_n": (-1, None),
    "presence_penalty": (-10, 10),
    "frequency_penalty": (-10, 10),
    "dry_multiplier": (0, 100),
    "dry_base": (1, 100),
    "dry_allowed_length": (0, None),
    "dry_penalty_last_n": (-1, None),
    "xtc_probability": (0, 1),
    "xtc_threshold": (0, 1),
    "mirostat": (0, 2),
    "mirostat_tau": (0, 100),
    "mirostat_eta": (0, 10),
    "seed": (0, 2**32 - 2),  # 2**32-1 is llama.cpp's "random" marker
    "max_tokens": (1, None),
    "dynatemp_range": (0, 10),
    "dynatemp_exponent": (0.01, 100),
}


def sampling_from_dict(data: Any, source: str | Path) -> Sampling:
    """Validate a mapping of `Sampling` fields (missing ones keep their defaults)."""
    if data is None:
        return Sampling()
    if not isinstance(data, dict):
        raise ConfigError("sampling must be a mapping of sampler settings", source)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown sampler setting {str(key)[:40]!r}", source)
        default = getattr(NEUTRAL_SAMPLING, key)
        if key == "seed" and value is None:
            values[key] = None
            continue
        if key == "banned_phrases":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise _bad(key, "must be a list of phrases", source)
            from rpchat.engine.banned import clean_phrases

            values[key] = clean_phrases(value)
            continue
        if key == "dry_sequence_breakers":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise _bad(key, "must be a list of non-empty strings", source)
            values[key] = tuple(value)
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise _bad(key, "must be true or false", source)
            values[key] = value
            continue
        integer = key == "seed" or isinstance(default, int)
        number = _number(key, value, source, integer=integer)
        low, high = _RANGES.get(key, (None, None))
        if (low is not None and number < low) or (high is not None and number > high):
            span = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            raise _bad(key, f"= {number} is outside {span}", source)
        values[key] = number
    return Sampling(**values)


def sampling_to_dict(sampling: Sampling, *, only_changed: bool = True) -> dict[str, Any]:
    """Plain data for YAML; by default only the fields that differ from the neutral defaults."""
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(sampling, name)
        if only_changed and value == getattr(NEUTRAL_SAMPLING, name):
            continue
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def preset_from_file(path: Path) -> SamplerPreset:
    """Read one preset file (YAML, or a SillyTavern JSON preset); a bad file raises ConfigError naming it."""
    if path.suffix.lower() == ".json":
        return dataclasses.replace(import_st_textgen(path), name=_name_of(path))
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("a preset must be a mapping with 'description' and 'sampling'", path)
    unknown = sorted(set(map(str, data)) - {"name", "description", "sampling"})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0][:40]!r} (expected description, sampling)", path)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description must be text", path)
    sampling = sampling_from_dict(data.get("sampling"), path)
    return SamplerPreset(_name_of(path), " ".join(description.split()), sampling, str(path))


def _name_of(path: Path) -> str:
    if path.suffix.lower() == ".json":
        return _st_name(path.stem)  # the name `rpchat presets import` would give it
    return path.stem.lower()


def _st_name(stem: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.")[:64] or "imported"


_SUFFIXES = (".yaml", ".yml", ".json")


def _preset_files(user_dir: Path | None, problems: list[ConfigError] | None = None) -> dict[str, Path]:
    files: dict[str, Path] = {}
    folders = [SHIPPED_DIR, user_dir if user_dir is not None else profile().user_presets_dir]
    for folder in folders:  # later folders override earlier ones by name
        try:
            # YAML sorts after JSON of the same stem, so a converted copy wins over its source.
            found = sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                           key=lambda p: (p.stem.lower(), p.suffix.lower() != ".json", p.name))
        except OSError:
            continue
        user_files: dict[str, Path] = {}
        for path in found:
            if path.suffix.lower() not in _SUFFIXES or path.is_dir():
                if problems is not None and folder != SHIPPED_DIR:
                    problems.append(ConfigError(
                        "ignored: a preset is a .yaml file or a SillyTavern textgen .json file", path))
                continue
            name = _name_of(path)
            if name in user_files and problems is not None:
                problems.append(ConfigError(f"ignored: {path.name} and {user_files[name].name} are both "
                                            f"preset {name!r}; {user_files[name].name} is skipped", path.parent))
            user_files[name] = path
        files.update(user_files)
    return files


def list_presets(
    user_dir: Path | None = None, errors: list[ConfigError] | None = None
) -> list[SamplerPreset]:
    """All presets by name, user files overriding shipped ones; bad or ignored files go into ``errors``."""
    presets = []
    for _, path in sorted(_preset_files(user_dir, errors).items()):
        try:
            presets.append(preset_from_file(path))
        except ConfigError as e:
            if errors is not None:
                errors.append(e)
    return presets


def shipped_preset_names() -> set[str]:
    """Names of the presets that come with rpchat."""
    return {p.stem.lower() for p in SHIPPED_DIR.glob("*.yaml")}


def load_preset(name: str, user_dir: Path | None = None) -> SamplerPreset:
    """The preset called ``name`` (user folder first); ConfigError if unknown or invalid."""
    files = _preset_files(user_dir)
    path = files.get(name.strip().lower())
    if path is None:
        known = ", ".join(sorted(files)) or "none"
        raise ConfigError(f"no sampler preset named {name[:60]!r} (known: {known})")
    return preset_from_file(path)


def save_preset(preset: SamplerPreset, folder: Path | None = None) -> Path:
    """Write ``preset`` as ``<folder>/<name>.yaml`` (default: the user presets folder), atomically."""
    name = preset.name.strip().lower()
    if not NAME.match(name):
        raise ConfigError(f"preset name {preset.name[:60]!r} must be letters, digits, '.', '_' or '-'")
    target = (folder if folder is not None else profile().user_presets_dir) / f"{name}.yaml"
    data: dict[str, Any] = {"description": preset.description, "sampling": sampling_to_dict(preset.sampling)}
    try:
        write_atomic(target, dump_yaml(data))
    except OSError as e:
        raise ConfigError(f"cannot write preset: {e.strerror or e}", target) from None
    return target


# SillyTavern textgen key -> Sampling field (plain one-to-one copies)
_ST_DIRECT = {
    "temp": "temperature",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "typical": "typical_p",
    "tfs": "tfs_z",
    "rep_pen": "repeat_penalty",
    "presence_pen": "presence_penalty",
    "freq_pen": "frequency_penalty",
    "dry_multiplier": "dry_multiplier",
    "dry_base": "dry_base",
    "dry_allowed_length": "dry_allowed_length",
    "xtc_threshold": "xtc_threshold",
    "xtc_probability": "xtc_probability",
    "mirostat_mode": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "dynatemp_exponent": "dynatemp_exponent",
    "temperature_last": "temperature_last",
}
# keys handled by hand in import_st_textgen
_ST_SPECIAL = {
    "rep_pen_range",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "seed",
    "dynatemp",
    "min_temp",
    "max_temp",
    "do_sample",
}
# samplers rpchat lacks, at the value that makes them do nothing (then they are not worth a notice)
_ST_NEUTRAL: dict[str, Any] = {
    "top_a": 0,
    "epsilon_cutoff": 0,
    "eta_cutoff": 0,
    "rep_pen_decay": 0,
    "rep_pen_slope": 1,
    "no_repeat_ngram_size": 0,
    "penalty_alpha": 0,
    "num_beams": 1,
    "length_penalty": 1,
    "min_length": 0,
    "encoder_rep_pen": 1,
    "skew": 0,
    "smoothing_factor": 0,
    "smoothing_curve": 1,
    "guidance_scale": 1,
    "negative_prompt": "",
    "grammar_string": "",
    "json_schema": {},
    "banned_tokens": "",
    "logit_bias": [],
    "ban_eos_token": False,
    "ignore_eos_token": False,
    "speculative_ngram": False,
    "nsigma": 0,
    "top_n_sigma": 0,
    "rep_pen_size": 0,
    "early_stopping": False,
    "dry_penalty_range": 0,
    "max_tokens_second": 0,
}
# settings of the backend or the UI, not of sampling; rpchat uses a fixed sampler order
_ST_IRRELEVANT = {
    "add_bos_token",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "streaming",
    "sampler_priority",
    "samplers",
    "sampler_order",
    "samplers_priorities",
    "include_reasoning",
    "json_schema_allow_empty",
    "extensions",
    "n",
    "openrouter_allow_fallbacks",
    "generic_model",
    "legacy_api",
    "type",
    "server_urls",
    "preset",
}


def import_st_textgen(path: Path) -> SamplerPreset:
    """Convert a SillyTavern text-generation preset (JSON); ``unmapped`` lists what was dropped."""
    path = Path(path)
    data = read_json_object(path, MAX_ST_PRESET_BYTES, ConfigError, "SillyTavern textgen preset", "preset file")
    if "input_sequence" in data or "story_string" in data:
        raise ConfigError("not a textgen preset but an instruct or context template: import it with "
                          "`rpchat formats import`", path)
    if not any(key in data for key in (*_ST_DIRECT, *_ST_SPECIAL, *_ST_NEUTRAL)):
        raise ConfigError("not a SillyTavern textgen preset (no sampler settings such as temp or top_p)", path)

    values: dict[str, Any] = {}
    for key, field_name in _ST_DIRECT.items():
        if key in data and field_name not in values:
            values[field_name] = data[key]
    if "rep_pen_range" in data:
        # SillyTavern (like text-generation-webui) reads a range of 0 as "the whole context"
        values["repeat_last_n"] = data["rep_pen_range"] or -1
    if "dry_penalty_last_n" in data:
        values["dry_penalty_last_n"] = data["dry_penalty_last_n"] or -1
    breakers = data.get("dry_sequence_breakers")
    if isinstance(breakers, str):  # SillyTavern stores the list as a JSON string
        try:
            breakers = json.loads(breakers)
        except ValueError:
            raise ConfigError("dry_sequence_breakers is not a JSON list", path) from None
    if breakers is not None:
        values["dry_sequence_breakers"] = breakers
    seed = data.get("seed")
    if isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed >= 0:
        values["seed"] = seed
    if data.get("dynatemp") is True:
        # SillyTavern gives the span; llama.cpp wants a centre and a range
        low, high = data.get("min_temp", 0), data.get("max_temp", 2)
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and high >= low:
            values["temperature"] = (low + high) / 2
            values["dynatemp_range"] = (high - low) / 2
    if data.get("do_sample") is False:
        values["temperature"] = 0.0  # greedy
    if values.get("mirostat") not in (None, 0, 1, 2):
        values["mirostat"] = 2
    sampling = sampling_from_dict(values, path)

    unmapped = []
    for key, value in data.items():
        if key in _ST_DIRECT or key in _ST_SPECIAL or key in _ST_IRRELEVANT:
            continue
        if key in _ST_NEUTRAL and value == _ST_NEUTRAL[key]:
            continue
        unmapped.append(f"{key}={json.dumps(value)[:40]}")
    description = f"Imported from the SillyTavern textgen preset {path.name}."
    if unmapped:
        description += f" Not applied: {', '.join(k.split('=')[0] for k in unmapped)}."
    ignored = tuple(key for key in data if key in _ST_IRRELEVANT)
    return SamplerPreset(_st_name(path.stem), description, sampling, str(path), tuple(unmapped), ignored)


def import_preset(source: Path, name: str | None = None, folder: Path | None = None) -> Imported:
    """Convert a SillyTavern textgen preset and save it as ``<folder>/<name>.yaml`` (default: the stem).

    A name a built-in preset uses gets a suffix instead of hiding it; samplers rpchat cannot apply are
    listed in one note (and kept in the description).
    """
    preset = import_st_textgen(Path(source))
    final, shadow = import_name(name if name is not None else Path(source).stem, shipped_preset_names(),
                                "sampler preset")
    folder = folder if folder is not None else profile().user_presets_dir
    notes = [shadow] if shadow else []
    target = folder / f"{final}.yaml"
    if target.exists():
        notes.append(f"replaced the earlier {target.name}")
    if preset.unmapped:
        notes.append("not applied (rpchat has no such sampler, or it is a backend setting): "
                     + ", ".join(preset.unmapped))
    if preset.ignored:
        notes.append("ignored (backend or UI settings; rpchat's sampler order is fixed): " + ", ".join(preset.ignored))
    path = save_preset(dataclasses.replace(preset, name=final), folder)
    return Imported(final, path, tuple(notes))

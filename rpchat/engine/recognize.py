"""Which prompt format, sampler preset, stops and starting length a model needs, from its GGUF metadata.

The rules are data: ``model_rules.yaml`` next to this module, and the user's own
``<config dir>/model_rules.yaml`` (tried first). `choose_for_model` weighs them against what the user
set and what the chat already chose, and says where each pick came from ("format limamono, from the model").
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpchat.config import Config
from rpchat.errors import ConfigError, RpchatError
from rpchat.paths import Paths, profile
from rpchat.yamlfile import load_yaml

if TYPE_CHECKING:
    from rpchat.engine.presets import SamplerPreset
    from rpchat.prompt.formats import PromptFormat

SHIPPED_RULES = Path(__file__).resolve().parent / "model_rules.yaml"
RULES_FILE = "model_rules.yaml"
_DEFAULTS = Config()
# The metadata texts a rule is matched against, in the order a reason names them.
_NAME_KEYS = ("general.name", "general.basename", "general.finetune")
_BASE_KEY = re.compile(r"general\.base_model\.\d+\.(name|repo_url|organization)")


@dataclass(frozen=True)
class ModelRule:
    """One known model: how to recognise it and what it needs."""

    name: str
    match: tuple[re.Pattern[str], ...]
    format: str | None = None
    preset: str | None = None
    length: str | None = None
    stop: tuple[str, ...] = ()
    adapter: bool = False
    base: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class TemplateHint:
    """A chat-template family and the format that suits it (None: no rpchat format does)."""

    name: str
    contains: tuple[str, ...]
    format: str | None = None


@dataclass(frozen=True)
class Rules:
    models: tuple[ModelRule, ...]
    templates: tuple[TemplateHint, ...]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pick:
    """One choice and where it came from: "the model", "your settings", "this chat", "the default"."""

    value: str | None
    source: str

    def describe(self, what: str) -> str:
        return f"{what} {self.value or 'auto'}, from {self.source}"


@dataclass(frozen=True)
class ModelChoices:
    """What a chat with this model uses, and why."""

    format: Pick
    preset: Pick
    length: Pick
    stop: tuple[str, ...] = ()
    model: str | None = None  # the rule's name when the model was recognised
    notices: tuple[str, ...] = field(default=())

    def origins(self) -> list[str]:
        """One line per choice: "format limamono, from the model"."""
        lines = [self.format.describe("format"), self.preset.describe("preset"), self.length.describe("length")]
        if self.stop:
            lines.append("stops " + ", ".join(repr(s) for s in self.stop) + ", from the model")
        return lines


def normalize(text: str) -> str:
    """Lower case with every run of other characters turned into "-" (what rules match against)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- the rule files ----------------------------------------------------------------------------------------


def _patterns(value: Any, where: str, source: Path) -> tuple[re.Pattern[str], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{where} must be a list of regular expressions", source)
    try:
        return tuple(re.compile(v, re.IGNORECASE) for v in items)
    except re.error as e:
        raise ConfigError(f"{where}: bad regular expression: {e}", source) from None


def _text(entry: dict[str, Any], key: str, where: str, source: Path) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"{where}.{key} must be a text", source)


def _parse_rules(data: Any, source: Path) -> Rules:
    if data is None:
        return Rules((), ())
    if not isinstance(data, dict):
        raise ConfigError("must be a mapping with 'models' and 'templates'", source)
    models: list[ModelRule] = []
    for i, entry in enumerate(data.get("models") or []):
        where = f"models[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where} must be a mapping with a name", source)
        stop = entry.get("stop") or []
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError(f"{where}.stop must be a list of texts", source)
        models.append(ModelRule(
            name=entry["name"],
            match=_patterns(entry.get("match"), f"{where}.match", source),
            format=_text(entry, "format", where, source),
            preset=_text(entry, "preset", where, source),
            length=_text(entry, "length", where, source),
            stop=tuple(stop),
            adapter=entry.get("adapter") is True,
            base=_patterns(entry["base"], f"{where}.base", source) if entry.get("base") else (),
        ))
    templates: list[TemplateHint] = []
    for i, entry in enumerate(data.get("templates") or []):
        where = f"templates[{i}]"
        contains = entry.get("contains") if isinstance(entry, dict) else None
        if not isinstance(contains, list) or not contains or not all(isinstance(c, str) for c in contains):
            raise ConfigError(f"{where} needs a name and a 'contains' list", source)
        templates.append(TemplateHint(str(entry.get("name") or contains[0]), tuple(contains),
                                      _text(entry, "format", where, source)))
    return Rules(tuple(models), tuple(templates))


def load_rules(paths: Paths | None = None) -> Rules:
    """The user's rules (first) and the shipped ones; a bad user file is a problem, not a crash."""
    paths = paths or profile()
    shipped = _parse_rules(load_yaml(SHIPPED_RULES), SHIPPED_RULES)
    user_file = paths.config_dir / RULES_FILE
    if not user_file.exists():
        return shipped
    try:
        user = _parse_rules(load_yaml(user_file), user_file)
    except RpchatError as e:
        return Rules(shipped.models, shipped.templates, (f"{e}; using the shipped model rules",))
    return Rules(user.models + shipped.models, user.templates + shipped.templates)


# --- recognising ---------------------------------------------------------------------------------------------


def _names(metadata: dict[str, str], path: Path) -> list[tuple[str, str]]:
    """(where, text) pairs to match, most telling first."""
    out = [(k, metadata[k]) for k in _NAME_KEYS if metadata.get(k)]
    out += sorted((k, v) for k, v in metadata.items() if _BASE_KEY.fullmatch(k) and v)
    out.append(("file name", path.name))
    return out


def _find(rules: tuple[ModelRule, ...], names: list[tuple[str, str]]) -> tuple[ModelRule, str] | None:
    for where, text in names:
        norm = normalize(text)
        for rule in rules:
            if any(p.search(norm) for p in rule.match):
                return rule, f"{where} {' '.join(text.split())[:80]!r}"
    return None


@dataclass(frozen=True)
class Recognition:
    rule: ModelRule | None
    reason: str = ""
    notices: tuple[str, ...] = ()
    guess: str | None = None  # a format suggested by the chat template


def recognize(model: Path | None, lora: Path | None = None, rules: Rules | None = None) -> Recognition:
    """The rule that fits ``model`` (or its LoRA ``lora``), or notices saying why none does."""
    from rpchat.engine.gguf_info import read_gguf_info

    rules = rules or load_rules()
    notices = list(rules.problems)
    if model is None:
        return Recognition(None, notices=tuple(notices))
    try:
        info = read_gguf_info(model)
    except RpchatError:
        return Recognition(None, notices=tuple(notices))  # loading the model reports the problem
    names = _names(info.metadata, model)
    if lora is not None:
        try:
            lora_meta = read_gguf_info(lora).metadata
        except RpchatError:
            lora_meta = {}
        found = _find(tuple(r for r in rules.models if r.adapter), _names(lora_meta, lora))
        if found is not None:
            rule, why = found
            if rule.base and not any(p.search(normalize(t)) for _, t in names for p in rule.base):
                notices.append(f"the LoRA {rule.name} was trained on another base model than {info.name}")
            return Recognition(rule, f"the LoRA's {why}", tuple(notices))
    found = _find(tuple(r for r in rules.models if not r.adapter), names)
    if found is not None:
        return Recognition(found[0], found[1], tuple(notices))
    template = info.metadata.get("tokenizer.chat_template", "")
    hint = next((t for t in rules.templates if template and all(c in template for c in t.contains)), None)
    text = f"rpchat does not know the model {info.name}"
    if hint is not None and hint.format:
        text += f"; its chat template is {hint.name}-style, which suggests the {hint.format} format"
    elif hint is not None:
        text += f"; its chat template is {hint.name}, which no rpchat format follows: replies may be poor"
    notices.append(text)
    return Recognition(None, notices=tuple(notices), guess=hint.format if hint else None)


# --- choosing ------------------------------------------------------------------------------------------------


def choose_for_model(
    config: Config,
    *,
    model: Path | None,
    lora: Path | None = None,
    chat_length: tuple[str | None] | None = None,
    format_name: str | None = None,
    preset_name: str | None = None,
    rules: Rules | None = None,
) -> ModelChoices:
    """Format, preset, stops and starting length for a chat with ``model``.

    The user wins over the model: a format or preset set on the command line (``format_name``,
    ``preset_name``) or set in the config to something other than the built-in default; the chat wins
    for its length (``chat_length`` holds a resumed chat's length). The model's rule fills the rest.
    """
    from rpchat.prompt.formats import load_format

    found = recognize(model, lora, rules)
    rule = found.rule
    notices = list(found.notices)

    def pick(cli: str | None, configured: str, default: str, from_rule: str | None) -> Pick:
        if cli:
            return Pick(cli, "the command line")
        if configured != default:
            return Pick(configured, "your settings")
        if from_rule:
            return Pick(from_rule, "the model")
        return Pick(configured, "the default")

    fmt = pick(format_name, config.format, _DEFAULTS.format, rule.format if rule else None)
    preset = pick(preset_name, config.preset, _DEFAULTS.preset, rule.preset if rule else None)
    if chat_length is not None:
        length = Pick(chat_length[0], "this chat")
    else:
        length = pick(None, config.default_length or "", _DEFAULTS.default_length or "",
                      rule.length if rule else None)
        length = Pick(length.value or None, length.source)
    if length.source == "the model" and fmt.value:
        try:
            known = load_format(fmt.value).lengths
        except RpchatError:
            known = ()
        if length.value not in known:
            notices.append(f"the model's starting length {length.value} is not one of the {fmt.value} format's")
            length = Pick(config.default_length, "the default")
    if rule is not None:
        notices.insert(0, f"Recognised {rule.name} ({found.reason}): " + ", ".join(
            p.describe(w) for w, p in (("format", fmt), ("preset", preset), ("length", length))))
    return ModelChoices(fmt, preset, length, rule.stop if rule else (), rule.name if rule else None,
                        tuple(notices))


def configured_model(config: Config) -> tuple[Path | None, Path | None]:
    """The local model and LoRA the config names (None for the demo model or a remote engine)."""
    eng = config.engine
    if eng.kind != "local" or not eng.model:
        return None, None
    return Path(eng.model).expanduser(), Path(eng.lora).expanduser() if eng.lora else None


def session_choices(
    config: Config,
    *,
    chat_length: tuple[str | None] | None = None,
    model: Path | None = None,
    format_name: str | None = None,
    preset_name: str | None = None,
    remote: bool = False,
) -> tuple[ModelChoices, PromptFormat, SamplerPreset]:
    """What a session opens with: the choices, and the format (with the model's stops) and preset they name.

    ``model`` overrides the configured one (``rpchat reply --model``); ``remote`` (``--engine URL``) means
    no local file says what the model is.
    """
    from rpchat.engine.presets import load_preset
    from rpchat.prompt.formats import load_format

    path, lora = configured_model(config) if not remote else (None, None)
    if model is not None:
        path, lora = model, (lora if path == model else None)
    choices = choose_for_model(config, model=path, lora=lora, chat_length=chat_length,
                               format_name=format_name, preset_name=preset_name)
    fmt = load_format(choices.format.value or config.format)
    if choices.stop:
        fmt = with_stops(fmt, choices.stop)
    return choices, fmt, load_preset(choices.preset.value or config.preset)


def with_stops(fmt: PromptFormat, stops: tuple[str, ...]) -> PromptFormat:
    """``fmt`` with extra stop strings (``{{char}}``/``{{user}}`` allowed) after its own."""
    from rpchat.prompt.formats import STOP_VARS, parse_template

    source = fmt.source or fmt.name
    extra = tuple(parse_template(s, STOP_VARS, "stop", source) for s in stops)
    return dataclasses.replace(fmt, stop=fmt.stop + tuple(t for t in extra if t not in fmt.stop))

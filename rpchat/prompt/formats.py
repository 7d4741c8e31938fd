"""Prompt formats: YAML data files that say how a chat becomes prompt text.

Shipped formats live next to this module (``formats/*.yaml``); a user's own files in
``profile().user_formats_dir`` add formats or override shipped ones by name (the file stem).
SillyTavern instruct/context templates (JSON) are converted by `rpchat.prompt.st_import`:
`import_format` saves the result as YAML there, and a JSON file dropped there by hand is converted when read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rpchat.atomic import write_atomic
from rpchat.errors import ConfigError
from rpchat.importname import Imported, import_name
from rpchat.paths import profile
from rpchat.yamlfile import load_yaml

SHIPPED_DIR = Path(__file__).resolve().parent / "formats"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VAR = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")

# Which variables each template may use.
INSTRUCTION_VARS = frozenset(
    {
        "char", "user", "description", "card_description", "personality", "persona", "scenario", "greeting",
        "lore_before", "lore_after", "summary",
    }
)
# Text variables: a paragraph using one of them is left out when it is empty.
CONTENT_VARS = frozenset(
    {
        "description", "card_description", "personality", "persona", "scenario", "greeting", "lore_before",
        "lore_after", "summary",
    }
)
# Group chats: {{chars}} names every active member ("Alice and Bob"); a paragraph that is just
# {{members}} stands for the ``group_member`` paragraphs, once per active member.
GROUP_VARS = INSTRUCTION_VARS | {"chars", "members"}
# A paragraph using one of these describes one character (it is repeated per member in a group).
MEMBER_VARS = frozenset({"description", "card_description", "personality"})
MEMBERS: Template = (("members", True),)
MESSAGE_VARS = frozenset({"name", "message"})
LENGTH_VARS = frozenset({"length"})
STOP_VARS = frozenset({"char", "user"})
# The request that has the model write the story-so-far summary (see rpchat.prompt.summary).
SUMMARY_VARS = frozenset({"char", "user", "summary", "messages"})

# A parsed template: literal text (var=False) and variable names (var=True), in order.
Part = tuple[str, bool]
Template = tuple[Part, ...]


@dataclass(frozen=True)
class PromptFormat:
    """One prompt format, as read from its YAML file."""

    name: str
    description: str
    preamble: str | None
    instruction_header: str
    input_header: str
    response_header: str
    block_separator: str
    instruction_separator: str
    instruction: tuple[Template, ...]
    message: Template
    length_modifier: Template
    response_length: bool
    input_length: bool
    lengths: tuple[str, ...]
    stop: tuple[Template, ...]
    source: Path | None = None
    # Between the instruction block and the first message, instead of block_separator (SillyTavern's
    # "chat start" line); None: block_separator.
    history_start: str | None = None
    # Header of the reply being written (SillyTavern's last output sequence); None: response_header.
    last_response_header: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)  # what an import could not express
    # Group chats (see `group_layout`): the instruction's paragraphs, and those said once per member.
    group_instruction: tuple[Template, ...] = ()
    group_member: tuple[Template, ...] = ()
    # Paragraphs of the summarisation request; () for the default built from the headers.
    summary_prompt: tuple[Template, ...] = ()

    @property
    def greeting_in_instruction(self) -> bool:
        """True when an instruction paragraph takes the greeting (it then leaves the history)."""
        return any(part == ("greeting", True) for tpl in self.instruction for part in tpl)

    def uses(self, var: str) -> bool:
        """True when an instruction paragraph uses ``{{var}}``."""
        return any(part == (var, True) for tpl in self.instruction for part in tpl)

    def group_layout(self) -> tuple[tuple[Template, ...], tuple[Template, ...]]:
        """The instruction of a group chat and the paragraphs said once per member.

        A format without its own ``group_instruction`` gets one made from ``instruction``: the paragraphs
        describing the character are said per member where the first of them stood, and ``{{char}}``
        elsewhere names every member.
        """
        if self.group_instruction:
            return self.group_instruction, self.group_member
        member = tuple(p for p in self.instruction if any(v and n in MEMBER_VARS for n, v in p))
        shared: list[Template] = []
        for p in self.instruction:
            if p not in member:
                shared.append(p)
            elif MEMBERS not in shared:
                shared.append(MEMBERS)
        if MEMBERS not in shared:
            shared.insert(0, MEMBERS)
        return tuple(shared), member


def parse_template(text: str, allowed: frozenset[str], where: str, source: Path | str) -> Template:
    """Split ``text`` into literal runs and ``{{variables}}``; unknown variables are an error."""
    parts: list[Part] = []
    pos = 0
    for m in _VAR.finditer(text):
        if m.start() > pos:
            parts.append((text[pos : m.start()], False))
        var = m.group(1).lower()
        if var not in allowed:
            raise ConfigError(
                f"{where}: unknown variable {{{{{m.group(1)}}}}} (allowed: {', '.join(sorted(allowed))})",
                source,
            )
        parts.append((var, True))
        pos = m.end()
    if pos < len(text):
        parts.append((text[pos:], False))
    return tuple(parts)


_KEYS = {
    "description": (str, False),
    "preamble": (str, False),
    "instruction_header": (str, True),
    "input_header": (str, True),
    "response_header": (str, True),
    "block_separator": (str, True),
    "instruction_separator": (str, True),
    "instruction": (list, True),
    "message": (str, True),
    "length_modifier": (str, False),
    "response_length": (bool, False),
    "input_length": (bool, False),
    "lengths": (list, False),
    "stop": (list, False),
    "history_start": (str, False),
    "last_response_header": (str, False),
    "notes": (list, False),
    "group_instruction": (list, False),
    "group_member": (list, False),
    "summary_prompt": (list, False),
}


def parse_format(data: Any, name: str, source: Path | str) -> PromptFormat:
    """Check a format's YAML data and turn it into a `PromptFormat`."""
    if not isinstance(data, dict):
        raise ConfigError("a prompt format must be a mapping", source)
    for key in data:
        if key not in _KEYS and key != "name":
            raise ConfigError(f"unknown key {str(key)!r}", source)
    for key, (kind, required) in _KEYS.items():
        value = data.get(key)
        if value is None:
            if required:
                raise ConfigError(f"missing {key!r}", source)
            continue
        if not isinstance(value, kind):
            raise ConfigError(f"{key!r} must be {'a list' if kind is list else kind.__name__}", source)

    def texts(key: str) -> list[str]:
        items = data.get(key) or []
        for item in items:
            if not isinstance(item, str):
                raise ConfigError(f"{key!r} must be a list of text", source)
        return list(items)

    instruction = tuple(
        parse_template(t, INSTRUCTION_VARS, f"instruction #{i + 1}", source)
        for i, t in enumerate(texts("instruction"))
    )
    if not instruction:
        raise ConfigError("'instruction' must list at least one paragraph", source)
    message = parse_template(data["message"], MESSAGE_VARS, "message", source)
    if ("message", True) not in message:
        raise ConfigError("'message' must contain {{message}}", source)
    group_instruction = tuple(
        parse_template(t, GROUP_VARS, f"group_instruction #{i + 1}", source)
        for i, t in enumerate(texts("group_instruction"))
    )
    group_member = tuple(
        parse_template(t, INSTRUCTION_VARS, f"group_member #{i + 1}", source)
        for i, t in enumerate(texts("group_member"))
    )
    if group_instruction and MEMBERS not in group_instruction:
        raise ConfigError("'group_instruction' needs a paragraph that is just {{members}}", source)
    lengths = tuple(texts("lengths"))
    for length in lengths:
        if not _NAME.fullmatch(length):
            raise ConfigError(f"length {length!r} must be one plain word", source)
    preamble = data.get("preamble")
    return PromptFormat(
        name=name,
        description=data.get("description") or "",
        preamble=preamble if preamble else None,
        instruction_header=data["instruction_header"],
        input_header=data["input_header"],
        response_header=data["response_header"],
        block_separator=data["block_separator"],
        instruction_separator=data["instruction_separator"],
        instruction=instruction,
        message=message,
        length_modifier=parse_template(
            data.get("length_modifier") or " (length = {{length}})", LENGTH_VARS, "length_modifier", source
        ),
        response_length=bool(data.get("response_length", True)),
        input_length=bool(data.get("input_length", False)),
        lengths=lengths,
        stop=tuple(parse_template(t, STOP_VARS, "stop", source) for t in texts("stop")),
        source=Path(source) if isinstance(source, Path) else None,
        history_start=data.get("history_start"),
        last_response_header=data.get("last_response_header") or None,
        notes=tuple(texts("notes")),
        group_instruction=group_instruction,
        group_member=group_member,
        summary_prompt=tuple(
            parse_template(t, SUMMARY_VARS, f"summary_prompt #{i + 1}", source)
            for i, t in enumerate(texts("summary_prompt"))
        ),
    )


def _format_files(problems: list[ConfigError] | None = None) -> dict[str, Path]:
    # User files come second so they override shipped ones of the same name; in the user's folder a
    # YAML file wins over a JSON one of the same name (an imported copy over its source).
    found: dict[str, Path] = {}
    for folder in (SHIPPED_DIR, profile().user_formats_dir):
        user = folder != SHIPPED_DIR
        try:
            paths = sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                           key=lambda p: (p.stem, p.suffix.lower() != ".json", p.name))
        except OSError:
            continue
        here: dict[str, Path] = {}
        for path in paths:
            suffix = path.suffix.lower()
            problem = None
            if suffix not in (".yaml", ".json") or path.is_dir():
                problem = "ignored: a prompt format is a .yaml file or a SillyTavern instruct/context .json file"
            elif not _NAME.fullmatch(path.stem):
                problem = "ignored: a format's file name must be letters, digits, '.', '_' or '-' (up to 64)"
            if problem:
                if user and problems is not None:
                    problems.append(ConfigError(problem, path))
                continue
            if path.stem in here and problems is not None:
                problems.append(ConfigError(f"ignored: {path.name} is also there; {here[path.stem].name} is "
                                            "skipped", path.parent))
            here[path.stem] = path
        found.update(here)
    return found


def format_origin(name: str) -> str:
    """Where the format called ``name`` comes from: "built-in", "user" or "user, overrides built-in"."""
    path = _format_files().get(name)
    if path is None or path.parent == SHIPPED_DIR:
        return "built-in"
    return "user, overrides built-in" if (SHIPPED_DIR / f"{name}.yaml").is_file() else "user"


def list_formats() -> list[str]:
    """Names of all formats, shipped and the user's, sorted."""
    return sorted(_format_files())


def _read(name: str, path: Path) -> PromptFormat:
    if path.suffix.lower() == ".json":
        from rpchat.prompt.st_import import convert_st_files

        return parse_format(convert_st_files([path]), name, path)
    return parse_format(load_yaml(path), name, path)


def load_format(name: str) -> PromptFormat:
    """Load the format called ``name`` (a user file overrides a shipped one); ConfigError if bad."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"bad prompt format name {str(name)[:60]!r}", "formats")
    path = _format_files().get(name)
    if path is None:
        known = ", ".join(list_formats())
        raise ConfigError(f"no prompt format named {name!r} (known: {known})", profile().user_formats_dir)
    return _read(name, path)


def load_formats() -> tuple[dict[str, PromptFormat], list[ConfigError]]:
    """Every format that loads, plus the errors of those that do not (to show in one notice).

    A broken user file that overrides a shipped format falls back to the shipped one. Files in the
    user's folder that are not formats at all are reported too, never silently skipped.
    """
    formats: dict[str, PromptFormat] = {}
    errors: list[ConfigError] = []
    for name, path in _format_files(errors).items():
        try:
            formats[name] = _read(name, path)
        except ConfigError as e:
            errors.append(e)
            shipped = SHIPPED_DIR / f"{name}.yaml"
            if path != shipped and shipped.is_file():
                formats[name] = parse_format(load_yaml(shipped), name, shipped)
    return formats, errors


def import_format(sources: Sequence[Path], name: str | None = None, folder: Path | None = None) -> Imported:
    """Convert SillyTavern instruct and/or context templates into ``<folder>/<name>.yaml``.

    ``name`` defaults to the first file's stem; a built-in format's name gets a suffix instead of being
    hidden. The notes list what the format cannot express (also kept in the YAML as ``notes``).
    """
    from rpchat.prompt.st_import import convert_st_files

    data = convert_st_files([Path(p) for p in sources])
    shipped = {p.stem for p in SHIPPED_DIR.glob("*.yaml")}
    final, shadow = import_name(name if name is not None else Path(sources[0]).stem, shipped, "prompt format")
    folder = folder if folder is not None else profile().user_formats_dir
    target = folder / f"{final}.yaml"
    parse_format(data, final, target)  # never write a file that would not load
    notes = [shadow] if shadow else []
    if target.exists():
        notes.append(f"replaced the earlier {target.name}")
    notes += data.get("notes") or []
    try:
        write_atomic(target, _dump_format(data))
    except OSError as e:
        raise ConfigError(f"cannot write prompt format: {e.strerror or e}", target) from None
    return Imported(final, target, tuple(notes))


class _FormatDumper(yaml.SafeDumper):
    """Paragraphs as literal blocks, other text with newlines double-quoted: what a user can read and edit."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    lines = [line for line in value.split("\n") if line.strip()]
    style = "|" if len(lines) > 1 and not value.startswith("\n") else '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_FormatDumper.add_representer(str, _text)


def _dump_format(data: dict[str, Any]) -> bytes:
    text = yaml.dump(data, Dumper=_FormatDumper, sort_keys=False, allow_unicode=True, width=110)
    return (_IMPORTED_HEADER + text).encode("utf-8")


_IMPORTED_HEADER = """\
# Converted from SillyTavern by `rpchat formats import`; edit freely. The instruction paragraphs are
# SillyTavern's story string: joined with nothing between them, and a paragraph whose text variable
# ({{card_description}}, {{personality}}, {{scenario}}, {{persona}}, {{lore_*}}) is empty is left out,
# as SillyTavern's {{#if}} does. The variables are described in rpchat/prompt/formats/limarp-v3.yaml.
"""

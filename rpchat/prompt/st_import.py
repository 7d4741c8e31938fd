"""SillyTavern instruct and context templates -> rpchat prompt format data (what a format YAML holds).

SillyTavern builds a text-completion prompt as: the story string (the context template's Handlebars
text), the chat start line, each message as ``prefix + sep + [Name: ]text + suffix`` (the instruct
template; ``sep`` is a newline when ``wrap`` is on), and last the output sequence with ``Name:``.
rpchat's `PromptFormat` says the same with an instruction block whose paragraphs drop out when their
text is empty (SillyTavern's ``{{#if x}}...{{/if}}``), headers, a message template and one block
separator. Whatever cannot be said that way is listed in ``notes``, never dropped without a word.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rpchat.errors import ConfigError
from rpchat.userfile import read_json_object

MAX_ST_TEMPLATE_BYTES = 1024 * 1024

# SillyTavern's "Default" context template, used when only an instruct template is given.
DEFAULT_STORY_STRING = (
    "{{#if system}}{{system}}\n{{/if}}{{#if wiBefore}}{{wiBefore}}\n{{/if}}{{#if description}}{{description}}\n"
    "{{/if}}{{#if personality}}{{char}}'s personality: {{personality}}\n{{/if}}{{#if scenario}}Scenario: "
    "{{scenario}}\n{{/if}}{{#if wiAfter}}{{wiAfter}}\n{{/if}}{{#if persona}}{{persona}}\n{{/if}}"
)
# Story string parameters -> rpchat template variables.
_VARS = {
    "description": "card_description", "personality": "personality", "scenario": "scenario",
    "persona": "persona", "char": "char", "user": "user", "wibefore": "lore_before",
    "lorebefore": "lore_before", "wiafter": "lore_after", "loreafter": "lore_after",
}
_NAMES = {"char", "user"}
# Parameters rpchat never fills (example dialogues, author's-note anchors): always empty here.
_EMPTY = {"mesexamples", "mesexamplesraw", "anchorbefore", "anchorafter"}
_TAG = re.compile(r"\{\{\s*([#/]?)\s*([A-Za-z_][A-Za-z0-9_]*)([^{}]*)\}\}")

# Instruct keys that only steer SillyTavern's own UI (which preset is picked, when): nothing to apply.
_INSTRUCT_UI = {
    "name", "preset", "enabled", "activation_regex", "bind_to_context", "derived", "skip_examples",
    "names_force_groups", "separator_sequence", "names", "macro",
}
_CONTEXT_UI = {"name", "preset", "allow_jailbreak", "always_force_name2", "example_separator", "include_newline"}
_INSTRUCT_USED = {
    "input_sequence", "output_sequence", "last_output_sequence", "stop_sequence", "wrap", "names_behavior",
    "input_suffix", "output_suffix", "system_prompt", "system_sequence_prefix", "system_sequence_suffix",
    "story_string_prefix", "story_string_suffix", "sequences_as_stop_strings",
}
_CONTEXT_USED = {"story_string", "chat_start", "use_stop_strings", "names_as_stop_strings"}
# Instruct keys rpchat cannot express; each is noted when it is set (non-empty / true).
_INSTRUCT_UNSUPPORTED = {
    "first_output_sequence": "a different header for the first reply",
    "first_input_sequence": "a different header for the first user message",
    "last_input_sequence": "a different header for the last user message",
    "system_sequence": "system/narrator message header",
    "system_suffix": "system/narrator message suffix",
    "last_system_sequence": "header for system instructions at the end",
    "system_same_as_user": "system messages formatted as user messages",
    "user_alignment_message": "a user message inserted before the first reply",
}
_CONTEXT_UNSUPPORTED = {
    "trim_sentences": "trimming replies to whole sentences",
    "single_line": "one-line replies",
    "story_string_position": "story string placed inside the chat",
    "story_string_depth": "story string placed inside the chat",
    "story_string_role": "story string placed inside the chat",
}


def _load(path: Path) -> dict[str, Any]:
    return read_json_object(
        path, MAX_ST_TEMPLATE_BYTES, ConfigError, "SillyTavern instruct or context template", "template file"
    )


def _kind(data: dict[str, Any]) -> str:
    if isinstance(data.get("instruct"), dict) or isinstance(data.get("context"), dict):
        return "master"  # SillyTavern's "Master Export" of instruct + context (+ system prompt)
    if "story_string" in data:
        return "context"
    if "input_sequence" in data or "output_sequence" in data:
        return "instruct"
    if "content" in data and set(data) <= {"name", "content", "post_history"}:
        return "sysprompt"
    return "unknown"


def _text(data: dict[str, Any], key: str, source: Path | str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be text, not {type(value).__name__}", source)
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _set(value: Any) -> bool:
    return value not in (None, "", False, 0, [], {})


class _Notes:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, note: str) -> None:
        if note not in self.items:
            self.items.append(note)


def _plain(text: str, where: str, notes: _Notes, allowed: frozenset[str] = frozenset(_NAMES)) -> str:
    """Fixed text with its ``{{char}}``/``{{user}}`` kept; any other macro is left out (and noted)."""

    def keep(m: re.Match[str]) -> str:
        word = m.group(2).lower()
        if not m.group(1) and not m.group(3).strip() and word in allowed:
            return "{{" + word + "}}"
        notes.add(f"{where}: the macro {m.group(0)[:40]} is not supported and was left out")
        return ""

    return _TAG.sub(keep, text)


def _story(template: str, system: str, source: Path | str, notes: _Notes) -> list[str]:
    """The story string as instruction paragraphs (joined with no separator); errors name ``source``."""
    where = "story_string"
    paragraphs: list[str] = []
    buf = ""  # fixed text collected so far
    cond: str | None = None  # the open {{#if}}'s rpchat variable ("" = always shown, None = not in one)
    body = ""
    skipping = False
    trim_next = False
    pos = 0

    def literal(text: str) -> None:
        nonlocal buf, body, trim_next
        if trim_next:
            text, trim_next = text.lstrip("\n"), False
        if skipping:
            return
        if cond:
            body += text
        else:
            buf += text

    def flush() -> None:
        nonlocal buf
        if buf:
            paragraphs.append(buf)
            buf = ""

    for m in _TAG.finditer(template):
        literal(_plain(template[pos : m.start()], where, notes))
        pos = m.end()
        mark, word, rest = m.group(1), m.group(2).lower(), m.group(3).strip()
        if mark == "#" and word == "if":
            if cond is not None or skipping:
                raise ConfigError("story_string: nested {{#if}} blocks are not supported", source)
            param = rest.lower()
            if param == "system" or param in _NAMES:
                cond = ""  # decided now: the system prompt is fixed text, names are never empty
                skipping = param == "system" and not system
            elif param in _VARS:
                flush()
                cond = _VARS[param]
            else:
                if param not in _EMPTY:
                    notes.add(f"{where}: {{{{#if {rest[:30]}}}}} tests something rpchat does not have; left out")
                cond, skipping = "", True
            body = ""
        elif mark == "/" and word == "if":
            if cond is None:
                raise ConfigError("story_string: {{/if}} without {{#if}}", source)
            if cond and body:
                if "{{" + cond + "}}" not in body:
                    notes.add(f"{where}: a block shown when {cond} is set is shown only when its own text is")
                paragraphs.append(body)
            elif body:
                buf += body
            cond, body, skipping = None, "", False
        elif mark:
            raise ConfigError(f"story_string: {{{{{mark}{word}}}}} is not supported (only {{{{#if}}}})", source)
        elif word == "trim":
            if cond:
                body = body.rstrip("\n")
            else:
                if not buf and paragraphs:
                    notes.add(f"{where}: {{{{trim}}}} after a conditional part keeps the newline before it")
                buf = buf.rstrip("\n")
            trim_next = True
        elif word == "system" and not rest:
            literal(_plain(system, "system prompt", notes))
        elif word in _VARS and not rest:
            var = _VARS[word]
            if var in ("char", "user") or cond:
                literal("{{" + var + "}}")
            elif not skipping:
                flush()
                paragraphs.append("{{" + var + "}}")
        elif word in _EMPTY:
            if word.startswith("mesexamples"):
                notes.add(f"{where}: example dialogues ({{{{{m.group(2)}}}}}) are not sent by rpchat")
        else:
            notes.add(f"{where}: the macro {m.group(0)[:40]} is not supported and was left out")
    if cond is not None:
        raise ConfigError("story_string: {{#if}} without {{/if}}", source)
    literal(_plain(template[pos:], where, notes))
    flush()
    return paragraphs


def _finish_story(paragraphs: list[str], wrap: bool) -> list[str]:
    def uses(var: str) -> bool:
        return any("{{" + var + "}}" in p for p in paragraphs)

    # rpchat always places lorebook text; where the story string has no slot, use rpchat's places.
    if not uses("lore_before"):
        paragraphs.insert(0, "{{lore_before}}\n")
    if not uses("lore_after"):
        at = next((i + 1 for i, p in enumerate(paragraphs) if "{{card_description}}" in p), len(paragraphs))
        paragraphs.insert(at, "{{lore_after}}\n")
    if paragraphs and "{{" not in paragraphs[0]:
        paragraphs[0] = paragraphs[0].lstrip("\n")  # SillyTavern drops leading newlines
        if not paragraphs[0]:
            paragraphs.pop(0)
    # SillyTavern ends the story string with a newline (when wrapping) if it lacks one.
    if wrap and paragraphs and "{{" not in paragraphs[-1] and not paragraphs[-1].endswith("\n"):
        paragraphs[-1] += "\n"
    return paragraphs or ["{{lore_before}}"]


def _header(seq: str, wrap: bool, key: str, notes: _Notes) -> str:
    """A sequence as an rpchat header (the builder puts a newline after a non-empty header)."""
    seq = _plain(seq, key, notes, frozenset())
    if wrap or not seq:
        return seq
    if seq.endswith("\n"):
        return seq[:-1]
    notes.add(f"{key}: with wrap off, the message follows {seq!r} directly; rpchat puts a newline between")
    return seq


def _stops(instruct: dict[str, Any], context: dict[str, Any], wrap: bool, notes: _Notes) -> list[str]:
    stops: list[str] = []
    if instruct:
        keys = ("stop_sequence", "input_sequence", "output_sequence", "first_output_sequence",
                "last_output_sequence", "system_sequence", "last_system_sequence")
        lines = "\n".join(str(instruct.get(k) or "") for k in keys).split("\n")
        for line in dict.fromkeys(lines):
            if line.strip():
                stops.append(("\n" if wrap else "") + _plain(line, "stop", notes))
    if context.get("names_as_stop_strings", True):
        stops.append("\n{{user}}:")
    if context.get("use_stop_strings"):
        for key in ("chat_start", "example_separator"):
            if context.get(key):
                stops.append("\n" + _plain(str(context[key]), key, notes))
    return list(dict.fromkeys(stops))


def convert_st(
    instruct: dict[str, Any] | None, context: dict[str, Any] | None, *, sysprompt: str | None = None,
    label: str = "template", sources: tuple[Path | str, Path | str] = ("instruct", "context"),
) -> dict[str, Any]:
    """Format data (as `parse_format` reads it) for SillyTavern ``instruct`` and/or ``context`` templates.

    ``sources`` (the instruct's and the context's file) are what errors name.
    """
    notes = _Notes()
    inst = instruct or {}
    ctx = context or {}
    where_i, where_c = sources
    wrap = bool(inst.get("wrap", True)) if instruct is not None else True
    if context is None:
        notes.add("no context template given: SillyTavern's default story string is used")
    story = _text(ctx, "story_string", where_c) if context is not None else DEFAULT_STORY_STRING

    system = sysprompt if sysprompt is not None else _text(inst, "system_prompt", where_i)
    if system:
        sep = "\n" if wrap else ""
        prefix, suffix = _text(inst, "system_sequence_prefix", where_i), _text(inst, "system_sequence_suffix", where_i)
        system = (prefix + sep if prefix else "") + system + (sep + suffix if suffix else "")
    paragraphs = _story(story, system, where_c, notes)
    prefix, suffix = _text(inst, "story_string_prefix", where_i), _text(inst, "story_string_suffix", where_i)
    if prefix:
        paragraphs.insert(0, _plain(prefix, "story_string_prefix", notes))
    if suffix:
        paragraphs.append(_plain(suffix, "story_string_suffix", notes))
    paragraphs = _finish_story(paragraphs, wrap)

    if instruct is not None:
        behaviour = inst.get("names_behavior")
        if behaviour is None and "names" in inst:  # SillyTavern's older templates
            behaviour = "always" if inst.get("names") else "force"
        names = behaviour == "always"
        out_suffix = _text(inst, "output_suffix", where_i) or ("\n" if wrap else "")
        in_suffix = _text(inst, "input_suffix", where_i) or ("\n" if wrap else "")
        if in_suffix != out_suffix:
            notes.add(f"input_suffix {in_suffix!r} differs from output_suffix {out_suffix!r}: rpchat ends "
                      "every message with the output suffix")
        if wrap and not out_suffix.endswith("\n"):
            notes.add("with wrap on, SillyTavern puts a newline before the reply header; rpchat does not here")
        separator = _plain(out_suffix, "output_suffix", notes, frozenset())
        input_header = _header(_text(inst, "input_sequence", where_i), wrap, "input_sequence", notes)
        response_header = _header(_text(inst, "output_sequence", where_i), wrap, "output_sequence", notes)
        last = _text(inst, "last_output_sequence", where_i)
        last_header = _header(last, wrap, "last_output_sequence", notes) if last else None
        for key, what in _INSTRUCT_UNSUPPORTED.items():
            if _set(inst.get(key)):
                notes.add(f"{key} ({what}) is not supported")
        for key in sorted(set(inst) - _INSTRUCT_USED - _INSTRUCT_UI - set(_INSTRUCT_UNSUPPORTED)):
            notes.add(f"unknown instruct setting {key[:40]!r} ignored")
    else:
        # No instruct template: SillyTavern's plain chat, "Name: text" lines ending with "Char:".
        names, separator, input_header, response_header, last_header = True, "\n", "", "", None
    for key, what in _CONTEXT_UNSUPPORTED.items():
        if _set(ctx.get(key)):
            notes.add(f"{key} ({what}) is not supported")
    if _set(ctx.get("example_separator")):
        notes.add("example_separator: example dialogues are not sent by rpchat")
    if context is not None:
        for key in sorted(set(ctx) - _CONTEXT_USED - _CONTEXT_UI - set(_CONTEXT_UNSUPPORTED)):
            notes.add(f"unknown context setting {key[:40]!r} ignored")
    chat_start = _plain(_text(ctx, "chat_start", where_c), "chat_start", notes, frozenset())

    data: dict[str, Any] = {
        "description": f"Imported from SillyTavern: {label}",
        "preamble": None,
        "instruction_header": "",
        "input_header": input_header,
        "response_header": response_header,
        "block_separator": separator,
        "instruction_separator": "",
        "instruction": paragraphs,
        "message": "{{name}}: {{message}}" if names else "{{message}}",
        "response_length": False,
        "input_length": False,
        "lengths": [],
        "stop": _stops(inst, ctx, wrap, notes),
        "history_start": chat_start + "\n" if chat_start else "",
    }
    if last_header is not None:
        data["last_response_header"] = last_header
    if notes.items:
        data["notes"] = notes.items
    return data


def template_kind(path: Path) -> str:
    """"instruct", "context", "master" (both in one export), "sysprompt" or "unknown"; ConfigError if unreadable."""
    return _kind(_load(path))


def convert_st_files(paths: list[Path]) -> dict[str, Any]:
    """Format data for one or two SillyTavern JSON files (instruct, context, or a master export)."""
    if not paths:
        raise ConfigError("give a SillyTavern instruct and/or context template (.json)")
    found: dict[str, tuple[dict[str, Any], Path]] = {}
    for path in paths:
        data = _load(path)
        kind = _kind(data)
        if kind == "master":
            for part in ("instruct", "context"):
                if isinstance(data.get(part), dict):
                    found[part] = (data[part], path)
            prompt = data.get("sysprompt")
            if isinstance(prompt, dict) and isinstance(prompt.get("content"), str):
                found["sysprompt"] = (prompt, path)
            continue
        if kind == "unknown":
            raise ConfigError("not a SillyTavern instruct or context template (no input_sequence or "
                              "story_string)", path)
        if kind in found:
            raise ConfigError(f"two {kind} templates given; give one instruct and one context", path)
        found[kind] = (data, path)
    if "instruct" not in found and "context" not in found:
        raise ConfigError("a system prompt alone is not a format; add an instruct or context template", paths[0])
    label = " + ".join(f"{kind} {path.name}" for kind, (_, path) in found.items())
    instruct = found["instruct"][0] if "instruct" in found else None
    context = found["context"][0] if "context" in found else None
    sysprompt = found["sysprompt"][0]["content"] if "sysprompt" in found else None
    sources = (found.get("instruct", ({}, paths[0]))[1], found.get("context", ({}, paths[0]))[1])
    return convert_st(instruct, context, sysprompt=sysprompt, label=label, sources=sources)

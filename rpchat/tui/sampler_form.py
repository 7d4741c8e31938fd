"""Every sampler value of a preset as an editable row, each with its one-line explanation.

The settings screen shows one `SamplerForm`; edited values are checked by the same validator that
reads preset files, so the form and the YAML can never disagree about what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import HorizontalGroup, VerticalScroll
from textual.widgets import Checkbox, Input, Label, Static

from rpchat.engine.base import NEUTRAL_SAMPLING, Sampling
from rpchat.engine.presets import SAMPLER_HELP, SamplerPreset, sampling_from_dict
from rpchat.errors import ConfigError
from rpchat.text import strip_controls

# n_probs is rpchat's own (the token view asks for alternatives), not a sampler setting to tune.
FIELDS = [f.name for f in dataclasses.fields(Sampling) if f.name != "n_probs"]


def shown_value(name: str, value: Any) -> str:
    """A sampler value as the form's text box shows it."""
    if name == "seed" and value is None:
        return ""
    if isinstance(value, tuple):
        return json.dumps(list(value), ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as exactly this float
    return str(value)


def parse_value(name: str, text: str) -> Any:
    """The typed value for a text box's text; ValueError with a short reason when it is not one."""
    text = text.strip()
    default = getattr(NEUTRAL_SAMPLING, name)
    if name == "seed":
        return int(text) if text else None
    if name in ("dry_sequence_breakers", "banned_phrases"):
        try:
            value = json.loads(text) if text else []
        except json.JSONDecodeError:
            raise ValueError('a JSON list of strings, e.g. ["\\n", ":"]') from None
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(text)
        except ValueError:
            raise ValueError("a whole number") from None
    try:
        number = float(text)
    except ValueError:
        raise ValueError("a number") from None
    if not math.isfinite(number):
        raise ValueError("a finite number")
    return number


class SamplerForm(VerticalScroll):
    """Edit the `Sampling` of one preset; `read` returns the edited values or the problems."""

    DEFAULT_CSS = """
    SamplerForm { height: 1fr; border: round $panel; padding: 0 1; }
    SamplerForm #sampler-description { color: $text-muted; text-style: italic; margin-bottom: 1; }
    SamplerForm .sampler-row { height: auto; }
    SamplerForm .sampler-name { width: 22; color: $text-muted; }
    SamplerForm .sampler-row.-active .sampler-name { color: $text; text-style: bold; }
    SamplerForm .sampler-row Input { width: 16; }
    SamplerForm .sampler-row Checkbox { width: 16; }
    SamplerForm .sampler-help { width: 1fr; padding-left: 1; color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.preset: SamplerPreset | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="sampler-description", markup=False)
        for name in FIELDS:
            default = getattr(NEUTRAL_SAMPLING, name)
            box: Input | Checkbox
            if isinstance(default, bool):
                box = Checkbox("", default, id=f"s-{name}", compact=True)
            else:
                box = Input("", id=f"s-{name}", compact=True)
            yield HorizontalGroup(
                Label(name, classes="sampler-name"), box,
                Static(SAMPLER_HELP.get(name, ""), classes="sampler-help", markup=False),
                classes="sampler-row",
            )

    def show(self, preset: SamplerPreset | None, problem: str | None = None) -> None:
        """Fill the rows from ``preset`` (or show why there is none)."""
        self.preset = preset
        description = self.query_one("#sampler-description", Static)
        if preset is None:
            description.update(Text(strip_controls(problem or "No preset."), style="red"))
            return
        description.update(strip_controls(preset.description or f"Preset {preset.name}"))
        for name in FIELDS:
            value = getattr(preset.sampling, name)
            box = self.query_one(f"#s-{name}")
            if isinstance(box, Checkbox):
                box.value = bool(value)
            elif isinstance(box, Input):
                box.value = shown_value(name, value)
            self._mark(name, value)

    def _mark(self, name: str, value: Any) -> None:
        # Samplers that do something stand out; the ones at their "off" value stay dim.
        row = self.query_one(f"#s-{name}").parent
        if row is not None:
            row.set_class(value != getattr(NEUTRAL_SAMPLING, name), "-active")

    def read(self) -> tuple[Sampling | None, list[str]]:
        """The sampling the rows describe, or None and one message per bad value."""
        data: dict[str, Any] = {}
        problems: list[str] = []
        for name in FIELDS:
            box = self.query_one(f"#s-{name}")
            if isinstance(box, Checkbox):
                data[name] = box.value
                continue
            assert isinstance(box, Input)
            try:
                data[name] = parse_value(name, box.value)
            except ValueError as e:
                problems.append(f"Sampler {name}: {box.value.strip()!r} is not {e}")
        if problems:
            return None, problems
        source = f"preset {self.preset.name}" if self.preset else "preset"
        try:
            return sampling_from_dict(data, source), []
        except ConfigError as e:
            return None, [f"Sampler {e.problem.removeprefix('sampling.')}"]

    @property
    def changed(self) -> bool:
        """True when the rows differ from the preset they were filled from."""
        sampling, problems = self.read()
        return bool(problems) or (self.preset is not None and sampling != self.preset.sampling)

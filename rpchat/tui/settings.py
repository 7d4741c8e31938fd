"""The settings screen: model, engine, prompt format, sampler preset and theme, saved to config.yaml.

Push ``SettingsScreen(config)``; it dismisses with the saved `Config`, or None when cancelled. Every
field is checked before anything is written, and all problems are listed together.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, HorizontalGroup
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Input,
    Label,
    Select,
    Static,
    TabbedContent,
    TabPane,
    TextArea,
)  # fmt: skip

from rpchat.config import API_KEY_ENV, Config, save_config
from rpchat.engine.banned import clean_phrases, default_phrases
from rpchat.engine.gguf_info import ModelInfo, scan_models
from rpchat.engine.loader import FLASH_ATTN, KV_TYPES
from rpchat.engine.presets import SamplerPreset, import_preset, list_presets, load_preset, save_preset
from rpchat.engine.remote import API_NAMES
from rpchat.errors import ConfigError, RpchatError
from rpchat.paths import Paths, profile
from rpchat.prompt.formats import import_format, list_formats, load_format, load_formats
from rpchat.session import settings_banned
from rpchat.text import strip_controls
from rpchat.tui.bindings import bindings_for
from rpchat.tui.sampler_form import SamplerForm
from rpchat.tui.themes import prose_styles

MAX_CTX = 1 << 20
PREVIEW = (
    ("Marisol  ", "title"), ("*throws a blanket over you.* ", "action"), ('"Up you get, Theo." ', "dialogue"),
    ("_He looks half drowned._ ", "thought"), ("''The Gull Island Gazette'' ", "title"), ("(OOC: brb)", "ooc"),
)


def _field(label: str, widget: Any, *extra: Any) -> HorizontalGroup:
    # One line per setting: the whole Engine tab fits a 24-line terminal.
    for w in (widget, *extra):
        w.compact = True
    if isinstance(widget, Input):
        widget.value = strip_controls(widget.value)  # a path from config.yaml is data too
    return HorizontalGroup(Label(label, classes="field-label"), widget, *extra, classes="field")


class StImported(Message):
    """A SillyTavern file became the sampler preset or prompt format ``name`` (kind "preset"/"format")."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__()
        self.kind, self.name = kind, name


def ask_st_import(app: App[Any], kind: str) -> None:
    """Ask for a SillyTavern file and import it as a sampler preset (``kind="preset"``) or a prompt format.

    The result is announced once (with what could not be carried over) and posted to the screen
    below as `StImported`, so an open settings screen offers the new name at once.
    """
    from rpchat.prompt.st_import import template_kind
    from rpchat.tui.dialogs import PathPrompt

    what = "sampler preset" if kind == "preset" else "prompt format"

    def finish(paths: list[Path]) -> None:
        try:
            done = import_preset(paths[0]) if kind == "preset" else import_format(paths)
        except RpchatError as e:
            app.notify(str(e), title="Not imported", severity="error", markup=False)
            return
        text = f"Saved as {done.path}"
        if done.notes:
            text += "\n" + "\n".join(done.notes)
        app.notify(strip_controls(text), title=f"Imported {what} {done.name}",
                   severity="warning" if done.notes else "information", markup=False, timeout=12)
        app.screen.post_message(StImported(kind, done.name))

    def first(path: Path | None) -> None:
        if path is None:
            return
        if kind == "preset":
            finish([path])
            return
        try:
            template = template_kind(path)
        except RpchatError as e:
            app.notify(str(e), title="Not imported", severity="error", markup=False)
            return
        if template != "instruct":
            finish([path])
            return

        def second(context: Path | None) -> None:
            finish([path] if context is None else [path, context])

        app.push_screen(PathPrompt("Context template (optional)", suffixes=(".json",),
                                   message="The SillyTavern context template that goes with it (its story "
                                           "string). Esc: SillyTavern's default story string."), second)

    if kind == "preset":
        title, message = "Import a SillyTavern preset", "A SillyTavern text-generation preset (.json)."
    else:
        title, message = ("Import a SillyTavern template",
                          "A SillyTavern instruct template, context template or master export (.json).")
    app.push_screen(PathPrompt(title, suffixes=(".json",), message=message), first)


def _banned_list(text: str) -> list[str] | None:
    """The text area's phrases; None while they are the shipped list, so updates to it apply."""
    phrases = list(clean_phrases(strip_controls(text).splitlines()))
    return None if tuple(phrases) == default_phrases() else phrases


def _text(value: object) -> Text:
    # Model names and paths come from files: shown as data, never as markup.
    return Text(strip_controls(str(value)), no_wrap=True, overflow="ellipsis")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class SettingsScreen(Screen["Config | None"]):
    """Edit and save the user's `Config`."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("settings")

    class ModelsScanned(Message):
        """The models folder scan finished."""

        def __init__(self, folder: Path, models: list[ModelInfo]) -> None:
            super().__init__()
            self.folder, self.models = folder, models

    def __init__(self, config: Config | None = None, paths: Paths | None = None) -> None:
        super().__init__()
        self._paths = paths or profile()
        self._config = dataclasses.replace(config or Config(), engine=dataclasses.replace((config or Config()).engine))
        self._models: list[ModelInfo] = []
        self._theme_before: str | None = None

    # --- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        cfg, eng = self._config, self._config.engine
        yield Static("Settings", id="settings-title")
        with TabbedContent(id="tabs"):
            with TabPane("Model", id="tab-model"):
                yield _field("Models folder", Input(eng.models_dir or str(self._paths.models_dir), id="models-dir"))
                yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
                yield Static("", id="models-note", markup=False)
                yield _field("Model file", Input(eng.model or "", placeholder="empty: the bundled demo model",
                                                 id="model"))
                yield _field("LoRA adapter", Input(eng.lora or "", placeholder="optional .gguf adapter", id="lora"))
            with TabPane("Engine", id="tab-engine"):
                yield _field("Engine", Select([("local (llama.cpp)", "local"), ("remote server", "remote")],
                                              value=eng.kind if eng.kind in ("local", "remote") else "local",
                                              allow_blank=False, id="kind"))
                yield _field("Server URL", Input(eng.remote_url or "", placeholder="http://127.0.0.1:8080",
                                                 id="remote-url"))
                yield _field("Server API", Select([(a, a) for a in API_NAMES], allow_blank=False,
                                                  value=eng.remote_api if eng.remote_api in API_NAMES else "auto",
                                                  id="remote-api"))
                env_key = os.environ.get(API_KEY_ENV, "").strip()
                yield _field("API key", Input(eng.api_key or "", password=True, id="api-key", placeholder=(
                    f"${API_KEY_ENV} is set: it is used and never saved" if env_key else "optional")))
                yield _field("Context (n_ctx)", Input(str(eng.n_ctx), id="n-ctx"))
                yield _field("GPU layers", Input(_opt(eng.n_gpu_layers), placeholder="empty: all that fit",
                                                 id="n-gpu-layers"))
                yield _field("CPU threads", Input(_opt(eng.n_threads), placeholder="empty: physical cores",
                                                  id="n-threads"))
                yield _field("Batch size", Input(str(eng.n_batch), id="n-batch"))
                yield _field("KV cache type", Select([(k, k) for k in KV_TYPES], allow_blank=False,
                                                     value=eng.kv_type if eng.kv_type in KV_TYPES else "f16",
                                                     id="kv-type"))
                yield _field("Flash attention", Select([(f, f) for f in FLASH_ATTN], allow_blank=False,
                                                       value=eng.flash_attn if eng.flash_attn in FLASH_ATTN else "auto",
                                                       tooltip="auto: llama.cpp decides (on where it is faster)",
                                                       id="flash-attn"))
            with TabPane("Prompt & sampling", id="tab-prompt"):
                yield _field("Prompt format", Select(_choices(_safe(list_formats), cfg.format), value=cfg.format,
                                                     allow_blank=False, id="format"),
                             Button("Import…", id="import-format", tooltip="Import a SillyTavern template"))
                yield _field("Sampler preset", Select(self._preset_choices(cfg.preset), value=cfg.preset,
                                                      allow_blank=False, id="preset"),
                             Button("Import…", id="import-preset", tooltip="Import a SillyTavern preset"))
                yield _field("New chat length", Select(self._length_choices(cfg.format), value=cfg.default_length or "",
                                                       allow_blank=False, id="default-length"))
                yield _field("Reply budget", Input(str(cfg.max_new_tokens), id="max-new-tokens"))
                yield _field("Banned phrases", TextArea("\n".join(settings_banned(cfg)), id="banned-phrases",
                                                        soft_wrap=True),
                             Static("one per line; the local engine rewrites them", id="banned-hint", markup=False))
                yield SamplerForm(id="sampler-form")
            with TabPane("Theme", id="tab-theme"):
                yield _field("Theme", Select([(n, n) for n in self._theme_names()], value=self._current_theme(),
                                             allow_blank=False, id="theme"))
                yield Static(id="theme-preview")
        yield Static("", id="problems", markup=False)
        with Horizontal(id="buttons"):
            yield Button("Cancel", id="cancel", compact=True)
            yield Button("Save", id="save", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self._theme_before = self.app.theme
        table = self.query_one("#models", DataTable)
        table.add_columns("Model", "Arch", "Quant", "Params", "Context", "Size", "File")
        self._scan(self._models_folder())
        self._show_preset(self._config.preset)
        self._show_theme_preview()
        problems: list[ConfigError] = []
        list_presets(self._paths.user_presets_dir, errors=problems)
        problems += load_formats()[1]
        if problems:
            # Bad user files are skipped in the lists above; say so once rather than hide them.
            self.notify(strip_controls("; ".join(str(p) for p in problems)), title="Skipped files",
                        severity="warning", markup=False)
        self._engine_kind_changed()

    def _theme_names(self) -> list[str]:
        names = sorted(self.app.available_themes)
        # rpchat's own themes first: they style the roleplay prose.
        return [n for n in names if n.startswith("rpchat")] + [n for n in names if not n.startswith("rpchat")]

    def _current_theme(self) -> str:
        names = self.app.available_themes
        return self._config.theme if self._config.theme in names else self.app.theme

    # --- models ------------------------------------------------------------------------------------
    def _models_folder(self) -> Path:
        return Path(self.query_one("#models-dir", Input).value.strip() or self._paths.models_dir).expanduser()

    @work(thread=True, exclusive=True, group="scan-models", exit_on_error=False)
    def _scan(self, folder: Path) -> None:
        # Reading GGUF headers touches disk; a folder on a slow drive must not freeze the UI.
        try:
            models = scan_models(folder)
        except OSError:
            models = []  # an unreadable folder lists nothing, like an empty one
        self.post_message(self.ModelsScanned(folder, models))

    @on(ModelsScanned)
    def _show_models(self, event: ModelsScanned) -> None:
        self._models = event.models
        table = self.query_one("#models", DataTable)
        table.clear()
        for i, m in enumerate(event.models):
            ctx = f"{m.context_length:,}" if m.context_length else "?"
            rel = m.path.relative_to(event.folder) if m.path.is_relative_to(event.folder) else m.path
            name = m.name if not m.error else f"{m.name} (unreadable: {m.error})"
            table.add_row(_text(name), _text(m.architecture), _text(m.quantization), _text(m.size_label or "?"),
                          _text(ctx), _text(_size(m.size_bytes)), _text(rel), key=str(i))
        note = self.query_one("#models-note", Static)
        if event.models:
            note.update("Enter on a row picks that model.")
        else:
            note.update(strip_controls(f"No .gguf files in {event.folder}. Put models there, or type another "
                                       "folder above and press Enter."))

    @on(Input.Submitted, "#models-dir")
    def _rescan(self) -> None:
        self._scan(self._models_folder())

    @on(DataTable.RowSelected, "#models")
    def _pick_model(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key is not None and key.isdigit() and int(key) < len(self._models):
            self.query_one("#model", Input).value = str(self._models[int(key)].path)

    # --- format, presets and theme --------------------------------------------------------------------
    def _length_choices(self, format_name: str) -> list[tuple[Text, str]]:
        try:
            lengths = list(load_format(format_name).lengths)
        except RpchatError:
            lengths = []
        current = self._config.default_length
        if current and current not in lengths:
            lengths.append(current)
        return [(_text("auto (the model decides)"), "")] + [(_text(n), n) for n in lengths]

    @on(Select.Changed, "#format")
    def _format_changed(self, event: Select.Changed) -> None:
        # Each format has its own length words; keep the pick when the new format has it too.
        if not isinstance(event.value, str):
            return
        box = self.query_one("#default-length", Select)
        keep = box.value
        options = self._length_choices(event.value)
        box.set_options(options)
        box.value = keep if any(value == keep for _, value in options) else ""

    def _preset_choices(self, current: str) -> list[tuple[Text, str]]:
        return _choices([p.name for p in _safe(lambda: list_presets(self._paths.user_presets_dir))], current)

    @on(Button.Pressed, "#import-preset")
    def _import_preset(self) -> None:
        ask_st_import(self.app, "preset")

    @on(Button.Pressed, "#import-format")
    def _import_format(self) -> None:
        ask_st_import(self.app, "format")

    @on(StImported)
    def _imported(self, event: StImported) -> None:
        # Offer the new name at once, and pick it: importing is how the user says they want it.
        box = self.query_one(f"#{event.kind}", Select)
        if event.kind == "preset":
            box.set_options(self._preset_choices(event.name))
        else:
            box.set_options(_choices(_safe(list_formats), event.name))
        box.value = event.name

    @on(Select.Changed, "#preset")
    def _preset_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self._show_preset(event.value)

    def _show_preset(self, name: str) -> None:
        form = self.query_one(SamplerForm)
        try:
            form.show(load_preset(name, self._paths.user_presets_dir))
        except RpchatError as e:
            form.show(None, str(e))

    @on(Select.Changed, "#theme")
    def _theme_changed(self, event: Select.Changed) -> None:
        # Preview at once; Cancel puts the old theme back.
        if isinstance(event.value, str) and event.value in self.app.available_themes:
            self.app.theme = event.value
            self._show_theme_preview()

    def _show_theme_preview(self) -> None:
        styles = prose_styles(self.app.current_theme)
        sample = Text()
        for text, kind in PREVIEW:
            sample.append(text, style=styles.get(kind, ""))
        self.query_one("#theme-preview", Static).update(sample)

    @on(Select.Changed, "#kind")
    def _engine_kind_changed(self) -> None:
        # Grey out what the chosen engine ignores, so nobody tunes threads for a remote server.
        remote = self.query_one("#kind", Select).value == "remote"
        for wid in ("remote-url", "remote-api", "api-key"):
            self.query_one(f"#{wid}").disabled = not remote
        for wid in ("n-gpu-layers", "n-threads", "n-batch", "kv-type", "flash-attn"):
            self.query_one(f"#{wid}").disabled = remote

    # --- save / cancel -------------------------------------------------------------------------------
    def read_form(self) -> tuple[Config, list[str]]:
        """The config the form describes, and every problem found (empty when it can be saved)."""
        problems: list[str] = []

        def value(wid: str) -> str:
            return self.query_one(f"#{wid}", Input).value.strip()

        def number(wid: str, label: str, low: int, high: int, *, optional: bool = False,
                   step: int = 1) -> int | None:
            raw = value(wid)
            if not raw and optional:
                return None
            try:
                n = int(raw.replace("_", "").replace(",", ""))
            except ValueError:
                problems.append(f"{label}: {raw!r} is not a whole number" if raw else f"{label}: enter a number")
                return None
            if not low <= n <= high:
                problems.append(f"{label}: must be between {low:,} and {high:,} (got {n:,})")
            elif n % step:
                problems.append(f"{label}: must be a multiple of {step} (e.g. {max(step, n // step * step):,})")
            return n

        old = self._config.engine
        kind = str(self.query_one("#kind", Select).value)
        url = value("remote-url")
        if kind == "remote" and not url:
            problems.append("Server URL: needed for a remote engine (e.g. http://127.0.0.1:8080)")
        elif url and not url.startswith(("http://", "https://")):
            problems.append(f"Server URL: {url!r} must start with http:// or https://")
        model, lora = value("model"), value("lora")
        for label, path in (("Model file", model), ("LoRA adapter", lora)):
            if path and not Path(path).expanduser().is_file():
                problems.append(f"{label}: {path} does not exist")
            elif path and not path.lower().endswith(".gguf"):
                problems.append(f"{label}: {path} is not a .gguf file")
        n_ctx = number("n-ctx", "Context (n_ctx)", 256, MAX_CTX, step=256)
        gpu = number("n-gpu-layers", "GPU layers", -1, 10_000, optional=True)
        threads = number("n-threads", "CPU threads", 1, 1024, optional=True)
        batch = number("n-batch", "Batch size", 1, 65_536)
        budget = number("max-new-tokens", "Reply budget", 1, 1_000_000)
        models_dir = value("models-dir")
        engine = dataclasses.replace(
            old, kind=kind, model=model or None, lora=lora or None, remote_url=url or None,
            remote_api=str(self.query_one("#remote-api", Select).value), api_key=value("api-key") or None,
            n_ctx=n_ctx or old.n_ctx, n_gpu_layers=gpu, n_threads=threads, n_batch=batch or old.n_batch,
            kv_type=str(self.query_one("#kv-type", Select).value),
            flash_attn=str(self.query_one("#flash-attn", Select).value),
            models_dir=None if models_dir in ("", str(self._paths.models_dir)) else models_dir,
        )
        config = dataclasses.replace(
            self._config, engine=engine, format=str(self.query_one("#format", Select).value),
            preset=str(self.query_one("#preset", Select).value), theme=str(self.query_one("#theme", Select).value),
            max_new_tokens=budget or self._config.max_new_tokens,
            default_length=str(self.query_one("#default-length", Select).value) or None,
            banned_phrases=_banned_list(self.query_one("#banned-phrases", TextArea).text),
        )
        return config, problems

    def action_save(self) -> None:
        """Check every field; save and close when all are fine, else list the problems.

        Edited sampler values are saved as the user's own copy of the preset (same name), which
        overrides the shipped file from then on.
        """
        config, problems = self.read_form()
        form = self.query_one(SamplerForm)
        sampling, sampler_problems = form.read()
        problems += sampler_problems
        if not problems:
            try:
                if sampling is not None and form.preset is not None and sampling != form.preset.sampling:
                    edited = SamplerPreset(form.preset.name, form.preset.description, sampling, "")
                    save_preset(edited, self._paths.user_presets_dir)
                save_config(self._paths, config)
            except (OSError, RpchatError) as e:
                problems.append(f"{self._paths.config_file}: cannot save: {getattr(e, 'strerror', None) or e}")
        self.query_one("#problems", Static).update("\n".join(problems))
        if problems:
            self.notify(problems[0], title="Settings not saved", severity="error")
            return
        self.dismiss(config)

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        """Close without saving (and undo the theme preview)."""
        if self._theme_before and self.app.theme != self._theme_before:
            self.app.theme = self._theme_before
        self.dismiss(None)


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _choices(names: list[str], current: str) -> list[tuple[Text, str]]:
    # A config naming a file that is gone still shows (and saves) its value rather than failing.
    options = [(_text(n), n) for n in names]
    if current not in names:
        options.append((_text(f"{current} (missing)"), current))
    return options


def _safe(lister: Any) -> list[Any]:
    try:
        return list(lister())
    except RpchatError:
        return []


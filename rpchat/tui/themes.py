"""Themes are YAML files: bundled ones in ``themes/``, the user's in the config dir's ``themes/``.

Each file becomes a `textual.theme.Theme`. The ``prose-*`` variables color roleplay text. Files that
cannot be used are reported together in one notice and skipped; the app then falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.style import Style
from textual.app import App
from textual.color import Color, ColorParseError
from textual.css.stylesheet import Stylesheet, StylesheetParseError
from textual.css.tokenize import tokenize_values
from textual.theme import Theme

from rpchat.config import load_config, save_config
from rpchat.errors import ConfigError
from rpchat.paths import Paths, bundled_dir, profile
from rpchat.yamlfile import load_yaml

# The screens' and modals' shared style sheet (RpchatApp.CSS_PATH); it ships inside the package.
STYLESHEET = Path(__file__).with_name("rpchat.tcss")

DEFAULT_THEME = "rpchat-dark"
# Textual's own theme is the last resort when no rpchat theme could be read at all.
LAST_RESORT_THEME = "textual-dark"

PROSE_KINDS = ("dialogue", "action", "thought", "title", "ooc")
# Used when a theme leaves a prose color out (and by Textual's built-in themes).
PROSE_DEFAULTS_DARK = {
    "prose-dialogue": "#f0d9a8",
    "prose-action": "#a9a3c2",
    "prose-thought": "#8fb8d8",
    "prose-title": "#d7a6e8",
    "prose-ooc": "#6f6a80",
}
PROSE_DEFAULTS_LIGHT = {
    "prose-dialogue": "#8a4b00",
    "prose-action": "#5d5870",
    "prose-thought": "#2d6a96",
    "prose-title": "#8e3fae",
    "prose-ooc": "#9a96a6",
}

_COLOR_KEYS = (
    "primary", "secondary", "accent", "warning", "error", "success",
    "foreground", "background", "surface", "panel", "boost",
)  # fmt: skip
_FLOAT_KEYS = ("luminosity_spread", "text_alpha")
_KNOWN_KEYS = {"name", "dark", "variables", *_COLOR_KEYS, *_FLOAT_KEYS}


def theme_from_data(data: Any, source: Path) -> Theme:
    """Build a Theme from one parsed YAML document; raises ConfigError naming the first problem."""
    if not isinstance(data, dict):
        raise ConfigError("a theme must be a mapping of keys to values", source)
    unknown = sorted(str(k) for k in data if k not in _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}", source)
    name = data.get("name", source.stem)
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise ConfigError("name must be one word, e.g. my-theme", source)
    if "primary" not in data:
        raise ConfigError("primary color is missing", source)
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ConfigError("dark must be true or false", source)
    colors = {key: _color(data[key], key, source) for key in _COLOR_KEYS if data.get(key) is not None}
    floats: dict[str, float] = {}
    for key in _FLOAT_KEYS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{key} must be a number from 0 to 1", source)
            floats[key] = float(value)
    variables = _variables(data.get("variables", {}), source)
    _check_textual_variables(variables, dark, source)
    defaults = PROSE_DEFAULTS_DARK if dark else PROSE_DEFAULTS_LIGHT
    options: dict[str, Any] = {**colors, **floats}
    return Theme(name=name, dark=dark, variables={**defaults, **variables}, **options)


def _color(value: Any, key: str, source: Path) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a color string like \"#88c0d0\"", source)
    try:
        Color.parse(value)
    except ColorParseError:
        raise ConfigError(f"{key}: {value!r} is not a color", source) from None
    return value


def _variables(value: Any, source: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("variables must be a mapping of name to value", source)
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise ConfigError(f"variables: {key!r} must map to a text value", source)
        # The prose colors also become Rich styles, so they must be plain colors.
        out[key] = _color(item, f"variables.{key}", source) if key.startswith("prose-") else str(item)
    return out


def _check_textual_variables(variables: dict[str, str], dark: bool, source: Path) -> None:
    # A bad value for a variable Textual's own widgets use would crash the app when the theme is
    # applied, so each one is tried in a real stylesheet first, in the property it styles.
    known = Theme("probe", primary="#000000", dark=dark).to_color_system().generate()
    for key, value in variables.items():
        try:
            tokenize_values({key: value})
        except Exception:  # noqa: BLE001 - the tokenizer raises several types; all mean "not CSS"
            raise ConfigError(f"variables.{key}: {value!r} is not a CSS value", source) from None
        if key not in known:
            continue
        prop = "text-style" if key.endswith("style") else "background" if key.endswith("background") else "color"
        sheet = Stylesheet(variables={**known, key: value})
        sheet.add_source(f"Screen {{ {prop}: ${key}; }}", read_from=(str(source), ""))
        try:
            sheet.parse()
        except StylesheetParseError:
            raise ConfigError(f"variables.{key}: {value!r} is not a valid {prop}", source) from None


def load_theme_file(path: Path) -> Theme:
    """Read one theme file; raises ConfigError with a one-line message."""
    return theme_from_data(load_yaml(path), path)


def theme_files(paths: Paths | None = None, problems: list[str] | None = None) -> list[Path]:
    """Bundled theme files, then the user's (a user theme with the same name wins).

    A folder that cannot be read is skipped and, when ``problems`` is given, noted there.
    """
    paths = paths or profile()
    found: list[Path] = []
    for folder in (bundled_dir("themes"), paths.user_themes_dir):
        if not folder.is_dir():
            continue
        try:
            found += sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        except OSError as e:
            if problems is not None:
                problems.append(str(ConfigError(f"cannot read the folder: {e.strerror or e}", folder)))
    return found


def load_themes(paths: Paths | None = None) -> tuple[list[Theme], str | None]:
    """All usable themes and one notice listing the files that could not be used (or None)."""
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    for path in theme_files(paths, problems):
        try:
            theme = load_theme_file(path)
        except ConfigError as e:
            problems.append(str(e))
            continue
        themes[theme.name] = theme
    notice = None
    if problems:
        noun = "theme file" if len(problems) == 1 else f"{len(problems)} theme files"
        notice = f"Skipped {noun}: " + "; ".join(problems)
    return list(themes.values()), notice


def install_themes(app: App[Any], wanted: str | None = None, paths: Paths | None = None) -> str | None:
    """Register every theme on ``app`` and switch to ``wanted`` (else the default).

    Returns one notice for the user (bad files, a missing theme) or None; never raises for bad files.
    """
    themes, notice = load_themes(paths)
    for theme in themes:
        app.register_theme(theme)
    names = [t.name for t in themes]
    chosen = pick_theme(wanted, names)
    if wanted and chosen != wanted:
        missing = f"theme {wanted!r} not found; using {chosen}"
        notice = f"{notice}; {missing}" if notice else missing.capitalize()
    app.theme = chosen
    return notice


def pick_theme(wanted: str | None, names: list[str]) -> str:
    """The theme to use: ``wanted`` when it exists, else rpchat's default, else Textual's."""
    if wanted and wanted in names:
        return wanted
    if DEFAULT_THEME in names:
        return DEFAULT_THEME
    return LAST_RESORT_THEME


def prose_variable_defaults(dark: bool = True) -> dict[str, str]:
    """Values for `App.get_theme_variable_defaults`, so CSS may use ``$prose-*`` with any theme."""
    return dict(PROSE_DEFAULTS_DARK if dark else PROSE_DEFAULTS_LIGHT)


def prose_styles(theme: Theme) -> dict[str, Style]:
    """Rich styles for each prose kind (dialogue, action, thought, title, ooc) under ``theme``."""
    defaults = PROSE_DEFAULTS_DARK if theme.dark else PROSE_DEFAULTS_LIGHT
    colors = {kind: theme.variables.get(f"prose-{kind}", defaults[f"prose-{kind}"]) for kind in PROSE_KINDS}
    return {
        "dialogue": Style(color=Color.parse(colors["dialogue"]).rich_color),
        "action": Style(color=Color.parse(colors["action"]).rich_color, italic=True),
        "thought": Style(color=Color.parse(colors["thought"]).rich_color, italic=True),
        "title": Style(color=Color.parse(colors["title"]).rich_color, bold=True),
        "ooc": Style(color=Color.parse(colors["ooc"]).rich_color, dim=True),
    }


def remember_theme(name: str, paths: Paths | None = None) -> None:
    """Store the chosen theme in the config file (the palette's theme switch calls this)."""
    paths = paths or profile()
    config = load_config(paths)
    if config.theme != name:
        config.theme = name
        save_config(paths, config)

"""Character avatars: real pixels (kitty graphics or sixel) where the terminal has them, else half-blocks.

Half-block works in any terminal with color: each cell shows ``▀`` with the upper pixel as foreground and
the lower as background, so a W x H cell area shows a W x 2H pixel picture. Transparent pixels keep the
terminal's background. Kitty/sixel drawing comes from the ``textual-image`` package; :func:`image_mode`
picks the mode from the environment (``RPCHAT_IMAGES=auto|halfblock|kitty|sixel`` forces one).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache

from PIL import Image
from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult, RenderResult
from textual.widget import Widget

UPPER_HALF = "\u2580"
LOWER_HALF = "\u2584"
IMAGE_MODES = ("halfblock", "kitty", "sixel")
MODE_ENV = "RPCHAT_IMAGES"
# Terminals known to draw kitty graphics with Unicode placeholders (what textual-image's TGP widget emits).
_KITTY_TERMS = ("xterm-kitty", "xterm-ghostty")
_KITTY_PROGRAMS = ("ghostty",)
# Terminals known to draw sixel. WezTerm speaks kitty graphics but not its placeholders, so it gets sixel.
_SIXEL_TERM_PREFIXES = ("foot", "mlterm", "contour", "yaft")
_SIXEL_PROGRAMS = ("wezterm", "iterm.app", "mintty")
# Refuse to decode huge images: a card PNG is a few hundred KB; a 16k x 16k "avatar" is an attack.
MAX_PIXELS = 4096 * 4096


def _decode(data: bytes) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            return None
        image.seek(0)  # the first frame of an animated image
        return image.convert("RGBA")
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken files; all mean "no picture"
        return None


def fit_size(image_w: int, image_h: int, cols: int, rows: int) -> tuple[int, int]:
    """The pixel size (w, h) that fits ``cols`` x ``rows`` half-block cells, keeping the aspect."""
    max_w, max_h = max(1, cols), max(1, rows * 2)
    scale = min(max_w / image_w, max_h / image_h)
    return max(1, round(image_w * scale)), max(1, round(image_h * scale))


def render_avatar(data: bytes, cols: int, rows: int) -> Text:
    """The image as half-block ``Text`` at most ``cols`` wide and ``rows`` tall (centered).

    Bytes that are not a readable image give a short placeholder instead of an error.
    """
    return _render(data, cols, rows).copy()


# Library rows re-render on every scroll; decoding and resizing once per size keeps that cheap.
@lru_cache(maxsize=64)
def _render(data: bytes, cols: int, rows: int) -> Text:
    image = _decode(data)
    if image is None:
        return Text("(no picture)", style="dim", justify="center")
    w, h = fit_size(image.width, image.height, cols, rows)
    if h % 2:
        h += 1  # an even pixel height fills whole cells
    image = image.resize((w, h), Image.Resampling.LANCZOS)
    pixels = image.load()
    assert pixels is not None
    pad = " " * ((cols - w) // 2) if cols > w else ""
    text = Text(no_wrap=True, overflow="crop")
    for y in range(0, h, 2):
        if y:
            text.append("\n")
        text.append(pad)
        for x in range(w):
            text.append(*_cell(pixels[x, y], pixels[x, y + 1]))  # type: ignore[arg-type]  # RGBA: 4-tuples
    return text


def _rgb(pixel: tuple[int, int, int, int]) -> Color | None:
    r, g, b, a = pixel
    if a < 128:
        return None
    return Color.from_rgb(r, g, b)


def _cell(top: tuple[int, int, int, int], bottom: tuple[int, int, int, int]) -> tuple[str, Style | None]:
    upper, lower = _rgb(top), _rgb(bottom)
    if upper is None and lower is None:
        return " ", None
    if upper is None:
        return LOWER_HALF, Style(color=lower)
    return UPPER_HALF, Style(color=upper, bgcolor=lower)


def image_mode(env: Mapping[str, str], *, tty: bool = True) -> str:
    """The avatar drawing mode for a terminal described by ``env``: "halfblock", "kitty" or "sixel".

    Without a real terminal (``tty`` False: headless, piped) it is always half-block.
    """
    if not tty:
        return "halfblock"
    forced = env.get(MODE_ENV, "").strip().lower()
    if forced in IMAGE_MODES:
        return forced
    term = env.get("TERM", "").lower()
    program = env.get("TERM_PROGRAM", "").lower()
    # tmux and screen drop graphics escapes unless configured for passthrough; half-block always shows.
    if env.get("TMUX") or env.get("STY") or term.startswith(("screen", "tmux")):
        return "halfblock"
    if term in _KITTY_TERMS or env.get("KITTY_WINDOW_ID") or program in _KITTY_PROGRAMS:
        return "kitty"
    if "sixel" in term or term.startswith(_SIXEL_TERM_PREFIXES) or program in _SIXEL_PROGRAMS \
            or env.get("KONSOLE_VERSION"):
        return "sixel"
    return "halfblock"


def _stdio_is_terminal() -> bool:
    try:
        return bool(sys.__stdin__ and sys.__stdout__ and sys.__stdin__.isatty() and sys.__stdout__.isatty())
    except (OSError, ValueError):  # closed or detached streams
        return False


def graphics_widget(mode: str) -> Callable[..., Widget] | None:
    """The textual-image widget class drawing ``mode`` ("kitty"/"sixel"), or None if it cannot load."""
    if mode not in ("kitty", "sixel"):
        return None
    try:
        # Imported on demand: importing textual_image queries a real terminal (cell size, sixel support).
        from textual_image.widget import SixelImage, TGPImage
    except Exception:  # noqa: BLE001 - a missing or broken optional renderer means "use half-blocks"
        return None
    return TGPImage if mode == "kitty" else SixelImage


# textual-image logs a traceback when a terminal does not answer its cell-size query; with no logging
# set up Python would print it over the screen. The 10x20 px cell it then assumes is fine.
logging.getLogger("textual_image").addHandler(logging.NullHandler())
# textual-image must ask the terminal for its cell size before Textual owns stdin, so when this terminal
# will get graphics, load it now (the TUI imports this module before the app starts).
graphics_widget(image_mode(os.environ, tty=_stdio_is_terminal()))


class AvatarView(Widget):
    """Shows a card's avatar, scaled to the widget's size; empty bytes show a placeholder.

    ``mode`` None picks it from the terminal (:func:`image_mode`); headless apps always get half-blocks.
    """

    DEFAULT_CSS = """
    AvatarView {
        width: 24;
        height: 12;
        align: center middle;
    }
    AvatarView > .avatar-graphic {
        width: auto;
        height: auto;
    }
    """

    def __init__(self, data: bytes | None = None, *, mode: str | None = None, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._data = data
        self._requested_mode = mode
        self._mode = "halfblock"
        self._graphic: Widget | None = None

    @property
    def mode(self) -> str:
        """How this view draws: "halfblock", "kitty" or "sixel" (known once mounted)."""
        return self._mode

    def compose(self) -> ComposeResult:
        mode = self._requested_mode
        if mode is None:
            mode = image_mode(os.environ, tty=not self.app.is_headless and _stdio_is_terminal())
        widget_class = graphics_widget(mode)
        if widget_class is None:
            self._mode = "halfblock"
            return
        self._mode = mode
        self._graphic = widget_class(self._picture(), classes="avatar-graphic")
        yield self._graphic

    def _picture(self) -> Image.Image | None:
        # Decoded here (size-capped, first frame, RGBA) so textual-image never sees the raw bytes.
        return _decode(self._data) if self._data else None

    def set_image(self, data: bytes | None) -> None:
        """Show another image (or none)."""
        self._data = data
        if self._graphic is not None:
            self._graphic.image = self._picture()  # type: ignore[attr-defined]
        self.refresh()

    def render(self) -> RenderResult:
        if self._graphic is not None and self._graphic.image is not None:  # type: ignore[attr-defined]
            return ""
        if not self._data:
            return Text("(no picture)", style="dim", justify="center")
        return render_avatar(self._data, self.size.width, self.size.height)


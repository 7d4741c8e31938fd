"""Character avatars drawn with half-block characters: two pixels per cell, any terminal with color.

Each cell shows ``▀`` with the upper pixel as foreground and the lower as background, so a W x H cell
area shows a W x 2H pixel picture. Transparent pixels keep the terminal's background.
"""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image
from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

UPPER_HALF = "\u2580"
LOWER_HALF = "\u2584"
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


class AvatarView(Widget):
    """Shows a card's avatar, scaled to the widget's size; empty bytes show a placeholder."""

    DEFAULT_CSS = """
    AvatarView {
        width: 24;
        height: 12;
    }
    """

    def __init__(self, data: bytes | None = None, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._data = data

    def set_image(self, data: bytes | None) -> None:
        """Show another image (or none)."""
        self._data = data
        self.refresh()

    def render(self) -> RenderResult:
        if not self._data:
            return Text("(no picture)", style="dim", justify="center")
        return render_avatar(self._data, self.size.width, self.size.height)


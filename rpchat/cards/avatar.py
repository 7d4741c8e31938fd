"""Avatars: a picture file a user picks, a placeholder for cards without an image, and the emblems of the
bundled cards.

Generated ones are drawn with Pillow from the name alone (no fonts, no files), so the same name always gives
the same picture on the same Pillow.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from rpchat.errors import CardError
from rpchat.userfile import read_capped

MAX_IMAGE_BYTES = 16 * 2**20  # a card's picture; more is a photo nobody meant to embed

RGB = tuple[int, int, int]
# Drawn larger then scaled down: Pillow's shapes have no anti-aliasing of their own.
SUPERSAMPLE = 2


def read_image(path: Path) -> bytes:
    """The bytes of a picture file for a card's avatar; a `CardError` naming the file (a picture file, not a
    card file) when it is missing, too big or not an image Pillow can read."""
    data = read_capped(path, MAX_IMAGE_BYTES, CardError, "picture file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    # Pillow raises many types for bad images; all mean "not usable".
    except Exception as e:  # noqa: BLE001
        raise CardError(f"not a picture file Pillow can read ({type(e).__name__})", path) from None
    return data


def placeholder_avatar(name: str, size: int = 256) -> bytes:
    """A PNG avatar for a card without one: a gradient and a mirrored pattern seeded by the name."""
    seed = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    hue = seed[0] / 255
    top = _hsv(hue, 0.45, 0.55)
    bottom = _hsv((hue + 0.12) % 1.0, 0.65, 0.25)
    light = _hsv((hue + 0.5) % 1.0, 0.25, 0.95)
    s = size * SUPERSAMPLE
    img = _gradient(s, top, bottom)
    draw = ImageDraw.Draw(img)
    margin = s // 8
    draw.ellipse([margin, margin, s - margin, s - margin], fill=(*_mix(top, bottom, 0.5), 255))
    cells = 5
    cell = (s - 2 * margin) * 0.62 / cells
    origin = (s - cell * cells) / 2
    bits = int.from_bytes(seed[1:5], "big")
    for row in range(cells):
        for col in range((cells + 1) // 2):
            if bits >> (row * 3 + col) & 1:
                for c in {col, cells - 1 - col}:
                    x, y = origin + c * cell, origin + row * cell
                    draw.rounded_rectangle(
                        [x + cell * 0.08, y + cell * 0.08, x + cell * 0.92, y + cell * 0.92],
                        radius=cell * 0.22,
                        fill=(*light, 235),
                    )
    return _png(img, size)


def emblem_avatar(motif: str, name: str, size: int = 400) -> bytes:
    """A small painted scene for a bundled card: ``lighthouse``, ``lantern`` or ``willow``."""
    painters = {"lighthouse": _lighthouse, "lantern": _lantern, "willow": _willow}
    if motif not in painters:
        raise ValueError(f"unknown motif {motif!r}")
    s = size * SUPERSAMPLE
    rng = random.Random(hashlib.sha256(name.encode()).digest())
    img = painters[motif](s, rng)
    return _png(img, size)


def _lighthouse(s: int, rng: random.Random) -> Image.Image:
    img = _gradient(s, (38, 52, 94), (246, 176, 128))
    _stars(img, rng, 40, max_y=0.35)
    _glow(img, (0.72 * s, 0.30 * s), 0.09 * s, (255, 236, 200))
    d = ImageDraw.Draw(img)
    d.ellipse(_box(0.72 * s, 0.30 * s, 0.07 * s), fill=(255, 244, 220))
    # Light beams from the lantern room, drawn on their own layer so they stay translucent.
    beams = Image.new("RGBA", img.size, (0, 0, 0, 0))
    b = ImageDraw.Draw(beams)
    lx, ly = 0.38 * s, 0.36 * s
    b.polygon(
        [(lx, ly - 0.01 * s), (-0.1 * s, 0.14 * s), (-0.1 * s, 0.34 * s), (lx, ly + 0.01 * s)],
        fill=(255, 240, 170, 70),
    )
    b.polygon(
        [(lx, ly - 0.01 * s), (1.1 * s, 0.20 * s), (1.1 * s, 0.36 * s), (lx, ly + 0.01 * s)],
        fill=(255, 240, 170, 50),
    )
    img.alpha_composite(beams.filter(ImageFilter.GaussianBlur(s * 0.01)))
    d = ImageDraw.Draw(img)
    # Sea: layered sine bands, darker towards the viewer.
    for i, colour in enumerate([(70, 96, 140), (48, 72, 118), (30, 50, 92), (20, 34, 70)]):
        base = s * (0.70 + i * 0.08)
        pts = [(x, base + math.sin(x / s * 9 + i * 1.7) * s * 0.012) for x in range(0, s + 8, 8)]
        d.polygon([(0, s), *pts, (s, s)], fill=(*colour, 255))
    # Rock and tower.
    d.polygon(
        [(0.16 * s, 0.78 * s), (0.26 * s, 0.66 * s), (0.50 * s, 0.65 * s), (0.62 * s, 0.78 * s)],
        fill=(34, 30, 40, 255),
    )
    top_w, bot_w, top_y, bot_y = 0.05 * s, 0.085 * s, 0.40 * s, 0.67 * s
    for band in range(5):
        y0 = top_y + (bot_y - top_y) * band / 5
        y1 = top_y + (bot_y - top_y) * (band + 1) / 5
        w0 = top_w + (bot_w - top_w) * band / 5
        w1 = top_w + (bot_w - top_w) * (band + 1) / 5
        colour = (196, 58, 52) if band % 2 == 0 else (244, 236, 226)
        d.polygon([(lx - w0, y0), (lx + w0, y0), (lx + w1, y1), (lx - w1, y1)], fill=(*colour, 255))
    d.rectangle([lx - 0.06 * s, 0.385 * s, lx + 0.06 * s, 0.40 * s], fill=(40, 36, 44, 255))
    _glow(img, (lx, ly), 0.06 * s, (255, 226, 140))
    d = ImageDraw.Draw(img)
    d.rectangle([lx - 0.035 * s, 0.33 * s, lx + 0.035 * s, 0.385 * s], fill=(255, 226, 140, 255))
    d.polygon([(lx - 0.05 * s, 0.33 * s), (lx, 0.29 * s), (lx + 0.05 * s, 0.33 * s)], fill=(40, 36, 44, 255))
    for gx, gy in [(0.62 * s, 0.50 * s), (0.70 * s, 0.55 * s), (0.18 * s, 0.48 * s)]:
        w = 0.025 * s
        d.line(
            [(gx - w, gy - w * 0.4), (gx, gy), (gx + w, gy - w * 0.4)],
            fill=(30, 30, 40, 255),
            width=max(2, int(s * 0.005)),
            joint="curve",
        )
    return img


def _lantern(s: int, rng: random.Random) -> Image.Image:
    img = _gradient(s, (14, 16, 48), (72, 42, 96))
    _stars(img, rng, 90, max_y=0.6)
    # A crescent: a disc with a second disc cut out of its mask, so the sky shows through the bite.
    _glow(img, (0.74 * s, 0.23 * s), 0.12 * s, (250, 240, 205))
    mask = Image.new("L", img.size, 0)
    m = ImageDraw.Draw(mask)
    m.ellipse(_box(0.76 * s, 0.22 * s, 0.11 * s), fill=255)
    m.ellipse(_box(0.81 * s, 0.19 * s, 0.10 * s), fill=0)
    img.paste((250, 240, 205, 255), mask=mask)
    d = ImageDraw.Draw(img)
    horizon = 0.62 * s
    d.rectangle([0, horizon, s, s], fill=(26, 22, 40, 255))
    # Rails converging on a vanishing point, with sleepers spaced by perspective.
    vx = 0.5 * s
    for offset in (-0.30, 0.30):
        d.line([(vx, horizon), (vx + offset * s * 1.4, s)], fill=(150, 140, 170, 255), width=int(s * 0.008))
    for k in range(1, 12):
        t = (k / 12) ** 2
        y = horizon + (s - horizon) * t
        half = 0.42 * s * t + 0.01 * s
        d.line([(vx - half, y), (vx + half, y)], fill=(90, 70, 80, 255), width=max(1, int(s * 0.012 * t) + 1))
    # Distant train windows on the horizon.
    for i in range(7):
        x = 0.12 * s + i * 0.035 * s
        d.rectangle([x, horizon - 0.03 * s, x + 0.022 * s, horizon - 0.012 * s], fill=(255, 214, 130, 255))
    # The lantern, hanging in front.
    cx, cy = 0.36 * s, 0.50 * s
    _glow(img, (cx, cy), 0.22 * s, (255, 190, 90))
    d = ImageDraw.Draw(img)
    d.line([(cx, 0), (cx, cy - 0.16 * s)], fill=(40, 34, 40, 255), width=int(s * 0.008))
    d.ellipse(_box(cx, cy - 0.17 * s, 0.025 * s), outline=(40, 34, 40, 255), width=int(s * 0.008))
    d.polygon(
        [(cx - 0.09 * s, cy - 0.10 * s), (cx, cy - 0.15 * s), (cx + 0.09 * s, cy - 0.10 * s)],
        fill=(54, 44, 48, 255),
    )
    d.rounded_rectangle(
        [cx - 0.07 * s, cy - 0.10 * s, cx + 0.07 * s, cy + 0.10 * s],
        radius=0.02 * s,
        fill=(255, 214, 120, 255),
        outline=(54, 44, 48, 255),
        width=int(s * 0.012),
    )
    d.line([(cx, cy - 0.10 * s), (cx, cy + 0.10 * s)], fill=(54, 44, 48, 255), width=int(s * 0.008))
    d.ellipse(_box(cx, cy + 0.02 * s, 0.025 * s), fill=(255, 250, 230, 255))
    d.rectangle([cx - 0.08 * s, cy + 0.10 * s, cx + 0.08 * s, cy + 0.125 * s], fill=(54, 44, 48, 255))
    return img


def _willow(s: int, rng: random.Random) -> Image.Image:
    img = _gradient(s, (52, 70, 74), (132, 110, 150))
    _glow(img, (0.5 * s, 0.34 * s), 0.30 * s, (230, 236, 210))
    d = ImageDraw.Draw(img)
    d.ellipse(_box(0.5 * s, 0.34 * s, 0.17 * s), fill=(236, 238, 218, 255))
    # Marsh water with the moon's broken reflection.
    water = 0.74 * s
    d.rectangle([0, water, s, s], fill=(40, 52, 62, 255))
    for i in range(9):
        y = water + 0.02 * s + i * 0.022 * s
        w = 0.13 * s * (1 - i / 11) * (0.7 + 0.3 * rng.random())
        d.line([(0.5 * s - w, y), (0.5 * s + w, y)], fill=(200, 206, 190, 255), width=max(2, int(s * 0.006)))
    # The willow: a leaning trunk, then drooping strands from its crown.
    trunk = (30, 28, 36, 255)
    d.polygon(
        [
            (0.20 * s, water + 0.01 * s),
            (0.27 * s, 0.46 * s),
            (0.34 * s, 0.40 * s),
            (0.31 * s, 0.48 * s),
            (0.29 * s, water + 0.01 * s),
        ],
        fill=trunk,
    )
    d.line([(0.30 * s, 0.44 * s), (0.52 * s, 0.30 * s)], fill=trunk, width=int(s * 0.02))
    d.line([(0.27 * s, 0.47 * s), (0.12 * s, 0.34 * s)], fill=trunk, width=int(s * 0.016))
    for _ in range(70):
        x0 = rng.uniform(0.04, 0.62) * s
        y0 = rng.uniform(0.26, 0.40) * s
        length = rng.uniform(0.18, 0.36) * s
        sway = rng.uniform(-0.03, 0.03) * s
        d.line(
            [(x0, y0), (x0 + sway * 0.5, y0 + length * 0.5), (x0 + sway, y0 + length)],
            fill=(38, 56, 44, 255),
            width=max(2, int(s * 0.004)),
            joint="curve",
        )
    # A cat on the branch, ears up.
    cx, cy = 0.46 * s, 0.32 * s
    d.ellipse(_box(cx, cy - 0.02 * s, 0.028 * s), fill=trunk)
    d.polygon(
        [(cx - 0.025 * s, cy - 0.035 * s), (cx - 0.02 * s, cy - 0.07 * s), (cx - 0.005 * s, cy - 0.045 * s)],
        fill=trunk,
    )
    d.polygon(
        [(cx + 0.025 * s, cy - 0.035 * s), (cx + 0.02 * s, cy - 0.07 * s), (cx + 0.005 * s, cy - 0.045 * s)],
        fill=trunk,
    )
    d.ellipse([cx - 0.035 * s, cy - 0.015 * s, cx + 0.04 * s, cy + 0.03 * s], fill=trunk)
    d.line(
        [(cx + 0.035 * s, cy + 0.015 * s), (cx + 0.05 * s, cy + 0.07 * s)], fill=trunk, width=int(s * 0.008)
    )
    d.ellipse(_box(cx - 0.01 * s, cy - 0.025 * s, 0.004 * s), fill=(220, 230, 120, 255))
    d.ellipse(_box(cx + 0.01 * s, cy - 0.025 * s, 0.004 * s), fill=(220, 230, 120, 255))
    # Fireflies.
    for _ in range(26):
        x, y = rng.uniform(0.05, 0.95) * s, rng.uniform(0.45, 0.9) * s
        _glow(img, (x, y), 0.018 * s, (250, 240, 140))
        ImageDraw.Draw(img).ellipse(_box(x, y, 0.004 * s), fill=(255, 250, 200, 255))
    return img


def _gradient(s: int, top: RGB, bottom: RGB) -> Image.Image:
    column = Image.new("RGBA", (1, s))
    for y in range(s):
        column.putpixel((0, y), (*_mix(top, bottom, y / max(1, s - 1)), 255))
    return column.resize((s, s))


def _stars(img: Image.Image, rng: random.Random, count: int, max_y: float) -> None:
    d = ImageDraw.Draw(img)
    s = img.width
    for _ in range(count):
        x, y = rng.uniform(0, s), rng.uniform(0, max_y * s)
        r = rng.uniform(0.0015, 0.004) * s
        d.ellipse(_box(x, y, r), fill=(255, 250, 235, rng.randint(150, 255)))


def _glow(img: Image.Image, centre: tuple[float, float], radius: float, colour: RGB) -> None:
    layer = Image.new("RGBA", img.size, (*colour, 0))
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse(_box(*centre, radius), fill=150)
    layer.putalpha(mask.filter(ImageFilter.GaussianBlur(radius * 0.6)))
    img.alpha_composite(layer)


def _box(x: float, y: float, r: float) -> list[float]:
    return [x - r, y - r, x + r, y + r]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _png(img: Image.Image, size: int) -> bytes:
    out = io.BytesIO()
    img.resize((size, size), Image.Resampling.LANCZOS).convert("RGB").save(out, format="PNG", optimize=True)
    return out.getvalue()

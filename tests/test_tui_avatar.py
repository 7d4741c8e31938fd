"""Avatar drawing modes: terminal detection, the RPCHAT_IMAGES override, and the widget each mode mounts."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from PIL import Image
from textual.app import App, ComposeResult
from textual_image.widget import SixelImage, TGPImage

from rpchat.tui.avatar import AvatarView, graphics_widget, image_mode


def png_bytes(size: tuple[int, int] = (40, 80)) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((30, 30, 200), (0, size[1] // 2, size[0], size[1]))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "halfblock"),
        ({"TERM": "xterm-256color"}, "halfblock"),
        ({"TERM": "xterm-kitty"}, "kitty"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "3"}, "kitty"),
        ({"TERM": "xterm-ghostty"}, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "ghostty"}, "kitty"),
        # WezTerm has kitty graphics but not the Unicode placeholders textual-image uses: sixel works there.
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, "sixel"),
        ({"TERM": "foot"}, "sixel"),
        ({"TERM": "foot-extra"}, "sixel"),
        ({"TERM": "mlterm"}, "sixel"),
        ({"TERM": "xterm-sixel"}, "sixel"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, "sixel"),
        ({"TERM": "xterm-256color", "KONSOLE_VERSION": "230804"}, "sixel"),
        # Multiplexers swallow graphics escapes, even inside kitty.
        ({"TERM": "tmux-256color", "KITTY_WINDOW_ID": "3"}, "halfblock"),
        ({"TERM": "screen-256color", "TERM_PROGRAM": "WezTerm"}, "halfblock"),
        ({"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-0/default,1,0"}, "halfblock"),
        ({"TERM": "foot", "STY": "1234.pts-0.host"}, "halfblock"),
    ],
)
def test_mode_follows_the_terminal(env: dict[str, str], expected: str) -> None:
    assert image_mode(env) == expected


@pytest.mark.parametrize("forced", ["halfblock", "kitty", "sixel", " Kitty "])
def test_the_env_override_wins_even_under_tmux(forced: str) -> None:
    env = {"RPCHAT_IMAGES": forced, "TERM": "tmux-256color", "TMUX": "/tmp/tmux-0/default,1,0"}
    assert image_mode(env) == forced.strip().lower()
    assert image_mode({"RPCHAT_IMAGES": "halfblock", "TERM": "xterm-kitty"}) == "halfblock"


@pytest.mark.parametrize("value", ["auto", "", "ascii-art"])
def test_auto_or_unknown_override_detects(value: str) -> None:
    assert image_mode({"RPCHAT_IMAGES": value, "TERM": "xterm-kitty"}) == "kitty"
    assert image_mode({"RPCHAT_IMAGES": value, "TERM": "xterm"}) == "halfblock"


def test_without_a_terminal_it_is_always_halfblock() -> None:
    assert image_mode({"TERM": "xterm-kitty"}, tty=False) == "halfblock"
    assert image_mode({"RPCHAT_IMAGES": "sixel", "TERM": "foot"}, tty=False) == "halfblock"


def test_graphics_widget_classes() -> None:
    assert graphics_widget("kitty") is TGPImage
    assert graphics_widget("sixel") is SixelImage
    assert graphics_widget("halfblock") is None


class AvatarApp(App[None]):
    def __init__(self, view: AvatarView) -> None:
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        yield self.view


def test_headless_app_keeps_halfblock_in_a_kitty_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-kitty")
    monkeypatch.setenv("KITTY_WINDOW_ID", "1")
    monkeypatch.setenv("RPCHAT_IMAGES", "kitty")

    async def go() -> None:
        app = AvatarApp(AvatarView(png_bytes()))
        async with app.run_test() as pilot:
            await pilot.pause()
            assert app.view.mode == "halfblock"
            assert not app.view.children
            assert "\u2580" in app.export_screenshot()

    asyncio.run(go())


def test_kitty_mode_sends_the_picture_as_chunked_graphics_escapes(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    # Big enough that its PNG needs more than one 4096-byte chunk.
    noisy = Image.frombytes("RGB", (64, 64), bytes((i * 7919) % 251 for i in range(64 * 64 * 3)))
    out = io.BytesIO()
    noisy.save(out, "PNG")

    async def go() -> None:
        view = AvatarView(out.getvalue(), mode="kitty")
        app = AvatarApp(view)
        async with app.run_test(size=(60, 30)) as pilot:
            await pilot.pause()
            assert view.mode == "kitty"
            graphic = view.query_one(TGPImage)
            assert graphic.image.size == (64, 64)
            assert 0 < graphic.size.width <= 24 and 0 < graphic.size.height <= 12
            assert "\u2580" not in app.export_screenshot()
            view.set_image(None)
            await pilot.pause()
            assert graphic.image is None
            assert "picture" in app.export_screenshot()  # SVG spaces are &#160;

    asyncio.run(go())
    sent = capfd.readouterr().out
    messages = re.findall(r"\x1b_G([^;\x1b]*)(?:;([^\x1b]*))?\x1b\\", sent)
    transfers = [(keys, payload) for keys, payload in messages if "f=100" in keys]
    assert len(transfers) >= 2  # chunked
    assert all(len(payload) <= 4096 for _, payload in transfers)
    assert [("m=1" in keys) for keys, _ in transfers] == [True] * (len(transfers) - 1) + [False]
    import base64
    png = base64.b64decode("".join(payload for _, payload in transfers))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert any("a=p" in keys and "U=1" in keys for keys, _ in messages)  # a placement for the placeholders
    assert any("a=d" in keys for keys, _ in messages)  # the old picture is freed


def test_sixel_mode_mounts_the_sixel_widget_and_broken_bytes_fall_back(
        monkeypatch: pytest.MonkeyPatch) -> None:

    async def go() -> None:
        view = AvatarView(png_bytes(), mode="sixel")
        app = AvatarApp(view)
        async with app.run_test(size=(60, 30)) as pilot:
            await pilot.pause()
            assert view.mode == "sixel"
            graphic = view.query_one(SixelImage)
            assert graphic.image.size == (40, 80)
            view.set_image(b"\x89PNG not really")
            await pilot.pause()
            assert graphic.image is None
            assert "picture" in app.export_screenshot()  # SVG spaces are &#160;

    asyncio.run(go())


PTY_APP = """
import io, sys
from PIL import Image
from textual.app import App
from rpchat.tui.avatar import AvatarView
picture = io.BytesIO()
Image.new("RGB", (40, 80), (200, 30, 30)).save(picture, "PNG")
class AvatarOnly(App):
    def compose(self):
        yield AvatarView(picture.getvalue())
    def on_mount(self):
        self.set_timer(1.0, self.exit)
AvatarOnly().run()
"""


def run_in_pty(script: Path, env: dict[str, str]) -> str:
    """Runs ``script`` in a real pseudo-terminal (100x40, no pixel size, answers no queries); its output."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import sys
    import termios
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of known size, then the app
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        os.execve(sys.executable, [sys.executable, str(script)], env)
    out = b""
    deadline = time.monotonic() + 30  # a guard against a hang, not a timing assertion
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    else:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(fd)
    return out.decode("utf-8", "replace")


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs a POSIX pty")
@pytest.mark.parametrize(
    ("term_env", "drawn_with"),
    [
        ({"TERM": "xterm-kitty", "KITTY_WINDOW_ID": "1"}, "kitty"),
        ({"TERM": "foot"}, "sixel"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "1", "TMUX": "/tmp/tmux-0/default,1,0"}, "halfblock"),
    ],
)
def test_a_real_terminal_gets_the_detected_drawing(tmp_path: Path, term_env: dict[str, str],
                                                   drawn_with: str) -> None:
    import os

    script = tmp_path / "avatar_app.py"
    script.write_text(PTY_APP)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "STY", "RPCHAT_IMAGES", "KITTY_WINDOW_ID",
                                                            "TERM_PROGRAM", "KONSOLE_VERSION")}
    env.update(term_env, RPCHAT_HOME=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    shown = run_in_pty(script, env)
    assert "Traceback" not in shown
    assert ("\x1b_Ga=p" in shown) == (drawn_with == "kitty")  # a kitty placement
    assert ("\x1bP" in shown and "\x1b\\" in shown) == (drawn_with == "sixel")  # a sixel DCS string
    assert ("\u2580" in shown) == (drawn_with == "halfblock")
    assert ("\x1b[c" in shown) == (drawn_with != "halfblock")  # no terminal queries on the half-block path

"""The API key is a secret: private on disk, never printed, never saved from the environment, never sent
over plain http:// to another machine without an explicit opt-in.

The canary test runs real flows (settings saved in the TUI, replies against a loopback server that echoes
the Authorization header back, doctor, bench, the prompt inspector, a crash) and greps every channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_server import FINAL, Call, HostileServer, llama_routes, sse, stream
from session_support import make_card, open_chat_from_library, wait_for

from rpchat.cli import main
from rpchat.config import Config, EngineConfig, load_config, save_config
from rpchat.engine.remote import RemoteEngine
from rpchat.errors import EngineError
from rpchat.paths import profile


def canary() -> str:
    return "sk-canary-" + secrets.token_hex(12)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def echo_routes(server: HostileServer) -> None:
    """llama-server answers, except that replies echo the Authorization header back in every way."""
    llama_routes(server)
    calls = [0]

    def completion(call: Call) -> None:
        header = call.request.headers.get("authorization", "")
        key = header.removeprefix("Bearer ")
        calls[0] += 1
        if calls[0] % 3 == 1:  # in the reply text, split across pieces
            half = len(key) // 2
            stream(call, [sse({"content": "your key is "}), sse({"content": key[:half]}),
                          sse({"content": key[half:]}), sse({"content": " ok"}), sse(FINAL)])  # fmt: skip
        elif calls[0] % 3 == 2:  # in an HTTP error body
            call.json({"error": {"message": f"bad header: Authorization: {header}"}}, 500)
        else:  # in an error event mid-reply
            stream(call, [sse({"content": "Hi"}), sse({"error": {"message": f"token {key} revoked"}})])

    server.routes[("POST", "/completion")] = completion


# --- file modes --------------------------------------------------------------------------------------


def test_a_config_holding_a_key_is_written_private(profile_home: Path) -> None:
    old = os.umask(0o022)
    try:
        save_config(profile(), Config())
        assert mode(profile().config_file) == 0o644  # nothing secret: the usual mode
        save_config(profile(), Config(engine=EngineConfig(api_key="sk-private")))
        assert mode(profile().config_file) == 0o600
    finally:
        os.umask(old)


def test_a_readable_config_holding_a_key_is_made_private_with_a_notice(
    profile_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with HostileServer() as server:
        llama_routes(server)
        profile().config_dir.mkdir(parents=True)
        profile().config_file.write_text(f"engine:\n  api_key: sk-readable\n  remote_url: {server.url}\n")
        profile().config_file.chmod(0o644)
        card = make_card(profile_home.parent, "Marisol")
        code = main(["reply", str(card), "--chat", str(profile_home.parent / "c.jsonl"), "--say", "hi", "--max-new", "8",
                     "--engine", server.url])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert mode(profile().config_file) == 0o600
    assert f"rpchat: warning: {profile().config_file}: it holds an API key and other users could read it " \
           "(mode 644); made it private (600)" in err
    notices: list[str] = []
    load_config(profile(), notices)
    assert notices == []  # said once: it is private now


# --- the environment key ------------------------------------------------------------------------------


def test_the_environment_key_is_sent_and_never_saved(profile_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = canary()
    monkeypatch.setenv("RPCHAT_API_KEY", key)
    with HostileServer() as server:
        llama_routes(server)
        save_config(profile(), Config(engine=EngineConfig(kind="remote", remote_url=server.url)))
        from rpchat.engine.factory import make_engine

        engine = make_engine(load_config(profile()))
        engine.load()
        assert all(r.headers.get("authorization") == f"Bearer {key}" for r in server.requests)
    # Even a config that was handed the key (a caller copying it in) does not write it.
    save_config(profile(), Config(engine=EngineConfig(api_key=key)))
    assert key not in profile().config_file.read_text()
    assert load_config(profile()).engine.api_key is None


def test_saving_settings_with_the_environment_key_keeps_it_off_disk(
    profile_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textual.widgets import Input

    from rpchat.tui.app import RpchatApp

    key = canary()
    monkeypatch.setenv("RPCHAT_API_KEY", key)

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await pilot.press("f2")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "SettingsScreen")
            field = app.screen.query_one("#api-key", Input)
            assert field.value == "" and "RPCHAT_API_KEY is set" in field.placeholder
            app.screen.query_one("#remote-url", Input).value = "https://example.invalid"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: type(app.screen).__name__ != "SettingsScreen")

    asyncio.run(go())
    text = profile().config_file.read_text()
    assert "https://example.invalid" in text and key not in text


# --- where the key may go -----------------------------------------------------------------------------


def test_the_key_is_not_sent_over_plain_http_to_another_host(profile_home: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    key = canary()
    with pytest.raises(EngineError) as err:
        RemoteEngine("http://192.0.2.7:8080", api_key=key).load()
    assert str(err.value) == (
        "http://192.0.2.7:8080: refusing to send the API key over plain http:// to 192.0.2.7: use https://, "
        "or set engine.allow_insecure_key: true to send it anyway"
    )
    # The opt-in lets the request go (here it finds nobody: TEST-NET-1 is not routed).
    with pytest.raises(EngineError) as err:
        RemoteEngine("http://192.0.2.7:8080", api_key=key, timeout=0.3, allow_insecure_key=True).load()
    assert "refusing" not in str(err.value)
    # Without a key there is nothing to protect; https:// is fine; so is this machine.
    with pytest.raises(EngineError) as err:
        RemoteEngine("http://192.0.2.7:8080", timeout=0.3).load()
    assert "refusing" not in str(err.value)
    with HostileServer() as server:
        llama_routes(server)
        port = server.url.rsplit(":", 1)[1]
        RemoteEngine(f"http://localhost:{port}", api_key=key).load()
    # The CLI says it in one line, without the key.
    monkeypatch.setenv("RPCHAT_API_KEY", key)
    card = make_card(profile_home.parent, "Marisol")
    code = main(["reply", str(card), "--chat", str(profile_home.parent / "c.jsonl"), "--say", "hi",
                 "--engine", "http://192.0.2.7:8080"])  # fmt: skip
    err_text = capsys.readouterr().err
    assert code == 2 and err_text.count("\n") == 1 and "refusing to send the API key" in err_text
    assert key not in err_text


def test_a_key_that_cannot_go_in_a_header_is_refused_without_showing_it(profile_home: Path) -> None:
    with pytest.raises(EngineError) as err:
        RemoteEngine("http://127.0.0.1:9", api_key="sk-line\nbreak").load()
    assert "the API key has characters an HTTP header cannot carry" in str(err.value)
    assert "sk-line" not in str(err.value)


def test_a_password_in_the_url_is_not_shown(profile_home: Path) -> None:
    with pytest.raises(EngineError) as err:
        RemoteEngine("http://user:hunter2secret@127.0.0.1:9", timeout=0.5).load()
    assert str(err.value).startswith("http://127.0.0.1:9: ") and "hunter2secret" not in str(err.value)


# --- the canary: every channel, real flows ---------------------------------------------------------------


def _grep(root: Path, key: str, outputs: dict[str, str]) -> list[str]:
    """Every place the key shows up: the outputs, and every file under the profile except the config's
    own ``api_key:`` line."""
    found = [name for name, text in outputs.items() if key in text]
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path == profile().config_file:
            data = b"\n".join(line for line in data.splitlines() if not line.strip().startswith(b"api_key:"))
        if key.encode() in data:
            found.append(str(path))
    return found


def test_the_key_appears_in_no_output_and_no_file(profile_home: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from textual.widgets import Input

    from rpchat.tui.app import RpchatApp

    key = canary()
    outputs: dict[str, str] = {}
    profile().cards_dir.mkdir(parents=True)
    card = make_card(profile().cards_dir, "Zephyrine")
    chat = profile().chats_dir / "cli.jsonl"

    with HostileServer() as server:
        echo_routes(server)
        save_config(profile(), Config(max_new_tokens=16))

        async def tui() -> None:
            # The user types the key into Settings and saves, chats (the server echoes the key back in
            # an error), and opens the prompt inspector.
            app = RpchatApp(load_model=False)
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.pause()
                await pilot.press("f2")
                await wait_for(pilot, lambda: type(app.screen).__name__ == "SettingsScreen")
                app.screen.query_one("#kind").value = "remote"  # type: ignore[attr-defined]
                app.screen.query_one("#remote-url", Input).value = server.url
                app.screen.query_one("#api-key", Input).value = key
                await pilot.press("ctrl+s")
                await wait_for(pilot, lambda: type(app.screen).__name__ != "SettingsScreen")
            outputs["tui settings notifications"] = "\n".join(n.message for n in app._notifications)

        asyncio.run(tui())
        assert mode(profile().config_file) == 0o600 and key in profile().config_file.read_text()

        for say in ("one", "two", "three"):  # the key echoed in the reply, an HTTP error, an error event
            main(["reply", str(card), "--chat", str(chat), "--say", say])
            cap = capsys.readouterr()
            outputs[f"reply {say} stdout"], outputs[f"reply {say} stderr"] = cap.out, cap.err
        assert "[redacted]" in outputs["reply one stdout"] and "[redacted]" in outputs["reply two stderr"]
        assert "[redacted]" in outputs["reply three stderr"]

        async def chat_screen() -> None:
            app = RpchatApp()
            async with app.run_test(size=(120, 40)) as pilot:
                screen = await open_chat_from_library(pilot, app, "Zephyrine")
                await wait_for(pilot, lambda: app.engine_state == "ready")
                seen: list[str] = []
                for say in ("four", "five", "six"):
                    screen.input.focus()
                    await pilot.press(*say, "enter")
                    await pilot.pause(0.2)
                    await wait_for(pilot, lambda: not screen.generating)
                    await pilot.pause()
                    seen += [n.message for n in app._notifications]  # toasts expire: read them now
                outputs["tui transcript"] = "\n".join(str(v.render()) for v in screen.turn_views())
                await pilot.press("f5")
                await wait_for(pilot, lambda: type(app.screen).__name__ == "PromptInspector")
                outputs["prompt inspector"] = "\n".join(
                    str(w.render()) for w in app.screen.query("Static")
                ) + app.screen.query_one("#prompt-text").text  # type: ignore[attr-defined]
            outputs["tui chat notifications"] = "\n".join(seen + [n.message for n in app._notifications])

        asyncio.run(chat_screen())
        assert "[redacted]" in outputs["tui chat notifications"]

    # The key from the environment: doctor, bench and a crash.
    monkeypatch.setenv("RPCHAT_API_KEY", key)
    assert main(["doctor"]) == 0
    cap = capsys.readouterr()
    outputs["doctor stdout"], outputs["doctor stderr"] = cap.out, cap.err
    assert "from $RPCHAT_API_KEY (not saved)" in cap.out
    from rpchat.bench import format_bench, run_bench

    # `rpchat bench`'s own pipeline, sized for the tiny model (its 512-token context is too small for the
    # CLI's defaults).
    log: list[str] = []
    figures = run_bench(tiny_model, turns=1, n_threads=1, n_ctx=2048, gen_tokens=4, overflow_ctx=2048,
                        speed_rounds=1, log=log.append)  # fmt: skip
    outputs["bench log"], outputs["bench figures"] = "\n".join(log), format_bench(figures) + json.dumps(figures)

    def buggy(_args: Any) -> int:
        raise RuntimeError(f"a bug that quotes {key}")

    monkeypatch.setitem(sys.modules["rpchat.cli"].COMMANDS, "doctor", buggy)
    assert main(["doctor"]) == 2
    outputs["crash stderr"] = capsys.readouterr().err
    crash_log = profile().log_dir / "crash.log"
    assert "a bug that quotes [redacted]" in crash_log.read_text() and mode(crash_log) == 0o600

    found = _grep(profile_home, key, outputs)
    assert found == [], found
    # The chat kept everything, the key masked: the reply that echoed it was saved as data.
    lines = [json.loads(line) for line in chat.read_text().splitlines()]
    assert any("your key is [redacted] ok" == entry.get("mes") for entry in lines)

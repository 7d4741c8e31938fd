"""The character library screen driven by Pilot: filter, avatars, import, duplicate, delete, chats."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest
from session_support import make_card, tiny_config, wait_for, write_profile_config
from textual.widgets import OptionList

from rpchat.chat.library import list_chats
from rpchat.paths import profile
from rpchat.tui.app import RpchatApp
from rpchat.tui.avatar import AvatarView
from rpchat.tui.bench import PacedEngine
from rpchat.tui.chat import ChatScreen
from rpchat.tui.dialogs import ConfirmDialog, PathPrompt
from rpchat.tui.library import ChatsDialog, LibraryScreen


@pytest.fixture
def home(tmp_path: Path, tiny_model: Path) -> Path:
    write_profile_config(tiny_config(tiny_model))
    profile().cards_dir.mkdir(parents=True)
    make_card(profile().cards_dir, "Zephyrine", tags=["sky", "pirate"])
    make_card(profile().cards_dir, "Quillon", tags=["library"], creator_notes="A bookish ghost.")
    return tmp_path


def run(coro) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(coro)


async def library(pilot, app: RpchatApp) -> LibraryScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


def test_lists_bundled_and_user_cards_and_filters_by_typing(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            names = [e.name for e in screen.shown]
            assert "Zephyrine" in names and "Quillon" in names
            assert any(e.bundled for e in screen.shown)
            await pilot.press(*"pirate")  # a tag
            assert [e.name for e in screen.shown] == ["Zephyrine"]
            await pilot.press(*["backspace"] * 6, *"bookish")  # creator notes
            assert [e.name for e in screen.shown] == ["Quillon"]
            assert "A bookish ghost." in str(screen.query_one("#card-notes").render())
            # The avatar is drawn with half blocks.
            avatar = screen.query_one(AvatarView)
            assert "\u2580" in str(avatar.render())

    run(go())


def test_import_by_path_then_duplicate_then_delete_with_confirm(home: Path) -> None:
    outside = home / "downloads"
    outside.mkdir()
    src = make_card(outside, "Importa")

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            await pilot.press("ctrl+t")
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
            app.screen.query_one("Input").value = str(src)  # type: ignore[attr-defined]
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            assert (profile().cards_dir / "Importa.png").exists()
            assert screen.current is not None and screen.current.name == "Importa"

            await pilot.press("ctrl+d")
            await pilot.pause()
            assert (profile().cards_dir / "Importa (2).png").exists()

            await pilot.press("ctrl+x")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            assert (profile().cards_dir / "Importa (2).png").exists()
            await pilot.press("ctrl+x")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("y")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            assert not (profile().cards_dir / "Importa (2).png").exists()

    run(go())


def test_import_of_a_broken_file_is_a_notice_not_a_crash(home: Path) -> None:
    bad = home / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press("ctrl+t")
            await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
            app.screen.query_one("Input").value = str(bad)  # type: ignore[attr-defined]
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.pause()
            assert any("bad.png" in n.message for n in app._notifications)
            assert not list(profile().cards_dir.glob("bad*"))

    run(go())


def test_bundled_cards_cannot_be_deleted(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            bundled = next(i for i, e in enumerate(screen.shown) if e.bundled)
            screen.query_one("#cards").highlighted = bundled  # type: ignore[attr-defined]
            await pilot.press("ctrl+x")
            await pilot.pause()
            assert isinstance(app.screen, LibraryScreen)
            assert screen.shown[bundled].path.exists()

    run(go())


def test_chats_list_resume_new_and_branch(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press(*"Zephyrine", "enter")  # no chats yet: starts one
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            first = app.screen.session.path  # type: ignore[attr-defined]
            await pilot.press("ctrl+b")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            await pilot.press("enter")  # the newest chat is preselected: resume it
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert app.screen.session.path == first  # type: ignore[attr-defined]
            await pilot.press("ctrl+b")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            await pilot.press("b")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            branch = app.screen.session  # type: ignore[attr-defined]
            assert branch.path != first
            assert branch.chat.metadata["rpchat"]["parent"]["turn"] == 0
            await pilot.press("ctrl+b")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert len(list_chats(profile().cards_dir / "zephyrine.png")) == 3

    run(go())


def test_model_loads_in_background_with_progress_while_browsing(home: Path) -> None:
    gate = threading.Event()

    class SlowEngine(PacedEngine):
        def load(self, progress=None):  # type: ignore[no-untyped-def]
            progress(0.5)
            gate.wait(10)
            super().load(progress)

    async def go() -> None:
        app = RpchatApp(engine_factory=lambda _cfg: SlowEngine())
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            await wait_for(pilot, lambda: app.load_progress == 0.5)
            assert app.engine_state == "loading"
            assert screen.query_one("#model-progress").display
            assert "Loading" in str(screen.query_one("#model-text").render())
            await pilot.press(*"Quillon")  # browsing works meanwhile
            assert [e.name for e in screen.shown] == ["Quillon"]
            gate.set()
            await wait_for(pilot, lambda: app.engine_state == "ready")
            assert not screen.query_one("#model-progress").display
            assert "paced-test-engine" in str(screen.query_one("#model-text").render())

    run(go())


def test_card_editor_settings_persona_and_inspector_are_wired_in(home: Path) -> None:
    from rpchat.tui.card_editor import CardEditor
    from rpchat.tui.inspector import PromptInspector
    from rpchat.tui.persona_editor import PersonaEditor
    from rpchat.tui.settings import SettingsScreen

    async def go() -> None:
        app = RpchatApp()
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press("ctrl+a")  # new card
            await wait_for(pilot, lambda: isinstance(app.screen, CardEditor))
            assert app.screen.path is None  # type: ignore[attr-defined]
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.press(*"Quillon", "ctrl+e")
            await wait_for(pilot, lambda: isinstance(app.screen, CardEditor))
            assert app.screen.card.name == "Quillon"  # type: ignore[attr-defined]
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            chat_screen = app.screen
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, PersonaEditor))
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is chat_screen)
            await wait_for(pilot, lambda: app.engine_state == "ready")
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptInspector))
            assert "### Instruction" in app.screen.built.text  # type: ignore[attr-defined]
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is chat_screen)

    run(go())


# --- data that must not seem lost ------------------------------------------------------------------


def _chat_for(card: Path, text: str) -> Path:
    from rpchat.session import open_chat_session

    session = open_chat_session(card, None)
    session.chat.add(True, text)
    session.save()
    return session.path


def test_renaming_a_card_in_the_editor_keeps_its_chats(home: Path) -> None:
    from textual.widgets import Input

    from rpchat.tui.card_editor import CardEditor

    card = profile().cards_dir / "zephyrine.png"
    older = _chat_for(card, "an older chat")

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            await pilot.press(*"Zephyrine", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            chat = app.screen
            await pilot.press("f4")  # rename from the chat, as a user would
            await wait_for(pilot, lambda: isinstance(app.screen, CardEditor))
            app.screen.query_one("#f-name", Input).value = "Zephyra"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.screen is chat)
            session = chat.session  # type: ignore[attr-defined]
            renamed = profile().cards_dir / "Zephyra.png"
            assert session.card_path == renamed and not card.exists()
            # The sidebar says the new name at once, as the prompt does.
            assert str(chat.query_one("#char-name").render()) == "Zephyra"
            # The open chat goes on saving in the card's new folder; the old one is not brought back.
            session.chat.add(True, "after the rename")
            session.save()
            assert session.path.parent == profile().chats_dir / "Zephyra"
            assert not (profile().chats_dir / "zephyrine").exists()
            await pilot.press("ctrl+b")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.pause()
            assert screen.current is not None and screen.current.name == "Zephyra"
            assert "1 chat:" in str(screen.query_one("#card-chats").render())
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            assert [e.path.name for e in app.screen._chats] == [older.name]  # type: ignore[attr-defined]

    run(go())


def test_a_chat_with_a_bad_line_opens_from_the_library_and_says_which(home: Path) -> None:
    card = profile().cards_dir / "zephyrine.png"
    good = _chat_for(card, "hello")
    bad = _chat_for(card, "the newest one")
    lines = bad.read_bytes().split(b"\n")
    bad.write_bytes(b"\n".join([lines[0], lines[1], b'{"is_user": true, "mes": "cut', *lines[2:]]))
    os.utime(good, (1_000_000, 1_000_000))  # ``bad`` is the newest chat

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press(*"Zephyrine", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            dialog = app.screen
            # The cursor starts on the newest chat, not on "+ Start a new chat".
            assert dialog.query_one(OptionList).highlighted == 1
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            session = app.screen.session  # type: ignore[attr-defined]
            assert session.path == bad
            assert [t.text for t in session.chat.turns][-1] == "the newest one"
            await pilot.pause()
            notices = [n.message for n in app._notifications if "could not be read" in n.message]
            kept = list(bad.parent.glob(f"{bad.stem}.corrupt-*.jsonl"))
            assert len(notices) == 1 and len(kept) == 1
            assert bad.name in notices[0] and "line 3 " in notices[0] and kept[0].name in notices[0]

    run(go())


def test_the_chats_list_never_starts_on_new_chat_when_chats_exist(home: Path) -> None:
    folder = profile().chats_dir / "zephyrine"
    folder.mkdir(parents=True)
    (folder / "unreadable.jsonl").write_bytes(b"\xff\xfe not a chat")

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press(*"Zephyrine", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            assert app.screen.query_one(OptionList).highlighted == 1
            await pilot.press("enter")  # it says why it cannot open, and sets the file aside
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await pilot.pause()
            assert any("unreadable.jsonl" in n.message and "kept aside" in n.message
                       for n in app._notifications)
            assert list(folder.glob("unreadable.corrupt-*.jsonl"))

    run(go())


def test_ctrl_o_resumes_the_chat_used_last_across_restarts(home: Path) -> None:
    zephyrine, quillon = profile().cards_dir / "zephyrine.png", profile().cards_dir / "quillon.png"
    used = _chat_for(zephyrine, "the one I was in")
    _chat_for(zephyrine, "a newer one")
    newest = _chat_for(quillon, "the newest file of all")
    os.utime(used, (1_000_000, 1_000_000))  # the older of Zephyrine's two

    async def first_run() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press(*"Zephyrine", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            await pilot.press("down", "enter")  # the older of Zephyrine's two chats
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert app.screen.session.path == used  # type: ignore[attr-defined]
            await pilot.press("ctrl+q")

    async def second_run(expect: Path, notice: str | None = None) -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            await pilot.press(*"Quillon")  # the cursor is on another card
            await pilot.pause()
            assert screen.current is not None and screen.current.path == quillon
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert app.screen.session.path == expect  # type: ignore[attr-defined]
            if notice:
                assert any(notice in n.message for n in app._notifications)

    run(first_run())
    run(second_run(used))
    # A deleted chat or a garbled state file falls back to the card under the cursor.
    used.unlink()
    run(second_run(newest, notice=f"Your last chat {used.name} is gone"))
    (profile().data_dir / "last-chat.json").write_bytes(b"\x00{not json")
    run(second_run(newest))


# --- what the CLI does with chats and cards, from the TUI (palette + path dialogs) ---------------------
async def from_palette(pilot, app: RpchatApp, query: str) -> None:  # type: ignore[no-untyped-def]
    from textual.command import CommandPalette

    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
    await pilot.press(*query)
    await pilot.pause(0.5)
    await pilot.press("enter")
    await wait_for(pilot, lambda: not isinstance(app.screen, CommandPalette))


async def answer_path(pilot, app: RpchatApp, path: Path) -> None:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(app.screen, PathPrompt))
    app.screen.query_one("Input").value = str(path)  # type: ignore[attr-defined]
    await pilot.press("enter")
    await pilot.pause()


def st_chat(path: Path) -> Path:
    """A chat as SillyTavern writes it, for another character name than the card's."""
    lines = [
        {"user_name": "Kael", "character_name": "Seraphina", "create_date": "2024-01-01@10h00m00s",
         "chat_metadata": {"integrity": "abc"}},
        {"name": "Seraphina", "is_user": False, "mes": "Hello.", "swipes": ["Hi.", "Hello."], "swipe_id": 1,
         "send_date": "2024-01-01@10h00m00s", "extra": {}},
        {"name": "Kael", "is_user": True, "mes": "Where am I?", "send_date": "2024-01-01@10h01m00s", "extra": {}},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    return path


def test_chat_import_export_and_card_export_are_in_the_library(home: Path) -> None:
    from rpchat.cards import load_card

    src = st_chat(home / "from-sillytavern.jsonl")
    out, card_out = home / "exported.jsonl", home / "zephyrine.json"

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            await pilot.press(*"Zephyrine")
            assert screen.current is not None and screen.current.name == "Zephyrine"

            # Import: the chat joins the picked card's chats, whatever character it names.
            await from_palette(pilot, app, "import a chat")
            await answer_path(pilot, app, src)
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            chats = list_chats(screen.current.path, "Zephyrine")
            assert [c.path.name for c in chats] == ["from-sillytavern.jsonl"]
            assert "1 chat" in str(screen.query_one("#card-chats").render())

            # Export a chat: pick it (Enter), then where to write it.
            await from_palette(pilot, app, "export a chat")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            await pilot.press("enter")
            await answer_path(pilot, app, out)
            await wait_for(pilot, lambda: out.exists())
            exported = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
            assert exported[1]["swipes"] == ["Hi.", "Hello."] and exported[2]["mes"] == "Where am I?"
            assert "rpchat" not in json.dumps(exported)

            # Exporting onto an existing file asks first; "no" keeps it.
            out.write_text("keep me", encoding="utf-8")
            await pilot.press("enter")  # the chats list (Enter) has "x exports" too
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            await pilot.press("x")
            await answer_path(pilot, app, out)
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            assert out.read_text(encoding="utf-8") == "keep me"

            # Export the card, converted by the extension.
            await from_palette(pilot, app, "export this card")
            await answer_path(pilot, app, card_out)
            await wait_for(pilot, lambda: card_out.exists())
            assert load_card(card_out).name == "Zephyrine"

    run(go())


def test_a_chat_exports_from_its_own_screen(home: Path) -> None:
    from rpchat.chat.store import load_chat

    out = home / "this-chat.jsonl"

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press(*"Zephyrine", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            await from_palette(pilot, app, "export this chat")
            await answer_path(pilot, app, out)
            await wait_for(pilot, lambda: out.exists())
            assert load_chat(out).turns[0].text.startswith("*throws a blanket")
            assert "rpchat" not in out.read_text(encoding="utf-8")

    run(go())


def test_a_bad_export_path_is_refused_in_the_dialog(home: Path) -> None:
    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press(*"Zephyrine")
            await from_palette(pilot, app, "export this card")
            await answer_path(pilot, app, home / "card.txt")
            assert isinstance(app.screen, PathPrompt)  # still open, saying why
            assert "expected .png, .json, .charx" in str(app.screen.query_one("#error").render())
            # A path that cannot be written (its "folder" is a file): one clear notice, the app goes on.
            blocker = home / "a-file"
            blocker.write_text("", encoding="utf-8")
            await answer_path(pilot, app, blocker / "card.png")
            await wait_for(pilot, lambda: isinstance(app.screen, LibraryScreen))
            await wait_for(pilot, lambda: any("a-file" in n.message for n in app._notifications))
            assert [n.severity for n in app._notifications if "a-file" in n.message] == ["error"]

    run(go())


def test_the_chats_list_shows_whole_dates_of_both_forms(home: Path) -> None:
    """SillyTavern writes human dates ("May 1, 2024 12:06pm"), rpchat ISO ones: neither is cut mid-number."""
    from textual.widgets import OptionList

    card = profile().cards_dir / "zephyrine.png"
    st_chat = _chat_for(card, "from SillyTavern")
    lines = st_chat.read_text(encoding="utf-8").splitlines()
    turn = json.loads(lines[-1])
    turn["send_date"] = "May 1, 2024 12:06pm"
    st_chat.write_text("\n".join([*lines[:-1], json.dumps(turn)]) + "\n", encoding="utf-8")
    ours = _chat_for(card, "from rpchat")
    iso = json.loads(ours.read_text(encoding="utf-8").splitlines()[-1])["send_date"]  # 2026-11-25T17:13:25.081Z

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press(*"Zephyrine", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            chats = app.screen.query_one("#chats", OptionList)
            labels = [str(chats.get_option_at_index(i).prompt) for i in range(chats.option_count)]
            assert any("May 1, 2024 12:06pm" in label for label in labels), labels
            assert any(f"{iso[:10]} {iso[11:16]}" in label for label in labels), labels

    run(go())


def test_ctrl_o_with_the_last_chat_gone_and_no_chats_on_the_card_says_it_starts_one(home: Path) -> None:
    used = _chat_for(profile().cards_dir / "zephyrine.png", "the one I was in")
    from rpchat.chat.recent import remember_chat

    remember_chat(profile().cards_dir / "zephyrine.png", used)
    used.unlink()

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            await pilot.press(*"Quillon")  # a card without chats
            await pilot.pause()
            assert screen.current is not None and screen.current.name == "Quillon"
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            said = [n.message for n in app._notifications if "is gone" in n.message]
            assert said == [f"Your last chat {used.name} is gone; starting a new chat with Quillon."], said

    run(go())


def test_highlighting_a_card_reads_none_of_its_chats(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The detail pane says how many chats a card has on every highlight: it must not parse them (on
    # the UI thread), however many and big they are. Only Enter, which lists them, reads them.
    import rpchat.chat.library as chat_library
    from rpchat.chat.model import Chat
    from rpchat.chat.store import ChatStore

    card = profile().cards_dir / "zephyrine.png"
    for i in range(5):
        chat = Chat.start("Zephyrine", "User", ["Ahoy."])
        for j in range(50):
            chat.add(j % 2 == 0, f"Line {j} " + "sky " * 200)
        ChatStore(chat_library.chats_folder(card) / f"chat-{i}.jsonl").save(chat)
    parsed: list[Path] = []
    salvage = chat_library.salvage_chat
    monkeypatch.setattr(chat_library, "salvage_chat", lambda data, path: parsed.append(path) or salvage(data, path))

    async def go() -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await library(pilot, app)
            await pilot.press(*"Zephyrine")
            await wait_for(pilot, lambda: screen.current is not None and screen.current.name == "Zephyrine")
            for _ in range(3):
                await pilot.press("ctrl+f", "backspace")
                await pilot.press("e")
            await pilot.pause()
            assert "5 chats" in str(screen.query_one("#card-chats").render())
            assert parsed == []
            await pilot.press("enter")  # listing them reads them
            await wait_for(pilot, lambda: isinstance(app.screen, ChatsDialog))
            assert len(parsed) == 5

    run(go())


def test_ctrl_o_resumes_a_group_chat_used_last(home: Path) -> None:
    from rpchat.cli import main
    from rpchat.tui.group import GroupsDialog

    zephyrine, quillon = profile().cards_dir / "zephyrine.png", profile().cards_dir / "quillon.png"
    assert main(["group", "new", "Pair", str(zephyrine), str(quillon)]) == 0

    async def first_run() -> Path:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press("ctrl+g")
            await wait_for(pilot, lambda: isinstance(app.screen, GroupsDialog))
            await pilot.press("enter")  # the group's current chat
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            used: Path = app.screen.session.path  # type: ignore[attr-defined]
            await pilot.press("ctrl+q")
        return used

    async def second_run(expect: Path) -> None:
        app = RpchatApp(load_model=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await library(pilot, app)
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
            session = app.screen.session  # type: ignore[attr-defined]
            assert session.cast is not None and session.path == expect

    used = asyncio.run(first_run())
    run(second_run(used))

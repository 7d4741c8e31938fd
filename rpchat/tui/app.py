"""`RpchatApp`: themes, keymap, the model loaded in the background, and the screens.

The model loads in a thread worker (group "model") while the user browses the library; screens
watch ``engine_state`` to know when replies can start. Every failure becomes a notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from rich.style import Style
from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.reactive import reactive, var
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from rpchat.config import Config, load_config
from rpchat.engine.base import Engine, EngineInfo
from rpchat.errors import RpchatError
from rpchat.group.library import new_group_chat
from rpchat.group.model import load_group
from rpchat.paths import Paths, profile
from rpchat.personas import PersonaBook
from rpchat.session import RoleplaySession, open_chat_session
from rpchat.text import strip_controls
from rpchat.tui.bindings import BY_ID, bindings_for, check_keymap, effective_key
from rpchat.tui.chat import ChatScreen
from rpchat.tui.commands import RpchatCommands
from rpchat.tui.help import HelpScreen
from rpchat.tui.host import Host
from rpchat.tui.library import LibraryScreen
from rpchat.tui.messages import ModelFailed, ModelLoaded, ModelLoading, SettingsChanged
from rpchat.tui.themes import (
    STYLESHEET,
    install_themes,
    prose_styles,
    prose_variable_defaults,
    remember_theme,
)

EngineFactory = Callable[[Config], Engine]


class RpchatApp(App[None]):
    """The rpchat terminal app."""

    TITLE = "rpchat"
    BINDINGS: ClassVar[list[BindingType]] = bindings_for("app")
    COMMANDS = App.COMMANDS | {RpchatCommands}
    CSS_PATH = STYLESHEET

    engine_state: reactive[str] = reactive("idle")  # idle, loading, ready, failed, missing
    load_progress: reactive[float] = reactive(0.0)
    load_stage: var[str] = var("")  # what the engine is doing while it loads ("reading 4.1 GB", "warming up"...)

    def __init__(self, *, paths: Paths | None = None, engine_factory: EngineFactory | None = None,
                 load_model: bool = True) -> None:
        super().__init__()
        self.paths = paths or profile()
        self._notices: list[str] = []
        try:
            self.config = load_config(self.paths, self._notices)
        except RpchatError as e:
            self.config = Config()
            self._notices.append(f"{e}; using the default settings")
        try:
            self.personas = PersonaBook.load(self.paths.personas_file)
        except RpchatError as e:
            self.personas = PersonaBook(path=self.paths.personas_file)
            self._notices.append(f"{e}; using the persona 'User'")
        self.engine: Engine | None = None
        self.engine_info: EngineInfo | None = None
        self.engine_problem: str | None = None
        self._engine_factory = engine_factory
        self._load_model = load_model
        self._user_keys: dict[str, str] = {}
        self._prose_cache: tuple[str, dict[str, Style]] | None = None
        self._started = False  # theme changes before this are the config's own, not the user's

    # --- start -------------------------------------------------------------------------------------------
    def get_theme_variable_defaults(self) -> dict[str, str]:
        return prose_variable_defaults()

    def on_mount(self) -> None:
        notice = install_themes(self, self.config.theme, self.paths)
        if notice:
            self._notices.append(notice)
        keymap, problems = check_keymap(self.config.keys)
        self._user_keys = keymap
        self.set_keymap(keymap)
        if problems:
            self._notices.append(f"{self.paths.config_file}: keys: " + "; ".join(problems))
        for notice in self._notices:
            self.notify(notice, severity="warning", timeout=10, markup=False)
        self.push_screen(LibraryScreen())
        self._started = True
        if self._load_model:
            self.start_loading()

    def watch_theme(self, name: str) -> None:
        # Remember a theme picked from the palette; the config file is the source of truth.
        if self._started and name != self.config.theme and self.get_theme(name) is not None:
            self.config.theme = name
            try:
                remember_theme(name, self.paths)
            except (RpchatError, OSError) as e:
                self.notify(f"Could not save the theme choice: {e}", severity="warning", markup=False)

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Show a notification; file names and card text in it cannot drive the terminal."""
        super().notify(strip_controls(message), title=strip_controls(title), severity=severity, timeout=timeout,
                       markup=markup)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        # rpchat's own "Quit" (with its key) keeps a partial reply; one entry, not two.
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command

    # --- the model ---------------------------------------------------------------------------------------
    def start_loading(self) -> None:
        """(Re)load the model configured in ``self.config`` in a background thread."""
        old, self.engine = self.engine, None
        self.engine_info = None
        self.engine_problem = None
        self.load_progress = 0.0
        self.load_stage = ""
        self.engine_state = "loading"
        self._load_engine(old)

    @work(thread=True, group="model", exclusive=True, exit_on_error=False)
    def _load_engine(self, old: Engine | None) -> None:
        if old is not None:
            old.close()
        try:
            factory = self._engine_factory or _default_engine
            engine = factory(self.config)

            def progress(value: float, stage: str = "") -> None:
                self.post_message(ModelLoading(value, stage))

            engine.load(progress=progress)
        except RpchatError as e:
            self.post_message(ModelFailed(str(e)))
            return
        except Exception as e:  # noqa: BLE001 - a loader bug is a notice, never a crash
            self.post_message(ModelFailed(f"{type(e).__name__}: {e}"))
            return
        self.engine = engine
        self.post_message(ModelLoaded(engine.info))

    def action_reload_model(self) -> None:
        """Load the configured model again."""
        self.start_loading()

    def on_model_loading(self, message: ModelLoading) -> None:
        # Screens watch both (the stage first, so a progress watcher shows the new stage too).
        self.load_stage = message.stage or self.load_stage
        self.load_progress = max(0.0, min(1.0, message.progress))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.engine_info = message.info
        self.engine_state = "ready"
        if message.info.notice:
            self.notify(message.info.notice, markup=False)
        self.notify(f"Model ready: {message.info.model_name} ({message.info.backend})", markup=False)

    def on_model_failed(self, message: ModelFailed) -> None:
        self.engine_problem = message.problem
        self.engine_state = "missing" if message.problem.lower().startswith("no model") else "failed"
        self.notify(message.problem, severity="error", timeout=15, markup=False)

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        # Workers report their own failures; this catches anything that still escaped one.
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            error = event.worker.error
            self.notify(f"{type(error).__name__}: {error}", severity="error", markup=False)

    # --- shared helpers for screens -----------------------------------------------------------------------
    def prose_styles(self) -> dict[str, Style]:
        """Rich styles for roleplay prose under the current theme (cached per theme)."""
        name = self.theme
        if self._prose_cache is None or self._prose_cache[0] != name:
            self._prose_cache = (name, prose_styles(self.current_theme))
        return self._prose_cache[1]

    def key_for(self, binding_id: str) -> str:
        """The key a binding answers to now (after the user's remapping), for hints."""
        spec = BY_ID.get(binding_id)
        if spec is None:
            return "?"
        key = effective_key(spec, self._user_keys).split(",")[0]
        return self.get_key_display(Binding(key, ""))

    @property
    def keymap(self) -> dict[str, str]:
        return dict(self._user_keys)

    def open_chat(self, card_path: Path, chat_path: Path | None = None, *, branch: bool = False) -> None:
        """Open (``chat_path``) or start a chat with a card and show it; ``branch`` opens a new branch of
        ``chat_path`` at its last turn instead."""
        try:
            session = open_chat_session(card_path, chat_path, config=self.config, personas=self.personas,
                                        engine=self.engine if self.engine_state == "ready" else None)
            if branch:
                if not session.chat.turns:
                    raise RpchatError("the chat is empty; nothing to branch", chat_path)
                session = session.branch(len(session.chat.turns) - 1)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.push_screen(ChatScreen(session))
        self.remember_chat(session)
        if branch:
            self.notify(f"Branched into {session.path.name}", markup=False)

    def open_group(self, group: Path, *, new_chat: bool = False) -> None:
        """Open a group's current chat (or a new one: ``new_chat``), started with the members' greetings when
        new, and show it."""
        try:
            if new_chat:
                new_group_chat(load_group(group), group)
            session = open_chat_session(None, config=self.config, personas=self.personas, group=group,
                                        engine=self.engine if self.engine_state == "ready" else None)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self.push_screen(ChatScreen(session))
        self.remember_chat(session)

    # --- other screens ------------------------------------------------------------------------------------
    def action_show_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_open_settings(self) -> None:
        from rpchat.tui.settings import SettingsScreen

        if isinstance(self.screen, SettingsScreen):
            return

        def done(config: Config | None) -> None:
            if config is not None:
                self._apply_config(config)

        self.push_screen(SettingsScreen(self.config, self.paths), done)

    def action_import_st_preset(self) -> None:
        """Import a SillyTavern textgen preset as a sampler preset (palette)."""
        from rpchat.tui.settings import ask_st_import

        ask_st_import(self, "preset")

    def action_import_st_format(self) -> None:
        """Import SillyTavern instruct/context templates as a prompt format (palette)."""
        from rpchat.tui.settings import ask_st_import

        ask_st_import(self, "format")
    def _apply_config(self, config: Config) -> None:
        # Every screen takes the new settings (a chat re-picks its format and preset for a new model);
        # a changed engine loads in the background while the chat goes on.
        engine_changed = config.engine != self.config.engine
        self.config = config
        keymap, _ = check_keymap(config.keys)
        self._user_keys = keymap
        self.set_keymap(keymap)
        for screen in self.screen_stack:
            screen.post_message(SettingsChanged(config))
        if engine_changed and self._load_model:
            self.start_loading()

    def action_open_model_picker(self) -> None:
        """List the models rpchat can find; the one picked loads in the background."""

        from rpchat.config import save_config
        from rpchat.tui.model_picker import ModelPicker

        if isinstance(self.screen, ModelPicker):
            return

        def done(path: Path | None) -> None:
            if path is None:
                return
            eng = self.config.engine
            same = eng.model is not None and Path(eng.model).expanduser() == path
            # A LoRA belongs to its base model: another model drops it.
            engine = dataclasses.replace(eng, kind="local", model=str(path), lora=eng.lora if same else None)
            config = dataclasses.replace(self.config, engine=engine)
            try:
                save_config(self.paths, config)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self._apply_config(config)

        self.push_screen(ModelPicker(self.config, self.paths), done)

    def remember_chat(self, session: RoleplaySession) -> None:
        """Remember the chat on screen as the one Ctrl+O resumes, after a restart too."""
        from rpchat.chat.recent import remember_chat

        if session.cast is not None:  # a group chat: recorded with its group file
            remember_chat(session.cast.group_file, session.path, self.paths)
        elif session.card_path is not None:
            remember_chat(session.card_path, session.path, self.paths)

    # --- quitting -----------------------------------------------------------------------------------------
    async def action_quit(self) -> None:
        """Quit; a reply being written is stopped and kept, marked unfinished."""
        waiting: list[Worker[Any]] = []
        chats = [screen for screen in self.screen_stack if isinstance(screen, ChatScreen)]
        if chats:
            self.remember_chat(chats[-1].session)  # a branch made in the chat is the chat now
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen) and screen.generating:
                screen.stop_for_quit()
                waiting += [w for w in self.workers if w.group == "generate" and w.is_running]
        for worker in waiting:
            # The engine stops within ~100 ms; the session then saves the partial reply.
            await self._wait_thread(worker, 5.0)
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                # The chat the engine holds is saved (off the event loop), so reopening it is instant.
                await asyncio.to_thread(screen.session.save_state)
        self.exit()

    async def _wait_thread(self, worker: Worker[Any], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while worker.is_running and loop.time() < deadline:
            await asyncio.sleep(0.02)

    def on_unmount(self) -> None:
        if self.engine is not None:
            with contextlib.suppress(Exception):  # closing at exit must not raise
                self.engine.close()


def _default_engine(config: Config) -> Engine:
    from rpchat.engine.factory import make_engine

    return make_engine(config)


def _as_host(app: RpchatApp) -> Host:
    # mypy checks here that the app is what its screens take it for.
    return app


def run_app() -> int:
    """Run the TUI until the user quits; returns the exit code."""
    app = RpchatApp()
    app.run()
    return app.return_code or 0

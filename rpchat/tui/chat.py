"""The chat screen: sidebar, transcript, input box and status line; turn operations and streaming.

Generation runs in a thread worker (group "generate", exclusive, exit_on_error=False) that reports
through typed messages posted with `post_message`; the screen never blocks on the engine.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static, TextArea

from rpchat.chat.library import chats_folder, export_st_chat
from rpchat.chat.model import AuthorsNote, Turn
from rpchat.engine.base import PromptProgress, Result, format_seconds, throttle
from rpchat.errors import RpchatError
from rpchat.group.cast import GroupCast
from rpchat.group.library import member_turn
from rpchat.memory import default_covers, prefill_next, set_summary, update_summary
from rpchat.personas import PersonaBook
from rpchat.session import RoleplaySession, pick_persona
from rpchat.tui.avatar import AvatarView
from rpchat.tui.bindings import bindings_for
from rpchat.tui.card_editor import SavedCard, edit_card
from rpchat.tui.dialogs import ConfirmDialog, PathPrompt, TextPrompt, save_to_path
from rpchat.tui.group import GroupTurns, MembersDialog, SpeakerDialog, avatars_of, members_line
from rpchat.tui.host import Host, host_of
from rpchat.tui.inspector import PromptInspector
from rpchat.tui.messages import (
    PromptMeasured,
    PromptProgressed,
    ReplyFailed,
    ReplyFinished,
    SettingsChanged,
    StateSaved,
    SummaryUpdated,
    TokensArrived,
)
from rpchat.tui.note_dialog import AuthorsNoteDialog
from rpchat.tui.persona_editor import PersonaChoice, PersonaEditor
from rpchat.tui.prose import clean
from rpchat.tui.statusline import StatusLine, StatusPart
from rpchat.tui.transcript import Transcript, TurnView

if TYPE_CHECKING:
    from textual.timer import Timer


class ChatInput(TextArea):
    """A multi-line input: Enter sends, Shift+Enter or Ctrl+J makes a newline."""

    DEFAULT_CSS = """
    ChatInput { height: auto; min-height: 3; max-height: 10; border: round $primary 50%; }
    ChatInput:focus { border: round $primary; }
    """

    class Submitted(Message):
        def __init__(self, box: ChatInput, text: str) -> None:
            super().__init__()
            self.box = box
            self.text = text

        @property
        def control(self) -> ChatInput:
            return self.box

    class EmptyKey(Message):
        """Up/Left/Right pressed while the box is empty (edit last message, swipe)."""

        def __init__(self, box: ChatInput, key: str) -> None:
            super().__init__()
            self.box = box
            self.key = key

        @property
        def control(self) -> ChatInput:
            return self.box

    def __init__(self, text: str = "", *, placeholder: str = "", id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(text, soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
                         placeholder=placeholder, id=id, classes=classes, compact=True)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        if event.key in ("shift+enter", "ctrl+j", "alt+enter"):
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self.replace("\n", start, end, maintain_selection_offset=False)
            return
        if event.key in ("up", "left", "right") and not self.text:
            event.stop()
            event.prevent_default()
            self.post_message(self.EmptyKey(self, event.key))
            return
        await super()._on_key(event)

    async def _on_paste(self, event: events.Paste) -> None:
        # A TextArea draws its text as is: a pasted ESC sequence would drive the terminal.
        event.prevent_default()
        if self.read_only:
            return
        start, end = self.selection
        self.replace(clean(event.text), start, end, maintain_selection_offset=False)


class EditBox(ChatInput):
    """Edits one turn in place: Enter saves, Esc cancels (both shown in the footer and on the box)."""

    DEFAULT_CSS = """
    EditBox { border: round $accent; margin-bottom: 1; border-subtitle-color: $accent; }
    """
    # Shown in the footer instead of the message cursor's "Edit turn" (Enter) and the screen's "Stop" (Esc).
    BINDINGS: ClassVar[list[BindingType]] = bindings_for("edit")

    class Cancelled(Message):
        """Esc in the edit box: close it, keeping the turn as it was."""

        def __init__(self, box: EditBox) -> None:
            super().__init__()
            self.box = box

        @property
        def control(self) -> EditBox:
            return self.box

    def __init__(self, index: int, text: str) -> None:
        # Control characters are shown inert (raw ones would reach the terminal); saving the text
        # untouched keeps the original exactly.
        self.original = text
        self.shown = clean(text)
        super().__init__(self.shown, placeholder="Enter saves, Esc cancels")
        self.index = index
        self.compact = False  # the border carries the title and the keys: this box is unlike the others
        self.border_title = f"Editing turn #{index + 1}"
        self.border_subtitle = "Enter saves \u00b7 Esc cancels \u00b7 Shift+Enter new line"

    def edited_text(self, text: str) -> str:
        """What to store for the box now reading ``text``."""
        return self.original if text == self.shown else text.strip()

    def check_consume_key(self, key: str, character: str | None = None) -> bool:
        # Enter is the box's own (save): the message cursor's Enter ("Edit turn") does not apply here.
        return key == "enter" or super().check_consume_key(key, character)

    def action_save(self) -> None:
        self.post_message(self.Submitted(self, self.text))

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled(self))

    async def _on_key(self, event: events.Key) -> None:
        if event.key in ("up", "left", "right"):
            # In the edit box arrows always move the cursor, even when it is empty.
            await TextArea._on_key(self, event)
            return
        await super()._on_key(event)


class ChatScreen(Screen[None]):
    """One chat with one character."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("chat")
    SCOPES = ("chat", "transcript")
    AUTO_FOCUS = "#input"
    # Below 100 columns the sidebar would leave the transcript too narrow to read; the status line
    # still shows the length and preset.
    # Textual types it `ClassVar[...] | None`, which mypy takes for an instance variable: no annotation here.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]  # noqa: RUF012


    def __init__(self, session: RoleplaySession) -> None:
        super().__init__()
        self.session = session
        self.generating: str | None = None
        self._cancel = threading.Event()
        self._gen_id = 0
        self._editing: EditBox | None = None
        self._n_tokens: int | None = None
        self._n_ctx: int | None = None
        self._status = ""
        self._from_alternative: int | None = None  # the token a running continuation was chosen at
        # The last prompt-progress report and when it came; the clock ticks on between reports.
        self._progress: tuple[PromptProgress, float] | None = None
        self._progress_timer: Timer | None = None
        # A group chat: who answers the user's message, one after another (None in a 1:1 chat).
        self.group_turns = GroupTurns(session) if session.cast is not None else None

    @property
    def host(self) -> Host:
        return host_of(self)

    # --- layout ----------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        card = self.session.card
        with Horizontal():
            with Vertical(id="sidebar"):
                yield AvatarView(card.avatar)
                yield Static(clean(card.display_name), id="char-name", markup=False)
                yield Static("", id="group-members", markup=False)
                yield Static(self._card_line(), id="card-info", markup=False)
                yield Static("", id="persona", markup=False)
                yield Static("", id="scenario", markup=False)
                yield Static("", id="length", markup=False)
                yield Static("", id="preset", markup=False)
                yield Static("", id="worlds", markup=False)
            with Vertical(id="main"):
                yield Transcript(id="transcript")
                yield ChatInput(placeholder="Write... (Enter sends, Shift+Enter or Ctrl+J: newline)", id="input")
                yield StatusLine(id="status")
        yield Footer()

    def _card_line(self) -> str:
        card = self.session.card
        spec = {"chara_card_v1": "V1", "chara_card_v2": "V2", "chara_card_v3": "V3"}.get(card.spec, card.spec)
        parts = [spec]
        if card.creator:
            parts.append(f"by {card.creator}")
        line = " ".join(parts)
        if card.tags:
            line += "\ntags: " + ", ".join(card.tags[:6])
        return clean(line)

    @property
    def transcript(self) -> Transcript:
        return self.query_one(Transcript)

    @property
    def input(self) -> ChatInput:
        return self.query_one("#input", ChatInput)

    def on_mount(self) -> None:
        if self.group_turns is not None:
            self.transcript.avatars = avatars_of(self.group_turns.session)
        self.transcript.anchor()
        self.show_chat()
        self.input.focus()
        self.watch(self.app, "engine_state", self._engine_changed)
        self.watch(self.app, "load_progress", lambda _: self.update_status(), init=False)
        self.watch(self.app, "load_stage", lambda _: self.update_status(), init=False)
        self.watch(self.app, "theme", lambda _: self.show_chat(), init=False)
        for warning in self.session.chat.warnings:
            self.notify(warning, severity="warning", markup=False)
        # A long chat is many long-lived objects; a full GC pass over them stalls the UI for
        # 100+ ms mid-stream. Freezing moves everything alive now out of the collector's sight.
        self.call_after_refresh(gc.freeze)

    def show_chat(self) -> None:
        """Render the whole chat again (after open, delete, branch, theme change)."""
        self.transcript.show_turns(self.session.chat.turns, self.host.prose_styles(),
                                   first_kept=self._first_kept())
        self.update_sidebar()
        self.update_status()

    def _first_kept(self) -> int | None:
        built = self.session.last_built
        return getattr(built, "first_kept", None) if built is not None else None

    def update_sidebar(self) -> None:
        s = self.session
        self.query_one("#persona", Static).update(f"Persona: {clean(s.persona.name)}")
        from rpchat.prompt.macros import expand_macros

        scenario = expand_macros(s.chat.scenario or s.card.scenario, s.card.display_name, s.persona.name)
        label = "Scenario (chat)" if s.chat.scenario else "Scenario"
        short = " ".join(scenario.split())
        self.query_one("#scenario", Static).update(
            f"{label}: {clean(short[:160] + ('...' if len(short) > 160 else ''))}" if short else "Scenario: -")
        self.query_one("#length", Static).update(f"Next reply: [{s.length or 'auto'}]  ({self._key('length')})")
        self.query_one("#preset", Static).update(f"Preset: {clean(s.preset_name or '-')}")
        worlds, line = self.query_one("#worlds", Static), self._worlds_line()
        worlds.update(line)
        worlds.display = bool(line)  # no blank gap in the sidebar when none
        members = self.query_one("#group-members", Static)
        members.display = self.group_turns is not None
        if self.group_turns is not None:  # the sidebar shows who speaks next, and the members
            members.update(members_line(self.group_turns.session))
            self.query_one(AvatarView).set_image(s.card.avatar)
            self.query_one("#char-name", Static).update(clean(s.card.display_name))
            self.query_one("#card-info", Static).update(self._card_line())

    def _worlds_line(self) -> str:
        s = self.session
        names = ", ".join(w.removesuffix(".json") for w in s.worlds)
        line = f"World: {names}" if names else ""
        if not s.use_card_lorebook and s.card.character_book:
            line += ("\n" if line else "") + "Card lorebook: off"
        return clean(line)

    def _show_notices(self) -> None:
        for notice in self.session.take_notices():
            self.notify(notice, severity="warning", markup=False)

    def _key(self, binding_id: str) -> str:
        return self.host.key_for(binding_id)

    def update_status(self) -> None:
        """model | backend | ctx used/n_ctx | reading progress, or the last reply's cost | tok/s | format |
        preset | length, fitted to the width: the least important parts are shortened or dropped first."""
        app = self.host
        parts: list[StatusPart] = []
        info = app.engine_info
        if app.engine_state == "ready" and info is not None:
            name = clean(info.model_name)
            parts.append(StatusPart.of(name, name[:15] + "\u2026" if len(name) > 16 else "", rank=40))
            backend = clean(info.backend)
            parts.append(StatusPart.of(backend, backend.split(" (")[0] if " (" in backend else "", rank=10))
            n_ctx = self._n_ctx or info.n_ctx
            used = f"{self._n_tokens:,}" if self._n_tokens is not None else "?"
            ctx = f"{used}/{n_ctx:,}"
            if self._n_tokens is not None and self._n_tokens >= n_ctx:
                # Even after cutting old turns the card and last turns do not fit: say so before a send fails.
                parts.append(StatusPart.of(f"ctx {ctx} (too long: raise n_ctx in Settings)", f"ctx {ctx} too long",
                                           rank=85, keep=True))
            else:
                parts.append(StatusPart.of(f"ctx {ctx}", ctx, rank=50))
        elif app.engine_state == "loading":
            percent = f"{int(app.load_progress * 100)}%"
            stage = f" ({clean(app.load_stage)})" if app.load_stage else ""
            parts.append(StatusPart.of(f"loading model {percent}{stage}", f"loading model {percent}",
                                       f"loading {percent}", rank=90, keep=True))
        else:
            problem = clean(app.engine_problem or "no model")
            parts.append(StatusPart.of(problem, problem[:29] + "\u2026" if len(problem) > 30 else "",
                                       rank=90, keep=True))
        result = self.session.last_result
        if result is not None and not self.generating:
            # What the last action cost: time to first token, prompt tokens read and reused.
            cost = _reply_cost(result)
            if cost:
                parts.append(StatusPart.of(*cost, rank=35))
        if result is not None and result.tok_per_s:
            parts.append(StatusPart.of(f"{result.tok_per_s:.1f} tok/s", rank=30))
        if result is not None and (result.rewinds or result.unsupported):
            # what the banned-phrase list did to the last reply, or that the server ignored it
            said = (f"{result.rewinds} banned phrase(s) rewritten" if result.rewinds
                    else "not applied: " + ", ".join(result.unsupported))
            short = f"{result.rewinds} rewritten" if result.rewinds else "list not applied"
            parts.append(StatusPart.of(clean(said), short, rank=15))
        choices = self.session.choices
        if choices is not None:
            # Where each came from: "format limamono, from the model".
            for pick, what, rank in ((choices.format, "format", 25), (choices.preset, "preset", 20)):
                value = clean(pick.value or "auto")
                parts.append(StatusPart.of(clean(pick.describe(what)), f"{what} {value}", rank=rank))
        else:
            # The preset rarely changes mid-chat (and the sidebar shows it): it goes before the model's name.
            parts.append(StatusPart.of(f"preset {clean(self.session.preset_name or '-')}", rank=20))
        length = self.session.length or "auto"
        parts.append(StatusPart.of(f"length {length}", f"len {length}", rank=60))
        if self.generating:
            # What the user waits for is kept whatever the width: the reading progress, and how to stop.
            stop = self._key("stop")
            if self._progress:
                waiting = clean(self._progress[0].describe(time.monotonic() - self._progress[1]))
                parts.append(StatusPart.of(f"{waiting} ({stop} stops)", f"{waiting.split(',')[0]} ({stop} stops)",
                                           f"{stop} stops", rank=100, keep=True))
            else:
                parts.append(StatusPart.of(f"{self.generating}... ({stop} stops)", f"{stop} stops",
                                           rank=100, keep=True))
        status = self.query_one("#status", StatusLine)
        status.show(parts)
        self._status = status.full_text

    def _engine_changed(self, state: str) -> None:
        if state == "ready":
            self.session.engine = self.host.engine
            # After the first paint: building the prompt of a long chat competes for the GIL.
            self.set_timer(0.3, self.measure)
        elif not self.generating:
            self.session.engine = None  # the old engine is being replaced (or failed)
        self.update_status()

    # --- sending and generating ------------------------------------------------------------------------
    @on(ChatInput.Submitted, "#input")
    def _send(self, event: ChatInput.Submitted) -> None:
        event.stop()
        text = event.text.strip()
        if self.generating:
            self.notify(f"Still writing; {self._key('stop')} stops it.", severity="warning")
            return
        if text:
            try:
                self.session.send(text)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.input.clear()
            self.transcript.end_stream(self.session.chat.turns)
        elif self.group_turns is not None:
            pass  # Enter on an empty box passes the user's turn: the group talks on
        elif not self.session.chat.turns or not self.session.chat.turns[-1].is_user:
            return
        if self.group_turns is not None:
            self.group_round()
            return
        self.generate("reply")

    def group_round(self) -> None:
        """Let the group answer by its turn order; with manual turns, ask who speaks."""
        assert self.group_turns is not None
        if self.group_turns.start_round():
            self.generate("reply")
        elif not _cast_of(self.session).active_members():
            # Nobody can answer by turn order; asking "who speaks" again would only loop.
            self.notify(f"Every member is muted: unmute one ({self.host.key_for('members')}), or pick who speaks "
                        f"now ({self.host.key_for('speaker')}).", severity="warning", markup=False)
        else:
            self.action_pick_speaker()

    def generate(self, mode: str) -> None:
        """Start a reply, regeneration, continuation or impersonation in the worker thread."""
        if self.generating:
            self.notify("Already writing.", severity="warning")
            return
        if self.host.engine_state != "ready" or self.host.engine is None:
            if self.host.engine_state == "loading":
                msg = "The model is still loading; your message is saved. Press regenerate when it is ready."
            else:
                msg = self.host.engine_problem or "No model is loaded."
            self.notify(msg, severity="warning", markup=False)
            return
        self.session.engine = self.host.engine
        chat = self.session.chat
        last = len(chat.turns) - 1
        if mode in ("regenerate", "continue") and (
            last < 0 or chat.turns[last].is_user or (last == 0 and mode == "regenerate")
        ):
            self.notify(f"Nothing to {mode}: the last turn is not a reply.", severity="warning")
            return
        self._gen_id += 1
        self._cancel = threading.Event()
        self.generating = mode
        self._close_editor()
        speaker: dict[str, Any] = {}
        if mode == "reply" and self.group_turns is not None:
            member = self.group_turns.take()
            if member is None:
                self.group_turns.start_round()
                member = self.group_turns.take()
            if member is None:
                self.generating = None
                self.action_pick_speaker()
                return
            speaker = {"speaker": member}
            self.update_sidebar()
            self.transcript.start_stream(member_turn(member, ""))
        elif mode == "reply":
            placeholder = Turn(is_user=False, name=chat.character_name, swipes=[""])
            self.transcript.start_stream(placeholder)
        elif mode == "regenerate":
            shown = Turn(is_user=False, name=chat.turns[last].name, swipes=[""])
            self.transcript.start_stream(shown, replace_index=last)
        elif mode == "continue":
            shown = Turn(is_user=False, name=chat.turns[last].name, swipes=[chat.turns[last].text])
            self.transcript.start_stream(shown, replace_index=last, base=chat.turns[last].text)
        else:
            self.input.clear()
        self.update_status()
        self._run_generation(mode, self._gen_id, self._cancel, speaker)

    @work(thread=True, group="generate", exclusive=True, exit_on_error=False)
    def _run_generation(self, mode: str, gen_id: int, cancel: threading.Event,
                        speaker: dict[str, Any] | None = None) -> None:
        def on_piece(piece: str) -> None:
            self.post_message(TokensArrived(piece, gen_id))

        def on_progress(progress: PromptProgress) -> None:
            self.post_message(PromptProgressed(progress, gen_id))

        try:
            result = self.session.reply(on_piece, cancel, mode, throttle(on_progress),  # type: ignore[arg-type]
                                        **(speaker or {}))
        except RpchatError as e:
            self.post_message(ReplyFailed(str(e), mode, gen_id))
            return
        except Exception as e:  # noqa: BLE001 - shown as a notification, never a crash
            self.post_message(ReplyFailed(f"{type(e).__name__}: {e}", mode, gen_id))
            return
        self.post_message(ReplyFinished(result, mode, gen_id))

    def on_prompt_progressed(self, message: PromptProgressed) -> None:
        if message.generation != self._gen_id or not self.generating:
            return
        self._progress = (message.progress, time.monotonic())
        if self._progress_timer is None:
            # Between reports (a server may send one per 2,048 tokens) the clock and time left move on.
            self._progress_timer = self.set_interval(0.25, self.update_status)
        self.update_status()

    def _end_progress(self) -> None:
        self._progress = None
        if self._progress_timer is not None:
            self._progress_timer.stop()
            self._progress_timer = None

    def on_tokens_arrived(self, message: TokensArrived) -> None:
        if message.generation != self._gen_id:
            return
        if self._progress is not None:
            self._end_progress()
            self.update_status()
        if self.generating == "impersonate":
            self.input.insert(clean(message.text), self.input.document.end)
        elif self.transcript.streaming is not None:
            self.transcript.streaming.append(message.text)

    def on_reply_finished(self, message: ReplyFinished) -> None:
        if message.generation != self._gen_id:
            return
        self.generating = None
        self._end_progress()
        result = message.result
        self.transcript.end_stream(self.session.chat.turns)
        if message.mode == "impersonate":
            self.input.text = clean(result.text.strip())
            self.input.move_cursor(self.input.document.end)
            self.input.focus()
        if result.error:
            kept = " (partial reply kept)" if result.text.strip() and message.mode != "impersonate" else ""
            self.notify(f"Generation failed: {result.error}{kept}", severity="error", markup=False)
        elif result.finish_reason == "cancelled":
            kept = "the partial reply is kept" if result.text.strip() else "nothing had been written yet"
            self.notify(f"Stopped; {kept}.", markup=False)
        if self._from_alternative is not None and not result.error:
            self.notify(f"New swipe from token {self._from_alternative + 1}: "
                        f"{result.prompt_tokens_reused:,} prompt tokens reused, "
                        f"{result.prompt_tokens_evaluated:,} evaluated.", markup=False)
        self._from_alternative = None
        if result.prompt_tokens_restored:
            self.notify(f"Saved chat state restored: {result.prompt_tokens_restored:,} prompt tokens read from disk, "
                        f"{result.prompt_tokens_evaluated:,} evaluated.", markup=False)
        self._show_notices()
        self.update_status()
        if self.group_turns is not None:
            self.update_sidebar()
            if result.error or result.finish_reason == "cancelled" or message.mode != "reply":
                self.group_turns.cancel()
            elif self.group_turns.queue:
                self.generate("reply")  # the next member of this round answers
                return
        self.measure()
        self.save_state()
        self._update_summary()

    # --- saved KV state (instant reopen) ----------------------------------------------------------------
    def save_state(self) -> None:
        """Save this chat's KV cache to disk in a worker thread (after a reply and on leaving the chat)."""
        self.app.run_worker(self._save_state_now, thread=True, group="kvstate", exit_on_error=False)

    def _save_state_now(self) -> None:
        self.session.save_state()
        self.post_message(StateSaved())

    def on_state_saved(self, _: StateSaved) -> None:
        self._show_notices()

    # --- the story so far (rpchat.memory): written beside the chat, preempted by any reply ---------------
    @work(thread=True, group="summary", exclusive=True, exit_on_error=False)
    def _update_summary(self) -> None:
        update = update_summary(self.session, prefill=True)
        if update is not None:
            self.post_message(SummaryUpdated(update))
            if update.prefilled:
                self._save_state_now()  # a restart then finds the new prompt start on disk

    @work(thread=True, group="summary", exclusive=True, exit_on_error=False)
    def _prefill(self) -> None:
        if prefill_next(self.session):
            self._save_state_now()  # a restart then finds the new prompt start on disk

    def on_summary_updated(self, message: SummaryUpdated) -> None:
        update = message.update
        if update.applied:
            self.notify(f"Story so far updated: {len(update.turns)} turn(s) that left the context summarised.",
                        markup=False)
            self.measure()
        elif update.problem:
            self.notify(f"Story so far not updated: {update.problem}", severity="warning", markup=False)

    def on_reply_failed(self, message: ReplyFailed) -> None:
        if message.generation != self._gen_id:
            return
        self.generating = None
        self._from_alternative = None
        self._end_progress()
        if self.group_turns is not None:
            self.group_turns.cancel()
        self.transcript.end_stream(self.session.chat.turns)
        self.notify(message.problem, severity="error", markup=False)
        self.update_status()

    # --- prompt measuring (context used, cut marker) ---------------------------------------------------
    def measure(self) -> None:
        """Build the next prompt in a worker to show the context use and the cut marker."""
        if self.session.engine is None or self.generating:
            return
        self._run_measure()

    @work(thread=True, group="measure", exclusive=True, exit_on_error=False)
    def _run_measure(self) -> None:
        try:
            built: Any = self.session.build("reply")
        except RpchatError:
            return
        engine = self.session.engine
        self.post_message(PromptMeasured(built.n_tokens, engine.n_ctx if engine else None, built.first_kept))

    def on_prompt_measured(self, message: PromptMeasured) -> None:
        self._n_tokens, self._n_ctx = message.n_tokens, message.n_ctx
        self._show_notices()
        if message.first_kept != self.transcript.first_kept and not self.generating:
            self.transcript.first_kept = message.first_kept
            self.transcript.show_turns(self.session.chat.turns, self.host.prose_styles(), message.first_kept)
        self.update_status()

    # --- actions (keys and command palette) ------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Group keys exist in group chats only.
        if action in ("pick_speaker", "group_members"):
            return self.group_turns is not None
        # While a turn is edited (never during a reply), Esc is the edit box's "Cancel edit", not "Stop".
        return not (action == "stop" and self._editing is not None and not self.generating)

    # --- group chats -----------------------------------------------------------------------------------
    def action_pick_speaker(self) -> None:
        """Ask who speaks now (any member, or pass: the group's turn order answers)."""
        turns = self.group_turns
        if turns is None or self.generating:
            return

        def chosen(choice: Any) -> None:
            if choice is None or self.generating:
                return
            if choice == "pass":
                self.group_round()
            else:
                turns.queue = [choice]
                self.generate("reply")

        self.app.push_screen(SpeakerDialog(turns.session), chosen)

    def action_group_members(self) -> None:
        """Mute, remove and add members, change the turn order (saved in the group file)."""
        turns = self.group_turns
        if turns is None:
            return

        def closed(changed: bool | None) -> None:
            if changed:
                self.transcript.avatars = avatars_of(turns.session)
                self.update_sidebar()
                self.measure()

        self.app.push_screen(MembersDialog(turns.session), closed)

    def action_stop(self) -> None:
        """Esc: stop generating; else close the edit box; else return to the input."""
        if self.generating:
            self._cancel.set()
        elif self._editing is not None:
            self._close_editor()
        elif not self.input.has_focus:
            self.input.focus()

    def stop_for_quit(self) -> None:
        """The app is quitting: stop the reply; the session keeps it, marked unfinished."""
        self._cancel.set()

    def on_settings_changed(self, message: SettingsChanged) -> None:
        """Apply new settings (format, preset, reply budget) from the next reply on."""
        before, config = self.session.choices, message.config
        try:
            choices = self.session.use_settings(config)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        if choices != before:
            for notice in choices.notices:  # e.g. "Recognised Limamono-7B ..." after picking another model
                self.notify(notice, markup=False)
        self.update_sidebar()
        self.update_status()
        self.measure()

    def _card_saved(self, saved: SavedCard) -> None:
        # The card was edited and saved: use it for the sidebar and the next prompt.
        if self.group_turns is not None:  # a member's card: read the group and its members again
            self.group_turns.reload(saved.path)
            self.transcript.avatars = avatars_of(self.group_turns.session)
            self.show_chat()
            self.measure()
            return
        session = self.session
        if saved.renamed_from is not None and saved.renamed_from == session.card_path:
            # The renamed card's chats moved to its new folder: this chat goes on saving there.
            session.card_path = saved.path
            moved = chats_folder(saved.path) / session.store.path.name
            if not session.store.path.exists() and moved.is_file():
                session.store.path = moved
            self.host.remember_chat(session)
        self.session.card, self.session.card_path = saved.card, saved.path
        self.query_one(AvatarView).set_image(self.session.card.avatar)
        self.query_one("#char-name", Static).update(clean(self.session.card.display_name))  # a rename
        self.query_one("#card-info", Static).update(self._card_line())
        self.update_sidebar()
        self.measure()

    def action_regenerate(self) -> None:
        # After your message, a hidden turn or narration there is no reply to redo: write a new one.
        self.generate("regenerate" if self.session.last_reply_index() is not None else "reply")

    def action_continue_reply(self) -> None:
        self.generate("continue")

    def action_impersonate(self) -> None:
        self.generate("impersonate")

    def action_swipe(self, step: int) -> None:
        if self.generating:
            return
        try:
            outcome = self.session.swipe(step)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        if outcome == "moved":
            index = self.session.last_reply_index()
            if index is not None:
                self.transcript.refresh_turn(index)
            self.measure()
        elif outcome == "generate":
            self.generate("regenerate")

    def action_cycle_length(self) -> None:
        try:
            self.session.cycle_length()
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
        self.update_sidebar()
        self.update_status()
        self.measure()

    def action_focus_transcript(self) -> None:
        """Move to the message cursor, starting at the newest turn."""
        if self.session.chat.turns:
            self.transcript.cursor = len(self.session.chat.turns) - 1
        self.transcript.focus()

    def action_back(self) -> None:
        if self.generating:
            self._cancel.set()
        self.save_state()  # after the cancelled reply (the engine's lock orders them), off the UI thread
        self.app.pop_screen()

    def action_edit_turn(self) -> None:
        self._turn_op("edit", self._target())

    def action_delete_turn(self) -> None:
        self._turn_op("delete", self._target())

    def action_branch_turn(self) -> None:
        self._turn_op("branch", self._target())

    def action_copy_turn(self) -> None:
        self._turn_op("copy", self._target())

    def action_hide_turn(self) -> None:
        self._turn_op("hide", self._target())

    def action_edit_last(self) -> None:
        index = self.session.last_user_index()
        if index is not None:
            self._turn_op("edit", index)

    def action_edit_persona(self) -> None:
        """Pick the persona and edit the scenario of this chat."""
        host, session = self.host, self.session
        book = host.personas
        if book.find(session.persona.name) is None:
            # The name this chat's user plays (an imported chat's user_name) is offered as a persona too,
            # so applying the editor never swaps it for the default by itself.
            book = dataclasses.replace(book, personas=[*book.personas, session.persona])

        def done(choice: PersonaChoice | None) -> None:
            try:
                host.personas = PersonaBook.load(host.paths.personas_file)  # the editor saved its changes
                if choice is None:
                    return
                session.set_persona(pick_persona(host.personas, choice.persona))
                session.set_scenario(choice.scenario)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.show_chat()  # the user's turns now carry the persona's name
            self.measure()

        self.app.push_screen(PersonaEditor(book, persona=session.persona.name, scenario=session.chat.scenario,
                                           card_scenario=session.card.scenario), done)

    def action_edit_card(self) -> None:
        if self.generating:
            # A rename moves the chat file that the reply is being written to.
            self.notify("Wait for the reply to finish.", severity="warning")
            return
        path = self.group_turns.speaker_card() if self.group_turns is not None else self.session.card_path
        edit_card(self, path, self._card_saved)

    def action_inspect_prompt(self) -> None:
        """Show the exact prompt the next reply would get."""
        session = self.session
        if self.generating:
            self.notify("Wait for the reply to finish.", severity="warning")
            return
        try:
            built = session.build("reply")
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        n_ctx = session.engine.n_ctx if session.engine is not None else None
        origins = session.choices.origins() if session.choices is not None else None
        self.app.push_screen(PromptInspector(built, n_ctx=n_ctx, max_new=session.max_new, origins=origins))

    def action_edit_note(self) -> None:
        """Edit this chat's author's note (palette)."""
        session = self.session

        def done(note: AuthorsNote | None) -> None:
            if note is None or session is not self.session:
                return
            try:
                session.set_note(note)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.notify("Author's note saved." if note.text.strip() else "Author's note cleared.", markup=False)
            self.measure()

        self.app.push_screen(AuthorsNoteDialog(session.chat.note), done)

    def action_edit_summary(self) -> None:
        """View, edit, pin or turn off the story-so-far summary (F6 and the palette)."""
        from rpchat.tui.summary_dialog import StorySummaryDialog

        session = self.session
        summary = session.chat.summary
        if summary.text:
            status = f"Covers turns 1-{summary.covers + 1} of {len(session.chat.turns)}."
        else:
            status = "No summary yet: it is written once turns fall out of the context."
        if not session.summary_config.enabled:
            status += " Off in Settings (config summary.enabled)."

        def done(value: Any) -> None:
            if value is None or session is not self.session:
                return
            try:
                set_summary(session, dataclasses.replace(value, covers=default_covers(session)))
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.notify("Story so far saved.", markup=False)
            self.measure()
            self._prefill()

        self.app.push_screen(StorySummaryDialog(summary, status), done)

    # --- world info (palette only) ---------------------------------------------------------------------
    def action_attach_world(self) -> None:
        """Ask for a lorebook / world-info JSON and attach a copy of it to this chat."""
        session = self.session

        def chosen(path: Path | None) -> None:
            if path is None or session is not self.session:
                return
            try:
                name = session.attach_world(path)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.notify(f"World info attached: {clean(name)}", markup=False)
            self.update_sidebar()
            self.measure()

        self.app.push_screen(PathPrompt("Attach world info", suffixes=(".json",),
                                        message="A SillyTavern world-info, V3 lorebook or character_book JSON."),
                             chosen)

    def action_detach_world(self) -> None:
        """Detach a world: the only one at once, or the one named in a prompt when several."""
        session = self.session
        worlds = session.worlds
        if not worlds:
            self.notify("No world info is attached to this chat.", severity="warning")
            return

        def chosen(name: str | None) -> None:
            if not name or session is not self.session:
                return
            try:
                session.detach_world(name.strip())
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.notify(f"World info detached: {clean(name.strip())}", markup=False)
            self.update_sidebar()
            self.measure()

        if len(worlds) == 1:
            chosen(worlds[0])
            return
        self.app.push_screen(TextPrompt("Detach world info", worlds[-1],
                                        message="Attached: " + ", ".join(worlds)), chosen)

    def action_export_chat(self) -> None:
        """Write this chat as a SillyTavern .jsonl file (what `rpchat chat export` does)."""
        chat = self.session.chat
        save_to_path(self, "Export this chat as SillyTavern .jsonl", lambda dest: export_st_chat(chat, dest),
                     value=str(Path.cwd() / self.session.path.name), suffixes=(".jsonl",),
                     message="Without rpchat's own settings, as SillyTavern reads it.")

    def action_toggle_card_lorebook(self) -> None:
        """Use or ignore the card's embedded lorebook in this chat."""
        on = not self.session.use_card_lorebook
        try:
            self.session.set_card_lorebook(on)
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        has_book = bool(self.session.card.character_book)
        note = "" if has_book else " (this card has none)"
        self.notify(f"Card lorebook {'on' if on else 'off'}{note}.", markup=False)
        self.update_sidebar()
        self.measure()

    def action_chat_banned(self) -> None:
        """Edit the phrases this chat bans on top of Settings' list (separated by |)."""
        def done(text: str | None) -> None:
            if text is None:
                return
            try:
                self.session.set_chat_banned(text.split("|"))
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            n = len(self.session.chat.banned_phrases)
            self.notify(f"{n} banned phrase(s) for this chat; {len(self.session.all_banned())} in all.",
                        markup=False)

        self.app.push_screen(TextPrompt(
            "Banned phrases for this chat", " | ".join(self.session.chat.banned_phrases), allow_empty=True,
            message="Separate phrases with |. These add to the list in Settings (F2).",
        ), done)

    def _target(self) -> int | None:
        t = self.transcript
        if t.cursor is not None and t.cursor < len(self.session.chat.turns):
            return t.cursor
        return len(self.session.chat.turns) - 1 if self.session.chat.turns else None

    @on(Transcript.CursorAction)
    def _cursor_action(self, event: Transcript.CursorAction) -> None:
        if event.action == "focus-input":
            self.input.focus()
        elif event.action in ("swipe-left", "swipe-right"):
            self.action_swipe(-1 if event.action == "swipe-left" else 1)
        else:
            self._turn_op(event.action, event.index)

    @on(ChatInput.EmptyKey, "#input")
    def _empty_key(self, event: ChatInput.EmptyKey) -> None:
        if event.key == "up":
            self.action_edit_last()
        else:
            self.action_swipe(-1 if event.key == "left" else 1)

    def _turn_op(self, op: str, index: int | None) -> None:
        if index is None:
            self.notify("No turn to act on.", severity="warning")
            return
        if self.generating and op != "copy":
            self.notify(f"Still writing; {self._key('stop')} stops it.", severity="warning")
            return
        try:
            if op == "copy":
                self.app.copy_to_clipboard(self.session.chat.turns[index].text)
                self.notify("Copied to the clipboard.")
            elif op == "edit":
                self._open_editor(index)
            elif op == "delete":
                self._confirm_delete(index)
            elif op == "hide":
                hide = not self.session.chat.turns[index].hidden
                self.session.set_hidden(index, hide)
                self.transcript.refresh_turn(index)
                self.notify(f"Turn #{index + 1} {'hidden from' if hide else 'shown to'} the AI.")
                self.measure()
            elif op == "tokens":
                self._show_tokens(index)
            elif op == "branch":
                old = self.session.path.name
                self.session = self.session.branch(index)
                self.show_chat()
                self.notify(f"Branched from {old} into {self.session.path.name}.", markup=False)
                self.measure()
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)

    def _show_tokens(self, index: int) -> None:
        """The token view of a reply; an alternative chosen there becomes a new swipe, continued."""
        from rpchat.tui.tokens import TokenScreen

        trace = self.session.trace_of(index)
        if trace is None:
            self.notify(f"No token probabilities: {self.session.alternatives_missing(index)}.",
                        severity="warning", markup=False)
            return
        session = self.session

        def chosen(pick: tuple[int, Any] | None) -> None:
            if pick is None or session is not self.session or self.generating:
                return
            step, alt = pick
            try:
                session.swipe_from_alternative(index, step, alt)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.transcript.end_stream(session.chat.turns)
            self._from_alternative = step
            self.generate("continue")

        self.app.push_screen(TokenScreen(trace, f"#{index + 1} {self.session.chat.turns[index].name}"), chosen)

    def _confirm_delete(self, index: int) -> None:
        turn = self.session.chat.turns[index]
        preview = " ".join(turn.text.split())
        preview = preview[:80] + ("..." if len(preview) > 80 else "")
        session = self.session

        def answered(yes: bool | None) -> None:
            # The chat may have changed (branch, another delete) while the dialog was open.
            if not yes or session is not self.session or index >= len(session.chat.turns) \
                    or session.chat.turns[index] is not turn:
                return
            try:
                session.delete(index)
            except RpchatError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            self.transcript.cursor = min(index, len(session.chat.turns) - 1) if session.chat.turns else None
            self.show_chat()
            self.measure()

        self.app.push_screen(ConfirmDialog(f"Delete turn #{index + 1} ({clean(turn.name)}): {clean(preview)}",
                                           title="Delete turn", yes="Delete", danger=True), answered)

    # --- editing in place ------------------------------------------------------------------------------
    def _open_editor(self, index: int) -> None:
        self._close_editor()
        view = self.transcript.view_of(index)
        if view is None:
            self.transcript.cursor = index
            self.transcript.load_more()
            view = self.transcript.view_of(index)
        if view is None:
            return
        box = EditBox(index, self.session.chat.turns[index].text)
        self.transcript.mount(box, after=view)
        view.display = False
        self._editing = box
        self.refresh_bindings()
        box.focus()
        # As in SillyTavern, editing starts at the end of the text (usually to add to it).
        box.move_cursor(box.document.end)
        self.call_after_refresh(self.transcript.scroll_to_widget, box, animate=False)

    def _close_editor(self) -> None:
        box, self._editing = self._editing, None
        if box is None:
            return
        view = self.transcript.view_of(box.index)
        if view is not None:
            view.display = True
        box.remove()
        self.refresh_bindings()
        self.input.focus()

    @on(EditBox.Cancelled)
    def _edit_cancelled(self, event: EditBox.Cancelled) -> None:
        event.stop()
        if event.box is self._editing:
            self._close_editor()

    @on(ChatInput.Submitted)
    def _edit_submitted(self, event: ChatInput.Submitted) -> None:
        if not isinstance(event.box, EditBox):
            return
        event.stop()
        index = event.box.index
        try:
            self.session.edit(index, event.box.edited_text(event.text))
        except RpchatError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        self._close_editor()
        self.transcript.refresh_turn(index)
        self.measure()

    # --- for tests and the palette ---------------------------------------------------------------------
    def turn_views(self) -> list[TurnView]:
        """The mounted turn widgets, in order."""
        return list(self.query(TurnView))

    def status_text(self) -> str:
        """The status line as plain text, every part in full (what is drawn may be shortened to fit)."""
        return self._status


def _reply_cost(result: Result) -> tuple[str, ...]:
    """What the last reply cost, fullest form first: time to its first token and the prompt tokens read,
    reused and restored from disk (a narrow status line keeps the time and the tokens read)."""
    read, reused, restored = result.prompt_tokens_evaluated, result.prompt_tokens_reused, result.prompt_tokens_restored
    if not (read or reused or result.tokens_generated):
        return ()
    full = f"{read:,} read, {reused:,} reused"
    if restored:
        # After a restart or a chat switch, the reused part came from the chat's saved state on disk.
        full += f", {restored:,} restored from disk"
    short = f"{read:,} read, {restored:,} from disk" if restored else f"{read:,} read"
    if not result.tokens_generated:
        return f"prompt {full}", f"prompt {short}"
    first = f"1st token {format_seconds(result.ttft_s)}"
    return f"{first} ({full})", f"{first} ({short})", first


def _cast_of(session: RoleplaySession) -> GroupCast:
    assert session.cast is not None  # only group chats have group turns
    return session.cast

"""One roleplay chat in motion: card, chat file, persona, format, sampler and engine, headless.

The TUI, ``rpchat reply`` and ``rpchat prompt`` all open one with `open_chat_session` and drive it; it
never imports Textual. Every change to the chat is saved at once, and a reply being generated is on
disk, marked unfinished, from its first moment, so a quit or crash mid-reply keeps what was written.

How the chat changes (the one mechanism; a new mutation is written this way):

    def set_mood(self, mood: str) -> None:
        check(mood)                      # refusals first: nothing is touched yet
        with self.change() as chat:      # takes the lock and snapshots the chat
            chat.mood = mood             # a Chat/Turn method: the file's layout lives in chat/model.py
        self.shown_mood = mood           # session-only state, once the chat is saved

`change` saves when the block ends. If the block or the save raises (a read-only folder, a full disk,
the file changed by another program), the chat is restored exactly as it was, the very same `Turn`
objects included, and the error (a one-line `ChatError`) goes on to the caller. Never change
``self.chat`` outside `change`, and never index ``extra``/``metadata`` here: add a `Chat` method.
A call that turns out to change nothing returns before entering `change`, so nothing is written.
Session-only state (fields of the session, not of the chat) carries over to a branch by itself.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rpchat.cards.model import Card
from rpchat.chat.model import AuthorsNote, Chat, Turn
from rpchat.chat.store import ChatStore
from rpchat.config import Config, SummaryConfig
from rpchat.engine.alternatives import TOP_K, Alternative, TokenTrace, reply_text
from rpchat.engine.base import Engine, PromptProgressCallback, Result, Sampling
from rpchat.errors import ChatError, EngineError, RpchatError
from rpchat.group.cast import GroupCast
from rpchat.group.turns import Member
from rpchat.personas import Persona, PersonaBook
from rpchat.prompt.builder import BuiltPrompt
from rpchat.prompt.formats import PromptFormat
from rpchat.prompt.lorebook import Lorebook

if TYPE_CHECKING:
    from rpchat.engine.presets import SamplerPreset
    from rpchat.engine.recognize import ModelChoices

ReplyMode = Literal["reply", "regenerate", "continue", "impersonate"]
SwipeOutcome = Literal["moved", "generate", "none"]

# The least room a reply may have, and the slack for the builder's per-message token estimate.
MIN_REPLY_TOKENS = 16
CONTEXT_MARGIN = 8
# How often a reply being streamed is written to disk; a crash loses at most this much text.
CHECKPOINT_S = 2.0


class RoleplaySession:
    """Headless orchestration of one chat: build the prompt, stream a reply, keep the chat saved."""

    def __init__(
        self,
        card: Card,
        chat: Chat,
        store: ChatStore,
        persona: Persona,
        fmt: PromptFormat,
        sampling: Sampling,
        *,
        engine: Engine | None = None,
        preset_name: str = "",
        max_new: int = 400,
        card_path: Path | None = None,
    ) -> None:
        self.card = card
        self.chat = chat
        self.store = store
        self.persona = persona
        self.fmt = fmt
        self.sampling = sampling
        self.engine = engine
        self.preset_name = preset_name
        self.max_new = max_new
        self.card_path = card_path
        self.last_result: Result | None = None
        self.last_built: BuiltPrompt | None = None
        self._counter: tuple[Engine, Callable[[str], int]] | None = None
        # World-info problems met while building, each reported once (the TUI notifies, the CLI warns).
        self.notices: list[str] = []
        # Where the format, preset and length came from (the model, the settings, the chat); see recognize.py.
        self.choices: ModelChoices | None = None
        self._reported: set[str] = set()
        # `rpchat reply --no-lore`: leave the card's lorebook out for this session without saving that.
        self.skip_card_lorebook = False
        # Phrases banned for every reply (Settings, or the shipped list) and for this session only
        # (`rpchat reply --ban`); the preset's and the chat's own lists are added at reply time.
        self.banned_phrases: tuple[str, ...] = ()
        # `rpchat prompt --world`: lorebooks that take part in this session only, not attached.
        self.extra_lorebooks: list[Lorebook] = []
        # Guards the chat while a worker thread streams into it and the UI thread reads it.
        self.lock = threading.RLock()
        # A group chat's members and turn order (``card`` is then the member speaking); None in a 1:1 chat.
        self.cast: GroupCast | None = None
        # The story-so-far summary's switch and chunk sizes (config ``summary``; see rpchat.memory).
        self.summary_config = SummaryConfig()
        # Token alternatives of the last reply turn, per swipe id (in memory only; see `trace_of`).
        self._traces: dict[int, TokenTrace] = {}
        self._untraced: set[int] = set()  # swipes of that turn whose engine sent no probabilities
        self._trace_turn: int | None = None
        self.keep_alternatives = True  # off where nothing shows them (`rpchat reply`)

    # --- files -----------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.store.path

    def save(self) -> None:
        """Write the chat atomically."""
        with self.lock:
            self.store.save(self.chat)

    @contextlib.contextmanager
    def change(self) -> Iterator[Chat]:
        """Change the chat under the lock, then save it; if anything raises, the chat is put back as it was.

        The one way the chat changes (see the module's docstring): a change is saved, or it never happened.
        """
        with self.lock:
            before = self.chat.snapshot()
            cast = self.cast.snapshot() if self.cast is not None else None
            try:
                yield self.chat
                self.store.save(self.chat)
                if self.cast is not None and cast is not None:
                    self.cast.save_if_changed(cast)  # a group's member changes, in its own file
            except BaseException:
                # Unsaved means unchanged: the screen must not show what the file does not hold, and a
                # retry must not apply the change twice.
                self.chat.restore(before)
                if self.cast is not None and cast is not None:
                    self.cast.restore(cast)
                raise

    def close(self) -> None:
        """Free the engine (the chat is already saved)."""
        if self.engine is not None:
            self.engine.close()

    def save_state(self) -> Path | None:
        """Save the engine's KV cache for this chat (local engine; a no-op when nothing changed).

        Reading the state holds the engine's lock for a memory copy; the file is written after.
        Problems become notices. Returns the state file written, if any.
        """
        from rpchat.engine.kvstate import save_for, states_of

        path = save_for(self.engine, self.path)
        states = states_of(self.engine)
        if states is not None:
            for notice in states.take_notices():
                self._note(notice)
        return path

    def _note(self, problem: str) -> None:
        with self.lock:
            if problem not in self._reported:
                self._reported.add(problem)
                self.notices.append(problem)

    # --- settings ----------------------------------------------------------------------------------
    def use_settings(self, config: Config, *, model: Path | None = None, format_name: str | None = None,
                     preset: str | None = None, remote: bool = False) -> ModelChoices:
        """Take the prompt format, sampler preset, reply budget and banned phrases from ``config`` and the
        model (`session_choices`; the arguments override); returns the choices, whose notices say why."""
        from rpchat.engine.recognize import session_choices

        choices, fmt, chosen = session_choices(config, chat_length=(self.chat.length,), model=model,
                                               format_name=format_name, preset_name=preset, remote=remote)
        self._take_settings(config, choices, fmt, chosen, remote=remote)
        return choices

    def _take_settings(self, config: Config, choices: ModelChoices, fmt: PromptFormat, chosen: SamplerPreset,
                       *, remote: bool) -> None:
        self.fmt, self.choices = fmt, choices
        self.sampling, self.preset_name = chosen.sampling, chosen.name
        self.max_new = config.max_new_tokens
        self.banned_phrases = settings_banned(config, remote=remote or config.engine.kind == "remote")
        self.summary_config = config.summary

    @property
    def length(self) -> str | None:
        # A format that places no length (e.g. one imported from SillyTavern) has none to show.
        return self.chat.length if self.fmt.response_length or self.fmt.input_length else None

    @property
    def lengths(self) -> tuple[str | None, ...]:
        """The choices for the next reply's length: none, then the ones this prompt format was trained on."""
        return (None, *self.fmt.lengths) if self.fmt.response_length or self.fmt.input_length else (None,)

    def set_length(self, value: str | None) -> None:
        """Pick the length modifier for the next reply; remembered in the chat."""
        if value not in self.lengths:
            raise ChatError(f"unknown length {value!r} for the {self.fmt.name} format", self.path)
        with self.change() as chat:
            chat.length = value

    def cycle_length(self, step: int = 1) -> str | None:
        """Move to the next length modifier (none, micro ... and back to none) and return it."""
        with self.lock:
            choices = self.lengths
            current = self.chat.length if self.chat.length in choices else None
            value = choices[(choices.index(current) + step) % len(choices)]
            self.set_length(value)
        return value

    def set_persona(self, persona: Persona) -> None:
        """Play another persona: the user's turns take its name (shown, saved, prompted); remembered."""
        with self.change() as chat:
            chat.persona = persona.name
            chat.rename_user(persona.name)
        self.persona = persona

    def set_scenario(self, text: str | None) -> None:
        """Set this chat's scenario (overrides the card's); None or blank clears it."""
        with self.change() as chat:
            chat.scenario = text if text and text.strip() else None

    def set_note(self, note: AuthorsNote) -> None:
        """Set this chat's author's note (SillyTavern's ``note_*`` metadata); saved, or unchanged on error."""
        with self.change() as chat:
            chat.note = note

    # --- world info --------------------------------------------------------------------------------
    @property
    def worlds(self) -> list[str]:
        """The world files attached to this chat (names in the worlds folder), in attach order."""
        return self.chat.worlds

    @property
    def use_card_lorebook(self) -> bool:
        """Whether the card's own lorebook takes part (on unless this chat turned it off)."""
        return self.chat.use_card_lorebook

    def attach_world(self, path: Path) -> str:
        """Copy a lorebook / world-info file into the worlds folder and attach it; returns its name.

        A broken file raises `ConfigError` and leaves the chat as it was.
        """
        from rpchat.worlds import import_world

        name = import_world(Path(path))
        with self.lock:
            if name not in self.worlds:
                with self.change() as chat:
                    chat.worlds = [*chat.worlds, name]
            self._reported = {p for p in self._reported if name not in p}
        return name

    def detach_world(self, name: str) -> None:
        """Detach a world by its stored name (the ``.json`` may be left off); the file stays."""
        with self.change() as chat:
            worlds = chat.worlds
            found = name if name in worlds else f"{name}.json" if f"{name}.json" in worlds else None
            if found is None:
                raise ChatError(f"no world {name!r} is attached", self.path)
            chat.worlds = [w for w in worlds if w != found]

    def set_card_lorebook(self, on: bool) -> None:
        """Use (or leave out) the card's embedded lorebook in this chat; remembered."""
        with self.change() as chat:
            chat.use_card_lorebook = on

    def set_chat_banned(self, phrases: list[str]) -> None:
        """This chat's own banned phrases (one per item); remembered in the chat file."""
        from rpchat.engine.banned import clean_phrases

        with self.change() as chat:
            chat.banned_phrases = list(clean_phrases(phrases))

    def all_banned(self) -> tuple[str, ...]:
        """What the next reply may not contain: the preset's, Settings', this chat's and this session's."""
        from rpchat.engine.banned import clean_phrases

        return clean_phrases([*self.sampling.banned_phrases, *self.banned_phrases, *self.chat.banned_phrases])

    def take_notices(self) -> list[str]:
        """The problems met since the last call (each is reported only once per session)."""
        with self.lock:
            out, self.notices = self.notices, []
        return out

    def _world_books(self) -> list[Lorebook]:
        from rpchat.worlds import load_worlds

        books, problems = load_worlds(self.worlds)
        for problem in problems:
            if problem not in self._reported:
                self._reported.add(problem)
                self.notices.append(problem)
        return books

    # --- prompt ------------------------------------------------------------------------------------
    def _token_counter(self) -> Callable[[str], int] | None:
        # Each message is tokenized once per engine, not on every reply (a long chat has thousands).
        from rpchat.prompt.fitting import TokenCache

        if self.engine is None:
            return None
        cached = self._counter
        if cached is None or cached[0] is not self.engine:
            cached = (self.engine, TokenCache(self.engine.count_tokens))
            self._counter = cached
        return cached[1]

    def build(
        self, mode: ReplyMode = "reply", *, counter: Callable[[str], int] | None = None, n_ctx: int | None = None
    ) -> BuiltPrompt:
        """The prompt for the next generation of ``mode``, fitted to the engine's context when known
        (or to ``n_ctx`` with ``counter``, a tokenizer without an engine)."""
        from rpchat.prompt import build_prompt

        with self.lock:
            if mode in ("regenerate", "continue") and self.cast is not None:
                self._speak_as_author()
            history = list(self.chat.turns)
            if mode == "regenerate":
                index = self._last_reply_index()
                if index is not None:
                    history = history[:index]
            builder_mode = "reply" if mode == "regenerate" else mode
            if counter is None:
                counter = self._token_counter()
                n_ctx = self.engine.n_ctx if self.engine is not None else None
            built = build_prompt(
                self.fmt,
                self.card,
                self.persona,
                history,
                scenario=self.chat.scenario,
                length=self.chat.length,
                mode=builder_mode,
                counter=counter,
                n_ctx=n_ctx,
                max_new=self.max_new if counter is not None else 0,
                lorebook=[*self._world_books(), *self.extra_lorebooks],
                card_lorebook=self.use_card_lorebook and not self.skip_card_lorebook,
                note=self.chat.note,
                **(self.cast.prompt_extras() if self.cast is not None else {}),
                summary=self.chat.summary.text if self.summary_config.enabled and self.chat.summary.enabled else "",
            )
        self.last_built = built
        return built

    # --- turns -------------------------------------------------------------------------------------
    def send(self, text: str) -> Turn:
        """Add the user's message and save."""
        with self.change() as chat:
            turn = chat.add(True, text.strip())
        return turn

    def edit(self, index: int, text: str) -> None:
        """Replace the shown text of any turn and save."""
        with self.change() as chat:
            self._check_index(index)
            chat.edit(index, text)

    def delete(self, index: int) -> Turn:
        """Remove a turn and save."""
        with self.change() as chat:
            self._check_index(index)
            turn = chat.delete(index)
        return turn

    def set_hidden(self, index: int, hidden: bool) -> None:
        """Hide a turn from the AI (it stays in the chat and on screen) or show it again; saved."""
        with self.change() as chat:
            self._check_index(index)
            chat.turns[index].hidden = hidden

    def branch(self, index: int) -> RoleplaySession:
        """A new chat file holding turns up to ``index``; returns a session on it (same engine)."""
        from rpchat.chat.library import save_branch

        with self.lock:
            self._check_index(index)
            chat, store = save_branch(self.chat, index, self.path)
            # Everything this session was opened with (format, preset, banned phrases, the model's
            # choices, `rpchat reply`'s flags) carries over; only the chat and what it did are new.
            other = copy.copy(self)
        other.chat, other.store, other.lock = chat, store, threading.RLock()
        other.last_result, other.last_built = None, None
        other.notices, other._reported = [], set()
        other.extra_lorebooks = list(self.extra_lorebooks)
        if self.cast is not None:  # the group lists the branch and goes on in it
            other.cast = copy.copy(self.cast)
            other.cast.group = copy.deepcopy(self.cast.group)
            with other.change():
                other.cast.add_chat(other.path.stem)
            self.cast.group = copy.deepcopy(other.cast.group)
        return other

    def swipe(self, delta: int) -> SwipeOutcome:
        """Show the previous/next swipe of the last character turn.

        Returns "generate" when swiping right past the last swipe of a reply (the caller then
        regenerates, as in SillyTavern); the greeting's swipes (alternate greetings) wrap around.
        """
        with self.lock:
            index = self._last_reply_index(include_greeting=True)
            if index is None:
                return "none"
            turn = self.chat.turns[index]
            target = turn.swipe_id + delta
            if self._is_greeting(index):
                target %= len(turn.swipes)
            elif target >= len(turn.swipes):
                return "generate"
            elif target < 0:
                return "none"
            if target == turn.swipe_id:
                return "none"
            with self.change() as chat:
                chat.select_swipe(index, target)
        return "moved"

    def last_reply_index(self) -> int | None:
        """Index of the last turn if it is a character turn (swipes, regenerate and continue act on it)."""
        return self._last_reply_index(include_greeting=True)

    def last_user_index(self) -> int | None:
        """Index of the user's most recent message, if any."""
        for i in range(len(self.chat.turns) - 1, -1, -1):
            if self.chat.turns[i].is_user:
                return i
        return None

    # --- generation --------------------------------------------------------------------------------
    def reply(
        self,
        on_piece: Callable[[str], None],
        cancel: threading.Event | None = None,
        mode: ReplyMode = "reply",
        on_progress: PromptProgressCallback | None = None,
        speaker: Member | str | None = None,
    ) -> Result:
        """Generate with the engine, streaming pieces to ``on_piece``, and save the outcome.

        "reply" adds a character turn, "regenerate" adds a swipe to the last one, "continue" appends
        to it, "impersonate" drafts the user's next line (returned in ``Result.text``, not saved).
        A cancelled or failed reply keeps its partial text, marked unfinished. ``on_progress`` hears
        how far the engine has read the prompt (see `Engine.stream`). In a group chat ``speaker`` writes a
        new reply (default: the first of `next_speakers`); regenerate and continue use the message's writer.
        """
        if self.cast is not None and mode in ("reply", "impersonate"):
            if speaker is None:
                queue = self.next_speakers() if mode == "reply" else self.cast.active_members()
                if not queue:
                    raise ChatError("nobody is set to speak: pick a member (manual turns)", self.cast.group_file)
                speaker = queue[0]
            self.speak_as(speaker)
        engine = self._require_engine()
        if mode in ("regenerate", "continue") and self._last_reply_index() is None:
            raise ChatError(f"nothing to {mode}: the last turn is not a character reply", self.path)
        built = self.build(mode)
        max_tokens = self.max_new
        if built.n_tokens is not None:
            # The builder always keeps the instruction and the last exchange; when those alone fill
            # the context, the reply gets what is left, or a clear error instead of a failed decode.
            room = engine.n_ctx - built.n_tokens - CONTEXT_MARGIN
            if room < MIN_REPLY_TOKENS:
                return Result(
                    finish_reason="error",
                    error=f"the prompt needs about {built.n_tokens:,} tokens but the context holds "
                    f"{engine.n_ctx:,}: raise n_ctx in Settings or shorten the last messages",
                )
            max_tokens = min(max_tokens, room)
        sampling = dataclasses.replace(self.sampling, max_tokens=max_tokens, banned_phrases=self.all_banned(),
                                       n_probs=0 if mode == "impersonate" else self._n_probs(engine))
        index, base, was_unfinished = self._open_reply(mode)
        from rpchat.engine.kvstate import chat_id, states_of

        states = states_of(engine)
        if states is not None:
            states.claim(chat_id(self.path))
        pieces: list[str] = []
        last_save = time.monotonic()
        result: Result
        generation = None
        try:
            generation = engine.stream(built.segments, sampling, built.stop, cancel, on_progress)
            for piece in generation:
                pieces.append(piece)
                on_piece(piece)
                if index is not None and time.monotonic() - last_save >= CHECKPOINT_S:
                    self._write_reply(index, base, pieces, unfinished=True)
                    last_save = time.monotonic()
            result = generation.result
        except RpchatError as e:
            result = Result(text="".join(pieces), finish_reason="error", error=e.problem)
        except Exception as e:  # noqa: BLE001 - a backend bug must not lose the chat
            result = Result(text="".join(pieces), finish_reason="error", error=f"{type(e).__name__}: {e}")
        finally:
            # A generation left half-iterated (on_piece raised, the stream failed) still holds the model.
            close = getattr(generation, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # closing must not hide the real outcome
                    close()
        if states is not None:
            for notice in states.take_notices():
                self._note(notice)
        if index is not None:
            cut = result.finish_reason in ("cancelled", "error")
            if cut and not "".join(pieces).strip():
                self._close_empty(mode, index, was_unfinished)
            else:
                self._write_reply(index, base, pieces, unfinished=cut or (mode == "continue" and was_unfinished
                                                                         and not pieces))
                self._keep_trace(index, base if mode == "continue" else "", result)
        self.last_result = result
        return result

    # --- token alternatives ----------------------------------------------------------------------------
    def _n_probs(self, engine: Engine) -> int:
        """Alternatives to keep per token: none when nothing shows them, or from a server whose API
        cannot send them."""
        if not self.keep_alternatives:
            return 0
        unsupported = getattr(engine, "unsupported", None)
        if callable(unsupported) and "n_probs" in unsupported(dataclasses.replace(self.sampling, n_probs=TOP_K)):
            return 0
        return TOP_K

    def _keep_trace(self, index: int, base: str, result: Result) -> None:
        with self.lock:
            if index != self._trace_turn:
                self._traces, self._untraced, self._trace_turn = {}, set(), index
            swipe = self.chat.turns[index].swipe_id
            before = self._traces.pop(swipe, None)
            if result.trace is None:
                self._untraced.add(swipe)
                return
            self._untraced.discard(swipe)
            if base:
                trace = (before or TokenTrace()).continued(base, result.trace)
            else:
                trace = result.trace
            self._traces[swipe] = trace

    def trace_of(self, index: int) -> TokenTrace | None:
        """The shown swipe of turn ``index`` token by token with its alternatives: only for the last
        reply, generated in this session and not edited since; else None."""
        with self.lock:
            if index != self._trace_turn or index != self._last_reply_index():
                return None
            turn = self.chat.turns[index]
            trace = self._traces.get(turn.swipe_id)
            if trace is None or trace.open_text.rstrip() != turn.text:
                return None
            return trace

    def alternatives_missing(self, index: int) -> str:
        """Why turn ``index`` has no token alternatives, in one line for a notice."""
        engine = self.engine
        if engine is not None and self._n_probs(engine) == 0:
            return f"rpchat gets none from this server's API ({engine.info.backend})"
        if index != self._last_reply_index():
            return "token alternatives are kept for the last reply only"
        if index == self._trace_turn and self.chat.turns[index].swipe_id in self._untraced:
            return "the engine sent no token probabilities with this reply"
        return "this message was not generated in this session (or was edited since)"

    def swipe_from_alternative(self, index: int, step: int, alt: Alternative) -> str:
        """Add a swipe to the last reply holding its text up to token ``step`` with ``alt`` there,
        marked unfinished and saved; `reply` with mode "continue" then writes on from it (the KV
        cache still holds everything before ``step``). Returns the new swipe's text."""
        with self.lock:
            trace = self.trace_of(index)
            if trace is None or not 0 <= step < len(trace.steps):
                raise ChatError(f"no token alternatives for turn #{index + 1}", self.path)
            if not alt.whole:
                raise ChatError("that alternative is part of a character split over tokens", self.path)
            chosen = trace.choose(step, alt)
            text = chosen.open_text
            with self.change() as chat:
                swipe = chat.add_swipe(index, text)
                chat.mark_unfinished(index)
            self._traces[swipe] = chosen
            return text

    # --- internals ---------------------------------------------------------------------------------
    def reload_chat(self) -> None:
        """Read the chat file again when rpchat itself rewrote it (a renamed group member's messages)."""
        with self.lock:
            if self.store.changed_on_disk():
                self.chat = self.store.reload()

    def speak_as(self, member: Member | str) -> Member:
        """A group chat: make ``member`` (or the member of that name) the one the next prompt is built for."""
        if self.cast is None:
            raise ChatError("not a group chat", self.path)
        who = self.cast.member(member) if isinstance(member, str) else member
        with self.lock:
            self.cast.speaker, self.card = who, who.card
        return who

    def _speak_as_author(self) -> None:
        # Regenerating or continuing a message is always done by the member who wrote it.
        assert self.cast is not None
        index = self.last_reply_index()
        if index is None:
            return
        who = self.cast.author(self.chat.turns[index])
        if who is None:
            raise ChatError(f"{self.chat.turns[index].name} is no longer in this group", self.cast.group_file)
        self.speak_as(who)

    def next_speakers(self) -> list[Member]:
        """A group chat: who answers now, in order, by its turn order (empty with manual turns)."""
        if self.cast is None:
            return []
        with self.lock:
            return self.cast.next_speakers(self.chat.turns)

    def _require_engine(self) -> Engine:
        if self.engine is None:
            raise EngineError("no model is loaded yet")
        return self.engine

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.chat.turns):
            raise ChatError(f"there is no turn #{index + 1}", self.path)

    def _is_greeting(self, index: int) -> bool:
        # The greeting is the first turn when it is the character's and nothing the user said precedes it.
        if self.cast is not None:  # each member greets in turn
            return self.cast.is_greeting(self.chat.turns, index)
        return index == 0 and not self.chat.turns[0].is_user

    def _last_reply_index(self, include_greeting: bool = False) -> int | None:
        # A hidden message or narration is not a reply to swipe, regenerate or continue.
        turns = self.chat.turns
        if not turns or turns[-1].is_user or turns[-1].hidden or turns[-1].narrator:
            return None
        index = len(turns) - 1
        if self._is_greeting(index) and not include_greeting:
            return None
        return index

    def _open_reply(self, mode: ReplyMode) -> tuple[int | None, str, bool]:
        """Make room for the reply on disk before the first token, marked unfinished."""
        if mode == "impersonate":
            return None, "", False
        with self.change() as chat:
            if mode == "reply":
                if self.cast is not None:
                    chat.turns.append(self.cast.new_turn())
                else:
                    chat.add(False, "")
                index = len(chat.turns) - 1
                base, was = "", False
            else:
                last = self._last_reply_index()
                assert last is not None  # reply() checked it
                index = last
                if mode == "regenerate":
                    chat.add_swipe(index, "")
                    base, was = "", False
                else:
                    base, was = chat.turns[index].text, chat.turns[index].unfinished
            chat.mark_unfinished(index)
        return index, base, was

    def _write_reply(self, index: int, base: str, pieces: list[str], *, unfinished: bool) -> None:
        text = "".join(pieces)
        with self.change() as chat:
            chat.write_reply(index, reply_text(base, text), unfinished=unfinished)

    def _close_empty(self, mode: ReplyMode, index: int, was_unfinished: bool) -> None:
        with self.change() as chat:
            if mode == "continue":
                chat.mark_unfinished(index, was_unfinished)
            else:
                chat.remove_swipe(index)


# --- opening sessions ----------------------------------------------------------------------------------


def start_chat(card: Card, persona: Persona, length: str | None = None) -> Chat:
    """A new chat: the greeting (alternate greetings as its swipes) with the name macros filled in."""
    from rpchat.prompt.macros import expand_macros, normalize_newlines

    char = card.display_name
    greetings = [expand_macros(normalize_newlines(g), char, persona.name).strip() for g in card.greetings]
    chat = Chat.start(char, persona.name, greetings)
    chat.persona = persona.name
    chat.length = length
    return chat


def pick_persona(book: PersonaBook, *names: str | None) -> Persona:
    """The persona for the first name given (the book's, or a bare name when the book lacks it), else
    the default persona."""
    for name in names:
        clean = " ".join(name.split()) if name else ""
        if clean:
            return book.find(clean) or Persona(clean, "")
    return book.default_persona()


def open_chat_session(
    card_path: Path | None,
    chat_path: Path | None = None,
    *,
    config: Config | None = None,
    personas: PersonaBook | None = None,
    engine: Engine | None = None,
    user: str | None = None,
    format_name: str | None = None,
    preset: str | None = None,
    create_missing: bool = False,
    readonly: bool = False,
    model: Path | None = None,
    remote: bool = False,
    group: str | Path | None = None,
) -> RoleplaySession:
    """Open a chat with a card, the one way the TUI, ``rpchat reply`` and ``rpchat prompt`` do.

    ``chat_path`` resumes that file (``create_missing``: a missing one is a new chat saved there);
    None starts a new chat, with the greeting, saved in the library. ``user``, ``format_name`` and
    ``preset`` override the chat's persona and the config's format and preset. ``readonly`` touches no
    file: the chat is read as is and a new one is not saved (``rpchat prompt``). ``model`` (a GGUF) and
    ``remote`` say which model the format and preset are picked for, when not the configured one.
    ``group`` (a group's name, id or file) opens that group's chat instead (``card_path`` is then unused;
    ``chat_path`` picks one of its chats, a file or chat id, by default its current one): the session's
    ``cast`` holds the members (see `rpchat.group.cast`).
    """
    from rpchat.cards import load_card
    from rpchat.chat.library import chats_folder, new_chat_path
    from rpchat.chat.store import load_chat
    from rpchat.config import load_config
    from rpchat.engine.recognize import session_choices
    from rpchat.paths import profile

    cfg = config if config is not None else load_config(profile())
    book = personas if personas is not None else PersonaBook.load()
    if group is not None:
        return _open_group(group, chat_path, cfg, book, engine=engine, user=user, format_name=format_name,
                           preset=preset, readonly=readonly, model=model, remote=remote)
    if card_path is None:
        raise ChatError("no card or group to open", "chat")
    card = load_card(Path(card_path))
    path = Path(chat_path) if chat_path is not None else None
    chat: Chat | None = None
    if path is not None and (path.exists() or not create_missing):
        store = ChatStore(path)
        chat = load_chat(path) if readonly else store.open()
        # The user plays the persona picked for this chat; an imported chat starts as its user_name.
        persona = pick_persona(book, user, chat.persona, chat.user_name)
        if persona.name != chat.user_name:
            # One name for the user everywhere: the prompt, the stop strings, the turns, the file.
            chat.rename_user(persona.name)
        if user:
            chat.persona = persona.name
    # The model's format, preset, stops and starting length, unless the user or the chat chose.
    choices, fmt, chosen = session_choices(
        cfg, chat_length=(chat.length,) if chat is not None else None, model=model,
        format_name=format_name, preset_name=preset, remote=remote)
    if chat is None:
        persona = pick_persona(book, user)
        chat = start_chat(card, persona, choices.length.value)
        store = ChatStore(path if path is not None else new_chat_path(card.display_name, chats_folder(card_path)))
        if not readonly:
            store.save(chat)
    session = RoleplaySession(card, chat, store, persona, fmt, chosen.sampling, engine=engine,
                              card_path=Path(card_path))
    session._take_settings(cfg, choices, fmt, chosen, remote=remote)
    session.notices = list(choices.notices)
    return session


def _open_group(group: str | Path, chat: Path | None, cfg: Config, book: PersonaBook, *, engine: Engine | None,
                user: str | None, format_name: str | None, preset: str | None, readonly: bool, model: Path | None,
                remote: bool) -> RoleplaySession:
    """`open_chat_session` for a group: its chat (started with every member's greeting when new)."""
    from rpchat.engine.recognize import session_choices
    from rpchat.group.library import chat_path, find_group, load_members, open_group_chat
    from rpchat.group.model import load_group, save_group

    file = find_group(group)
    grp = load_group(file)
    notices: list[str] = []
    members = load_members(grp, notices)
    if not members:
        raise ChatError(f"group {grp.name} has no member whose card loads", file)
    chat_id = None if chat is None else Path(chat).stem if str(chat).endswith(".jsonl") else str(chat)
    if chat_id is not None and chat_id not in grp.chats and not readonly:
        grp.chats.append(chat_id)
        grp.chat_id = chat_id
        save_group(grp, file)
    fresh = not chat_path(chat_id or grp.chat_id).exists()
    persona = pick_persona(book, user)
    the_chat, store = open_group_chat(grp, members, persona.name, chat_id, readonly=readonly)
    if not fresh:
        persona = pick_persona(book, user, the_chat.persona, the_chat.user_name)
        if persona.name != the_chat.user_name:
            the_chat.rename_user(persona.name)
    if user or fresh:
        the_chat.persona = persona.name
    choices, fmt, chosen = session_choices(cfg, chat_length=None if fresh else (the_chat.length,), model=model,
                                           format_name=format_name, preset_name=preset, remote=remote)
    if fresh:
        the_chat.length = choices.length.value
        if not readonly:
            store.save(the_chat)
    session = RoleplaySession(members[0].card, the_chat, store, persona, fmt, chosen.sampling, engine=engine)
    session.cast = GroupCast(grp, file, members)
    session._take_settings(cfg, choices, fmt, chosen, remote=remote)
    session.notices = [*choices.notices, *notices]
    return session


def settings_banned(cfg: Config, *, remote: bool = False) -> tuple[str, ...]:
    """The phrases banned in Settings; the shipped list until the user sets their own.

    The shipped list is the local engine's default only: most servers cannot ban phrases, and a list the
    user never asked for should not make every remote reply say "not applied".
    """
    from rpchat.engine.banned import clean_phrases, default_phrases

    if cfg.banned_phrases is None:
        return () if remote else default_phrases()
    return clean_phrases(cfg.banned_phrases)


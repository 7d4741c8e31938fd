"""A chat: the greeting, then turns; each character turn carries swipes."""

from __future__ import annotations

import copy
import math
import pickle
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

# Who a message inserted into the chat speaks as (SillyTavern's extension_prompt_roles 0, 1, 2).
ROLES = ("system", "user", "assistant")
# Where the author's note goes (SillyTavern's extension_prompt_types 0, 1, 2 in ``note_position``).
NOTE_POSITIONS = ("after_instruction", "in_chat", "before_instruction")


@dataclass(frozen=True)
class AuthorsNote:
    """A chat's author's note, kept in SillyTavern's ``note_*`` chat metadata keys.

    ``interval`` 1 puts it in every prompt, 0 never, N in the prompts whose chat holds a multiple of
    N user messages (SillyTavern's rule). ``depth`` and ``role`` apply to the "in_chat" position.
    """

    text: str = ""
    depth: int = 4
    interval: int = 1
    position: str = "in_chat"  # one of NOTE_POSITIONS
    role: str = "system"  # one of ROLES

    def fires(self, user_messages: int) -> bool:
        """Whether the note goes into a prompt whose chat holds ``user_messages`` user messages."""
        if self.interval == 1:
            return True
        if user_messages <= 0 or self.interval <= 0:
            return False
        return user_messages % self.interval == 0


def _small_int(value: Any, default: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return default
    return int(value) if 0 <= value <= high else default


def now_stamp() -> str:
    """A send date in the ISO form SillyTavern writes."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Turn:
    """One message. A character turn may hold several swipes; ``text`` is the selected one."""

    is_user: bool
    name: str
    swipes: list[str]
    swipe_id: int = 0
    send_date: str = field(default_factory=now_stamp)
    # SillyTavern's per-message ``extra``; rpchat keeps its own keys under ``extra["rpchat"]``.
    extra: dict[str, Any] = field(default_factory=dict)
    # SillyTavern's per-swipe info, kept verbatim (one dict per swipe when present).
    swipe_info: list[Any] = field(default_factory=list)
    # Keys of the message line rpchat does not know, written back as they came.
    unknown: dict[str, Any] = field(default_factory=dict)
    # Whether the loaded line had a ``swipes`` key (None for turns rpchat made), so a re-save
    # writes the line back the way it came.
    had_swipes: bool | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        return self.swipes[self.swipe_id]

    @property
    def hidden(self) -> bool:
        """Hidden from the AI (SillyTavern's /hide, stored as ``is_system``): shown, never prompted."""
        return self.unknown.get("is_system") is True

    @hidden.setter
    def hidden(self, value: bool) -> None:
        # Kept where SillyTavern keeps it, so a chat hidden here is hidden there too.
        self.unknown["is_system"] = bool(value)

    @property
    def narrator(self) -> bool:
        """A narrator message (SillyTavern's /sys): scene narration, not the character's words."""
        return self.extra.get("type") == "narrator"

    @property
    def unfinished(self) -> bool:
        """True when the selected swipe was cut off (a quit or crash during generation)."""
        return self.swipe_id in self._unfinished_marks()

    def _unfinished_marks(self) -> list[int]:
        # rpchat's own key in SillyTavern's ``extra``: the ids of the swipes cut off mid-generation.
        own = self.extra.get("rpchat")
        marks = own.get("unfinished") if isinstance(own, dict) else None
        return marks if isinstance(marks, list) else []

    def _set_unfinished_marks(self, marks: list[int]) -> None:
        own = self.extra.get("rpchat")
        if not isinstance(own, dict):
            own = self.extra["rpchat"] = {}
        own["unfinished"] = marks


@dataclass(frozen=True)
class ChatSnapshot:
    """A chat's whole state at one moment, for `Chat.restore`: its turn objects and a pickled copy of
    every field, so a restore gives back the very same `Turn` objects (the screen holds them)."""

    turns: tuple[Turn, ...]
    state: bytes


@dataclass
class Chat:
    """A conversation with one character. ``metadata`` is SillyTavern's ``chat_metadata``."""

    user_name: str
    character_name: str
    turns: list[Turn] = field(default_factory=list)
    create_date: str = field(default_factory=now_stamp)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Header keys rpchat does not know, written back as they came.
    unknown: dict[str, Any] = field(default_factory=dict)
    # What loading had to repair (a torn last line); shown to the user, never saved.
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.metadata.setdefault("integrity", str(uuid.uuid4()))

    # --- rpchat's per-chat settings, stored in chat_metadata["rpchat"] -------------------------
    @property
    def settings(self) -> dict[str, Any]:
        value = self.metadata.get("rpchat")
        if not isinstance(value, dict):
            value = {}
            self.metadata["rpchat"] = value
        return value

    @property
    def persona(self) -> str | None:
        value = self.settings.get("persona")
        return value if isinstance(value, str) else None

    @persona.setter
    def persona(self, name: str | None) -> None:
        self.settings["persona"] = name

    @property
    def scenario(self) -> str | None:
        """This chat's scenario, which overrides the card's; None when not set."""
        value = self.settings.get("scenario")
        return value if isinstance(value, str) else None

    @scenario.setter
    def scenario(self, text: str | None) -> None:
        self.settings["scenario"] = text

    @property
    def length(self) -> str | None:
        """The length modifier picked for the next reply; None for no modifier."""
        value = self.settings.get("length")
        return value if isinstance(value, str) else None

    @length.setter
    def length(self, value: str | None) -> None:
        self.settings["length"] = value

    # --- the author's note, in SillyTavern's own chat_metadata keys --------------------------------
    @property
    def note(self) -> AuthorsNote:
        """This chat's author's note (empty text when none); odd stored values read as the defaults."""
        meta = self.metadata
        text = meta.get("note_prompt")
        return AuthorsNote(
            text=text if isinstance(text, str) else "",
            depth=_small_int(meta.get("note_depth"), 4, 1000),
            interval=_small_int(meta.get("note_interval"), 1, 1_000_000),
            position=NOTE_POSITIONS[_small_int(meta.get("note_position"), 1, len(NOTE_POSITIONS) - 1)],
            role=ROLES[_small_int(meta.get("note_role"), 0, len(ROLES) - 1)],
        )

    @note.setter
    def note(self, note: AuthorsNote) -> None:
        self.metadata.update({
            "note_prompt": note.text,
            "note_depth": note.depth,
            "note_interval": note.interval,
            "note_position": NOTE_POSITIONS.index(note.position),
            "note_role": ROLES.index(note.role),
        })

    @property
    def banned_phrases(self) -> list[str]:
        """Phrases this chat bans on top of the settings' and the preset's."""
        value = self.settings.get("banned_phrases")
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    @banned_phrases.setter
    def banned_phrases(self, phrases: list[str]) -> None:
        self.settings["banned_phrases"] = list(phrases)

    @property
    def worlds(self) -> list[str]:
        """The world files attached to this chat (names in the worlds folder), in attach order."""
        value = self.settings.get("worlds")
        return [w for w in value if isinstance(w, str)] if isinstance(value, list) else []

    @worlds.setter
    def worlds(self, names: list[str]) -> None:
        self.settings["worlds"] = list(names)

    @property
    def use_card_lorebook(self) -> bool:
        """Whether the card's own lorebook takes part (on unless this chat turned it off)."""
        return self.settings.get("use_card_lorebook", True) is not False

    @use_card_lorebook.setter
    def use_card_lorebook(self, on: bool) -> None:
        self.settings["use_card_lorebook"] = bool(on)

    def without_own_keys(self) -> Chat:
        """This chat as plain SillyTavern writes it: rpchat's own keys (``chat_metadata.rpchat``, each
        message's ``extra.rpchat``) left out; everything else shared, not copied."""
        pure = Chat(
            user_name=self.user_name,
            character_name=self.character_name,
            create_date=self.create_date,
            metadata={k: v for k, v in self.metadata.items() if k != "rpchat"},
            unknown=self.unknown,
        )
        for turn in self.turns:
            pure.turns.append(
                Turn(
                    is_user=turn.is_user,
                    name=turn.name,
                    swipes=turn.swipes,
                    swipe_id=turn.swipe_id,
                    send_date=turn.send_date,
                    extra={k: v for k, v in turn.extra.items() if k != "rpchat"},
                    swipe_info=turn.swipe_info,
                    unknown=turn.unknown,
                    had_swipes=turn.had_swipes,
                )
            )
        return pure

    # --- a whole-chat copy, to undo a change that could not be saved -------------------------------
    def snapshot(self) -> ChatSnapshot:
        """Everything this chat holds now, to put back with `restore` (pickled: far cheaper than deepcopy)."""
        fields = {k: v for k, v in vars(self).items() if k != "turns"}
        state = (fields, [vars(t) for t in self.turns])
        return ChatSnapshot(tuple(self.turns), pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def restore(self, snapshot: ChatSnapshot) -> None:
        """Put the chat back exactly as it was at ``snapshot``: the same turn objects, in the same list."""
        fields, turn_states = pickle.loads(snapshot.state)  # our own bytes, never a file's
        for turn, state in zip(snapshot.turns, turn_states, strict=True):
            # One update, no clear(): a reader on another thread never sees a turn without its fields.
            vars(turn).update(state)
        self.turns[:] = snapshot.turns
        for key, value in fields.items():
            setattr(self, key, value)

    # --- operations ----------------------------------------------------------------------------
    @classmethod
    def start(cls, character_name: str, user_name: str, greetings: list[str]) -> Chat:
        """A new chat whose first turn is the greeting, with alternate greetings as its swipes."""
        chat = cls(user_name=user_name, character_name=character_name)
        if any(g.strip() for g in greetings):
            chat.turns.append(Turn(is_user=False, name=character_name, swipes=list(greetings)))
        return chat

    def add(self, is_user: bool, text: str) -> Turn:
        """Append a turn."""
        turn = Turn(is_user=is_user, name=self.user_name if is_user else self.character_name, swipes=[text])
        self.turns.append(turn)
        return turn

    def edit(self, index: int, text: str) -> None:
        """Replace the selected swipe's text of any turn."""
        turn = self.turns[index]
        turn.swipes[turn.swipe_id] = text
        self._clear_unfinished(turn)

    def rename_user(self, name: str) -> None:
        """Make ``name`` the user's name: the header's, and every user turn's, so what is shown and
        saved is what the prompt says (the LimaRP prompt gives the user one name)."""
        self.user_name = name
        for turn in self.turns:
            if turn.is_user:
                turn.name = name

    def rename_character(self, name: str) -> None:
        """Make ``name`` the character's name: the header's, and that of every character turn that spoke
        under the old one (narration and other speakers keep theirs)."""
        old = self.character_name
        if name == old:
            return
        self.character_name = name
        for turn in self.turns:
            if not turn.is_user and not turn.narrator and turn.name == old:
                turn.name = name

    def delete(self, index: int) -> Turn:
        """Remove a turn."""
        return self.turns.pop(index)

    def select_swipe(self, index: int, swipe_id: int) -> None:
        """Show another swipe of a character turn (clamped to the swipes there are)."""
        turn = self.turns[index]
        turn.swipe_id = max(0, min(swipe_id, len(turn.swipes) - 1))

    def add_swipe(self, index: int, text: str) -> int:
        """Add a swipe to a character turn, select it and return its id."""
        turn = self.turns[index]
        turn.swipes.append(text)
        turn.swipe_id = len(turn.swipes) - 1
        return turn.swipe_id

    def mark_unfinished(self, index: int, unfinished: bool = True) -> None:
        """Flag (or clear) the selected swipe of a turn as cut off mid-generation."""
        turn = self.turns[index]
        if unfinished:
            marks = turn._unfinished_marks()
            if turn.swipe_id not in marks:
                turn._set_unfinished_marks([*marks, turn.swipe_id])
        else:
            self._clear_unfinished(turn)

    @staticmethod
    def _clear_unfinished(turn: Turn) -> None:
        marks = turn._unfinished_marks()
        if turn.swipe_id in marks:
            marks.remove(turn.swipe_id)

    def write_reply(self, index: int, text: str, *, unfinished: bool) -> None:
        """Set the selected swipe of a turn being generated to ``text``, flagged unfinished or not."""
        turn = self.turns[index]
        turn.swipes[turn.swipe_id] = text
        self.mark_unfinished(index, unfinished)

    def remove_swipe(self, index: int) -> None:
        """Drop a turn's selected swipe (the whole turn when it is its only one); the one before is shown."""
        turn = self.turns[index]
        if len(turn.swipes) <= 1:
            self.delete(index)
            return
        self.mark_unfinished(index, False)
        removed = turn.swipe_id
        turn.swipes.pop(removed)
        marks = turn._unfinished_marks()
        if marks:
            # Swipe ids after the removed one shift down by one.
            turn._set_unfinished_marks([m - 1 if m > removed else m for m in marks if m != removed])
        if len(turn.swipe_info) > removed:
            turn.swipe_info.pop(removed)
        turn.swipe_id = max(0, removed - 1)

    def branch(self, upto: int, parent_file: str | None = None) -> Chat:
        """A new chat holding a copy of turns ``0..upto`` (inclusive), linked to this one (saved under the
        file name ``parent_file``, when given: SillyTavern finds the parent through ``main_chat``)."""
        meta = copy.deepcopy(self.metadata)
        meta["integrity"] = str(uuid.uuid4())
        branch = Chat(
            user_name=self.user_name,
            character_name=self.character_name,
            turns=copy.deepcopy(self.turns[: upto + 1]),
            metadata=meta,
        )
        link: dict[str, Any] = {"integrity": self.metadata.get("integrity"), "turn": upto}
        branch.settings["parent"] = link
        if parent_file is not None:
            link["file"] = parent_file
            meta["main_chat"] = PurePath(parent_file).stem
        return branch

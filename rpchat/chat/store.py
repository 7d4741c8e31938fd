"""Chat files in SillyTavern's JSONL format: a header line, then one message per line.

Reading is strict (a bad file raises ChatError naming it) except for a torn last line, which a
tool appending in place can leave behind: the lines before it load and ``Chat.warnings`` says so.
Writing is always a whole-file atomic rewrite. ``ChatStore`` also remembers what it loaded, so a
file changed meanwhile by another program is never silently overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rpchat.atomic import clean_stale_temps, write_atomic
from rpchat.chat.model import Chat, Turn
from rpchat.errors import ChatError
from rpchat.userfile import read_capped

# A months-long chat with many swipes stays far below these; they only stop hostile files.
MAX_CHAT_BYTES = 128 * 1024 * 1024
MAX_LINE_BYTES = 32 * 1024 * 1024

_HEADER_KEYS = ("user_name", "character_name", "create_date", "chat_metadata")
_MESSAGE_KEYS = ("name", "is_user", "send_date", "mes", "extra", "swipes", "swipe_id", "swipe_info")


class ChatConflictError(ChatError):
    """The file changed on disk since it was opened; ``conflict_path`` holds the unsaved version."""

    def __init__(self, problem: str, source: str | Path | None, conflict_path: Path) -> None:
        super().__init__(problem, source)
        self.conflict_path = conflict_path


# --- reading -------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON; SillyTavern's JSON.parse would reject the file we wrote back.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")  # 1e400 could never be saved back
    return value


def _parse_line(raw: bytes) -> Any:
    text = raw.decode("utf-8")
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _date(value: Any, what: str) -> str:
    """A send/create date as text; SillyTavern imports may hold epoch milliseconds."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            when = datetime.fromtimestamp(value / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{what} is out of range") from None
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    raise ValueError(f"{what} must be text, not {type(value).__name__}")


def _header(obj: Any) -> Chat:
    if not isinstance(obj, dict) or "mes" in obj or not any(k in obj for k in _HEADER_KEYS):
        raise ValueError("missing header line (user_name, character_name, chat_metadata)")
    names = {}
    for key in ("user_name", "character_name"):
        value = obj.get(key, "")
        if not isinstance(value, str):
            raise TypeError(f"header {key} must be text, not {type(value).__name__}")
        names[key] = value
    meta = obj.get("chat_metadata", {})
    if not isinstance(meta, dict):
        raise TypeError(f"header chat_metadata must be an object, not {type(meta).__name__}")
    create = _date(obj["create_date"], "header create_date") if "create_date" in obj else ""
    unknown = {k: v for k, v in obj.items() if k not in _HEADER_KEYS}
    return Chat(
        user_name=names["user_name"],
        character_name=names["character_name"],
        create_date=create,
        metadata=meta,
        unknown=unknown,
    )


def _turn(obj: Any, chat: Chat) -> Turn:
    if not isinstance(obj, dict):
        raise TypeError(f"a message must be an object, not {type(obj).__name__}")
    is_user = obj.get("is_user")
    if not isinstance(is_user, bool):
        raise TypeError("is_user must be true or false")
    name = obj.get("name", chat.user_name if is_user else chat.character_name)
    if not isinstance(name, str):
        raise TypeError(f"name must be text, not {type(name).__name__}")
    mes = obj.get("mes", "")
    if mes is None:
        mes = ""
    if not isinstance(mes, str):
        raise TypeError(f"mes must be text, not {type(mes).__name__}")
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be an object, not {type(extra).__name__}")
    swipe_info = obj.get("swipe_info", [])
    if not isinstance(swipe_info, list):
        raise TypeError(f"swipe_info must be a list, not {type(swipe_info).__name__}")
    send_date = _date(obj["send_date"], "send_date") if "send_date" in obj else ""
    unknown = {k: v for k, v in obj.items() if k not in _MESSAGE_KEYS}

    swipes_raw = obj.get("swipes")
    if swipes_raw is None:
        swipes, swipe_id = [mes], 0
        if "swipe_id" in obj:
            # A swipe_id without swipes means nothing to rpchat; keep it as it came.
            unknown["swipe_id"] = obj["swipe_id"]
    else:
        if not isinstance(swipes_raw, list) or not all(isinstance(s, str) for s in swipes_raw):
            raise ValueError("swipes must be a list of text")
        swipe_id = obj.get("swipe_id", 0)
        if not isinstance(swipe_id, int) or isinstance(swipe_id, bool):
            raise ValueError(f"swipe_id must be a whole number, not {type(swipe_id).__name__}")
        swipes = list(swipes_raw) or [mes]
        if not 0 <= swipe_id < len(swipes):
            # SillyTavern shows ``mes``; point at it rather than lose it.
            if mes in swipes:
                swipe_id = swipes.index(mes)
            else:
                swipes.append(mes)
                swipe_id = len(swipes) - 1
        # ``mes`` is what SillyTavern shows and edits, so it wins over a stale swipe.
        swipes[swipe_id] = mes
    return Turn(
        is_user=is_user,
        name=name,
        swipes=swipes,
        swipe_id=swipe_id,
        send_date=send_date,
        extra=extra,
        swipe_info=swipe_info,
        unknown=unknown,
        had_swipes=swipes_raw is not None,
    )


@dataclass(frozen=True)
class DroppedLine:
    """A line of a chat file that could not be read: its number (from 1) and why."""

    number: int
    reason: str


def parse_chat(data: bytes, source: str | Path) -> Chat:
    """Parse the bytes of a chat file; ChatError names ``source`` and the first problem.

    Only a torn last line (a crash mid-append) is forgiven: it is left out and ``chat.warnings`` says so.
    """
    found = _parse(data, source, salvage=False)
    found.chat.warnings = [f"line {d.number} was torn (cut off mid-write) and was left out" for d in found.dropped]
    return found.chat


@dataclass
class Salvaged:
    """A chat read from a damaged file: what could be kept, and what could not."""

    chat: Chat
    dropped: list[DroppedLine]
    header_rebuilt: bool = False  # the header line was missing or unreadable

    @property
    def damaged(self) -> bool:
        return bool(self.dropped) or self.header_rebuilt

    def describe(self, limit: int = 8) -> str:
        """``line 3 (not valid JSON) could not be read and was left out``, on one line."""
        parts = []
        if self.dropped:
            shown = [f"line {d.number} ({d.reason.removeprefix('is ')})" for d in self.dropped[:limit]]
            if len(self.dropped) > limit:
                shown.append(f"and {len(self.dropped) - limit} more")
            was = "was" if len(self.dropped) == 1 else "were"
            parts.append(f"{', '.join(shown)} could not be read and {was} left out")
        if self.header_rebuilt:
            parts.append("the header line was lost and was rebuilt from the messages")
        return "; ".join(parts)


def salvage_chat(data: bytes, source: str | Path) -> Salvaged:
    """Parse a chat file keeping every line that reads, and list the lines left out.

    ChatError only when nothing can be kept: the file is empty, too large, or has no readable line.
    A missing or unreadable header is rebuilt from the messages (names only; its settings are lost).
    """
    return _parse(data, source, salvage=True)


def _parse(data: bytes, source: str | Path, *, salvage: bool) -> Salvaged:
    if len(data) > MAX_CHAT_BYTES:
        raise ChatError(f"file is larger than {MAX_CHAT_BYTES // (1024 * 1024)} MiB", source)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # Split on \n only: U+2028 and friends may sit inside JSON strings.
    lines = [(n, line.rstrip(b"\r")) for n, line in enumerate(data.split(b"\n"), 1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise ChatError("empty file, no header line", source)
    dropped: list[DroppedLine] = []

    def bad(n: int, reason: str, torn: bool = False) -> None:
        # Strict reading forgives only a torn last line: a crash mid-append tears nothing else.
        if not salvage and not torn:
            raise ChatError(f"line {n} {reason}", source)
        dropped.append(DroppedLine(n, "cut off mid-write" if torn and not salvage else reason))

    objs: list[tuple[int, Any]] = []
    for i, (n, raw) in enumerate(lines):
        torn = i == len(lines) - 1 and i > 0
        if len(raw) > MAX_LINE_BYTES:
            bad(n, f"is longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB")
            continue
        try:
            objs.append((n, _parse_line(raw)))
        except UnicodeDecodeError as exc:
            # A line torn inside a multi-byte character fails to decode only at its very end.
            bad(n, "is not UTF-8 text", torn and exc.reason == "unexpected end of data")
        except (ValueError, RecursionError) as exc:
            bad(n, "is nested too deeply" if isinstance(exc, RecursionError) else "is not valid JSON", torn)
    if not objs:
        raise ChatError(f"no line could be read (line {dropped[0].number} {dropped[0].reason})", source)
    first, rest = objs[0], objs[1:]
    rebuilt = False
    try:
        chat = _header(first[1])
        _fill_names(chat, first[1], [obj for _, obj in rest])
    except (ValueError, TypeError) as exc:
        if not salvage:
            raise ChatError(f"line {first[0]}: {exc}", source) from None
        if isinstance(first[1], dict) and "mes" in first[1]:
            rest = objs  # no header at all: the first line is a message
        else:
            dropped.append(DroppedLine(first[0], "is not a readable header"))
        chat, rebuilt = _rebuilt_header([obj for _, obj in rest], source), True
    for n, obj in rest:
        try:
            chat.turns.append(_turn(obj, chat))
        except (ValueError, TypeError) as exc:
            bad(n, f"is not a message: {exc}")
    dropped.sort(key=lambda d: d.number)
    return Salvaged(chat, dropped, rebuilt)


def _message_name(objs: list[Any], is_user: bool) -> str:
    """The name the first user (or character) message carries, or ""; narration and other system
    messages (``extra.type``: "narrator", "comment"...) carry their own names, not the character's."""
    for obj in objs:
        if isinstance(obj, dict) and obj.get("is_user") is is_user and isinstance(obj.get("name"), str):
            extra = obj.get("extra")
            if isinstance(extra, dict) and isinstance(extra.get("type"), str) and extra["type"]:
                continue
            return str(obj["name"])
    return ""


# What some SillyTavern versions and tools write in the header instead of the names (their messages carry them).
_PLACEHOLDER_NAME = "unused"


def _fill_names(chat: Chat, header: dict[str, Any], objs: list[Any]) -> None:
    """A header without real names (missing, or the "unused" placeholder) takes them from the messages."""
    if header.get("user_name", _PLACEHOLDER_NAME) == _PLACEHOLDER_NAME:
        chat.user_name = _message_name(objs, True) or chat.user_name
    if header.get("character_name", _PLACEHOLDER_NAME) == _PLACEHOLDER_NAME:
        chat.character_name = _message_name(objs, False) or chat.character_name


def _rebuilt_header(objs: list[Any], source: str | Path) -> Chat:
    """A header for a chat whose own is lost: the names its messages carry."""
    return Chat(user_name=_message_name(objs, True) or "User",
                character_name=_message_name(objs, False) or Path(source).parent.name)


def load_chat(path: Path) -> Chat:
    """Read a SillyTavern-format chat file; ChatError on anything but a loadable chat."""
    path = Path(path)
    return parse_chat(_read(path), path)


def _read(path: Path) -> bytes:
    return read_capped(path, MAX_CHAT_BYTES, ChatError, "chat file")


# --- writing -------------------------------------------------------------------------------------


def _line(obj: dict[str, Any]) -> str:
    # Compact like JSON.stringify; raw UTF-8 where possible, escapes for lone surrogates.
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def _turn_obj(turn: Turn) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "name": turn.name,
        "is_user": turn.is_user,
        "send_date": turn.send_date,
        "mes": turn.text,
        "extra": turn.extra,
    }
    # SillyTavern gives character messages swipes and user messages none; a loaded line keeps
    # the shape it came in unless it has gained swipes since.
    with_swipes = turn.had_swipes if turn.had_swipes is not None else not turn.is_user
    if with_swipes or len(turn.swipes) > 1 or turn.swipe_id != 0:
        obj["swipes"] = turn.swipes
        obj["swipe_id"] = turn.swipe_id
        obj["swipe_info"] = turn.swipe_info
    elif turn.swipe_info:
        obj["swipe_info"] = turn.swipe_info
    for key, value in turn.unknown.items():
        obj.setdefault(key, value)
    return obj


def dump_chat(chat: Chat) -> bytes:
    """The chat as SillyTavern JSONL bytes (lines joined by \\n, as SillyTavern writes them)."""
    header: dict[str, Any] = {
        "user_name": chat.user_name,
        "character_name": chat.character_name,
        "create_date": chat.create_date,
        "chat_metadata": chat.metadata,
    }
    for key, value in chat.unknown.items():
        header.setdefault(key, value)
    try:
        lines = [_line(header)] + [_line(_turn_obj(t)) for t in chat.turns]
    except (TypeError, ValueError, RecursionError, IndexError) as exc:
        raise ChatError(f"cannot be written: {exc}", chat.character_name or "chat") from None
    return "\n".join(lines).encode("utf-8")


def save_chat(chat: Chat, path: Path) -> None:
    """Write the chat atomically (temp file, fsync, rename): a crash leaves old or new, never torn."""
    path = Path(path)
    data = dump_chat(chat)
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(path.parent):
        _write(data, path)


def _write(data: bytes, path: Path) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise ChatError(f"cannot write: {exc.strerror or exc}", path) from None


def aside_path(path: Path, tag: str) -> Path:
    """A free name next to ``path`` like ``name.TAG-20240501T123000.jsonl``."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    candidate = path.with_name(f"{path.stem}.{tag}-{stamp}.jsonl")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{tag}-{stamp}-{n}.jsonl")
        n += 1
    return candidate


def save_conflict_copy(chat: Chat, path: Path) -> Path:
    """Save ``chat`` beside ``path`` as ``name.conflict-<time>.jsonl`` and return that path."""
    target = aside_path(Path(path), "conflict")
    save_chat(chat, target)
    return target


def keep_aside(path: Path, tag: str = "corrupt", move: bool = True) -> Path:
    """Move (or copy) a bad chat file to ``name.corrupt-<time>.jsonl`` so nothing overwrites it."""
    target = aside_path(Path(path), tag)
    try:
        if move:
            os.replace(path, target)
        else:
            shutil.copy2(path, target)
    except OSError as exc:
        raise ChatError(f"cannot keep the file aside: {exc.strerror or exc}", path) from None
    return target


# --- the store: one chat file and what was last seen of it ---------------------------------------


@dataclass(frozen=True)
class _Fingerprint:
    size: int
    sha256: str


def _fingerprint(path: Path, data: bytes | None = None) -> _Fingerprint | None:
    try:
        if data is None:
            with path.open("rb") as f:
                data = f.read(MAX_CHAT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ChatError(f"cannot read: {exc.strerror or exc}", path) from None
    return _Fingerprint(len(data), hashlib.sha256(data).hexdigest())


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An advisory lock on the chat's folder, so rpchat processes check-and-write in turn."""
    try:
        import fcntl
    except ImportError:  # Windows: the content check alone still catches most conflicts.
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks: carry on with the content check alone
        yield
    finally:
        os.close(fd)  # closing drops the flock


class ChatStore:
    """One chat file. Saves refuse to overwrite changes another program made since ``open``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: _Fingerprint | None = None
        self._conflict_path: Path | None = None

    def open(self) -> Chat:
        """Load the file, keeping every line that reads.

        Lines that do not read are left out: the original is kept beside the chat as
        ``NAME.corrupt-TIME.jsonl``, the chat file is rewritten with what was kept, and ``chat.warnings``
        holds one notice naming the file and the lines. A file with nothing readable is moved aside
        whole (never overwritten) and ChatError raised.
        """
        if self.path.parent.is_dir():
            # Under the lock: a temp file is only stale when no rpchat writer holds the folder.
            with folder_lock(self.path.parent):
                clean_stale_temps(self.path.parent)
        data = _read(self.path)  # a missing or unreadable file is reported, not moved
        try:
            found = salvage_chat(data, self.path)
        except ChatError as exc:
            kept = keep_aside(self.path, "corrupt", move=True)
            raise ChatError(f"{exc.problem}; the file was kept aside as {kept.name}", self.path) from None
        if found.damaged:
            data = self._repair(found, data)
        self._seen = _fingerprint(self.path, data)
        return found.chat

    def _repair(self, found: Salvaged, original: bytes) -> bytes:
        # The original goes aside first (durably), so a crash before the rewrite loses nothing.
        repaired = dump_chat(found.chat)
        with folder_lock(self.path.parent):
            kept = aside_path(self.path, "corrupt")
            _write(original, kept)
            _write(repaired, self.path)
        found.chat.warnings = [f"{self.path.name}: {found.describe()}; the original is kept as {kept.name}"]
        return repaired

    def reload(self) -> Chat:
        """Load the file again, accepting whatever is on disk now as the new baseline."""
        return self.open()

    def changed_on_disk(self) -> bool:
        """True when the file's content differs from what this store last loaded or saved."""
        now = _fingerprint(self.path)
        if now is None:
            return False  # deleted or renamed: writing it again loses nothing
        if self._seen is None:
            return True  # a file appeared where this store expected none
        # Compare content, not stat: inodes get reused and mtimes are coarse.
        return now.sha256 != self._seen.sha256

    def save(self, chat: Chat, force: bool = False) -> None:
        """Write the chat atomically. If the file changed since it was opened, save this version
        as a conflict copy and raise ChatConflictError, unless ``force``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.path.parent):
            if not force and self.changed_on_disk():
                target = self._conflict_path
                if target is None or not target.exists():
                    target = aside_path(self.path, "conflict")
                _write(dump_chat(chat), target)  # the lock is held already; flock does not nest
                self._conflict_path = target
                raise ChatConflictError(
                    "changed by another program since it was opened; your version was saved as "
                    f"{target.name}; reload the chat to continue",
                    self.path,
                    target,
                )
            data = dump_chat(chat)
            _write(data, self.path)
            self._seen = _fingerprint(self.path, data)

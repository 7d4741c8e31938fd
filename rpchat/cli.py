"""The `rpchat` command: the TUI with no arguments, headless subcommands otherwise.

Every failure reaches the user as one line, ``rpchat: error: ...``, with exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from rpchat.errors import RpchatError
from rpchat.group import cli as group_cli
from rpchat.memory import update_summary

if TYPE_CHECKING:
    from rpchat.engine.base import PromptProgress
    from rpchat.session import RoleplaySession


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"rpchat: error: {message}\n")


def _length_modifier(value: str) -> str | None:
    """The length modifier that ``--length VALUE`` asks for; None is "auto" (no modifier)."""
    # Which lengths exist is the prompt format's to say (limamono stops at "huge"); the builder checks.
    # "auto" (no modifier) is the word the app shows; "none" is still understood.
    return None if value in ("none", "auto", "") else value


def _count(high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.strip().isdigit() or int(value) > high:
            raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {high}, not {value!r}")
        return int(value)

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rpchat", description="Terminal roleplay chat for LimaRP-family GGUF models.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    pr = sub.add_parser("prompt", help="print the exact prompt for the next character reply")
    pr.add_argument("card", type=Path, nargs="?", help="the character's card (not with --group)")
    pr.add_argument("--group", metavar="NAME", help="the prompt of this group's chat (see `rpchat group`)")
    pr.add_argument("--speaker", metavar="MEMBER", help="the group member who would answer")
    pr.add_argument("--user", help="persona name (default: the chat's, else the default persona)")
    pr.add_argument("--persona", help="persona description (default: the persona's own)")
    pr.add_argument("--scenario", help="scenario that overrides the card's (default: the chat's)")
    pr.add_argument("--chat", type=Path, help="a chat (.jsonl) to continue; it is only read")
    pr.add_argument("--length", default=None,
                    help="length modifier (e.g. short, medium), or auto: no modifier, the model decides "
                    "(default: the chat's)")
    pr.add_argument("--format", default=None, help="prompt format name (see `rpchat formats`)")
    pr.add_argument("--no-lore", action="store_true", help="ignore the card's embedded lorebook")
    pr.add_argument("--world", type=Path, help="also activate this lorebook / SillyTavern world-info JSON")
    pr.add_argument("--model", type=Path, help="count tokens with this GGUF's tokenizer and fit the context")
    pr.add_argument("--n-ctx", type=int, default=None, help="context size for --model (default: the config's)")
    pr.add_argument("--max-new", type=int, default=None, help="reply budget for --model (default: the config's)")

    rp = sub.add_parser("reply", help="send a message and stream the character's reply to stdout")
    rp.add_argument("card", type=Path, nargs="?", help="the character's card (not with --group)")
    rp.add_argument("--chat", type=Path, help="chat file (.jsonl), created if missing (a group: a chat id or "
                    "file of the group; default: its current chat)")
    rp.add_argument("--say", help="your message (a group: leave it out to pass your turn)")
    rp.add_argument("--group", metavar="NAME", help="reply in this group's chat (see `rpchat group`)")
    rp.add_argument("--speaker", metavar="MEMBER", help="the group member who answers (default: the group's "
                    "turn order; manual turns need it)")
    rp.add_argument("--length", default=None,
                    help="length modifier, or auto: the model decides (default: the chat's)")
    src = rp.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="local GGUF model")
    src.add_argument("--engine", metavar="URL", help="remote server URL (llama-server, OpenAI, KoboldCpp)")
    rp.add_argument("--api", default="auto", help="remote API: auto, llama.cpp, openai or koboldcpp")
    rp.add_argument("--preset", default=None, help="sampler preset name")
    rp.add_argument("--seed", type=int, default=None)
    rp.add_argument("--user", help="persona name")
    rp.add_argument("--format", default=None)
    rp.add_argument("--n-ctx", type=int, default=None)
    rp.add_argument("--max-new", type=int, default=None)
    rp.add_argument("--world", type=Path, action="append",
                    help="attach a lorebook / SillyTavern world-info JSON to this chat (remembered)")
    rp.add_argument("--no-lore", action="store_true", help="ignore the card's embedded lorebook for this reply")
    rp.add_argument("--note", metavar="TEXT", help="set this chat's author's note (remembered; \"\" clears it)")
    rp.add_argument("--note-depth", type=_count(1000), metavar="N",
                    help="put the author's note N messages from the end of the chat (remembered)")
    rp.add_argument("--note-interval", type=_count(1_000_000), metavar="N",
                    help="author's note every N user messages; 1: always, 0: never (remembered)")
    rp.add_argument("--ban", action="append", metavar="PHRASE",
                    help="a phrase this reply may not contain (repeatable; on top of Settings' and the chat's)")

    cd = sub.add_parser("card", help="inspect or convert character cards")
    cds = cd.add_subparsers(dest="card_command", required=True, parser_class=_Parser)
    show = cds.add_parser("show", help="print a card")
    show.add_argument("card", type=Path)
    show.add_argument("--json", action="store_true", help='print {"spec": ..., "data": {...}}')
    conv = cds.add_parser("convert", help="convert between .png, .json and .charx")
    conv.add_argument("src", type=Path)
    conv.add_argument("dest", type=Path)

    ch = sub.add_parser("chat", help="import or export SillyTavern chats")
    chs = ch.add_subparsers(dest="chat_command", required=True, parser_class=_Parser)
    imp = chs.add_parser("import", help="copy a SillyTavern .jsonl chat into a library card's chats")
    imp.add_argument("src", type=Path)
    imp.add_argument("--card", help="the card it belongs to: a library card's name or a card file "
                                    "(default: the card named like the chat's character)")
    exp = chs.add_parser("export", help="write a chat as a pure SillyTavern .jsonl file")
    exp.add_argument("src", type=Path)
    exp.add_argument("dest", type=Path)

    group_cli.add_parser(sub, _Parser)

    be = sub.add_parser("bench", help="measure the real pipeline and print figures")
    be.add_argument("--model", type=Path, help="GGUF model (default: the demo model)")
    be.add_argument("--turns", type=int, default=6)
    be.add_argument("--threads", type=int, default=None)
    be.add_argument("--tokens", type=int, default=128, help="tokens to generate per turn")
    be.add_argument("--no-tui", action="store_true", help="skip the headless TUI measurements")
    be.add_argument("--json", action="store_true", help="print the figures as JSON")
    be.add_argument("--shape", choices=["7b"], help="measure prompt progress and Esc on a synthetic model of "
                    "this shape (Mistral-7B: about 4 GB, written once into the cache folder)")
    be.add_argument("--against-llama-cpp", type=Path, metavar="DIR", help="also rate prompt evaluation and "
                    "generation against llama-bench and llama-server found in DIR (built from the same llama.cpp)")
    be.add_argument("--chat-tokens", type=int, default=3000, help="size of the long chat (default 3000)")
    be.add_argument("--no-esc", action="store_true", help="with --shape: skip the progress and Esc figures")
    be.add_argument("--vocab", type=Path, help="llama.cpp's ggml-vocab-llama-spm.gguf, for writing the "
                    "synthetic model (default: found beside the llama.cpp sources, or $LLAMA_CPP_DIR/models)")

    mo = sub.add_parser("model", help="find and download GGUF models on the Hugging Face Hub")
    mos = mo.add_subparsers(dest="model_command", required=True, parser_class=_Parser)
    ms = mos.add_parser("search", help="search GGUF model repos")
    ms.add_argument("text")
    ms.add_argument("--limit", type=int, default=20)
    mf = mos.add_parser("files", help="list a repo's GGUF files with sizes and the one that fits")
    mf.add_argument("repo")
    mg = mos.add_parser("get", help="download a GGUF from a repo into the hub cache and use it")
    mg.add_argument("repo")
    which = mg.add_mutually_exclusive_group()
    which.add_argument("--file", help="the file name (default: the largest quant that fits in memory)")
    which.add_argument("--quant", help="a quant type, e.g. Q4_K_M")
    mg.add_argument("--no-configure", action="store_true", help="only download; leave engine.model as it is")

    lo = sub.add_parser("lora", help="LoRA adapters")
    los = lo.add_subparsers(dest="lora_command", required=True, parser_class=_Parser)
    li = los.add_parser("import", help="convert a PEFT LoRA adapter folder to GGUF and use it")
    li.add_argument("dir", type=Path, help="folder with adapter_config.json and adapter_model.safetensors")
    li.add_argument("--base", type=Path, required=True, help="the base model GGUF the adapter is applied to")
    li.add_argument("--out", type=Path, help="GGUF to write (default: DIR/DIR.gguf)")
    li.add_argument("--outtype", choices=("f32", "f16"), help="tensor type (default: f32 for f32 adapters, else f16)")
    li.add_argument("--no-configure", action="store_true", help="only convert; leave engine.model/engine.lora")

    sub.add_parser("doctor", help="print the llama.cpp build, backends, AMX verdict and paths")
    fm = sub.add_parser("formats", help="list prompt formats, or import SillyTavern templates")
    fms = fm.add_subparsers(dest="formats_command", parser_class=_Parser)
    fmi = fms.add_parser("import", help="turn a SillyTavern instruct and/or context template into a format")
    fmi.add_argument("files", type=Path, nargs="+", metavar="FILE",
                     help="instruct template, context template or master export (.json); one or two")
    fmi.add_argument("--name", help="name of the new format (default: the first file's name)")
    ps = sub.add_parser("presets", help="list sampler presets, or import a SillyTavern one")
    pss = ps.add_subparsers(dest="presets_command", parser_class=_Parser)
    psi = pss.add_parser("import", help="turn a SillyTavern textgen preset (.json) into a sampler preset")
    psi.add_argument("file", type=Path)
    psi.add_argument("--name", help="name of the new preset (default: the file's name)")
    return p


def _version() -> str:
    from rpchat import __version__

    return f"rpchat {__version__}"


# --- commands ------------------------------------------------------------------------------------


def cmd_prompt(args: argparse.Namespace) -> int:
    from rpchat.config import load_config
    from rpchat.paths import profile
    from rpchat.personas import Persona, PersonaBook
    from rpchat.prompt.lorebook import load_lorebook
    from rpchat.session import open_chat_session

    # The same opening as the app and `rpchat reply`; the flags then change this prompt only, nothing is saved.
    paths = profile()
    config = load_config(paths)
    group_cli.check_card_or_group(args)
    session = open_chat_session(args.card, args.chat, config=config, personas=PersonaBook.load(paths.personas_file),
                                user=args.user, format_name=args.format, readonly=True, model=args.model,
                                group=args.group)
    if args.speaker:
        session.speak_as(args.speaker)
    if args.persona is not None:
        session.persona = Persona(session.persona.name, args.persona)
    if args.scenario is not None:
        session.chat.scenario = args.scenario
    if args.length is not None:  # not given: the chat's own
        session.chat.length = _length_modifier(args.length)
    if args.world:
        session.extra_lorebooks.append(load_lorebook(args.world))
    session.skip_card_lorebook = args.no_lore
    counter = None
    n_ctx = None
    if args.max_new is not None:
        session.max_new = args.max_new
    if args.model:
        from rpchat.engine.vocab import Vocab

        counter = Vocab(args.model).count_tokens
        n_ctx = args.n_ctx or config.engine.n_ctx
    built = session.build("reply", counter=counter, n_ctx=n_ctx)
    _print_notices(session)
    # Exactly the prompt when piped; on a terminal, control characters are shown, not obeyed.
    sys.stdout.write(_printable(built.text) if sys.stdout.isatty() else built.text)
    sys.stdout.flush()
    if built.dropped:
        print(f"rpchat: note: {len(built.dropped)} older turn(s) left out to fit {n_ctx} tokens", file=sys.stderr)
    return 0


def _print_notices(session: RoleplaySession) -> None:
    # What the model made rpchat choose is a note; a world file it could not use is a warning.
    told = session.choices.notices if session.choices is not None else ()
    for notice in session.take_notices():
        kind = "note" if notice in told else "warning"
        print(f"rpchat: {kind}: {_printable(notice)}", file=sys.stderr)


def cmd_reply(args: argparse.Namespace) -> int:
    from rpchat.config import load_config
    from rpchat.engine.factory import make_engine
    from rpchat.paths import profile
    from rpchat.personas import PersonaBook
    from rpchat.prompt.lorebook import load_lorebook
    from rpchat.session import open_chat_session

    group_cli.check_card_or_group(args)
    if args.group is None and (args.chat is None or args.say is None):
        raise group_cli.UsageError("reply needs --chat and --say (or --group)")
    # A broken world file is refused before the chat file is created or the model loaded.
    for world in args.world or ():
        load_lorebook(world)
    paths = profile()
    config_notices: list[str] = []  # e.g. a readable config holding an API key, made private
    config = load_config(paths, config_notices)
    engine = make_engine(config, model=args.model, url=args.engine, api=args.api if args.engine else None,
                         n_ctx=args.n_ctx)
    session = open_chat_session(args.card, args.chat, config=config, personas=PersonaBook.load(paths.personas_file),
                                engine=engine, user=args.user, format_name=args.format, preset=args.preset,
                                create_missing=True, model=args.model, remote=bool(args.engine), group=args.group)
    session.notices.extend(config_notices)
    session.keep_alternatives = False  # nothing here shows token alternatives: don't pay for them
    group_cli.check_speaker(session, args)
    if args.seed is not None:
        session.sampling = dataclasses.replace(session.sampling, seed=args.seed)
        if session.cast is not None:
            session.cast.rng.seed(args.seed)  # who speaks, in natural order
    if args.max_new:
        session.max_new = args.max_new
    session.banned_phrases = (*session.banned_phrases, *(args.ban or ()))
    for warning in session.chat.warnings:  # lines of the chat file that could not be read
        print(f"rpchat: warning: {_printable(warning)}", file=sys.stderr)
    cancel = threading.Event()
    try:
        if args.length is not None:  # not given: the chat's own
            # Checked against the format before anything is sent.
            session.set_length(_length_modifier(args.length))
        for world in args.world or ():
            session.attach_world(world)
        if (args.note, args.note_depth, args.note_interval) != (None, None, None):
            note = session.chat.note
            session.set_note(dataclasses.replace(
                note,
                text=note.text if args.note is None else args.note,
                depth=note.depth if args.note_depth is None else args.note_depth,
                interval=note.interval if args.note_interval is None else args.note_interval,
            ))
        session.skip_card_lorebook = args.no_lore
        engine.load()
        if args.say is not None:
            session.send(args.say)
        speakers = group_cli.reply_speakers(session, args)
        out = sys.stdout
        engine_notice = engine.info.notice
        if engine_notice:
            # e.g. the AMX verdict: repacking turned off because it crashed on this CPU.
            print(f"rpchat: note: {_printable(engine_notice)}", file=sys.stderr)

        # How far the prompt has been read, on a terminal only: a script reading stderr gets no \r lines.
        line = _ProgressLine(sys.stderr) if sys.stderr.isatty() else None

        def on_piece(piece: str) -> None:
            if line is not None:
                line.close()
            out.write(_printable(piece))
            out.flush()

        for who in speakers:
            if who is not None:  # a group: say who speaks, as the chat shows it
                out.write(f"{_printable(who.name)}: ")
            try:
                kwargs = {"speaker": who} if who is not None else {}
                result = session.reply(on_piece, cancel, on_progress=line.report if line is not None else None,
                                       **kwargs)
            except KeyboardInterrupt:
                cancel.set()
                raise
            finally:
                if line is not None:
                    line.close()
            out.write("\n")
            session.save_state()  # the next `rpchat reply` on this chat starts from it
            _print_notices(session)
            if result.unsupported:  # e.g. banned phrases on a server without phrase banning
                print(f"rpchat: note: not applied by this server: {', '.join(result.unsupported)}", file=sys.stderr)
            if result.error:
                kept = " (partial reply saved, marked unfinished)" if result.text.strip() else ""
                print(f"rpchat: error: {result.error}{kept}", file=sys.stderr)
                return 2
            print(
                f"rpchat: {result.tokens_generated} tokens, {result.tok_per_s:.1f} tok/s, "
                f"prompt {result.prompt_tokens_evaluated} evaluated / {result.prompt_tokens_reused} reused"
                + (f" ({result.prompt_tokens_restored} restored from disk)" if result.prompt_tokens_restored else "")
                + f", finish: {result.finish_reason}"
                + (f", {result.rewinds} banned phrase(s) rewritten ({result.tokens_resampled} tokens resampled)"
                   if result.rewinds else ""),
                file=sys.stderr,
            )
        # The TUI does this in the background; here it runs after the reply is printed and reported.
        update = update_summary(session, cancel)
        if update is not None:
            done = "updated" if update.applied else f"not updated ({update.finish_reason or 'the model wrote nothing'})"
            print(f"rpchat: story so far {done}: {len(update.turns)} turn(s) summarised, {update.prompt_tokens} "
                  f"tokens evaluated, {update.tokens_generated} written in {update.seconds:.1f} s", file=sys.stderr)
    finally:
        session.close()
    return 0


class _ProgressLine:
    """Prompt-reading progress as one ``\r``-updated line on a terminal, cleared before the reply.

    Reports come from the generating thread; a ticker moves the clock on between them (a server
    may report once per 2,048 tokens), so the line never looks frozen.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._last: tuple[PromptProgress, float] | None = None
        self._shown = False
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None

    def report(self, progress: PromptProgress) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._last = (progress, time.monotonic())
            self._draw()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="rpchat-progress-line", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._closed.wait(0.25):
            with self._lock:
                if not self._closed.is_set():
                    self._draw()

    def _draw(self) -> None:
        if self._last is None:
            return
        progress, since = self._last
        width = max(20, shutil.get_terminal_size().columns - 1)  # a wrapped line cannot be redrawn
        text = f"rpchat: {progress.describe(time.monotonic() - since)}"[:width]
        self._stream.write(f"\r{text}\x1b[K")
        self._stream.flush()
        self._shown = True

    def close(self) -> None:
        """Clear the line (idempotent); nothing is drawn after this."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            if self._shown:
                self._stream.write("\r\x1b[K")
                self._stream.flush()


def _printable(text: str) -> str:
    """Model output is data: drop terminal control characters (ESC, bidi overrides) before printing."""
    from rpchat.text import strip_controls

    return strip_controls(text)


def cmd_card(args: argparse.Namespace) -> int:
    from rpchat.cards import card_to_dict, load_card, save_card

    if args.card_command == "show":
        card = load_card(args.card)
        if args.json:
            from rpchat.cards.jsoncard import V3_ONLY

            data = card_to_dict(card, "chara_card_v3")["data"]
            # Every V2/V3 field, set or not, so scripts can rely on the keys being there.
            for key in V3_ONLY:
                data.setdefault(key, getattr(card, key))
            text = json.dumps({"spec": card.spec, "data": data}, ensure_ascii=False, indent=2)
            print(_json_inert(text))
        else:
            _print_card(card)
        return 0
    card = load_card(args.src)
    save_card(card, args.dest)
    print(f"wrote {args.dest}", file=sys.stderr)
    return 0


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _json_inert(text: str) -> str:
    """JSON with DEL, C1 and bidi controls escaped as \\uXXXX: same data, nothing a terminal acts on."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _print_card(card: Any) -> None:
    from rpchat.text import strip_controls

    def line(label: str, value: str) -> None:
        if value:
            print(f"{label}: {strip_controls(value)}")

    line("Name", card.name)
    line("Nickname", card.nickname)
    line("Spec", card.spec)
    line("Creator", card.creator)
    line("Version", card.character_version)
    line("Tags", ", ".join(card.tags))
    line("Creator notes", card.creator_notes)
    line("Description", card.description)
    line("Personality", card.personality)
    line("Scenario", card.scenario)
    line("First message", card.first_mes)
    for i, g in enumerate(card.alternate_greetings, 1):
        line(f"Alternate greeting {i}", g)
    if card.character_book:
        entries = card.character_book.get("entries") or []
        print(f"Lorebook: {len(entries)} entries")


def cmd_chat(args: argparse.Namespace) -> int:
    from rpchat.chat.library import export_st_chat, import_st_chat
    from rpchat.chat.store import load_chat
    from rpchat.paths import profile

    if args.chat_command == "import":
        chat = load_chat(args.src)  # a broken file is refused before anything is looked up or written
        from rpchat.chat.library import chats_folder

        name, card_path, card_note = _library_card(args.card, chat.character_name, args.src)
        dest = import_st_chat(args.src, profile().chats_dir, character=name, folder=chats_folder(card_path))
        print(_printable(f"{card_note}imported to {dest}; to open it: rpchat, pick {name} in the library, "
                         "Enter, then the chat"), file=sys.stderr)
        return 0
    chat = load_chat(args.src)
    export_st_chat(chat, args.dest)
    print(f"wrote {args.dest}", file=sys.stderr)
    return 0


def _library_card(wanted: str | None, character: str, src: Path) -> tuple[str, Path, str]:
    """The library card an imported chat belongs to (name and file), and a note when its file was imported too.

    Chats are listed under their card, so a chat whose card is not in the library would be invisible.
    """
    from rpchat.cards import load_card
    from rpchat.cards.library import import_card, list_cards
    from rpchat.errors import ChatError

    cards = [(e.name, e.path) for e in list_cards() if e.error is None]

    def in_library(name: str) -> tuple[str, Path] | None:
        return next((c for c in cards if c[0].casefold() == name.strip().casefold()), None)

    if wanted is None:
        found = in_library(character) if character.strip() else None
        if found is None:
            who = f"its character {character.strip()!r}" if character.strip() else "it (no character_name)"
            raise ChatError(f"no card in the library matches {who}; name its card with --card NAME or "
                            "--card FILE (a card file is imported into the library too)", src)
        return (*found, "")
    card_file = Path(wanted).expanduser()
    if card_file.is_file():
        card_name = load_card(card_file).display_name
        found = in_library(card_name)
        if found is not None:
            return (*found, "")
        return card_name, import_card(card_file), f"card {card_name} added to the library; "
    found = in_library(wanted)
    if found is None:
        raise ChatError(f"--card {wanted!r} is neither a card file nor a card in the library", src)
    return (*found, "")


def cmd_bench(args: argparse.Namespace) -> int:
    from rpchat.bench import format_bench, format_shape_bench, run_bench, run_shape_bench
    from rpchat.bench_longchat import format_long_chat, run_long_chat
    from rpchat.engine.demo import demo_model_path

    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.json else None
    if args.shape:
        from rpchat.engine.synthetic import ensure_synthetic_model

        model = ensure_synthetic_model(args.shape, args.vocab, log)
        figures = {} if args.no_esc else run_shape_bench(model, args.threads, log=log)
        # One reference round of few tokens: at 7B shape each 3,000-token evaluation takes minutes.
        figures["long_chat"] = run_long_chat(model, args.threads, chat_tokens=args.chat_tokens,
                                             llama_cpp=args.against_llama_cpp, ref_tokens=16, rounds=1, log=log)
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(format_shape_bench(figures) if figures.keys() - {"long_chat"} else "")
            print("\n".join(format_long_chat(figures["long_chat"])))
        return 0
    result = run_bench(
        model_path=args.model,
        turns=args.turns,
        n_threads=args.threads,
        gen_tokens=args.tokens,
        log=log,
    )
    result["long_chat"] = run_long_chat(args.model or demo_model_path(), args.threads, chat_tokens=args.chat_tokens,
                                        llama_cpp=args.against_llama_cpp, log=log)
    if not args.no_tui:
        from rpchat.tui.bench import run_tui_bench  # the TUI's own figures: the core bench never imports it

        result["tui"] = run_tui_bench()
        if log is not None:
            log("headless TUI measured")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_bench(result))
        print("\n".join(format_long_chat(result["long_chat"])))
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from rpchat.engine import hub

    if args.model_command == "search":
        found = hub.search(args.text, limit=args.limit)
        if not found:
            print(f"rpchat: no GGUF repos match {args.text!r}", file=sys.stderr)
            return 1
        for repo in found:
            gated = "  (gated)" if repo.gated else ""
            print(_printable(f"{repo.id}  {repo.downloads:,} downloads  {repo.likes:,} likes{gated}"))
        return 0
    files = hub.list_gguf_files(args.repo)
    memory = hub.free_memory()
    if args.model_command == "files":
        best = hub.recommend(files, memory)
        free = f"{memory / 2**30:.1f} GiB" if memory else "unknown"
        print(f"free memory: {free}", file=sys.stderr)
        for f in files:
            fits = "fits" if memory and hub.needed_memory(f.size) <= memory else "too big"
            mark = "  <- recommended" if f == best else ""
            print(_printable(f"{f.path}  {f.quant}  {f.size_label}  {fits}{mark}"))
        return 0
    chosen = hub.pick_file(files, filename=args.file, quant=args.quant, memory=memory, repo=args.repo)
    print(_printable(f"downloading {args.repo}/{chosen.path} ({chosen.quant}, {chosen.size_label})"),
          file=sys.stderr)
    shown = [-1]

    def progress(done: int, total: int | None) -> None:
        pct = int(done * 100 / total) if total else 0
        if pct != shown[0]:
            shown[0] = pct
            sys.stderr.write(f"\r  {pct:3d}%  {done / 2**20:,.1f} / {(total or 0) / 2**20:,.1f} MiB")
            sys.stderr.flush()

    try:
        path = hub.download(args.repo, chosen, progress=progress)
    finally:
        if shown[0] >= 0:
            sys.stderr.write("\n")  # an error goes on its own line, after the bar
    print(str(path))
    if not args.no_configure:
        from rpchat.config import load_config, save_config
        from rpchat.paths import profile

        paths = profile()
        config = load_config(paths)
        config.engine.kind, config.engine.model, config.engine.lora = "local", str(path), None
        save_config(paths, config)
        print("engine.model set; rpchat will use it from the next start", file=sys.stderr)
    return 0


def cmd_lora(args: argparse.Namespace) -> int:
    from rpchat.config import load_config, save_config
    from rpchat.engine.lora_import import import_lora
    from rpchat.paths import profile

    done = import_lora(args.dir, args.base, args.out, outtype=args.outtype)
    print(f"wrote {done.path}: rank {done.rank}, alpha {done.alpha:g}, {len(done.targets)} target tensors",
          file=sys.stderr)
    if not args.no_configure:
        paths = profile()
        config = load_config(paths)
        config.engine.kind = "local"
        config.engine.model = str(Path(args.base).expanduser().resolve())
        config.engine.lora = str(done.path.resolve())
        save_config(paths, config)
        print(f"engine.model = {config.engine.model}\nengine.lora = {config.engine.lora}", file=sys.stderr)
    return 0


def cmd_doctor(_: argparse.Namespace) -> int:
    from rpchat.engine.diagnostics import doctor_report

    rows = doctor_report()
    rows.append(("chat states", _state_usage()))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")
    return 0


def _state_usage() -> str:
    """The saved KV states' disk use against their budget (config engine.state_cache_mib)."""
    from rpchat.config import EngineConfig, load_config
    from rpchat.engine.kvstate import states_dir, usage
    from rpchat.paths import profile

    paths = profile()
    try:
        mib = load_config(paths).engine.state_cache_mib
    except RpchatError:
        mib = EngineConfig().state_cache_mib
    used = usage(states_dir(paths.cache_dir), max(0, mib) << 20)
    if used.budget <= 0:
        return f"off (engine.state_cache_mib is 0); {used.files} files, {used.size / 2**20:.1f} MiB in {used.folder}"
    return (f"{used.files} saved, {used.size / 2**20:.1f} MiB of {used.budget / 2**20:.0f} MiB "
            f"(least recently used go first) in {used.folder}")


def cmd_formats(args: argparse.Namespace) -> int:
    from rpchat.prompt.formats import format_origin, import_format, load_formats

    if args.formats_command == "import":
        if len(args.files) > 2:
            raise RpchatError("formats import takes one or two files (an instruct and a context template)")
        done = import_format(args.files, args.name)
        _report_import("prompt format", done.name, done.path, done.notes, "--format")
        return 0
    formats, errors = load_formats()
    _print_table([(name, format_origin(name), formats[name].description) for name in sorted(formats)])
    _warn(errors)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from rpchat.engine.presets import import_preset, list_presets, shipped_preset_names

    if args.presets_command == "import":
        done = import_preset(args.file, args.name)
        _report_import("sampler preset", done.name, done.path, done.notes, "--preset")
        return 0
    errors: list[Any] = []
    shipped = shipped_preset_names()
    rows = []
    for preset in list_presets(errors=errors):
        origin = "built-in" if preset.builtin else "user, overrides built-in" if preset.name in shipped else "user"
        rows.append((preset.name, origin, preset.description))
    _print_table(rows)
    _warn(errors)
    return 0


def _print_table(rows: list[tuple[str, str, str]]) -> None:
    from rpchat.text import strip_controls

    width = max((len(name) for name, _, _ in rows), default=0)
    origin_width = max((len(origin) for _, origin, _ in rows), default=0)
    for name, origin, description in rows:
        print(strip_controls(f"{name.ljust(width)}  {origin.ljust(origin_width)}  {description}".rstrip()))


def _warn(errors: list[Any]) -> None:
    for e in errors:
        print(f"rpchat: warning: {e}", file=sys.stderr)


def _report_import(what: str, name: str, path: Path, notes: Sequence[str], flag: str) -> None:
    from rpchat.text import strip_controls

    print(strip_controls(f"imported {what} {name!r}: {path}"))
    if notes:
        print(strip_controls("note: " + "; ".join(notes)))
    print(f"use it with {flag} {name}, or pick it in Settings (F2)")


def cmd_tui(_: argparse.Namespace) -> int:
    # Without a terminal the app would draw escape codes into a pipe forever; scripts want the headless commands.
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("rpchat: error: the app needs a terminal (stdin and stdout); for scripts use "
              "`rpchat prompt` or `rpchat reply` (see `rpchat --help`)", file=sys.stderr)
        return 2
    from rpchat.tui.app import run_app

    return run_app()


COMMANDS = {
    "prompt": cmd_prompt,
    "reply": cmd_reply,
    "card": cmd_card,
    "chat": cmd_chat,
    "bench": cmd_bench,
    "doctor": cmd_doctor,
    "lora": cmd_lora,
    "model": cmd_model,
    "formats": cmd_formats,
    "presets": cmd_presets,
    "group": group_cli.cmd_group,
    None: cmd_tui,
}


def _log_crash() -> Path | None:
    try:
        from rpchat.paths import profile

        log_dir = profile().log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "crash.log"
        from rpchat.secret import redact

        # Private (600): a traceback may quote a server's answer; the API key is masked all the same.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "a", encoding="utf-8") as f:
            f.write(redact(traceback.format_exc()))
            f.write("\n")
        return path
    except Exception:  # noqa: BLE001 - logging the crash must never crash the handler
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rpchat` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RpchatError as e:
        print(f"rpchat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rpchat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. `rpchat prompt ... | head`): not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback for users
        where = _log_crash()
        detail = f"; details in {where}" if where else ""
        from rpchat.secret import redact

        line = redact(f"rpchat: error: internal error: {type(e).__name__}: {e}{detail}").splitlines()[0]
        print(_printable(line), file=sys.stderr)
        return 2

"""The `rpchat` command: the TUI with no arguments, headless subcommands otherwise.

Every failure reaches the user as one line, ``rpchat: error: ...``, with exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rpchat.errors import RpchatError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"rpchat: error: {message}\n")


def _length(value: str) -> str | None:
    # Which lengths exist is the prompt format's to say (limamono stops at "huge"); the builder checks.
    return None if value in ("none", "auto", "") else value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rpchat", description="Terminal roleplay chat for LimaRP-family GGUF models.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    pr = sub.add_parser("prompt", help="print the exact prompt for the next character reply")
    pr.add_argument("card", type=Path)
    pr.add_argument("--user", help="persona name (default: the default persona)")
    pr.add_argument("--persona", help="persona description (default: the persona's own)")
    pr.add_argument("--scenario", help="scenario that overrides the card's")
    pr.add_argument("--chat", type=Path, help="a SillyTavern .jsonl chat to continue")
    pr.add_argument("--length", type=_length, default=None, help="length modifier, or none")
    pr.add_argument("--format", default=None, help="prompt format name (see `rpchat formats`)")
    pr.add_argument("--no-lore", action="store_true", help="ignore the card's embedded lorebook")
    pr.add_argument("--world", type=Path, help="a lorebook / SillyTavern world-info JSON to activate")
    pr.add_argument("--model", type=Path, help="count tokens with this GGUF's tokenizer and fit the context")
    pr.add_argument("--n-ctx", type=int, default=4096)
    pr.add_argument("--max-new", type=int, default=400)

    rp = sub.add_parser("reply", help="send a message and stream the character's reply to stdout")
    rp.add_argument("card", type=Path)
    rp.add_argument("--chat", type=Path, required=True, help="chat file (.jsonl), created if missing")
    rp.add_argument("--say", required=True, help="your message")
    rp.add_argument("--length", type=_length, default=..., help="length modifier (default: the chat's)")
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
    imp = chs.add_parser("import", help="copy a SillyTavern .jsonl chat into rpchat's chats")
    imp.add_argument("src", type=Path)
    exp = chs.add_parser("export", help="write a chat as a pure SillyTavern .jsonl file")
    exp.add_argument("src", type=Path)
    exp.add_argument("dest", type=Path)

    be = sub.add_parser("bench", help="measure the real pipeline and print figures")
    be.add_argument("--model", type=Path, help="GGUF model (default: the demo model)")
    be.add_argument("--turns", type=int, default=6)
    be.add_argument("--threads", type=int, default=None)
    be.add_argument("--tokens", type=int, default=128, help="tokens to generate per turn")
    be.add_argument("--no-tui", action="store_true", help="skip the headless TUI measurements")
    be.add_argument("--json", action="store_true", help="print the figures as JSON")

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
    from rpchat.cards import load_card
    from rpchat.chat.model import Chat
    from rpchat.chat.store import load_chat
    from rpchat.config import load_config
    from rpchat.paths import profile
    from rpchat.personas import Persona, PersonaBook
    from rpchat.prompt import build_prompt, load_format
    from rpchat.prompt.lorebook import load_lorebook

    paths = profile()
    config = load_config(paths)
    card = load_card(args.card)
    book = PersonaBook.load(paths.personas_file)
    persona = book.default_persona()
    if args.user:
        found = book.find(args.user)
        persona = found if found is not None else Persona(args.user, "")
    if args.persona is not None:
        persona = Persona(persona.name, args.persona)
    if args.chat:
        chat = load_chat(args.chat)
    else:
        chat = Chat.start(card.display_name, persona.name, card.greetings[:1])
    counter = None
    n_ctx = None
    if args.model:
        from rpchat.engine.vocab import Vocab

        vocab = Vocab(args.model)
        counter = vocab.count_tokens
        n_ctx = args.n_ctx
    built = build_prompt(
        load_format(args.format or config.format),
        card,
        persona,
        chat.turns,
        scenario=args.scenario,
        length=args.length,
        counter=counter,
        n_ctx=n_ctx,
        max_new=args.max_new if counter else 0,
        lorebook=load_lorebook(args.world) if args.world else None,
        card_lorebook=not args.no_lore,
    )
    # Exactly the prompt when piped; on a terminal, control characters are shown, not obeyed.
    sys.stdout.write(_printable(built.text) if sys.stdout.isatty() else built.text)
    sys.stdout.flush()
    if built.dropped:
        print(f"rpchat: note: {len(built.dropped)} older turn(s) left out to fit {n_ctx} tokens", file=sys.stderr)
    return 0


def cmd_reply(args: argparse.Namespace) -> int:
    from rpchat.prompt.lorebook import load_lorebook
    from rpchat.session import open_headless_session

    # A broken world file is refused before the chat file is created or the model loaded.
    for world in args.world or ():
        load_lorebook(world)
    session = open_headless_session(
        card_path=args.card,
        chat_path=args.chat,
        model=args.model,
        engine_url=args.engine,
        api=args.api,
        preset=args.preset,
        seed=args.seed,
        user=args.user,
        format_name=args.format,
        n_ctx=args.n_ctx,
        max_new=args.max_new,
    )
    cancel = threading.Event()
    try:
        if args.length is not ...:
            session.set_length(args.length)  # checked against the format before anything is sent
        for world in args.world or ():
            session.attach_world(world)
        session.skip_card_lorebook = args.no_lore
        session.send(args.say)
        out = sys.stdout
        engine_notice = session.engine.info.notice if session.engine is not None else None
        if engine_notice:
            # e.g. the AMX verdict: repacking turned off because it crashed on this CPU.
            print(f"rpchat: note: {_printable(engine_notice)}", file=sys.stderr)

        def on_piece(piece: str) -> None:
            out.write(_printable(piece))
            out.flush()

        try:
            result = session.reply(on_piece, cancel)
        except KeyboardInterrupt:
            cancel.set()
            raise
        out.write("\n")
        session.save_state()  # the next `rpchat reply` on this chat starts from it
        for notice in session.take_notices():
            print(f"rpchat: warning: {notice}", file=sys.stderr)
        if result.error:
            kept = " (partial reply saved, marked unfinished)" if result.text.strip() else ""
            print(f"rpchat: error: {result.error}{kept}", file=sys.stderr)
            return 2
        print(
            f"rpchat: {result.tokens_generated} tokens, {result.tok_per_s:.1f} tok/s, "
            f"prompt {result.prompt_tokens_evaluated} evaluated / {result.prompt_tokens_reused} reused"
            + (f" ({result.prompt_tokens_restored} restored from disk)" if result.prompt_tokens_restored else "")
            + ", "
            f"finish: {result.finish_reason}",
            file=sys.stderr,
        )
    finally:
        session.close()
    return 0


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
    from rpchat.chat.store import export_st_chat, import_st_chat, load_chat
    from rpchat.paths import profile

    if args.chat_command == "import":
        dest = import_st_chat(args.src, profile().chats_dir)
        print(f"imported to {dest}", file=sys.stderr)
        return 0
    chat = load_chat(args.src)
    export_st_chat(chat, args.dest)
    print(f"wrote {args.dest}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rpchat.bench import format_bench, run_bench

    result = run_bench(
        model_path=args.model,
        turns=args.turns,
        n_threads=args.threads,
        gen_tokens=args.tokens,
        tui=not args.no_tui,
        log=(lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.json else None,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_bench(result))
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
    from rpchat.tui.app import run_app

    return run_app()


COMMANDS = {
    "prompt": cmd_prompt,
    "reply": cmd_reply,
    "card": cmd_card,
    "chat": cmd_chat,
    "bench": cmd_bench,
    "doctor": cmd_doctor,
    "formats": cmd_formats,
    "presets": cmd_presets,
    None: cmd_tui,
}


def _log_crash() -> Path | None:
    try:
        from rpchat.paths import profile

        log_dir = profile().log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / "crash.log"
        with open(path, "a", encoding="utf-8") as f:
            f.write(traceback.format_exc())
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
        print(f"rpchat: error: internal error: {type(e).__name__}: {e}{detail}".splitlines()[0], file=sys.stderr)
        return 2

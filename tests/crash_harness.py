"""Crash safety: SIGKILL `rpchat reply` and a card-save loop at random moments, then check the files.

Kills land at a random time, mid-generation (after some streamed output) or exactly inside an atomic
save (the child kills itself before fsync, before rename or after rename). After each kill the chat
and card must parse, every turn saved before the run must still be there unchanged, at most the
in-flight reply may be missing or partial (then marked unfinished), and the next open must leave no
temp file behind. ``python3 tests/crash_harness.py --runs 100`` prints the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
MAX_NEW = 200
SAVE_POINTS = ("fsync", "replace", "after-replace")
# Seconds per streamed piece: the tiny model is far faster than a real one, so the child is slowed to
# about 80 tokens/s, which puts generation (and the session's 2 s checkpoint saves) in reach of kills.
PACE_S = 0.012
CARD_NAME = "Kestrel"  # no bundled card matches it, so the TUI's library filter finds this one


# --- the world: an isolated profile, the tiny model and a card -------------------------------------------


@dataclass
class World:
    root: Path
    home: Path
    model: Path
    card: Path
    chats: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ, RPCHAT_HOME=str(self.home), PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env


def make_world(root: Path) -> World:
    """An RPCHAT_HOME under ``root``, a card, and a scripted tiny model that answers "Hello world Hello..."
    greedily until ``--max-new`` (no early stop), so every run streams a full-length reply."""
    from tinymodel import token_id, write_tiny_model

    from rpchat.cards import Card, save_card
    from rpchat.config import Config, EngineConfig, save_config
    from rpchat.paths import Paths

    root.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    paths = Paths(home / "config", home / "data", home / "cache")
    hello, world, colon = token_id("▁Hello"), token_id("▁world"), token_id(":")
    model = write_tiny_model(root / "tiny.gguf", successors={colon: hello, hello: world, world: hello})
    # The CLI runs pass --model; the TUI runs under tmux take the model from the config.
    save_config(paths, Config(engine=EngineConfig(model=str(model), n_ctx=1024, n_threads=1),
                              preset="deterministic", default_length="medium", max_new_tokens=MAX_NEW))
    card = root / "cards" / "kestrel.png"
    save_card(Card(name=CARD_NAME, description="{{char}} keeps the lighthouse.", first_mes="Hello, {{user}}.",
                   alternate_greetings=["Another one from the sea."]), card)
    chats = root / "chats"
    chats.mkdir(exist_ok=True)
    return World(root, home, model, card, chats)


def reply_args(world: World, chat: Path, say: str, max_new: int = MAX_NEW) -> list[str]:
    return ["reply", str(world.card), "--chat", str(chat), "--say", say, "--model", str(world.model),
            "--max-new", str(max_new)]  # fmt: skip


# --- reading files back -----------------------------------------------------------------------------------


def turn_lines(path: Path) -> list[Any]:
    """The message objects of a chat file (header left out); raises ChatError if it does not parse."""
    from rpchat.chat import dump_chat, load_chat

    # What the real loader makes of the file, written back the way rpchat writes it.
    return [json.loads(line) for line in dump_chat(load_chat(path)).split(b"\n")[1:]]


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def unfinished(obj: dict[str, Any]) -> bool:
    marks = obj.get("extra", {}).get("rpchat", {}).get("unfinished", [])
    return isinstance(marks, list) and obj.get("swipe_id", 0) in marks


@dataclass
class Check:
    """What one killed run left behind."""

    intact: bool
    lost: int  # turns saved before the run that are gone or changed
    phase: str  # how far the run got: startup, sent, generating, finished
    partial: bool = False  # an unfinished (partial) reply was kept
    detail: str = ""


def check_chat(before: list[Any], path: Path, say: str) -> Check:
    """Compare the chat after a killed run with the turns it had before the run."""
    from rpchat.errors import ChatError

    try:
        after = turn_lines(path)
    except ChatError as e:
        return Check(False, len(before), "?", detail=str(e))
    lost = sum(1 for i, obj in enumerate(before) if i >= len(after) or after[i] != obj)
    new = after[len(before) :]
    if lost:
        return Check(True, lost, "?", detail=f"{lost} earlier turn(s) changed or missing")
    if not new:
        return Check(True, 0, "startup")
    if len(new) > 2 or not new[0].get("is_user") or new[0].get("mes") != say:
        return Check(True, 0, "?", detail=f"unexpected new turns: {json.dumps(new)[:200]}")
    if len(new) == 1:
        return Check(True, 0, "sent")
    reply = new[1]
    if reply.get("is_user"):
        return Check(True, 0, "?", detail="second new turn is not a reply")
    if unfinished(reply):
        return Check(True, 0, "generating", partial=bool(reply.get("mes")))
    return Check(True, 0, "finished")


# --- killing `rpchat reply` ----------------------------------------------------------------------------


@dataclass
class Outcome:
    mode: str
    killed: bool
    check: Check
    temps_after_kill: int
    returncode: int | None


def child_cmd(args: list[str], spec: str = "") -> list[str]:
    """`rpchat ARGS` run through this file, which applies ``spec`` first (see `_install`)."""
    if not spec:
        return [sys.executable, "-m", "rpchat", *args]
    return [sys.executable, str(Path(__file__).resolve()), "--child", spec, "--", *args]


def run_reply(world: World, chat: Path, say: str, mode: str, rng: random.Random, full_s: float,
              pace: float = PACE_S) -> Outcome:
    """One `rpchat reply` run killed by ``mode``: "timer", "generation" or "save"."""
    before = turn_lines(chat) if chat.exists() else []
    args = reply_args(world, chat, say)
    if mode == "save":
        cmd = child_cmd(args, f"{rng.choice(SAVE_POINTS)}:{rng.randint(1, 4)}")
    else:
        cmd = child_cmd(args, f"slow:{pace}")
    proc = subprocess.Popen(cmd, env=world.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=world.root)
    assert proc.stdout is not None
    killed = False
    if mode == "timer":
        time.sleep(rng.uniform(0.0, full_s * 1.05))
        killed = _kill(proc)
    elif mode == "generation":
        want, seen = rng.randint(1, 1300), 0
        while seen < want:
            piece = os.read(proc.stdout.fileno(), 256)
            if not piece:
                break
            seen += len(piece)
        killed = _kill(proc)
    proc.stdout.read()
    proc.wait()
    proc.stdout.close()
    if mode == "save":
        killed = proc.returncode == -signal.SIGKILL
    return Outcome(mode, killed, check_chat(before, chat, say), len(temp_files(chat.parent)), proc.returncode)


def _kill(proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    return True


def calibrate(world: World, chat: Path) -> float:
    """Seconds one whole `rpchat reply` run takes here (it also gives the chat its greeting)."""
    start = time.perf_counter()
    subprocess.run(child_cmd(reply_args(world, chat, "Hello there."), f"slow:{PACE_S}"), env=world.env(),
                   check=True, capture_output=True, cwd=world.root)
    return time.perf_counter() - start


# --- killing a card-save loop ----------------------------------------------------------------------------


@dataclass
class CardOutcome:
    killed: bool
    intact: bool
    last_saved: int
    found: int
    temps: int
    detail: str = ""


def run_card_loop(world: World, card: Path, rng: random.Random, mode: str) -> CardOutcome:
    """Save the card in a loop in a child, kill it ("timer" or "save" point), check the card."""
    from rpchat.cards import load_card
    from rpchat.errors import CardError

    start = int(load_card(card).description.split()[-1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-card-loop", str(card)]
    if mode == "save":
        cmd += ["--kill-at", f"{rng.choice(SAVE_POINTS)}:{rng.randint(1, 40)}"]
    proc = subprocess.Popen(cmd, env=world.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    killed = False
    if mode == "timer":
        # The child prints "ready" once imported, so the kill lands among the saves, not in startup.
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.4))
        killed = _kill(proc)
    out = proc.stdout.read().decode()
    proc.wait()
    proc.stdout.close()
    killed = killed or proc.returncode == -signal.SIGKILL
    done = [int(x) for x in out.split() if x.isdigit()]
    last = done[-1] if done else start
    temps = len(temp_files(card.parent))
    try:
        found = int(load_card(card).description.split()[-1])
    except (CardError, ValueError) as e:
        return CardOutcome(killed, False, last, -1, temps, str(e))
    # The save in flight may or may not have landed; nothing older may come back.
    intact = found in (last, last + 1)
    return CardOutcome(killed, intact, last, found, temps, "" if intact else f"found {found}, last saved {last}")


# --- two processes on one chat ----------------------------------------------------------------------------


@dataclass
class RaceOutcome:
    says: dict[str, str]
    returncodes: dict[str, int]
    in_main: dict[str, bool]
    in_conflict: dict[str, bool]
    told: dict[str, bool]
    lost_before: int

    @property
    def silently_lost(self) -> list[str]:
        """Sides whose message is nowhere, or is only in a conflict copy without the user being told."""
        return [s for s in self.says if not self.in_main[s] and not (self.in_conflict[s] and self.told[s])]


def race(world: World, chat: Path, delay_s: float, seed: int = 0, pace: float = 0.02) -> RaceOutcome:
    """Run two `rpchat reply` on one chat, the second ``delay_s`` after the first starts streaming (so
    they overlap however loaded the machine is), and see where their turns went."""
    from rpchat.chat import ChatStore
    from rpchat.personas import Persona
    from rpchat.session import start_chat

    card = _load(world.card)
    ChatStore(chat).save(start_chat(card, Persona("User")))
    before = turn_lines(chat)
    says = {"A": f"Side A says hi {seed}.", "B": f"Side B says hello {seed}."}
    procs = {}
    for side, say in says.items():
        procs[side] = subprocess.Popen(child_cmd(reply_args(world, chat, say), f"slow:{pace}"),
                                       env=world.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if side == "A":
            assert procs[side].stdout is not None
            os.read(procs[side].stdout.fileno(), 1)  # A has sent its message and is generating
            time.sleep(delay_s)
    errs = {side: p.communicate()[1].decode(errors="replace") for side, p in procs.items()}
    main = turn_lines(chat)
    conflicts = [turn_lines(p) for p in chat.parent.glob(f"{chat.stem}.conflict-*.jsonl")]
    in_main = {s: _answered(main, say) for s, say in says.items()}
    in_conflict = {s: any(any(t.get("mes") == say for t in c) for c in conflicts) for s, say in says.items()}
    told = {s: procs[s].returncode == 2 and "conflict" in errs[s] for s in says}
    lost = sum(1 for i, obj in enumerate(before) if i >= len(main) or main[i] != obj)
    return RaceOutcome(says, {s: p.returncode for s, p in procs.items()}, in_main, in_conflict, told, lost)


def _answered(turns: list[Any], say: str) -> bool:
    """Whether ``say`` is in the chat followed by a finished, non-empty reply."""
    for i, t in enumerate(turns[:-1]):
        if t.get("is_user") and t.get("mes") == say:
            reply = turns[i + 1]
            return not reply.get("is_user") and bool(reply.get("mes")) and not unfinished(reply)
    return False


def _load(path: Path) -> Any:
    from rpchat.cards import load_card

    return load_card(path)


# --- the benchmark ---------------------------------------------------------------------------------------


@dataclass
class Figures:
    reply_runs: list[Outcome] = field(default_factory=list)
    card_runs: list[CardOutcome] = field(default_factory=list)
    chat_temps_left: int = 0
    chats_kept_aside: int = 0
    card_temps_left: int = 0

    def lines(self) -> list[str]:
        kills = [o for o in self.reply_runs if o.killed]
        phases = Counter(o.check.phase for o in kills)
        card_kills = [c for c in self.card_runs if c.killed]
        return [
            (f"rpchat reply runs: {len(self.reply_runs)}; killed: {len(kills)} "
             f"(by mode: {dict(Counter(o.mode for o in kills))}; by phase: {dict(phases)})"),
            (f"chat files intact: {sum(o.check.intact for o in self.reply_runs)}/{len(self.reply_runs)}; "
             f"turns lost: {sum(o.check.lost for o in self.reply_runs)}; partial replies kept (marked "
             f"unfinished): {sum(o.check.partial for o in self.reply_runs)}; other problems: "
             f"{sum(bool(o.check.detail) for o in self.reply_runs)}"),
            (f"chat temp files found right after a kill: {sum(o.temps_after_kill for o in self.reply_runs)}; "
             f"left after the next open: {self.chat_temps_left}; chats kept aside as corrupt: "
             f"{self.chats_kept_aside}"),
            (f"card-save loop runs: {len(self.card_runs)}; killed: {len(card_kills)}; card files intact: "
             f"{sum(c.intact for c in self.card_runs)}/{len(self.card_runs)}; card temp files left: "
             f"{self.card_temps_left}"),
        ]

    @property
    def problems(self) -> list[str]:
        found = [f"reply {o.mode}: {o.check.detail}" for o in self.reply_runs if o.check.detail or not o.check.intact]
        found += [f"card: {c.detail}" for c in self.card_runs if not c.intact]
        if self.chat_temps_left:
            found.append(f"{self.chat_temps_left} chat temp file(s) left after the next open")
        return found


def run_benchmark(world: World, runs: int, card_runs: int, seed: int = 1, rotate: int = 20) -> Figures:
    """``runs`` killed `rpchat reply` runs (a new chat every ``rotate``) and ``card_runs`` card-loop kills."""
    from rpchat.chat import ChatStore

    rng = random.Random(seed)
    figures = Figures()
    chats: list[Path] = []
    full_s = 0.0
    for i in range(runs):
        if i % rotate == 0:
            chat = world.chats / f"chat-{len(chats)}.jsonl"
            chats.append(chat)
            full_s = max(full_s, calibrate(world, chat))
        mode = ("timer", "generation", "save")[i % 3]
        figures.reply_runs.append(run_reply(world, chats[-1], f"Message {i} from the user.", mode, rng, full_s))
    for chat in chats:
        ChatStore(chat).open()  # the next open cleans what a killed writer left
    figures.chat_temps_left = len(temp_files(world.chats))
    figures.chats_kept_aside = len(list(world.chats.glob("*.corrupt-*")))
    card = world.root / "cards" / "loop.png"
    if card_runs:
        from rpchat.cards import Card, save_card

        save_card(Card(name="Loop", description="revision 0"), card)
    for i in range(card_runs):
        figures.card_runs.append(run_card_loop(world, card, rng, ("timer", "save")[i % 2]))
    figures.card_temps_left = len(temp_files(card.parent))
    return figures


# --- child processes -------------------------------------------------------------------------------------


class _Paced(io.TextIOBase):
    """Stdout that takes ``pace`` seconds per write, standing in for a slower model."""

    def __init__(self, inner: Any, pace: float) -> None:
        self.inner, self.pace = inner, pace

    def write(self, text: str) -> int:
        time.sleep(self.pace)
        return int(self.inner.write(text))

    def flush(self) -> None:
        self.inner.flush()


def _install(spec: str) -> None:
    """Apply a child spec: ``slow:SECONDS`` paces stdout; ``POINT:N`` SIGKILLs this process at the
    n-th fsync ("fsync"), just before ("replace") or just after ("after-replace") the n-th rename."""
    point, nth = spec.split(":")
    if point == "slow":
        sys.stdout = _Paced(sys.stdout, float(nth))
        return
    target = int(nth)
    counts: Counter[str] = Counter()
    real_fsync, real_replace = os.fsync, os.replace

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def fsync(fd: int) -> None:
        counts["fsync"] += 1
        if point == "fsync" and counts["fsync"] == target:
            die()
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        counts["replace"] += 1
        if point == "replace" and counts["replace"] == target:
            die()
        real_replace(src, dst, **kw)
        if point == "after-replace" and counts["replace"] == target:
            die()

    os.fsync = fsync  # type: ignore[assignment]
    os.replace = replace  # type: ignore[assignment]


def _card_loop(path: Path) -> None:
    from rpchat.cards import load_card, save_card

    card = load_card(path)
    print("ready", flush=True)
    i = int(card.description.split()[-1])
    while True:
        i += 1
        card.description = f"revision {i}"
        save_card(card, path)
        print(i, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _install(argv[1])
        from rpchat.cli import main as rpchat_main

        return rpchat_main(argv[3:])
    if argv[:1] == ["--child-card-loop"]:
        if argv[2:3] == ["--kill-at"]:
            _install(argv[3])
        _card_loop(Path(argv[1]))
        return 0
    p = argparse.ArgumentParser(description="SIGKILL rpchat at random moments and check nothing saved is lost.")
    p.add_argument("--runs", type=int, default=100, help="killed `rpchat reply` runs")
    p.add_argument("--card-runs", type=int, default=None, help="killed card-save loops (default: runs / 2)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--races", type=int, default=4, help="two-process races on one chat")
    p.add_argument("--tmux", type=int, default=10, help="TUI runs killed under tmux (0: none)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rpchat-crash-") as d:
        world = make_world(Path(d))
        card_runs = args.card_runs if args.card_runs is not None else args.runs // 2
        figures = run_benchmark(world, args.runs, card_runs, args.seed)
        races = [race(world, world.chats / f"race-{i}.jsonl", delay_s=(0.0, 0.5, 1.0, 2.0)[i % 4], seed=i)
                 for i in range(args.races)]
        from crash_tmux import tui_runs

        tui = tui_runs(world, args.tmux, args.seed)
    for line in figures.lines():
        print(line)
    lost = sum(len(r.silently_lost) for r in races)
    conflicts = sum(sum(r.told.values()) for r in races)
    print(f"two-process races: {len(races)}; conflicts detected and reported: {conflicts}; "
          f"turns silently lost: {lost}; earlier turns lost: {sum(r.lost_before for r in races)}")
    if tui:
        print(f"TUI runs killed under tmux: {len(tui)}; chat files intact: {sum(o.check.intact for o in tui)}; "
              f"turns lost: {sum(o.check.lost for o in tui)}; by phase: {dict(Counter(o.check.phase for o in tui))}")
        figures.reply_runs += tui
    print(f"took {time.perf_counter() - start:.0f} s")
    for problem in figures.problems:
        print(f"PROBLEM {problem}")
    return 1 if figures.problems or lost else 0


if __name__ == "__main__":
    sys.exit(main())

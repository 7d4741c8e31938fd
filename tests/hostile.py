"""The hostile-input corpus: 500+ seeded bad files run through rpchat's public loaders.

Every input must either load with a sane result or raise the loader's documented `RpchatError`
subclass with a one-line message naming the file; never another exception, never a hang, never a
runaway allocation, never a file written outside the input's own folder.

Run ``python3 tests/hostile.py`` for the summary table (the README's reliability figures).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_cards import card_cases
from hostile_case import Case
from hostile_files import file_cases

SEED = 20240501
CASE_LIMIT_S = 30.0  # generous: the slowest case takes well under a second
RSS_GROWTH_LIMIT_MB = 1536  # the biggest input is 50 MB; a loader that inflates a bomb would blow past this
# Paths a hostile input would write to if a loader extracted it or ran its payload.
ESCAPE_TARGETS = (Path("/tmp/rpchat-evil"), Path("/tmp/evil.txt"), Path("/abs/evil"))
OUTCOMES = ("ok", "rejected", "unexpected", "bad-message", "crash", "hang", "escape")


def generate(seed: int = SEED, canary: Path | None = None) -> list[Case]:
    """All cases, in a fixed order; the same seed gives the same cases and bytes."""
    rng = random.Random(seed)
    canary = canary or Path(tempfile.gettempdir()) / "rpchat-hostile-canary"
    return [*card_cases(rng), *file_cases(rng, canary)]


# --- running one case ------------------------------------------------------------------------------------


def _error_class(target: str) -> type[Exception]:
    from rpchat.errors import CardError, ChatError, ConfigError, ModelError

    return {"card": CardError, "chat": ChatError, "gguf": ModelError}.get(target, ConfigError)


class _ThemeNotice(Exception):
    """load_themes reports bad files in a notice instead of raising; the runner treats it as the error."""


def load(target: str, path: Path, folder: Path) -> Any:
    """Run the public loader for ``target`` on ``path`` and check that what loaded is sane."""
    from rpchat.paths import Paths

    paths = Paths(folder, folder / "data", folder / "cache")
    if target == "card":
        from rpchat.cards import load_card

        card = load_card(path)
        assert isinstance(card.name, str) and card.name.strip(), "card loaded without a name"
        assert all(isinstance(g, str) for g in card.greetings), "greetings are not text"
        return card
    if target == "chat":
        from rpchat.chat import ChatStore

        chat = ChatStore(path).open()
        for turn in chat.turns:
            assert all(isinstance(s, str) for s in turn.swipes) and 0 <= turn.swipe_id < len(turn.swipes)
        # Lines left out are told in one one-line notice naming the file.
        assert all("\n" not in w and path.name in w for w in chat.warnings), f"bad notice: {chat.warnings}"
        return chat
    if target == "preset":
        from rpchat.engine.presets import preset_from_file

        return preset_from_file(path)
    if target == "theme":
        from rpchat.tui.themes import load_themes

        themes, notice = load_themes(paths)
        assert len(themes) >= 1, "a bad user theme took the bundled themes down with it"
        if notice is not None:
            raise _ThemeNotice(notice)
        return themes
    if target == "config":
        from rpchat.config import load_config

        return load_config(paths)
    if target == "persona":
        from rpchat.personas import PersonaBook

        book = PersonaBook.load(path)
        assert book.personas and all("\n" not in p.name for p in book.personas)
        return book
    if target == "format":
        from rpchat.prompt.formats import parse_format
        from rpchat.yamlfile import load_yaml

        return parse_format(load_yaml(path), "hostile", path)
    if target == "gguf":
        from rpchat.engine.gguf_info import read_gguf_info

        info = read_gguf_info(path)
        assert "\n" not in info.name and info.size_bytes == path.stat().st_size
        return info
    raise ValueError(f"unknown target {target}")


def _input_path(case: Case, folder: Path) -> Path:
    # Themes and config are found by folder (config_dir/themes/*.yaml, config_dir/config.yaml).
    if case.target == "theme":
        return case.write(folder / "themes")
    return case.write(folder)


class _Hang(BaseException):
    pass


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(_sig: int, _frame: Any) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in filenames:
            p = Path(dirpath, name)
            try:
                st = p.lstat()
            except OSError:
                continue
            found[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    rss_growth_mb: float = 0.0


def run_case(case: Case, root: Path, limit_s: float = CASE_LIMIT_S) -> Result:
    """Run one case in its own folder under ``root``; the folder is removed afterwards."""
    folder = root / "cases" / "case"
    before = _tree(root, folder)
    rss0 = _maxrss_mb()
    start = time.perf_counter()
    outcome, detail = "ok", ""
    path = folder / case.filename
    loaded: Any = None
    try:
        with _alarm(limit_s):
            path = _input_path(case, folder)
            loaded = load(case.target, path, folder)
    except _Hang:
        outcome, detail = "hang", f"still running after {limit_s:.0f} s"
    except _ThemeNotice as e:
        outcome, detail = _check_message(str(e), path)
    except Exception as e:  # noqa: BLE001 - anything but the documented error is the finding
        if isinstance(e, _error_class(case.target)):
            outcome, detail = _check_message(str(e), path)
        else:
            outcome, detail = "crash", f"{type(e).__name__}: {str(e)[:200]}"
    seconds = time.perf_counter() - start
    if outcome == "ok" and case.expect == "salvage" and not getattr(loaded, "warnings", None):
        outcome, detail = "unexpected", "loaded without saying which lines were left out"
    elif outcome == "rejected" and case.expect == "salvage":
        outcome, detail = "unexpected", f"refused a file with readable lines: {detail}"
    elif outcome == "ok" and case.expect == "error":
        outcome, detail = "unexpected", "loaded, but this input must be refused"
    elif outcome == "rejected" and case.expect == "ok":
        outcome, detail = "unexpected", f"refused a valid input: {detail}"
    after = _tree(root, folder)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    escaped = [str(t) for t in ESCAPE_TARGETS if t.exists()]
    if changed or escaped:
        outcome, detail = "escape", f"wrote outside its folder: {(changed + escaped)[:3]}"
    shutil.rmtree(folder, ignore_errors=True)
    return Result(case, outcome, detail, seconds, _maxrss_mb() - rss0)


def _check_message(message: str, path: Path) -> tuple[str, str]:
    if "\n" in message or "\r" in message:
        return "bad-message", f"message is not one line: {message[:200]!r}"
    if path.name not in message:
        return "bad-message", f"message does not name the file: {message[:200]!r}"
    return "rejected", message[:200]


# --- the whole corpus -------------------------------------------------------------------------------------


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    rss_growth_mb: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.outcome not in ("ok", "rejected")]

    def table(self) -> str:
        """The summary: per loader and in total, cases run, loaded OK, rejected cleanly, failures."""
        by_target: dict[str, Counter[str]] = {}
        for r in self.results:
            by_target.setdefault(r.case.target, Counter())[r.outcome] += 1
        head = f"{'loader':<8} {'cases':>6} {'loaded OK':>10} {'rejected':>9} {'crashes':>8} {'other':>6}"
        lines = [head, "-" * len(head)]
        rows = [*by_target.items(), ("total", Counter(r.outcome for r in self.results))]
        for target, counts in rows:
            n = sum(counts.values())
            other = n - counts["ok"] - counts["rejected"] - counts["crash"]
            lines.append(
                f"{target:<8} {n:>6} {counts['ok']:>10} {counts['rejected']:>9} {counts['crash']:>8} {other:>6}"
            )
        slowest = max(self.results, key=lambda r: r.seconds)
        hungriest = max(self.results, key=lambda r: r.rss_growth_mb)
        lines += [
            "",
            (f"cases run: {len(self.results)}; loaded OK: {self.count('ok')}; rejected with a clean one-line "
             f"error: {self.count('rejected')}; crashes: {self.count('crash')}; hangs: {self.count('hang')}; "
             f"files written outside their folder: {self.count('escape')}; other failures: "
             f"{self.count('unexpected') + self.count('bad-message')}"),
            (f"slowest case: {slowest.case.id} ({slowest.seconds:.2f} s); peak memory growth: "
             f"{self.rss_growth_mb:.0f} MB (largest step: {hungriest.case.id}, {hungriest.rss_growth_mb:.0f} "
             f"MB); total {self.seconds:.1f} s"),
        ]
        for r in self.failures:
            lines.append(f"FAIL {r.outcome}: {r.case.id}: {r.detail}")
        return "\n".join(lines)


@contextlib.contextmanager
def _sandbox(root: Path) -> Iterator[None]:
    """Run with the profile and the working folder inside ``root``, restored afterwards."""
    old_home, old_cwd = os.environ.get("RPCHAT_HOME"), os.getcwd()
    (root / "home").mkdir(parents=True, exist_ok=True)
    (root / "cwd").mkdir(exist_ok=True)
    os.environ["RPCHAT_HOME"] = str(root / "home")
    os.chdir(root / "cwd")
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("RPCHAT_HOME", None)
        else:
            os.environ["RPCHAT_HOME"] = old_home


def run_corpus(root: Path, cases: list[Case] | None = None, limit_s: float = CASE_LIMIT_S) -> Report:
    """Run every case (default: `generate()` with a canary inside ``root``) and collect the outcomes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if cases is None:
        cases = generate(canary=root / "canary-written-by-yaml-payload")
    report = Report()
    rss0 = _maxrss_mb()
    start = time.perf_counter()
    with _sandbox(root):
        for case in cases:
            report.results.append(run_case(case, root, limit_s))
    report.seconds = time.perf_counter() - start
    report.rss_growth_mb = _maxrss_mb() - rss0
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--only", default="", help="run only cases whose id contains this text")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rpchat-hostile-") as d:
        root = Path(d)
        cases = [c for c in generate(args.seed, root / "canary-written-by-yaml-payload") if args.only in c.id]
        report = run_corpus(root, cases)
    print(report.table())
    return 1 if report.failures or report.rss_growth_mb > RSS_GROWTH_LIMIT_MB else 0


if __name__ == "__main__":
    sys.exit(main())

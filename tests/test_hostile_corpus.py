"""The hostile-input corpus (tests/hostile.py) through every public loader: load sanely or fail cleanly."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from hostile import RSS_GROWTH_LIMIT_MB, generate, run_case, run_corpus
from hostile_cards import minimal_png, text
from hostile_case import Case

# Each kind of input the hardening issue names, as it appears in the case ids.
REQUIRED_KINDS = (
    "truncated", "bitflip", "wrong-crc", "length-past-end", "50mb", "ztxt-bomb", "itxt-bomb",
    "base64-junk", "nested-10000", "wrong-type", "non-utf8", "charx/unsafe-path", "symlink",
    "zip-bomb", "chat/torn-last-line", "chat/missing-header", "chat/unknown-fields", "billion-laughs",
    "tag-python-object", "tensor-count-2^63", "kv-count", "key-length", "array-2^40", "wrong-magic",
    "tiny-truncated",
)  # fmt: skip


def test_corpus_is_large_seeded_and_covers_every_kind(tmp_path):
    first = generate(canary=tmp_path / "canary")
    second = generate(canary=tmp_path / "canary")
    assert len(first) >= 500
    assert [c.id for c in first] == [c.id for c in second]
    assert len({c.id for c in first}) == len(first), "case ids must be unique"
    assert {c.target for c in first} == {"card", "chat", "preset", "theme", "config", "persona", "format", "gguf"}
    for kind in REQUIRED_KINDS:
        assert any(kind in c.id for c in first), f"no {kind} case"
    # Same seed, same bytes (checked on the small inputs; the big ones are built the same way).
    for a, b in list(zip(first, second))[:300]:
        if a.content is not None:
            assert hashlib.sha256(a.content()).digest() == hashlib.sha256(b.content()).digest(), a.id
    assert [c.id for c in generate(seed=1, canary=tmp_path)] != [c.id for c in first]


def test_every_hostile_input_loads_sanely_or_fails_with_one_clean_line(tmp_path, monkeypatch):
    canary = tmp_path / "canary-written-by-yaml-payload"
    report = run_corpus(tmp_path / "sandbox", generate(canary=canary))
    print("\n" + report.table())
    assert not report.failures, report.table()
    assert report.count("crash") == 0 and report.count("hang") == 0 and report.count("escape") == 0
    assert len(report.results) >= 500
    assert report.count("rejected") > 400 and report.count("ok") > 50  # both outcomes are exercised
    assert not canary.exists(), "a YAML Python tag ran code"
    assert report.rss_growth_mb < RSS_GROWTH_LIMIT_MB, report.table()
    # Nothing the corpus ran was left behind outside the sandbox's own folders.
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["cases", "cwd", "home"]
    assert list((tmp_path / "sandbox" / "cwd").iterdir()) == []


# --- the runner itself must catch what it claims to catch ---------------------------------------------


def _good_card() -> bytes:
    import base64
    import json

    return minimal_png(text("chara", base64.b64encode(json.dumps({"name": "Fine"}).encode())))


def test_runner_reports_a_valid_input_that_must_be_refused(tmp_path):
    result = run_case(Case("self/valid", "card", "x.png", _good_card, "error"), tmp_path)
    assert result.outcome == "unexpected"
    assert run_case(Case("self/valid-ok", "card", "x.png", _good_card, "ok"), tmp_path).outcome == "ok"


def test_runner_reports_writes_outside_the_case_folder(tmp_path):
    def escape(folder: Path) -> Path:
        (folder.parent.parent / "escaped.txt").write_text("x")
        path = folder / "x.png"
        path.write_bytes(_good_card())
        return path

    result = run_case(Case("self/escape", "card", "x.png", setup=escape), tmp_path)
    assert result.outcome == "escape" and "escaped.txt" in result.detail


def test_runner_reports_a_hang(tmp_path):
    def slow(folder: Path) -> Path:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pass
        return folder / "never.png"

    result = run_case(Case("self/hang", "card", "x.png", setup=slow), tmp_path, limit_s=0.2)
    assert result.outcome == "hang"


def test_runner_reports_a_foreign_exception_as_a_crash(tmp_path):
    def boom(folder: Path) -> Path:
        raise KeyError("not an RpchatError")

    result = run_case(Case("self/crash", "card", "x.png", setup=boom), tmp_path)
    assert result.outcome == "crash" and "KeyError" in result.detail


def test_runner_reports_an_error_that_does_not_name_the_file(tmp_path):
    from rpchat.errors import CardError

    def anonymous(folder: Path) -> Path:
        raise CardError("something broke")

    result = run_case(Case("self/anon", "card", "x.png", setup=anonymous), tmp_path)
    assert result.outcome == "bad-message"

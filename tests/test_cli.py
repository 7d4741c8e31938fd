"""The `rpchat` command as a user runs it: real processes, real files, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rpchat.cards import load_card

FIXTURES = Path(__file__).parent / "fixtures"
SERAPHINA = FIXTURES / "default_Seraphina.png"


def run(args: list[str], home: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RPCHAT_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "rpchat", *args], check=False, capture_output=True, text=True, env=env, timeout=300, **kw
    )


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("rpchat: error: ")
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0]


def test_prompt_on_seraphina_is_the_exact_limarp_prompt(tmp_path: Path) -> None:
    res = run(["prompt", str(SERAPHINA), "--user", "Theo", "--length", "medium"], tmp_path)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert text.startswith("### Instruction:\n")
    assert "\r" not in text
    assert "Seraphina's Persona: [Seraphina's Personality=" in text
    assert "Play the role of Seraphina. You must engage in a roleplaying chat with Theo below this line." in text
    assert "\n\n### Response:\nSeraphina: *You wake with a start" in text
    assert text.endswith("\n\n### Response: (length = medium)\nSeraphina:")


def test_prompt_without_length_has_a_bare_response_header(tmp_path: Path) -> None:
    res = run(["prompt", str(SERAPHINA), "--length", "none", "--format", "limarp-v3-mixtral"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith("### Response:\nSeraphina:")
    assert "Taking the above information into consideration, you must engage" in res.stdout


def test_prompt_continues_a_sillytavern_chat(tmp_path: Path) -> None:
    chat = tmp_path / "chat.jsonl"
    lines = [
        {"user_name": "Theo", "character_name": "Seraphina", "create_date": "2024-01-01@10h00m00s",
         "chat_metadata": {}},
        {"name": "Seraphina", "is_user": False, "mes": "Hello there.", "swipes": ["Hello there."],
         "swipe_id": 0, "send_date": "2024-01-01@10h00m00s", "extra": {}},
        {"name": "Theo", "is_user": True, "mes": "Where am I? </s>", "send_date": "2024-01-01@10h01m00s",
         "extra": {}},
    ]
    chat.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    res = run(["prompt", str(SERAPHINA), "--chat", str(chat), "--user", "Theo", "--length", "short"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.endswith(
        "### Response:\nSeraphina: Hello there.\n\n### Input:\nTheo: Where am I? </s>\n\n"
        "### Response: (length = short)\nSeraphina:"
    )


def test_card_show_json_prints_spec_and_all_data_fields(tmp_path: Path) -> None:
    res = run(["card", "show", str(SERAPHINA), "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == {"spec", "data"}
    assert doc["data"]["name"] == "Seraphina"
    for key in ("description", "first_mes", "alternate_greetings", "character_book", "extensions",
                "nickname", "group_only_greetings", "creator_notes", "tags"):
        assert key in doc["data"]
    assert doc["data"]["extensions"]["world"] == "Eldoria"


def test_card_convert_round_trips_through_every_format(tmp_path: Path) -> None:
    original = load_card(SERAPHINA)
    charx = tmp_path / "s.charx"
    js = tmp_path / "s.json"
    png = tmp_path / "s.png"
    for src, dest in ((SERAPHINA, charx), (charx, js), (js, png)):
        res = run(["card", "convert", str(src), str(dest)], tmp_path)
        assert res.returncode == 0, res.stderr
    final = load_card(png)
    for field in ("name", "description", "first_mes", "character_book", "extensions", "creator_notes"):
        assert getattr(final, field) == getattr(original, field)


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "no such card file"), (b"\x89PNG\r\n\x1a\nbroken", "PNG is truncated"), (b"{not json", "bad JSON")],
)
def test_bad_card_is_one_line_error_with_exit_2(tmp_path: Path, content: bytes | None, needle: str) -> None:
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    res = run(["card", "show", str(path)], tmp_path)
    assert_one_line_error(res, "broken.png", needle)


def test_unknown_arguments_are_one_line_errors(tmp_path: Path) -> None:
    res = run(["prompt", str(SERAPHINA), "--length", "gigantic"], tmp_path)
    assert res.returncode == 2
    assert "rpchat: error:" in res.stderr and "Traceback" not in res.stderr


def test_chat_export_and_import(tmp_path: Path) -> None:
    chat = tmp_path / "in.jsonl"
    lines = [
        {"user_name": "Theo", "character_name": "Seraphina", "create_date": "2024-01-01@10h00m00s",
         "chat_metadata": {"integrity": "abc"}},
        {"name": "Seraphina", "is_user": False, "mes": "Hello.", "swipes": ["Hi.", "Hello."], "swipe_id": 1,
         "send_date": "2024-01-01@10h00m00s", "extra": {}},
    ]
    chat.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    res = run(["chat", "import", str(chat), "--card", str(SERAPHINA)], tmp_path)
    assert res.returncode == 0, res.stderr
    imported = list((tmp_path / "data" / "chats").rglob("*.jsonl"))
    assert len(imported) == 1
    out = tmp_path / "out.jsonl"
    res = run(["chat", "export", str(imported[0]), str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    exported = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert exported[1]["swipes"] == ["Hi.", "Hello."] and exported[1]["swipe_id"] == 1


def test_corrupt_chat_is_one_line_error(tmp_path: Path) -> None:
    chat = tmp_path / "bad.jsonl"
    chat.write_bytes(b"\xff\xfe not a chat")
    res = run(["prompt", str(SERAPHINA), "--chat", str(chat)], tmp_path)
    assert_one_line_error(res, "bad.jsonl")
    assert chat.read_bytes() == b"\xff\xfe not a chat"


def test_prompt_with_model_fits_the_context_and_says_what_it_left_out(tmp_path: Path, tiny_model: Path) -> None:
    from rpchat.engine.vocab import Vocab

    chat = tmp_path / "long.jsonl"
    lines: list[dict[str, object]] = [
        {"user_name": "Theo", "character_name": "Seraphina", "create_date": "2024-01-01@10h00m00s",
         "chat_metadata": {}},
    ]
    for i in range(40):
        lines.append({"name": "Theo", "is_user": True, "mes": f"question {i}: " + "the forest " * 20,
                      "send_date": "2024-01-01@10h00m00s", "extra": {}})
        lines.append({"name": "Seraphina", "is_user": False, "mes": f"answer {i}: " + "the glade " * 20,
                      "swipes": [f"answer {i}: " + "the glade " * 20], "swipe_id": 0,
                      "send_date": "2024-01-01@10h00m00s", "extra": {}})
    lines.append({"name": "Theo", "is_user": True, "mes": "last words", "send_date": "2024-01-01@10h00m00s",
                  "extra": {}})
    chat.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    res = run(["prompt", str(SERAPHINA), "--chat", str(chat), "--user", "Theo", "--no-lore",
               "--model", str(tiny_model), "--n-ctx", "4096", "--max-new", "256"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "older turn(s) left out" in res.stderr
    text = res.stdout
    assert text.startswith("### Instruction:\nSeraphina's Persona:")
    assert "question 0:" not in text and "answer 39:" in text
    assert text.endswith("### Input:\nTheo: last words\n\n### Response:\nSeraphina:")
    vocab = Vocab(tiny_model)
    assert vocab.count_tokens(text) + 256 <= 4096 + 16  # per-message counts may differ by a few tokens


def test_reply_with_a_length_the_format_lacks_fails_before_sending(tmp_path: Path, tiny_model: Path) -> None:
    chat = tmp_path / "c.jsonl"
    res = run(["reply", str(SERAPHINA), "--chat", str(chat), "--say", "hello", "--format", "limamono",
               "--length", "enormous", "--model", str(tiny_model), "--max-new", "4"], tmp_path)
    assert_one_line_error(res, "enormous", "limamono")
    assert "hello" not in chat.read_text(encoding="utf-8")


def test_reply_to_a_chat_with_a_bad_line_keeps_the_rest_and_says_which(tmp_path: Path, tiny_model: Path) -> None:
    chat, card = tmp_path / "c.jsonl", tmp_path / "jay.json"
    card.write_text(json.dumps({"name": "Jay", "first_mes": "Hi."}))
    base = ["reply", str(card), "--chat", str(chat), "--model", str(tiny_model), "--max-new", "4"]
    assert run([*base, "--say", "first"], tmp_path).returncode == 0
    lines = chat.read_bytes().split(b"\n")
    chat.write_bytes(b"\n".join([*lines[:2], b'{"is_user": tru', *lines[2:]]))
    res = run([*base, "--say", "second"], tmp_path)
    assert res.returncode == 0, res.stderr
    (warning,) = [line for line in res.stderr.splitlines() if "could not be read" in line]
    kept = list(tmp_path.glob("c.corrupt-*.jsonl"))
    assert "c.jsonl" in warning and "line 3 " in warning and len(kept) == 1 and kept[0].name in warning
    texts = [json.loads(line).get("mes") for line in chat.read_text(encoding="utf-8").splitlines()[1:]]
    assert texts[1:2] == ["first"] and texts[3] == "second"


@pytest.mark.parametrize("no_tty", ["stdin", "stdout", "both"])
def test_app_without_a_terminal_exits_2_and_points_to_the_headless_commands(tmp_path: Path, no_tty: str) -> None:
    import pty

    # The other stream is a real terminal (a pty), so each side is checked on its own.
    main_fd, tty_fd = pty.openpty()
    try:
        stdin = subprocess.DEVNULL if no_tty in ("stdin", "both") else tty_fd
        stdout = subprocess.PIPE if no_tty in ("stdout", "both") else tty_fd
        env = {**os.environ, "RPCHAT_HOME": str(tmp_path)}
        res = subprocess.run([sys.executable, "-m", "rpchat"], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                             env=env, timeout=60, check=False)
    finally:
        os.close(main_fd)
        os.close(tty_fd)
    assert res.returncode == 2
    lines = res.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpchat: error: "), res.stderr
    assert "terminal" in lines[0] and "rpchat prompt" in lines[0] and "rpchat reply" in lines[0]
    assert not res.stdout  # no escape codes written into the pipe


def test_the_no_length_choice_is_called_auto_everywhere(tmp_path: Path) -> None:
    # The app shows "auto" (sidebar, status line, settings); the CLI help and the README say the same.
    for command in ("prompt", "reply"):
        res = run([command, "--help"], tmp_path)
        assert res.returncode == 0
        options = " ".join(res.stdout.split("options:")[1].split())
        length_help = options.split("--length LENGTH")[1].split(" --")[0]
        assert "auto" in length_help and "none" not in length_help, length_help
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| Ctrl+L"))
    assert "auto" in row and "none" not in row
    # "auto" works where a length is given (and so does the older "none").
    for word in ("auto", "none"):
        res = run(["prompt", str(SERAPHINA), "--length", word], tmp_path)
        assert res.returncode == 0 and res.stdout.endswith("### Response:\nSeraphina:"), res.stderr

"""Hostile chats (JSONL), YAML files (presets, themes, config, personas, formats) and GGUF headers."""

from __future__ import annotations

import functools
import json
import random
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hostile_case import Case, cut_points, flip_bits

MB = 1024 * 1024

# --- chats --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def base_chat() -> bytes:
    """A real chat written by rpchat: greeting with swipes, user turns, an unfinished reply."""
    from rpchat.chat import Chat, dump_chat

    chat = Chat.start("Marisol", "Theo", ["*waves* Hello, Theo.", "Another greeting."])
    chat.add(True, "Where am I?")
    chat.add(False, '"Gull Island." She smiles.')
    chat.add(True, "Tell me more.\nTwo lines, \u2028 and a quote \" and \\.")
    chat.add(False, "Cut off mid")
    chat.mark_unfinished(len(chat.turns) - 1)
    return dump_chat(chat)


HEADER = {"user_name": "Theo", "character_name": "Marisol", "create_date": "2024-05-01T10:00:00.000Z",
          "chat_metadata": {"integrity": "abc"}}  # fmt: skip
MESSAGE = {"name": "Marisol", "is_user": False, "send_date": "2024-05-01T10:00:01.000Z", "mes": "Hi.",
           "extra": {}, "swipes": ["Hi."], "swipe_id": 0, "swipe_info": []}  # fmt: skip


def jsonl(*objs: Any) -> bytes:
    return "\n".join(json.dumps(o) for o in objs).encode()


def chat_cases(rng: random.Random) -> Iterator[Case]:
    def c(name: str, make: Callable[[], bytes], expect: str = "any") -> Case:
        return Case(f"chat/{name}", "chat", "c.jsonl", make, expect)

    yield c("baseline", base_chat, "ok")
    raw = base_chat()
    last = raw.rindex(b"\n") + 1
    for cut in cut_points(len(raw) - last, rng, 20, must=(1, 2)):
        yield c(f"torn-last-line@{last + cut}", lambda cut=cut: raw[: last + cut], "ok")
    for cut in cut_points(raw.index(b"\n"), rng, 6):
        yield c(f"torn-header@{cut}", lambda cut=cut: raw[:cut])
    for cut in cut_points(len(raw), rng, 10):
        yield c(f"truncated@{cut}", lambda cut=cut: raw[:cut])
    for i in range(20):
        seed = rng.randrange(1 << 30)
        yield c(f"bitflip#{i}", lambda seed=seed: flip_bits(raw, random.Random(seed), 1 + seed % 3))
    yield c("missing-header", lambda: jsonl(MESSAGE, {**MESSAGE, "is_user": True}), "salvage")
    yield c("header-is-message", lambda: jsonl({**HEADER, "mes": "x"}, MESSAGE), "salvage")
    yield c("header-is-list", lambda: jsonl([HEADER], MESSAGE), "salvage")
    yield c("header-is-string", lambda: jsonl("hello", MESSAGE), "salvage")
    yield c("unknown-fields", lambda: jsonl({**HEADER, "zzz": [1, {"a": None}], "horde": True},
                                           {**MESSAGE, "gen_started": "x", "force_avatar": "y", "is_system": True},
                                           {**MESSAGE, "unknown": {"deep": [[[]]]}}), "ok")
    wrong: dict[str, list[Any]] = {
        "is_user": ["yes", 1, None, []],
        "name": [["a"], 5, {"x": 1}],
        "mes": [5, ["a"], {"x": 1}, True],
        "swipes": ["abc", [1, 2], {"a": "b"}, [None]],
        "swipe_id": [-1, 99, "0", True, 1.5, 2**70],
        "extra": [[], "x", 5],
        "send_date": [[], {"a": 1}, 1e300, -1e20, True, 2**70],
        "swipe_info": [{"a": 1}, "x"],
    }
    for key, values in wrong.items():
        for i, value in enumerate(values):
            yield c(f"wrong-type-{key}#{i}", lambda k=key, v=value: jsonl(HEADER, {**MESSAGE, k: v}))
    for i, (key, value) in enumerate((("user_name", ["a"]), ("character_name", 5), ("chat_metadata", [1]),
                                      ("create_date", {"a": 1}), ("create_date", 10**30))):  # fmt: skip
        yield c(f"header-wrong-{key}#{i}", lambda k=key, v=value: jsonl({**HEADER, k: v}, MESSAGE))
    yield c("non-utf8-middle", lambda: jsonl(HEADER) + b'\n{"name":"\xff\xfe","is_user":true,"mes":"x"}\n'
            + jsonl(MESSAGE), "salvage")
    yield c("non-utf8-last-line", lambda: jsonl(HEADER, MESSAGE) + b'\n{"is_user":true,"mes":"\xc0\xaf"}', "any")
    yield c("latin1-file", lambda: jsonl(HEADER).decode().replace("Theo", "Théo").encode("latin-1"), "error")
    yield c("utf16-file", lambda: jsonl(HEADER, MESSAGE).decode().encode("utf-16"), "error")
    yield c("nested-10000-in-mes", lambda: jsonl(HEADER) + b'\n{"is_user":true,"mes":' + b"[" * 10_000
            + b"]" * 10_000 + b"}\n" + jsonl(MESSAGE), "salvage")
    yield c("nested-10000-in-extra", lambda: jsonl(HEADER) + b'\n{"is_user":true,"mes":"x","extra":{"a":'
            + b'{"a":' * 10_000 + b"1" + b"}" * 10_001 + b"}", "any")
    yield c("nested-10000-in-metadata", lambda: b'{"user_name":"a","chat_metadata":' + b"[" * 10_000
            + b"]" * 10_000 + b"}", "error")
    yield c("nested-500-in-extra-middle", lambda: jsonl(HEADER) + b'\n{"is_user":true,"mes":"x","extra":{"a":'
            + b"[" * 500 + b"]" * 500 + b"}}\n" + jsonl(MESSAGE), "ok")
    yield c("number-1e400", lambda: jsonl(HEADER) + b'\n{"is_user":true,"mes":"x","extra":{"n":1e400}}\n'
            + jsonl(MESSAGE), "salvage")
    yield c("nan", lambda: jsonl(HEADER) + b'\n{"is_user":true,"mes":"x","extra":{"n":NaN}}\n' + jsonl(MESSAGE),
            "salvage")
    yield c("huge-int", lambda: jsonl(HEADER) + b'\n{"is_user":true,"mes":"x","extra":{"n":' + b"9" * 5000
            + b"}}\n" + jsonl(MESSAGE), "salvage")
    yield c("line-over-32mb", lambda: jsonl(HEADER) + b'\n{"is_user":true,"mes":"' + b"x" * (33 * MB)
            + b'"}\n' + jsonl(MESSAGE), "salvage")
    yield c("message-10mb", lambda: jsonl(HEADER, {**MESSAGE, "mes": "y" * 10 * MB}), "ok")
    yield c("50k-messages", lambda: jsonl(HEADER, *([{"is_user": True, "mes": "m"}] * 50_000)), "ok")
    yield c("empty", lambda: b"", "error")
    yield c("whitespace-only", lambda: b"\n\n  \r\n\t\n", "error")
    yield c("header-only", lambda: jsonl(HEADER), "ok")
    yield c("crlf-lines", lambda: jsonl(HEADER, MESSAGE).replace(b"\n", b"\r\n") + b"\r\n", "ok")
    yield c("bom", lambda: b"\xef\xbb\xbf" + jsonl(HEADER, MESSAGE), "ok")
    yield c("blank-lines-between", lambda: jsonl(HEADER) + b"\n\n\n" + jsonl(MESSAGE) + b"\n\n", "ok")
    yield c("binary-garbage", lambda: random.Random(11).randbytes(8192), "error")
    yield c("json-array-line", lambda: jsonl(HEADER, [1, 2, 3], MESSAGE), "salvage")
    yield c("lone-surrogates", lambda: jsonl(HEADER) + b'\n{"is_user":true,"mes":"a\\ud800b"}', "ok")
    yield c("control-chars-in-text", lambda: jsonl(
        {**HEADER, "user_name": "\x1b[2J\u202eTheo"}, {**MESSAGE, "mes": "\x00\x07\x1b]0;t\x07 [bold red]x[/]"}), "ok")
    yield c("nul-bytes-between", lambda: jsonl(HEADER) + b"\n\0\0\0\n" + jsonl(MESSAGE), "any")
    yield Case("chat/file/fifo", "chat", "c.jsonl", setup=_fifo, expect="error")
    yield Case("chat/file/folder", "chat", "c.jsonl", setup=_folder, expect="error")
    yield Case("chat/file/symlink-to-dev-zero", "chat", "c.jsonl", setup=_dev_zero, expect="error")


def _fifo(folder: Path) -> Path:
    import os

    path = folder / "c.jsonl"
    os.mkfifo(path)
    return path


def _folder(folder: Path) -> Path:
    path = folder / "c.jsonl"
    path.mkdir()
    return path


def _dev_zero(folder: Path) -> Path:
    path = folder / "c.jsonl"
    path.symlink_to("/dev/zero")
    return path


# --- YAML files -----------------------------------------------------------------------------------------


@functools.cache
def yaml_base(target: str) -> bytes:
    """A valid file for ``target``: the shipped one where there is one."""
    if target == "preset":
        from rpchat.engine.presets import SHIPPED_DIR

        return (SHIPPED_DIR / "ashhlimarp.yaml").read_bytes()
    if target == "theme":
        from rpchat.paths import bundled_dir

        return (bundled_dir("themes") / "rpchat-dark.yaml").read_bytes()
    if target == "format":
        from rpchat.prompt.formats import SHIPPED_DIR as FORMATS_DIR

        return (FORMATS_DIR / "limarp-v3.yaml").read_bytes()
    if target == "persona":
        return b"default: Theo\npersonas:\n  - name: Theo\n    description: A castaway.\n  - name: Ana\n"
    from rpchat.config import Config, save_config
    from rpchat.paths import Paths

    with tempfile.TemporaryDirectory() as d:
        paths = Paths(Path(d), Path(d), Path(d))
        save_config(paths, Config())
        return paths.config_file.read_bytes()


BILLION_LAUGHS = b"""a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def yaml_cases(target: str, filename: str, canary: Path) -> Iterator[Case]:
    """Hostile YAML for one loader. ``canary`` is a path Python-tag payloads try to create."""

    def c(name: str, make: Callable[[], bytes], expect: str = "any") -> Case:
        return Case(f"{target}/{name}", target, filename, make, expect)

    base = yaml_base(target)
    yield c("baseline", lambda: base, "ok")
    yield c("billion-laughs", lambda: BILLION_LAUGHS, "error")
    yield c("billion-laughs-appended", lambda: base + b"\nzz_bomb:\n" + b"".join(
        b"  " + line + b"\n" for line in BILLION_LAUGHS.splitlines()), "error")
    yield c("self-alias", lambda: b"a: &a [*a]\n", "error")
    yield c("merge-key-alias", lambda: b"base: &b {x: 1}\nsampling:\n  <<: *b\n", "error")
    touch = f"touch {canary}"
    tags = {
        "python-object-apply": f'x: !!python/object/apply:os.system ["{touch}"]\n',
        "python-object-new": f'x: !!python/object/new:subprocess.Popen [["sh", "-c", "{touch}"]]\n',
        "python-name": "x: !!python/name:os.system\n",
        "python-module": "x: !!python/module:os\n",
        "python-object": "x: !!python/object:collections.OrderedDict {}\n",
        "python-tuple": "x: !!python/tuple [1, 2]\n",
        "python-apply-top": f'!!python/object/apply:os.system ["{touch}"]\n',
        "python-in-sampling": f'sampling: !!python/object/apply:os.system ["{touch}"]\n',
        "custom-tag": "x: !evil {a: 1}\n",
    }
    for name, doc in tags.items():
        yield c(f"tag-{name}", lambda d=doc: d.encode(), "error")
        yield c(f"tag-{name}-in-valid-file", lambda d=doc: base + b"\n" + d.encode(), "error")
    yield c("binary-tag", lambda: b"name: !!binary aGVsbG8=\n")
    yield c("set-tag", lambda: b"name: !!set {a, b}\n")
    yield c("timestamp-value", lambda: base + b"\ndescription2: 2001-12-14t21:59:43.10-05:00\n")
    yield c("latin1", lambda: "name: Zoë\n".encode("latin-1"), "error")
    yield c("utf16", lambda: base.decode().encode("utf-16"))
    yield c("over-2mb", lambda: base + b"\n# " + b"x" * (3 * MB) + b"\n", "error")
    yield c("deep-flow-10000", lambda: b"x: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "error")
    yield c("deep-block-2000", lambda: b"".join(b"  " * i + b"k:\n" for i in range(2000)), "error")
    yield c("deep-flow-map-10000", lambda: b"x: " + b"{a: " * 10_000 + b"1" + b"}" * 10_000 + b"\n", "error")
    yield c("tab-indent", lambda: b"a:\n\tb: 1\n", "error")
    yield c("unclosed-quote", lambda: b'name: "abc\n', "error")
    yield c("empty", lambda: b"")
    yield c("comment-only", lambda: b"# nothing\n")
    yield c("null", lambda: b"null\n")
    yield c("scalar", lambda: b"hello\n", "error")
    yield c("list", lambda: b"- a\n- b\n", "error")
    yield c("duplicate-keys", lambda: base + b"\n" + base)
    yield c("non-string-keys", lambda: b"? [a, b]\n: c\n1: x\n", "error")
    yield c("huge-int-5000-digits", lambda: b"x: " + b"9" * 5000 + b"\n", "error")
    yield c("huge-int-in-valid-file", lambda: _first_value(base, b"9" * 5000), "error")
    yield c("float-inf", lambda: b"x: .inf\n")
    yield c("control-chars", lambda: b"name: a\x1b[2J\x07b\n", "error")
    yield c("nul-byte", lambda: b"name: a\x00b\n", "error")
    yield c("multi-document", lambda: base + b"\n---\n" + base, "error")
    yield c("bidi-and-markup-values", lambda: "name: \u202eevil [bold red]x[/]\n".encode())
    wrong = (b"[]", b"{}", b"12", b"true", b"~", b"[1, [2]]", b'"text"')
    for i, value in enumerate(wrong):
        yield c(f"wrong-types#{i}", lambda v=value: _retype(base, v))
    rng = random.Random(zlib.crc32(target.encode()))
    for i in range(6):
        seed = rng.randrange(1 << 30)
        yield c(f"bitflip#{i}", lambda seed=seed: flip_bits(base, random.Random(seed), 1 + seed % 3))


def _first_value(base: bytes, value: bytes) -> bytes:
    # Replace the value of the first "key: value" line that is not a comment.
    lines = base.splitlines()
    for i, line in enumerate(lines):
        key, sep, rest = line.partition(b": ")
        if sep and rest.strip() and not line.lstrip().startswith(b"#"):
            lines[i] = key + b": " + value
            break
    return b"\n".join(lines) + b"\n"


def _retype(base: bytes, value: bytes) -> bytes:
    # Give every top-level and nested key of the valid file the same wrong value.
    out = []
    for line in base.splitlines():
        stripped = line.lstrip()
        if b":" in stripped and not stripped.startswith((b"#", b"-")):
            key = line.split(b":", 1)[0]
            out.append(key + b": " + value)
        elif stripped.startswith(b"- "):
            out.append(line[: len(line) - len(stripped)] + b"- " + value)
        else:
            out.append(line)
    return b"\n".join(out) + b"\n"


# --- GGUF headers ---------------------------------------------------------------------------------------

U64 = (1 << 64) - 1


def gguf_string(text: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if length is None else length) + text


def gguf_head(version: int = 3, n_tensors: int = 0, n_kv: int = 0, magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv_u32(key: bytes, value: int) -> bytes:
    return gguf_string(key) + struct.pack("<II", 4, value)


def kv_str(key: bytes, value: bytes, length: int | None = None) -> bytes:
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value, length)


def kv_array(key: bytes, item_type: int, count: int, payload: bytes = b"") -> bytes:
    return gguf_string(key) + struct.pack("<IIQ", 9, item_type, count) + payload


GOOD_KV = kv_str(b"general.architecture", b"llama") + kv_u32(b"llama.context_length", 2048)
PAD = b"\0" * 64


@functools.lru_cache(maxsize=1)
def tiny_gguf() -> bytes:
    """A real GGUF file (the tiny test model) to cut and flip."""
    from tinymodel import write_tiny_model

    with tempfile.TemporaryDirectory() as d:
        return write_tiny_model(Path(d) / "t.gguf", n_vocab=300).read_bytes()


def gguf_cases(rng: random.Random) -> Iterator[Case]:
    def c(name: str, make: Callable[[], bytes], expect: str = "error") -> Case:
        return Case(f"gguf/{name}", "gguf", "m.gguf", make, expect)

    yield c("baseline-tiny-model", tiny_gguf, "ok")
    yield c("baseline-minimal", lambda: gguf_head(n_kv=2) + GOOD_KV, "ok")
    for name, magic in (("ggml", b"GGML"), ("lower", b"gguf"), ("zero", b"\0\0\0\0"), ("png", b"\x89PNG")):
        yield c(f"wrong-magic-{name}", lambda m=magic: gguf_head(magic=m) + PAD)
    yield c("empty", lambda: b"")
    yield c("magic-only", lambda: b"GGUF")
    yield c("23-bytes", lambda: gguf_head()[:23])
    for version in (0, 4, 0xFFFFFFFF):
        yield c(f"version-{version}", lambda v=version: gguf_head(version=v) + PAD)
    yield c("v1-32bit-counts", lambda: b"GGUF" + struct.pack("<III", 1, 0, 0) + PAD, "any")
    yield c("v1-huge-kv", lambda: b"GGUF" + struct.pack("<III", 1, 0, 0xFFFFFFFF) + PAD)
    for label, n in (("2^63", 1 << 63), ("2^64-1", U64), ("2^32", 1 << 32), ("2^20+1", (1 << 20) + 1), ("1000", 1000)):
        yield c(f"tensor-count-{label}", lambda n=n: gguf_head(n_tensors=n, n_kv=2) + GOOD_KV + PAD)
        yield c(f"kv-count-{label}", lambda n=n: gguf_head(n_kv=n) + GOOD_KV + PAD)
    for label, n in (("2^63", 1 << 63), ("2^40", 1 << 40), ("past-end", 200), ("2^64-1", U64)):
        yield c(f"key-length-{label}", lambda n=n: gguf_head(n_kv=1) + gguf_string(b"general.name", n) + PAD)
        yield c(f"string-value-length-{label}", lambda n=n: gguf_head(n_kv=1)
                + kv_str(b"general.name", b"x" * 16, n) + PAD)
        yield c(f"tensor-name-length-{label}", lambda n=n: gguf_head(n_tensors=1, n_kv=2) + GOOD_KV
                + gguf_string(b"t", n) + PAD)
    for label, item_type in (("u8", 0), ("f32", 6), ("string", 8), ("u64", 10)):
        yield c(f"array-2^40-{label}", lambda t=item_type: gguf_head(n_kv=1) + kv_array(b"general.a", t, 1 << 40) + PAD)
        yield c(f"array-2^63-{label}", lambda t=item_type: gguf_head(n_kv=1) + kv_array(b"general.a", t, 1 << 63) + PAD)
    yield c("array-of-strings-huge-lengths", lambda: gguf_head(n_kv=1)
            + kv_array(b"tokenizer.ggml.tokens", 8, 3, gguf_string(b"a") + gguf_string(b"b", 1 << 50)) + PAD)
    yield c("array-nested-array-type", lambda: gguf_head(n_kv=1) + kv_array(b"general.a", 9, 2) + PAD)
    yield c("array-bad-item-type", lambda: gguf_head(n_kv=1) + kv_array(b"general.a", 77, 2) + PAD)
    yield c("array-of-strings-1m-empty", lambda: gguf_head(n_kv=1)
            + kv_array(b"general.a", 8, 1 << 20, gguf_string(b"") * (1 << 20)), "ok")
    for vtype in (13, 0xFFFFFFFF):
        yield c(f"value-type-{vtype}", lambda t=vtype: gguf_head(n_kv=1) + gguf_string(b"general.x")
                + struct.pack("<I", t) + PAD)
    tensor = gguf_string(b"w")
    yield c("tensor-rank-2^31", lambda: gguf_head(n_tensors=1, n_kv=2) + GOOD_KV + tensor
            + struct.pack("<I", 1 << 31) + PAD * 4)
    yield c("tensor-dims-overflow", lambda: gguf_head(n_tensors=1, n_kv=2) + GOOD_KV + tensor
            + struct.pack("<I", 4) + struct.pack("<QQQQ", U64, U64, U64, U64) + struct.pack("<IQ", 0, 0), "any")
    yield c("name-non-utf8-and-controls", lambda: gguf_head(n_kv=3) + GOOD_KV
            + kv_str(b"general.name", b"\xff\xfe\x1b[2J\n\x00evil"), "ok")
    yield c("100k-tiny-kvs", lambda: gguf_head(n_kv=100_000) + kv_u32(b"k", 1) * 100_000, "ok")
    yield c("context-length-as-string", lambda: gguf_head(n_kv=2) + kv_str(b"general.architecture", b"llama")
            + kv_str(b"llama.context_length", b"lots"), "ok")
    raw = tiny_gguf()
    header_end = _tensor_info_offset(raw)  # cuts before here fall inside the KV section
    for cut in cut_points(header_end, rng, 24, must=(4, 8, 16, 24, 25)):
        yield c(f"tiny-truncated@{cut}", lambda cut=cut: raw[:cut])
    for cut in cut_points(len(raw) - header_end, rng, 4):
        yield c(f"tiny-truncated-tensor-data@{header_end + cut}", lambda cut=cut: raw[: header_end + cut], "any")
    for i in range(30):
        seed = rng.randrange(1 << 30)
        yield c(f"tiny-header-bitflip#{i}", lambda seed=seed: flip_bits(
            raw, random.Random(seed), 1 + seed % 3, 0, header_end), "any")


def _tensor_info_offset(raw: bytes) -> int:
    import gguf

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.gguf"
        path.write_bytes(raw)
        return int(gguf.GGUFReader(path).tensors[0].field.offset)


YAML_TARGETS = {"preset": "p.yaml", "theme": "t.yaml", "config": "config.yaml", "persona": "personas.yaml",
                "format": "f.yaml"}  # fmt: skip


def file_cases(rng: random.Random, canary: Path) -> Iterator[Case]:
    """Every hostile chat, YAML and GGUF case."""
    yield from chat_cases(rng)
    for target, filename in YAML_TARGETS.items():
        yield from yaml_cases(target, filename, canary)
    yield from gguf_cases(rng)

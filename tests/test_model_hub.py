"""`rpchat model search/files/get` run the real huggingface_hub against a loopback server speaking the Hub's API.

No machine here reaches the Hub: HF_ENDPOINT points the library at tests/hubserver.py, which answers the
same endpoints with the same headers (X-Repo-Commit, X-Linked-Etag, X-Linked-Size, a 302 Location to the
"CDN", Range requests, X-Error-Code). The repo ids are made up for the fake hub.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import COMMIT, FakeHub, FakeRepo, start_hub

from rpchat.config import load_config
from rpchat.paths import profile

REPO = "example-org/tiny-roleplay-GGUF"
Q4 = bytes(range(256)) * 1200  # ~300 KB
# 16 MiB: huggingface_hub reads in 10 MiB chunks and resumes from the last whole chunk it got.
Q6 = bytes(reversed(range(256))) * (16 << 12)
HUGE = 10**16  # listed, never fits


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub(repos={
        REPO: FakeRepo(
            files={"tiny-rp.Q4_K_M.gguf": Q4, "tiny-rp.Q6_K.gguf": Q6, "tiny-rp.Q8_0.gguf": b"x" * 100,
                   "README.md": b"# tiny", "mmproj-tiny-f16.gguf": b"p" * 10},
            listed_sizes={"tiny-rp.Q8_0.gguf": HUGE}, downloads=900, likes=5, ghosts=("tiny-rp.IQ2_XS.gguf",)),
        "example-org/other-roleplay-GGUF": FakeRepo(files={"o.Q4_0.gguf": b"o" * 50}, downloads=1200),
        "example-org/locked-GGUF": FakeRepo(files={"l.Q4_K_M.gguf": b"l" * 50}, gated=True),
    })


@pytest.fixture
def env(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    server, url = start_hub(hub)
    out = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    out.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_XET="1", RPCHAT_HOME=str(tmp_path / "home"))
    yield out
    server.shutdown()


def rpchat(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rpchat", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=120)


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.startswith("rpchat: error:")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cached(tmp_path: Path, name: str) -> Path:
    return tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / name


def test_search_lists_gguf_repos_most_downloaded_first(env: dict[str, str], hub: FakeHub) -> None:
    res = rpchat(env, "model", "search", "roleplay")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "example-org/other-roleplay-GGUF  1,200 downloads  0 likes",
        "example-org/tiny-roleplay-GGUF  900 downloads  5 likes",
    ]
    get = [p for m, p, _ in hub.requests if p == "/api/models"]
    assert get  # the library's own search endpoint
    assert rpchat(env, "model", "search", "nothing-like-this").returncode == 1


def test_files_lists_quants_with_sizes_and_recommends_the_largest_that_fits(env: dict[str, str]) -> None:
    res = rpchat(env, "model", "files", REPO)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("tiny-rp.IQ2_XS.gguf  IQ2_XS")
    assert "tiny-rp.Q4_K_M.gguf  Q4_K_M  0 MiB  fits" in lines
    assert "tiny-rp.Q6_K.gguf  Q6_K  16 MiB  fits  <- recommended" in lines
    assert any(ln.startswith("tiny-rp.Q8_0.gguf  Q8_0") and ln.endswith("too big") for ln in lines)
    assert not any("mmproj" in ln or "README" in ln for ln in lines)


def test_get_downloads_into_the_hub_cache_and_configures_the_model(env: dict[str, str], tmp_path: Path) -> None:
    res = rpchat(env, "model", "get", REPO, "--quant", "q4_k_m")
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip())
    assert path == cached(tmp_path, "tiny-rp.Q4_K_M.gguf")
    assert path.read_bytes() == Q4
    assert "100%" in res.stderr and "downloading example-org/tiny-roleplay-GGUF/tiny-rp.Q4_K_M.gguf" in res.stderr
    assert load_config(profile()).engine.model == str(path)
    # Without a choice, the recommended (largest fitting) file.
    res = rpchat(env, "model", "get", REPO, "--no-configure")
    assert Path(res.stdout.strip()).read_bytes() == Q6


def test_a_cut_connection_is_resumed(env: dict[str, str], hub: FakeHub, tmp_path: Path) -> None:
    sha = hashlib.sha256(Q6).hexdigest()
    hub.cut_once.add(sha)
    res = rpchat(env, "model", "get", REPO, "--file", "tiny-rp.Q6_K.gguf")
    assert res.returncode == 0, res.stderr
    assert cached(tmp_path, "tiny-rp.Q6_K.gguf").read_bytes() == Q6
    ranges = [r for m, p, r in hub.requests if p == f"/cdn/{sha}" and m == "GET"]
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1] == "bytes=10485760-"  # the second request resumes after the bytes already written
    assert "Trying to resume download" in res.stderr


def test_a_checksum_mismatch_keeps_nothing(env: dict[str, str], hub: FakeHub, tmp_path: Path) -> None:
    hub.corrupt.add(hashlib.sha256(Q4).hexdigest())
    res = rpchat(env, "model", "get", REPO, "--file", "tiny-rp.Q4_K_M.gguf")
    one_line_error(res, "tiny-rp.Q4_K_M.gguf", "checksum mismatch", "deleted")
    assert not cached(tmp_path, "tiny-rp.Q4_K_M.gguf").exists()
    blobs = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert not any(blobs.iterdir())
    assert load_config(profile()).engine.model is None


def test_missing_repos_and_files_get_one_line(env: dict[str, str]) -> None:
    one_line_error(rpchat(env, "model", "get", "example-org/no-such-GGUF"), "example-org/no-such-GGUF",
                   "no such model repo")
    one_line_error(rpchat(env, "model", "get", REPO, "--file", "nope.gguf"), "no GGUF file 'nope.gguf'")
    one_line_error(rpchat(env, "model", "get", REPO, "--quant", "Q3_K_S"), "no Q3_K_S file", "Q4_K_M, Q6_K")
    # Listed, but the download answers 404 (EntryNotFound).
    one_line_error(rpchat(env, "model", "get", REPO, "--quant", "IQ2_XS"), "tiny-rp.IQ2_XS.gguf",
                   "no such file in the repo")


def test_a_gated_repo_says_what_to_do(env: dict[str, str]) -> None:
    line = one_line_error(rpchat(env, "model", "get", "example-org/locked-GGUF"), "example-org/locked-GGUF")
    assert "a gated repo: accept its terms" in line and "HF_TOKEN" in line
    # With a token that has not accepted the terms the Hub answers 403: the same advice.
    line = one_line_error(rpchat({**env, "HF_TOKEN": "hf_test_token"}, "model", "files", "example-org/locked-GGUF"))
    assert "a gated repo" in line


CANCEL_SCRIPT = """
import sys, threading
from rpchat.engine import hub
files = hub.list_gguf_files(sys.argv[1])
target = next(f for f in files if f.path == sys.argv[2])
cancel = threading.Event()
seen = []
def progress(done, total):
    seen.append(done)
    if done > 0:
        cancel.set()
try:
    hub.download(sys.argv[1], target, progress=progress, cancel=cancel)
except hub.Cancelled as e:
    print("cancelled:", e, "after", len(seen), "updates")
"""


def test_a_cancelled_download_leaves_no_file(env: dict[str, str], hub: FakeHub, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-c", CANCEL_SCRIPT, REPO, "tiny-rp.Q6_K.gguf"], check=False,
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.stdout.startswith("cancelled: download cancelled; nothing was kept"), res.stdout + res.stderr
    repo_dir = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}"
    assert not cached(tmp_path, "tiny-rp.Q6_K.gguf").exists()
    leftovers = [p.name for p in (repo_dir / "blobs").iterdir()] if (repo_dir / "blobs").exists() else []
    assert leftovers == []  # not even an .incomplete file


def test_an_unreachable_hub_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network (a port nobody listens on): search and file listing say the Hub cannot be reached, as a
    ModelError the CLI prints as one line and the F8 picker shows, never an "internal error"."""
    import socket
    import time

    from huggingface_hub import constants

    from rpchat.engine import hub as hub_api
    from rpchat.errors import ModelError

    with socket.socket() as s:  # a free port, closed again: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(time, "sleep", lambda _s: None)  # huggingface_hub retries with back-off first
    with pytest.raises(ModelError, match=r"cannot reach the Hub \(http://127\.0\.0\.1:\d+\)"):
        hub_api.search("limarp")
    with pytest.raises(ModelError, match=r"example-org/x-GGUF: cannot reach the Hub"):
        hub_api.list_gguf_files("example-org/x-GGUF")

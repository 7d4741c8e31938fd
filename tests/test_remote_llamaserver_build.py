"""How tests/llamaserver.py provides the real llama-server: a build is used only when complete, two
processes never build at once, and on CI a missing toolchain fails instead of skipping.

A stand-in ``cmake`` on PATH records its calls and "builds" a script; the sources are already unpacked,
so nothing is downloaded.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import llamaserver
import pytest

VERSION = "9.9.9"
FAKE_CMAKE = """#!/bin/sh
echo "cmake $*" >> "$CMAKE_CALLS"
if [ "$1" = "--build" ]; then
  mkdir -p "$2/bin" && printf '#!/bin/sh\\necho built\\n' > "$2/bin/llama-server" && chmod +x "$2/bin/llama-server"
fi
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache with the sdist's llama.cpp already unpacked and a recording cmake; returns the calls file."""
    tools = tmp_path / "tools"
    tools.mkdir()
    executable(tools / "cmake", FAKE_CMAKE)
    for name in ("make", "c++"):
        executable(tools / name, "#!/bin/sh\n")
    calls = tmp_path / "cmake-calls"
    monkeypatch.setenv("CMAKE_CALLS", str(calls))
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RPCHAT_TEST_CACHE", str(tmp_path / "cache"))
    source = llamaserver.build_dir(VERSION) / "src" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text("")
    return calls


def builds(calls: Path) -> int:
    return (
        sum(line.startswith("cmake --build") for line in calls.read_text().splitlines())
        if calls.exists()
        else 0
    )


def test_builds_once_and_reuses_the_cached_binary(toolchain: Path) -> None:
    binary = llamaserver.llama_server_binary(VERSION)
    assert binary == llamaserver.build_dir(VERSION) / "build" / "bin" / "llama-server"
    assert llamaserver.llama_server_binary(VERSION) == binary
    assert builds(toolchain) == 1
    assert (llamaserver.build_dir(VERSION) / "build.log").read_text().splitlines()[-1] == "rc=0"
    assert "-DLLAMA_CURL=OFF" in toolchain.read_text() and "--target llama-server" in toolchain.read_text()


def test_a_build_without_its_completion_marker_is_never_used(toolchain: Path) -> None:
    binary = llamaserver.llama_server_binary(VERSION)
    log = llamaserver.build_dir(VERSION) / "build.log"
    # A locked build that died half way: its binary may exist, its log has no rc=0.
    log.write_bytes(llamaserver.LOCKED_BUILD + b"[ 97%] Linking CXX executable\n")
    assert llamaserver.llama_server_binary(VERSION) == binary
    assert builds(toolchain) == 2


def test_two_processes_build_once(toolchain: Path) -> None:
    code = f"import llamaserver; print(llamaserver.llama_server_binary({VERSION!r}))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] != ""
    assert builds(toolchain) == 1


@pytest.mark.parametrize(
    ("ci", "error"), [("true", llamaserver.BuildFailed), ("", llamaserver.BuildUnavailable)]
)
def test_a_missing_toolchain_fails_on_ci_and_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str, error: type[Exception]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, make or c++
    monkeypatch.setenv("RPCHAT_TEST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(error, match="needs cmake, make, c"):
        llamaserver.llama_server_binary(VERSION)

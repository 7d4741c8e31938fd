"""The real ``llama-server`` for tests: built once from the llama.cpp that the installed llama-cpp-python
vendors, cached outside the repository by version, and run on a loopback port.

The build lives in ``~/.cache/rpchat-tests/llama-server-VERSION/`` (``RPCHAT_TEST_CACHE`` moves the root):
``build/bin/llama-server`` plus ``build.log``, whose last line ``rc=0`` is the completion marker. A build
without that line is never used. Other tools of the same tree (``llama-bench``, for ``rpchat bench
--against-llama-cpp``) are built afterwards into the same ``build/bin`` by `llama_tool_binary`, each with its
own ``TOOL.log`` and marker: that build only adds a binary, so llama-server is never rebuilt nor missing. ``llama-server-VERSION.lock`` (an flock) keeps two processes from
building at once; a build started by someone else without the lock is waited for while its log grows.

On CI (``CI=true``) every failure to build is `BuildFailed`, so the tests fail instead of skipping;
elsewhere a missing toolchain or download is `BuildUnavailable` and the tests skip with its reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from rpchat.llamacpp_tools import LlamaServer, free_port

BUILD_STALE_S = 900  # an unlocked build's log untouched this long, with no rc= line, is a dead build
LOCKED_BUILD = b"# rpchat-tests build, run under the lock\n"


class BuildUnavailable(Exception):
    """llama-server cannot be built here (no compiler, cmake or download); tests may skip."""


class BuildFailed(Exception):
    """Building llama-server failed; tests must fail."""


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version (the sdist whose vendored llama.cpp is built)."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        raise _unavailable("llama-cpp-python is not installed") from None


def cache_root() -> Path:
    return Path(os.environ.get("RPCHAT_TEST_CACHE") or Path.home() / ".cache" / "rpchat-tests")


def build_dir(version: str) -> Path:
    return cache_root() / f"llama-server-{version}"


def _log_status(log: Path) -> str | None:
    """The ``rc=N`` of a finished build's log, or None while there is none."""
    try:
        lines = log.read_bytes()[-4096:].decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return None
    last = lines[-1].strip() if lines else ""
    return last if last.startswith("rc=") else None


def _binary(version: str) -> Path | None:
    """The finished binary, or None when there is no complete build."""
    where = build_dir(version)
    binary = where / "build" / "bin" / "llama-server"
    if _log_status(where / "build.log") == "rc=0" and binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


def _unavailable(reason: str) -> Exception:
    return BuildFailed(reason) if on_ci() else BuildUnavailable(reason)


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    if rc:
        with open(log, "ab") as out:
            out.write(f"rc={rc}\n".encode())
        tail = log.read_bytes()[-1500:].decode("utf-8", "replace")
        raise BuildFailed(f"{cmd[0]} {cmd[1]} failed (rc={rc}); see {log}:\n{tail}")


def _sources(version: str, where: Path, log: Path) -> Path:
    """The llama.cpp tree vendored in the llama-cpp-python sdist of ``version`` (downloaded once)."""
    vendored = where / "src" / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (vendored / "CMakeLists.txt").is_file():
        return vendored
    download = where / "download"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
           f"llama-cpp-python=={version}", "-d", str(download)]  # fmt: skip
    try:
        _run(cmd, log)
    except BuildFailed as exc:
        raise _unavailable(f"cannot download the llama-cpp-python {version} sdist ({exc})") from None
    archives = list(download.glob("*.tar.gz"))
    if not archives:
        raise _unavailable(f"pip download gave no sdist for llama-cpp-python {version}")
    shutil.rmtree(where / "src", ignore_errors=True)
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(where / "src", filter="data")
        else:  # Python before 3.10.12 has no extraction filters
            tar.extractall(where / "src")
    shutil.rmtree(download, ignore_errors=True)
    if not (vendored / "CMakeLists.txt").is_file():
        raise BuildFailed(f"the llama-cpp-python {version} sdist has no vendor/llama.cpp")
    return vendored


def _build(version: str) -> Path:
    where = build_dir(version)
    missing = [tool for tool in ("cmake", "make", "c++") if shutil.which(tool) is None]
    if missing:
        raise _unavailable(f"building llama-server needs {', '.join(missing)} on PATH")
    log = where / "build.log"
    shutil.rmtree(where / "build", ignore_errors=True)
    where.mkdir(parents=True, exist_ok=True)
    log.write_bytes(LOCKED_BUILD)
    source = _sources(version, where, log)
    build = where / "build"
    _run(
        ["cmake", "-S", str(source), "-B", str(build), "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"], log
    )
    _run(["cmake", "--build", str(build), "-j2", "--target", "llama-server"], log)
    with open(log, "ab") as out:
        out.write(b"rc=0\n")
    binary = _binary(version)
    if binary is None:
        raise BuildFailed(f"the build finished but {build / 'bin' / 'llama-server'} is missing")
    return binary


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process builds
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def llama_server_binary(version: str | None = None) -> Path:
    """The llama-server binary for ``version`` (default: the installed llama-cpp-python), built if needed."""
    version = version or llama_cpp_version()
    binary = _binary(version)
    if binary is not None:
        return binary
    where = build_dir(version)
    with _locked(cache_root() / f"llama-server-{version}.lock"):
        log = where / "build.log"
        # Holding the lock, an unfinished locked build is a dead one. A build started without the lock
        # (by hand, with the same commands) is waited for while its log keeps growing.
        while (
            log.exists()
            and _log_status(log) is None
            and log.read_bytes()[: len(LOCKED_BUILD)] != LOCKED_BUILD
            and time.time() - log.stat().st_mtime < BUILD_STALE_S
        ):
            time.sleep(5)
        binary = _binary(version)
        if binary is not None:
            return binary
        return _build(version)


def _tool_binary(version: str, tool: str) -> Path | None:
    binary = build_dir(version) / "build" / "bin" / tool
    log = build_dir(version) / f"{tool}.log"
    if _log_status(log) == "rc=0" and binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


def llama_tool_binary(tool: str, version: str | None = None) -> Path:
    """Another llama.cpp tool (e.g. ``llama-bench``) from llama-server's build tree, built once beside it.

    The existing tree is only extended (``cmake --build --target TOOL``, never cleaned or reconfigured), so a
    llama-server in use by other tests stays in place while the tool builds.
    """
    version = version or llama_cpp_version()
    if tool == "llama-server":
        return llama_server_binary(version)
    binary = _tool_binary(version, tool)
    if binary is not None:
        return binary
    llama_server_binary(version)  # the tree, configured and with the shared libraries built
    with _locked(cache_root() / f"llama-server-{version}.lock"):
        binary = _tool_binary(version, tool)
        if binary is not None:
            return binary
        log = build_dir(version) / f"{tool}.log"
        log.write_bytes(LOCKED_BUILD)
        _run(["cmake", "--build", str(build_dir(version) / "build"), "-j2", "--target", tool], log)
        with open(log, "ab") as out:
            out.write(b"rc=0\n")
        binary = _tool_binary(version, tool)
        if binary is None:
            raise BuildFailed(f"the build finished but {tool} is missing from {build_dir(version) / 'build' / 'bin'}")
        return binary


# The process runner is rpchat's (the benchmark starts the same server): re-exported for the tests.
__all__ = ["BuildFailed", "BuildUnavailable", "LlamaServer", "free_port", "llama_server_binary", "llama_tool_binary"]

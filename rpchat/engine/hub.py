"""GGUF models from the Hugging Face Hub, through `huggingface_hub` (HF_ENDPOINT, HF_TOKEN and the hub cache).

Search GGUF repos, list a repo's quant files with sizes, recommend the largest that fits in memory, and
download one into the hub cache with progress, cancellation and a SHA-256 check against the Hub's. The
library downloads into a temporary file and renames it only when complete, so a cancelled or failed
download never leaves a file that looks like a model; a connection cut mid-file is resumed with a Range
request. Every failure becomes one `ModelError` line.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpchat.engine.catalog import free_memory
from rpchat.errors import ModelError

_QUANT = re.compile(r"(?<![A-Za-z0-9])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# Memory a model needs beyond its file: the KV cache and compute buffers at a few thousand tokens.
OVERHEAD = 1.15
OVERHEAD_BYTES = 512 << 20
CHUNK = 1 << 20


class Cancelled(ModelError):
    """The user stopped a download; nothing was kept."""


__all__ = ["Cancelled", "HubFile", "HubRepo", "download", "free_memory", "list_gguf_files", "needed_memory",
           "pick_file", "recommend", "search"]


@dataclass(frozen=True)
class HubRepo:
    """One search result."""

    id: str
    downloads: int
    likes: int
    gated: bool


@dataclass(frozen=True)
class HubFile:
    """One GGUF model in a repo (a split model counts once, with its parts' total size)."""

    path: str
    size: int
    quant: str
    sha256: str | None
    parts: tuple[str, ...] = ()  # every file of a split model, in order
    part_sha256: tuple[str | None, ...] = ()

    @property
    def size_label(self) -> str:
        return f"{self.size / 2**30:.1f} GiB" if self.size >= 2**30 else f"{self.size / 2**20:.0f} MiB"


def needed_memory(size: int) -> int:
    """A rough figure for running a GGUF of ``size`` bytes: the weights plus KV cache and buffers."""
    return int(size * OVERHEAD) + OVERHEAD_BYTES


def recommend(files: list[HubFile], memory: int | None) -> HubFile | None:
    """The largest file that fits in ``memory`` (None when nothing fits or memory is unknown)."""
    if memory is None:
        return None
    fitting = [f for f in files if needed_memory(f.size) <= memory]
    return max(fitting, key=lambda f: f.size, default=None)


@contextmanager
def _hub_errors(repo: str, filename: str | None = None) -> Iterator[None]:
    """Turn the library's exceptions into one clear line."""
    import httpx
    from huggingface_hub import errors

    where = f"{repo}/{filename}" if filename else repo
    unreachable: tuple[type[Exception], ...] = (httpx.HTTPError, *_hub_transport_errors(), ConnectionError,
                                                TimeoutError)
    try:
        yield
    except Cancelled:
        raise
    except errors.GatedRepoError:
        raise ModelError("a gated repo: accept its terms on the Hub's page for it, then log in "
                         "(`hf auth login` or HF_TOKEN) and try again", repo) from None
    except errors.RepositoryNotFoundError:
        raise ModelError("no such model repo on the Hub (or it is private: log in with HF_TOKEN)", repo) from None
    except errors.RevisionNotFoundError:
        raise ModelError("the repo has no main branch", repo) from None
    except errors.LocalEntryNotFoundError as e:
        # The metadata request failed (network, or an endpoint that is not a Hub) and nothing is cached.
        cause = e.__cause__ or e
        raise ModelError(f"cannot fetch it from {_endpoint()}: {str(cause).splitlines()[0]}", where) from None
    except errors.EntryNotFoundError:
        raise ModelError("no such file in the repo", where) from None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status in (401, 403):
            raise ModelError(f"the Hub refused access (HTTP {status}): log in with HF_TOKEN", where) from None
        raise ModelError(f"the Hub answered HTTP {status}", where) from None
    except unreachable as e:
        raise ModelError(f"cannot reach the Hub ({_endpoint()}): {type(e).__name__}: {e}", where) from None
    except OSError as e:
        raise ModelError(f"download failed: {e.strerror or e}", where) from None
    except ValueError as e:  # a malformed repo id (HFValidationError)
        raise ModelError(str(e).splitlines()[0], repo) from None


def _hub_transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP errors of the client huggingface_hub itself uses: `httpx`, or `httpx2` in its newer releases."""
    try:
        import httpx2
    except ImportError:
        return ()
    return (httpx2.HTTPError,)


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def search(text: str, limit: int = 20) -> list[HubRepo]:
    """GGUF model repos matching ``text``, most downloaded first."""
    from huggingface_hub import HfApi

    with _hub_errors(text):
        found = HfApi().list_models(search=text, filter="gguf", sort="downloads", limit=limit)
        return [HubRepo(m.id, int(m.downloads or 0), int(m.likes or 0), bool(m.gated)) for m in found]


def quant_of(path: str) -> str:
    """The quant label in a GGUF file name ("Q4_K_M", "IQ3_XS", "F16"), or "?"."""
    hits = _QUANT.findall(Path(path).name)
    return hits[-1].upper() if hits else "?"


def list_gguf_files(repo: str) -> list[HubFile]:
    """The repo's GGUF models with sizes and SHA-256, smallest first; split models are one entry."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    with _hub_errors(repo):
        entries = [e for e in HfApi().list_repo_tree(repo, recursive=True) if isinstance(e, RepoFile)]
    singles: list[HubFile] = []
    splits: dict[str, list[Any]] = {}
    for e in entries:
        name = Path(e.path).name
        if not name.lower().endswith(".gguf") or name.lower().startswith("mmproj"):
            continue
        m = _SPLIT.search(e.path)
        if m is not None:
            splits.setdefault(e.path[: m.start()], []).append(e)
            continue
        singles.append(HubFile(e.path, int(e.size or 0), quant_of(e.path), e.lfs.sha256 if e.lfs else None))
    for stem, parts in splits.items():
        parts.sort(key=lambda p: p.path)
        singles.append(HubFile(parts[0].path, sum(int(p.size or 0) for p in parts), quant_of(stem + ".gguf"), None,
                               tuple(p.path for p in parts), tuple(p.lfs.sha256 if p.lfs else None for p in parts)))
    return sorted(singles, key=lambda f: (f.size, f.path))


def pick_file(files: list[HubFile], *, filename: str | None, quant: str | None,
              memory: int | None, repo: str) -> HubFile:
    """The file ``rpchat model get`` downloads: the one named, the quant asked for, or the recommended one."""
    if not files:
        raise ModelError("the repo has no GGUF files", repo)
    if filename:
        for f in files:
            if filename in (f.path, Path(f.path).name):
                return f
        raise ModelError(f"no GGUF file {filename!r} in the repo", repo)
    if quant:
        matches = [f for f in files if f.quant == quant.upper()]
        if not matches:
            have = ", ".join(sorted({f.quant for f in files}))
            raise ModelError(f"no {quant} file (quants here: {have})", repo)
        return matches[0]
    best = recommend(files, memory)
    if best is None:
        smallest = files[0]
        raise ModelError(f"even the smallest file ({smallest.path}, {smallest.size_label}) needs more memory than "
                         "is free; pick one with --file or --quant", repo)
    return best


Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)


def _progress_class(progress: Progress | None, cancel: threading.Event | None) -> type[Any]:
    """A tqdm stand-in for huggingface_hub that reports bytes and stops the download when cancelled."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # no terminal bar: the caller draws its own
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)
            self.total_bytes = kwargs.get("total")

        def update(self, n: float | None = 1) -> bool | None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("download cancelled; nothing was kept")
            self.done += int(n or 0)
            if progress is not None:
                progress(self.done, self.total_bytes)
            return None

    return _Bar


def download(repo: str, file: HubFile, *, progress: Progress | None = None,
             cancel: threading.Event | None = None) -> Path:
    """Download ``file`` (every part of a split model) into the hub cache and return the first part's path.

    Checks the SHA-256 the Hub lists for it; a mismatch deletes the file and raises `ModelError`.
    """
    from huggingface_hub import hf_hub_download

    names = file.parts or (file.path,)
    shas = file.part_sha256 or (file.sha256,)
    paths: list[Path] = []
    for name, sha in zip(names, shas):
        with _hub_errors(repo, name):
            local = Path(hf_hub_download(repo, name, tqdm_class=_progress_class(progress, cancel)))
        if sha:
            _verify(local, sha, repo, name)
        paths.append(local)
    return paths[0]


def _verify(path: Path, sha256: str, repo: str, name: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() == sha256.lower():
        return
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)
    raise ModelError(f"checksum mismatch (SHA-256 {digest.hexdigest()[:12]}..., the Hub lists {sha256[:12]}...): "
                     "the download was deleted; try again", f"{repo}/{name}")

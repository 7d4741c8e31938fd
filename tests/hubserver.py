"""A loopback server speaking the parts of the Hugging Face Hub's HTTP API that huggingface_hub uses.

- ``GET /api/models?search=&filter=gguf&sort=&limit=``: the search (a JSON list of models)
- ``GET /api/models/{repo}/tree/{rev}?recursive=``: files with size, oid and ``lfs`` {oid, size, pointerSize}
- ``HEAD /{repo}/resolve/{rev}/{file}``: 302 to a CDN URL with X-Repo-Commit, X-Linked-Etag, X-Linked-Size, ETag
- ``GET /cdn/{sha}``: the bytes, honouring ``Range: bytes=N-`` (206)
Errors carry X-Error-Code like the Hub's (RepoNotFound, EntryNotFound, GatedRepo).

``cut_once`` makes the first CDN response stop after 3/4 of the body and drop the connection; ``corrupt`` serves other
bytes than the listed SHA-256 (same size); ``slow`` sleeps between chunks (for cancelling).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    listed_sizes: dict[str, int] = field(default_factory=dict)  # a size to list instead of the real one
    downloads: int = 0
    likes: int = 0
    gated: bool = False
    ghosts: tuple[str, ...] = ()  # listed in the tree but 404 on download


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    slow: float = 0.0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)

    def blobs(self) -> dict[str, bytes]:
        return {hashlib.sha256(data).hexdigest(): data for r in self.repos.values() for data in r.files.values()}


def start_hub(hub: FakeHub) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``hub`` on 127.0.0.1 in a daemon thread; returns the server and its base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(),
                       {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"})

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found")
                return None
            if repo.gated:
                # Like the Hub: 401 without a token, 403 with one that has not accepted the terms.
                status = 403 if self.headers.get("authorization") else 401
                self._error(status, "GatedRepo", "Access to model is restricted. You must have access to it and "
                                                 "be authenticated to access it. Please log in.")
                return None
            return repo

        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def _route(self) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            query = parse_qs(url.query)
            if path == "/api/models":
                text = (query.get("search") or [""])[0].lower()
                found = [{"id": rid, "modelId": rid, "downloads": r.downloads, "likes": r.likes, "gated": r.gated,
                          "tags": ["gguf"], "private": False}
                         for rid, r in hub.repos.items() if text in rid.lower()]
                found.sort(key=lambda m: -int(m["downloads"]))  # type: ignore[call-overload]
                limit = int((query.get("limit") or ["1000"])[0])
                return self._send(200, json.dumps(found[:limit]).encode(), {"Content-Type": "application/json"})
            if path.startswith("/api/models/") and "/tree/" in path:
                repo_id = path[len("/api/models/"):].split("/tree/")[0]
                repo = self._repo(repo_id)
                if repo is None:
                    return None
                entries = []
                for name, data in repo.files.items():
                    size = repo.listed_sizes.get(name, len(data))
                    sha = hashlib.sha256(data).hexdigest()
                    entries.append({"type": "file", "path": name, "size": size, "oid": sha[:40],
                                    "lfs": {"oid": sha, "size": size, "pointerSize": 134}})
                entries += [{"type": "file", "path": g, "size": 10, "oid": "0" * 40} for g in repo.ghosts]
                return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
            if "/resolve/" in path:
                repo_id, rest = path.lstrip("/").split("/resolve/", 1)
                name = rest.split("/", 1)[1]
                repo = self._repo(repo_id)
                if repo is None:
                    return None
                if name not in repo.files:
                    return self._error(404, "EntryNotFound", f"{name} does not exist on main")
                data = repo.files[name]
                sha = hashlib.sha256(data).hexdigest()
                # The CDN is another host, as on the Hub (the library follows same-host redirects itself).
                host = f"http://localhost:{self.server.server_address[1]}"
                return self._send(302, b"", {
                    "Location": f"{host}/cdn/{sha}", "X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)), "ETag": f'"{sha[:40]}"'})
            if path.startswith("/cdn/"):
                sha = path[len("/cdn/"):]
                data = hub.blobs().get(sha)
                if data is None:
                    return self._send(404)
                if sha in hub.corrupt:
                    data = bytes(b ^ 0xFF for b in data)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-")[0])
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if self.command == "HEAD":
                    return None
                if sha in hub.cut_once:
                    hub.cut_once.discard(sha)
                    self.wfile.write(body[: len(body) * 3 // 4])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                for i in range(0, len(body), 4096):
                    if hub.slow:
                        time.sleep(hub.slow)
                    try:
                        self.wfile.write(body[i: i + 4096])
                    except (BrokenPipeError, ConnectionResetError):
                        return None
                return None
            return self._send(404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"

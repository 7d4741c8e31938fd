"""A loopback HTTP(S) server that misbehaves on purpose, for the remote engine's trust-boundary tests.

It listens on 127.0.0.1 only, every loop it runs is bounded, and it shuts itself down after
`LIFETIME_S` even when a test forgets to. Routes are plain functions that write whatever they like
(a 100 MB line, a gzip bomb, nothing at all) through a `Call`.
"""

from __future__ import annotations

import functools
import json
import ssl
import struct
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

LIFETIME_S = 120.0
MIB = 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Call:
    """One request being answered: what was asked, and ways to answer (or not)."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: HostileServer, request: Request) -> None:
        self._h = handler
        self.server = server
        self.request = request

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """A complete answer with a Content-Length."""
        self._h.send_response(status)
        for name, value in (headers or {}).items():
            self._h.send_header(name, value)
        self._h.send_header("Content-Length", str(len(body)))
        self._h.send_header("Connection", "close")
        self._h.end_headers()
        self.write(body)

    def json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def start_stream(self, headers: dict[str, str] | None = None) -> None:
        """Status 200 and SSE headers; the body follows in `chunk` calls (chunked encoding)."""
        self._h.send_response(200)
        self._h.send_header("Content-Type", "text/event-stream")
        self._h.send_header("Transfer-Encoding", "chunked")
        self._h.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self._h.send_header(name, value)
        self._h.end_headers()

    def chunk(self, data: bytes) -> bool:
        """Send one chunk; False once the client has gone or the server is stopping."""
        return self.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        self.write(b"0\r\n\r\n")

    def write(self, data: bytes) -> bool:
        if self.server.stopping.is_set():
            return False
        try:
            self._h.wfile.write(data)
            self._h.wfile.flush()
        except OSError:  # the client hung up (broken pipe, reset, TLS closed)
            self.server.client_gone.set()
            return False
        return True

    def hang(self) -> None:
        """Answer nothing at all until the client gives up or the server stops (bounded)."""
        self._h.connection.settimeout(0.05)
        for _ in range(int(LIFETIME_S / 0.05)):
            if self.server.stopping.is_set():
                return
            try:
                if self._h.connection.recv(1, 0) == b"":  # the client closed its end
                    self.server.client_gone.set()
                    return
            except TimeoutError:
                continue
            except OSError:
                return


Route = Callable[[Call], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        server: HostileServer = self.server.hostile  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        request = Request(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        server.requests.append(request)
        route = server.routes.get((method, self.path))
        call = Call(self, server, request)
        if route is None:
            call.json({"error": {"code": 404, "message": "File Not Found"}}, 404)
        else:
            route(call)
        self.close_connection = True


@dataclass
class HostileServer:
    """Routes by (method, path); `requests` records what came in, headers included."""

    tls: tuple[Path, Path] | None = None  # (certificate, key) to serve https://
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    client_gone: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def __enter__(self) -> Self:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hostile = self  # type: ignore[attr-defined]
        scheme = "http"
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        self._watchdog = threading.Timer(LIFETIME_S, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._watchdog.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


# --- answers a well-behaved llama-server would give ---------------------------------------------------


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


FINAL = {"content": "", "stop": True, "stop_type": "eos", "tokens_evaluated": 12,
         "timings": {"prompt_n": 12, "cache_n": 0, "predicted_n": 2}}  # fmt: skip


def llama_routes(server: HostileServer, n_ctx: Any = 2048) -> None:
    """/props, /tokenize and a /completion that says "Hello" properly."""
    props = {"default_generation_settings": {"n_ctx": n_ctx, "params": {"samplers": ["top_k", "temperature"]}},
             "model_path": "/models/hostile.gguf"}  # fmt: skip
    server.routes[("GET", "/props")] = lambda call: call.json(props)
    server.routes[("POST", "/tokenize")] = lambda call: call.json(
        {"tokens": [ord(c) for c in (call.request.body or {}).get("content", "")]}
    )
    server.routes[("POST", "/completion")] = lambda call: stream(call, [sse({"content": "Hel"}),
                                                                        sse({"content": "lo"}), sse(FINAL)])


def stream(call: Call, events: list[bytes] | Iterator[bytes], headers: dict[str, str] | None = None) -> None:
    call.start_stream(headers)
    for data in events:
        if not call.chunk(data):
            return
    call.end()


@functools.cache
def gzip_bomb(fill: bytes = b"\0", size: int = 1024 * MIB) -> bytes:
    """``size`` bytes of ``fill``, gzipped to about a thousandth of that.

    Each MiB compresses to the same bytes after a full flush, so the bomb is one block repeated.
    """
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = fill * MIB
    deflated = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // MIB):
        crc = zlib.crc32(block, crc)
    body = deflated * (size // MIB) + z.flush()
    return b"\x1f\x8b\x08\0\0\0\0\0\0\xff" + body + struct.pack("<II", crc, size & 0xFFFFFFFF)


def make_cert(folder: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) valid for ``host`` only, made with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{host}.crt", folder / f"{host}.key"
    san = f"IP:{host}" if host.replace(".", "").isdigit() else f"DNS:{host}"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key

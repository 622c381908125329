"""Fixtures for the fetch tests: a local image server and a guard on every outgoing connection.

Every test here runs with ``socket.create_connection`` wrapped: the addresses dialed are recorded
(``dialed``), and any attempt to connect to something other than a loopback IP fails the test
before a packet is sent. The SSRF tests stub the resolver, so no test ever reaches another host.
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from consumer.fetch import Fetcher, FetchPolicy

#: Size of the endless download the server offers (generated, never stored).
HUGE_BYTES = 200 * 1024 * 1024
_CHUNK = bytes(64 * 1024)


class ServerState:
    """What the image server serves and what it saw. Shared by its handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.images: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.stream_sent: dict[str, int] = {}
        self.stream_done: dict[str, threading.Event] = {}

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] += 1
            return self.hits[path]

    def done_event(self, path: str) -> threading.Event:
        with self.lock:
            return self.stream_done.setdefault(path, threading.Event())


class _Handler(BaseHTTPRequestHandler):
    """Routes (``<key>`` makes a counter private to one test):

    ``/img/<name>`` an image; ``/status/<code>``; ``/flaky/<key>`` 503 twice, then an image;
    ``/throttled/<key>?after=S`` 429 with ``Retry-After: S`` once, then an image;
    ``/hang/<key>`` never answers; ``/drip/<key>`` one byte every 50 ms; ``/short/<key>`` half
    of the 1 000 bytes it declares, then a closed connection; ``/huge/<key>`` and
    ``/huge-unsized/<key>`` 200 MB of zeros with and without Content-Length;
    ``/gzip-bomb/<key>`` a small gzip body that inflates to 50 MB; ``/gzip-img/<name>`` an image
    sent gzip-encoded; ``/redirect?to=URL&code=N``; ``/chain/<n>`` n redirects, then an image;
    ``/echo`` the request headers as JSON; ``/set-cookie``. ``?close=1`` closes the connection.
    """

    protocol_version = "HTTP/1.1"
    timeout = 15  # socket timeout: a stuck handler thread ends by itself
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self._close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._close = query.get("close") == "1"
        path = url.path
        count = state.hit(path)
        parts = path.strip("/").split("/")
        route, arg = parts[0], "/".join(parts[1:])
        if route == "img" and arg in state.images:
            self._send(200, state.images[arg], {"Content-Type": "image/jpeg"})
        elif route == "status":
            self._send(int(arg), b"status body", {"Content-Type": "text/plain"})
        elif route == "flaky":
            if count <= 2:
                self._send(503, b"try later")
            else:
                self._send(200, state.images["chelsea.jpg"])
        elif route == "throttled":
            if count == 1:
                self._send(429, b"slow down", {"Retry-After": query.get("after", "1")})
            else:
                self._send(200, state.images["chelsea.jpg"])
        elif route == "hang":
            state.stop.wait(10)
            self.close_connection = True
        elif route == "drip":
            self._drip(path)
        elif route == "short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 500)
            self.close_connection = True
        elif route in ("huge", "huge-unsized"):
            self._stream_zeros(path, sized=route == "huge")
        elif route == "gzip-bomb":
            self._send(200, self.server.gzip_bomb, {"Content-Encoding": "gzip"})
        elif route == "gzip-img":
            import gzip

            self._send(200, gzip.compress(state.images[arg]), {"Content-Encoding": "gzip"})
        elif route == "redirect":
            self._send(int(query.get("code", "302")), b"", {"Location": query["to"]})
        elif route == "chain":
            hops = int(arg)
            if hops == 0:
                self._send(200, state.images["chelsea.jpg"])
            else:
                self._send(302, b"", {"Location": f"/chain/{hops - 1}"})
        elif route == "echo":
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self._send(200, body, {"Content-Type": "application/json"})
        elif route == "set-cookie":
            self._send(200, b"ok", {"Set-Cookie": "session=abc; Path=/"})
        else:
            self._send(404, b"no such route")

    def _drip(self, path: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.close_connection = True
        try:
            for _ in range(100000):
                if self.server.state.stop.wait(0.05):
                    return
                self.wfile.write(b"x")
        except OSError:
            return

    def _stream_zeros(self, path: str, *, sized: bool) -> None:
        state = self.server.state
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if sized:
            self.send_header("Content-Length", str(HUGE_BYTES))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        sent = 0
        try:
            while sent < HUGE_BYTES and not state.stop.is_set():
                self.wfile.write(_CHUNK)
                sent += len(_CHUNK)
        except OSError:
            pass
        finally:
            with state.lock:
                state.stream_sent[path] = sent
            state.done_event(path).set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState
    gzip_bomb: bytes

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up early are the point of several tests: stay quiet about them."""


class ImageServer:
    """A threaded HTTP server on 127.0.0.1 serving the routes of ``_Handler``."""

    def __init__(self) -> None:
        self.state = ServerState()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._server.gzip_bomb = _gzip_zeros(50 * 1024 * 1024)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.state.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _gzip_zeros(size: int) -> bytes:
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    out = [compressor.compress(block) for _ in range(size // len(block))]
    out.append(compressor.flush())
    return b"".join(out)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    """``image`` saved as ``fmt`` in memory."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    """The local image server, with scikit-image's chelsea (JPEG) and astronaut (PNG)."""
    server = ImageServer()
    server.state.images["chelsea.jpg"] = encode(Image.fromarray(skdata.chelsea()), "JPEG")
    server.state.images["astronaut.png"] = encode(Image.fromarray(skdata.astronaut()), "PNG")
    server.state.images["coffee.jpg"] = encode(Image.fromarray(skdata.coffee()), "JPEG")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def dialed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Addresses the code under test dialed; a non-loopback one fails the test unsent."""
    real = socket.create_connection
    calls: list[tuple[str, int]] = []

    def guarded(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host, port = address[0], address[1]
        calls.append((host, port))
        ip = ipaddress.ip_address(host)  # a host name here would bypass the guard: fail
        if not ip.is_loopback:
            raise AssertionError(f"a test tried to connect to {host}, which is not loopback")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return calls


def local_policy(**overrides: Any) -> FetchPolicy:
    """A policy that may reach the test server on 127.0.0.1 (and nothing else private)."""
    settings: dict[str, Any] = {"allowed_networks": ("127.0.0.1/32",), "backoff_s": 0.01}
    settings.update(overrides)
    return FetchPolicy(**settings)


@pytest.fixture
def policy_for() -> Callable[..., FetchPolicy]:
    """``policy_for(**overrides)``: a :func:`local_policy`."""
    return local_policy


@pytest.fixture
def make_fetcher() -> Iterator[Callable[..., Fetcher]]:
    """``make_fetcher(policy, resolver=None, sleeps=None)``; closed after the test.

    Retries never really sleep: the delays asked for are appended to ``sleeps`` when given.
    """
    made: list[Fetcher] = []

    def make(
        policy: FetchPolicy | None = None,
        *,
        resolver: Callable[[str, int], list[str]] | None = None,
        sleeps: list[float] | None = None,
    ) -> Fetcher:
        record: Callable[[float], None] = sleeps.append if sleeps is not None else _no_sleep
        fetcher = Fetcher(policy or local_policy(), resolver=resolver, sleep=record)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


def _no_sleep(_seconds: float) -> None:
    pass


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    return skdata.chelsea()

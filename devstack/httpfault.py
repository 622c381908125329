"""A loopback HTTP reverse proxy for fault tests: answers 503 SlowDown or drips a body slowly.

The TCP proxy (``devstack.proxy``) can delay or cut a link but cannot answer for the server. This
one speaks HTTP/1.1: it forwards each request to the upstream server unchanged (the ``Host``
header included, so SigV4 signatures made for the proxy's address still verify), records the
raw request target, and applies the first matching fault:

- ``slowdown``: answer ``503`` with S3's ``SlowDown`` error body instead of forwarding;
- ``status``: answer ``status`` with an S3-style error ``code``;
- ``slow_body``: forward, then send the upstream body ``chunk_bytes`` at a time with ``delay_s``
  between chunks;
- ``chunked``: forward, but send the body chunked, without its ``Content-Length`` (a client
  then learns the size only by reading).

A fault matches a request whose target contains ``match``; ``times`` bounds how many requests it
applies to (``None``: all). It runs a threaded server in the test process.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass
class Fault:
    """One injected fault; see the module docstring."""

    kind: str
    match: str = ""
    times: int | None = None
    status: int = 503
    code: str = "SlowDown"
    delay_s: float = 0.0
    chunk_bytes: int = 1
    applied: int = 0


def s3_error_body(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = proxy.take_fault(self.command, self.path, dict(self.headers.items()))
        if fault is not None and fault.kind in ("slowdown", "status"):
            payload = s3_error_body(fault.code, "injected by the fault proxy")
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
            chunked = fault is not None and fault.kind == "chunked"
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if chunked:
                for start in range(0, len(data), 64 * 1024):
                    piece = data[start : start + 64 * 1024]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            if fault is not None and fault.kind == "slow_body":
                self.close_connection = True
                step = max(1, fault.chunk_bytes)
                for start in range(0, len(data), step):
                    if proxy.stopping.wait(fault.delay_s):
                        return
                    self.wfile.write(data[start : start + step])
                    self.wfile.flush()
            else:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True
        finally:
            upstream.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: HttpFaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that give up mid-body are the point of the slow-body tests."""


class HttpFaultProxy:
    """Forward ``http://127.0.0.1:port`` to ``target_host:target_port`` with injectable faults."""

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # set by stop(): slow bodies end at once
        #: ``(method, raw request target)`` of every request received, in order.
        self.requests: list[tuple[str, str]] = []
        #: The headers of every request received, in the same order (names lower-cased).
        self.headers: list[dict[str, str]] = []
        self._server = _Server(("127.0.0.1", listen_port), _Handler)
        self._server.proxy = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http-fault-proxy", daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpFaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def add_fault(self, kind: str, **options: Any) -> Fault:
        """Add a fault (``slowdown``, ``status``, ``slow_body``, ``chunked``); returns it."""
        if kind not in ("slowdown", "status", "slow_body", "chunked"):
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.headers.clear()

    def take_fault(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            self.headers.append({k.lower(): v for k, v in (headers or {}).items()})
            for fault in self._faults:
                if fault.match in path and (fault.times is None or fault.applied < fault.times):
                    fault.applied += 1
                    return fault
        return None

    def __enter__(self) -> HttpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

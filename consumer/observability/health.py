"""One small HTTP server for ``/metrics``, ``/livez`` and ``/readyz`` on the metrics port.

- ``/metrics``: the Prometheus text format (or OpenMetrics when asked) of one registry.
- ``/livez``: 200 while the consumer loop has ticked within ``liveness_window_s``, else 503.
  Before the first tick it answers 503 too; the startup probe gives the process time to get
  there (JAX compiles the preprocessing before the first poll).
- ``/readyz``: 200 only when every named readiness check passes (assigned partitions, Triton
  model ready, Milvus reachable...), else 503 naming what failed. Results are cached for
  ``readiness_cache_s`` so frequent probes do not hammer Triton and Milvus.

The server runs in a daemon thread; request handlers never touch the Kafka consumer, so the
readiness callable must only read state the main thread publishes (a snapshot), or ask the
remote servers itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, TypeAlias

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from consumer.observability.exceptions import MetricsServerFatalError
from consumer.observability.logging import redact_text

#: A readiness callable returns named checks. ``True`` passes; ``False`` fails; a string fails
#: and says why (e.g. ``{"assigned": True, "triton": "model efficientnet_lite0 not ready"}``).
ReadinessCheck: TypeAlias = Callable[[], Mapping[str, bool | str]]
#: Seconds since the loop last ticked, or ``None`` before the first tick.
TickAge: TypeAlias = Callable[[], float | None]

DEFAULT_PORT: Final = 9108
JSON_TYPE: Final = "application/json"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: HealthServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "image-embedder"
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        app = self.server.app
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, encoder(app.registry), content_type, head=head)
        elif path == "/livez":
            ok, body = app.liveness()
            self._send_json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body, head)
        elif path == "/readyz":
            ok, body = app.readiness()
            self._send_json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body, head)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"}, head)

    def _send_json(self, status: HTTPStatus, body: dict[str, Any], head: bool) -> None:
        self._send(status, orjson.dumps(body) + b"\n", JSON_TYPE, head=head)

    def _send(self, status: HTTPStatus, payload: bytes, content_type: str, *, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request access logs: probes would flood the service's log."""


class HealthServer:
    """Serves ``/metrics``, ``/livez`` and ``/readyz`` from a daemon thread.

    ``port=0`` binds a free port (tests); :attr:`port` tells which one after :meth:`start`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        tick_age: TickAge,
        readiness: ReadinessCheck,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        liveness_window_s: float = 60.0,
        readiness_cache_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self._tick_age = tick_age
        self._readiness = readiness
        self.host = host
        self._requested_port = port
        self.liveness_window_s = liveness_window_s
        self.readiness_cache_s = readiness_cache_s
        self._ready_lock = threading.Lock()
        self._ready_cached: tuple[float, bool, dict[str, Any]] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a daemon thread; :class:`MetricsServerFatalError` if binding fails."""
        if self._server is not None:
            return
        server_cls = _Server6 if ":" in self.host else _Server
        try:
            server = server_cls((self.host, self._requested_port), _Handler)
        except OSError as exc:
            raise MetricsServerFatalError(
                f"cannot serve metrics on {self.host}:{self._requested_port}: {exc}"
            ) from exc
        server.app = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how quickly stop() returns
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("the health server is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the server, for logs and tests."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    # -- checks ---------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the loop ticked within the window, with a JSON-able explanation."""
        age = self._tick_age()
        if age is None:
            return False, {"status": "fail", "reason": "the consumer loop has not started yet"}
        if age > self.liveness_window_s:
            return False, {
                "status": "fail",
                "reason": (
                    f"the consumer loop has not ticked for {age:.1f} s "
                    f"(limit {self.liveness_window_s:g} s)"
                ),
                "last_tick_age_s": round(age, 3),
            }
        return True, {"status": "ok", "last_tick_age_s": round(age, 3)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Run (or reuse, within the cache window) the readiness checks."""
        with self._ready_lock:
            now = time.monotonic()
            cached = self._ready_cached
            if cached is not None and now - cached[0] < self.readiness_cache_s:
                return cached[1], cached[2]
            ok, body = self._evaluate_readiness()
            self._ready_cached = (time.monotonic(), ok, body)
            return ok, body

    def _evaluate_readiness(self) -> tuple[bool, dict[str, Any]]:
        try:
            results = dict(self._readiness())
        except Exception as exc:  # a failing check is a "not ready", never a crashed probe
            results = {"readiness": f"{type(exc).__name__}: {exc}"}
        checks: dict[str, str] = {}
        failed: list[str] = []
        for name, result in results.items():
            if result is True:
                checks[name] = "ok"
                continue
            failed.append(name)
            checks[name] = redact_text(result) if isinstance(result, str) else "failed"
        if not results:
            failed.append("readiness")
            checks["readiness"] = "no readiness checks reported"
        ok = not failed
        return ok, {"status": "ready" if ok else "not ready", "checks": checks, "failed": failed}

"""The default local stack of ``python -m devstack up|down|status``.

Each server keeps its data in ``<base_dir>/<server>/``, its log in ``<base_dir>/logs/`` and its
pid in ``<base_dir>/run/``. ``up`` is idempotent: a server whose pid file names a live process
of that server is reused; the others start in parallel and are waited for until they really
answer. A server named by an environment variable (``KAFKA_BOOTSTRAP_SERVERS``, ``MILVUS_URI``,
``TRITON_URL``, ``AWS_ENDPOINT_URL`` for MinIO) is external: never started nor stopped here.
MinIO (the S3 server) listens on 9000 with the root user of :mod:`devstack.minio`.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.exceptions import FetchError, ServerError
from devstack.kafka import KAFKA_LIBS_DIR, KafkaServer, fetch_kafka
from devstack.milvus import MilvusServer
from devstack.minio import MinioServer, fetch_minio
from devstack.paths import STACK_DIR
from devstack.process import ServerProcess, read_pid_file, terminate_process
from devstack.triton import TritonServer

SERVER_NAMES: tuple[str, ...] = ("kafka", "milvus", "triton", "minio")
#: The environment variable that, when set, makes a server external.
EXTERNAL_ENV: Mapping[str, str] = {
    "kafka": "KAFKA_BOOTSTRAP_SERVERS",
    "milvus": "MILVUS_URI",
    "triton": "TRITON_URL",
    "minio": "AWS_ENDPOINT_URL",
}


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which loopback ports it binds."""

    base_dir: Path = STACK_DIR
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    milvus_port: int = 19530
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    minio_port: int = 9000
    kafka_libs_dir: Path = KAFKA_LIBS_DIR
    #: Readiness timeouts per server, in seconds.
    start_timeouts_s: Mapping[str, float] = field(
        default_factory=lambda: {"kafka": 90.0, "milvus": 60.0, "triton": 600.0, "minio": 60.0}
    )
    stop_timeout_s: float = 30.0

    def data_dir(self, name: str) -> Path:
        return self.base_dir / name

    def log_file(self, name: str) -> Path:
        return self.base_dir / "logs" / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.base_dir / "run" / f"{name}.pid"


@dataclass(frozen=True)
class ServerStatus:
    """What happened to (or is true of) one server.

    ``state`` is one of: started, reused, running, not-ready, stopped, not-running, external,
    failed.
    """

    name: str
    state: str
    address: str = ""
    pid: int | None = None
    seconds: float | None = None
    log_file: Path | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the server can be used (or was stopped, for ``down``)."""
        return self.state in {"started", "reused", "running", "external", "stopped", "not-running"}

    def line(self) -> str:
        """One human-readable status line."""
        parts = [f"{self.name:<7}", f"{self.state:<11}", f"{self.address:<24}"]
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.seconds is not None:
            parts.append(f"{self.seconds:.1f} s")
        if self.log_file is not None and self.state not in {"external", "stopped", "not-running"}:
            parts.append(f"log {self.log_file}")
        if self.detail:
            parts.append(self.detail)
        return "  ".join(p for p in parts if p.strip()).rstrip()


class Stack:
    """The servers of one ``StackConfig``; ``environ`` decides which ones are external."""

    def __init__(
        self, config: StackConfig | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.config = config or StackConfig()
        self.environ = dict(os.environ if environ is None else environ)

    def server(self, name: str) -> ServerProcess:
        """A fresh (not started) server object for ``name``."""
        c = self.config
        common = {"log_file": c.log_file(name), "pid_file": c.pid_file(name)}
        if name == "kafka":
            return KafkaServer(
                c.data_dir(name),
                port=c.kafka_port,
                controller_port=c.kafka_controller_port,
                libs_dir=c.kafka_libs_dir,
                **common,
            )
        if name == "milvus":
            return MilvusServer(c.data_dir(name), port=c.milvus_port, **common)
        if name == "triton":
            return TritonServer(
                http_port=c.triton_http_port,
                grpc_port=c.triton_grpc_port,
                metrics_port=c.triton_metrics_port,
                **common,
            )
        if name == "minio":
            return MinioServer(c.data_dir(name), port=c.minio_port, **common)
        raise ValueError(f"unknown server {name!r}; expected one of {', '.join(SERVER_NAMES)}")

    def external(self, name: str) -> str | None:
        """The external address of ``name`` when its environment variable is set."""
        value = self.environ.get(EXTERNAL_ENV[name], "").strip()
        return value or None

    def _select(self, only: Iterable[str] | None) -> list[str]:
        names = list(SERVER_NAMES) if only is None else list(dict.fromkeys(only))
        unknown = [n for n in names if n not in SERVER_NAMES]
        if unknown:
            raise ValueError(
                f"unknown server(s) {', '.join(unknown)}; expected {', '.join(SERVER_NAMES)}"
            )
        return names

    def _attached(self, name: str) -> ServerProcess | None:
        """The server named by its pid file when that process is alive and is that server.

        A pid file naming anything else is stale and is removed.
        """
        server = self.server(name)
        pid_file = self.config.pid_file(name)
        pid = read_pid_file(pid_file)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            return None
        if server.attach(pid):
            return server
        pid_file.unlink(missing_ok=True)
        return None

    def _external_status(self, name: str) -> ServerStatus:
        env = EXTERNAL_ENV[name]
        return ServerStatus(name, "external", f"{env}={self.external(name)}")

    # -- commands -----------------------------------------------------------------------------

    def up(
        self,
        only: Iterable[str] | None = None,
        on_status: Callable[[ServerStatus], None] | None = None,
    ) -> list[ServerStatus]:
        """Start what is not running (in parallel), reuse what is, skip what is external.

        Returns one status per server; a failed one has state "failed" and its ServerError's
        message in ``detail``. ``on_status`` is called as each server finishes.
        """
        names = self._select(only)
        self.config.base_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, ServerStatus] = {}
        report_lock = threading.Lock()

        def report(status: ServerStatus) -> None:
            with report_lock:
                results[status.name] = status
                if on_status is not None:
                    on_status(status)

        lock_path = self.config.base_dir / ".up.lock"
        with lock_path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            threads = []
            for name in names:
                if self.external(name):
                    report(self._external_status(name))
                    continue
                thread = threading.Thread(
                    target=self._up_one, args=(name, report), name=f"up-{name}", daemon=True
                )
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join()
        return [results[n] for n in names]

    def _up_one(self, name: str, report: Callable[[ServerStatus], None]) -> None:
        timeout_s = self.config.start_timeouts_s.get(name)
        log_file = self.config.log_file(name)
        started = time.monotonic()
        server = self._attached(name)
        try:
            if server is not None:
                server.wait_ready(timeout_s)  # it may still be starting
                state = "reused"
            else:
                server = self.server(name)
                if name == "kafka":
                    fetch_kafka(self.config.kafka_libs_dir)
                if name == "minio":
                    fetch_minio()
                server.start(timeout_s)
                state = "started"
        except (ServerError, FetchError) as exc:
            report(ServerStatus(name, "failed", log_file=log_file, detail=str(exc)))
            return
        except Exception as exc:  # report, never lose a thread's failure
            report(ServerStatus(name, "failed", log_file=log_file, detail=repr(exc)))
            return
        report(
            ServerStatus(
                name,
                state,
                server.address,
                server.pid,
                time.monotonic() - started,
                log_file,
            )
        )

    def down(self, only: Iterable[str] | None = None) -> list[ServerStatus]:
        """Stop the servers the pid files name (graceful signals, bounded wait, then SIGKILL)."""
        statuses = []
        for name in self._select(only):
            server = self._attached(name)
            if server is None or server.pid is None:
                statuses.append(ServerStatus(name, "not-running"))
                continue
            pid = server.pid
            started = time.monotonic()
            graceful = terminate_process(pid, server.stop_signals, self.config.stop_timeout_s)
            self.config.pid_file(name).unlink(missing_ok=True)
            statuses.append(
                ServerStatus(
                    name,
                    "stopped",
                    server.address,
                    pid,
                    time.monotonic() - started,
                    detail="" if graceful else "(killed)",
                )
            )
        return statuses

    def status(self, only: Iterable[str] | None = None) -> list[ServerStatus]:
        """Whether each server is external, running and ready, running but not ready, or down."""
        statuses = []
        for name in self._select(only):
            if self.external(name):
                statuses.append(self._external_status(name))
                continue
            server = self._attached(name)
            log_file = self.config.log_file(name)
            if server is None:
                statuses.append(ServerStatus(name, "not-running"))
            elif server.is_ready():
                statuses.append(
                    ServerStatus(name, "running", server.address, server.pid, log_file=log_file)
                )
            else:
                statuses.append(
                    ServerStatus(name, "not-ready", server.address, server.pid, log_file=log_file)
                )
        return statuses

"""The benchmark's own servers on free loopback ports, pinned per the CPU layout.

Kafka, Milvus and Triton come from ``devstack`` (never the default ``make up`` stack); a server
given by URL on the command line is used as it is and never started or stopped here. Optionally a
loopback HTTP server serves the image files, pinned with the consumer.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.exceptions import BenchFatalError
from devstack import KafkaServer, MilvusServer, ServerProcess, TritonServer, free_port
from devstack.exceptions import ServerError
from devstack.kafka import fetch_kafka


@dataclass(frozen=True)
class Endpoints:
    """How to reach the servers of one run."""

    kafka: str
    milvus: str
    triton: str  # grpc://host:port


class ImageHttpServer(ServerProcess):
    """``python -m http.server`` on loopback serving the data set folder, over HTTP/1.1 with
    keep-alive as image servers, CDNs and object stores speak it (its default, HTTP/1.0, closes
    the connection after every response: each image would pay a new TCP connection)."""

    name = "images-http"
    start_timeout_s = 30.0

    def __init__(self, folder: Path, log_file: Path, port: int, cpus: str | None = None) -> None:
        super().__init__(log_file, cpus=cpus)
        self.folder = folder
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return self.base_url

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "http.server",
            "--protocol",
            "HTTP/1.1",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(self.folder),
            str(self.port),
        ]

    def ports(self) -> list[int]:
        return [self.port]

    def identity(self) -> list[str]:
        return ["http.server", str(self.port)]

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/manifest.json", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


class BenchServers:
    """Starts (in parallel) the servers not given as URLs; ``stop`` stops what it started."""

    def __init__(
        self,
        work_dir: Path,
        *,
        kafka_cpus: str | None,
        milvus_cpus: str | None,
        triton_cpus: str | None,
        kafka: str | None = None,
        milvus: str | None = None,
        triton: str | None = None,
        with_triton: bool = True,
    ) -> None:
        """``with_triton=False``: no reference model server (a run that needs none)."""
        self.work_dir = work_dir
        self.with_triton = with_triton
        self._external = {"kafka": kafka, "milvus": milvus, "triton": triton}
        self._cpus = {"kafka": kafka_cpus, "milvus": milvus_cpus, "triton": triton_cpus}
        self.servers: dict[str, ServerProcess] = {}

    def _make(self, name: str) -> ServerProcess:
        folder = self.work_dir / name
        log = self.work_dir / "logs" / f"{name}.log"
        cpus = self._cpus[name]
        if name == "kafka":
            fetch_kafka()
            return KafkaServer(
                folder, log, port=free_port(), controller_port=free_port(), cpus=cpus
            )
        if name == "milvus":
            return MilvusServer(folder, log, port=free_port(), cpus=cpus)
        return TritonServer(
            log, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), cpus=cpus
        )

    def start(self) -> Endpoints:
        """Start every server that is not external; raise with the failing server's log tail."""
        errors: list[str] = []
        lock = threading.Lock()

        def up(name: str) -> None:
            try:
                server = self._make(name)
                with lock:
                    self.servers[name] = server
                server.start()
            except ServerError as exc:
                with lock:
                    errors.append(str(exc))
            except Exception as exc:  # report every failure, never lose a thread's error
                with lock:
                    errors.append(f"{name}: {exc!r}")

        threads = [
            threading.Thread(target=up, args=(name,), name=f"start-{name}", daemon=True)
            for name in ("kafka", "milvus", "triton")
            if not self._external[name] and (name != "triton" or self.with_triton)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise BenchFatalError("server start failed:\n" + "\n".join(errors))
        return self.endpoints()

    def endpoints(self) -> Endpoints:
        kafka = self._external["kafka"] or self.servers["kafka"].address
        milvus = self._external["milvus"] or self.servers["milvus"].address
        triton = self._external["triton"] or ""
        if not triton and "triton" in self.servers:
            server = self.servers["triton"]
            assert isinstance(server, TritonServer)
            triton = server.grpc_url
        return Endpoints(kafka, milvus, triton)

    def pids(self) -> dict[str, int]:
        """Pids of the servers started here (their process trees hold their CPU time)."""
        return {n: s.pid for n, s in self.servers.items() if s.pid is not None}

    def stop(self) -> None:
        """Stop every server started here (graceful signal, bounded wait, then SIGKILL)."""
        for name in ("triton", "milvus", "kafka"):
            server = self.servers.pop(name, None)
            if server is not None:
                server.stop(timeout_s=20.0)

    def remove_data(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def milvus_client(uri: str, attempts: int = 3) -> Any:
    """A pymilvus client on a connection of its own.

    pymilvus shares one channel per address within a process by default; a shared channel left
    idle for a minute is closed by Milvus Lite ("too_many_pings": the client's keepalive pings
    an idle connection more often than the server allows), and the next client that picks it up
    fails to connect. The harness uses its clients at intervals, so each gets its own channel.
    """
    from pymilvus import MilvusClient

    for attempt in range(attempts):
        try:
            return MilvusClient(uri=uri, timeout=30, dedicated=True)
        except Exception as exc:
            if attempt == attempts - 1:
                raise BenchFatalError(f"cannot connect to Milvus at {uri}: {exc}") from exc
            time.sleep(1.0)
    raise AssertionError("unreachable")


def drop_collections(uri: str, names: list[str]) -> None:
    """Drop the named collections that exist (bench data, never kept)."""
    client = milvus_client(uri)
    try:
        for name in names:
            if client.has_collection(name):
                client.drop_collection(name)
    finally:
        client.close()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (0 when it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total

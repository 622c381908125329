"""Milvus for the dev stack: ``milvus-lite server`` from the service's virtualenv."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from devstack.process import ServerProcess, port_accepts


def milvus_lite_script() -> Path:
    """The ``milvus-lite`` console script next to the running interpreter."""
    return Path(sys.executable).parent / "milvus-lite"


class MilvusServer(ServerProcess):
    """A Milvus Lite gRPC server on loopback, its data under ``data_dir``.

    Stopped with SIGINT first: Milvus Lite closes its data folder cleanly on KeyboardInterrupt.
    Acknowledged writes are in its write-ahead log, so a SIGKILL loses none of them either.
    """

    name = "milvus"
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    start_timeout_s = 60.0

    def __init__(
        self,
        data_dir: Path,
        log_file: Path,
        port: int = 19530,
        host: str = "127.0.0.1",
        *,
        pid_file: Path | None = None,
        cpus: str | None = None,
    ) -> None:
        super().__init__(log_file, pid_file=pid_file, cpus=cpus)
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self._host = host

    @property
    def host(self) -> str:
        return self._host

    @property
    def uri(self) -> str:
        """``http://host:port``, as pymilvus expects."""
        return f"http://{self._host}:{self.port}"

    @property
    def address(self) -> str:
        return self.uri

    def ports(self) -> list[int]:
        return [self.port]

    def identity(self) -> list[str]:
        return ["devstack.milvus_lite_server", str(self.data_dir)]

    def command(self) -> list[str]:
        script = milvus_lite_script()
        if not script.is_file():
            raise self.error(f"{script} not found (is milvus-lite installed in this venv?)")
        # milvus-lite's own server, started through a launcher that sets a ping policy
        return [
            sys.executable,
            "-m",
            "devstack.milvus_lite_server",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self._host,
            "--port",
            str(self.port),
        ]

    def environment(self) -> dict[str, str]:
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def is_ready(self) -> bool:
        """True when ``list_collections`` answers on a connection of its own.

        A closed port is answered without pymilvus, which logs every failed attempt.
        """
        if not port_accepts(self.port, self._host):
            return False
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(self.uri, timeout=2, dedicated=True)
        except Exception:
            return False
        try:
            client.list_collections(timeout=2)
        except Exception:
            return False
        finally:
            client.close()
        return True

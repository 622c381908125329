"""Triton for the dev stack: the project's model server, ``python -m serving``.

It runs in its own virtualenv (``.venv-serving``). PyTriton's Triton binary links against the
interpreter's shared ``libpython``, so the interpreter's ``LIBDIR`` goes first on
``LD_LIBRARY_PATH``; the serving interpreter itself is asked where that is.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.paths import REPO_ROOT, SERVING_PYTHON
from devstack.process import ServerProcess
from schemas.preprocessing import MODEL_NAME


@functools.cache
def python_libdir(python: str) -> str:
    """``sysconfig.get_config_var("LIBDIR")`` of the interpreter ``python``."""
    proc = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{python} could not report its LIBDIR: {proc.stderr.strip()}")
    return proc.stdout.strip()


@dataclass(frozen=True)
class TritonTLS:
    """gRPC over TLS: the server's certificate chain and key (PEM); with ``client_ca``, mutual
    TLS (clients must present a certificate that CA signed). Triton's HTTP stays plain."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def args(self) -> list[str]:
        args = ["--grpc-server-cert", str(self.cert), "--grpc-server-key", str(self.key)]
        if self.client_ca is not None:
            args += ["--grpc-root-cert", str(self.client_ca), "--grpc-use-ssl-mutual"]
        return args


class TritonServer(ServerProcess):
    """The reference model behind Triton: HTTP, gRPC and metrics ports on loopback.

    Ready when Triton reports the model ready over HTTP. Its first start compiles the model, so
    the default timeout is long. ``cpus`` pins it with taskset at exec (benchmarks);
    ``extra_args`` are passed on to ``python -m serving``; ``tls`` serves gRPC over TLS
    (``grpc_url`` is then ``grpcs://``).
    """

    name = "triton"
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    start_timeout_s = 600.0
    poll_interval_s = 0.5

    def __init__(
        self,
        log_file: Path,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        cpus: str | None = None,
        *,
        python: Path = SERVING_PYTHON,
        model_name: str = MODEL_NAME,
        extra_args: Sequence[str] = (),
        pid_file: Path | None = None,
        tls: TritonTLS | None = None,
    ) -> None:
        super().__init__(log_file, pid_file=pid_file, cpus=cpus)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.python = Path(python)
        self.model_name = model_name
        self.extra_args = tuple(extra_args)
        self.tls = tls

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        scheme = "grpcs" if self.tls is not None else "grpc"
        return f"{scheme}://{self.host}:{self.grpc_port}"

    @property
    def address(self) -> str:
        return f"{self.grpc_url} {self.http_url}"

    def ports(self) -> list[int]:
        return [self.http_port, self.grpc_port, self.metrics_port]

    def identity(self) -> list[str]:
        return ["-m serving", f"--grpc-port {self.grpc_port}"]

    def command(self) -> list[str]:
        if not self.python.is_file():
            raise self.error(f"{self.python} not found (run `make setup`)")
        return [
            str(self.python),
            "-m",
            "serving",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            *(self.tls.args() if self.tls is not None else []),
            *self.extra_args,
        ]

    def cwd(self) -> Path:
        return REPO_ROOT

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        try:
            libdir = python_libdir(str(self.python))
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            raise self.error(str(exc)) from exc
        paths = [libdir, env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def is_ready(self) -> bool:
        """True when ``GET /v2/models/<model>/ready`` answers 200."""
        url = f"{self.http_url}/v2/models/{self.model_name}/ready"
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

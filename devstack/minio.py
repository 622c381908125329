"""MinIO for the dev stack and the tests: a real S3 server, built from source with Go.

The binary is built once per version with ``go install`` into the user's cache folder
(``$XDG_CACHE_HOME/image-embedder/minio/<version>/``, default ``~/.cache/...``), outside the
clone, so a fresh clone on the same machine reuses it. MinIO is AGPL-licensed: it serves tests
and the demo only, and is never part of an image or of this repository.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

from devstack.exceptions import FetchError
from devstack.process import ServerProcess, port_accepts

MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
#: Credentials of the dev server's root user (loopback only; the tests make restricted ones).
ROOT_USER = "devstack-root"
ROOT_PASSWORD = "devstack-root-secret"
#: A fixed local KMS key (``name:base64 of 32 bytes``): SSE-S3 and SSE-KMS work with key id
#: ``KMS_KEY_ID``. Test data only; never a key for anything real.
KMS_KEY_ID = "devstack-key"
KMS_SECRET_KEY = f"{KMS_KEY_ID}:g3l1U31tXjowid3qdJ41KZtlrAXL5LjTtI5daTWYKik="
#: Build timeout: a cold Go module cache downloads a few hundred modules.
BUILD_TIMEOUT_S = 1800.0


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/image-embedder`` (default ``~/.cache/image-embedder``)."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "image-embedder"


def minio_binary(version: str = MINIO_VERSION) -> Path:
    """Where the MinIO binary of ``version`` is (or will be) cached."""
    return user_cache_dir() / "minio" / version / "minio"


def fetch_minio(version: str = MINIO_VERSION, *, force: bool = False) -> Path:
    """The MinIO binary of ``version``, built with the Go toolchain on first use.

    A file lock serialises builds, so concurrent callers (test workers, ``make up``) build once.
    Raises :class:`FetchError` when Go is missing or the build fails.
    """
    binary = minio_binary(version)
    if binary.is_file() and os.access(binary, os.X_OK) and not force:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with (binary.parent / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file() and os.access(binary, os.X_OK) and not force:
            return binary
        go = shutil.which(os.environ.get("GO", "go"))
        if go is None:
            raise FetchError(f"minio {version}: no Go toolchain on PATH to build it with")
        staging = binary.parent / ".build"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        env = {
            **os.environ,
            "GOBIN": str(staging),
            "GOFLAGS": "-mod=mod",
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
        }
        try:
            proc = subprocess.run(
                [go, "install", "-trimpath", f"{MINIO_MODULE}@{version}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FetchError(f"minio {version}: build took over {BUILD_TIMEOUT_S:g} s") from None
        built = staging / "minio"
        if proc.returncode != 0 or not built.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise FetchError(f"minio {version}: go install failed:\n{tail}")
        built.replace(binary)
        shutil.rmtree(staging, ignore_errors=True)
    return binary


class MinioServer(ServerProcess):
    """A single-drive MinIO on loopback with its data under ``data_dir`` (versioning works).

    ``endpoint`` is the S3 endpoint URL; the root user's keys are ``root_user`` and
    ``root_password`` (it bypasses every policy: tests use restricted credentials for denials).
    With ``region`` set, requests signed for another region are refused the way S3 refuses them
    (``AuthorizationHeaderMalformed`` naming the right region); without it any region is taken.
    ``extra_env`` adds ``MINIO_*`` settings (e.g. an OpenID provider for web-identity tests).
    """

    name = "minio"
    start_timeout_s = 60.0

    def __init__(
        self,
        data_dir: Path,
        log_file: Path,
        port: int = 9000,
        host: str = "127.0.0.1",
        *,
        console_port: int = 0,
        root_user: str = ROOT_USER,
        root_password: str = ROOT_PASSWORD,
        pid_file: Path | None = None,
        cpus: str | None = None,
        binary: Path | None = None,
        region: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(log_file, pid_file=pid_file, cpus=cpus)
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.console_port = console_port
        self.root_user = root_user
        self.root_password = root_password
        self._host = host
        self._binary = binary
        self.region = region
        self.extra_env = dict(extra_env or {})

    @property
    def host(self) -> str:
        return self._host

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, ``http://host:port``."""
        return f"http://{self._host}:{self.port}"

    @property
    def address(self) -> str:
        return self.endpoint

    def ports(self) -> list[int]:
        return [self.port]

    def identity(self) -> list[str]:
        return ["minio", "server", str(self.data_dir)]

    def command(self) -> list[str]:
        binary = self._binary or fetch_minio()
        console = f"{self._host}:{self.console_port}" if self.console_port else f"{self._host}:0"
        return [
            str(binary),
            "server",
            str(self.data_dir),
            "--address",
            f"{self._host}:{self.port}",
            "--console-address",
            console,
            "--quiet",
            "--anonymous",
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "AWS_"))}
        env.update(
            {
                "MINIO_ROOT_USER": self.root_user,
                "MINIO_ROOT_PASSWORD": self.root_password,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_CALLHOME_ENABLE": "off",
                "MINIO_KMS_SECRET_KEY": KMS_SECRET_KEY,
            }
        )
        if self.region:
            env["MINIO_SITE_REGION"] = self.region
        env.update(self.extra_env)
        return env

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def is_ready(self) -> bool:
        """True when ``/minio/health/ready`` answers 200."""
        if not port_accepts(self.port, self._host):
            return False
        try:
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

"""Fixtures shared by every test: real Kafka, Triton, Milvus and MinIO (S3) servers.

Session-scoped servers start lazily (only when a test asks for one) on free loopback ports with
their data under pytest's temporary folder, and stop when the session ends. When
``KAFKA_BOOTSTRAP_SERVERS``, ``TRITON_URL`` or ``MILVUS_URI`` is set, that server is used instead
of starting one. ``TRITON_URL`` names one protocol; ``TRITON_GRPC_URL`` / ``TRITON_HTTP_URL``
name the other when a test needs both.

Tests that stop, kill or slow a server must not touch the shared ones: they start their own
with ``start_kafka`` / ``start_milvus`` / ``start_triton``, which are torn down after the test.
"""

from __future__ import annotations

import atexit
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # devstack is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from devstack import (  # noqa: E402
    KafkaServer,
    MilvusServer,
    MinioServer,
    ServerProcess,
    TritonServer,
    free_port,
)
from devstack.kafka import fetch_kafka  # noqa: E402

#: Every server a fixture started, so none outlives the session even on an abort.
_STARTED: list[ServerProcess] = []


@atexit.register
def _kill_leftovers() -> None:
    for server in _STARTED:
        if server.running():
            server.kill()


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _tracked(server: ServerProcess) -> ServerProcess:
    _STARTED.append(server)
    return server


def new_kafka(folder: Path, **kwargs: Any) -> KafkaServer:
    """A Kafka server (not started) on free ports with its data and log under ``folder``."""
    fetch_kafka()
    kwargs.setdefault("port", free_port())
    kwargs.setdefault("controller_port", free_port())
    server = KafkaServer(folder / "kafka-data", folder / "kafka.log", **kwargs)
    _tracked(server)
    return server


def new_milvus(folder: Path, **kwargs: Any) -> MilvusServer:
    """A Milvus server (not started) on a free port with its data and log under ``folder``."""
    kwargs.setdefault("port", free_port())
    server = MilvusServer(folder / "milvus-data", folder / "milvus.log", **kwargs)
    _tracked(server)
    return server


def new_triton(folder: Path, **kwargs: Any) -> TritonServer:
    """A Triton server (not started) on free ports with its log under ``folder``."""
    kwargs.setdefault("http_port", free_port())
    kwargs.setdefault("grpc_port", free_port())
    kwargs.setdefault("metrics_port", free_port())
    server = TritonServer(folder / "triton.log", **kwargs)
    _tracked(server)
    return server


# -- shared session servers -------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka broker shared by the session."""
    external = _env("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    server = new_kafka(tmp_path_factory.mktemp("kafka"))
    server.start()
    try:
        yield server.bootstrap_servers
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://host:port`` of a Milvus server shared by the session."""
    external = _env("MILVUS_URI")
    if external:
        yield external
        return
    server = new_milvus(tmp_path_factory.mktemp("milvus"))
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A MinIO (S3) server shared by the session, built from source on first use (then cached).

    Its root user bypasses every policy; tests that need a denial make restricted credentials.
    """
    folder = tmp_path_factory.mktemp("minio")
    server = _tracked(MinioServer(folder / "data", folder / "minio.log", port=free_port()))
    assert isinstance(server, MinioServer)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class TritonEndpoints:
    grpc_url: str | None
    http_url: str | None


@pytest.fixture(scope="session")
def _triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonEndpoints]:
    external = _env("TRITON_URL")
    if external:
        grpc_url = _env("TRITON_GRPC_URL")
        http_url = _env("TRITON_HTTP_URL")
        if external.startswith("grpc://"):
            grpc_url = external
        elif external.startswith(("http://", "https://")):
            http_url = external
        else:
            raise pytest.UsageError(f"TRITON_URL must start with grpc:// or http://: {external}")
        yield TritonEndpoints(grpc_url, http_url)
        return
    server = new_triton(tmp_path_factory.mktemp("triton"))
    server.start()
    try:
        yield TritonEndpoints(server.grpc_url, server.http_url)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_grpc_url(_triton: TritonEndpoints) -> str:
    """``grpc://host:port`` of the Triton server shared by the session."""
    if _triton.grpc_url is None:
        pytest.skip("TRITON_URL names an HTTP endpoint; set TRITON_GRPC_URL for gRPC tests")
    return _triton.grpc_url


@pytest.fixture(scope="session")
def triton_http_url(_triton: TritonEndpoints) -> str:
    """``http://host:port`` of the Triton server shared by the session."""
    if _triton.http_url is None:
        pytest.skip("TRITON_URL names a gRPC endpoint; set TRITON_HTTP_URL for HTTP tests")
    return _triton.http_url


@pytest.fixture
def unique_name() -> str:
    """A fresh lowercase name for a topic, group or collection, e.g. ``t_3f9a1c0b2e``."""
    return f"t_{secrets.token_hex(5)}"


# -- servers of one test (for tests that stop, kill or slow them) ------------------------------


@pytest.fixture
def start_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., KafkaServer]]:
    """Start a Kafka of this test's own: ``start_kafka(**KafkaServer kwargs)``; killed after."""
    servers: list[KafkaServer] = []

    def start(**kwargs: Any) -> KafkaServer:
        server = new_kafka(tmp_path_factory.mktemp("own-kafka"), **kwargs)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def start_milvus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MilvusServer]]:
    """Start a Milvus of this test's own: ``start_milvus(**MilvusServer kwargs)``; killed after."""
    servers: list[MilvusServer] = []

    def start(**kwargs: Any) -> MilvusServer:
        server = new_milvus(tmp_path_factory.mktemp("own-milvus"), **kwargs)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def start_triton(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., TritonServer]]:
    """Start a Triton of this test's own: ``start_triton(**TritonServer kwargs)``; killed after."""
    servers: list[TritonServer] = []

    def start(**kwargs: Any) -> TritonServer:
        server = new_triton(tmp_path_factory.mktemp("own-triton"), **kwargs)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


# -- what `make unit` leaves out -------------------------------------------------------------------

#: Fixtures that start or need a server: a test that uses one is an integration test.
SERVER_FIXTURES = frozenset(
    {
        "kafka_bootstrap",
        "milvus_uri",
        "minio",
        "_triton",
        "triton_grpc_url",
        "triton_http_url",
        "start_kafka",
        "start_milvus",
        "start_triton",
    }
)
#: Folders whose tests start servers, engines or containers of their own.
SERVER_FOLDERS = ("devstack", "containers", "bench", "reliability")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a server ``integration``, so ``make unit`` (``-m "not
    integration and not slow"``) runs only what needs none."""
    root = Path(__file__).parent
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        try:
            folder = item.path.relative_to(root).parts[0]
        except ValueError:
            folder = ""
        if fixtures & SERVER_FIXTURES or folder in SERVER_FOLDERS:
            item.add_marker(pytest.mark.integration)

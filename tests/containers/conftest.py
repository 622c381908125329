"""Fixtures of the container tests: a Docker engine, the images `make images` built, the
consumer run the way the Helm chart runs it (see helpers.py for when they skip or fail)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from testcontainers.core.container import DockerContainer

from devstack import free_port
from tests.containers import helpers
from tests.containers.helpers import (
    CONSUMER_IMAGE,
    HELM,
    ROOT,
    SERVING_IMAGE,
    ConsumerContainer,
    chart_container,
    local_image,
    unavailable,
    with_chart_mounts,
)

assert helpers.testcontainers_config.ryuk_disabled


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker client whose engine answers a ping."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        unavailable(f"no Docker engine reachable: {type(exc).__name__}: {str(exc)[:200]}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def consumer_image(docker_client: Any) -> Any:
    """The consumer image ``make images`` built, tagged with the project version."""
    return local_image(docker_client, CONSUMER_IMAGE)


@pytest.fixture(scope="session")
def serving_image(docker_client: Any) -> Any:
    """The model-server image ``make images`` built, tagged with the project version."""
    return local_image(docker_client, SERVING_IMAGE)


@pytest.fixture(scope="session")
def helm() -> Path:
    if not HELM.exists():
        unavailable(f"{HELM.relative_to(ROOT)} is missing: run `make .tools/bin/helm` first")
    return HELM


@pytest.fixture
def run_chart_consumer(
    helm: Path, consumer_image: Any, kafka_bootstrap: str, milvus_uri: str, triton_grpc_url: str
) -> Iterator[Callable[..., ConsumerContainer]]:
    """Start the consumer image as the chart's Deployment runs it, against the test stack.

    ``run_chart_consumer(topic=, group=, collection=, files=DIR, extra_args=[...])``: the chart's
    arguments, environment, user, read-only root filesystem with its emptyDirs as tmpfs, every
    capability dropped, no-new-privileges; host network (the test servers listen on loopback);
    ``files`` bind-mounted read-only at /data (``--file-root /data``).
    """
    started: list[ConsumerContainer] = []

    def start(
        *, topic: str, group: str, collection: str, files: Path, extra_args: Sequence[str] = ()
    ) -> ConsumerContainer:
        spec = chart_container(
            helm,
            {
                "image.repository": CONSUMER_IMAGE.split(":")[0],
                "kafka.bootstrapServers": kafka_bootstrap,
                "consumer.milvusUri": milvus_uri,
                "consumer.tritonUrl": triton_grpc_url,
                "consumer.topic": topic,
                "consumer.group": group,
                "consumer.collection": collection,
                "consumer.logFormat": "json",
                "metrics.port": str(free_port()),
            },
            "consumer",
            ["--file-root", "/data", *extra_args],
        )
        assert spec.image == CONSUMER_IMAGE, (spec.image, CONSUMER_IMAGE)
        name = f"embedder-test-{secrets.token_hex(4)}"
        container = (
            DockerContainer(spec.image)
            .with_name(name)
            .with_command(spec.args)
            .with_envs(**{**spec.env, "POD_NAME": name})
            .with_volume_mapping(files, "/data", "ro")
            .with_kwargs(**spec.docker_kwargs(), network_mode="host")
        )
        with_chart_mounts(container, spec)
        run = ConsumerContainer(spec, container)
        started.append(run)
        container.start()
        return run

    yield start
    for run in started:
        run.container.stop()  # force-removes it (Ryuk is off)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The image sizes, so a CI log shows them next to the results."""
    if helpers.SIZES:
        terminalreporter.section("container images")
        for ref, size in sorted(helpers.SIZES.items()):
            terminalreporter.write_line(f"{ref}: {size / 1e6:.0f} MB")

"""The model-server image, run as the chart's model-server Deployment runs it: the model becomes
ready, its embeddings match the local stack's model server on the same inputs, SIGTERM stops it
cleanly.

Its ports are published on loopback only (the container binds 0.0.0.0 inside its own network
namespace, as in a pod).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from testcontainers.core.container import DockerContainer

from schemas import preprocessing as contract
from tests.containers.helpers import (
    SERVING_IMAGE,
    WAIT_S,
    chart_container,
    with_chart_mounts,
)

pytestmark = pytest.mark.integration

#: The model-server pod's grace period is longer; a clean stop takes seconds.
STOP_S = 60


def embed(url: str, batch: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
    try:
        tensor = grpcclient.InferInput(contract.INPUT_NAME, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        result = client.infer(
            contract.MODEL_NAME,
            [tensor],
            model_version=contract.MODEL_VERSION,
            outputs=[grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)],
        )
        return result.as_numpy(contract.EMBEDDING_OUTPUT)
    finally:
        client.close()


def inputs() -> np.ndarray:
    """Three smooth random images in the model's input range [-1, 1], [3, 224, 224, 3]."""
    rng = np.random.default_rng(2026)
    coarse = rng.uniform(-1, 1, size=(3, 14, 14, 3)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)


def test_serving_image_matches_the_local_model_server_and_stops_on_sigterm(
    serving_image: Any, helm: Path, triton_grpc_url: str
) -> None:
    """Pass: the model reports ready over HTTP; each embedding has cosine >= 0.99999 with the
    local stack's for the same input; SIGTERM makes the container exit 0 within a minute,
    having logged the signal."""
    spec = chart_container(helm, {"modelServer.enabled": "true"}, "model-server")
    assert spec.image == SERVING_IMAGE, spec.image
    container = (
        DockerContainer(spec.image)
        .with_name(f"serving-test-{secrets.token_hex(4)}")
        .with_command(spec.args)
        .with_kwargs(**spec.docker_kwargs())
    )
    with_chart_mounts(container, spec)
    container.ports = {f"{port}/tcp": ("127.0.0.1", None) for port in spec.ports.values()}
    try:
        container.start()
        wrapped = container.get_wrapped_container()
        http_port = int(container.get_exposed_port(spec.ports["http"]))
        grpc_port = int(container.get_exposed_port(spec.ports["grpc"]))
        ready = f"http://127.0.0.1:{http_port}/v2/models/{contract.MODEL_NAME}/ready"
        deadline = time.monotonic() + WAIT_S
        while True:
            wrapped.reload()
            assert wrapped.status == "running", wrapped.logs().decode()[-6000:]
            try:
                if httpx.get(ready, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "model not ready\n" + wrapped.logs().decode()
            time.sleep(1)

        batch = inputs()
        ours = embed(f"grpc://127.0.0.1:{grpc_port}", batch)
        local = embed(triton_grpc_url, batch)
        assert ours.shape == local.shape == (len(batch), contract.EMBEDDING_DIM)
        for i in range(len(batch)):
            cosine = float(
                np.dot(ours[i], local[i]) / (np.linalg.norm(ours[i]) * np.linalg.norm(local[i]))
            )
            assert cosine >= 0.99999, (i, cosine)

        started = time.monotonic()
        wrapped.kill(signal="SIGTERM")
        status = int(wrapped.wait(timeout=STOP_S)["StatusCode"])
        logs = wrapped.logs().decode(errors="replace")
        assert status == 0, logs[-6000:]
        assert time.monotonic() - started < STOP_S
        assert "signal SIGTERM received, stopping" in logs, logs[-6000:]
    finally:
        container.stop()

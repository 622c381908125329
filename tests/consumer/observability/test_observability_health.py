"""The /metrics, /livez and /readyz server on a free loopback port."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from consumer.observability.exceptions import MetricsServerFatalError
from consumer.observability.health import HealthServer
from consumer.observability.metrics import Metrics


class Clock:
    """A tick age the test controls, standing in for Metrics.seconds_since_tick."""

    def __init__(self, age: float | None) -> None:
        self.age = age

    def __call__(self) -> float | None:
        return self.age


class Checks:
    """A readiness callable that counts its calls."""

    def __init__(self, result: Mapping[str, bool | str] | Exception) -> None:
        self.result = result
        self.calls = 0

    def __call__(self) -> Mapping[str, bool | str]:
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


ALL_GOOD = {"assigned": True, "triton": True, "milvus": True}


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[HealthServer, httpx.Client]]]:
    servers: list[HealthServer] = []
    clients: list[httpx.Client] = []

    def _serve(
        *,
        metrics: Metrics | None = None,
        tick_age: Callable[[], float | None] | None = None,
        readiness: Callable[[], Mapping[str, bool | str]] | None = None,
        **kwargs: float,
    ) -> tuple[HealthServer, httpx.Client]:
        metrics = metrics or Metrics(CollectorRegistry())
        server = HealthServer(
            metrics.registry,
            tick_age=tick_age or Clock(0.1),
            readiness=readiness or Checks(ALL_GOOD),
            host="127.0.0.1",
            port=0,
            **kwargs,
        )
        server.start()
        servers.append(server)
        client = httpx.Client(base_url=server.url, trust_env=False, timeout=10)
        clients.append(client)
        return server, client

    yield _serve
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


def test_metrics_endpoint_serves_the_registry(serve: Callable[..., tuple]) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.record_outcome("ingested", 5)
    server, client = serve(metrics=metrics)
    assert server.port > 0
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'image_embedder_messages_total{outcome="ingested"} 5.0' in response.text
    metrics.record_outcome("ingested")
    assert 'outcome="ingested"} 6.0' in client.get("/metrics").text


def test_metrics_speaks_openmetrics_when_asked(serve: Callable[..., tuple]) -> None:
    _, client = serve()
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_livez_flips_to_503_when_ticks_stop(serve: Callable[..., tuple]) -> None:
    clock = Clock(0.5)
    _, client = serve(tick_age=clock, liveness_window_s=30)
    response = client.get("/livez")
    assert response.status_code == 200
    assert orjson.loads(response.content)["status"] == "ok"
    clock.age = 31.0
    response = client.get("/livez")
    assert response.status_code == 503
    body = orjson.loads(response.content)
    assert body["status"] == "fail"
    assert "not ticked for 31.0 s" in body["reason"]
    clock.age = 0.0  # the loop recovered
    assert client.get("/livez").status_code == 200


def test_livez_with_real_ticks(serve: Callable[..., tuple]) -> None:
    metrics = Metrics(CollectorRegistry())
    _, client = serve(metrics=metrics, tick_age=metrics.seconds_since_tick, liveness_window_s=60)
    response = client.get("/livez")
    assert response.status_code == 503
    assert "not started" in orjson.loads(response.content)["reason"]
    metrics.tick()
    assert client.get("/livez").status_code == 200


def test_livez_fails_once_the_window_passes_without_a_tick(serve: Callable[..., tuple]) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.tick()
    _, client = serve(metrics=metrics, tick_age=metrics.seconds_since_tick, liveness_window_s=0)
    assert client.get("/livez").status_code == 503


def test_readyz_is_200_when_every_check_passes(serve: Callable[..., tuple]) -> None:
    _, client = serve(readiness=Checks(ALL_GOOD))
    response = client.get("/readyz")
    assert response.status_code == 200
    body = orjson.loads(response.content)
    assert body == {
        "status": "ready",
        "checks": {"assigned": "ok", "triton": "ok", "milvus": "ok"},
        "failed": [],
    }


def test_readyz_names_the_failing_check(serve: Callable[..., tuple]) -> None:
    checks = Checks(
        {"assigned": True, "triton": "model efficientnet_lite0 is not ready", "milvus": False}
    )
    _, client = serve(readiness=checks)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = orjson.loads(response.content)
    assert body["status"] == "not ready"
    assert body["failed"] == ["triton", "milvus"]
    assert body["checks"]["triton"] == "model efficientnet_lite0 is not ready"
    assert body["checks"]["milvus"] == "failed"
    assert body["checks"]["assigned"] == "ok"


def test_readyz_without_assigned_partitions_is_not_ready(serve: Callable[..., tuple]) -> None:
    _, client = serve(readiness=Checks({"assigned": False, "triton": True, "milvus": True}))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert orjson.loads(response.content)["failed"] == ["assigned"]


def test_readyz_results_are_cached_briefly(serve: Callable[..., tuple]) -> None:
    checks = Checks(ALL_GOOD)
    _, client = serve(readiness=checks, readiness_cache_s=3600)
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
    assert checks.calls == 1
    uncached = Checks(ALL_GOOD)
    _, client = serve(readiness=uncached, readiness_cache_s=0)
    client.get("/readyz")
    client.get("/readyz")
    assert uncached.calls == 2


def test_a_raising_check_is_not_ready_and_leaks_no_secret(serve: Callable[..., tuple]) -> None:
    error = ConnectionError("cannot reach http://root:Milvus@milvus:19530/?token=abc123")
    _, client = serve(readiness=Checks(error))
    response = client.get("/readyz")
    assert response.status_code == 503
    body = orjson.loads(response.content)
    assert body["failed"] == ["readiness"]
    assert "ConnectionError" in body["checks"]["readiness"]
    assert "Milvus@" not in response.text and "abc123" not in response.text
    assert "milvus:19530" in response.text


def test_no_checks_is_not_ready(serve: Callable[..., tuple]) -> None:
    _, client = serve(readiness=Checks({}))
    assert client.get("/readyz").status_code == 503


def test_unknown_path_is_404_and_head_works(serve: Callable[..., tuple]) -> None:
    _, client = serve()
    assert client.get("/").status_code == 404
    head = client.head("/livez")
    assert head.status_code == 200 and head.content == b""


def test_a_taken_port_is_fatal(serve: Callable[..., tuple]) -> None:
    server, _ = serve()
    other = HealthServer(
        CollectorRegistry(),
        tick_age=Clock(0),
        readiness=Checks(ALL_GOOD),
        host="127.0.0.1",
        port=server.port,
    )
    with pytest.raises(MetricsServerFatalError):
        other.start()


def test_stop_closes_the_port() -> None:
    server = HealthServer(
        CollectorRegistry(),
        tick_age=Clock(0),
        readiness=Checks(ALL_GOOD),
        host="127.0.0.1",
        port=0,
    )
    with server:
        port = server.port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    server.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass

"""MinIO in the dev stack: the cached build, `up`/`down` through the stack, the fault proxy."""

from __future__ import annotations

import http.client
import os
import time
from pathlib import Path

import pytest

from devstack import HttpFaultProxy, MinioServer, free_port
from devstack.minio import MINIO_VERSION, fetch_minio, minio_binary, user_cache_dir
from devstack.stack import Stack, StackConfig


def test_the_binary_is_cached_outside_the_clone_per_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    binary = fetch_minio()  # builds on a machine that never did (minutes), then a no-op
    assert binary == minio_binary(MINIO_VERSION)
    assert MINIO_VERSION in binary.parts and os.access(binary, os.X_OK)
    assert Path(__file__).resolve().parents[2] not in binary.parents
    started = time.monotonic()
    assert fetch_minio() == binary
    assert time.monotonic() - started < 1
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir() == tmp_path / "image-embedder"


def test_stack_starts_reuses_and_stops_minio(tmp_path: Path) -> None:
    stack = Stack(StackConfig(base_dir=tmp_path / "stack", minio_port=free_port()), environ={})
    try:
        [first] = stack.up(["minio"])
        assert first.state == "started", first.detail
        assert first.address == f"http://127.0.0.1:{stack.config.minio_port}"
        [again] = stack.up(["minio"])
        assert again.state == "reused" and again.pid == first.pid
        [status] = stack.status(["minio"])
        assert status.state == "running"
    finally:
        [stopped] = stack.down(["minio"])
    assert stopped.state == "stopped"
    external = Stack(
        StackConfig(base_dir=tmp_path / "s2"), environ={"AWS_ENDPOINT_URL": "http://h:1"}
    )
    assert [s.state for s in external.status(["minio"])] == ["external"]


def test_fault_proxy_forwards_and_answers_slowdown(minio: MinioServer) -> None:
    with HttpFaultProxy("127.0.0.1", minio.port) as proxy:
        fault = proxy.add_fault("slowdown", match="/minio/health/live", times=1)
        answers = []
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            conn.request("GET", "/minio/health/live")
            resp = conn.getresponse()
            answers.append((resp.status, resp.read()))
            conn.close()
        assert answers[0][0] == 503 and b"<Code>SlowDown</Code>" in answers[0][1]
        assert answers[1][0] == 200
        assert fault.applied == 1
        assert proxy.requests == [("GET", "/minio/health/live")] * 2

"""The default stack of ``python -m devstack up|down|status``, pointed at a temporary folder.

These tests never touch the real defaults: every port is a free one and the base folder is
pytest's. Triton is left out (its start compiles the model); its launcher has its own tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import free_port
from devstack.paths import REPO_ROOT
from devstack.process import pid_alive
from devstack.stack import EXTERNAL_ENV, ServerStatus, Stack, StackConfig

PAIR = ["kafka", "milvus"]


def _config(base_dir: Path) -> StackConfig:
    return StackConfig(
        base_dir=base_dir,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        milvus_port=free_port(),
        triton_http_port=free_port(),
        triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        minio_port=free_port(),
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(_config(tmp_path / "stack"), environ={})
    yield stack
    stack.down()


def _states(statuses: list[ServerStatus]) -> dict[str, str]:
    return {s.name: s.state for s in statuses}


def _pids(statuses: list[ServerStatus]) -> dict[str, int | None]:
    return {s.name: s.pid for s in statuses}


@pytest.mark.integration
def test_up_is_idempotent_and_down_stops_everything(stack: Stack) -> None:
    first = stack.up(PAIR)
    assert _states(first) == {"kafka": "started", "milvus": "started"}, first
    pids = _pids(first)
    for name in PAIR:
        assert stack.config.pid_file(name).read_text().strip() == str(pids[name])
        assert stack.config.log_file(name).is_file()
        assert stack.config.data_dir(name).is_dir()
    assert _states(stack.status(PAIR)) == {"kafka": "running", "milvus": "running"}

    again = stack.up(PAIR)
    assert _states(again) == {"kafka": "reused", "milvus": "reused"}
    assert _pids(again) == pids

    # a server that died behind the stack's back is started again; the other one is reused
    milvus_pid = pids["milvus"]
    assert milvus_pid is not None
    os.killpg(milvus_pid, 9)
    assert _states(stack.status(PAIR))["milvus"] == "not-running"
    third = stack.up(PAIR)
    assert _states(third) == {"kafka": "reused", "milvus": "started"}, third
    assert _pids(third)["kafka"] == pids["kafka"]
    assert _pids(third)["milvus"] != milvus_pid

    stopped = stack.down()
    assert _states(stopped) == {
        "kafka": "stopped",
        "milvus": "stopped",
        "triton": "not-running",
        "minio": "not-running",
    }
    for status in stopped:
        if status.pid is not None:
            assert not pid_alive(status.pid)
    for name in PAIR:
        assert not stack.config.pid_file(name).exists()
    assert _states(stack.down(PAIR)) == {"kafka": "not-running", "milvus": "not-running"}


def test_stale_pid_file_naming_another_process_is_ignored(stack: Stack) -> None:
    pid_file = stack.config.pid_file("milvus")
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a Milvus server
    assert _states(stack.status(["milvus"])) == {"milvus": "not-running"}
    assert not pid_file.exists()
    assert _states(stack.down(["milvus"])) == {"milvus": "not-running"}
    assert pid_alive(os.getpid())


def test_servers_named_by_the_environment_are_external(tmp_path: Path) -> None:
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "MILVUS_URI": "http://127.0.0.1:1",
        "TRITON_URL": "grpc://127.0.0.1:1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
    }
    stack = Stack(_config(tmp_path / "stack"), environ=environ)
    statuses = stack.up()
    assert _states(statuses) == {
        "kafka": "external",
        "milvus": "external",
        "triton": "external",
        "minio": "external",
    }
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1" in statuses[0].line()
    assert not (tmp_path / "stack" / "run").exists()
    assert _states(stack.status()) == _states(statuses)


def test_failed_start_names_the_server_and_its_log(stack: Stack) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", stack.config.milvus_port))
        sock.listen()
        (status,) = stack.up(["milvus"])
    assert status.state == "failed"
    assert "milvus" in status.detail
    assert str(stack.config.log_file("milvus")) in status.detail
    assert not stack.config.pid_file("milvus").exists()


def test_unknown_server_is_rejected(stack: Stack) -> None:
    with pytest.raises(ValueError, match="unknown server"):
        stack.up(["postgres"])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in EXTERNAL_ENV.values()}
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_status_and_down_on_an_empty_stack(tmp_path: Path) -> None:
    base = str(tmp_path / "stack")
    status = _cli("status", "--base-dir", base)
    assert status.returncode == 3, status.stderr
    assert "kafka" in status.stdout and "not-running" in status.stdout
    down = _cli("down", "--base-dir", base)
    assert down.returncode == 0, down.stderr
    external = _cli(
        "status", "--only", "milvus", "--base-dir", base, env={"MILVUS_URI": "http://h:1"}
    )
    assert external.returncode == 0
    assert "external" in external.stdout and "MILVUS_URI=http://h:1" in external.stdout


def test_cli_rejects_unknown_servers(tmp_path: Path) -> None:
    result = _cli("up", "--only", "kafka,redis", "--base-dir", str(tmp_path))
    assert result.returncode == 2
    assert "redis" in result.stderr

"""Triton from the dev stack: the launcher of ``python -m serving`` and its real start."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from devstack import TritonServer
from devstack.paths import SERVING_PYTHON
from schemas.preprocessing import EMBEDDING_DIM, EMBEDDING_OUTPUT, MODEL_NAME

StartTriton = Callable[..., TritonServer]

needs_serving_env = pytest.mark.skipif(
    not SERVING_PYTHON.is_file(), reason="the model server's environment is not installed"
)


def test_command_runs_serving_with_the_ports(tmp_path: Path) -> None:
    server = TritonServer(tmp_path / "t.log", http_port=1, grpc_port=2, metrics_port=3)
    cmd = server.full_command()
    assert cmd[1:4] == ["-m", "serving", "--http-port"]
    assert cmd[4:] == ["1", "--grpc-port", "2", "--metrics-port", "3"]
    assert server.grpc_url == "grpc://127.0.0.1:2"
    assert server.http_url == "http://127.0.0.1:1"


def test_cpus_pin_the_command_at_exec(tmp_path: Path) -> None:
    server = TritonServer(tmp_path / "t.log", cpus="0")
    assert server.full_command()[:3] == ["taskset", "-c", "0"]


@needs_serving_env
def test_library_path_starts_with_the_serving_interpreters_libdir(tmp_path: Path) -> None:
    libdir = subprocess.run(
        [str(SERVING_PYTHON), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = TritonServer(tmp_path / "t.log").environment()
    assert env["LD_LIBRARY_PATH"].split(":")[0] == libdir


def _family(pid: int) -> list[psutil.Process]:
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


@needs_serving_env
@pytest.mark.integration
def test_pinned_server_is_ready_and_stops_with_all_its_processes(
    start_triton: StartTriton,
) -> None:
    triton = start_triton(cpus="0")
    assert triton.pid is not None
    family = _family(triton.pid)
    assert any("tritonserver" in " ".join(p.cmdline()) for p in family)
    # pinned at exec: the interpreter and every process it started run on CPU 0 only
    assert {tuple(p.cpu_affinity()) for p in family} == {(0,)}

    meta = httpx.get(f"{triton.http_url}/v2/models/{MODEL_NAME}", timeout=10).json()
    outputs = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert outputs[EMBEDDING_OUTPUT][-1] == EMBEDDING_DIM

    triton.stop()
    assert not triton.is_ready()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)


@needs_serving_env
@pytest.mark.integration
def test_shared_server_speaks_grpc_and_http(triton_grpc_url: str, triton_http_url: str) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_grpc_url.removeprefix("grpc://"))
    assert client.is_model_ready(MODEL_NAME)
    ready = httpx.get(f"{triton_http_url}/v2/models/{MODEL_NAME}/ready", timeout=10)
    assert ready.status_code == 200

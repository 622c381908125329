"""Helpers of the container tests: engine and image look-ups, the chart's way of running the
consumer, waits.

The tests run whenever a Docker engine answers. Without one they are skipped with the reason,
except under ``CI=true``, where a missing engine or image is a failure: CI provisions both
(``.ci/run``). The images are built outside pytest (``make images``), so a cold build is not cut
by the per-test timeout. Ryuk, testcontainers' reaper, is an image pulled from a registry, so it
is off and every test removes its own containers.
"""

from __future__ import annotations

import os

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import re
import subprocess
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

testcontainers_config.ryuk_disabled = True

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "helm" / "image-embedder"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CONSUMER_IMAGE = f"image-embedder-consumer:{VERSION}"
SERVING_IMAGE = f"image-embedder-serving:{VERSION}"
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
#: Sizes of the images the tests looked at, printed in the terminal summary.
SIZES: dict[str, int] = {}
#: Generous deadline for a container to start, compile and finish a small run on a busy machine.
WAIT_S = 300.0


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail under CI=true, where the container tests must run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the container tests must run, see .ci/run)")
    pytest.skip(reason)


def local_image(client: Any, ref: str) -> Any:
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        unavailable(f"image {ref} is not built: run `make images` first")


def helm_template(
    helm: Path, sets: Mapping[str, str] | None = None, strings: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The documents `helm template` renders with ``--set`` and ``--set-string`` pairs."""
    args = [str(helm), "template", "rel", str(CHART)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, value in (strings or {}).items():
        args += ["--set-string", f"{key}={value}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def run_capture(client: Any, image: str, command: Sequence[str], **kwargs: Any) -> str:
    """Run ``command`` in a throwaway container of ``image``; its output (fails on non-zero)."""
    container = client.containers.create(image, command=list(command), **kwargs)
    try:
        container.start()
        status = container.wait(timeout=WAIT_S)["StatusCode"]
        out = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status == 0, f"{command} exited {status}\n{out[-4000:]}"
    return out


# -- the consumer as the chart runs it -------------------------------------------------------------


def _tmpfs_size(size_limit: str | None) -> str | None:
    """An emptyDir sizeLimit (``256Mi``, ``1Gi``) as a tmpfs size (``256m``, ``1g``)."""
    if not size_limit:
        return None
    match = re.fullmatch(r"(\d+)([KMG])i?", size_limit)
    assert match, f"unexpected sizeLimit {size_limit}"
    return f"{match.group(1)}{match.group(2).lower()}"


@dataclass(frozen=True)
class ChartContainer:
    """What one of the chart's Deployments runs: image, arguments, environment, security and
    writable mounts (emptyDirs, as tmpfs sizes), ports by name."""

    image: str
    args: list[str]
    env: dict[str, str]
    user: str
    read_only: bool
    cap_drop: list[str]
    no_new_privileges: bool
    tmpfs: dict[str, str | None]
    ports: dict[str, int]

    @property
    def metrics_port(self) -> int:
        return self.ports["metrics"]

    def docker_kwargs(self) -> dict[str, Any]:
        """The security settings as Docker container options."""
        return {
            "user": self.user,
            "read_only": self.read_only,
            "cap_drop": self.cap_drop,
            "security_opt": ["no-new-privileges"] if self.no_new_privileges else [],
        }


def chart_container(
    helm: Path, values: Mapping[str, str], container_name: str, extra_args: Sequence[str] = ()
) -> ChartContainer:
    """Render the chart with ``values`` (``extra_args`` as ``consumer.extraArgs``) and read the
    Deployment container called ``container_name`` (``consumer`` or ``model-server``)."""
    strings = {f"consumer.extraArgs[{i}]": arg for i, arg in enumerate(extra_args)}
    docs = helm_template(helm, values, strings)
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        found = [c for c in pod["containers"] if c["name"] == container_name]
        if found:
            container = found[0]
            break
    else:
        raise AssertionError(f"no Deployment runs a container {container_name}")
    sc = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
        env.update({k: str(v) for k, v in config["data"].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmpfs: dict[str, str | None] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"{mount['name']} is not an emptyDir"
        tmpfs[mount["mountPath"]] = _tmpfs_size(volume["emptyDir"].get("sizeLimit"))
    return ChartContainer(
        image=container["image"],
        args=[str(a) for a in container["args"]],
        env=env,
        user=f"{sc['runAsUser']}:{sc['runAsGroup']}",
        read_only=bool(sc.get("readOnlyRootFilesystem")),
        cap_drop=list(sc.get("capabilities", {}).get("drop", [])),
        no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
        tmpfs=tmpfs,
        ports={p["name"]: int(p["containerPort"]) for p in container.get("ports", [])},
    )


def with_chart_mounts(container: DockerContainer, spec: ChartContainer) -> DockerContainer:
    """The chart's emptyDirs as tmpfs mounts (/dev/shm as the container's shm size)."""
    for path, size in spec.tmpfs.items():
        if path == "/dev/shm":
            container.with_kwargs(**container._kwargs, shm_size=size or "64m")
            continue
        # An emptyDir allows exec and is writable by the pod's fsGroup; tmpfs is mode 1777.
        container.with_tmpfs_mount(path, f"size={size},exec" if size else "exec")
    return container


@dataclass
class ConsumerContainer:
    """A consumer container started from a :class:`ChartConsumer`, removed by the fixture."""

    spec: ChartContainer
    container: DockerContainer
    _status: int | None = field(default=None)

    @property
    def wrapped(self) -> Any:
        return self.container.get_wrapped_container()

    def running(self) -> bool:
        self.wrapped.reload()
        return self.wrapped.status in ("created", "running")

    def logs(self) -> str:
        return self.wrapped.logs().decode(errors="replace")

    def log_tail(self, chars: int = 6000) -> str:
        return f"--- container log (tail) ---\n{self.logs()[-chars:]}"

    def wait(self, timeout_s: float = WAIT_S) -> int:
        """The exit status; fails with the log tail when it does not exit in time."""
        if self._status is None:
            try:
                self._status = int(self.wrapped.wait(timeout=timeout_s)["StatusCode"])
            except Exception as exc:  # requests' ReadTimeout
                raise AssertionError(
                    f"container did not exit within {timeout_s:.0f} s ({exc!r})\n{self.log_tail()}"
                ) from None
        return self._status

    def docker_stop(self, grace_s: int) -> int:
        """`docker stop -t grace_s`: SIGTERM, SIGKILL after the grace period; the exit status."""
        started = time.monotonic()
        self.wrapped.stop(timeout=grace_s)
        status = self.wait(timeout_s=grace_s + 60)
        assert time.monotonic() - started < grace_s, f"needed SIGKILL\n{self.log_tail()}"
        return status

    def signal(self, name: str) -> None:
        self.wrapped.kill(signal=name)

    def probe(self, path: str) -> int:
        """HTTP status of ``path`` on the metrics port (0 when nothing answers)."""
        try:
            url = f"http://127.0.0.1:{self.spec.metrics_port}{path}"
            return httpx.get(url, timeout=5).status_code
        except httpx.HTTPError:
            return 0

    def summary(self) -> dict[str, float]:
        """The ``ingested=... dead_lettered=...`` line the run prints when it ends."""
        for line in reversed(self.logs().splitlines()):
            if line.startswith("ingested="):
                return {k: float(v) for k, v in (pair.split("=") for pair in line.split())}
        raise AssertionError(f"no run summary printed\n{self.log_tail()}")


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    *,
    alive: ConsumerContainer | None = None,
    timeout_s: float = WAIT_S,
) -> None:
    """Poll ``predicate`` until it holds (raising counts as False); fail if ``alive`` exits."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as exc:
            last = exc
        if alive is not None and not alive.running():
            raise AssertionError(
                f"container exited with {alive.wait(5)} while waiting for {what}\n"
                f"{alive.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = alive.log_tail() if alive is not None else ""
            raise AssertionError(f"timed out waiting for {what} (last error: {last!r})\n{tail}")
        time.sleep(0.5)

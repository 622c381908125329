"""What the images `make images` built contain, and that the Helm chart names them.

No development tools (pytest, ruff, compilers), a consistent venv (`pip check`), a fixed non-root
user, the base they were built on in their labels, the build stage's CA bundle nowhere in the
runtime image. Their sizes are printed at the end of the session.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.containers.helpers import (
    CONSUMER_IMAGE,
    ROOT,
    SERVING_IMAGE,
    SIZES,
    VERSION,
    helm_template,
    run_capture,
)

#: They need a Docker engine (a server), like the other tests of this folder.
pytestmark = pytest.mark.integration

IMAGES = {"consumer": CONSUMER_IMAGE, "serving": SERVING_IMAGE}
BUILD_CA = ROOT / "docker" / "build-ca" / "ca-bundle.crt"
PINNED_BASE_PREFIX = "python:3.11"
STANDIN_BASE_PREFIX = "image-embedder-base:"

#: Development tools that must not be in a runtime image, as modules and as commands.
DEV_MODULES = ("pytest", "_pytest", "ruff", "hypothesis", "pip_audit", "mypy")
DEV_COMMANDS = ("pytest", "ruff", "gcc", "cc", "c++", "g++", "clang", "make", "ld", "as")


@pytest.fixture(params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> tuple[str, Any]:
    name = request.param
    fixture = "consumer_image" if name == "consumer" else "serving_image"
    found = request.getfixturevalue(fixture)
    SIZES[IMAGES[name]] = int(found.attrs["Size"])
    return IMAGES[name], found


def python_in(client: Any, ref: str, code: str) -> str:
    return run_capture(client, ref, ["python", "-c", code], entrypoint=[], network_mode="none")


def test_no_development_tools(docker_client: Any, image: tuple[str, Any]) -> None:
    """Pass: none of the development modules is importable and no compiler or dev command is
    on PATH; `pip check` finds the venv consistent."""
    ref, _ = image
    out = python_in(
        docker_client,
        ref,
        "import importlib.util, shutil\n"
        f"for m in {DEV_MODULES!r}:\n"
        "    print('module', m, importlib.util.find_spec(m) is not None)\n"
        f"for c in {DEV_COMMANDS!r}:\n"
        "    print('command', c, shutil.which(c))\n",
    )
    found = [
        line
        for line in out.splitlines()
        if line.split()[0] in ("module", "command") and line.split()[2] not in ("False", "None")
    ]
    assert not found, f"{ref} contains development tools: {found}"
    check = run_capture(
        docker_client, ref, ["python", "-m", "pip", "check"], entrypoint=[], network_mode="none"
    )
    assert "No broken requirements found" in check, check


def test_runs_as_the_fixed_non_root_user(docker_client: Any, image: tuple[str, Any]) -> None:
    ref, found = image
    assert found.attrs["Config"]["User"] == "10001:10001"
    out = python_in(docker_client, ref, "import os; print(os.getuid(), os.getgid())")
    assert out.split() == ["10001", "10001"]


def test_tags_and_labels(docker_client: Any, image: tuple[str, Any]) -> None:
    """Pass: the version and `dev` tags name the same image; the labels carry the version and
    the base it was built on (the pinned upstream image or the stand-in built from Debian)."""
    ref, found = image
    dev = docker_client.images.get(ref.rsplit(":", 1)[0] + ":dev")
    assert dev.id == found.id
    labels = found.attrs["Config"]["Labels"] or {}
    assert labels.get("org.opencontainers.image.version") == VERSION
    base = labels.get("org.opencontainers.image.base.name", "")
    assert base.startswith((PINNED_BASE_PREFIX, STANDIN_BASE_PREFIX)), labels
    docker_client.images.get(base)  # the base it names exists here


def test_build_ca_is_not_in_the_runtime_image(docker_client: Any, image: tuple[str, Any]) -> None:
    """Pass: the CA bundle `make images` placed in the build context for the build stage is not
    in the runtime image: not its directory, not PIP_CERT, and no file with its content except
    where the base image itself has that file."""
    ref, found = image
    env = found.attrs["Config"]["Env"] or []
    assert not [e for e in env if e.startswith(("PIP_CERT=", "SSL_CERT_FILE="))], env
    if not BUILD_CA.exists():
        pytest.skip("no build CA bundle in docker/build-ca/ (made without IMAGE_BUILD_CA)")
    digest = hashlib.sha256(BUILD_CA.read_bytes()).hexdigest()
    size = BUILD_CA.stat().st_size
    finder = (
        "import hashlib, os\n"
        "print('build-ca dir', os.path.exists('/etc/build-ca'))\n"
        "for top in ('/etc', '/usr', '/opt', '/home', '/var', '/root', '/src', '/app'):\n"
        "    for d, _, files in os.walk(top):\n"
        "        for f in files:\n"
        "            p = os.path.join(d, f)\n"
        "            try:\n"
        f"                if os.path.isfile(p) and os.path.getsize(p) == {size} and "
        f"hashlib.sha256(open(p, 'rb').read()).hexdigest() == {digest!r}:\n"
        "                    print('same', p)\n"
        "            except OSError:\n"
        "                pass\n"
    )
    runtime = python_in(docker_client, ref, finder).splitlines()
    assert "build-ca dir False" in runtime, runtime
    base = found.attrs["Config"]["Labels"]["org.opencontainers.image.base.name"]
    in_base = run_capture(
        docker_client, base, ["python", "-c", finder], entrypoint=[], network_mode="none"
    ).splitlines()
    copies = {line for line in runtime if line.startswith("same ")}
    assert copies <= set(in_base), f"the build CA is in {ref}: {sorted(copies - set(in_base))}"


def test_chart_defaults_name_the_images_built_here(docker_client: Any, helm: Path) -> None:
    """Pass: every image `helm template` renders with the chart's defaults (model server on)
    exists locally: `make images` builds what the chart deploys."""
    docs = helm_template(helm, {"modelServer.enabled": "true"})
    refs = set()
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            refs.add(container["image"])
    assert refs == {CONSUMER_IMAGE, SERVING_IMAGE}, refs
    for ref in refs:
        docker_client.images.get(ref)

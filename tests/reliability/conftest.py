"""Fixtures of the fault-injection suite: photos on disk and consumers run as processes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from tests.support.reliability import ConsumerProcess, consumer_env

if TYPE_CHECKING:
    from tests.conftest import TritonEndpoints

#: A dead member's partitions move after this long; the broker's minimum, so a restart after a
#: kill -9 does not wait for the default 45 s session to expire.
SESSION_TIMEOUT_MS = "6000"

#: Real photos from scikit-image, each also flipped, so vectors differ from id to id.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A dozen small JPEG photos in one folder (the consumer's ``--file-root``)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("reliability-photos")
    paths: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PHOTOS:
            image = getattr(data, name)()
            if image.ndim == 2:
                image = np.stack([image] * 3, axis=-1)
            image = np.ascontiguousarray(image[..., :3])
            for suffix, pixels in (("", image), ("_flip", image[:, ::-1])):
                path = folder / f"{name}{suffix}.jpg"
                Image.fromarray(np.ascontiguousarray(pixels)).save(path, quality=90)
                paths.append(path)
    return paths


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Start ``python -m consumer run ARGS`` against the given servers; all killed after the test.

    ``spawn(*args, kafka=, milvus=, triton=, env=None, metrics_port=None, name=None,
    mutant=None)``; each process runs through ``tests.support.mutant_consumer`` (which records
    what it sends to Milvus and commits to Kafka) and writes its log, its calls and its
    ``--summary-json`` under the test's temporary folder.
    """
    started: list[ConsumerProcess] = []

    def start(
        *args: str,
        kafka: str,
        milvus: str,
        triton: str,
        env: dict[str, str] | None = None,
        metrics_port: int | None = None,
        name: str | None = None,
        mutant: str | None = None,
    ) -> ConsumerProcess:
        label = name or f"consumer{len(started)}"
        proc = ConsumerProcess(
            args=args,
            env=consumer_env(
                kafka,
                milvus,
                triton,
                {"IMAGE_EMBEDDER_SESSION_TIMEOUT_MS": SESSION_TIMEOUT_MS, **(env or {})},
            ),
            log_path=tmp_path / f"{label}.log",
            summary_path=tmp_path / f"{label}-summary.json",
            metrics_port=metrics_port,
            mutant=mutant,
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture(scope="session")
def triton_url(_triton: TritonEndpoints) -> str:
    """The session's Triton in whichever protocol it speaks (gRPC when both): the consumer
    speaks both, so the suite never skips for want of one."""
    url = _triton.grpc_url or _triton.http_url
    assert url, "no Triton endpoint"
    return url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CI=true`` a skipped reliability test fails: the suite never silently skips."""
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("CI", "").lower() in ("1", "true", "yes")
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"reliability test skipped under CI=true: {reason}"

"""Fixtures for consumer tests: photos on disk and a way to run the consumer as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image

from tests.support.mutant_consumer import ENV_CALLS

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "immunohistochemistry")


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos plus a flip and a crop of each, as JPEG files."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PHOTOS:
            image = _rgb(getattr(data, name)())
            h, w = image.shape[:2]
            Image.fromarray(image).save(folder / f"{name}.jpg", quality=90)
            Image.fromarray(image[:, ::-1]).save(folder / f"{name}_flip.jpg", quality=90)
            crop = image[h // 8 : h - h // 8, w // 8 : w - w // 8]
            Image.fromarray(crop).save(folder / f"{name}_crop.jpg", quality=90)
    return folder


def photo_messages(photo_dir: Path) -> list[dict[str, Any]]:
    return [
        {"id": p.stem, "uri": p.as_uri()} for p in sorted(photo_dir.iterdir()) if p.suffix == ".jpg"
    ]


def start_consumer(
    args: list[str], *, kafka: str, milvus: str, triton: str, log_file: Path
) -> subprocess.Popen[bytes]:
    """Start ``python -m consumer run ARGS --log-format json`` in the background.

    Its log (stderr) goes to ``log_file``; the caller stops or kills the process.
    """
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "MILVUS_URI": milvus,
        "TRITON_URL": triton,
    }
    with log_file.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer", "run", *args, "--log-format", "json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


@dataclass
class ConsumerRun:
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any] | None
    #: what the run sent and committed, as the test launcher recorded it (one dict a call)
    calls: list[dict[str, Any]]

    def milvus_writes(self, collection: str) -> list[dict[str, Any]]:
        """The acknowledged Milvus writes of ``collection`` (upsert, insert, delete)."""
        return [
            c
            for c in self.calls
            if c.get("op") in ("upsert", "insert", "delete") and c.get("collection") == collection
        ]


@pytest.fixture
def run_consumer(
    kafka_bootstrap: str, milvus_uri: str, triton_grpc_url: str, tmp_path: Path
) -> Callable[..., ConsumerRun]:
    """Run ``python -m consumer run ARGS --until-end`` against the session servers."""

    def run(*args: str, env: dict[str, str] | None = None, timeout_s: float = 300) -> ConsumerRun:
        index = len(list(tmp_path.glob("summary-*")))
        summary = tmp_path / f"summary-{index}.json"
        calls = tmp_path / f"calls-{index}.jsonl"
        full_env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MILVUS_URI": milvus_uri,
            "TRITON_URL": triton_grpc_url,
            "IMAGE_EMBEDDER_LOG_FORMAT": "json",
            ENV_CALLS: str(calls),  # the launcher records what is sent to Milvus
            **(env or {}),
        }
        cmd = [
            sys.executable,
            "-m",
            "tests.support.mutant_consumer",
            "run",
            "--no-metrics",
            "--summary-json",
            str(summary),
            *args,
        ]
        proc = subprocess.run(
            cmd, env=full_env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        data = orjson.loads(summary.read_bytes()) if summary.exists() else None
        sent = (
            [orjson.loads(line) for line in calls.read_bytes().splitlines()]
            if calls.exists()
            else []
        )
        return ConsumerRun(proc.returncode, proc.stdout, proc.stderr, data, sent)

    return run

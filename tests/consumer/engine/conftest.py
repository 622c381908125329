"""Fixtures of the engine's process-level tests: consumers run as processes, waits on commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.kafka import committed_offsets
from tests.support.reliability import ConsumerProcess, consumer_env, wait_until


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """``python -m consumer run ARGS`` as a process (log and summary under tmp_path), killed
    after the test: ``spawn(*args, kafka=, milvus=, triton=, env=None, metrics_port=None)``."""
    started: list[ConsumerProcess] = []

    def start(
        *args: str,
        kafka: str,
        milvus: str,
        triton: str,
        env: dict[str, str] | None = None,
        metrics_port: int | None = None,
    ) -> ConsumerProcess:
        label = f"consumer{len(started)}"
        proc = ConsumerProcess(
            args=args,
            env=consumer_env(kafka, milvus, triton, env),
            log_path=tmp_path / f"{label}.log",
            summary_path=tmp_path / f"{label}-summary.json",
            metrics_port=metrics_port,
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


def wait_for_commits(
    bootstrap: str, group: str, topic: str, at_least: int, proc: ConsumerProcess
) -> int:
    """Wait until ``group`` has committed ``at_least`` messages of ``topic`` in all; returns it."""
    wait_until(
        lambda: sum(committed_offsets(bootstrap, group, topic).values()) >= at_least,
        f"{at_least} messages committed by {group}",
        alive=[proc],
    )
    return sum(committed_offsets(bootstrap, group, topic).values())

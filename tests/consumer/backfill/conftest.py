"""Fixtures of the planned-backfill tests: the backfill commands, and workers as processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.mutant_consumer import ENV_CALLS, ENV_MUTANT
from tests.support.reliability import ROOT, ConsumerProcess, consumer_env


@dataclass(frozen=True)
class CommandRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return orjson.loads(self.stdout)


def backfill_command(bootstrap: str, *args: str, timeout_s: float = 120) -> CommandRun:
    """``python -m consumer backfill ARGS`` against ``bootstrap``; its status and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_EMBEDDER_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", "backfill", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return CommandRun(proc.returncode, proc.stdout, proc.stderr)


class WorkerProcess(ConsumerProcess):
    """``python -m consumer backfill run ARGS`` (through the test launcher, which records what
    it sends), in its own process."""

    def start(self) -> WorkerProcess:
        cmd = [sys.executable, "-m", "tests.support.mutant_consumer", "backfill", "run"]
        cmd += [*self.args, "--no-metrics"]
        if self.summary_path is not None:
            cmd += ["--summary-json", str(self.summary_path)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            env = {**self.env, ENV_CALLS: str(self.calls_path)}
            env.pop(ENV_MUTANT, None)
            self._proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def processed(self) -> int:
        """Messages this worker processed: from its run summary when it wrote one, else (it
        was killed) the rows Milvus acknowledged to it."""
        if self.summary_path is not None and self.summary_path.exists():
            s = self.summary()
            return sum(s[k] for k in ("ingested", "skipped_stale", "superseded", "dead_lettered"))
        return len(self.upserted_ids())

    def plan_ends(self) -> dict[str, int] | None:
        """The ends the worker logged when it found the plan."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"backfill plan resumed"' in line:
                return orjson.loads(line)["ends"]
        return None


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``worker(*args, kafka=, milvus=, triton=, env=None)``: a started backfill worker, killed
    after the test."""
    started: list[WorkerProcess] = []

    def start(
        *args: str, kafka: str, milvus: str, triton: str, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        label = f"worker{len(started)}"
        proc = WorkerProcess(
            args=args,
            env=consumer_env(kafka, milvus, triton, env),
            log_path=tmp_path / f"{label}.log",
            summary_path=tmp_path / f"{label}-summary.json",
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()

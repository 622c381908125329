"""The backfill commands over SASL_SSL (SCRAM, the password from a file) with only the ACLs the
operations doc lists for the consumer (Read on the topic and the group, Write on the dead-letter
topic): ``backfill plan`` records the plan, ``backfill run`` ingests it, ``backfill status``
reports it complete, and none of their outputs holds the password."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from tests.security.conftest import ENV, Scenario, run_cli
from tests.support.milvus import rows_by_id

pytestmark = pytest.mark.integration


def test_plan_run_and_status_over_sasl_ssl_with_the_consumers_acls_only(
    scenario: Scenario, milvus_uri: str, triton_grpc_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(3)
    names = ["a", "b", "c", "d"]
    for name in names:
        pixels = rng.integers(0, 255, size=(64, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{name}.jpg", quality=90)
    scenario.grant()
    scenario.produce([{"id": n, "uri": (root / f"{n}.jpg").as_uri()} for n in names])
    env = {
        "MILVUS_URI": milvus_uri,
        "TRITON_URL": triton_grpc_url,
        ENV + "LOG_FORMAT": "json",
        **scenario.client_env("SCRAM-SHA-512"),
    }
    common = ["--topic", scenario.topic, "--group", scenario.group]

    plan = run_cli(
        "consumer", ["backfill", "plan", *common, "--from", "earliest", "--until-end"], env
    )
    assert plan.returncode == 0, plan.output[-3000:]
    assert "2 partition(s), 4 message(s) to process" in plan.stdout, plan.stdout

    summary = tmp_path / "summary.json"
    worker = run_cli(
        "consumer",
        [
            "backfill",
            "run",
            *common,
            "--collection",
            scenario.topic,
            "--file-root",
            str(root),
            "--no-metrics",
            "--summary-json",
            str(summary),
        ],
        env,
        summary=summary,
    )
    assert worker.returncode == 0, worker.output[-3000:]
    assert worker.summary is not None and worker.summary["ingested"] == 4, worker.summary
    assert sorted(rows_by_id(milvus_uri, scenario.topic)) == names

    status = run_cli("consumer", ["backfill", "status", *common, "--interval", "0", "--json"], env)
    assert status.returncode == 0, status.output[-3000:]
    figures = orjson.loads(status.stdout)
    assert (figures["done"], figures["total"], figures["remaining"]) == (4, 4, 0), figures
    assert figures["complete"] is True

    secrets = [*scenario.secrets, *scenario.server.passwords.values()]
    for run in (plan, worker, status):
        for secret in secrets:
            assert secret not in run.output

"""An ACL revoked during a run: the failure is retried for --auth-failure-timeout-s with a log
line naming it, then the consumer exits 1 (instead of logging the error forever)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from tests.security.conftest import ENV, PRINCIPAL, ROOT, Scenario

pytestmark = pytest.mark.integration

TIMEOUT_S = 5


def test_a_revoked_topic_acl_ends_the_run_after_the_timeout(
    scenario: Scenario, milvus_uri: str, triton_grpc_url: str, tmp_path: Path
) -> None:
    scenario.grant()
    log = tmp_path / "consumer.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith((ENV, "KAFKA_"))}
    env.update(
        {
            "MILVUS_URI": milvus_uri,
            "TRITON_URL": triton_grpc_url,
            ENV + "LOG_FORMAT": "json",
            ENV + "AUTH_FAILURE_TIMEOUT_S": str(TIMEOUT_S),
            **scenario.client_env(),
        }
    )
    args = ["run", "--topic", scenario.topic, "--group", scenario.group]
    args += ["--collection", scenario.topic, "--no-metrics"]
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", *args], env=env, cwd=ROOT, stderr=err
        )
    try:
        deadline = time.monotonic() + 240
        while "partitions assigned" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        admin = scenario.admin()
        revoke = AclBindingFilter(
            ResourceType.TOPIC,
            scenario.topic,
            ResourcePatternType.LITERAL,
            PRINCIPAL,
            "*",
            AclOperation.READ,
            AclPermissionType.ALLOW,
        )
        for future in admin.delete_acls([revoke]).values():
            future.result(30)
        revoked_at = time.monotonic()
        code = proc.wait(timeout=TIMEOUT_S + 45)
        waited = time.monotonic() - revoked_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert TIMEOUT_S <= waited < TIMEOUT_S + 45, waited
    assert "authorization" in text.lower()

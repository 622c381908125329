"""A misconfigured secured connection ends the consumer with exit 1 and one line naming the
cause, within 30 s, before Triton or Milvus is even tried (both point at closed ports here: a
consumer that got past the Kafka checks would wait for Triton instead of exiting)."""

from __future__ import annotations

import pytest

from devstack import free_port
from tests.security.conftest import ENV, CliRun, Scenario, run_cli

pytestmark = pytest.mark.integration

FAIL_WITHIN_S = 30.0


def _run(sc: Scenario, env: dict[str, str]) -> CliRun:
    closed = free_port()
    full = {
        "MILVUS_URI": f"http://127.0.0.1:{closed}",
        "TRITON_URL": f"grpc://127.0.0.1:{closed}",
        ENV + "LOG_FORMAT": "json",
        **env,
    }
    args = ["run", "--topic", sc.topic, "--group", sc.group, "--collection", sc.topic]
    return run_cli("consumer", [*args, "--until-end", "--no-metrics"], full, timeout_s=120)


def _error_line(run: CliRun) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, run.stderr[-3000:]
    return lines[0]


def _assert_fails_fast(run: CliRun, *needles: str) -> str:
    assert run.returncode == 1, run.output[-3000:]
    assert run.seconds < FAIL_WITHIN_S, f"took {run.seconds:.1f} s"
    line = _error_line(run)
    for needle in needles:
        assert needle in line, line
    return line


def test_wrong_password(scenario: Scenario) -> None:
    scenario.grant()
    run = _run(scenario, scenario.client_env("SCRAM-SHA-512", password="not-the-password"))
    line = _assert_fails_fast(run, "Kafka authentication failed", "'embedder'", "SCRAM-SHA-512")
    assert "invalid credentials" in line
    assert "not-the-password" not in run.output


def test_wrong_password_plain(scenario: Scenario) -> None:
    scenario.grant()
    run = _run(scenario, scenario.client_env("PLAIN", password="not-the-password"))
    _assert_fails_fast(run, "Kafka authentication failed", "PLAIN")
    assert "not-the-password" not in run.output


def test_wrong_oauth_client_secret(scenario: Scenario) -> None:
    scenario.grant()
    run = _run(scenario, scenario.client_env("OAUTHBEARER", password="not-the-secret"))
    line = _assert_fails_fast(run, "Kafka authentication failed", "OAUTHBEARER")
    assert "invalid_client" in line
    assert "not-the-secret" not in run.output


def test_missing_acl_over_oauthbearer(scenario: Scenario) -> None:
    scenario.grant(dlq_write=False)
    run = _run(scenario, scenario.client_env("OAUTHBEARER"))
    line = _assert_fails_fast(run, "Kafka ACL missing", "User:embedder")
    assert f"WRITE the topic {scenario.dlq!r}" in line


def test_untrusted_ca(scenario: Scenario) -> None:
    scenario.grant()
    env = scenario.client_env(ca_file=scenario.server.untrusted_ca_file)
    line = _assert_fails_fast(run := _run(scenario, env), "Kafka TLS verification failed")
    assert "not signed by a trusted CA" in line, line
    assert str(scenario.server.untrusted_ca_file) in line
    assert scenario.server.passwords["embedder"] not in run.output


def test_hostname_mismatch(scenario: Scenario) -> None:
    scenario.grant()
    env = scenario.client_env(bootstrap=scenario.server.badhost_bootstrap_servers)
    _assert_fails_fast(_run(scenario, env), "does not name the host '127.0.0.1'", "hostname")


def test_client_certificate_not_trusted(scenario: Scenario) -> None:
    scenario.grant()
    env = scenario.client_env("MTLS", client_cert="untrusted-embedder")
    _assert_fails_fast(_run(scenario, env), "refused the client certificate")


def test_missing_topic_acl(scenario: Scenario) -> None:
    scenario.grant(topic_read=False)
    line = _assert_fails_fast(_run(scenario, scenario.client_env()), "Kafka ACL missing")
    assert f"READ the topic {scenario.topic!r}" in line


def test_missing_group_acl(scenario: Scenario) -> None:
    scenario.grant(group_read=False)
    line = _assert_fails_fast(_run(scenario, scenario.client_env()), "Kafka ACL missing")
    assert f"READ the group {scenario.group!r}" in line


def test_missing_dead_letter_acl(scenario: Scenario) -> None:
    scenario.grant(dlq_write=False)
    line = _assert_fails_fast(_run(scenario, scenario.client_env()), "Kafka ACL missing")
    assert f"WRITE the topic {scenario.dlq!r}" in line


def test_missing_acl_over_mtls(scenario: Scenario) -> None:
    scenario.grant(group_read=False)
    line = _assert_fails_fast(_run(scenario, scenario.client_env("MTLS")), "Kafka ACL missing")
    assert "CN=embedder" in line


def _check(sc: Scenario, env: dict[str, str]) -> CliRun:
    closed = free_port()
    full = {
        "MILVUS_URI": f"http://127.0.0.1:{closed}",
        "TRITON_URL": f"grpc://127.0.0.1:{closed}",
        ENV + "GROUP": sc.group,
        **env,
    }
    return run_cli("consumer", ["check", "--topic", sc.topic], full, timeout_s=180)


def _lines(run: CliRun) -> dict[str, str]:
    found = {}
    for line in run.stdout.splitlines():
        mark, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        found[name] = f"{mark.strip()} {detail}"
    return found


def test_check_reports_each_missing_acl_separately(scenario: Scenario) -> None:
    scenario.grant(group_read=False, dlq_write=False)
    run = _check(scenario, scenario.client_env())
    lines = _lines(run)
    assert run.returncode == 1
    assert lines["kafka"].startswith("ok"), lines
    assert lines["topic-acl"].startswith("ok"), lines
    assert lines["group-acl"].startswith("FAIL") and scenario.group in lines["group-acl"]
    assert lines["dead-letter-acl"].startswith("FAIL") and scenario.dlq in lines["dead-letter-acl"]


def test_check_names_the_authentication_failure(scenario: Scenario) -> None:
    scenario.grant()
    run = _check(scenario, scenario.client_env(password="not-the-password"))
    lines = _lines(run)
    assert run.returncode == 1
    assert lines["kafka"].startswith("FAIL Kafka authentication failed"), lines
    assert "not-the-password" not in run.output

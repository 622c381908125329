"""Fixtures of the secured-connection tests: a Kafka with SASL_SSL, mTLS and ACLs (one per
session), a scenario per test (its own topic, dead-letter topic and group, with the ACLs the test
grants), and the consumer and producer CLIs run with their credentials in files.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from devstack import free_port
from devstack.kafka import fetch_kafka
from devstack.oidc import TokenServer
from devstack.securekafka import SecureKafkaServer
from tests.conftest import _STARTED

ROOT = Path(__file__).resolve().parents[2]
PRINCIPAL = "User:embedder"
#: The environment variable of each client setting (the consumer's and the producer's alike).
ENV = "IMAGE_EMBEDDER_"


@pytest.fixture(scope="session")
def oidc() -> Iterator[TokenServer]:
    """The OpenID Connect token endpoint of the session; its client ``embedder``."""
    with TokenServer({"embedder": f"client-{secrets.token_urlsafe(12)}"}) as server:
        yield server


@pytest.fixture(scope="session")
def secure_kafka(
    tmp_path_factory: pytest.TempPathFactory, oidc: TokenServer
) -> Iterator[SecureKafkaServer]:
    """A secured Kafka of the session (SASL_SSL with SCRAM, PLAIN and OAUTHBEARER/OIDC, mTLS,
    a wrong-hostname listener, the StandardAuthorizer)."""
    fetch_kafka()
    folder = tmp_path_factory.mktemp("secure-kafka")
    server = SecureKafkaServer(
        folder / "data",
        folder / "kafka.log",
        port=free_port(),
        controller_port=free_port(),
        mtls_port=free_port(),
        badhost_port=free_port(),
        internal_port=free_port(),
        jwks_url=oidc.jwks_url,
        oauth_issuer=oidc.issuer,
    )
    _STARTED.append(server)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Scenario:
    """One test's topic, dead-letter topic and group on the secured broker, and its ACLs."""

    server: SecureKafkaServer
    oidc: TokenServer
    topic: str
    group: str
    folder: Path
    secrets: list[str] = field(default_factory=list)

    @property
    def dlq(self) -> str:
        return f"{self.topic}.dlq"

    def admin(self) -> AdminClient:
        return AdminClient(self.server.admin_config())

    def grant(self, *, topic_read: bool = True, group_read: bool = True, dlq_write: bool = True):
        """Create the ACLs of the consumer's principal (only those asked for)."""
        bindings = []
        if topic_read:
            bindings.append(acl(ResourceType.TOPIC, self.topic, AclOperation.READ))
        if group_read:
            bindings.append(acl(ResourceType.GROUP, self.group, AclOperation.READ))
        if dlq_write:
            bindings.append(acl(ResourceType.TOPIC, self.dlq, AclOperation.WRITE))
        if bindings:
            admin = self.admin()  # kept alive until the futures are done
            for future in admin.create_acls(bindings).values():
                future.result(30)
        _wait_acls_visible()

    def produce(self, values: list[dict[str, Any]]) -> None:
        """Publish JSON values (keyed by their id) as the admin."""
        from confluent_kafka import Producer

        producer = Producer(self.server.admin_config())
        for value in values:
            producer.produce(self.topic, key=str(value.get("id", "")), value=orjson.dumps(value))
        assert producer.flush(30) == 0

    def secret_file(self, name: str, value: str) -> Path:
        """``value`` in a file of its own (mode 600), as a mounted Secret holds it."""
        path = self.folder / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        path.chmod(0o600)
        self.secrets.append(value)
        return path

    def client_env(
        self,
        mechanism: str = "SCRAM-SHA-512",
        *,
        password: str | None = None,
        ca_file: Path | None = None,
        bootstrap: str | None = None,
        client_cert: str = "embedder",
    ) -> dict[str, str]:
        """The environment of a client of ``mechanism`` (or ``MTLS``): the password in a file."""
        server = self.server
        env = {ENV + "KAFKA_SSL_CA_LOCATION": str(ca_file or server.ca_file)}
        if mechanism == "MTLS":
            cert = server.cert(client_cert)
            env.update(
                {
                    "KAFKA_BOOTSTRAP_SERVERS": bootstrap or server.mtls_bootstrap_servers,
                    ENV + "KAFKA_SECURITY_PROTOCOL": "SSL",
                    ENV + "KAFKA_SSL_CERTIFICATE_LOCATION": str(cert.cert),
                    ENV + "KAFKA_SSL_KEY_LOCATION": str(cert.key),
                }
            )
            self.secrets.append(cert.key.read_text().splitlines()[1])
            return env
        if mechanism == "OAUTHBEARER":
            secret = password if password is not None else self.oidc.clients["embedder"]
            oauth = {
                "sasl.oauthbearer.method": "oidc",
                "sasl.oauthbearer.client.id": "embedder",
                "sasl.oauthbearer.token.endpoint.url": self.oidc.token_url,
                "sasl.oauthbearer.scope": "kafka",
            }
            env.update(
                {
                    "KAFKA_BOOTSTRAP_SERVERS": bootstrap or server.bootstrap_servers,
                    ENV + "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                    ENV + "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                    ENV + "KAFKA_CONFIG": json.dumps(oauth),
                    ENV + "KAFKA_OAUTH_CLIENT_SECRET_FILE": str(
                        self.secret_file("oauth-client-secret", secret)
                    ),
                }
            )
            return env
        secret = password if password is not None else server.passwords["embedder"]
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap or server.bootstrap_servers,
                ENV + "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                ENV + "KAFKA_SASL_MECHANISM": mechanism,
                ENV + "KAFKA_SASL_USERNAME": "embedder",
                ENV + "KAFKA_SASL_PASSWORD_FILE": str(self.secret_file("kafka-password", secret)),
            }
        )
        return env


def acl(kind: ResourceType, name: str, op: AclOperation) -> AclBinding:
    return AclBinding(
        kind, name, ResourcePatternType.LITERAL, PRINCIPAL, "*", op, AclPermissionType.ALLOW
    )


def _wait_acls_visible() -> None:
    # ACLs go through the KRaft metadata log; on one node they apply within milliseconds
    time.sleep(0.3)


@pytest.fixture
def scenario(
    secure_kafka: SecureKafkaServer, oidc: TokenServer, unique_name: str, tmp_path: Path
) -> Iterator[Scenario]:
    """Topic (2 partitions) and dead-letter topic made by the admin; no ACL granted yet."""
    admin = AdminClient(secure_kafka.admin_config())
    topics = [NewTopic(unique_name, 2, 1), NewTopic(f"{unique_name}.dlq", 1, 1)]
    for future in admin.create_topics(topics).values():
        future.result(30)
    yield Scenario(secure_kafka, oidc, unique_name, f"{unique_name}-group", tmp_path)


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    summary: dict[str, Any] | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(
    module: str,
    args: list[str],
    env: dict[str, str],
    *,
    timeout_s: float = 300,
    summary: Path | None = None,
) -> CliRun:
    """``python -m MODULE ARGS`` with ``env`` over a clean copy of this process's environment."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith((ENV, "KAFKA_", "TRITON_", "MILVUS_"))
    }
    full_env.update(env)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=full_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    seconds = time.monotonic() - started
    data = orjson.loads(summary.read_bytes()) if summary and summary.exists() else None
    return CliRun(proc.returncode, proc.stdout, proc.stderr, seconds, data)


@pytest.fixture
def run_secured_consumer(
    milvus_uri: str, triton_grpc_url: str, tmp_path: Path
) -> Callable[..., CliRun]:
    """``consumer run --until-end`` of a scenario against the session's Milvus and Triton."""

    def run(sc: Scenario, env: dict[str, str], *args: str, timeout_s: float = 300) -> CliRun:
        summary = tmp_path / f"summary-{time.monotonic_ns()}.json"
        full = {
            "MILVUS_URI": milvus_uri,
            "TRITON_URL": triton_grpc_url,
            ENV + "LOG_FORMAT": "json",
            **env,
        }
        cmd = [
            "run",
            "--topic",
            sc.topic,
            "--group",
            sc.group,
            "--collection",
            sc.topic,
            "--until-end",
            "--no-metrics",
            "--summary-json",
            str(summary),
            *args,
        ]
        return run_cli("consumer", cmd, full, timeout_s=timeout_s, summary=summary)

    return run

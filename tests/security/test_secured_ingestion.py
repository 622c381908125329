"""Ingestion over each secured mechanism, with a dead letter, the credentials in files; the
producer CLI and redrive over SASL_SSL with the password from a file; and no output of these
runs (stdout, stderr at DEBUG, /metrics, /readyz, the run summary, the dead letters) holding a
secret."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AclOperation, ResourceType
from PIL import Image

from devstack import free_port
from tests.security.conftest import ENV, ROOT, CliRun, Scenario, acl, run_cli
from tests.support.milvus import rows_by_id

pytestmark = pytest.mark.integration


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for name in names:
        pixels = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.jpg", quality=90)
    return folder


def _dead_letters(sc: Scenario, expected: int) -> list:
    consumer = Consumer(
        {
            **sc.server.admin_config(),
            "group.id": f"{sc.dlq}.reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([sc.dlq])
    found = []
    deadline = time.monotonic() + 60
    while len(found) < expected and time.monotonic() < deadline:
        found += [m for m in consumer.consume(num_messages=100, timeout=0.5) if m.error() is None]
    consumer.close()
    return found


@pytest.mark.parametrize(
    "mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "OAUTHBEARER", "MTLS"]
)
def test_ingests_and_dead_letters(
    mechanism: str, scenario: Scenario, run_secured_consumer, milvus_uri: str, tmp_path: Path
) -> None:
    root = _images(tmp_path / "images", ["a", "b", "c"])
    scenario.grant()
    good = [{"id": n, "uri": (root / f"{n}.jpg").as_uri()} for n in ("a", "b", "c")]
    missing = {"id": "gone", "uri": (root / "gone.jpg").as_uri()}
    scenario.produce([*good, missing])
    run = run_secured_consumer(scenario, scenario.client_env(mechanism), "--file-root", str(root))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.summary is not None
    assert (run.summary["ingested"], run.summary["dead_lettered"]) == (3, 1), run.summary
    assert sorted(rows_by_id(milvus_uri, scenario.topic)) == ["a", "b", "c"]
    [letter] = _dead_letters(scenario, 1)
    assert letter.key() == b"gone"
    _assert_no_secret(scenario, run.output, orjson.dumps(run.summary).decode())


def _assert_no_secret(sc: Scenario, *texts: str) -> None:
    secrets = [*sc.secrets, *sc.server.passwords.values()]
    assert secrets
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_producer_and_redrive_over_sasl_ssl_with_a_password_file(
    scenario: Scenario, run_secured_consumer, milvus_uri: str, tmp_path: Path
) -> None:
    """`producer create-topic`, `publish` and `redrive` as the user embedder over SCRAM, its
    password from a file, with only the ACLs they need."""
    root = _images(tmp_path / "images", ["a"])
    scenario.grant()
    admin = scenario.admin()
    for future in admin.create_acls(
        [
            acl(ResourceType.TOPIC, scenario.topic, AclOperation.WRITE),
            acl(ResourceType.TOPIC, scenario.topic, AclOperation.CREATE),  # create-topic
            acl(ResourceType.TOPIC, scenario.dlq, AclOperation.CREATE),
            acl(ResourceType.TOPIC, scenario.dlq, AclOperation.READ),
            acl(ResourceType.GROUP, f"{scenario.dlq}-redrive", AclOperation.READ),
        ]
    ).values():
        future.result(30)
    time.sleep(0.3)
    env = scenario.client_env("SCRAM-SHA-512")
    bootstrap = ["--bootstrap-servers", env.pop("KAFKA_BOOTSTRAP_SERVERS")]
    sizes = ["--partitions", "2", "--dlq-partitions", "1"]
    created = run_cli("producer", ["create-topic", scenario.topic, *sizes, *bootstrap], env)
    assert created.returncode == 0, created.output  # both exist already: fine
    uris = [(root / "a.jpg").as_uri(), (root / "late.jpg").as_uri()]
    published = run_cli("producer", ["publish", "--topic", scenario.topic, *bootstrap, *uris], env)
    assert published.returncode == 0, published.output
    first = run_secured_consumer(
        scenario, scenario.client_env("SCRAM-SHA-512"), "--file-root", str(root)
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.summary is not None and first.summary["dead_lettered"] == 1, first.summary
    shutil.copy(root / "a.jpg", root / "late.jpg")  # the cause is fixed
    redrive = run_cli(
        "producer",
        [
            "redrive",
            "--dlq-topic",
            scenario.dlq,
            "--topic",
            scenario.topic,
            "--group",
            f"{scenario.dlq}-redrive",
            "--until-end",
            *bootstrap,
        ],
        env,
    )
    assert redrive.returncode == 0, redrive.output
    assert "redriven 1" in redrive.stderr
    second = run_secured_consumer(
        scenario, scenario.client_env("SCRAM-SHA-512"), "--file-root", str(root)
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.summary is not None and second.summary["ingested"] == 1, second.summary
    assert len(rows_by_id(milvus_uri, scenario.topic)) == 2
    _assert_no_secret(scenario, created.output, published.output, redrive.output)


def test_no_secret_in_any_output(
    scenario: Scenario, milvus_uri: str, triton_grpc_url: str, tmp_path: Path
) -> None:
    """A secured run at DEBUG, its /metrics and /readyz scraped while it runs, its summary and
    its dead letters (headers and values): no password, no key, no Milvus token anywhere."""
    root = _images(tmp_path / "images", ["a", "b"])
    scenario.grant()
    scenario.produce(
        [
            {"id": "a", "uri": (root / "a.jpg").as_uri()},
            {"id": "b", "uri": (root / "b.jpg").as_uri()},
            {"id": "gone", "uri": (root / "gone.jpg").as_uri()},
        ]
    )
    port = free_port()
    summary = tmp_path / "summary.json"
    env = {
        "MILVUS_URI": milvus_uri,
        "TRITON_URL": triton_grpc_url,
        ENV + "LOG_FORMAT": "json",
        ENV + "LOG_LEVEL": "DEBUG",
        # Milvus Lite has no authentication and ignores a token: it is passed and never shown
        ENV + "MILVUS_TOKEN_FILE": str(scenario.secret_file("milvus-token", "root:milvus-t0ken")),
        **scenario.client_env("SCRAM-SHA-512"),
    }
    full_env = {k: v for k, v in os.environ.items() if not k.startswith((ENV, "KAFKA_"))}
    full_env.update(env)
    args = [
        "run",
        "--topic",
        scenario.topic,
        "--group",
        scenario.group,
        "--collection",
        scenario.topic,
        "--until-end",
        "--file-root",
        str(root),
        "--metrics-port",
        str(port),
        "--summary-json",
        str(summary),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer", *args],
        env=full_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scraped: list[str] = []
    while proc.poll() is None:
        for path in ("/metrics", "/readyz", "/healthz"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    scraped.append(r.read().decode())
            except OSError as exc:  # not served yet, or a 503 of /readyz
                body = getattr(exc, "read", None)
                if body is not None:
                    scraped.append(body().decode(errors="replace"))
        time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=60)
    run = CliRun(proc.returncode, stdout, stderr, 0.0, orjson.loads(summary.read_bytes()))
    assert run.returncode == 0, stderr[-3000:]
    assert any("image_embedder_" in text for text in scraped), "no /metrics scraped"
    assert '"level":"debug"' in stderr or '"level": "debug"' in stderr, "no DEBUG lines"
    letters = _dead_letters(scenario, 1)
    dead = [
        (m.value() or b"").decode(errors="replace") + repr([(k, v) for k, v in (m.headers() or [])])
        for m in letters
    ]
    _assert_no_secret(scenario, stdout, stderr, *scraped, summary.read_text(), *dead)
    assert "root:milvus-t0ken" in scenario.secrets  # the grep covered it

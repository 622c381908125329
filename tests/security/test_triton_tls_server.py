"""Triton over TLS against a real server (PyTriton's Triton offers TLS on gRPC only): with the
right CA the consumer ingests over ``grpcs://``, and ``search`` and ``check`` connect; an untrusted
certificate is one clear line and exit 1 at start-up, at once (never waited for as "unavailable");
with mutual TLS a client without a certificate, or with one another CA signed, is refused in one
line, and one with the client certificate works.

The servers serve the benchmark model (``--bench-model near-free``: the reference contract, no
compile wait); these tests are about the connection, and its vectors are still deterministic, so a
stored image is its own nearest row.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from devstack import TritonServer
from devstack.tlscerts import CertFiles, CertificateAuthority
from devstack.triton import TritonTLS
from tests.conftest import new_triton
from tests.support.kafka import create_topic, produce_json
from tests.support.milvus import rows_by_id

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENV = "IMAGE_EMBEDDER_"
#: A start-up error must come well before the consumer's 60 s wait for an unavailable Triton.
FAST_S = 30


@dataclass(frozen=True)
class TlsTritons:
    tls: TritonServer  # server certificate only
    mutual: TritonServer  # clients must present a certificate the CA signed
    ca: Path
    untrusted_ca: Path
    client: CertFiles  # signed by ``ca``
    stranger: CertFiles  # a client certificate another CA signed


@pytest.fixture(scope="module")
def tritons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsTritons]:
    folder = tmp_path_factory.mktemp("triton-tls")
    ca = CertificateAuthority(folder / "certs", "triton")
    other = CertificateAuthority(folder / "certs", "untrusted")
    server = ca.issue("triton", server=True, client=False, file_stem="server")
    client = ca.issue("embedder", names=(), server=False, file_stem="client")
    stranger = other.issue("embedder", names=(), server=False, file_stem="stranger")
    servers = []
    for name, client_ca in (("tls", None), ("mutual", ca.ca_file)):
        (folder / name).mkdir()
        servers.append(
            new_triton(
                folder / name,
                extra_args=["--bench-model", "near-free"],
                tls=TritonTLS(server.chain, server.key, client_ca),
            )
        )
    try:
        for s in servers:
            s.start()
        yield TlsTritons(servers[0], servers[1], ca.ca_file, other.ca_file, client, stranger)
    finally:
        for s in servers:
            s.stop()


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8) // (seed + 1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}.jpg", quality=90)
    return folder


def _tls_env(url: str, ca: Path, client: CertFiles | None = None) -> dict[str, str]:
    env = {"TRITON_URL": url, ENV + "TRITON_SSL_ROOT_CERTIFICATES": str(ca)}
    if client is not None:
        env[ENV + "TRITON_SSL_CERTIFICATE_CHAIN"] = str(client.chain)
        env[ENV + "TRITON_SSL_PRIVATE_KEY"] = str(client.key)
    return env


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _consumer(args: list[str], env: dict[str, str], timeout_s: float = 300) -> Run:
    full = {k: v for k, v in os.environ.items() if not k.startswith((ENV, "TRITON_"))}
    full.update(env)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


@dataclass(frozen=True)
class Topic:
    name: str
    root: Path
    kafka: str
    milvus: str

    def run(self, env: dict[str, str], timeout_s: float = 300) -> Run:
        args = ["run", "--topic", self.name, "--group", f"{self.name}-g"]
        args += ["--collection", self.name, "--until-end", "--no-metrics"]
        args += ["--file-root", str(self.root)]
        full = {"KAFKA_BOOTSTRAP_SERVERS": self.kafka, "MILVUS_URI": self.milvus, **env}
        return _consumer(args, full, timeout_s)


@pytest.fixture
def topic(kafka_bootstrap: str, milvus_uri: str, unique_name: str, tmp_path: Path) -> Topic:
    """Three images and a missing one on a topic of their own (its dead-letter topic too)."""
    root = _images(tmp_path / "images", ["a", "b", "c"])
    create_topic(kafka_bootstrap, unique_name)
    create_topic(kafka_bootstrap, f"{unique_name}.dlq")
    values = [{"id": n, "uri": (root / f"{n}.jpg").as_uri()} for n in ("a", "b", "c")]
    values.append({"id": "gone", "uri": (root / "gone.jpg").as_uri()})
    produce_json(kafka_bootstrap, unique_name, values)
    return Topic(unique_name, root, kafka_bootstrap, milvus_uri)


def _assert_ingested(run: Run, topic: Topic) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ingested=3 dead_lettered=1" in run.stdout, run.stdout
    assert sorted(rows_by_id(topic.milvus, topic.name)) == ["a", "b", "c"]


def _assert_fast_tls_failure(run: Run, cause: str) -> None:
    assert run.returncode == 1, run.stdout + run.stderr[-3000:]
    assert run.seconds < FAST_S, f"took {run.seconds:.1f} s: waited for Triton"
    assert cause in run.stdout + run.stderr, run.stdout + run.stderr[-3000:]
    assert "waiting for Triton" not in run.stderr


def test_run_search_and_check_over_grpcs_with_the_right_ca(
    tritons: TlsTritons, topic: Topic
) -> None:
    assert tritons.tls.grpc_url.startswith("grpcs://")
    env = _tls_env(tritons.tls.grpc_url, tritons.ca)
    _assert_ingested(topic.run(env), topic)

    found = _consumer(
        ["search", "--collection", topic.name, "--top-k", "1", str(topic.root / "b.jpg")],
        {"MILVUS_URI": topic.milvus, **env},
    )
    assert found.returncode == 0, found.stderr[-3000:]
    assert orjson.loads(found.stdout.splitlines()[0])["id"] == "b"

    checked = _consumer(
        ["check", "--topic", topic.name, "--collection", topic.name],
        {"KAFKA_BOOTSTRAP_SERVERS": topic.kafka, "MILVUS_URI": topic.milvus, **env},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]
    assert any(line.startswith("ok   triton:") for line in checked.stdout.splitlines())


UNTRUSTED = "the server's certificate is not trusted"


def test_an_untrusted_certificate_is_a_clear_start_up_error(
    tritons: TlsTritons, topic: Topic
) -> None:
    env = _tls_env(tritons.tls.grpc_url, tritons.untrusted_ca)
    run = topic.run(env)
    _assert_fast_tls_failure(run, UNTRUSTED)
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and UNTRUSTED in error[0], run.stderr[-3000:]

    found = _consumer(
        ["search", "--collection", topic.name, str(topic.root / "a.jpg")],
        {"MILVUS_URI": topic.milvus, **env},
    )
    _assert_fast_tls_failure(found, UNTRUSTED)

    checked = _consumer(
        ["check", "--collection", topic.name],
        {"KAFKA_BOOTSTRAP_SERVERS": topic.kafka, "MILVUS_URI": topic.milvus, **env},
    )
    assert checked.returncode == 1
    [line] = [line for line in checked.stdout.splitlines() if " triton:" in line]
    assert line.startswith("FAIL triton:") and UNTRUSTED in line, checked.stdout


def test_mutual_tls_refuses_a_client_without_a_certificate(
    tritons: TlsTritons, topic: Topic
) -> None:
    run = topic.run(_tls_env(tritons.mutual.grpc_url, tritons.ca))
    _assert_fast_tls_failure(run, "it requires a client certificate")
    assert "TRITON_SSL_CERTIFICATE_CHAIN".lower() in run.stderr.lower()


def test_mutual_tls_refuses_a_certificate_another_ca_signed(
    tritons: TlsTritons, topic: Topic
) -> None:
    run = topic.run(_tls_env(tritons.mutual.grpc_url, tritons.ca, tritons.stranger))
    _assert_fast_tls_failure(run, "it refused the client certificate")


def test_mutual_tls_with_the_client_certificate_works(tritons: TlsTritons, topic: Topic) -> None:
    run = topic.run(_tls_env(tritons.mutual.grpc_url, tritons.ca, tritons.client))
    _assert_ingested(run, topic)
    key = tritons.client.key.read_text().splitlines()[1]
    assert key not in run.stdout + run.stderr, "the client key appears in the output"

"""The consumer started with the settings exactly as the chart renders them (`helm template`):
the ConfigMap's variables, the container's environment, its arguments and its Secret volumes
(the Secrets' files written where the pod would see them, under a folder standing for the
pod's root), against the secured broker over SASL_SSL and mutual TLS."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import free_port
from tests.security.conftest import ROOT, Scenario, run_cli
from tests.support.milvus import rows_by_id

pytestmark = pytest.mark.integration

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "helm" / "image-embedder"


def _render(sets: list[str]) -> list[dict[str, Any]]:
    if not HELM.exists():
        pytest.skip("the repository's helm is missing: run `make .tools/bin/helm` first")
    args = [str(HELM), "template", "rel", str(CHART), "--namespace", "ns"]
    for pair in sets:
        args += ["--set", pair]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _pod(
    docs: list[dict[str, Any]], secrets: dict[str, dict[str, str]], root: Path
) -> tuple[dict[str, str], list[str]]:
    """The consumer container's environment and arguments, its volumes laid out under
    ``root`` (a mount path P becomes ROOT/P, and so does every setting naming a file in it)."""
    [config] = [
        d for d in docs if d["kind"] == "ConfigMap" and "KAFKA_BOOTSTRAP_SERVERS" in d["data"]
    ]
    [deploy] = [
        d for d in docs if d["kind"] == "Deployment" and "model-server" not in d["metadata"]["name"]
    ]
    spec = deploy["spec"]["template"]["spec"]
    [container] = [c for c in spec["containers"] if c["name"] == "consumer"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    # /tmp (an emptyDir) stays this machine's /tmp, where the test's files are
    mounts = {
        m["mountPath"]: m["name"] for m in container["volumeMounts"] if m["mountPath"] != "/tmp"
    }
    for path, name in mounts.items():
        folder = root / path.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        secret = volumes[name].get("secret")
        if secret is None:
            continue
        data = secrets[secret["secretName"]]
        items = secret.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            (folder / item["path"]).write_text(data[item["key"]])

    def rooted(value: str) -> str:
        for path in mounts:
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return str(root / value.lstrip("/"))
        return value

    env = {k: rooted(str(v)) for k, v in config["data"].items()}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = rooted(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = "pod-0"  # POD_NAME
    assert container.get("command") is None  # the image's entrypoint: python -m consumer
    return env, [rooted(a) for a in container["args"]]


@pytest.mark.parametrize(
    ("mechanism", "secrets_as"),
    [("SCRAM-SHA-512", "files"), ("SCRAM-SHA-512", "env"), ("MTLS", "files")],
)
def test_consumer_runs_as_the_chart_renders_it(
    mechanism: str,
    secrets_as: str,
    scenario: Scenario,
    milvus_uri: str,
    triton_grpc_url: str,
    tmp_path: Path,
) -> None:
    server = scenario.server
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(images / "red.jpg")
    scenario.grant()
    scenario.produce(
        [
            {"id": "red", "uri": (images / "red.jpg").as_uri()},
            {"id": "gone", "uri": (images / "gone.jpg").as_uri()},
        ]
    )
    tls = {"ca.crt": server.ca_file.read_text()}
    sets = [
        f"secretsAs={secrets_as}",
        f"consumer.topic={scenario.topic}",
        f"consumer.group={scenario.group}",
        f"consumer.collection={scenario.topic}",
        f"consumer.milvusUri={milvus_uri}",
        f"consumer.tritonUrl={triton_grpc_url}",
        f"metrics.port={free_port()}",
        "kafka.tls.existingSecret=kafka-tls",
        "consumer.extraArgs[0]=--until-end",
        "consumer.extraArgs[1]=--file-root",
        f"consumer.extraArgs[2]={images}",
    ]
    secrets: dict[str, dict[str, str]] = {"kafka-tls": tls}
    if mechanism == "MTLS":
        cert = server.cert("embedder")
        tls.update({"tls.crt": cert.cert.read_text(), "tls.key": cert.key.read_text()})
        sets += [
            f"kafka.bootstrapServers={server.mtls_bootstrap_servers}",
            "kafka.securityProtocol=SSL",
            "kafka.tls.certKey=tls.crt",
            "kafka.tls.keyKey=tls.key",
        ]
    else:
        password = server.passwords["embedder"]
        secrets["kafka-credentials"] = {"username": "embedder", "password": password}
        scenario.secrets.append(password)
        sets += [
            f"kafka.bootstrapServers={server.bootstrap_servers}",
            "kafka.securityProtocol=SASL_SSL",
            f"kafka.sasl.mechanism={mechanism}",
            "kafka.sasl.existingSecret=kafka-credentials",
        ]
    env, args = _pod(_render(sets), secrets, tmp_path / "pod")
    if secrets_as == "files":
        assert not [v for v in env.values() if v in scenario.secrets]  # only paths in the env
    run = run_cli("consumer", args, env, timeout_s=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ingested=1 dead_lettered=1" in run.stdout, run.output[-3000:]
    assert sorted(rows_by_id(milvus_uri, scenario.topic)) == ["red"]
    for secret in scenario.secrets:
        assert secret not in run.output

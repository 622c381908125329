"""The Quix Streams peer of the benchmark: every message of a tiny backlog becomes its row.

The peer runs in its own environment (``make quix-venv``), built here when missing; it is skipped
with the reason when the package index cannot be reached.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import quixbench
from bench.dataset import backlog, build_dataset
from bench.kafka_io import create_topic, publish
from bench.servers import milvus_client
from schemas import preprocessing as contract

ROOT = Path(__file__).resolve().parent.parent.parent
MESSAGES = 7


def _peer_constants() -> dict[str, Any]:
    tree = ast.parse((ROOT / "bench" / "quix_peer.py").read_text())
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if any(
                isinstance(n, ast.Name | ast.Call | ast.Attribute) for n in ast.walk(node.value)
            ):
                continue  # only constant expressions, e.g. 1.0 / 127.5
            code = compile(ast.Expression(node.value), "quix_peer.py", "eval")
            out[node.targets[0].id] = eval(code, {"__builtins__": {}})
    return out


def test_peer_repeats_the_model_contract() -> None:
    """The peer cannot import the service; its copy of the contract must match it."""
    c = _peer_constants()
    scale, offset = contract.scale_and_offset()
    assert c["INPUT_NAME"] == contract.INPUT_NAME
    assert c["OUTPUT_NAME"] == contract.EMBEDDING_OUTPUT
    assert c["RESIZE_SHORTER_PX"] == contract.RESIZE_SHORTER_PX
    assert c["CROP_PX"] == contract.CROP_PX
    assert c["SCALE"] == pytest.approx(scale)
    assert c["OFFSET"] == pytest.approx(offset)
    assert contract.INTERPOLATION == "bilinear" and contract.LAYOUT == "NHWC"


def _committed(bootstrap: str, topic: str, group: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(0, tp.offset) for tp in committed)
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def quix_venv() -> Path:
    if not quixbench.QUIX_PYTHON.exists():
        proc = subprocess.run(
            ["make", "--no-print-directory", "quix-venv"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            pytest.skip(f"the Quix Streams environment could not be built: {proc.stderr[-500:]}")
    return quixbench.QUIX_PYTHON


@pytest.mark.integration
def test_peer_writes_every_message_as_its_row(
    quix_venv: Path,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    dataset = build_dataset(tmp_path / "cache", 4)
    topic = f"quix-{unique_name}"
    collection = f"quix_{unique_name}".replace("-", "_")
    create_topic(kafka_bootstrap, topic, 2)
    records = list(backlog(dataset, MESSAGES, topic))
    publish(kafka_bootstrap, topic, records)
    result = quixbench.run_peer(
        bootstrap=kafka_bootstrap,
        topic=topic,
        triton_url=triton_grpc_url,
        milvus_uri=milvus_uri,
        collection=collection,
        messages=MESSAGES,
        file_root=dataset.folder,
        work=tmp_path / "work",
        timeout_s=300,
    )
    assert result["rows"] == MESSAGES
    assert result["images_per_s"] > 0 and result["cpu_s_per_image"] > 0
    client = milvus_client(milvus_uri)
    try:
        rows = client.query(
            collection,
            filter='id like "quix-%"',
            output_fields=["id", "uri", "embedding", "kafka_offset"],
            consistency_level="Strong",
        )
    finally:
        client.drop_collection(collection)
        client.close()
    # Quix committed the offsets after the sink: the group is at the end of every partition
    assert _committed(kafka_bootstrap, topic, f"{topic}-quix") == MESSAGES
    expected = {key.decode(): value for key, value in records}
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for row in rows:
        assert f'"{row["uri"]}"' in expected[row["id"]].decode()
        norm = sum(x * x for x in row["embedding"]) ** 0.5
        assert norm == pytest.approx(1.0, abs=1e-4)
        assert len(row["embedding"]) == contract.EMBEDDING_DIM


@pytest.mark.integration
def test_bench_section_compares_peer_and_consumer(
    quix_venv: Path,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    tmp_path: Path,
) -> None:
    """``python -m bench`` with only the Quix section: both ran every message, a ratio each."""
    from bench.cli import SECTIONS

    skips = [arg for name in SECTIONS if name != "quix" for arg in ("--skip", name)]
    results_dir = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            *skips,
            "--images",
            "6",
            "--quix-sizes",
            f"{MESSAGES}",
            "--kafka-bootstrap",
            kafka_bootstrap,
            "--milvus-uri",
            milvus_uri,
            "--triton-url",
            triton_grpc_url,
            "--results-dir",
            str(results_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "IMAGE_EMBEDDER_BENCH_CPUS"},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    [json_path] = results_dir.glob("*.json")
    results = orjson.loads(json_path.read_bytes())
    run = results["quix"]["runs"][str(MESSAGES)]
    assert run["peer"]["rows"] == run["peer"]["rows_in_collection"] == MESSAGES
    assert run["consumer"]["ingested"] == MESSAGES
    assert run["peer"]["images_per_s"] > 0 and run["consumer"]["images_per_s"] > 0
    consumer = run["consumer"]
    # like for like with the peer: from the first message polled to the last one done
    assert consumer["startup_seconds"] > 0 and consumer["images_per_s_from_first_poll"] > 0
    assert run["ratio_from_first_poll"] == pytest.approx(
        consumer["images_per_s_from_first_poll"] / run["peer"]["images_per_s"], abs=0.01
    )
    assert run["over_ceiling_from_first_poll"] is None  # no end-to-end section, no ceiling
    ratio = results["ratios"][f"consumer_over_quix_{MESSAGES}"]
    assert ratio["value"] == pytest.approx(run["ratio_from_first_poll"], abs=1e-3)
    assert ratio["target"] == 2.0
    assert "Quix Streams peer" in proc.stdout


def test_quix_sizes_must_be_positive_integers() -> None:
    from bench.cli import parse_args

    assert parse_args(["--quix-sizes", "600,2400"]).quix_sizes == (600, 2400)
    assert parse_args(["--quick"]).quix_sizes == (12,)
    for bad in ("0", "six", ""):
        with pytest.raises(SystemExit):
            parse_args(["--quix-sizes", bad])

"""Operations against a running consumer: metrics moving, probes, SIGTERM drain, check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devstack import free_port
from tests.consumer.conftest import photo_messages, start_consumer
from tests.support.kafka import committed_offsets, create_topic, end_offsets, produce_json
from tests.support.reliability import metric, wait_until

pytestmark = pytest.mark.integration


def test_metrics_move_probes_answer_and_sigterm_drains(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Counters and histograms move while ingesting; /livez and /readyz answer 200; SIGTERM
    drains and commits to the end, then exits 0."""
    messages = photo_messages(photo_dir)[:8]
    bad = [{"id": "nope", "uri": (photo_dir / "missing.jpg").as_uri()}]
    create_topic(kafka_bootstrap, unique_name, partitions=2)
    port = free_port()
    proc = start_consumer(
        [
            "--topic",
            unique_name,
            "--group",
            unique_name,
            "--collection",
            unique_name,
            "--file-root",
            str(photo_dir),
            "--metrics-port",
            str(port),
        ],
        kafka=kafka_bootstrap,
        milvus=milvus_uri,
        triton=triton_grpc_url,
        log_file=tmp_path / "consumer.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def scrape() -> str:
            return httpx.get(f"{base}/metrics", timeout=5).text

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, what="/readyz")
        assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
        produce_json(kafka_bootstrap, unique_name, [*messages, *bad])
        wait_until(
            lambda: (
                metric(scrape(), "image_embedder_messages_total", 'outcome="ingested"')
                >= len(messages)
            ),
            what="ingested counter",
        )
        text = scrape()
        assert metric(text, "image_embedder_dead_letters_total", 'error_type="not_found"') == 1
        for stage in ("fetch", "decode", "preprocess", "infer", "normalize", "write"):
            assert (
                metric(text, "image_embedder_stage_duration_seconds_count", f'stage="{stage}"') > 0
            ), stage
        assert metric(text, "image_embedder_batch_size_count") > 0
        # freshness: every acknowledged record of this unbounded run is live, and young
        e2e = "image_embedder_end_to_end_seconds"
        written = metric(text, f"{e2e}_count", 'kind="written",live="true"')
        assert written >= len(messages)
        assert metric(text, f"{e2e}_count", 'kind="dead_lettered",live="true"') == 1
        assert metric(text, f"{e2e}_count", 'live="false"') == 0
        assert 0 <= metric(text, f"{e2e}_sum", 'kind="written",live="true"') < 600 * written
        assert "image_embedder_build_info{" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert committed_offsets(kafka_bootstrap, unique_name, unique_name) == end_offsets(
        kafka_bootstrap, unique_name
    )


def test_check_reports_what_is_wrong(
    kafka_bootstrap: str, milvus_uri: str, triton_grpc_url: str, unique_name: str
) -> None:
    """check passes for a good set-up and names the missing topic and the wrong output."""
    create_topic(kafka_bootstrap, unique_name)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MILVUS_URI": milvus_uri,
        "TRITON_URL": triton_grpc_url,
    }
    cmd = [sys.executable, "-m", "consumer", "check", "--collection", unique_name]
    good = subprocess.run(
        [*cmd, "--topic", unique_name], env=env, capture_output=True, text=True, check=False
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "FAIL" not in good.stdout
    bad = subprocess.run(
        [*cmd, "--topic", f"{unique_name}_missing", "--output", "NOPE"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "FAIL topic" in bad.stdout and "FAIL triton" in bad.stdout and "NOPE" in bad.stdout

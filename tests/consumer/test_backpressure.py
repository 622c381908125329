"""Backpressure: a slow Milvus pauses partitions, memory stays bounded, nothing is lost."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from devstack import TcpProxy, free_port
from tests.consumer.conftest import start_consumer
from tests.support.kafka import committed_offsets, create_topic, end_offsets, produce_json
from tests.support.milvus import rows_by_id

pytestmark = pytest.mark.integration

#: Peak resident memory allowed for the consumer process in this test (JAX, gRPC, Triton and
#: Milvus clients included); rows in flight are capped at 8, so the backlog adds nothing.
RSS_BOUND_BYTES = 2_500 * 1024 * 1024


def test_slow_milvus_pauses_partitions_and_loses_nothing(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Milvus behind a proxy that adds 0.3 s each way: the consumer pauses its partitions
    (paused-partitions gauge > 0), keeps memory under the bound, and ingests every message."""
    target = urlsplit(milvus_uri)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 19530)
    proxy.start()
    image = (photo_dir / "coffee.jpg").as_uri()
    messages = [{"id": f"m{i}", "uri": image} for i in range(40)]
    create_topic(kafka_bootstrap, unique_name, partitions=2)
    produce_json(kafka_bootstrap, unique_name, messages)
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
            "--until-end",
            "--metrics-port",
            str(port),
            "--max-rows-in-flight",
            "8",
            "--batch-size",
            "4",
        ],
        kafka=kafka_bootstrap,
        milvus=f"http://127.0.0.1:{proxy.port}",
        triton=triton_grpc_url,
        log_file=tmp_path / "consumer.log",
    )
    peak_rss = 0
    max_paused = 0.0
    try:
        watched = psutil.Process(proc.pid)
        delayed = False
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                peak_rss = max(peak_rss, watched.memory_info().rss)
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except (httpx.HTTPError, psutil.Error):
                time.sleep(0.2)
                continue
            if not delayed and "image_embedder_build_info{" in text:
                proxy.set_delay(0.3)  # the collection exists; now slow every write
                delayed = True
            for line in text.splitlines():
                if line.startswith("image_embedder_paused_partitions "):
                    max_paused = max(max_paused, float(line.split()[1]))
            time.sleep(0.2)
        assert proc.wait(timeout=60) == 0, (tmp_path / "consumer.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.stop()
    assert max_paused > 0, "partitions were never paused"
    assert peak_rss < RSS_BOUND_BYTES, peak_rss
    assert sorted(rows_by_id(milvus_uri, unique_name, ["id"])) == sorted(m["id"] for m in messages)
    assert committed_offsets(kafka_bootstrap, unique_name, unique_name) == end_offsets(
        kafka_bootstrap, unique_name
    )

"""Backpressure: a slow Milvus pauses partitions, memory stays bounded, nothing is lost."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil
import pytest

from devstack import TcpProxy, free_port
from tests.support.kafka import committed_offsets, create_topic, end_offsets, produce_json
from tests.support.milvus import rows_by_id
from tests.support.reliability import ConsumerProcess, consumer_env, metric

pytestmark = pytest.mark.integration

#: Rows in flight allowed: the cap (8) plus one micro-batch polled before the pause (4). A
#: consumer without the cap would hold all 40 messages at once while Milvus is slow.
MAX_ROWS_IN_FLIGHT = 8
BATCH = 4
#: Growth of resident memory allowed after the first row was written, over the peak before
#: it: the rows the cap admits (12 x ~1.4 MiB of canvases and tensors) and allocator slack.
#: All 40 messages in flight would add some 56 MiB more; the in-flight gauge is the sharp check.
RSS_GROWTH_BOUND_BYTES = 96 * 1024 * 1024


def slow_milvus_scenario(
    *,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photo_dir: Path,
    topic: str,
    tmp_path: Path,
    mutant: str | None = None,
) -> None:
    target = urlsplit(milvus_uri)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 19530)
    proxy.start()
    image = (photo_dir / "coffee.jpg").as_uri()
    messages = [{"id": f"m{i}", "uri": image} for i in range(40)]
    create_topic(kafka_bootstrap, topic, partitions=2)
    produce_json(kafka_bootstrap, topic, messages)
    args = (
        "--topic", topic, "--group", topic, "--collection", topic,
        "--file-root", str(photo_dir), "--until-end",
        "--max-rows-in-flight", str(MAX_ROWS_IN_FLIGHT), "--batch-size", str(BATCH),
    )  # fmt: skip
    proc = ConsumerProcess(
        args=args,
        env=consumer_env(kafka_bootstrap, f"http://127.0.0.1:{proxy.port}", triton_url),
        log_path=tmp_path / "consumer.log",
        summary_path=tmp_path / "summary.json",
        metrics_port=free_port(),
        mutant=mutant,
    ).start()
    peak_before = peak_after = 0
    max_paused = max_in_flight = 0.0
    last = ""
    try:
        watched = psutil.Process(proc.pid)
        delayed = False
        deadline = time.monotonic() + 300
        while proc.running() and time.monotonic() < deadline:
            try:
                rss = watched.memory_info().rss
                text = proc.scrape()
            except Exception:  # not serving yet, or just exited
                time.sleep(0.2)
                continue
            # the baseline: everything up to the first acknowledged row (JAX compiled, a
            # batch through the model, the cap's rows already in flight)
            if metric(text, "image_embedder_messages_total", 'outcome="ingested"') >= 1:
                peak_after = max(peak_after, rss)
            else:
                peak_before = max(peak_before, rss)
            if not delayed and "image_embedder_build_info{" in text:
                proxy.set_delay(0.3)  # the collection exists; now slow every write
                delayed = True
            last = text
            max_paused = max(max_paused, metric(text, "image_embedder_paused_partitions"))
            max_in_flight = max(max_in_flight, metric(text, "image_embedder_rows_in_flight"))
            time.sleep(0.2)
        assert proc.wait(60) == 0, proc.log_tail()
    finally:
        proc.kill()
        proxy.stop()
    if mutant:
        proc.assert_mutant_applied()
    assert 0 < max_in_flight <= MAX_ROWS_IN_FLIGHT + BATCH, f"ROWS IN FLIGHT: {max_in_flight}"
    assert max_paused > 0, "partitions were never paused"
    # the pause comes from the slow Milvus: its writes took the proxy's delay (0.3 s each way),
    # and inference, the other stage that could hold rows back, was far quicker
    write_s = _mean_stage_seconds(last, "write")
    infer_s = _mean_stage_seconds(last, "infer")
    assert write_s >= 0.5 and infer_s < write_s / 2, f"NOT MILVUS: write {write_s} infer {infer_s}"
    assert peak_before > 0 and peak_after > 0, (peak_before, peak_after)
    assert peak_after <= peak_before + RSS_GROWTH_BOUND_BYTES, (peak_before, peak_after)
    rows = rows_by_id(milvus_uri, topic, ["id", "uri", "embedding"])
    assert sorted(rows) == sorted(m["id"] for m in messages)
    for row in rows.values():  # each a real row of its message, not just its id
        assert row["uri"] == image, row["id"]
        assert abs(float(np.linalg.norm(row["embedding"])) - 1.0) < 1e-3, row["id"]
    assert committed_offsets(kafka_bootstrap, topic, topic) == end_offsets(kafka_bootstrap, topic)


def _mean_stage_seconds(text: str, stage: str) -> float:
    name = "image_embedder_stage_duration_seconds"
    count = metric(text, f"{name}_count", f'stage="{stage}"')
    assert count > 0, f"no {stage} stage observed"
    return metric(text, f"{name}_sum", f'stage="{stage}"') / count


def test_slow_milvus_pauses_partitions_and_loses_nothing(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Milvus behind a proxy that adds 0.3 s each way: the consumer pauses its partitions
    (paused-partitions gauge > 0), never holds more than the cap plus one micro-batch in
    flight (rows-in-flight gauge), grows its memory by no more than what the cap admits over
    its peak up to the first written row, and ingests every message with its URI and a unit
    vector."""
    slow_milvus_scenario(
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        triton_url=triton_grpc_url,
        photo_dir=photo_dir,
        topic=unique_name,
        tmp_path=tmp_path,
    )


def test_a_consumer_without_the_rows_cap_is_caught(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Test of the test: without the cap on rows in flight the in-flight check fails."""
    with pytest.raises(AssertionError, match="ROWS IN FLIGHT"):
        slow_milvus_scenario(
            kafka_bootstrap=kafka_bootstrap,
            milvus_uri=milvus_uri,
            triton_url=triton_grpc_url,
            photo_dir=photo_dir,
            topic=unique_name,
            tmp_path=tmp_path,
            mutant="no_rows_cap",
        )

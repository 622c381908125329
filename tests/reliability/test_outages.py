"""Server outages mid-stream: Kafka broker, Milvus and Triton each go away and come back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack import KafkaServer, MilvusServer, TcpProxy, TritonServer, free_port
from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import (
    ConsumerProcess,
    Record,
    describe_group,
    image_record,
    metric,
    publish,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 2
#: How long Milvus stays down (issue: "Milvus stopped for 30 s").
MILVUS_OUTAGE_S = 30.0


def _records(prefix: str, count: int, photos: list[Path]) -> tuple[list[str], list[Record]]:
    ids = [f"{prefix}{i:02d}" for i in range(count)]
    records = [
        image_record(msg_id, photos[i % len(photos)].as_uri(), partition=i % PARTITIONS)
        for i, msg_id in enumerate(ids)
    ]
    return ids, records


def test_milvus_down_30s_commits_nothing_unwritten_keeps_polling_and_recovers(
    kafka_bootstrap: str,
    triton_grpc_url: str,
    start_milvus: Callable[..., MilvusServer],
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass, with the test's own Milvus stopped for 30 s mid-stream and restarted on the same
    data folder and port: during the outage the consumer process lives, stays a member of its
    group with its partitions assigned (its max.poll.interval is 10 s, so a stalled loop would
    be evicted), /livez answers 200, and /metrics shows paused partitions; every offset the
    group committed at any time during the outage names a row present in Milvus after the
    restart (committed count <= rows present); then every id arrives exactly once, the group
    commits to the end and no message was dead-lettered."""
    milvus = start_milvus()
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    ids, records = _records("m", 40, photos)
    positions = dict(zip(ids, publish(kafka_bootstrap, topic, records), strict=True))
    proc = spawn(
        "--topic", topic, "--group", topic, "--collection", topic,
        "--file-root", str(photos[0].parent),
        "--batch-size", "2", "--max-rate", "4", "--max-rows-in-flight", "8",
        kafka=kafka_bootstrap, milvus=milvus.uri, triton=triton_grpc_url,
        metrics_port=free_port(),
        env={"IMAGE_EMBEDDER_MAX_POLL_INTERVAL_MS": "10000"},
    )  # fmt: skip
    wait_until(lambda: count_rows(milvus.uri, topic) >= 4, "first rows", alive=[proc])

    milvus.stop()
    max_committed: dict[int, int] = {}
    max_paused = 0.0
    samples = 0
    outage_end = time.monotonic() + MILVUS_OUTAGE_S
    while time.monotonic() < outage_end:
        assert proc.running(), proc.log_tail()
        for part, off in committed_offsets(kafka_bootstrap, topic, topic).items():
            max_committed[part] = max(max_committed.get(part, 0), off)
        group = describe_group(kafka_bootstrap, topic)
        assert group.members == 1 and group.assigned == PARTITIONS, (group, proc.log_tail())
        max_paused = max(max_paused, metric(proc.scrape(), "image_embedder_paused_partitions"))
        samples += 1
        time.sleep(1.0)
    assert proc.probe("/livez") == 200, proc.log_tail()
    assert samples >= 5
    assert max_paused > 0, f"partitions were never paused\n{proc.log_tail()}"
    assert proc.running(), proc.log_tail()

    milvus.start()
    # Recovery is judged from Kafka first: the test must not load the collection for the
    # consumer (Milvus Lite restarts with its collections released).
    ends = end_offsets(kafka_bootstrap, topic)
    wait_until(
        lambda: committed_offsets(kafka_bootstrap, topic, topic) == ends,
        "the consumer to write and commit everything after the restart",
        alive=[proc],
    )
    rows = rows_by_id(milvus.uri, topic, ["id"])
    for msg_id, (part, off) in positions.items():
        if off < max_committed.get(part, 0):
            assert msg_id in rows, f"{part}:{off} was committed during the outage, not written"
    assert sum(max_committed.values()) <= len(rows)
    assert count_rows(milvus.uri, topic) == len(ids)
    proc.terminate()
    assert proc.wait() == 0, proc.log_tail()
    assert sorted(rows_by_id(milvus.uri, topic, ["id"])) == sorted(ids)
    assert proc.summary()["dead_lettered"] == 0


def test_broker_stopped_and_restarted_consumer_recovers_by_itself(
    start_kafka: Callable[..., KafkaServer],
    milvus_uri: str,
    triton_grpc_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass, with the test's own broker stopped mid-stream and started again on the same data
    folder and ports: the consumer process survives the outage untouched by the test, then by
    itself ingests the rest and what is published after the restart; every id is in Milvus
    exactly once, the group commits to the end, nothing is dead-lettered, SIGTERM exits 0."""
    kafka = start_kafka()
    bootstrap = kafka.bootstrap_servers
    topic = unique_name
    create_topic(bootstrap, topic, partitions=PARTITIONS)
    ids, records = _records("k", 16, photos)
    publish(bootstrap, topic, records)
    proc = spawn(
        "--topic", topic, "--group", topic, "--collection", topic,
        "--file-root", str(photos[0].parent), "--batch-size", "2", "--max-rate", "4",
        kafka=bootstrap, milvus=milvus_uri, triton=triton_grpc_url,
    )  # fmt: skip
    wait_until(lambda: count_rows(milvus_uri, topic) >= 4, "first rows", alive=[proc])

    kafka.stop()
    time.sleep(8.0)  # the outage itself; nothing is asserted about its length
    assert proc.running(), proc.log_tail()
    kafka.start()

    more_ids, more = _records("k2-", 8, photos)
    publish(bootstrap, topic, more)
    ids += more_ids
    wait_until(lambda: count_rows(milvus_uri, topic) == len(ids), "all rows", alive=[proc])
    ends = end_offsets(bootstrap, topic)
    wait_until(
        lambda: committed_offsets(bootstrap, topic, topic) == ends,
        "commits to the end",
        alive=[proc],
    )
    proc.terminate()
    assert proc.wait() == 0, proc.log_tail()
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(ids)
    assert proc.summary()["dead_lettered"] == 0


def test_triton_slowed_then_stopped_bounded_retries_no_dead_letters_nothing_lost(
    kafka_bootstrap: str,
    milvus_uri: str,
    start_triton: Callable[..., TritonServer],
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass, with the test's own Triton behind a loopback TCP proxy: (1) a 2 s delay each way
    against a 3 s request timeout makes inference time out, which is retried (the Triton
    retry counter moves) and not dead-lettered; (2) a 0.5 s delay (slow but within the
    timeout) lets the backlog through; (3) Triton stopped and started again on the same ports:
    retries again, then recovery. Every id arrives exactly once, summary ingested == published,
    no dead letters, the group commits to the end, and the retry count stays within what
    exponential backoff allows (a retry loop without backoff would exceed it many times)."""
    triton = start_triton()
    proxy = TcpProxy("127.0.0.1", triton.grpc_port).start()
    try:
        topic = unique_name
        create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
        ids, records = _records("a", 8, photos)
        publish(kafka_bootstrap, topic, records)
        proc = spawn(
            "--topic", topic, "--group", topic, "--collection", topic,
            "--file-root", str(photos[0].parent), "--batch-size", "2", "--infer-threads", "2",
            kafka=kafka_bootstrap, milvus=milvus_uri, triton=f"grpc://127.0.0.1:{proxy.port}",
            metrics_port=free_port(),
            env={"IMAGE_EMBEDDER_TRITON_TIMEOUT_S": "3"},
        )  # fmt: skip

        def rows() -> int:
            return count_rows(milvus_uri, topic)

        def triton_retries() -> float:
            return metric(proc.scrape(), "image_embedder_retries_total", 'operation="triton"')

        wait_until(lambda: rows() == len(ids), "the first messages", alive=[proc])
        faults_started = time.monotonic()

        proxy.set_delay(2.0)  # every request now outlives its 3 s timeout
        more, records = _records("b", 8, photos)
        publish(kafka_bootstrap, topic, records)
        ids += more
        wait_until(lambda: triton_retries() >= 2, "timed-out requests retried", alive=[proc])
        proxy.set_delay(0.5)  # slow, but within the timeout
        wait_until(lambda: rows() == len(ids), "the backlog through a slow link", alive=[proc])

        before_stop = triton_retries()
        triton.stop()
        more, records = _records("c", 8, photos)
        publish(kafka_bootstrap, topic, records)
        ids += more
        wait_until(lambda: triton_retries() >= before_stop + 2, "retries while down", alive=[proc])
        assert metric(proc.scrape(), "image_embedder_dead_letters_total") == 0
        triton.start()
        wait_until(lambda: rows() == len(ids), "recovery after the restart", alive=[proc])
        proxy.set_delay(0.0)
        faults_s = time.monotonic() - faults_started
        ends = end_offsets(kafka_bootstrap, topic)
        wait_until(
            lambda: committed_offsets(kafka_bootstrap, topic, topic) == ends,
            "commits to the end",
            alive=[proc],
        )
        retries = triton_retries()
        proc.terminate()
        assert proc.wait() == 0, proc.log_tail()
    finally:
        proxy.stop()
    summary = proc.summary()
    assert summary["dead_lettered"] == 0, summary
    assert summary["ingested"] == len(ids), summary
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(ids)
    # At most 2 x infer-threads requests are in flight; each waits at least a 3 s timeout or an
    # exponential backoff (0.1-0.2 s at first, doubling, capped at 10 s) between attempts.
    in_flight = 2 * 2
    bound = 2 * in_flight * (8 + faults_s / 3)
    assert 0 < retries <= bound, (retries, bound, faults_s)

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
    CommitSampler,
    ConsumerProcess,
    MilvusIds,
    Record,
    acknowledged_ids,
    assert_upserts_only,
    assert_written_once_per_ingest,
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


def milvus_outage_scenario(
    outage_s: float,
    *,
    kafka_bootstrap: str,
    triton_url: str,
    start_milvus: Callable[..., MilvusServer],
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    topic: str,
    mutant: str | None = None,
) -> None:
    milvus = start_milvus()
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    ids, records = _records("m", 40, photos)
    positions = dict(zip(ids, publish(kafka_bootstrap, topic, records), strict=True))
    durable = MilvusIds(milvus.uri, topic)
    with CommitSampler(kafka_bootstrap, topic, topic, positions, durable) as sampler:
        proc = spawn(
            "--topic", topic, "--group", topic, "--collection", topic,
            "--file-root", str(photos[0].parent),
            "--batch-size", "2", "--max-rate", "4", "--max-rows-in-flight", "8",
            kafka=kafka_bootstrap, milvus=milvus.uri, triton=triton_url,
            metrics_port=free_port(),
            env={"IMAGE_EMBEDDER_MAX_POLL_INTERVAL_MS": "10000"},
            mutant=mutant,
        )  # fmt: skip
        wait_until(lambda: count_rows(milvus.uri, topic) >= 4, "first rows", alive=[proc])

        # From here on, durable means acknowledged by Milvus to the consumer: the rows present
        # when Milvus stopped, and nothing more until it is back.
        durable.fallback = acknowledged_ids(proc)
        milvus.stop()
        at_stop = set(proc.upserted_ids())
        max_paused = 0.0
        samples = 0
        outage_end = time.monotonic() + outage_s
        while time.monotonic() < outage_end:
            assert proc.running(), proc.log_tail()
            group = describe_group(kafka_bootstrap, topic)
            assert group.members == 1 and group.assigned == PARTITIONS, (group, proc.log_tail())
            max_paused = max(max_paused, metric(proc.scrape(), "image_embedder_paused_partitions"))
            samples += 1
            time.sleep(1.0)
        assert set(proc.upserted_ids()) == at_stop, "a write was acknowledged by a stopped Milvus"
        during = dict(sampler.max_committed)
        sampler.check(min_committed=1)  # nothing unwritten was committed, before or during
        assert proc.probe("/livez") == 200, proc.log_tail()
        assert samples >= min(5, outage_s / 2)
        assert max_paused > 0, f"partitions were never paused\n{proc.log_tail()}"
        assert proc.running(), proc.log_tail()
        if mutant:
            proc.assert_mutant_applied()

        milvus.start()
        # Recovery is judged from Kafka first: the test must not load the collection for the
        # consumer (Milvus Lite restarts with its collections released).
        ends = end_offsets(kafka_bootstrap, topic)
        wait_until(
            lambda: committed_offsets(kafka_bootstrap, topic, topic) == ends,
            "the consumer to write and commit everything after the restart",
            timeout_s=120,
            alive=[proc],
        )
    durable.close()
    sampler.check(min_committed=len(ids))
    sampler.check_commits(proc)
    committed_in_outage = sum(during.values())
    acked_in_outage = sum(1 for m in at_stop if m in positions)
    assert committed_in_outage <= acked_in_outage, (during, len(at_stop))
    assert count_rows(milvus.uri, topic) == len(ids)
    proc.terminate()
    assert proc.wait() == 0, proc.log_tail()
    assert sorted(rows_by_id(milvus.uri, topic, ["id"])) == sorted(ids)
    assert_upserts_only(proc)
    assert_written_once_per_ingest(proc)
    assert proc.summary()["dead_lettered"] == 0


def test_milvus_down_30s_commits_nothing_unwritten_keeps_polling_and_recovers(
    kafka_bootstrap: str,
    triton_url: str,
    start_milvus: Callable[..., MilvusServer],
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass, with the test's own Milvus stopped for 30 s mid-stream and restarted on the same
    data folder and port: a sampler reads the group's committed offsets every 0.1 s from the
    start, and at every sample each committed message was in Milvus (before the stop) or
    acknowledged by it before it stopped (during the outage; the consumer's acknowledged
    writes are recorded as sent); no write is acknowledged while Milvus is down; the process
    lives, stays a member of its group with its partitions assigned (max.poll.interval 10 s,
    so a stalled loop would be evicted), /livez answers 200 and /metrics shows paused
    partitions; then every id arrives, each upserted once per ingested message, the group
    commits to the end and nothing was dead-lettered."""
    milvus_outage_scenario(
        MILVUS_OUTAGE_S,
        kafka_bootstrap=kafka_bootstrap,
        triton_url=triton_url,
        start_milvus=start_milvus,
        photos=photos,
        spawn=spawn,
        topic=unique_name,
    )


def test_broker_stopped_and_restarted_consumer_recovers_by_itself(
    start_kafka: Callable[..., KafkaServer],
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """See :func:`broker_outage_scenario`."""
    broker_outage_scenario(
        start_kafka=start_kafka,
        milvus_uri=milvus_uri,
        triton_url=triton_url,
        photos=photos,
        spawn=spawn,
        topic=unique_name,
    )


def broker_outage_scenario(
    *,
    start_kafka: Callable[..., KafkaServer],
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    topic: str,
    mutant: str | None = None,
) -> None:
    """Pass, with the test's own broker stopped mid-stream and started again on the same data
    folder and ports: the consumer process survives the outage untouched by the test, then by
    itself ingests the rest and what is published after the restart; every id is in Milvus
    exactly once, the group commits to the end, nothing is dead-lettered, SIGTERM exits 0; the
    broker stopped mid-stream (fewer rows than messages at the stop); the partitions were lost
    and assigned again across the restart (the consumer's rebalance callbacks); a sampler
    reading the committed offsets every 0.1 s never saw one whose message was not in Milvus;
    only upserts were sent. (``commit_ahead`` in test_mutants.py fails the sampler.)"""
    kafka = start_kafka()
    bootstrap = kafka.bootstrap_servers
    create_topic(bootstrap, topic, partitions=PARTITIONS)
    ids, records = _records("k", 16, photos)
    positions = dict(zip(ids, publish(bootstrap, topic, records), strict=True))
    durable = MilvusIds(milvus_uri, topic)
    with CommitSampler(bootstrap, topic, topic, positions, durable) as sampler:
        proc = spawn(
            "--topic", topic, "--group", topic, "--collection", topic,
            "--file-root", str(photos[0].parent), "--batch-size", "2", "--max-rate", "4",
            kafka=bootstrap, milvus=milvus_uri, triton=triton_url, mutant=mutant,
        )  # fmt: skip
        wait_until(lambda: count_rows(milvus_uri, topic) >= 4, "first rows", alive=[proc])

        kafka.stop()
        at_stop = count_rows(milvus_uri, topic)
        assignments_before = sum(1 for c in proc.calls() if c["op"] == "assign")
        time.sleep(8.0)  # the outage itself; nothing is asserted about its length
        assert proc.running(), proc.log_tail()
        kafka.start()

        more_ids, more = _records("k2-", 8, photos)
        sampler.add(dict(zip(more_ids, publish(bootstrap, topic, more), strict=True)))
        ids += more_ids
        try:
            wait_until(lambda: count_rows(milvus_uri, topic) == len(ids), "all rows", alive=[proc])
        except AssertionError:
            sampler.check_violations()  # rows lost for good after a commit ahead: say that first
            raise
        ends = end_offsets(bootstrap, topic)
        wait_until(
            lambda: committed_offsets(bootstrap, topic, topic) == ends,
            "commits to the end",
            alive=[proc],
        )
        proc.terminate()
        assert proc.wait() == 0, proc.log_tail()
    durable.close()
    if mutant:
        proc.assert_mutant_applied()
    sampler.check(min_committed=len(ids))
    sampler.check_commits(proc)
    assert at_stop < 16, "the broker stopped after every message was processed"
    events = [c["op"] for c in proc.calls() if c["op"] in ("assign", "revoke", "lost")]
    print(f"rebalance events: {events}")
    after_stop = events[assignments_before:]
    assert "lost" in after_stop and "assign" in after_stop[after_stop.index("lost") :], (
        f"partitions were not lost and assigned again across the restart: {events}"
    )
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(ids)
    assert_upserts_only(proc)
    assert proc.summary()["dead_lettered"] == 0


#: How long retries are counted while Triton is stopped, and how many one request may make in
#: that window with exponential backoff (0.05-0.1 s at the least at first, doubling: 8 attempts
#: take at least 12.75 s), plus one for the attempt under way. A fixed window, so the bound
#: does not grow with how long the test happens to take; a loop without backoff makes
#: thousands of attempts in it.
BACKOFF_WINDOW_S = 10.0
ATTEMPTS_PER_REQUEST_IN_WINDOW = 9


def test_triton_slowed_then_stopped_bounded_retries_no_dead_letters_nothing_lost(
    kafka_bootstrap: str,
    milvus_uri: str,
    start_triton: Callable[..., TritonServer],
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """See :func:`triton_outage_scenario`."""
    triton_outage_scenario(
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        start_triton=start_triton,
        photos=photos,
        spawn=spawn,
        topic=unique_name,
    )


def triton_outage_scenario(
    *,
    kafka_bootstrap: str,
    milvus_uri: str,
    start_triton: Callable[..., TritonServer],
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    topic: str,
    mutant: str | None = None,
) -> None:
    """Pass, with the test's own Triton behind a loopback TCP proxy: (1) a 2 s delay each way
    against a 3 s request timeout makes inference time out, which is retried (the Triton
    retry counter moves) and not dead-lettered; (2) a 0.5 s delay (slow but within the
    timeout) lets the backlog through; (3) Triton stopped and started again on the same ports:
    retries again, then recovery. Every id arrives exactly once, summary ingested == published,
    no dead letters, the group commits to the end, and over a fixed window while Triton is
    down the retries stay within what exponential backoff allows (``no_triton_backoff`` in
    test_mutants.py makes thousands)."""
    triton = start_triton()
    proxy = TcpProxy("127.0.0.1", triton.grpc_port).start()
    try:
        create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
        ids, records = _records("a", 8, photos)
        positions = dict(zip(ids, publish(kafka_bootstrap, topic, records), strict=True))
        durable = MilvusIds(milvus_uri, topic)
        sampler = CommitSampler(kafka_bootstrap, topic, topic, positions, durable).__enter__()
        proc = spawn(
            "--topic", topic, "--group", topic, "--collection", topic,
            "--file-root", str(photos[0].parent), "--batch-size", "2", "--infer-threads", "2",
            kafka=kafka_bootstrap, milvus=milvus_uri, triton=f"grpc://127.0.0.1:{proxy.port}",
            metrics_port=free_port(),
            env={"IMAGE_EMBEDDER_TRITON_TIMEOUT_S": "3"}, mutant=mutant,
        )  # fmt: skip

        def rows() -> int:
            return count_rows(milvus_uri, topic)

        def triton_retries() -> float:
            return metric(proc.scrape(), "image_embedder_retries_total", 'operation="triton"')

        wait_until(lambda: rows() == len(ids), "the first messages", alive=[proc])

        proxy.set_delay(2.0)  # every request now outlives its 3 s timeout
        more, records = _records("b", 8, photos)
        sampler.add(dict(zip(more, publish(kafka_bootstrap, topic, records), strict=True)))
        ids += more
        wait_until(lambda: triton_retries() >= 2, "timed-out requests retried", alive=[proc])
        proxy.set_delay(0.5)  # slow, but within the timeout
        wait_until(lambda: rows() == len(ids), "the backlog through a slow link", alive=[proc])

        before_stop = triton_retries()
        triton.stop()
        more, records = _records("c", 8, photos)
        sampler.add(dict(zip(more, publish(kafka_bootstrap, topic, records), strict=True)))
        ids += more
        wait_until(lambda: triton_retries() >= before_stop + 2, "retries while down", alive=[proc])
        window_start = triton_retries()
        time.sleep(BACKOFF_WINDOW_S)
        in_window = triton_retries() - window_start
        in_flight = 2 * 2  # at most 2 x infer-threads requests
        bound = in_flight * ATTEMPTS_PER_REQUEST_IN_WINDOW
        if mutant:
            proc.assert_mutant_applied()
        assert in_window <= bound, f"NO BACKOFF: {in_window} retries in {BACKOFF_WINDOW_S} s"
        assert metric(proc.scrape(), "image_embedder_dead_letters_total") == 0
        triton.start()
        wait_until(lambda: rows() == len(ids), "recovery after the restart", alive=[proc])
        proxy.set_delay(0.0)
        ends = end_offsets(kafka_bootstrap, topic)
        wait_until(
            lambda: committed_offsets(kafka_bootstrap, topic, topic) == ends,
            "commits to the end",
            alive=[proc],
        )
        retries = triton_retries()
        proc.terminate()
        assert proc.wait() == 0, proc.log_tail()
        sampler.__exit__()
        durable.close()
        # no offset moved past a request stuck at Triton: every committed one was written
        sampler.check(min_committed=len(ids))
        sampler.check_commits(proc)
    finally:
        proxy.stop()
    summary = proc.summary()
    assert summary["dead_lettered"] == 0, summary
    assert summary["ingested"] == len(ids), summary
    assert_upserts_only(proc)
    assert_written_once_per_ingest(proc)
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(ids)
    assert retries > 0

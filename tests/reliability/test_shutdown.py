"""SIGTERM mid-batch: drain, commit exactly what was processed, and a restart repeats nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import (
    ConsumerProcess,
    LocalHttpServer,
    image_record,
    publish,
    send_slowly,
    wait_until,
)

pytestmark = pytest.mark.integration

MESSAGES = 30
PARTITIONS = 2
#: Position of the message fetched from a slow server: its fetch is in flight at SIGTERM.
SLOW_INDEX = 10


def test_sigterm_mid_batch_commits_what_was_processed_and_restart_repeats_nothing(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass: SIGTERM lands while a fetch is in flight (a slow HTTP answer) and intake is
    throttled, so work remains; the process drains and exits 0; per partition the offsets
    present in Milvus are exactly [0, committed) (committed position == processed position,
    the in-flight message included); the restart ingests exactly end - committed messages
    (nothing processed twice) and every id ends in Milvus once."""
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    started = threading.Event()
    slow = LocalHttpServer(
        {"/slow.jpg": send_slowly(photos[1].read_bytes(), delay_s=3.0, started=started)}
    ).start()
    try:
        ids = [f"s{i:02d}" for i in range(MESSAGES)]
        records = [
            image_record(
                msg_id,
                slow.url("/slow.jpg") if i == SLOW_INDEX else photos[i % len(photos)].as_uri(),
                partition=i % PARTITIONS,
            )
            for i, msg_id in enumerate(ids)
        ]
        positions = dict(zip(ids, publish(kafka_bootstrap, topic, records), strict=True))
        args = (
            "--topic",
            topic,
            "--group",
            topic,
            "--collection",
            topic,
            "--file-root",
            str(photos[0].parent),
            "--allowed-network",
            "127.0.0.1/32",
            "--batch-size",
            "2",
            "--max-rate",
            "4",
        )
        servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
        first = spawn(*args, **servers, name="first")
        wait_until(started.is_set, "the slow fetch to start", alive=[first])
        first.terminate()
        assert first.wait() == 0, first.log_tail()
        assert "drain timed out" not in first.log_path.read_text()
    finally:
        slow.stop()

    committed = committed_offsets(kafka_bootstrap, topic, topic)
    rows = rows_by_id(milvus_uri, topic, ["id", "kafka_partition", "kafka_offset"])
    assert ids[SLOW_INDEX] in rows, "the message in flight at SIGTERM was not drained"
    for part in range(PARTITIONS):
        present = sorted(r["kafka_offset"] for r in rows.values() if r["kafka_partition"] == part)
        assert present == list(range(committed.get(part, 0))), (part, present, committed)
    done = sum(committed.values())
    assert done < MESSAGES, "SIGTERM came after everything was processed"
    first_summary = first.summary()
    assert first_summary["ingested"] == done, first_summary

    restart = spawn(*args, "--until-end", **servers, name="restart")
    assert restart.wait() == 0, restart.log_tail()
    summary = restart.summary()
    assert summary["ingested"] == MESSAGES - done, (summary, committed)
    assert summary["dead_lettered"] == 0, summary
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(positions)
    assert count_rows(milvus_uri, topic) == MESSAGES
    assert committed_offsets(kafka_bootstrap, topic, topic) == end_offsets(kafka_bootstrap, topic)

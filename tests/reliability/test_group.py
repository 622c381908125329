"""Consumers joining, dying and leaving one group mid-stream: nothing is lost."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import (
    ConsumerProcess,
    describe_group,
    image_record,
    publish,
    wait_until,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6
PHASE = 20


def test_two_then_three_consumers_one_killed_nothing_missing(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass: two consumers share the stream, a third joins (3 members, all partitions
    assigned), one of the three is killed with SIGKILL while messages flow and the group
    settles on two members; every published id is then in Milvus exactly once, the group is
    committed to the end, and the survivors stop cleanly on SIGTERM."""
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    ids: list[str] = []

    def publish_phase(phase: int) -> None:
        batch = [f"g{phase}-{i:02d}" for i in range(PHASE)]
        records = [
            image_record(msg_id, photos[i % len(photos)].as_uri(), partition=i % PARTITIONS)
            for i, msg_id in enumerate(batch)
        ]
        publish(kafka_bootstrap, topic, records)
        ids.extend(batch)

    def rows() -> int:
        return count_rows(milvus_uri, topic)

    def group_is(members: int) -> Callable[[], bool]:
        def check() -> bool:
            state = describe_group(kafka_bootstrap, topic)
            return (
                state.state == "STABLE"
                and state.members == members
                and state.assigned == PARTITIONS
            )

        return check

    args = (
        "--topic",
        topic,
        "--group",
        topic,
        "--collection",
        topic,
        "--file-root",
        str(photos[0].parent),
        "--batch-size",
        "2",
        "--max-rate",
        "4",
    )
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}

    publish_phase(1)
    a = spawn(*args, **servers, name="a")
    b = spawn(*args, **servers, name="b")
    wait_until(group_is(2), "two members sharing every partition", alive=[a, b])
    wait_until(lambda: rows() >= PHASE // 2, "the two consumers to ingest", alive=[a, b])

    c = spawn(*args, **servers, name="c")
    wait_until(group_is(3), "three members sharing every partition", alive=[a, b, c])
    publish_phase(2)
    wait_until(lambda: rows() >= PHASE + 4, "ingestion after the third joined", alive=[a, b, c])

    a.kill()  # mid-stream: its uncommitted work must be redone by the others
    publish_phase(3)
    wait_until(group_is(2), "the group to settle on the two survivors", alive=[b, c])
    wait_until(lambda: rows() == len(ids), "every id to reach Milvus", alive=[b, c])
    ends = end_offsets(kafka_bootstrap, topic)
    wait_until(
        lambda: committed_offsets(kafka_bootstrap, topic, topic) == ends,
        "the group to commit to the end",
        alive=[b, c],
    )
    b.terminate()
    c.terminate()
    assert b.wait() == 0, b.log_tail()
    assert c.wait() == 0, c.log_tail()

    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(ids)
    assert count_rows(milvus_uri, topic) == len(ids)
    assert committed_offsets(kafka_bootstrap, topic, topic) == ends

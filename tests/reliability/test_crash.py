"""kill -9 at the worst moments, then a restart: nothing lost, no duplicate rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import ConsumerProcess, image_record, publish

pytestmark = pytest.mark.integration

MESSAGES = 24
PARTITIONS = 2


#: The kill lands the second time each point is reached: micro-batches of 4 messages, inference
#: requests of at most 4 images and write groups of at most 4 rows make every point recur at
#: least six times for 24 messages, so the second one is always mid-stream.
@pytest.mark.parametrize(
    ("point", "after"),
    [("after_poll", 2), ("after_infer", 2), ("after_upsert", 2)],
)
def test_kill_at_each_point_then_restart_loses_nothing(
    point: str,
    after: int,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Pass: the crash hook fired at ``point`` (marker file) and the process died of SIGKILL
    mid-stream; every offset committed before the kill names a row already in Milvus; the
    restart ingests exactly the uncommitted rest (end - committed); afterwards every published
    id is in Milvus exactly once (row count == ids) and the group is committed to the end."""
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    ids = [f"c{i:02d}" for i in range(MESSAGES)]
    records = [
        image_record(msg_id, photos[i % len(photos)].as_uri(), partition=i % PARTITIONS)
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
        "--until-end",
        "--batch-size",
        "4",
    )
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
    marker = tmp_path / "crash-marker"
    crashed = spawn(
        *args,
        **servers,
        env={
            "IMAGE_EMBEDDER_TEST_CRASH_AT": point,
            "IMAGE_EMBEDDER_TEST_CRASH_AFTER": str(after),
            "IMAGE_EMBEDDER_TEST_CRASH_MARKER": str(marker),
            # small write groups: the second acknowledged upsert always comes mid-stream
            "IMAGE_EMBEDDER_WRITE_BATCH_ROWS": "4",
        },
        name="crashed",
    )
    code = crashed.wait()
    assert marker.exists() and marker.read_text() == point, (
        f"the crash hook did not fire (exit {code})\n{crashed.log_tail()}"
    )
    assert code == -9, f"expected death by SIGKILL, got {code}\n{crashed.log_tail()}"

    ends = end_offsets(kafka_bootstrap, topic)
    committed = committed_offsets(kafka_bootstrap, topic, topic)
    assert sum(committed.values()) < MESSAGES, "the kill did not land mid-stream"
    rows = rows_by_id(milvus_uri, topic, ["id", "kafka_partition", "kafka_offset"])
    for msg_id, (part, off) in positions.items():
        if off < committed.get(part, 0):
            assert msg_id in rows, (
                f"offset {part}:{off} was committed but {msg_id} is not in Milvus"
            )
    if point == "after_upsert":
        uncommitted_rows = [
            r for r in rows.values() if r["kafka_offset"] >= committed.get(r["kafka_partition"], 0)
        ]
        assert uncommitted_rows, "no acknowledged row was left uncommitted by the kill"

    restart = spawn(*args, **servers, name="restart")
    assert restart.wait() == 0, restart.log_tail()
    summary = restart.summary()
    redo = sum(ends[p] - committed.get(p, 0) for p in ends)
    assert summary["ingested"] == redo, (summary, committed, ends)
    assert summary["dead_lettered"] == 0, summary
    after_rows = rows_by_id(milvus_uri, topic, ["id"])
    assert sorted(after_rows) == sorted(positions)
    assert count_rows(milvus_uri, topic) == MESSAGES
    assert committed_offsets(kafka_bootstrap, topic, topic) == ends

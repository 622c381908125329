"""kill -9 at the worst moments, after work was committed, then a restart: nothing lost, no row
written twice for committed work, no duplicate rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import (
    CommitSampler,
    ConsumerProcess,
    MilvusIds,
    assert_restart_redid_the_rest,
    assert_upserts_only,
    image_record,
    publish,
)

pytestmark = pytest.mark.integration

MESSAGES = 24
PARTITIONS = 2
POINTS = ("after_poll", "after_infer", "after_upsert")


def crash_scenario(
    point: str,
    *,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    topic: str,
    tmp_path: Path,
    mutant: str | None = None,
) -> None:
    """The kill lands the first time ``point`` is reached after a commit above offset 0 was
    acknowledged (the launcher arms the crash hook then; commits every 0.1 s). At most 4 rows
    are in flight (micro-batches of 2), so polls, inference answers and acknowledged writes
    keep coming after the first commit and the kill is always mid-stream."""
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    ids = [f"c{i:02d}" for i in range(MESSAGES)]
    records = [
        image_record(msg_id, photos[i % len(photos)].as_uri(), partition=i % PARTITIONS)
        for i, msg_id in enumerate(ids)
    ]
    positions = dict(zip(ids, publish(kafka_bootstrap, topic, records), strict=True))
    args = (
        "--topic", topic, "--group", topic, "--collection", topic,
        "--file-root", str(photos[0].parent), "--until-end",
        "--batch-size", "2", "--max-rows-in-flight", "4",
    )  # fmt: skip
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_url}
    marker = tmp_path / "crash-marker"
    durable = MilvusIds(milvus_uri, topic)
    with CommitSampler(kafka_bootstrap, topic, topic, positions, durable) as sampler:
        crashed = spawn(
            *args,
            **servers,
            env={
                "EMBEDDER_TEST_CRASH_AFTER_COMMIT": point,
                "IMAGE_EMBEDDER_TEST_CRASH_MARKER": str(marker),
                "IMAGE_EMBEDDER_COMMIT_INTERVAL_S": "0.1",
                "IMAGE_EMBEDDER_WRITE_BATCH_ROWS": "2",
            },
            name="crashed",
            mutant=mutant,
        )
        code = crashed.wait()
        if mutant:
            crashed.assert_mutant_applied()
        assert marker.exists() and marker.read_text() == point, (
            f"the crash hook did not fire (exit {code})\n{crashed.log_tail()}"
        )
        assert code == -9, f"expected death by SIGKILL, got {code}\n{crashed.log_tail()}"

        ends = end_offsets(kafka_bootstrap, topic)
        committed = committed_offsets(kafka_bootstrap, topic, topic)
        done = sum(committed.values())
        assert done > 0, "the kill came before any commit"
        assert done < MESSAGES, "the kill did not land mid-stream"
        rows = rows_by_id(milvus_uri, topic, ["id", "kafka_partition", "kafka_offset"])
        for msg_id, (part, off) in positions.items():
            if off < committed.get(part, 0):
                assert msg_id in rows, (
                    f"COMMITTED BEFORE DURABLE: {part}:{off} was committed but {msg_id} is not "
                    "in Milvus"
                )
        acked_uncommitted = {
            msg_id
            for msg_id in crashed.upserted_ids()
            if positions[msg_id][1] >= committed.get(positions[msg_id][0], 0)
        }
        if point == "after_upsert":
            assert acked_uncommitted, "no acknowledged row was left uncommitted by the kill"

        restart = spawn(*args, **servers, name="restart", mutant=mutant)
        assert restart.wait() == 0, restart.log_tail()
    durable.close()
    sampler.check(min_committed=1)
    sampler.check_commits(crashed, restart)
    assert_upserts_only(crashed, restart)
    summary = restart.summary()
    uncommitted = {m for m, (p, off) in positions.items() if off >= committed.get(p, 0)}
    assert len(uncommitted) == MESSAGES - done, (committed, ends)
    assert_restart_redid_the_rest(restart, uncommitted, set(crashed.upserted_ids()))
    assert summary["dead_lettered"] == 0, summary
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(positions)
    assert count_rows(milvus_uri, topic) == MESSAGES
    assert committed_offsets(kafka_bootstrap, topic, topic) == ends


@pytest.mark.parametrize("point", POINTS)
def test_kill_after_a_commit_at_each_point_then_restart_loses_nothing(
    point: str,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Pass: the crash hook fired at ``point`` (marker file) after at least one commit and the
    process died of SIGKILL mid-stream (0 < committed < messages); a sampler reading the
    committed offsets every 0.1 s during both runs never saw an offset whose message was not
    in Milvus, and no commit either run sent named a message whose write Milvus had not yet
    acknowledged; after ``after_upsert`` some acknowledged rows were uncommitted; every write sent
    was an upsert; the restart sends only uncommitted messages, each once, every one not
    written before the kill among them, and accounts for each uncommitted message once;
    afterwards every id is in Milvus once and the group is committed to the end."""
    crash_scenario(
        point,
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        triton_url=triton_url,
        photos=photos,
        spawn=spawn,
        topic=unique_name,
        tmp_path=tmp_path,
    )

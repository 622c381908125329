"""A bounded replay (``run --from ... --until-end``) keeps its plan in the group's commits: a
restart with the same arguments resumes it, a different plan is a clear error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumer.engine.plan import PlanSpec, decode, encode
from tests.consumer.conftest import photo_messages
from tests.consumer.engine.conftest import wait_for_commits
from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import rows_by_id
from tests.support.reliability import ConsumerProcess


def test_plan_metadata_round_trips_and_foreign_metadata_is_not_a_plan() -> None:
    assert decode(encode("abc", 17)) == ("abc", 17)
    for foreign in (None, "", "x", "[]", '{"plan": "abc"}', '{"f": 9, "plan": "a", "end": 1}'):
        assert decode(foreign) is None


def test_a_plan_is_named_by_its_specs_not_by_the_offsets_they_resolve_to() -> None:
    a = PlanSpec("t", "g", "earliest", None)
    assert a.plan_id == PlanSpec("t", "g", "earliest", None).plan_id
    assert a.plan_id != PlanSpec("t", "g", "latest", None).plan_id
    assert a.plan_id != PlanSpec("t", "g2", "earliest", None).plan_id
    assert a.plan_id != PlanSpec("t", "g", "earliest", "2026-01-01T00:00:00+00:00").plan_id


def _publish(bootstrap: str, topic: str, messages: list[dict], partitions: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, msg in enumerate(messages):
        producer.produce(
            topic, key=msg["id"].encode(), value=orjson.dumps(msg), partition=i % partitions
        )
    assert producer.flush(30) == 0


def _plan_metadata(bootstrap: str, group: str, topic: str, partitions: int) -> list[str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return [tp.metadata for tp in found]
    finally:
        consumer.close()


@pytest.mark.integration
def test_a_killed_backfill_resumes_with_the_same_command_and_ends_where_it_was_planned(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """kill -9 mid-way through ``run --from earliest --until-end`` (no --group: the default is
    derived from the specs), then the very same command: it exits 0, every planned message is a
    row, messages published after the plan was made are not part of it, and the restart
    processes no more than what was not committed (before: the restart exited 1, 'group already
    has committed offsets')."""
    partitions, batch = 2, 4
    photos = photo_messages(photo_dir)
    planned = [{"id": f"m{i:02d}", "uri": photos[i % len(photos)]["uri"]} for i in range(48)]
    create_topic(kafka_bootstrap, unique_name, partitions=partitions)
    _publish(kafka_bootstrap, unique_name, planned, partitions)
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
    args = ("--topic", unique_name, "--collection", unique_name, "--from", "earliest")
    args += ("--until-end", "--file-root", str(photo_dir), "--batch-size", str(batch))
    group = f"backfill-{unique_name}-earliest-to-end"

    fast_commits = {"IMAGE_EMBEDDER_COMMIT_INTERVAL_S": "0.2"}
    first = spawn(*args, "--max-rate", "6", env=fast_commits, **servers)
    wait_for_commits(kafka_bootstrap, group, unique_name, 12, first)
    first.kill()
    done = sum(committed_offsets(kafka_bootstrap, group, unique_name).values())
    assert 12 <= done < len(planned)
    assert all(decode(m) for m in _plan_metadata(kafka_bootstrap, group, unique_name, partitions))
    late = [{"id": f"late{i}", "uri": photos[0]["uri"]} for i in range(4)]
    _publish(kafka_bootstrap, unique_name, late, partitions)

    second = spawn(*args, **servers)
    assert second.wait() == 0, second.log_tail()
    summary = second.summary()
    processed = sum(
        summary[k] for k in ("ingested", "skipped_stale", "superseded", "dead_lettered")
    )
    assert processed <= len(planned) - done + batch, (processed, done, summary)
    assert sorted(rows_by_id(milvus_uri, unique_name, ["id"])) == [m["id"] for m in planned]
    ends = end_offsets(kafka_bootstrap, unique_name)
    assert committed_offsets(kafka_bootstrap, group, unique_name) == {
        p: ends[p] - 2 for p in range(partitions)
    }, "the plan ends before the messages published after it was made"

    again = spawn(*args, **servers)  # the same command once more: the plan is done, a no-op
    assert again.wait() == 0, again.log_tail()
    assert again.summary()["ingested"] == 0


@pytest.mark.integration
def test_another_plan_on_the_group_and_an_end_in_the_future_are_clear_errors(
    kafka_bootstrap: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    _publish(kafka_bootstrap, unique_name, photo_messages(photo_dir)[:2], 1)
    common = ("--topic", unique_name, "--group", unique_name, "--collection", unique_name)
    common += ("--file-root", str(photo_dir))
    assert run_consumer(*common, "--from", "earliest", "--until-end").returncode == 0
    other = run_consumer(*common, "--from", "latest", "--until-end")
    assert other.returncode == 1
    assert "not this run's plan" in other.stderr and "--reset-offsets" in other.stderr
    assert "Traceback" not in other.stderr
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ahead = run_consumer(*common, "--from", "earliest", "--until", future, "--reset-offsets")
    assert ahead.returncode == 1
    assert "is in the future" in ahead.stderr and "Traceback" not in ahead.stderr

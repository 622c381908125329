"""``backfill plan`` and ``backfill status`` against a real Kafka: the plan is recorded once in
the group's commits, the same plan again is a no-op, anything else is refused or replaced."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.engine.plan import decode_entry
from tests.consumer.backfill.conftest import backfill_command
from tests.support.kafka import create_topic, end_offsets
from tests.support.reliability import image_record, publish, wait_until

pytestmark = pytest.mark.integration


def _fill(bootstrap: str, topic: str, per_partition: int, partitions: int = 3) -> None:
    create_topic(bootstrap, topic, partitions=partitions)
    records = [
        image_record(f"m{p}-{i}", "file:///nowhere.jpg", p)
        for i in range(per_partition)
        for p in range(partitions)
    ]
    publish(bootstrap, topic, records)


def _commits(bootstrap: str, group: str, topic: str, partitions: int = 3) -> list[TopicPartition]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
    finally:
        consumer.close()


def test_a_plan_is_recorded_in_the_commits_and_the_same_plan_again_is_a_no_op(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = group = unique_name
    _fill(kafka_bootstrap, topic, 10)
    common = ("--topic", topic, "--group", group)
    made = backfill_command(kafka_bootstrap, "plan", *common, "--from", "earliest", "--until-end")
    assert made.returncode == 0, made.stderr
    assert "3 partition(s), 30 message(s) to process" in made.stdout
    as_json = backfill_command(
        kafka_bootstrap, "plan", *common, "--from", "earliest", "--until-end", "--json"
    )
    assert as_json.returncode == 0, as_json.stderr
    plan = as_json.json()
    assert plan["made"] is False and plan["messages"] == 30
    assert plan["plan"] in made.stdout
    assert [(p["start"], p["end"]) for p in plan["partitions"]] == [(0, 10)] * 3
    entries = [decode_entry(tp.metadata) for tp in _commits(kafka_bootstrap, group, topic)]
    assert [(e.plan_id, e.start, e.end) for e in entries if e] == [(plan["plan"], 0, 10)] * 3
    assert all(tp.offset == 0 for tp in _commits(kafka_bootstrap, group, topic))

    # retention moves earliest and more messages arrive: the same specs are still a no-op
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.delete_records([TopicPartition(topic, p, 4) for p in range(3)])
    for future in futures.values():
        future.result(timeout=30)
    _fill_more = [image_record(f"late{p}", "file:///nowhere.jpg", p) for p in range(3)]
    publish(kafka_bootstrap, topic, _fill_more)
    again = backfill_command(
        kafka_bootstrap, "plan", *common, "--from", "earliest", "--until-end", "--json"
    )
    assert again.returncode == 0, again.stderr
    assert again.json()["plan"] == plan["plan"] and again.json()["made"] is False
    assert again.json()["partitions"] == plan["partitions"], "nothing re-resolved"

    status = backfill_command(kafka_bootstrap, "status", *common, "--interval", "0", "--json")
    assert status.returncode == 0, status.stderr
    st = status.json()
    assert (st["done"], st["total"], st["remaining"], st["complete"]) == (0, 30, 30, False)
    assert [(p["done"], p["total"]) for p in st["partitions"]] == [(0, 10)] * 3


def test_another_plan_active_members_and_a_future_end_are_refused_replace_replaces(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = group = unique_name
    _fill(kafka_bootstrap, topic, 4)
    common = ("--topic", topic, "--group", group)
    first = backfill_command(kafka_bootstrap, "plan", *common, "--from", "earliest", "--until-end")
    assert first.returncode == 0, first.stderr

    other = backfill_command(kafka_bootstrap, "plan", *common, "--from", "latest", "--until-end")
    assert other.returncode == 1
    assert "already has another backfill plan" in other.stderr and "--replace" in other.stderr
    assert "Traceback" not in other.stderr

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ahead = backfill_command(
        kafka_bootstrap, "plan", *common, "--from", "earliest", "--until", future, "--replace"
    )
    assert ahead.returncode == 1 and "is in the future" in ahead.stderr
    no_end = backfill_command(kafka_bootstrap, "plan", *common, "--from", "earliest")
    assert no_end.returncode == 1 and "--until-end or --until" in no_end.stderr

    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    replaced = backfill_command(
        kafka_bootstrap,
        "plan",
        *common,
        "--from",
        "earliest",
        "--until",
        past,
        "--max-rate",
        "50",
        "--replace",
        "--json",
    )
    assert replaced.returncode == 0, replaced.stderr
    plan = replaced.json()
    assert plan["made"] is True and plan["replaced"] is not None and plan["messages"] == 0
    assert plan["max_rate"] == 50.0
    assert [tp.offset for tp in _commits(kafka_bootstrap, group, topic)] == [0, 0, 0]

    # a group with a running member: a different plan is refused
    member = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        member.subscribe([topic])
        wait_until(lambda: bool(member.poll(0.5) or member.assignment()), "member assigned")
        busy = backfill_command(
            kafka_bootstrap, "plan", *common, "--from", "latest", "--until-end", "--replace"
        )
        assert busy.returncode == 1 and "active member" in busy.stderr, busy.stderr
        same = backfill_command(
            kafka_bootstrap, "plan", *common, "--from", "earliest", "--until", past
        )
        assert same.returncode == 0 and "nothing changed" in same.stdout, same.stderr
    finally:
        member.close()


def test_status_without_a_plan_and_with_a_lost_plan_says_what_to_do(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = group = unique_name
    _fill(kafka_bootstrap, topic, 2)
    common = ("--topic", topic, "--group", group)
    none = backfill_command(kafka_bootstrap, "status", *common, "--interval", "0")
    assert (
        none.returncode == 1
        and "no backfill plan" in none.stderr
        and "backfill plan" in none.stderr
    )
    assert (
        backfill_command(
            kafka_bootstrap, "plan", *common, "--from", "earliest", "--until-end"
        ).returncode
        == 0
    )
    # an operator resets one partition (a commit without the plan's metadata)
    resetter = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        resetter.commit(offsets=[TopicPartition(topic, 1, 0)], asynchronous=False)
    finally:
        resetter.close()
    lost = backfill_command(kafka_bootstrap, "status", *common, "--interval", "0")
    assert lost.returncode == 1
    assert "is lost: partitions [1]" in lost.stderr and "--replace" in lost.stderr
    assert "Traceback" not in lost.stderr
    assert end_offsets(kafka_bootstrap, topic) == {0: 2, 1: 2, 2: 2}
    time.sleep(0)  # nothing else to wait for: every check above read the commits

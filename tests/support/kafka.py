"""Kafka helpers for tests: create topics, produce JSON, read positions."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(
    bootstrap: str, topic: str, partitions: int = 1, config: Mapping[str, str] | None = None
) -> None:
    """Create ``topic`` and wait until the broker has it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    settings = dict(config or {})
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=settings)
    admin.create_topics([new], operation_timeout=30)[topic].result(timeout=60)


def produce_json(
    bootstrap: str,
    topic: str,
    values: Iterable[Mapping[str, Any] | None],
    *,
    key_field: str | None = "id",
    partition: int | None = None,
) -> int:
    """Publish each value as JSON (None: a tombstone), keyed by ``value[key_field]``.

    Waits for every delivery report; raises if any message was not delivered. Returns the count.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    count = 0
    for value in values:
        key = None
        if value is not None and key_field is not None and key_field in value:
            key = str(value[key_field]).encode()
        payload = None if value is None else orjson.dumps(dict(value))
        kwargs: dict[str, Any] = {"key": key, "value": payload, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        producer.poll(0)
        count += 1
    remaining = producer.flush(60)
    if remaining or errors:
        raise KafkaException(f"{remaining} undelivered, errors: {errors[:5]}")
    return count


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )


def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """Partition numbers of ``topic``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(topic, timeout=10)
    return sorted(metadata.topics[topic].partitions)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition, the offset the next produced message will get."""
    consumer = _consumer(bootstrap, "support-end-offsets")
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions_of(bootstrap, topic)
        }
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Per partition, the offset ``group`` has committed (partitions without one are left out)."""
    consumer = _consumer(bootstrap, group)
    try:
        wanted = [TopicPartition(topic, p) for p in partitions_of(bootstrap, topic)]
        committed = consumer.committed(wanted, timeout=10)
        return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
    finally:
        consumer.close()


def consume_values(
    bootstrap: str, topic: str, group: str, count: int, timeout_s: float = 30.0
) -> list[Any]:
    """Read ``count`` JSON values from the start of ``topic`` (no commit); fewer on timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(values) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = msg.value()
            values.append(None if value is None else orjson.loads(value))
    finally:
        consumer.close()
    return values

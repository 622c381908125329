"""Topics and the load generator: a backlog published at full speed, or a paced stream.

Records are produced idempotently (``acks=all``), LZ4-compressed and batched (``linger.ms``), the
way a real producer would send them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.exceptions import BenchFatalError


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` (and wait until it exists)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
    try:
        futures[topic].result(30)
    except Exception as exc:
        raise BenchFatalError(f"cannot create topic {topic!r}: {exc}") from exc
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=5).topics.get(topic)
        if meta is not None and meta.error is None and len(meta.partitions) == partitions:
            return
        time.sleep(0.1)
    raise BenchFatalError(f"topic {topic!r} did not appear")


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 20,
            "queue.buffering.max.messages": 200_000,
            # a fresh broker answers the first idempotence handshake with "coordinator load in
            # progress" and librdkafka logs it as a warning before retrying: expected, not news
            "log_level": 3,
        }
    )


class _Deliveries:
    def __init__(self) -> None:
        self.ok = 0
        self.errors: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.ok += 1
        elif len(self.errors) < 5:
            self.errors.append(err.str())


def publish(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> float:
    """Publish every (key, value) as fast as the client takes them; returns seconds taken."""
    producer = _producer(bootstrap)
    deliveries = _Deliveries()
    started = time.monotonic()
    sent = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=deliveries)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or deliveries.errors or deliveries.ok != sent:
        raise BenchFatalError(
            f"published {deliveries.ok} of {sent} records to {topic!r}: {deliveries.errors}"
        )
    return time.monotonic() - started


def publish_paced(
    bootstrap: str,
    topic: str,
    rate_per_s: float,
    duration_s: float,
    make_record: Callable[[int], tuple[bytes, bytes]],
    on_sent: Callable[[int, bytes, float], None],
) -> int:
    """Publish at ``rate_per_s`` for ``duration_s``; ``on_sent(i, key, monotonic_time)`` each.

    The time is taken just before ``produce``: latency is measured from the moment the producer
    hands the record over. Idle time is not banked, so a stall is not followed by a burst.
    """
    producer = _producer(bootstrap)
    deliveries = _Deliveries()
    interval = 1.0 / rate_per_s
    started = time.monotonic()
    next_at = started
    count = 0
    while True:
        now = time.monotonic()
        if now - started >= duration_s:
            break
        if now < next_at:
            producer.poll(min(next_at - now, 0.05))
            continue
        key, value = make_record(count)
        sent_at = time.monotonic()
        producer.produce(topic, value=value, key=key, on_delivery=deliveries)
        on_sent(count, key, sent_at)
        producer.poll(0)
        count += 1
        next_at = max(next_at + interval, time.monotonic() - interval)
    producer.flush(60)
    if deliveries.errors or deliveries.ok != count:
        raise BenchFatalError(
            f"paced publish delivered {deliveries.ok} of {count}: {deliveries.errors}"
        )
    return count

"""The consumer-lag gauge fed by a real librdkafka client's statistics."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from consumer.observability.metrics import Metrics
from tests.support.kafka import create_topic, produce_json

pytestmark = pytest.mark.integration


def test_real_statistics_report_the_committed_lag(kafka_bootstrap: str, unique_name: str) -> None:
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=2)
    produce_json(kafka_bootstrap, topic, [{"id": str(i)} for i in range(10)], partition=0)
    produce_json(kafka_bootstrap, topic, [{"id": str(i)} for i in range(4)], partition=1)

    metrics = Metrics(CollectorRegistry())
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "statistics.interval.ms": 200,
            "stats_cb": metrics.update_from_librdkafka_stats,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        consumer.commit(
            offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 4)],
            asynchronous=False,
        )
        expected = {"0": 7.0, "1": 0.0}
        seen: dict[str, float | None] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            consumer.poll(0.2)  # statistics are delivered from poll()
            seen = {
                p: metrics.registry.get_sample_value(
                    "image_embedder_consumer_lag", {"topic": topic, "partition": p}
                )
                for p in expected
            }
            if seen == expected:
                break
        assert seen == expected
    finally:
        consumer.close()

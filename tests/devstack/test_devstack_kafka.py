"""Kafka from the dev stack: a real round trip, and committed offsets surviving restarts."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from devstack import KafkaServer, ServerError, TcpProxy, free_port
from devstack.kafka import KAFKA_VERSION, POM_FILE, kafka_libs_ready, random_cluster_id
from tests.support.kafka import committed_offsets, create_topic, end_offsets, produce_json

StartKafka = Callable[..., KafkaServer]


def test_pom_pins_the_version_devstack_runs() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(POM_FILE).getroot()
    assert root.findtext("m:properties/m:kafka.version", namespaces=ns) == KAFKA_VERSION


def test_cluster_ids_are_kafka_uuids() -> None:
    ids = {random_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and "=" not in i for i in ids)
    assert not any(i.startswith("-") for i in ids)  # would read as an option to kafka-storage


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def _read(consumer: Consumer, count: int) -> list[dict[str, object]]:
    values: list[dict[str, object]] = []
    for _ in range(240):  # bounded: at most 240 polls of 0.5 s
        if len(values) == count:
            break
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        values.append(orjson.loads(msg.value()))
    return values


@pytest.mark.integration
def test_round_trip_and_committed_offset_survive_restarts(
    start_kafka: StartKafka, unique_name: str
) -> None:
    kafka = start_kafka()
    assert kafka_libs_ready()
    assert kafka.is_ready()
    bootstrap = kafka.bootstrap_servers
    topic, group = unique_name, f"{unique_name}_g"
    create_topic(bootstrap, topic)
    produce_json(bootstrap, topic, [{"id": f"m{i}", "n": i} for i in range(10)])

    consumer = _consumer(bootstrap, group)
    consumer.subscribe([topic])
    first = _read(consumer, 6)
    assert [v["n"] for v in first] == [0, 1, 2, 3, 4, 5]
    consumer.commit(offsets=[TopicPartition(topic, 0, 6)], asynchronous=False)
    consumer.close()
    assert committed_offsets(bootstrap, group, topic) == {0: 6}

    meta = (kafka.log_dir / "meta.properties").read_text()
    kafka.stop()
    assert not kafka.is_ready()
    kafka.start()  # graceful restart on the same data dir: not formatted again
    assert (kafka.log_dir / "meta.properties").read_text() == meta
    assert committed_offsets(bootstrap, group, topic) == {0: 6}
    assert end_offsets(bootstrap, topic) == {0: 10}

    kafka.kill()  # crash, then restart
    kafka.start()
    assert committed_offsets(bootstrap, group, topic) == {0: 6}

    consumer = _consumer(bootstrap, group)
    consumer.subscribe([topic])
    rest = _read(consumer, 4)
    consumer.close()
    assert [v["n"] for v in rest] == [6, 7, 8, 9]


@pytest.mark.integration
def test_auto_created_topic_is_usable(kafka_bootstrap: str, unique_name: str) -> None:
    produce_json(kafka_bootstrap, unique_name, [{"id": "a"}])
    assert end_offsets(kafka_bootstrap, unique_name) == {0: 1}


def test_start_on_a_busy_port_names_kafka_and_its_log(start_kafka: StartKafka) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        with pytest.raises(ServerError) as info:
            start_kafka(port=busy)
    assert info.value.server == "kafka"
    assert "kafka.log" in str(info.value)


@pytest.mark.integration
def test_bad_config_fails_fast_with_the_log_tail(start_kafka: StartKafka) -> None:
    with pytest.raises(ServerError) as info:
        start_kafka(extra_config={"num.partitions": "not-a-number"})
    assert info.value.server == "kafka"
    assert "num.partitions" in info.value.log_tail


@pytest.mark.integration
def test_clients_can_be_routed_through_a_proxy(start_kafka: StartKafka, unique_name: str) -> None:
    port = free_port()
    with TcpProxy("127.0.0.1", port) as proxy:
        start_kafka(port=port, advertised_port=proxy.port)
        via = proxy.address
        create_topic(via, unique_name)
        proxy.set_delay(0.05)
        produce_json(via, unique_name, [{"id": "a"}])

        proxy.set_down(True)
        failures: list[object] = []
        producer = Producer({"bootstrap.servers": via, "message.timeout.ms": 3000, "log_level": 0})
        producer.produce(unique_name, b"{}", on_delivery=lambda err, _msg: failures.append(err))
        producer.flush(30)
        assert len(failures) == 1 and failures[0] is not None  # not delivered while down

        proxy.set_down(False)
        produce_json(via, unique_name, [{"id": "b"}])
        assert end_offsets(via, unique_name) == {0: 2}

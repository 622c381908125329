"""Creating the work topic and its dead-letter topic, idempotently."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
)

from producer.exceptions import InvalidInput, KafkaUnavailable, TopicConflict
from producer.publisher import mask_secrets

DLQ_SUFFIX: Final = ".dlq"
#: Dead letters are kept two weeks by default: time to notice, fix the cause and redrive.
DEFAULT_DLQ_RETENTION_MS: Final = 14 * 24 * 3600 * 1000


def dlq_topic_for(topic: str) -> str:
    """The default dead-letter topic of ``topic``: ``<topic>.dlq``."""
    return topic + DLQ_SUFFIX


@dataclass(frozen=True, slots=True)
class TopicOutcome:
    """What happened to one topic: ``created``, ``exists`` or ``updated`` (DLQ retention)."""

    topic: str
    action: str
    partitions: int
    detail: str = ""


def create_topics(
    bootstrap_servers: str,
    topic: str,
    *,
    partitions: int,
    replication_factor: int,
    dlq_topic: str | None = None,
    dlq_partitions: int | None = None,
    dlq_retention_ms: int = DEFAULT_DLQ_RETENTION_MS,
    kafka_config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[TopicOutcome]:
    """Create ``topic`` and its dead-letter topic, or check the existing ones.

    An existing topic with the same partition count is fine; another count raises
    :class:`TopicConflict` (Kafka cannot shrink a topic, and growing it would move keys between
    partitions and break per-id order). An existing dead-letter topic gets the asked retention.
    """
    if (
        partitions < 1
        or replication_factor < 1
        or (dlq_partitions is not None and dlq_partitions < 1)
    ):
        raise InvalidInput("partitions and replication factor must be at least 1")
    if dlq_retention_ms < -1 or dlq_retention_ms == 0:
        raise InvalidInput("--dlq-retention-ms must be positive, or -1 for unlimited")
    dlq = dlq_topic or dlq_topic_for(topic)
    if dlq == topic:
        raise InvalidInput("the dead-letter topic must differ from the topic")
    config = {"bootstrap.servers": bootstrap_servers, **(kafka_config or {})}
    try:
        admin = AdminClient(config)
    except KafkaException as exc:
        raise InvalidInput(mask_secrets(f"invalid Kafka settings: {exc.args[0]}", config)) from None
    wanted = {
        topic: NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor),
        dlq: NewTopic(
            dlq,
            num_partitions=dlq_partitions or partitions,
            replication_factor=replication_factor,
            config={"retention.ms": str(dlq_retention_ms)},
        ),
    }
    _check_reachable(admin, bootstrap_servers, timeout_s, config)
    futures = admin.create_topics(
        list(wanted.values()), operation_timeout=timeout_s, request_timeout=timeout_s
    )
    outcomes: list[TopicOutcome] = []
    for name, new in wanted.items():
        try:
            futures[name].result(timeout=timeout_s + 5)
            outcomes.append(
                TopicOutcome(
                    name, "created", new.num_partitions, f"replication {replication_factor}"
                )
            )
            continue
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicConflict(
                    f"cannot create {name}: {mask_secrets(err.str(), config)}"
                ) from None
        except TimeoutError:
            raise KafkaUnavailable(f"no answer creating {name} within {timeout_s:g} s") from None
        existing = _partition_count(admin, name, timeout_s)
        if name == topic and existing != partitions:
            raise TopicConflict(
                f"topic {name} exists with {existing} partitions, not {partitions}; "
                f"use --partitions {existing} or another topic"
            )
        if name == dlq:
            outcomes.append(_ensure_retention(admin, name, existing, dlq_retention_ms, timeout_s))
        else:
            outcomes.append(TopicOutcome(name, "exists", existing))
    _wait_for_leaders(admin, list(wanted), timeout_s)
    return outcomes


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Return once every partition of ``names`` answers an offset query, so the topics are
    usable at once (metadata may name a leader a moment before that leader serves)."""
    deadline = time.monotonic() + timeout_s
    last_error = "no metadata"
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=timeout_s)
        wanted: dict[TopicPartition, OffsetSpec] = {}
        for name in names:
            info = metadata.topics.get(name)
            if info is None or info.error is not None or not info.partitions:
                wanted = {}
                last_error = f"{name}: {info.error if info else 'unknown topic'}"
                break
            for p in info.partitions:
                wanted[TopicPartition(name, p)] = OffsetSpec.latest()
        if wanted:
            try:
                for future in admin.list_offsets(wanted, request_timeout=timeout_s).values():
                    future.result(timeout_s)
                return
            except KafkaException as exc:
                last_error = exc.args[0].str()
        time.sleep(0.1)
    raise KafkaUnavailable(f"{', '.join(names)} not usable after {timeout_s:g} s: {last_error}")


def _check_reachable(
    admin: AdminClient, servers: str, timeout_s: float, config: Mapping[str, Any]
) -> None:
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {servers} did not answer within {timeout_s:g} s: "
            f"{mask_secrets(exc.args[0].str(), config)}"
        ) from None


def _partition_count(admin: AdminClient, name: str, timeout_s: float) -> int:
    metadata = admin.list_topics(name, timeout=timeout_s)
    info = metadata.topics.get(name)
    if info is None or info.error is not None:
        raise TopicConflict(f"topic {name} exists but cannot be described: {info and info.error}")
    return len(info.partitions)


def _ensure_retention(
    admin: AdminClient, name: str, partitions: int, retention_ms: int, timeout_s: float
) -> TopicOutcome:
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    try:
        current = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(
            timeout_s
        )
    except KafkaException as exc:  # e.g. no DescribeConfigs ACL: nothing to compare with
        return TopicOutcome(
            name, "exists", partitions, f"retention.ms not checked ({exc.args[0].name()})"
        )
    entry = current.get("retention.ms")
    if entry is not None and entry.value == str(retention_ms):
        return TopicOutcome(name, "exists", partitions, f"retention.ms {retention_ms}")
    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        name,
        incremental_configs=[
            ConfigEntry(
                "retention.ms", str(retention_ms), incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    try:
        admin.incremental_alter_configs([change], request_timeout=timeout_s)[change].result(
            timeout_s
        )
    except KafkaException as exc:
        raise TopicConflict(f"cannot set retention.ms of {name}: {exc.args[0].str()}") from None
    return TopicOutcome(name, "updated", partitions, f"retention.ms {retention_ms}")

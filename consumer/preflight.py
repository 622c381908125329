"""Start-up checks of the Kafka side, run before the slow start-up work (Triton, JAX warm-up) so
that a misconfiguration fails fast with one clear line instead of a consumer that never gets ready.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException

from consumer.engine.exceptions import EngineFatalError
from consumer.observability.logging import get_logger
from consumer.settings import Settings

log = get_logger("consumer.preflight")


def check_kafka(admin: Any, s: Settings) -> None:
    """Every Kafka start-up check, in order; raises ``EngineFatalError`` with the cause."""
    check_dead_letter_topic(admin, s)


def topic_configs(admin: Any, topics: list[str]) -> dict[str, dict[str, str]]:
    """Per topic, its configuration as the broker reports it (empty where it cannot be read:
    a missing topic, or no DescribeConfigs permission)."""
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]  # no __all__

    resources = {t: ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics}
    found: dict[str, dict[str, str]] = {t: {} for t in topics}
    futures = admin.describe_configs(list(resources.values()), request_timeout=10)
    for topic, resource in resources.items():
        try:
            entries = futures[resource].result(10)
        except (KafkaException, TimeoutError) as exc:
            log.info("topic configuration unknown", topic=topic, error=str(exc))
            continue
        found[topic] = {k: e.value for k, e in entries.items() if e.value is not None}
    return found


def check_dead_letter_topic(admin: Any, s: Settings) -> None:
    """Fail at start-up when the dead-letter topic is missing and the cluster will not create it:
    otherwise the first poison message would be retried until the refused-timeout, with that
    partition's commits held back all the while."""
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]  # no __all__

    topic = s.dead_letter_topic
    try:
        meta = admin.list_topics(topic, timeout=15)
    except KafkaException as exc:  # not up yet: the consumer waits for it as usual
        log.warning("cannot check the dead-letter topic yet", dlq_topic=topic, error=str(exc))
        return
    found = meta.topics.get(topic)
    if found is not None and found.error is None:
        return
    broker = next(iter(meta.brokers), None)
    auto_create = None
    if broker is not None:
        resource = ConfigResource(ConfigResource.Type.BROKER, str(broker))
        try:
            configs = admin.describe_configs([resource], request_timeout=10)[resource].result(10)
            entry = configs.get("auto.create.topics.enable")
            auto_create = None if entry is None else entry.value == "true"
        except (KafkaException, TimeoutError) as exc:
            log.info("cannot tell whether the cluster creates topics", error=str(exc))
    if auto_create is False:
        raise EngineFatalError(
            f"the dead-letter topic {topic!r} does not exist and the cluster does not create "
            f"topics: create it (python -m producer create-topic {s.topic}) or name another "
            "with --dlq-topic"
        )
    log.warning(
        "the dead-letter topic does not exist yet; the first dead letter creates it",
        dlq_topic=topic,
    )

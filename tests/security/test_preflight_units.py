"""Units of the ACL checks: what the broker's authorized operations mean (a fake admin)."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AclOperation

from consumer.preflight import acl_checks
from consumer.settings import Settings


def _done(value: Any = None, error: int | None = None) -> Future:
    future: Future = Future()
    if error is not None:
        future.set_exception(KafkaException(KafkaError(error)))
    else:
        future.set_result(value)
    return future


class FakeAdmin:
    def __init__(self, topics: dict[str, Any], group: Any) -> None:
        self.topics = topics
        self.group = group

    def describe_topics(self, collection: Any, **_: Any) -> dict[str, Future]:
        return {name: self.topics[name] for name in collection.topic_names}

    def describe_consumer_groups(self, groups: list[str], **_: Any) -> dict[str, Future]:
        return {groups[0]: self.group}


def _ops(*names: str) -> SimpleNamespace:
    return SimpleNamespace(authorized_operations=[AclOperation[n] for n in names])


S = Settings(topic="t", group="g", kafka_sasl_username="embedder")


def test_every_acl_present() -> None:
    admin = FakeAdmin(
        {"t": _done(_ops("READ", "DESCRIBE")), "t.dlq": _done(_ops("WRITE", "DESCRIBE"))},
        _done(_ops("READ", "DESCRIBE")),
    )
    results = acl_checks(admin, S)
    assert [(n, ok) for n, ok, _ in results] == [
        ("topic-acl", True),
        ("group-acl", True),
        ("dead-letter-acl", True),
    ]


def test_describe_only_is_not_read_nor_write() -> None:
    admin = FakeAdmin(
        {"t": _done(_ops("DESCRIBE")), "t.dlq": _done(_ops("DESCRIBE", "READ"))},
        _done(_ops("DESCRIBE")),
    )
    failed = {n: d for n, ok, d in acl_checks(admin, S) if not ok}
    assert set(failed) == {"topic-acl", "group-acl", "dead-letter-acl"}
    assert failed["dead-letter-acl"] == (
        "Kafka ACL missing: User:embedder may not WRITE the topic 't.dlq' "
        "(grant Write on the topic t.dlq to User:embedder)"
    )


def test_a_broker_that_reports_no_operations_passes() -> None:
    """Without KIP-430 answers (None) nothing can be told: the checks pass."""
    none = SimpleNamespace(authorized_operations=None)
    admin = FakeAdmin({"t": _done(none), "t.dlq": _done(none)}, _done(none))
    assert all(ok for _, ok, _ in acl_checks(admin, S))


def test_authorization_errors_fail_and_a_missing_topic_is_left_to_later_checks() -> None:
    admin = FakeAdmin(
        {
            "t": _done(error=KafkaError.TOPIC_AUTHORIZATION_FAILED),
            "t.dlq": _done(error=KafkaError.UNKNOWN_TOPIC_OR_PART),
        },
        _done(error=KafkaError.GROUP_AUTHORIZATION_FAILED),
    )
    results = {n: (ok, d) for n, ok, d in acl_checks(admin, S)}
    assert results["topic-acl"][0] is False and "READ the topic 't'" in results["topic-acl"][1]
    assert results["group-acl"][0] is False and "READ the group 'g'" in results["group-acl"][1]
    assert results["dead-letter-acl"][0] is True  # the dead-letter topic check decides

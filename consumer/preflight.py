"""Start-up checks of the Kafka side, run before the slow start-up work (Triton, JAX warm-up) so
that a misconfiguration fails fast with one clear line instead of a consumer that never gets ready.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from consumer.engine.exceptions import EngineFatalError
from consumer.observability.logging import get_logger
from consumer.settings import Settings

log = get_logger("consumer.preflight")


def check_kafka(make_admin: AdminFactory, admin: Any, s: Settings) -> None:
    """Every Kafka start-up check, in order; raises ``EngineFatalError`` with the cause.

    The connection first (authentication, TLS: the CA, the host name, the client
    certificate; a probe client of ``make_admin``'s), then each ACL the consumer needs, one by
    one, through ``admin``: READ on the topic, READ on the group, WRITE on the dead-letter
    topic. All before the first poll and before Triton and the JAX warm-up.
    """
    failure = check_connection(s, make_admin=make_admin)
    if failure:
        raise EngineFatalError(failure)
    if failure is None:  # the broker answered; else the consumer waits for it as before
        for _name, passed, detail in acl_checks(admin, s):
            if not passed:
                raise EngineFatalError(detail)
    check_dead_letter_topic(admin, s)


#: How long the connection check waits for the broker to answer or refuse (a broker that is
#: simply not up yet is waited for by the consumer as before).
CONNECT_CHECK_S = 15.0


#: What ``check_connection`` returns when the broker did not answer (not a security failure)
NO_ANSWER = ""


#: Makes an admin client from its configuration (``AdminClient``, or the engine's ``Edges.admin``).
AdminFactory = Callable[[dict[str, Any]], Any]


def _admin_client(conf: dict[str, Any]) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(conf)


def check_connection(
    s: Settings, timeout_s: float = CONNECT_CHECK_S, *, make_admin: AdminFactory = _admin_client
) -> str | None:
    """The one-line cause when the broker refuses the connection for a security reason
    (authentication, an untrusted CA, a host name mismatch, a refused client certificate);
    ``None`` when a metadata request goes through; ``NO_ANSWER`` when the broker did not
    answer within ``timeout_s`` (the consumer then waits for it as usual). The probe is a client
    of its own (``make_admin``): its error callback is where librdkafka reports the refusal."""
    from consumer.security import classify, explain

    conf = s.kafka_common()
    seen: list[Any] = []
    probe_conf: dict[str, Any] = {**conf, "error_cb": seen.append, "log_level": 0}
    probe = make_admin(probe_conf)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            probe.list_topics(timeout=1.0)
            return None
        except KafkaException:
            pass
        probe.poll(0)
        for err in seen:
            failure = classify(err)
            if failure is not None and failure.cause != "authorization":
                return explain(failure, conf)
        seen.clear()
        if time.monotonic() >= deadline:
            log.warning("Kafka does not answer yet", bootstrap_servers=s.bootstrap_servers)
            return NO_ANSWER


def _authorized(future: Any) -> tuple[set[str] | None, KafkaError | None]:
    """The operations the broker reports for the caller (``None``: not reported), or the error."""
    try:
        found = future.result(15)
    except KafkaException as exc:
        return None, exc.args[0]
    ops = getattr(found, "authorized_operations", None)
    return (None if ops is None else {op.name for op in ops}), None


def acl_checks(admin: Any, s: Settings) -> list[tuple[str, bool, str]]:
    """Each ACL the consumer needs, as (name, passed, detail): READ on the topic, READ on the
    group, WRITE on the dead-letter topic.

    The broker reports what the caller's own principal may do (Kafka's "authorized
    operations", KIP-430, in Metadata and DescribeGroups answers): no data is read or written
    and no ACL needs describing (which only an admin may). A topic that does not exist yet is
    not failed here (the dead-letter topic check decides about it).
    """
    from confluent_kafka import TopicCollection

    results: list[tuple[str, bool, str]] = []
    principal = _principal(s)
    topic = s.topic or ""
    dlq = s.dead_letter_topic
    futures = admin.describe_topics(
        TopicCollection([topic, dlq]), include_authorized_operations=True, request_timeout=15
    )
    for name, resource, op in (("topic-acl", topic, "READ"), ("dead-letter-acl", dlq, "WRITE")):
        ops, err = _authorized(futures[resource])
        if err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            results.append((name, False, _missing(principal, op, "topic", resource)))
        elif err is not None:
            results.append((name, True, f"cannot tell ({err.name()}): {resource}"))
        elif ops is not None and op not in ops:
            results.append((name, False, _missing(principal, op, "topic", resource)))
        else:
            results.append((name, True, f"{op} on topic {resource}"))
    group = s.group or ""
    if group:
        future = admin.describe_consumer_groups(
            [group], include_authorized_operations=True, request_timeout=15
        )[group]
        ops, err = _authorized(future)
        if err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            results.insert(1, ("group-acl", False, _missing(principal, "READ", "group", group)))
        elif err is not None:
            results.insert(1, ("group-acl", True, f"cannot tell ({err.name()}): {group}"))
        elif ops is not None and "READ" not in ops:
            results.insert(1, ("group-acl", False, _missing(principal, "READ", "group", group)))
        else:
            results.insert(1, ("group-acl", True, f"READ on group {group}"))
    return results


def _principal(s: Settings) -> str:
    """Who the broker sees: the SASL user, or the client certificate's subject (the broker's
    ``ssl.principal.mapping.rules`` may shorten it, e.g. to the common name)."""
    conf = s.kafka_common()
    if conf.get("sasl.username"):
        return f"User:{conf['sasl.username']}"
    if conf.get("sasl.oauthbearer.client.id"):  # the token's subject, as a rule
        return f"User:{conf['sasl.oauthbearer.client.id']}"
    cert = conf.get("ssl.certificate.location")
    if cert:
        try:
            from cryptography import x509

            subject = x509.load_pem_x509_certificate(Path(cert).read_bytes()).subject
            return f"User:{subject.rfc4514_string()}"
        except (OSError, ValueError):
            pass
    return "the consumer's principal"


def _missing(principal: str, op: str, kind: str, name: str) -> str:
    return (
        f"Kafka ACL missing: {principal} may not {op} the {kind} {name!r} (grant "
        f"{op.capitalize()} on the {kind} {name} to {principal})"
    )


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

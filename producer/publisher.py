"""A Kafka publisher that accounts for every delivery report.

Idempotent (``enable.idempotence``, ``acks=all``), compressed and batched (``linger.ms``): the
settings under which a retry inside the client can neither duplicate nor reorder messages of one
partition. Every message handed to :meth:`Publisher.send` ends in exactly one of two lists,
delivered or failed (with the reason); :meth:`Publisher.wait` bounds the wait for the reports.
The benchmark and the tests use it to publish thousands of messages quickly.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producer.exceptions import InvalidInput
from schemas import ImageMessage, encode_message

#: Kafka record headers as confluent-kafka takes them.
HeaderList = Sequence[tuple[str, bytes | str | None]]
DeliveryCallback = Callable[["Delivery"], None]

COMPRESSIONS: Final = ("zstd", "lz4", "gzip", "snappy", "none")
DEFAULT_LINGER_MS: Final = 20
DEFAULT_TIMEOUT_S: Final = 30.0
#: librdkafka settings whose values are secrets: never printed, and masked in error texts.
_SECRET_KEY_RE: Final = re.compile(r"password|secret|jaas|token|key\.pem|private|credential", re.I)

log = logging.getLogger("producer.kafka")


def is_secret_setting(name: str) -> bool:
    """True for librdkafka settings whose values must never be shown (``sasl.password``, ...)."""
    return _SECRET_KEY_RE.search(name) is not None


def mask_secrets(text: str, config: Mapping[str, object]) -> str:
    """``text`` with the value of every secret setting of ``config`` replaced by ``[redacted]``."""
    for name, value in config.items():
        if is_secret_setting(name) and isinstance(value, str) and value:
            text = text.replace(value, "[redacted]")
    return text


def parse_settings(pairs: Sequence[str], what: str = "--kafka-config") -> dict[str, str]:
    """``["k=v", ...]`` to a dict; the error never echoes a value (it may be a secret)."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            shown = name.strip() if sep else "(no '=')"
            raise InvalidInput(f"{what} expects NAME=VALUE, got a setting named {shown!r}")
        out[name.strip()] = value
    return out


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one message: ``error`` is ``None`` when the broker acknowledged it."""

    topic: str
    key: bytes | None
    ref: str
    error: str | None
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What :meth:`Publisher.wait` saw: counts and every failure with its reason."""

    delivered: int
    failed: tuple[Delivery, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed


class Publisher:
    """Publishes records and tracks every delivery report until :meth:`wait` returns.

    Not thread-safe: one thread sends, polls and waits (delivery callbacks run inside
    :meth:`poll` / :meth:`wait` on that thread).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        kafka_config: Mapping[str, str] | None = None,
        compression: str = "zstd",
        linger_ms: int = DEFAULT_LINGER_MS,
        delivery_timeout_s: float = DEFAULT_TIMEOUT_S,
        client_id: str = "image-embedder-producer",
    ) -> None:
        if compression not in COMPRESSIONS:
            raise InvalidInput(f"compression must be one of {', '.join(COMPRESSIONS)}")
        if delivery_timeout_s <= 0:
            raise InvalidInput("the delivery timeout must be positive")
        self._user_config = dict(kafka_config or {})
        self.bootstrap_servers = bootstrap_servers
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": compression,
            "linger.ms": linger_ms,
            # librdkafka gives up on a message after this long and reports it as timed out, so
            # a broker that is down turns into failed delivery reports, never a hang.
            "message.timeout.ms": max(1, int(delivery_timeout_s * 1000)),
            "error_cb": self._on_error,
            "logger": log,
        }
        config.update(self._user_config)
        self.delivery_timeout_s = delivery_timeout_s
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise InvalidInput(self.mask(f"invalid Kafka settings: {exc.args[0]}")) from None
        self._tokens = itertools.count()
        self._pending: dict[int, tuple[str, bytes | None, str, DeliveryCallback | None]] = {}
        self._failed: list[Delivery] = []
        self._delivered = 0
        self._broker_errors: dict[str, None] = {}  # insertion-ordered set
        self._last_specific_error: str | None = None
        self._started = time.monotonic()

    # -- sending ----------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: HeaderList | None = None,
        timestamp_ms: int | None = None,
        ref: str | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Hand one record to the client (blocks only while its queue is full).

        ``ref`` names the record in failure reports (e.g. a redacted URI); ``on_delivery`` is
        called with its :class:`Delivery` from :meth:`poll` or :meth:`wait`.
        """
        token = next(self._tokens)
        label = ref if ref is not None else (key.decode("utf-8", "replace") if key else "")
        self._pending[token] = (topic, key, label, on_delivery)
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._callback(token)}
        if headers:
            kwargs["headers"] = list(headers)
        if timestamp_ms is not None and timestamp_ms > 0:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:  # local queue full: serve delivery reports, then try again
                self._producer.poll(0.05)
            except KafkaException as exc:
                self._pending.pop(token, None)
                self._record(Delivery(topic, key, label, self.mask(str(exc.args[0]))), on_delivery)
                return
        self._producer.poll(0)

    def send_message(
        self,
        topic: str,
        msg: ImageMessage,
        *,
        headers: HeaderList | None = None,
        ref: str | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Publish an ``image.v1`` message; the record key is its id."""
        self.send(
            topic,
            key=msg.id.encode("utf-8"),
            value=encode_message(msg),
            headers=headers,
            ref=ref,
            on_delivery=on_delivery,
        )

    def send_all(
        self, topic: str, messages: Iterator[ImageMessage] | Sequence[ImageMessage]
    ) -> None:
        """Publish many messages as fast as the client takes them."""
        for msg in messages:
            self.send_message(topic, msg)

    # -- delivery reports -------------------------------------------------------------------

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports and client logs for up to ``timeout_s``; returns events served."""
        return self._producer.poll(timeout_s)

    def wait(self, timeout_s: float | None = None) -> PublishResult:
        """Wait until every sent record has a delivery report, or the deadline passes.

        ``timeout_s`` defaults to the delivery timeout plus a margin. Records still without a
        report at the deadline count as failed. The tallies then start afresh.
        """
        budget = self.delivery_timeout_s + 5.0 if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        while self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._producer.flush(min(left, 0.5))
        for token in list(self._pending):
            topic, key, label, callback = self._pending.pop(token)
            reason = f"no delivery report within {budget:g} s"
            self._record(Delivery(topic, key, label, self._with_broker_errors(reason)), callback)
        result = PublishResult(
            self._delivered, tuple(self._failed), time.monotonic() - self._started
        )
        self._delivered = 0
        self._failed = []
        self._started = time.monotonic()
        return result

    @property
    def pending(self) -> int:
        """Records sent and still without a delivery report."""
        return len(self._pending)

    @property
    def delivered(self) -> int:
        """Records acknowledged since the last :meth:`wait`."""
        return self._delivered

    @property
    def failed(self) -> int:
        """Records failed since the last :meth:`wait`."""
        return len(self._failed)

    @property
    def broker_errors(self) -> list[str]:
        """Distinct client-level errors seen (unreachable brokers, authentication, ...)."""
        return list(self._broker_errors)

    def mask(self, text: str) -> str:
        """``text`` with the values of secret settings replaced."""
        return mask_secrets(text, self._user_config)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout_s`` (reports still pending are dropped)."""
        self._producer.flush(timeout_s)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _callback(self, token: int) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            entry = self._pending.pop(token, None)
            if entry is None:
                return
            topic, key, label, callback = entry
            if err is None:
                delivery = Delivery(topic, key, label, None, msg.partition(), msg.offset())
            else:
                delivery = Delivery(topic, key, label, self._with_broker_errors(err.str()))
            self._record(delivery, callback)

        return on_delivery

    def _record(self, delivery: Delivery, callback: DeliveryCallback | None) -> None:
        if delivery.error is None:
            self._delivered += 1
        else:
            self._failed.append(delivery)
        if callback is not None:
            callback(delivery)

    def _on_error(self, err: KafkaError) -> None:
        text = self.mask(err.str())
        self._broker_errors.pop(text, None)  # keep the most recent last
        self._broker_errors[text] = None
        if err.code() != KafkaError._ALL_BROKERS_DOWN:
            self._last_specific_error = text
        log.debug("kafka client error: %s", text)

    @property
    def last_broker_error(self) -> str | None:
        """The most telling recent client error (a connection failure rather than "all brokers
        are down"), or ``None``."""
        if self._last_specific_error is not None:
            return self._last_specific_error
        return next(reversed(self._broker_errors), None)

    def _with_broker_errors(self, reason: str) -> str:
        reason = self.mask(reason)
        last = self.last_broker_error
        return f"{reason}; last client error: {last}" if last else reason


class RateLimiter:
    """Paces calls to ``rate_per_s`` (None: unlimited) while serving the publisher's reports."""

    def __init__(self, rate_per_s: float | None, publisher: Publisher | None = None) -> None:
        if rate_per_s is not None and rate_per_s <= 0:
            raise InvalidInput("--rate must be positive")
        self._interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._publisher = publisher
        self._next = time.monotonic()

    def wait(self) -> None:
        """Return when the next call is due (immediately when unlimited)."""
        if not self._interval:
            return
        while (left := self._next - time.monotonic()) > 0:
            if self._publisher is not None:
                self._publisher.poll(min(left, 0.1))
            else:
                time.sleep(min(left, 0.1))
        # idle time is never banked, so a stall is not followed by a burst
        self._next = max(self._next, time.monotonic()) + self._interval

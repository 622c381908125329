"""Redrive: re-publish dead letters to the work topic once their cause is fixed.

Each dead letter goes back with its original key, value and timestamp (so the consumer's
stale-write guard still sees it as the old message it is), its other headers, and
``redrive.count`` one higher. A record whose count has reached the limit is reported and left
alone, so a message that keeps failing cannot loop. Offsets of the dead-letter topic are
committed in the redrive's own consumer group only after the re-published records were
acknowledged: a crash redrives a record again at worst, never loses one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from producer.exceptions import InvalidInput, KafkaUnavailable
from producer.publisher import Delivery, Publisher, mask_secrets
from schemas.deadletter import (
    DEAD_LETTER_HEADERS,
    HEADER_REDRIVE_COUNT,
    HEADER_TYPE,
    header_value,
    redrive_count,
)

DEFAULT_MAX_REDRIVES: Final = 3
log = logging.getLogger("producer.kafka")


def parse_where(pairs: Sequence[str]) -> dict[str, frozenset[str]]:
    """``["error.type=not_found", ...]`` to header -> accepted values.

    The same header given twice accepts either value; different headers must all match.
    """
    where: dict[str, set[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(
                f"--where expects HEADER=VALUE, e.g. {HEADER_TYPE}=not_found; got {pair!r}"
            )
        where.setdefault(name.strip(), set()).add(value)
    return {name: frozenset(values) for name, values in where.items()}


def default_group(dlq_topic: str, where: Mapping[str, frozenset[str]]) -> str:
    """The redrive's consumer group: one per dead-letter topic and filter.

    A filter has its own group, so records that one filter passed over stay unread for another.
    """
    if not where:
        return f"{dlq_topic}.redrive"
    canonical = "&".join(f"{k}={v}" for k in sorted(where) for v in sorted(where[k]))
    return f"{dlq_topic}.redrive.{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def matches(headers: Sequence[tuple[str, Any]] | None, where: Mapping[str, frozenset[str]]) -> bool:
    """True when every filtered header has one of its accepted values."""
    return all(header_value(headers, name) in values for name, values in where.items())


@dataclass(frozen=True, slots=True)
class DeadLetterRef:
    """Where a dead letter sits, for reports."""

    partition: int
    offset: int
    key: str
    error_type: str | None
    redrive_count: int


@dataclass(frozen=True, slots=True)
class RedriveOptions:
    dlq_topic: str
    topic: str
    where: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_redrives: int = DEFAULT_MAX_REDRIVES
    group: str | None = None
    until_end: bool = False
    keep_timestamp: bool = True
    dry_run: bool = False
    batch_size: int = 500
    timeout_s: float = 30.0
    #: With ``until_end``: give up when the positions stop moving for this long.
    idle_timeout_s: float = 60.0


@dataclass(slots=True)
class RedriveReport:
    group: str
    redriven: int = 0
    skipped: int = 0
    exhausted: list[DeadLetterRef] = field(default_factory=list)
    failed: list[tuple[DeadLetterRef, str]] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    total: int | None = None

    @property
    def seen(self) -> int:
        return self.redriven + self.skipped + len(self.exhausted) + len(self.failed)


class Redriver:
    """Runs one redrive; see the module docstring."""

    def __init__(
        self,
        bootstrap_servers: str,
        options: RedriveOptions,
        *,
        kafka_config: Mapping[str, str] | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        if options.max_redrives < 0:
            raise InvalidInput("--max-redrives must be >= 0")
        if options.dlq_topic == options.topic:
            raise InvalidInput("the dead-letter topic and the target topic must differ")
        self.options = options
        self.group = options.group or default_group(options.dlq_topic, options.where)
        self._config = dict(kafka_config or {})
        consumer_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "logger": log,
            **self._config,
        }
        try:
            self._consumer = Consumer(consumer_config)
        except KafkaException as exc:
            raise InvalidInput(
                mask_secrets(f"invalid Kafka settings: {exc.args[0]}", self._config)
            ) from None
        self._publisher = publisher
        self._owns_publisher = publisher is None and not options.dry_run
        if self._owns_publisher:
            self._publisher = Publisher(
                bootstrap_servers,
                kafka_config=self._config,
                delivery_timeout_s=options.timeout_s,
                client_id="image-embedder-redrive",
            )
        self.bootstrap_servers = bootstrap_servers
        self._closed = False

    def run(
        self,
        stop: Callable[[], bool] = lambda: False,
        progress: Callable[[RedriveReport], None] | None = None,
    ) -> RedriveReport:
        """Redrive until the end offsets seen at start (``until_end``) or until ``stop()``."""
        opts = self.options
        report = RedriveReport(self.group)
        try:
            partitions, ends = self._assign()
            if opts.until_end:
                report.total = sum(max(0, ends[p] - start) for p, start in partitions.items())
            done = {p for p, start in partitions.items() if opts.until_end and start >= ends[p]}
            last_move = time.monotonic()
            positions = dict(partitions)
            while not stop() and not (opts.until_end and len(done) == len(partitions)):
                records = self._consumer.consume(opts.batch_size, timeout=0.5)
                batch = self._handle_batch(records, ends, done, report)
                if batch:
                    self._commit(batch, report)
                if progress is not None:
                    progress(report)
                if report.failed:
                    break
                moved = self._update_positions(positions, ends, done)
                if moved or records:
                    last_move = time.monotonic()
                elif opts.until_end and time.monotonic() - last_move > opts.idle_timeout_s:
                    raise KafkaUnavailable(
                        f"no progress on {opts.dlq_topic} for {opts.idle_timeout_s:g} s "
                        f"(is Kafka at {self.bootstrap_servers} reachable?)"
                    )
        finally:
            self.close()
        return report

    def close(self) -> None:
        """Close the consumer (the group's offsets are already committed)."""
        if self._closed:
            return
        self._closed = True
        self._consumer.close()
        if self._owns_publisher and self._publisher is not None:
            self._publisher.close()

    # -- internals --------------------------------------------------------------------------

    def _assign(self) -> tuple[dict[int, int], dict[int, int]]:
        """Assign every partition at the group's committed offset; return starts and ends."""
        opts, timeout = self.options, self.options.timeout_s
        try:
            metadata = self._consumer.list_topics(opts.dlq_topic, timeout=timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka at {self.bootstrap_servers} did not answer within {timeout:g} s: "
                f"{mask_secrets(exc.args[0].str(), self._config)}"
            ) from None
        info = metadata.topics.get(opts.dlq_topic)
        if info is None or info.error is not None or not info.partitions:
            raise InvalidInput(f"dead-letter topic {opts.dlq_topic} does not exist")
        tps = [TopicPartition(opts.dlq_topic, p) for p in sorted(info.partitions)]
        try:
            committed = self._consumer.committed(tps, timeout=timeout)
            watermarks = {
                tp.partition: self._consumer.get_watermark_offsets(tp, timeout=timeout)
                for tp in tps
            }
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"cannot read offsets of {opts.dlq_topic}: {exc.args[0].str()}"
            ) from None
        starts: dict[int, int] = {}
        for tp in committed:
            low, _high = watermarks[tp.partition]
            starts[tp.partition] = max(tp.offset, low) if tp.offset >= 0 else low
        ends = {p: high for p, (_low, high) in watermarks.items()}
        self._consumer.assign(
            [
                TopicPartition(opts.dlq_topic, p, off if off >= 0 else OFFSET_BEGINNING)
                for p, off in starts.items()
            ]
        )
        return starts, ends

    def _handle_batch(
        self, records: list[Any], ends: dict[int, int], done: set[int], report: RedriveReport
    ) -> dict[int, list[tuple[int, list[bool | None]]]]:
        """Dispatch a batch; per partition, each record's offset and outcome slot.

        The slot holds True (finished: redriven, skipped or exhausted), False (failed) or None
        (re-published, report pending), filled in by the delivery callback.
        """
        opts = self.options
        batch: dict[int, list[tuple[int, list[bool | None]]]] = {}
        for record in records:
            err = record.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or not err.retriable():
                    raise KafkaUnavailable(
                        f"reading {opts.dlq_topic}: {mask_secrets(err.str(), self._config)}"
                    )
                continue
            partition, offset = record.partition(), record.offset()
            if opts.until_end and offset >= ends[partition]:
                done.add(partition)
                continue
            slot: list[bool | None] = [True]
            batch.setdefault(partition, []).append((offset, slot))
            headers = record.headers() or []
            if not matches(headers, opts.where):
                report.skipped += 1
                continue
            count = redrive_count(headers)
            key = record.key()
            ref = DeadLetterRef(
                partition,
                offset,
                key.decode("utf-8", "replace") if key is not None else "",
                header_value(headers, HEADER_TYPE),
                count,
            )
            if count >= opts.max_redrives:
                report.exhausted.append(ref)
                continue
            if opts.dry_run or self._publisher is None:
                report.redriven += 1
                continue
            slot[0] = None
            kept = [(k, v) for k, v in headers if k not in DEAD_LETTER_HEADERS]
            kept.append((HEADER_REDRIVE_COUNT, str(count + 1).encode()))
            ts_type, ts = record.timestamp()
            self._publisher.send(
                opts.topic,
                key=key,
                value=record.value(),
                headers=kept,
                timestamp_ms=ts
                if opts.keep_timestamp and ts_type != TIMESTAMP_NOT_AVAILABLE
                else None,
                ref=f"{opts.dlq_topic}[{partition}]@{offset}",
                on_delivery=self._on_delivery(slot, ref, report),
            )
        if self._publisher is not None and self._publisher.pending:
            self._publisher.wait(opts.timeout_s)
        return batch

    @staticmethod
    def _on_delivery(
        slot: list[bool | None], ref: DeadLetterRef, report: RedriveReport
    ) -> Callable[[Delivery], None]:
        def on_delivery(delivery: Delivery) -> None:
            if delivery.error is None:
                slot[0] = True
                report.redriven += 1
            else:
                slot[0] = False
                report.failed.append((ref, delivery.error))

        return on_delivery

    def _commit(
        self, batch: dict[int, list[tuple[int, list[bool | None]]]], report: RedriveReport
    ) -> None:
        """Commit, per partition, up to the first record that is not finished."""
        if self.options.dry_run:
            return
        offsets: list[TopicPartition] = []
        for partition, entries in batch.items():
            next_offset: int | None = None
            for offset, slot in sorted(entries, key=lambda e: e[0]):
                if slot[0] is not True:
                    break
                next_offset = offset + 1
            if next_offset is not None:
                offsets.append(TopicPartition(self.options.dlq_topic, partition, next_offset))
                report.committed[partition] = next_offset
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                raise KafkaUnavailable(
                    f"commit on {self.options.dlq_topic} failed: {exc.args[0].str()}"
                ) from None

    def _update_positions(
        self, positions: dict[int, int], ends: dict[int, int], done: set[int]
    ) -> bool:
        moved = False
        tps = [TopicPartition(self.options.dlq_topic, p) for p in positions]
        for tp in self._consumer.position(tps):
            if tp.offset >= 0 and tp.offset != positions[tp.partition]:
                positions[tp.partition] = tp.offset
                moved = True
            if self.options.until_end and positions[tp.partition] >= ends[tp.partition]:
                done.add(tp.partition)
        return moved

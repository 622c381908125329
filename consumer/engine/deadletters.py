"""The dead-letter router: a bad message's original record to the dead-letter topic, retried
until the broker acknowledges it (its offset finishes only then).

It owns the producer's traffic, the jobs waiting for a resend (with backoff), the count of dead
letters not yet acknowledged, the time a non-retriable refusal has lasted, and the offsets this
process already delivered (a partition revoked before its commit and given back is read again:
what was delivered is finished without a second copy). Main thread only: delivery reports come
from ``Producer.poll`` on the main thread, as events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from consumer.backoff import Backoff
from consumer.engine.events import (
    DeadLetterDelivered,
    DeadLetterFailed,
    Events,
    PartitionKey,
    Ref,
)
from consumer.engine.exceptions import EngineFatalError
from consumer.engine.ledger import InFlightLedger
from consumer.engine.runtime import Clock, ProducerLike
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics, RetryOperation
from schemas import (
    HEADER_VERSION,
    ErrorType,
    Stage,
    dead_letter_headers,
    format_version,
)

log = get_logger("consumer.engine")


@dataclass(slots=True)
class DeadLetterJob:
    """One dead letter on its way to the dead-letter topic (retried until delivered)."""

    ref: Ref
    stage: Stage
    error_type: ErrorType
    text: str
    attempts: int = 0
    due: float = 0.0
    refused_since: float | None = None  # first of an unbroken run of non-retriable refusals


class DeadLetterRouter:
    def __init__(
        self,
        producer: ProducerLike,
        *,
        topic: str,
        refused_timeout_s: float,
        ledger: InFlightLedger,
        events: Events,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._refused_timeout_s = refused_timeout_s
        self._ledger = ledger
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._random = rng
        self._pending = 0
        self._retry: list[DeadLetterJob] = []
        # per partition, offsets delivered by this process and not yet committed by it
        self._delivered: dict[PartitionKey, set[int]] = {}
        #: set when a refusal outlasted ``refused_timeout_s``: the run stops with it
        self.fatal: EngineFatalError | None = None

    @property
    def pending(self) -> int:
        """Dead letters handed to the router and not yet acknowledged (nor dropped)."""
        return self._pending

    def route(self, ref: Ref, stage: Stage, error_type: ErrorType, text: str) -> bool:
        """Dead-letter ``ref``; True when it was delivered before (by an earlier owner of the
        partition in this process): then it is finished now, not sent again."""
        if not self._ledger.is_current(ref) or self._ledger.raw(ref) is None:
            return False
        if ref.offset in self._delivered.get(ref.key, ()):
            log.info(
                "already dead-lettered; not sent again",
                topic=ref.topic,
                partition=ref.partition,
                offset=ref.offset,
            )
            return True
        self._pending += 1
        log.info(
            "dead-lettering",
            topic=ref.topic,
            partition=ref.partition,
            offset=ref.offset,
            stage=str(stage),
            error_type=str(error_type),
            reason=text[:300],
        )
        self._send(DeadLetterJob(ref, stage, error_type, text))
        return False

    def poll(self) -> None:
        """Serve the producer's delivery reports and resend what is due."""
        self._producer.poll(0)
        if not self._retry:
            return
        now = self._clock.monotonic()
        due = [job for job in self._retry if job.due <= now]
        if due:
            self._retry = [job for job in self._retry if job.due > now]
            for job in due:
                self._send(job)

    def sizes(self) -> dict[str, int]:
        return {"dead_letters_pending": self._pending, "dead_letter_retries": len(self._retry)}

    def delivered(self, job: DeadLetterJob) -> bool:
        """The broker acknowledged ``job``; True when its message is still this owner's."""
        self._pending -= 1
        self._delivered.setdefault(job.ref.key, set()).add(job.ref.offset)
        return self._ledger.is_current(job.ref)

    def failed(self, job: DeadLetterJob, err: KafkaError | None, error: str) -> None:
        """Try again later, with backoff: the offset stays uncommitted until it is delivered.

        An error Kafka calls non-retriable (the record is too large for the topic, the topic is
        unknown, writing it is not authorized) may still be fixed by an operator, so it is
        retried too, but for at most ``refused_timeout_s``: then the run stops with the cause
        (exit 1) rather than hold the partition's commits forever."""
        if not self._ledger.is_current(job.ref):
            self._pending -= 1  # the partition moved on: the new owner redoes it
            return
        job.attempts += 1
        self._metrics.record_retry(RetryOperation.DEAD_LETTER)
        now = self._clock.monotonic()
        if isinstance(err, KafkaError) and not err.retriable():
            job.refused_since = job.refused_since or now
            if now - job.refused_since > self._refused_timeout_s:
                self.fatal = EngineFatalError(
                    f"the dead-letter topic {self._topic!r} refuses a record "
                    f"(offset {job.ref.offset} of {job.ref.topic}[{job.ref.partition}]) for "
                    f"{now - job.refused_since:.0f} s: {error}; nothing past it was committed"
                )
        else:
            job.refused_since = None
        if job.attempts == 1 or job.attempts % 10 == 0:
            log.warning(
                "dead-letter delivery failed; retrying",
                attempt=job.attempts,
                dlq_topic=self._topic,
                error=error,
            )
        backoff = Backoff(initial=0.2, cap=30.0, start=1, random=self._random)
        job.due = now + backoff.jittered(job.attempts)
        self._retry.append(job)

    def forget(self, keys: list[PartitionKey]) -> None:
        """Dead letters waiting for a resend belong to the old owner: the new one redoes them
        (what was delivered is remembered)."""
        wanted = set(keys)
        waiting = [job for job in self._retry if job.ref.key in wanted]
        if waiting:
            self._retry = [job for job in self._retry if job.ref.key not in wanted]
            self._pending -= len(waiting)

    def committed(self, positions: dict[PartitionKey, int]) -> None:
        """Offsets below a commit are never read again by this process: forget them."""
        for key, position in positions.items():
            offsets = self._delivered.get(key)
            if offsets is None:
                continue
            offsets.difference_update([o for o in offsets if o < position])
            if not offsets:
                del self._delivered[key]

    def flush(self, timeout_s: float) -> None:
        self._producer.flush(timeout_s)

    # --- the producer ----------------------------------------------------------------------
    def _send(self, job: DeadLetterJob) -> None:
        raw = self._ledger.raw(job.ref)
        if raw is None or not self._ledger.is_current(job.ref):
            self._pending -= 1  # the partition moved on: the new owner redoes it
            return
        headers = dead_letter_headers(
            stage=Stage(job.stage),
            error_type=ErrorType(job.error_type),
            message=job.text,
            source_topic=job.ref.topic,
            source_partition=job.ref.partition,
            source_offset=job.ref.offset,
            redrive_count=raw.redrive_count,
        )
        headers.append((HEADER_VERSION, format_version(raw.version)))  # kept by redrive
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    key=raw.key,
                    value=raw.value,
                    headers=headers,
                    timestamp=raw.version.ts,  # a redriven record keeps its age (stale guard)
                    on_delivery=partial(self._report, job),
                )
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                self.failed(job, err, str(exc))
                return

    def _report(self, job: DeadLetterJob, err: KafkaError | None, msg: Any) -> None:
        """The producer's delivery callback (from ``poll``/``flush`` on the main thread)."""
        if err is not None:
            self._events.put(DeadLetterFailed(job, err, str(err)))
        else:
            self._events.put(DeadLetterDelivered(job))

"""Message intake: a poll's records, from the Kafka consumer into the ledger and the stages.

Guarantees (main thread only):
- a record is admitted at most once per assignment (a duplicate delivery is dropped) and only
  for a partition this process holds;
- a record it does not take in (past a bounded run's end, or handed out by a poll the engine
  will not act on) is marked so: the committer never moves the partition past it;
- a record that does not parse is dead-lettered with its reason, never dropped; a delete goes
  straight to the writer; an upsert goes to the fetch stage;
- a record carries the version it was first produced at (a redriven one, from its headers).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from confluent_kafka import KafkaError, TopicPartition

from consumer.engine.assignments import Assignments
from consumer.engine.events import PartitionKey, Ref
from consumer.engine.flow import FlowControl
from consumer.engine.ledger import InFlightLedger, RawRecord
from consumer.engine.runtime import Clock, KafkaConsumerLike, KafkaMessageLike
from consumer.engine.stages import Stages
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics
from consumer.security import AuthFailureWatch
from consumer.sink import WriteOp
from schemas import (
    ErrorType,
    InvalidMessage,
    Stage,
    Version,
    decode_message,
    redrive_count,
    version_from_headers,
)

log = get_logger("consumer.engine")

#: How a record that does not parse is dead-lettered: ``(ref, stage, error type, reason)``.
DeadLetter = Callable[[Ref, Stage, ErrorType, str], None]


class Intake:
    """Admits polled records and starts their work."""

    def __init__(
        self,
        *,
        consumer: KafkaConsumerLike,
        assignments: Assignments,
        ledger: InFlightLedger,
        flow: FlowControl,
        stages: Stages,
        submit: Callable[[list[WriteOp]], None],
        dead_letter: DeadLetter,
        auth_watch: AuthFailureWatch,
        metrics: Metrics,
        clock: Clock,
        allowed_schemes: Collection[str],
    ) -> None:
        self._consumer = consumer
        self._assignments = assignments
        self._ledger = ledger
        self._flow = flow
        self._stages = stages
        self._submit = submit
        self._dead_letter = dead_letter
        self._auth_watch = auth_watch
        self._metrics = metrics
        self._clock = clock
        self._allowed_schemes = allowed_schemes
        #: when the first record was taken in (the run's start-up time ends there)
        self.first_message_at: float | None = None

    def take_in(self, messages: list[KafkaMessageLike]) -> None:
        """One poll's records: admitted, or skipped for a reason that loses nothing."""
        good = 0
        for message in messages:
            key: PartitionKey = (message.topic() or "", message.partition() or 0)
            offset = message.offset() or 0
            err = message.error()
            if err is not None:
                self._consume_error(key, offset, err)
                continue
            if not self._assignments.is_assigned(key):
                continue
            if self._assignments.past_end(key, offset):
                self._consumer.pause([TopicPartition(key[0], key[1])])
                continue
            ref = self._ledger.admit(key, offset)
            if ref is None:
                log.warning("duplicate delivery ignored", partition=key[1], offset=offset)
                continue
            good += 1
            self._assignments.delivered(key, offset)
            self._start(ref, message)
        if good:
            if self.first_message_at is None:
                self.first_message_at = self._clock.monotonic()
            self._flow.limiter.take(good)
            self._metrics.observe_batch_size(good)

    def not_taken(self, messages: list[KafkaMessageLike]) -> None:
        """Records polled that will not be taken in (a fatal error came with the poll, or the
        loop is draining): the consumer's position is past them, so the committer must not
        move an idle partition past them (see ``Committer``)."""
        for message in messages:
            if message.error() is None:
                key = (message.topic() or "", message.partition() or 0)
                self._assignments.handed_out_not_taken(key, message.offset() or 0)

    def _consume_error(self, key: PartitionKey, offset: int, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            self._assignments.eof(key, offset, self._ledger.tracker.position(key))
        elif self._auth_watch.observe(err) is None:  # an auth failure logs its own line
            log.warning("kafka consume error", error=str(err))

    def _start(self, ref: Ref, message: KafkaMessageLike) -> None:
        _, ts = message.timestamp()
        kafka_ts = int(ts) if ts and ts > 0 else int(self._clock.time() * 1000)
        headers = message.headers()
        # a dead-lettered and redriven record carries the version it was first produced at
        version = version_from_headers(headers) or Version(kafka_ts, ref.partition, ref.offset)
        raw = RawRecord(message.key(), message.value(), redrive_count(headers), None, version)
        self._ledger.record(ref, raw)
        try:
            msg = decode_message(
                message.key(), message.value(), allowed_schemes=self._allowed_schemes
            )
        except InvalidMessage as exc:
            self._dead_letter(ref, Stage.PARSE, exc.error_type, str(exc))
            return
        self._ledger.register(ref, msg.id)
        if msg.op == "delete":
            self._submit([WriteOp(ref, msg.id, version, None)])
            return
        self._stages.fetch(ref, msg)

"""The committer: the group's commits, from the in-flight ledger's contiguous watermarks.

Commits are synchronous, on the main thread, every ``commit_interval_s`` (or when asked). A
backfill's commits carry its plan (offset metadata); idle partitions move past records the
consumer never hands out (transaction markers); a failed commit is counted and retried at the
next interval. Every ``REMAINING_INTERVAL_S`` of the runtime clock, a backfill's remaining
messages over *all* its partitions (the group's commits, every worker's) go to the gauge.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import KafkaException, TopicPartition

from consumer.engine import plan as backfill_plan
from consumer.engine.assignments import Assignments
from consumer.engine.events import PartitionKey
from consumer.engine.ledger import InFlightLedger
from consumer.engine.plan import Plan
from consumer.engine.runtime import Clock, KafkaConsumerLike
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics, RetryOperation

log = get_logger("consumer.engine")

#: How often a backfill's remaining messages are read from the group's commits.
REMAINING_INTERVAL_S = 15.0


class Committer:
    def __init__(
        self,
        consumer: KafkaConsumerLike,
        *,
        topic: str,
        ledger: InFlightLedger,
        assignments: Assignments,
        plan: Plan | None,
        metrics: Metrics,
        clock: Clock,
        commit_interval_s: float,
        on_committed: Callable[[dict[PartitionKey, int]], None],
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._ledger = ledger
        self._assignments = assignments
        self._plan = plan
        self._metrics = metrics
        self._clock = clock
        self._interval_s = commit_interval_s
        self._on_committed = on_committed
        self._last = 0.0
        self._last_remaining: float | None = None

    def maybe_commit(self, force: bool = False) -> None:
        """Commit what is finished, at most every ``commit_interval_s`` unless ``force``."""
        now = self._clock.monotonic()
        if not force and now - self._last < self._interval_s:
            return
        self._last = now
        tracker = self._ledger.tracker
        keys = self._assignments.assigned()
        for topic, part in keys:  # the written-but-not-committed gap, before the commit
            self._metrics.set_uncommitted(topic, part, tracker.uncommitted((topic, part)))
        self.commit(keys)

    def commit(self, keys: list[PartitionKey]) -> bool:
        """Commit ``keys`` now (synchronously); False when the commit failed."""
        if not keys:
            return True
        tracker = self._ledger.tracker
        self._skip_invisible(keys)
        positions = tracker.committable(keys)
        if not positions:
            return True
        offsets = [self._position(t, p, off) for (t, p), off in positions.items()]
        started = self._clock.monotonic()
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._metrics.record_retry(RetryOperation.KAFKA_COMMIT)
            log.warning("commit failed; will retry", error=str(exc))
            return False
        self._metrics.observe_stage("commit", self._clock.monotonic() - started)
        committed = {(tp.topic, tp.partition): tp.offset for tp in result or [] if tp.error is None}
        tracker.mark_committed(committed)
        for (topic, part), _ in committed.items():
            self._metrics.set_uncommitted(topic, part, tracker.uncommitted((topic, part)))
        self._on_committed(committed)
        return True

    def report_remaining(self, force: bool = False) -> None:
        """A backfill's remaining messages (all its partitions, every worker's commits), at most
        every ``REMAINING_INTERVAL_S`` of the runtime clock unless ``force``."""
        if self._plan is None:
            return
        now = self._clock.monotonic()
        last = self._last_remaining
        if not force and last is not None and now - last < REMAINING_INTERVAL_S:
            return
        self._last_remaining = now
        partitions = [TopicPartition(self._topic, p) for p in sorted(self._plan.ends)]
        try:
            committed = self._consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            log.warning("could not read the group's commits", error=str(exc))
            return
        self._metrics.set_backfill_remaining(backfill_plan.remaining(committed, self._plan))

    def _position(self, topic: str, partition: int, offset: int) -> TopicPartition:
        """What to commit for one partition: a backfill's commits carry its plan (metadata)."""
        metadata = self._plan.metadata(partition) if self._plan is not None else None
        if metadata is None:
            return TopicPartition(topic, partition, offset)
        return TopicPartition(topic, partition, offset, metadata=metadata)

    def _skip_invisible(self, keys: list[PartitionKey]) -> None:
        """Move idle partitions past records the consumer never hands out (transaction
        markers, aborted records), so a finished partition commits its end and shows no lag.

        The consumer's position is the next offset it would hand out; it is taken only when
        nothing of the partition is in flight, never past a record that was handed out but not
        taken in (past a bounded run's end, or polled while draining)."""
        tracker = self._ledger.tracker
        idle = [k for k in keys if not tracker.in_flight(k)]
        if not idle:
            return
        try:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in idle])
        except KafkaException as exc:
            log.warning("could not read the consumer's positions", error=str(exc))
            return
        for tp in positions:
            key = (tp.topic, tp.partition)
            target = tp.offset
            not_taken = self._assignments.not_taken(key)
            if not_taken is not None:
                target = min(target, not_taken)
            end = self._assignments.end(key)
            if end is not None:
                target = min(target, end)
            if target >= 0:
                tracker.skip_to(key, target)

"""The end of a bounded run for the whole group, not only for this member.

A bounded run (``--until-end``, ``--until``, a backfill worker) in a group with other members must
not exit 0 once the partitions *it* holds are done: another member may still work, or may have
died holding partitions that the group gives out again only after its session times out. Were
this member gone by then, those partitions would stay unread with every member "finished" (a
Job's pods all succeeded, part of the topic never embedded). So a member whose own partitions are
done stays in the group, polling, as a standby, until the group's commits reach the end of
*every* partition of the topic; then it ends.

The ends are the plan's when there is one (a backfill: the same for every worker); otherwise this
member's: the end offsets (or ``--until``'s offsets) of every partition when it started. A member
started later may have later ends of its own; a partition is done once its commit reaches this
member's end, by whichever member. A partition that has no commit is done when its end is not
past its beginning (nothing to read).

The group's commits are read at most every ``interval_s`` of the runtime clock, on the main
thread; a Kafka error reading them counts as "not yet".
"""

from __future__ import annotations

from datetime import datetime

from confluent_kafka import KafkaException, TopicPartition

from consumer.engine import plan as backfill_plan
from consumer.engine.plan import Plan
from consumer.engine.runtime import Clock, KafkaConsumerLike
from consumer.observability.logging import get_logger

log = get_logger("consumer.engine")

#: How often the group's commits are read while this member waits for the others.
INTERVAL_S = 2.0


class GroupEnd:
    """Whether the group's commits reach the bounded run's end on every partition."""

    def __init__(
        self,
        consumer: KafkaConsumerLike,
        topic: str,
        clock: Clock,
        *,
        plan: Plan | None,
        ends: dict[int, int],
        lows: dict[int, int],
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._clock = clock
        self._plan = plan
        self._ends = dict(plan.ends) if plan is not None else dict(ends)
        self._lows = dict(lows)
        self._interval_s = interval_s
        self._last: float | None = None
        self._done = False

    @classmethod
    def resolve(
        cls,
        consumer: KafkaConsumerLike,
        topic: str,
        clock: Clock,
        *,
        plan: Plan | None,
        until: datetime | None,
    ) -> GroupEnd:
        """Fix the ends now (at start-up): the plan's, else each partition's end offset (or the
        first offset after ``until``)."""
        if plan is not None:
            return cls(consumer, topic, clock, plan=plan, ends={}, lows={})
        partitions = backfill_plan.partitions_of(consumer, topic)
        watermarks, ends = backfill_plan.resolve_ends(consumer, topic, partitions, until)
        lows = {p: int(low) for p, (low, _) in watermarks.items()}
        return cls(consumer, topic, clock, plan=None, ends=ends, lows=lows)

    @property
    def ends(self) -> dict[int, int]:
        return dict(self._ends)

    def complete(self, held_ends: dict[int, int]) -> bool:
        """Whether every partition is committed to its end. ``held_ends``: the ends of the
        partitions this member holds (fixed at their assignment), which win over the ones fixed
        at start-up. Reads the commits at most every ``interval_s``; once true, stays true."""
        if self._done:
            return True
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < self._interval_s:
            return False
        self._last = now
        ends = {**self._ends, **{p: e for p, e in held_ends.items() if p in self._ends}}
        partitions = [TopicPartition(self._topic, p) for p in sorted(ends)]
        try:
            committed = self._consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            log.info("cannot read the group's commits yet", error=str(exc))
            return False
        if self._plan is not None:
            done = backfill_plan.complete(committed, self._plan)
        else:
            at = {tp.partition: tp.offset for tp in committed if tp.offset is not None}
            done = all(
                at.get(p, -1) >= end or (at.get(p, -1) < 0 and end <= self._lows.get(p, 0))
                for p, end in ends.items()
            )
        if not done:
            log.debug("waiting for the group's other partitions", ends=ends)
        self._done = done
        return done

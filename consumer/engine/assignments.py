"""Per-partition state of this run: one ``PartitionState`` per partition ever assigned.

What a partition keeps across revocations (where ``--from`` put it, the start and end of a bounded
run, both fixed once per run) and what ends with an assignment (assigned, reached its end, the
first offset handed out but not taken in). Main thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from consumer.engine.events import PartitionKey
from consumer.engine.exceptions import EngineFatalError
from consumer.engine.plan import Plan
from consumer.engine.runtime import KafkaConsumerLike
from consumer.settings import StartPosition


@dataclass(slots=True)
class PartitionState:
    """One partition's state in this run."""

    generation: int = 0  # of its current (or last) assignment
    assigned: bool = False
    positioned: bool = False  # --from applied (once per run)
    start: int | None = None  # a bounded run's first offset (fixed once per run)
    end: int | None = None  # a bounded run's end offset, exclusive (fixed once per run)
    reached: bool = False  # everything up to the end was handed out (this assignment)
    not_taken: int | None = None  # lowest offset handed out but not taken in (this assignment)

    def take_not_taken(self, offset: int) -> None:
        self.not_taken = offset if self.not_taken is None else min(self.not_taken, offset)


class Assignments:
    def __init__(self) -> None:
        self._states: dict[PartitionKey, PartitionState] = {}

    def state(self, key: PartitionKey) -> PartitionState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = PartitionState()
        return state

    # --- questions -------------------------------------------------------------------------
    def is_assigned(self, key: PartitionKey) -> bool:
        state = self._states.get(key)
        return state is not None and state.assigned

    def any_assigned(self) -> bool:
        """Whether any partition is assigned (safe from another thread: a snapshot)."""
        return any(state.assigned for state in list(self._states.values()))

    def assigned(self) -> list[PartitionKey]:
        """The partitions assigned now, sorted."""
        return sorted(k for k, s in self._states.items() if s.assigned)

    def end(self, key: PartitionKey) -> int | None:
        state = self._states.get(key)
        return None if state is None else state.end

    def not_taken(self, key: PartitionKey) -> int | None:
        state = self._states.get(key)
        return None if state is None else state.not_taken

    def is_reached(self, key: PartitionKey) -> bool:
        state = self._states.get(key)
        return state is not None and state.reached

    def ends(self) -> dict[PartitionKey, int]:
        return {k: s.end for k, s in sorted(self._states.items()) if s.end is not None}

    def ends_for_log(self) -> dict[str, int]:
        return {f"{t}:{p}": end for (t, p), end in self.ends().items()}

    def total_count(self) -> int:
        """Messages between the starts and ends of a bounded run (its progress total)."""
        return sum(
            max(0, s.end - (s.start or 0)) for s in self._states.values() if s.end is not None
        )

    def unreached(self) -> list[PartitionKey]:
        """The assigned partitions still to read (the ones pause/resume applies to)."""
        return [k for k in self.assigned() if not self._states[k].reached]

    def all_reached_and_idle(self, in_flight: Callable[[PartitionKey], int]) -> bool:
        """Every assigned partition read to its end and nothing of it in flight."""
        keys = self.assigned()
        return bool(keys) and all(self._states[k].reached and not in_flight(k) for k in keys)

    def bounded_run_complete(
        self,
        in_flight: Callable[[PartitionKey], int],
        committable: Callable[[list[PartitionKey]], dict[PartitionKey, int]],
    ) -> bool:
        """Side-effect free: every assigned partition reached its end, nothing of it is in
        flight and everything finished is committed."""
        return self.all_reached_and_idle(in_flight) and not committable(self.assigned())

    # --- events ----------------------------------------------------------------------------
    def assign(self, key: PartitionKey, generation: int) -> PartitionState:
        state = self.state(key)
        state.generation = generation
        state.assigned = True
        return state

    def forget(self, key: PartitionKey, generation: int) -> None:
        """Revoked or lost: given back later, it is read again from the group's commit up to
        its end (so it is no longer reached)."""
        state = self.state(key)
        state.generation = generation
        state.assigned = False
        state.reached = False
        state.not_taken = None

    def eof(self, key: PartitionKey, offset: int, position: int | None) -> None:
        """A partition-EOF event at ``offset``; ``position`` is the tracker's (None: nothing
        delivered in this assignment)."""
        if not self.is_assigned(key):  # a late event of a partition given away
            return
        state = self._states[key]
        if state.end is None:
            return
        if offset >= state.end or position is None:
            # at the end, or an empty slice up to the end (e.g. compaction): nothing more to read
            state.reached = True

    def past_end(self, key: PartitionKey, offset: int) -> bool:
        """Whether a record at ``offset`` lies past a bounded run's end (then it is not taken
        in, and the partition is reached)."""
        state = self._states.get(key)
        if state is None or state.end is None or offset < state.end:
            return False
        if state.not_taken is None:
            state.not_taken = offset
        state.reached = True
        return True

    def delivered(self, key: PartitionKey, offset: int) -> None:
        """The record at ``offset`` was taken in: the last one before the end reaches it."""
        state = self._states[key]
        if state.end is not None and offset >= state.end - 1:
            state.reached = True

    def handed_out_not_taken(self, key: PartitionKey, offset: int) -> None:
        """A record polled but not taken in (while draining, or with a fatal error from the
        same poll): never committed past."""
        self.state(key).take_not_taken(offset)

    # --- positioning (on assignment) -------------------------------------------------------
    def position(
        self,
        consumer: KafkaConsumerLike,
        partitions: list[TopicPartition],
        spec: StartPosition | None,
        *,
        group: str | None,
        reset_offsets: bool,
    ) -> None:
        """Apply --from to partitions assigned for the first time in this run (sets
        ``tp.offset``)."""
        fresh = [tp for tp in partitions if not self.state((tp.topic, tp.partition)).positioned]
        for tp in fresh:
            self.state((tp.topic, tp.partition)).positioned = True
        if spec is None or not fresh:
            return
        if not reset_offsets:
            committed = consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in fresh], timeout=10
            )
            moved = [c for c in committed if c.offset >= 0]
            if moved:
                raise EngineFatalError(
                    f"group {group!r} already has committed offsets on "
                    f"{[c.partition for c in moved]}; pass --reset-offsets to move it with --from"
                )
        _apply_start(consumer, fresh, spec)

    def compute_ends(
        self,
        consumer: KafkaConsumerLike,
        partitions: Iterable[TopicPartition],
        plan: Plan | None,
        until: datetime | None,
    ) -> None:
        """Record, once per partition, the offsets a bounded run starts and stops at."""
        for tp in partitions:
            state = self.state((tp.topic, tp.partition))
            if state.end is not None:
                continue
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=10, cached=False
            )
            state.end = _end_of(consumer, tp, high, plan, until)
            state.start = _start_of(consumer, tp, low, high)
            if state.end <= low or state.start >= state.end:
                state.reached = True


def _apply_start(
    consumer: KafkaConsumerLike, fresh: list[TopicPartition], spec: StartPosition
) -> None:
    if spec == "earliest":
        for tp in fresh:
            tp.offset = OFFSET_BEGINNING
    elif spec == "latest":
        for tp in fresh:
            tp.offset = OFFSET_END
    elif isinstance(spec, datetime):
        ms = int(spec.timestamp() * 1000)
        query = [TopicPartition(tp.topic, tp.partition, ms) for tp in fresh]
        found = consumer.offsets_for_times(query, timeout=10)
        by_part = {f.partition: f.offset for f in found}
        for tp in fresh:
            off = by_part.get(tp.partition, -1)
            tp.offset = off if off >= 0 else OFFSET_END
    elif isinstance(spec, dict):
        for tp in fresh:
            if tp.partition in spec:
                tp.offset = spec[tp.partition]


def _end_of(
    consumer: KafkaConsumerLike,
    tp: TopicPartition,
    high: int,
    plan: Plan | None,
    until: datetime | None,
) -> int:
    if plan is not None:
        return plan.ends.get(tp.partition, high)
    if until is not None:
        ms = int(until.timestamp() * 1000) + 1
        found = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, ms)], timeout=10)
        if found and found[0].offset >= 0:
            return int(found[0].offset)
    return high


def _start_of(consumer: KafkaConsumerLike, tp: TopicPartition, low: int, high: int) -> int:
    if tp.offset == OFFSET_BEGINNING:
        return low
    if tp.offset == OFFSET_END:
        return high
    if tp.offset >= 0:
        return int(tp.offset)
    # no explicit position: the group's committed offset, else the beginning
    committed = consumer.committed([TopicPartition(tp.topic, tp.partition)], timeout=10)
    return int(committed[0].offset) if committed and committed[0].offset >= 0 else low

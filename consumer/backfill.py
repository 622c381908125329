"""Planned backfills: ``backfill plan`` once, ``backfill run`` on any number of workers,
``backfill status`` to watch them.

The plan lives in Kafka only: every partition's committed offset of the backfill's group carries
the plan's id, the partition's start and end, the backfill's max rate and its specs in the commit
metadata (see :mod:`consumer.engine.plan`). Workers are plain members of the group: Kafka spreads
the partitions over them and moves them when one stops; each resumes a partition from the
group's commit, never from the plan's start, and stops at the plan's end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.engine import plan as bp
from consumer.engine.exceptions import EngineFatalError
from consumer.settings import Settings


class BackfillError(EngineFatalError):
    """A backfill command cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class PlanResult:
    """What ``backfill plan`` did."""

    plan: bp.Plan
    made: bool  # False: the same plan was already there (a no-op)
    replaced: str | None = None  # the id of the plan it replaced, if any
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "plan": p.plan_id,
            "made": self.made,
            "replaced": self.replaced,
            "from": p.start_from,
            "until": p.until or "end",
            "max_rate": p.max_rate,
            "partitions": [
                {"partition": k, "start": p.starts[k], "end": p.ends[k]} for k in sorted(p.ends)
            ],
            "messages": p.messages,
            "note": self.note,
        }


def _consumer(s: Settings) -> Any:
    """A consumer of the group that never joins it: it reads and commits offsets only."""
    return Consumer(
        {
            **s.kafka_common(),
            "group.id": s.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )


def active_members(s: Settings) -> int:
    """How many members the group has now (running workers or other consumers)."""
    admin = AdminClient(s.kafka_common())
    futures = admin.describe_consumer_groups([s.group or ""], request_timeout=10)
    try:
        description = futures[s.group or ""].result(timeout=15)
    except KafkaException as exc:
        if "GROUP_ID_NOT_FOUND" in str(exc):
            return 0
        raise BackfillError(f"could not describe group {s.group!r}: {exc}") from exc
    return len(description.members)


def _commits(consumer: Any, topic: str, partitions: list[int]) -> list[TopicPartition]:
    return bp.committed_offsets(consumer, topic, partitions)


def make_plan(s: Settings, *, replace: bool = False, now: datetime | None = None) -> PlanResult:
    """Record the plan of ``s`` (topic, group, --from, --until or --until-end, --max-rate) in the
    group's commits. The same specs again are a no-op; anything else is refused without
    ``replace``."""
    if not s.topic or not s.group or not s.start_from:
        raise BackfillError("backfill plan needs --topic, --group and --from")
    if not s.until_end and s.until is None:
        raise BackfillError("backfill plan needs an end: --until-end or --until TIME")
    spec = bp.PlanSpec.of(s)
    consumer = _consumer(s)
    try:
        partitions = bp.partitions_of(consumer, s.topic)
        committed = _commits(consumer, s.topic, partitions)
        existing = bp.from_commits(partitions, committed)
        if existing is not None and existing.plan_id == spec.plan_id:
            note = None
            if s.max_rate != existing.max_rate:
                note = (
                    f"the plan keeps its max rate ({existing.max_rate or 'none'}); "
                    "--replace makes it again with the new one (from its start)"
                )
            return PlanResult(existing, made=False, note=note)
        has_offsets = any(tp.offset >= 0 for tp in committed)
        members = active_members(s)
        if not replace:
            if existing is not None:
                raise BackfillError(
                    f"group {s.group!r} already has another backfill plan ({existing.plan_id}: "
                    f"--from {existing.start_from} to {existing.until or 'end'}); pass "
                    "--replace to make this one instead (it starts over from --from), or use "
                    "another --group"
                )
            if has_offsets:
                raise BackfillError(
                    f"group {s.group!r} already has committed offsets on topic {s.topic!r} "
                    "that are no backfill plan (a service's group, or a plan that was reset); "
                    "pass --replace to move them to this plan, or use another --group"
                )
            if members:
                raise BackfillError(
                    f"group {s.group!r} has {members} active member(s); stop them first, or "
                    "pass --replace"
                )
        elif members:
            raise BackfillError(
                f"group {s.group!r} has {members} active member(s): Kafka accepts no offsets "
                "for a group while it has members; stop its workers, then plan again"
            )
        plan = bp.make(consumer, s, partitions, now or datetime.now(UTC), max_rate=s.max_rate)
        bp.commit_plan(consumer, s.topic, plan)
        replaced = existing.plan_id if existing is not None else None
        return PlanResult(plan, made=True, replaced=replaced)
    finally:
        consumer.close()


def find_plan(s: Settings) -> tuple[bp.Plan, list[TopicPartition]]:
    """The group's plan and its current commits, or a clear error when there is none."""
    if not s.topic or not s.group:
        raise BackfillError("needs --topic and --group")
    consumer = _consumer(s)
    try:
        partitions = bp.partitions_of(consumer, s.topic)
        committed = _commits(consumer, s.topic, partitions)
        return bp.found(s.group, s.topic, partitions, committed), committed
    finally:
        consumer.close()


@dataclass(slots=True)
class Status:
    """Where a planned backfill stands, from two reads of the group's commits."""

    plan: bp.Plan
    committed: dict[int, int]
    rate: float | None  # messages/s between the two reads
    members: int
    interval_s: float

    @property
    def done(self) -> int:
        return self.plan.messages - self.remaining

    @property
    def remaining(self) -> int:
        return sum(self._left(p) for p in self.plan.ends)

    def _left(self, partition: int) -> int:
        start, end = self.plan.starts[partition], self.plan.ends[partition]
        return max(0, end - max(start, self.committed.get(partition, start)))

    @property
    def eta_s(self) -> float | None:
        if self.remaining == 0:
            return 0.0
        return None if not self.rate else self.remaining / self.rate

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        total = p.messages
        return {
            "plan": p.plan_id,
            "from": p.start_from,
            "until": p.until or "end",
            "max_rate": p.max_rate,
            "partitions": [
                {
                    "partition": k,
                    "start": p.starts[k],
                    "end": p.ends[k],
                    "committed": self.committed.get(k, p.starts[k]),
                    "done": (p.ends[k] - p.starts[k]) - self._left(k),
                    "total": p.ends[k] - p.starts[k],
                }
                for k in sorted(p.ends)
            ],
            "done": self.done,
            "total": total,
            "remaining": self.remaining,
            "progress": 1.0 if total == 0 else round(self.done / total, 4),
            "rate": None if self.rate is None else round(self.rate, 2),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "complete": self.remaining == 0,
            "members": self.members,
            "interval_s": self.interval_s,
        }


def status(s: Settings, interval_s: float = 5.0) -> Status:
    """Read the group's commits twice, ``interval_s`` apart: done/total per partition, the rate
    between the reads and the time left at that rate."""
    plan, first = find_plan(s)
    started = time.monotonic()
    before = _offsets(first, plan)
    after = before
    if interval_s > 0 and bp.remaining(first, plan) > 0:
        time.sleep(interval_s)
        _, second = find_plan(s)
        after = _offsets(second, plan)
    elapsed = time.monotonic() - started
    rate = None
    if after is not before and elapsed > 0:
        moved = sum(max(0, after.get(p, 0) - before.get(p, 0)) for p in plan.ends)
        rate = moved / elapsed
    return Status(plan, after, rate, active_members(s), interval_s)


def _offsets(committed: list[TopicPartition], plan: bp.Plan) -> dict[int, int]:
    return {
        tp.partition: tp.offset
        for tp in committed
        if tp.offset >= 0 and (e := bp.decode_entry(tp.metadata)) and e.plan_id == plan.plan_id
    }


@dataclass
class PlanWatcher:
    """Watches the group's commits of *every* partition of the plan while a worker runs: keeps
    the remaining-messages gauge current and stops the worker once the whole plan is done (so a
    worker that holds no partition, or whose partitions are done, ends too)."""

    settings: Settings
    on_complete: Callable[[], None]
    set_remaining: Callable[[int], None] | None = None
    interval_s: float = 2.0
    #: No stop before this: a worker that holds partitions of a finished plan ends by itself
    #: (the engine's own end check) once it joined; the watcher is for workers that hold none.
    first_stop_s: float = 10.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _complete: bool = False

    def start(self) -> PlanWatcher:
        self._thread = threading.Thread(target=self._run, name="backfill-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def plan_complete(self) -> bool:
        """Whether the whole plan is done (read from the group's commits now)."""
        if not self._complete:
            consumer = _consumer(self.settings)
            try:
                self._complete = self._check(consumer)
            finally:
                consumer.close()
        return self._complete

    def _check(self, consumer: Any) -> bool:
        s = self.settings
        try:
            partitions = bp.partitions_of(consumer, s.topic or "")
            committed = _commits(consumer, s.topic or "", partitions)
            plan = bp.found(s.group or "", s.topic or "", partitions, committed)
        except (EngineFatalError, KafkaException):
            return False  # the engine reports a missing or lost plan itself
        if self.set_remaining is not None:
            self.set_remaining(bp.remaining(committed, plan))
        return bp.complete(committed, plan)

    def _run(self) -> None:
        consumer = _consumer(self.settings)
        earliest = time.monotonic() + self.first_stop_s
        try:
            while not self._stop.wait(self.interval_s):
                if self._check(consumer) and time.monotonic() >= earliest:
                    self._complete = True
                    self.on_complete()
                    return
        finally:
            consumer.close()

"""The plan of a bounded replay, kept in Kafka itself so that a restarted run resumes it.

``run --from SPEC --until-end`` (or ``--until TIME``) is a backfill: it reads each partition from
the offset ``--from`` names up to an end fixed once. The first run on a group makes the plan:
it resolves every partition's start and end, and commits the starts with the end and the plan's
id in the offset *metadata*. Every later commit re-attaches that metadata, so the group's commits
always say where the backfill ends. A run started again with the same arguments finds its plan in
the commits and resumes from them, never re-applying ``--from``.

A plan is identified by its specs (topic, group, ``--from``, the end), not by the offsets they
resolved to, so running the same command again is a no-op once it is done, even after retention
moved ``earliest``. Commits without this plan's id (another run's, an operator's reset, expired
offsets replaced by a new run) are a clear error, never a silent restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from confluent_kafka import TopicPartition

from consumer.engine.exceptions import EngineFatalError
from consumer.settings import Settings, StartPosition, parse_start

FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class PlanSpec:
    """What identifies a backfill: its topic, group, start and end specs."""

    topic: str
    group: str
    start_from: str
    until: str | None  # ISO-8601, or None for the end offsets at planning time

    @classmethod
    def of(cls, s: Settings) -> PlanSpec:
        until = s.until.astimezone(UTC).isoformat() if s.until is not None else None
        return cls(s.topic or "", s.group or "", s.start_from or "", until)

    @property
    def plan_id(self) -> str:
        canonical = orjson.dumps(
            {
                "topic": self.topic,
                "group": self.group,
                "from": self.start_from,
                "until": self.until,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Plan:
    """Per partition, where the backfill ends, and the metadata every commit carries."""

    plan_id: str
    ends: dict[int, int]
    starts: dict[int, int]
    #: The backfill's total rate (messages/s over all workers), or None for no limit.
    max_rate: float | None = None

    def rate_share(self, assigned: int) -> float | None:
        """This worker's share of ``max_rate`` when it holds ``assigned`` of the plan's
        partitions: N workers together never exceed the plan's total."""
        if self.max_rate is None or not self.ends:
            return None
        return self.max_rate * max(0, assigned) / len(self.ends)

    def metadata(self, partition: int) -> str | None:
        end = self.ends.get(partition)
        return None if end is None else encode(self.plan_id, end)

    @property
    def messages(self) -> int:
        return sum(max(0, self.ends[p] - self.starts.get(p, 0)) for p in self.ends)


def encode(plan_id: str, end: int) -> str:
    """The offset metadata of one partition of a plan."""
    return orjson.dumps({"f": FORMAT, "plan": plan_id, "end": end}).decode()


def decode(metadata: str | None) -> tuple[str, int] | None:
    """(plan id, end) from offset metadata, or None when it is not a plan's."""
    if not metadata:
        return None
    try:
        data = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("f") != FORMAT:
        return None
    plan_id, end = data.get("plan"), data.get("end")
    if isinstance(plan_id, str) and isinstance(end, int):
        return plan_id, end
    return None


def bounded(s: Settings) -> bool:
    """Whether a run with these settings ends by itself (an end bound, or a backfill worker)."""
    return s.until_end or s.until is not None or s.backfill_worker


def applies(s: Settings) -> bool:
    """Whether a run with these settings has a plan: a bounded replay (``--from`` with an end)
    or a worker of a planned backfill."""
    return s.backfill_worker or (bounded(s) and s.start_from is not None)


def prepare(consumer: Any, s: Settings, now: datetime | None = None) -> tuple[Plan, bool]:
    """The group's plan for this run: resumed from its commits, or made and committed now.

    Returns the plan and whether it was made by this call. Must run before ``subscribe`` (the
    plan is committed outside any group generation)."""
    spec = PlanSpec.of(s)
    partitions = _partitions(consumer, spec.topic)
    committed = consumer.committed([TopicPartition(spec.topic, p) for p in partitions], timeout=10)
    found = {tp.partition: (tp.offset, decode(tp.metadata)) for tp in committed if tp.offset >= 0}
    if found and not s.reset_offsets:
        return _resume(spec, partitions, found), False
    plan = _make(consumer, s, spec, partitions, now or datetime.now(UTC))
    offsets = [
        TopicPartition(spec.topic, p, plan.starts[p], metadata=encode(plan.plan_id, plan.ends[p]))
        for p in partitions
    ]
    result = consumer.commit(offsets=offsets, asynchronous=False)
    failed = [tp for tp in result or [] if tp.error is not None]
    if failed:
        raise EngineFatalError(f"could not commit the backfill plan: {failed[0].error}")
    return plan, True


def _partitions(consumer: Any, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise EngineFatalError(f"topic {topic!r} does not exist")
    return sorted(meta.partitions)


def _resume(
    spec: PlanSpec, partitions: list[int], found: dict[int, tuple[int, tuple[str, int] | None]]
) -> Plan:
    plan_id = spec.plan_id
    ends: dict[int, int] = {}
    starts: dict[int, int] = {}
    for partition in partitions:
        offset, meta = found.get(partition, (-1, None))
        if meta is None or meta[0] != plan_id:
            raise EngineFatalError(
                f"group {spec.group!r} has committed offsets that are not this run's plan "
                f"(partition {partition}: {'none' if offset < 0 else f'offset {offset}'}"
                f"{'' if meta is None else f', plan {meta[0]}'}); run the same command as the "
                "run that made it, pass --reset-offsets to start this one over from --from, "
                "or use another --group"
            )
        ends[partition], starts[partition] = meta[1], offset
    return Plan(plan_id, ends, starts)


def _make(consumer: Any, s: Settings, spec: PlanSpec, partitions: list[int], now: datetime) -> Plan:
    if s.until is not None and s.until > now:
        raise EngineFatalError(
            f"--until {s.until.isoformat()} is in the future: a backfill's end must be fixed "
            "when it starts (use an unbounded run to follow the topic)"
        )
    watermarks = {
        p: consumer.get_watermark_offsets(TopicPartition(spec.topic, p), timeout=10, cached=False)
        for p in partitions
    }
    starts = _resolve_starts(consumer, spec.topic, parse_start(spec.start_from), watermarks)
    ends = {p: high for p, (_, high) in watermarks.items()}
    if s.until is not None:
        ms = int(s.until.timestamp() * 1000) + 1
        found = consumer.offsets_for_times(
            [TopicPartition(spec.topic, p, ms) for p in partitions], timeout=10
        )
        ends.update({tp.partition: tp.offset for tp in found if tp.offset >= 0})
    starts = {p: min(starts[p], ends[p]) for p in partitions}
    return Plan(spec.plan_id, ends, starts)


def _resolve_starts(
    consumer: Any, topic: str, start: StartPosition, watermarks: dict[int, tuple[int, int]]
) -> dict[int, int]:
    """Per partition, the offset ``--from`` names."""
    if start == "earliest":
        return {p: low for p, (low, _) in watermarks.items()}
    if start == "latest":
        return {p: high for p, (_, high) in watermarks.items()}
    if isinstance(start, dict):
        return {p: max(low, start.get(p, low)) for p, (low, _) in watermarks.items()}
    assert isinstance(start, datetime)
    ms = int(start.timestamp() * 1000)
    found = consumer.offsets_for_times(
        [TopicPartition(topic, p, ms) for p in watermarks], timeout=10
    )
    by_part = {tp.partition: tp.offset for tp in found}
    return {
        p: by_part[p] if by_part.get(p, -1) >= 0 else high for p, (_, high) in watermarks.items()
    }

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.engine.exceptions import EngineFatalError
from consumer.settings import Settings, StartPosition, parse_start

FORMAT: Final = 1
_T = TypeVar("_T")


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
    """Per partition, where the backfill starts and ends, and the metadata every commit carries."""

    plan_id: str
    ends: dict[int, int]
    starts: dict[int, int]
    #: The backfill's total rate (messages/s over all workers), or None for no limit.
    max_rate: float | None = None
    #: The specs it was made from (None when read back from commits of an older format).
    start_from: str | None = None
    until: str | None = None

    def rate_share(self, assigned: int) -> float | None:
        """This worker's share of ``max_rate`` when it holds ``assigned`` of the plan's
        partitions: N workers together never exceed the plan's total."""
        if self.max_rate is None or not self.ends:
            return None
        return self.max_rate * max(0, assigned) / len(self.ends)

    def metadata(self, partition: int) -> str | None:
        end = self.ends.get(partition)
        if end is None:
            return None
        return encode(
            self.plan_id,
            end,
            start=self.starts.get(partition),
            max_rate=self.max_rate,
            start_from=self.start_from,
            until=self.until,
        )

    @property
    def messages(self) -> int:
        return sum(max(0, self.ends[p] - self.starts.get(p, 0)) for p in self.ends)


#: Offset metadata stays well under the broker's ``offset.metadata.max.bytes`` (4096 by default):
#: specs that would make it longer are left out (the plan id still names them).
METADATA_MAX_BYTES: Final = 1024


def encode(
    plan_id: str,
    end: int,
    *,
    start: int | None = None,
    max_rate: float | None = None,
    start_from: str | None = None,
    until: str | None = None,
) -> str:
    """The offset metadata of one partition of a plan: its id and end, and (when given) the
    partition's start, the plan's max rate and its specs."""
    data: dict[str, Any] = {"f": FORMAT, "plan": plan_id, "end": end}
    if start is not None:
        data["start"] = start
    if max_rate is not None:
        data["rate"] = max_rate
    short = orjson.dumps(data)
    if start_from is not None:
        data["from"] = start_from
    if until is not None:
        data["until"] = until
    text = orjson.dumps(data)
    return (text if len(text) <= METADATA_MAX_BYTES else short).decode()


def decode(metadata: str | None) -> tuple[str, int] | None:
    """(plan id, end) from offset metadata, or None when it is not a plan's."""
    entry = decode_entry(metadata)
    return None if entry is None else (entry.plan_id, entry.end)


@dataclass(frozen=True, slots=True)
class Entry:
    """What one partition's commit metadata says about its plan."""

    plan_id: str
    end: int
    start: int | None = None
    max_rate: float | None = None
    start_from: str | None = None
    until: str | None = None


def decode_entry(metadata: str | None) -> Entry | None:
    """The plan entry in offset metadata, or None when it is not a plan's."""
    if not metadata:
        return None
    try:
        data = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("f") != FORMAT:
        return None
    plan_id, end = data.get("plan"), data.get("end")
    if not isinstance(plan_id, str) or not isinstance(end, int) or isinstance(end, bool):
        return None
    start, rate = data.get("start"), data.get("rate")
    start_from, until = data.get("from"), data.get("until")
    return Entry(
        plan_id,
        end,
        start if isinstance(start, int) and not isinstance(start, bool) else None,
        float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None,
        start_from if isinstance(start_from, str) else None,
        until if isinstance(until, str) else None,
    )


def _committed_by_partition(committed: list[TopicPartition]) -> dict[int, TopicPartition]:
    return {tp.partition: tp for tp in committed}


def remaining(committed: list[TopicPartition], plan: Plan) -> int:
    """Messages of ``plan`` between the group's commits and the plan's ends, over all its
    partitions (a partition without a commit of this plan counts from its start)."""
    by_part = _committed_by_partition(committed)
    left = 0
    for partition, end in plan.ends.items():
        start = plan.starts.get(partition, 0)
        tp = by_part.get(partition)
        entry = decode_entry(tp.metadata) if tp is not None else None
        at = tp.offset if tp is not None and tp.offset >= 0 and _ours(entry, plan) else start
        left += max(0, end - max(at, start))
    return left


def complete(committed: list[TopicPartition], plan: Plan) -> bool:
    """Whether the group's commits (``consumer.committed`` of *every* partition of the plan,
    not only a worker's own) reach the plan's ends: the whole backfill is done."""
    by_part = _committed_by_partition(committed)
    for partition, end in plan.ends.items():
        tp = by_part.get(partition)
        if tp is None or tp.offset < end or not _ours(decode_entry(tp.metadata), plan):
            return False
    return True


def _ours(entry: Entry | None, plan: Plan) -> bool:
    return entry is not None and entry.plan_id == plan.plan_id


def bounded(s: Settings) -> bool:
    """Whether a run with these settings ends by itself (an end bound, or a backfill worker)."""
    return s.until_end or s.until is not None or s.backfill_worker


def applies(s: Settings) -> bool:
    """Whether a run with these settings has a plan: a bounded replay (``--from`` with an end)
    or a worker of a planned backfill."""
    return s.backfill_worker or (bounded(s) and s.start_from is not None)


def prepare(consumer: Any, s: Settings, now: datetime | None = None) -> tuple[Plan, bool]:
    """The group's plan for this run: resumed from its commits, or made and committed now.

    A worker of a planned backfill (``backfill run``) only ever finds the plan ``backfill plan``
    made; it never makes one. Returns the plan and whether it was made by this call. Must run
    before ``subscribe`` (the plan is committed outside any group generation)."""
    topic = s.topic or ""
    partitions = partitions_of(consumer, topic)
    committed = committed_offsets(consumer, topic, partitions)
    if s.backfill_worker:
        return found(s.group or "", topic, partitions, committed), False
    spec = PlanSpec.of(s)
    existing = {tp.partition: tp for tp in committed if tp.offset >= 0}
    if existing and not s.reset_offsets:
        return _resume(spec, partitions, existing), False
    plan = make(consumer, s, partitions, now or datetime.now(UTC), max_rate=None)
    commit_plan(consumer, topic, plan)
    return plan, True


def commit_plan(consumer: Any, topic: str, plan: Plan) -> None:
    """Commit every partition's start with the plan's metadata (the plan is then in Kafka)."""
    offsets = [
        TopicPartition(topic, p, plan.starts[p], metadata=plan.metadata(p)) for p in plan.ends
    ]
    result = _retrying(lambda: consumer.commit(offsets=offsets, asynchronous=False))
    failed = [tp for tp in result or [] if tp.error is not None]
    if failed:
        raise EngineFatalError(f"could not commit the backfill plan: {failed[0].error}")


#: Errors of a group coordinator that is moving or starting: asked again, not reported.
_TRANSIENT: Final = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,  # noqa: SLF001 - librdkafka: a local time-out
        KafkaError._TRANSPORT,
    }
)


def _retrying(call: Callable[[], _T], attempts: int = 20) -> _T:
    """``call()``, asked again (with backoff, about 30 s in all) while the coordinator moves."""
    for attempt in range(attempts):
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code not in _TRANSIENT or attempt == attempts - 1:
                raise EngineFatalError(f"Kafka: {err if err is not None else exc}") from exc
            time.sleep(min(2.0, 0.1 * 2**attempt))
    raise AssertionError("unreachable")


def committed_offsets(consumer: Any, topic: str, partitions: list[int]) -> list[TopicPartition]:
    """The group's commits (with their metadata) of ``partitions``."""
    wanted = [TopicPartition(topic, p) for p in partitions]
    return list(_retrying(lambda: consumer.committed(wanted, timeout=10)))


def partitions_of(consumer: Any, topic: str) -> list[int]:
    """The topic's partitions, or a clear error when it does not exist."""
    meta = _retrying(lambda: consumer.list_topics(topic, timeout=10)).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise EngineFatalError(f"topic {topic!r} does not exist")
    return sorted(meta.partitions)


def from_commits(partitions: list[int], committed: list[TopicPartition]) -> Plan | None:
    """The plan all of ``partitions``' commits name, or None when they do not all name one."""
    by_part = _committed_by_partition(committed)
    entries: dict[int, tuple[int, Entry]] = {}
    for partition in partitions:
        tp = by_part.get(partition)
        entry = decode_entry(tp.metadata) if tp is not None and tp.offset >= 0 else None
        if tp is None or entry is None:
            return None
        entries[partition] = (tp.offset, entry)
    ids = {entry.plan_id for _, entry in entries.values()}
    if len(ids) != 1:
        return None
    first = next(iter(entries.values()))[1]
    return Plan(
        first.plan_id,
        ends={p: entry.end for p, (_, entry) in entries.items()},
        starts={
            p: entry.start if entry.start is not None else min(offset, entry.end)
            for p, (offset, entry) in entries.items()
        },
        max_rate=first.max_rate,
        start_from=first.start_from,
        until=first.until,
    )


def found(group: str, topic: str, partitions: list[int], committed: list[TopicPartition]) -> Plan:
    """The planned backfill in the group's commits, or a clear error saying what to do: a worker
    never starts a backfill over by itself."""
    plan = from_commits(partitions, committed)
    if plan is not None:
        return plan
    with_offsets = [tp for tp in committed if tp.offset >= 0]
    if not with_offsets:
        raise EngineFatalError(
            f"group {group!r} has no backfill plan on topic {topic!r} (no committed offsets): "
            f"run 'backfill plan --topic {topic} --group {group} --from ...' first; if it was "
            "planned, its offsets expired (the broker's offsets.retention.minutes) or were "
            "deleted: plan it again (rows already written stay in Milvus)"
        )
    lost = sorted(
        p
        for p in partitions
        if not any(tp.partition == p and decode_entry(tp.metadata) for tp in with_offsets)
    )
    ids = sorted({e.plan_id for tp in with_offsets if (e := decode_entry(tp.metadata))})
    detail = f"partitions {lost} have no plan in their commits" if lost else f"several plans {ids}"
    raise EngineFatalError(
        f"the backfill plan of group {group!r} on topic {topic!r} is lost: {detail} "
        "(offsets reset by an operator, expired, or committed by another consumer, or "
        "partitions added after planning); nothing was restarted: plan it again with "
        "'backfill plan ... --replace' once no worker runs"
    )


def _resume(spec: PlanSpec, partitions: list[int], existing: dict[int, TopicPartition]) -> Plan:
    plan = from_commits(partitions, list(existing.values()))
    if plan is not None and plan.plan_id == spec.plan_id:
        return plan
    for partition in partitions:
        tp = existing.get(partition)
        entry = decode_entry(tp.metadata) if tp is not None else None
        if entry is None or entry.plan_id != spec.plan_id:
            offset = "none" if tp is None else f"offset {tp.offset}"
            raise EngineFatalError(
                f"group {spec.group!r} has committed offsets that are not this run's plan "
                f"(partition {partition}: {offset}"
                f"{'' if entry is None else f', plan {entry.plan_id}'}); run the same command "
                "as the run that made it, pass --reset-offsets to start this one over from "
                "--from, or use another --group"
            )
    raise EngineFatalError(f"group {spec.group!r}: the plan's commits disagree")


def make(
    consumer: Any, s: Settings, partitions: list[int], now: datetime, max_rate: float | None
) -> Plan:
    """Resolve the specs of ``s`` to a start and an end per partition (nothing is committed)."""
    spec = PlanSpec.of(s)
    if s.until is not None and s.until > now:
        raise EngineFatalError(
            f"--until {s.until.isoformat()} is in the future: a backfill's end must be fixed "
            "when it starts (use an unbounded run to follow the topic)"
        )
    watermarks, ends = resolve_ends(consumer, spec.topic, partitions, s.until)
    starts = _resolve_starts(consumer, spec.topic, parse_start(spec.start_from), watermarks)
    starts = {p: min(starts[p], ends[p]) for p in partitions}
    return Plan(spec.plan_id, ends, starts, max_rate, spec.start_from, spec.until)


def resolve_ends(
    consumer: Any, topic: str, partitions: list[int], until: datetime | None
) -> tuple[dict[int, tuple[int, int]], dict[int, int]]:
    """Each partition's watermarks (low, high) now, and its end: the high watermark, or the
    first offset after ``until`` (the high watermark when no message is that late)."""
    watermarks = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        for p in partitions
    }
    ends = {p: high for p, (_, high) in watermarks.items()}
    if until is not None:
        ms = int(until.timestamp() * 1000) + 1
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, ms) for p in partitions], timeout=10
        )
        ends.update({tp.partition: tp.offset for tp in found if tp.offset >= 0})
    return watermarks, ends


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

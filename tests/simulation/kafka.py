"""A Kafka cluster in memory, behind the confluent_kafka API the engine uses.

What it models, because the engine's promises depend on it:
- partitions whose offsets have gaps: compaction removes records, transactions leave a control
  record (commit or abort marker), records of aborted transactions are never handed out under
  ``read_committed``; the consumer's position still moves past them;
- CreateTime and LogAppendTime topics (``timestamp()`` gives the type and the milliseconds);
- a group coordinator with cooperative-sticky semantics: on a membership change each member
  first gives up (``on_revoke``) what it must, from inside its own ``consume()``, and only then
  are those partitions assigned to their new owner (``on_assign``, also from ``consume()``); an
  evicted member gets ``on_lost``; a member that died leaves after the session timeout;
- commits with metadata, failing commits and slow ones, EOF events (``enable.partition.eof``,
  once per arrival at the end), pause/resume, position/seek, watermarks, ``offsets_for_times``,
  ``committed``, ``list_topics``;
- a producer whose delivery reports come on ``poll()``, with retriable and non-retriable errors.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from tests.simulation.clock import VirtualClock

Key = tuple[str, int]


@dataclass(slots=True)
class Record:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    ts: int
    control: bool = False  # a transaction marker: never handed out
    aborted: bool = False  # part of an aborted transaction: never handed out (read_committed)


class FakeMessage:
    """What ``consume()`` returns: a record, or an event (``error()`` set)."""

    __slots__ = ("_err", "_headers", "_key", "_offset", "_part", "_topic", "_ts", "_value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: tuple[int, int] = (0, -1),
        error: KafkaError | None = None,
    ) -> None:
        self._topic, self._part, self._offset = topic, partition, offset
        self._key, self._value, self._headers = key, value, headers
        self._ts, self._err = timestamp, error

    def error(self) -> KafkaError | None:
        return self._err

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._part

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None if self._headers is None else list(self._headers)

    def timestamp(self) -> tuple[int, int]:
        return self._ts

    def __len__(self) -> int:
        return len(self._value or b"")

    def __repr__(self) -> str:
        return f"FakeMessage({self._topic}[{self._part}]@{self._offset})"


@dataclass
class Partition:
    records: list[Record] = field(default_factory=list)
    high: int = 0  # next offset to be written (the high watermark)
    low: int = 0  # first offset still in the log

    def append(self, rec: Record) -> None:
        self.records.append(rec)
        self.high = rec.offset + 1

    def next_visible(self, position: int) -> tuple[Record | None, int]:
        """The first record at or after ``position`` that a read_committed consumer is handed,
        and the position after the records it skips (control, aborted, compacted away)."""
        for rec in self.records:
            if rec.offset < position:
                continue
            if rec.control or rec.aborted:
                position = rec.offset + 1
                continue
            return rec, rec.offset
        return None, max(position, self.high)


@dataclass
class Topic:
    name: str
    partitions: list[Partition]
    timestamp_type: int = TIMESTAMP_CREATE_TIME
    max_message_bytes: int = 1_048_588
    retention_ms: int = 604_800_000


@dataclass
class Member:
    consumer: FakeConsumer
    owned: set[Key] = field(default_factory=set)
    target: set[Key] = field(default_factory=set)
    died_at: float | None = None  # the process was killed: it leaves at the session timeout
    evicted: bool = False  # the coordinator dropped it: its next consume() calls on_lost


class Group:
    """One consumer group: members, the cooperative-sticky assignment, committed offsets."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.members: dict[str, Member] = {}
        self.committed: dict[Key, tuple[int, str | None]] = {}
        self.generation = 0
        self.rebalances = 0
        self.most_live = 0  # the most live members the group had at once

    # --- membership ----------------------------------------------------------------------
    def join(self, consumer: FakeConsumer) -> None:
        self.members[consumer.member_id] = Member(consumer)
        live = sum(1 for m in self.members.values() if m.died_at is None)
        self.most_live = max(self.most_live, live)
        self._rebalance()

    def leave(self, member_id: str) -> None:
        if self.members.pop(member_id, None) is not None:
            self._rebalance()

    def died(self, member_id: str) -> None:
        member = self.members.get(member_id)
        if member is not None and member.died_at is None:
            member.died_at = self.cluster.clock.monotonic()

    def evict(self, member_id: str) -> None:
        """The session expired (e.g. a long pause): the member loses its partitions."""
        member = self.members.get(member_id)
        if member is not None and member.died_at is None:
            member.evicted = True
            member.target = set()
            self._rebalance()

    def expire(self, session_timeout_s: float) -> None:
        now = self.cluster.clock.monotonic()
        gone = [
            mid
            for mid, m in self.members.items()
            if m.died_at is not None and now - m.died_at >= session_timeout_s
        ]
        for mid in gone:
            del self.members[mid]
            self.cluster.trace(f"group {self.name}: {mid} left (session timeout)")
        if gone:
            self._rebalance()

    def owner(self, key: Key) -> str | None:
        for mid, m in self.members.items():
            if key in m.owned:
                return mid
        return None

    def _rebalance(self) -> None:
        """Sticky, balanced targets; cooperative: nothing moves until its owner gives it up."""
        self.generation += 1
        self.rebalances += 1
        keys = sorted(
            (t, p)
            for t in {t for m in self.members.values() for t in m.consumer.subscription}
            for p in range(len(self.cluster.topics[t].partitions))
        )
        live = sorted(mid for mid, m in self.members.items() if not m.evicted)
        if not live:
            for m in self.members.values():
                m.target = set()
            return
        base, extra = divmod(len(keys), len(live))
        quota = {mid: base + (1 if i < extra else 0) for i, mid in enumerate(live)}
        taken: set[Key] = set()
        targets: dict[str, set[Key]] = {mid: set() for mid in live}
        for mid in live:
            keep = sorted(self.members[mid].owned & set(keys))[: quota[mid]]
            targets[mid] = set(keep)
            taken |= set(keep)
        free = [k for k in keys if k not in taken]
        for mid in live:
            while len(targets[mid]) < quota[mid] and free:
                targets[mid].add(free.pop(0))
        for mid, m in self.members.items():
            m.target = targets.get(mid, set())
        self.cluster.trace(
            f"group {self.name}: rebalance {self.generation} "
            + " ".join(f"{mid}={sorted(p for _, p in targets[mid])}" for mid in live)
        )

    def assignable(self, member_id: str) -> list[Key]:
        member = self.members[member_id]
        return sorted(
            k
            for k in member.target - member.owned
            if all(k not in m.owned for mid, m in self.members.items() if mid != member_id)
        )


class Cluster:
    """The brokers: topics, groups, faults."""

    def __init__(
        self,
        clock: VirtualClock,
        rng: random.Random,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.topics: dict[str, Topic] = {}
        self.groups: dict[str, Group] = {}
        self._trace = trace
        self._members = 0
        # faults
        self.commit_fail_rate = 0.0
        self.commit_slow_s = 0.0
        self.commit_slow_rate = 0.0
        self.down_until = -1.0  # the brokers are unreachable until then
        self.commit_failures = 0
        self.revocations = 0  # partitions taken from a live member (revoke or lost), not closes
        #: per (group, partition) the lowest position a member of the group started reading at
        self.floors: dict[tuple[str, Key], int] = {}

    def trace(self, text: str) -> None:
        if self._trace is not None:
            self._trace(text)

    # --- topics and records -----------------------------------------------------------
    def create_topic(
        self,
        name: str,
        partitions: int,
        *,
        timestamp_type: int = TIMESTAMP_CREATE_TIME,
        max_message_bytes: int = 1_048_588,
    ) -> Topic:
        topic = Topic(name, [Partition() for _ in range(partitions)], timestamp_type)
        topic.max_message_bytes = max_message_bytes
        self.topics[name] = topic
        return topic

    def _stamp(self, topic: Topic, timestamp: int | None) -> int:
        if topic.timestamp_type == TIMESTAMP_LOG_APPEND_TIME or timestamp is None:
            return self.clock.time_ms()
        return timestamp

    def produce(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int | None = None,
    ) -> Record:
        t = self.topics[topic]
        part = t.partitions[partition]
        rec = Record(part.high, key, value, headers, self._stamp(t, timestamp))
        part.append(rec)
        return rec

    def produce_transaction(
        self,
        topic: str,
        partition: int,
        items: list[tuple[bytes | None, bytes | None, int | None]],
        *,
        commit: bool,
    ) -> list[Record]:
        """Records of one transaction, then its marker; an aborted one is never handed out."""
        t = self.topics[topic]
        part = t.partitions[partition]
        out = []
        for key, value, ts in items:
            rec = Record(part.high, key, value, None, self._stamp(t, ts), aborted=not commit)
            part.append(rec)
            out.append(rec)
        part.append(Record(part.high, None, None, None, self.clock.time_ms(), control=True))
        return out

    def compact(self, topic: str, partition: int, offsets: set[int]) -> None:
        """Remove records (compaction): their offsets become gaps."""
        part = self.topics[topic].partitions[partition]
        part.records = [r for r in part.records if r.offset not in offsets]

    def records(self, topic: str, partition: int) -> list[Record]:
        return list(self.topics[topic].partitions[partition].records)

    # --- groups --------------------------------------------------------------------------
    def group(self, name: str) -> Group:
        if name not in self.groups:
            self.groups[name] = Group(self, name)
        return self.groups[name]

    def new_member_id(self) -> str:
        self._members += 1
        return f"c{self._members}"

    def down(self) -> bool:
        return self.clock.monotonic() < self.down_until

    def committed(self, group: str, key: Key) -> int | None:
        entry = self.group(group).committed.get(key)
        return None if entry is None else entry[0]


def _error(code: int, text: str, *, retriable: bool = False) -> KafkaError:
    return KafkaError(code, text, retriable=retriable)


class FakeConsumer:
    """``confluent_kafka.Consumer`` over a :class:`Cluster` (the calls the engine makes)."""

    def __init__(self, cluster: Cluster, conf: dict[str, Any]) -> None:
        self.cluster = cluster
        self.conf = conf
        self.group_name = str(conf["group.id"])
        self.member_id = cluster.new_member_id()
        self.eof_enabled = bool(conf.get("enable.partition.eof", False))
        self.reset = str(conf.get("auto.offset.reset", "earliest"))
        self.session_timeout_s = float(conf.get("session.timeout.ms", 45_000)) / 1000
        self.subscription: list[str] = []
        self.assigned: set[Key] = set()
        self.positions: dict[Key, int] = {}
        self.paused: set[Key] = set()
        self.eof_sent: dict[Key, int] = {}
        self.callbacks: dict[str, Callable[..., None] | None] = {}
        self.closed = False
        self.dead = False
        self._in_callback = False
        self._assign_called = False
        self._rr = 0

    @property
    def group(self) -> Group:
        return self.cluster.group(self.group_name)

    # --- subscription and rebalances ---------------------------------------------------
    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[..., None] | None = None,
        on_revoke: Callable[..., None] | None = None,
        on_lost: Callable[..., None] | None = None,
    ) -> None:
        self.subscription = list(topics)
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.group.join(self)

    def _member(self) -> Member | None:
        return self.group.members.get(self.member_id)

    def _serve_group(self) -> None:
        """What librdkafka does inside consume(): expire sessions, run the rebalance protocol."""
        if self._in_callback or self.cluster.down():  # the coordinator is a broker too
            return
        self.group.expire(self.session_timeout_s)
        member = self._member()
        if member is None:  # left while dead, or never joined
            return
        if member.evicted:
            lost = sorted(member.owned)
            if lost:
                self.cluster.revocations += 1
                self.cluster.trace(f"{self.member_id}: on_lost {_parts(lost)}")
                self._callback("lost", lost)
            self._drop(lost)
            member.owned.clear()
            member.evicted = False
            self.group._rebalance()
            return
        revoke = sorted(member.owned - member.target)
        if revoke:
            self.cluster.revocations += 1
            self.cluster.trace(f"{self.member_id}: on_revoke {_parts(revoke)}")
            self._callback("revoke", revoke)
            self._drop(revoke)
            member.owned -= set(revoke)
        give = self.group.assignable(self.member_id)
        if give:
            self.cluster.trace(f"{self.member_id}: on_assign {_parts(give)}")
            member.owned |= set(give)
            tps = [TopicPartition(t, p, OFFSET_INVALID) for t, p in give]
            self._assign_called = False
            self._callback("assign", tps)
            if not self._assign_called:
                self.incremental_assign(tps)

    def _callback(self, kind: str, arg: list[Any]) -> None:
        fn = self.callbacks.get(kind)
        if fn is None:
            return
        tps = arg if kind == "assign" else [TopicPartition(t, p) for t, p in arg]
        self._in_callback = True
        try:
            fn(self, tps)
        finally:
            self._in_callback = False

    def _drop(self, keys: list[Key]) -> None:
        for key in keys:
            self.assigned.discard(key)
            self.positions.pop(key, None)
            self.paused.discard(key)
            self.eof_sent.pop(key, None)

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self._assign_called = True
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.assigned.add(key)
            self.positions[key] = pos = self._start(key, tp.offset)
            floor = (self.group_name, key)
            self.cluster.floors[floor] = min(pos, self.cluster.floors.get(floor, pos))

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self._drop([(tp.topic, tp.partition) for tp in partitions])

    def _start(self, key: Key, offset: int) -> int:
        part = self.cluster.topics[key[0]].partitions[key[1]]
        if offset == OFFSET_BEGINNING:
            return part.low
        if offset == OFFSET_END:
            return part.high
        if offset >= 0:
            return offset
        committed = self.cluster.committed(self.group_name, key)
        if committed is not None:
            return committed
        return part.low if self.reset == "earliest" else part.high

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.assigned)]

    # --- consuming ---------------------------------------------------------------------
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self._check_open()
        self._serve_group()
        out = self._fetch(num_messages)
        if not out and timeout and timeout > 0:
            self.cluster.clock.sleep(timeout)  # the main thread waits: other work moves on
            self._serve_group()
            out = self._fetch(num_messages)
        return out

    def poll(self, timeout: float = -1) -> FakeMessage | None:
        got = self.consume(1, timeout)
        return got[0] if got else None

    def _fetch(self, limit: int) -> list[FakeMessage]:
        if self.cluster.down():
            return []
        out: list[FakeMessage] = []
        keys = sorted(k for k in self.assigned if k not in self.paused)
        if not keys:
            return out
        start = self._rr % len(keys)
        self._rr += 1
        order = keys[start:] + keys[:start]
        progress = True
        while len(out) < limit and progress:
            progress = False
            for key in order:
                if len(out) >= limit:
                    break
                msg = self._next(key)
                if msg is not None:
                    out.append(msg)
                    progress = True
        return out

    def _next(self, key: Key) -> FakeMessage | None:
        topic = self.cluster.topics[key[0]]
        part = topic.partitions[key[1]]
        pos = self.positions[key]
        rec, pos = part.next_visible(pos)
        self.positions[key] = pos
        if rec is None:
            if self.eof_enabled and self.eof_sent.get(key) != pos:
                self.eof_sent[key] = pos
                return FakeMessage(
                    key[0], key[1], pos, error=_error(KafkaError._PARTITION_EOF, "EOF")
                )
            return None
        self.positions[key] = rec.offset + 1
        return FakeMessage(
            key[0],
            key[1],
            rec.offset,
            key=rec.key,
            value=rec.value,
            headers=rec.headers,
            timestamp=(topic.timestamp_type, rec.ts),
        )

    def pause(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if (tp.topic, tp.partition) in self.assigned:
                self.paused.add((tp.topic, tp.partition))

    def resume(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.paused.discard((tp.topic, tp.partition))

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            out.append(TopicPartition(tp.topic, tp.partition, self.positions.get(key, -1001)))
        return out

    def seek(self, partition: TopicPartition) -> None:
        key = (partition.topic, partition.partition)
        if key not in self.assigned:
            raise KafkaException(_error(KafkaError._STATE, "seek of an unassigned partition"))
        self.positions[key] = self._start(key, partition.offset)
        self.eof_sent.pop(key, None)

    # --- offsets and metadata ----------------------------------------------------------
    def commit(
        self,
        message: Any = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = True,
    ) -> list[TopicPartition] | None:
        self._check_open()
        cluster = self.cluster
        if cluster.down():
            cluster.commit_failures += 1
            raise KafkaException(_error(KafkaError._TRANSPORT, "brokers down", retriable=True))
        if cluster.commit_slow_rate and cluster.rng.random() < cluster.commit_slow_rate:
            cluster.clock.advance(cluster.commit_slow_s)  # the main thread waits for it
        if cluster.commit_fail_rate and cluster.rng.random() < cluster.commit_fail_rate:
            cluster.commit_failures += 1
            raise KafkaException(
                _error(KafkaError.REQUEST_TIMED_OUT, "commit timed out", retriable=True)
            )
        member = self._member()
        standalone = not self.subscription and not self.group.members  # generation -1
        if not standalone and (member is None or member.evicted):
            cluster.commit_failures += 1
            raise KafkaException(_error(KafkaError.UNKNOWN_MEMBER_ID, "not a member"))
        out = []
        for tp in offsets or []:
            key = (tp.topic, tp.partition)
            self.group.committed[key] = (tp.offset, tp.metadata)
            cluster.trace(f"{self.member_id}: commit {tp.topic}[{tp.partition}]={tp.offset}")
            out.append(_tp(tp.topic, tp.partition, tp.offset, tp.metadata))
        return out

    def committed(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        self._check_open()
        if self.cluster.down():
            raise KafkaException(_error(KafkaError._TRANSPORT, "brokers down", retriable=True))
        out = []
        for tp in partitions:
            entry = self.group.committed.get((tp.topic, tp.partition))
            offset, meta = entry if entry is not None else (OFFSET_INVALID, None)
            out.append(_tp(tp.topic, tp.partition, offset, meta))
        return out

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        part = self.cluster.topics[partition.topic].partitions[partition.partition]
        return part.low, part.high

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        """Per partition the earliest offset whose timestamp is at or after the one asked
        (``tp.offset`` holds the milliseconds); -1 when there is none."""
        out = []
        for tp in partitions:
            part = self.cluster.topics[tp.topic].partitions[tp.partition]
            found = next(
                (r.offset for r in part.records if not r.control and r.ts >= tp.offset), -1
            )
            out.append(TopicPartition(tp.topic, tp.partition, found))
        return out

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> SimpleNamespace:
        names = [topic] if topic is not None else list(self.cluster.topics)
        topics = {}
        for name in names:
            t = self.cluster.topics.get(name)
            if t is None:
                err = _error(KafkaError.UNKNOWN_TOPIC_OR_PART, "unknown topic")
                topics[name] = SimpleNamespace(topic=name, partitions={}, error=err)
                continue
            parts = {i: SimpleNamespace(id=i, error=None) for i in range(len(t.partitions))}
            topics[name] = SimpleNamespace(topic=name, partitions=parts, error=None)
        return SimpleNamespace(topics=topics)

    # --- ending ------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the group: the owned partitions are revoked (the callback runs here)."""
        if self.closed:
            return
        member = self._member()
        if member is not None and member.owned and not self.dead:
            revoke = sorted(member.owned)
            self.cluster.trace(f"{self.member_id}: on_revoke {_parts(revoke)} (close)")
            self._callback("revoke", revoke)
            self._drop(revoke)
            member.owned.clear()
        self.closed = True
        self.group.leave(self.member_id)

    def kill(self) -> None:
        """The process died: no callback, no leave; the group notices at the session timeout."""
        self.dead = True
        self.closed = True
        self.group.died(self.member_id)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("Consumer closed")


def _tp(topic: str, partition: int, offset: int, metadata: str | None) -> TopicPartition:
    if metadata is None:
        return TopicPartition(topic, partition, offset)
    return TopicPartition(topic, partition, offset, metadata=metadata)


def _parts(keys: list[Key]) -> list[int]:
    return [p for _, p in keys]


@dataclass
class _Pending:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    timestamp: int | None
    on_delivery: Callable[..., None] | None
    due: float


class FakeProducer:
    """The dead-letter producer: ``produce`` queues, ``poll`` delivers the reports that are due.

    ``refuse`` decides per attempt: None (delivered), or a KafkaError (retriable or not). A
    record over the topic's ``max.message.bytes`` is refused as MSG_SIZE_TOO_LARGE."""

    def __init__(
        self,
        cluster: Cluster,
        conf: dict[str, Any] | None = None,
        *,
        latency: Callable[[], float] | None = None,
        refuse: Callable[[str, bytes | None], KafkaError | None] | None = None,
        queue_max: int = 100_000,
    ) -> None:
        self.cluster = cluster
        self.conf = conf or {}
        self.latency = latency or (lambda: 0.0)
        self.refuse = refuse or (lambda topic, value: None)
        self.queue_max = queue_max
        self.pending: list[_Pending] = []
        self.delivered = 0
        self.failed = 0
        self.dead = False

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int | None = None,
        on_delivery: Callable[..., None] | None = None,
        partition: int = 0,
    ) -> None:
        if len(self.pending) >= self.queue_max:
            raise BufferError("Local: Queue full")
        due = self.cluster.clock.monotonic() + self.latency()
        self.pending.append(_Pending(topic, key, value, headers, timestamp, on_delivery, due))

    def poll(self, timeout: float = 0) -> int:
        if timeout and timeout > 0 and not self._due():
            self.cluster.clock.sleep(timeout)
        return self._deliver(self._due())

    def flush(self, timeout: float = -1) -> int:
        if self.pending:
            self.cluster.clock.advance_to(max(p.due for p in self.pending))
        self._deliver(self._due())
        return len(self.pending)

    def __len__(self) -> int:
        return len(self.pending)

    def _due(self) -> list[_Pending]:
        now = self.cluster.clock.monotonic()
        return [p for p in self.pending if p.due <= now]

    def _deliver(self, due: list[_Pending]) -> int:
        for item in due:
            self.pending.remove(item)
            if self.dead:
                continue
            topic = self.cluster.topics.get(item.topic)
            err: KafkaError | None
            if topic is None:
                err = _error(KafkaError.UNKNOWN_TOPIC_OR_PART, "unknown topic")
            elif len(item.value or b"") > topic.max_message_bytes:
                err = _error(KafkaError.MSG_SIZE_TOO_LARGE, "message too large")
            elif self.cluster.down():
                err = _error(KafkaError._MSG_TIMED_OUT, "brokers down", retriable=True)
            else:
                err = self.refuse(item.topic, item.value)
            if err is None:
                assert topic is not None
                rec = self.cluster.produce(
                    item.topic,
                    0,
                    item.key,
                    item.value,
                    headers=item.headers,
                    timestamp=item.timestamp,
                )
                self.delivered += 1
                msg = FakeMessage(item.topic, 0, rec.offset, key=item.key, value=item.value)
            else:
                self.failed += 1
                msg = FakeMessage(item.topic, -1, -1001, key=item.key, value=item.value)
            if item.on_delivery is not None:
                item.on_delivery(err, msg)
        return len(due)

    def kill(self) -> None:
        """The process died: queued records are never delivered, no report comes."""
        self.dead = True
        self.pending.clear()

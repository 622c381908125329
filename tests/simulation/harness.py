"""Seeded scenarios: a world of fakes, consumer processes running the real engine, faults.

One seed fixes everything: the topic (partitions, timestamp type, transactions, compaction), the
messages (repeated ids, deletes, poison, skewed clocks, redriven old versions), the group (one to
three consumers, joining and leaving), the faults (crashes at any step or at the engine's crash
points, restarts, SIGTERM, a second SIGINT, lost partitions, outages and slowness of Milvus,
Triton and the brokers, failing and slow commits, refused dead letters), the phases (the run, a
replay of the topic with ``--from``, a redrive of the dead letters with their version) and the
order in which ready work runs. :func:`run_seed` returns the first invariant broken, if any.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, KafkaError

from consumer.cli import EXIT_ABORTED, EXIT_FATAL, EXIT_STOPPED_EARLY
from consumer.engine.outcome import RunOutcome
from consumer.settings import Settings
from schemas import ErrorType, Version, format_version, version_from_headers
from schemas.version import HEADER_VERSION
from tests.simulation import engine as sim_engine
from tests.simulation import invariants
from tests.simulation.clock import Scheduler, VirtualClock
from tests.simulation.kafka import Cluster, FakeConsumer, FakeProducer, Key
from tests.simulation.milvus import FakeMilvus
from tests.simulation.triton import FakeFetcher, FakeTriton, fake_preprocess, uri_of

TOPIC = "images"
DLQ = f"{TOPIC}.dlq"
COLLECTION = "sim"
TOMBSTONES = f"{COLLECTION}_tombstones"
MAIN_GROUP = "embedder"
REPLAY_GROUP = "embedder-replay"
EXIT_OK = 0

POISON = {
    "json": ErrorType.INVALID_JSON.value,
    "missing": ErrorType.NOT_FOUND.value,
    "nan": ErrorType.INVALID_EMBEDDING.value,
    "zero": ErrorType.INVALID_EMBEDDING.value,
    "reject": ErrorType.MODEL_REJECTED.value,
}


class SimCrash(BaseException):
    """The process is killed here (``kill -9``): nothing after this point runs."""


@dataclass(frozen=True, slots=True)
class Msg:
    """One record of the source topic that a consumer can be handed, and what it should do."""

    topic: str
    partition: int
    offset: int
    id: str | None
    op: str  # "upsert" or "delete" (or "poison" for a record that is not a message)
    poison: str | None  # the dead-letter reason it must end with, or None
    version: Version

    @property
    def coords(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error_type: str | None
    version: Version | None


@dataclass
class Ended:
    """How one run of a process ended."""

    outcome: str  # a RunOutcome value, "fatal" or "killed"
    exit_status: int | None
    bounded: bool
    stops: int
    sigints: int
    fatal_text: str = ""
    unfinished: list[str] = field(default_factory=list)  # partitions held, not at their end


class Proc:
    """One consumer process (``python -m consumer run``) of the simulated world."""

    def __init__(self, world: World, name: str, settings: Settings) -> None:
        self.world = world
        self.name = name
        self.settings = settings
        self.bounded = bool(settings.until_end or settings.until)
        self.engine: Any = None
        self.handles: Any = None
        self.consumer: FakeConsumer | None = None
        self.producer: FakeProducer | None = None
        self.alive = False
        self.outcome: str | None = None
        self.ended: list[Ended] = []
        self.final_bookkeeping: dict[str, int] | None = None
        self.stops = 0
        self.sigints = 0
        self.restart_at: float | None = None
        self.done = False
        self.crash_at_point: tuple[str, int] | None = None
        self.point_hits: Counter[str] = Counter()
        self.startup_failures = 0

    def start(self) -> None:
        w = self.world
        w.log(f"{self.name}: start ({self.settings.group}, bounded={self.bounded})")
        self.producer = FakeProducer(
            w.cluster, latency=lambda: w.rng.uniform(0.001, 0.03), refuse=w.refuse_dead_letter
        )

        def make_consumer(conf: dict[str, Any]) -> FakeConsumer:
            self.consumer = FakeConsumer(w.cluster, conf)
            return self.consumer

        self.stops = self.sigints = 0
        self.restart_at = None
        try:
            self.handles = sim_engine.build(
                self.settings,
                name=self.name,
                scheduler=w.scheduler,
                rng=w.rng,
                make_consumer=make_consumer,
                producer=self.producer,
                cluster=w.cluster,
                milvus=w.milvus,
                triton=w.triton,
                fetcher=w.fetcher,
                preprocess=fake_preprocess,
                io_latency=lambda: w.rng.expovariate(1 / 0.02),
                infer_latency=lambda: w.rng.uniform(0.005, 0.12),
                write_latency=lambda: w.rng.uniform(0.002, w.milvus_latency_max),
            )
        except Exception as exc:  # e.g. Milvus down at start-up: exit 1, started again
            w.log(f"{self.name}: start-up failed: {exc!r}")
            w.coverage["startup_failures"] += 1
            self.startup_failures += 1
            if self.startup_failures > 12:
                w.fail("never_stuck", f"{self.name} cannot start: {exc!r}")
            if self.consumer is not None:
                self.consumer.kill()
            self.restart_at = w.clock.monotonic() + w.rng.uniform(0.5, 2.0)
            return
        self.engine = self.handles.engine
        registry = self.engine._ledger.registry
        register = registry.register

        def observed(id_: str, token: Any, version: Version) -> None:
            entry = registry._entries.get(id_)
            if entry is not None and version < entry.version:
                w.saw_version_race()
            register(id_, token, version)

        registry.register = observed  # type: ignore[method-assign]
        self.alive = True

    def rows_in_flight(self) -> int:
        return self.engine.rows_in_flight() if self.alive else 0

    def step(self) -> None:
        if not self.alive:
            return
        w = self.world
        w.current = self
        try:
            going = self.engine.step()
            if not going and self.alive:
                self._end()
        except SimCrash:
            pass
        except Exception as exc:
            if self.alive:
                raise RuntimeError(f"{self.name}: the engine raised {exc!r}") from exc
        finally:
            w.current = None

    def _end(self) -> None:
        w = self.world
        engine = self.engine
        held_at_end = set(engine.assigned())  # what it held when its loop ended
        try:
            outcome = engine.finish()
        except SimCrash:
            return
        if not self.alive:
            return
        fatal = engine.fatal
        held = self._unfinished(held_at_end)
        if fatal is not None:
            name, status, text = "fatal", EXIT_FATAL, str(fatal)
        else:
            assert outcome is not None
            name, status, text = outcome.value, _exit_status(outcome), ""
        self.alive = False
        self.outcome = name
        self.ended.append(Ended(name, status, self.bounded, self.stops, self.sigints, text, held))
        clean = name in (RunOutcome.FINISHED.value, RunOutcome.STOPPED.value)
        if clean and not engine._drain_timed_out:  # the drain finished: nothing may remain
            self.final_bookkeeping = engine.bookkeeping()
        w.log(f"{self.name}: exit {status} ({name}{': ' + text if text else ''})")
        w.coverage[f"exit_{status}"] += 1
        if status == EXIT_OK and (self.bounded or w.stopping):
            self.done = True
        else:  # a Job (or the deployment) starts it again
            self.restart_at = w.clock.monotonic() + w.rng.uniform(0.2, 2.0)
            if name == "fatal":
                w.refusal_fixed = True  # the operator fixes the dead-letter topic

    def _unfinished(self, held: set[Key]) -> list[str]:
        if self.engine is None:
            return []
        ends = self.engine.ends()
        out = []
        for key in sorted(held):
            end = ends.get(key)
            committed = self.world.cluster.committed(self.settings.group or "", key)
            if end is not None and (committed is None or committed < end):
                out.append(f"{key[0]}[{key[1]}] committed {committed} < end {end}")
        return out

    @property
    def _held(self) -> set[Key]:
        return set(self.engine.assigned()) if self.engine is not None else set()

    def kill(self, why: str) -> None:
        if not self.alive:
            return
        w = self.world
        w.log(f"{self.name}: killed ({why})")
        w.coverage["crashes"] += 1
        w.coverage[f"crash_{why.split()[0]}"] += 1
        held = sorted(self._held)
        if held and self.rows_in_flight():
            w.coverage["crash_with_work_in_flight"] += 1
        self.alive = False
        self.outcome = "killed"
        self.ended.append(Ended("killed", None, self.bounded, self.stops, self.sigints))
        assert self.consumer is not None and self.producer is not None
        self.consumer.kill()
        self.producer.kill()
        for handle in self.handles.writer_thread:
            handle.kill()
        for kind in ("io", "infer", "writer"):
            w.scheduler.cancel(f"{self.name}.{kind}")
        self.restart_at = w.clock.monotonic() + w.rng.uniform(0.2, 2.0)

    def crash_point(self, name: str) -> None:
        if self.crash_at_point is None or self.crash_at_point[0] != name:
            return
        self.point_hits[name] += 1
        if self.point_hits[name] >= self.crash_at_point[1]:
            self.crash_at_point = None
            self.kill(f"{name} point")
            raise SimCrash(name)


def _exit_status(outcome: RunOutcome) -> int:
    return {
        RunOutcome.FINISHED: EXIT_OK,
        RunOutcome.STOPPED: EXIT_OK,
        RunOutcome.STOPPED_EARLY: EXIT_STOPPED_EARLY,
        RunOutcome.ABORTED: EXIT_ABORTED,
    }[outcome]


@dataclass
class Result:
    seed: int
    failure: str | None
    invariant: str | None
    trace: list[str]
    coverage: Counter[str]
    steps: int
    virtual_s: float


class World:
    """Everything one seed runs in."""

    def __init__(self, seed: int, *, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.tracing = trace
        self.lines: list[str] = []
        self.clock = VirtualClock()
        self.scheduler = Scheduler(self.clock, random.Random(seed * 7919 + 1))
        self.cluster = Cluster(self.clock, random.Random(seed * 7919 + 2), self.log)
        self.milvus = FakeMilvus(self.clock, random.Random(seed * 7919 + 3), self.log)
        self.triton = FakeTriton(self.clock, random.Random(seed * 7919 + 4))
        self.fetcher = FakeFetcher()
        self.model: dict[tuple[str, int, int], Msg] = {}
        self.processes: list[Proc] = []
        self.coverage: Counter[str] = Counter()
        self.verified: dict[tuple[str, Key], int] = {}
        self.regressions: list[str] = []
        self._held: dict[str, Version] = {}
        self.current: Proc | None = None
        self.stopping = False
        self.refusal_fixed = False
        self.failure: str | None = None
        self.invariant: str | None = None
        self.refusals: list[tuple[float, float, bool]] = []  # (start, end, retriable)
        self.permanent_refusal = False
        self.phase_group = MAIN_GROUP
        self.collection = COLLECTION
        self.settings_cap = 0
        self.milvus_latency_max = 0.05
        self.events: list[tuple[float, str, Callable[[], None]]] = []
        self._dead_cache: tuple[int, dict[tuple[str, int, int], list[DeadLetter]]] = (-1, {})
        self._stored_cache: tuple[int, dict[str, Version]] = (-1, {})
        self.milvus.on_change = self._on_milvus_change

    # --- tracing --------------------------------------------------------------------------
    def log(self, text: str) -> None:
        if self.tracing:
            self.lines.append(f"t={self.clock.monotonic():9.4f}  {text}")

    # --- what the invariants read -----------------------------------------------------
    def live_processes(self) -> list[Proc]:
        return [p for p in self.processes if p.alive]

    def commits(self) -> list[tuple[str, Key, int]]:
        out = []
        for name, group in self.cluster.groups.items():
            for key, (offset, _) in group.committed.items():
                if key[0] == TOPIC:
                    out.append((name, key, offset))
        return out

    def floor(self, group: str, key: Key) -> int:
        """The lowest offset the group started reading the partition at."""
        return self.cluster.floors.get((group, key), 0)

    def partition_ends(self) -> dict[Key, int]:
        topic = self.cluster.topics[TOPIC]
        return {(TOPIC, i): p.high for i, p in enumerate(topic.partitions)}

    def dead_letters(self) -> dict[tuple[str, int, int], list[DeadLetter]]:
        records = self.cluster.topics[DLQ].partitions[0].records
        if self._dead_cache[0] == len(records):
            return self._dead_cache[1]
        out: dict[tuple[str, int, int], list[DeadLetter]] = {}
        for rec in records:
            h = {k: v for k, v in rec.headers or []}
            try:
                coords = (
                    h["source.topic"].decode(),
                    int(h["source.partition"]),
                    int(h["source.offset"]),
                )
            except (KeyError, ValueError):
                coords = ("?", -1, rec.offset)
            et = h.get("error.type")
            letter = DeadLetter(et.decode() if et else None, version_from_headers(rec.headers))
            out.setdefault(coords, []).append(letter)
        self._dead_cache = (len(records), out)
        return out

    def row_versions(self) -> dict[str, Version]:
        return {str(r["id"]): Version.of_row(r) for r in self.milvus.rows(COLLECTION)}

    def tombstone_versions(self) -> dict[str, Version]:
        return {str(r["id"]): Version.of_row(r) for r in self.milvus.rows(TOMBSTONES)}

    def stored_versions(self) -> dict[str, Version]:
        if self._stored_cache[0] == self.milvus.mutations:
            return self._stored_cache[1]
        out = self.row_versions()
        for id_, v in self.tombstone_versions().items():
            if id_ not in out or v > out[id_]:
                out[id_] = v
        self._stored_cache = (self.milvus.mutations, out)
        return out

    def _on_milvus_change(self, name: str, method: str, rows: list[dict[str, Any]]) -> None:
        """Every row written must be at least the highest version its id was ever held at
        (row or tombstone): an older write never lands over a newer one or over a deletion.
        (A delete may leave an id without a row for a moment, before its tombstone is
        written: that is not a version going back.)"""
        if name not in (COLLECTION, TOMBSTONES) or method == "delete":
            return
        for row in rows:
            id_, version = str(row["id"]), Version.of_row(row)
            before = self._held.get(id_)
            if name == COLLECTION and before is not None and version < before:
                self.regressions.append(
                    f"id {id_}: a row at version {tuple(version)} was written over version "
                    f"{tuple(before)} ({method})"
                )
            if before is None or version > before:
                self._held[id_] = version

    def covered(
        self,
        msg: Msg,
        stored: dict[str, Version],
        dead: dict[tuple[str, int, int], list[DeadLetter]],
        group: str,
    ) -> bool:
        """Whether ``msg`` is durably handled: dead-lettered, or Milvus holds its version or a
        higher one, or a higher version of its id supersedes it that is dead-lettered or not
        yet committed by the group (so it is still to be handled, after a crash too)."""
        if msg.coords in dead:
            return True
        if msg.id is None:
            return False
        held = stored.get(msg.id)
        if held is not None and held >= msg.version:
            return True
        committed = self.cluster.group(group).committed
        for other in self.by_id.get(msg.id, []):
            # (an equal version is the same message read again, e.g. a redrive of it)
            if other is msg or other.version < msg.version:
                continue
            if other.coords in dead:
                return True
            entry = committed.get((other.topic, other.partition))
            if entry is None or other.offset >= entry[0]:
                return True
        return False

    by_id: dict[str, list[Msg]]

    def messages_by_id(self) -> dict[str, list[Msg]]:
        return {k: v for k, v in self.by_id.items() if v}

    def reason_ok(self, msg: Msg, error_type: str | None) -> bool:
        if error_type == msg.poison:
            return True
        # an answer with fewer rows than sent is refused like a bad input
        return bool(self.triton.short_rate) and error_type == ErrorType.MODEL_REJECTED.value

    def judge_exit(self, proc: Proc, ended: Ended) -> str | None:
        if ended.outcome == "killed":
            return None
        if ended.outcome == "fatal":
            if self.permanent_refusal and "refuses" in ended.fatal_text:
                return None
            return f"{proc.name} stopped fatally (exit {ended.exit_status}): {ended.fatal_text}"
        expected: str
        if ended.sigints >= 2:
            expected = RunOutcome.ABORTED.value
        elif ended.stops or ended.sigints:
            expected = RunOutcome.STOPPED_EARLY.value if ended.bounded else "stopped"
            if ended.bounded and ended.outcome == RunOutcome.FINISHED.value:
                expected = ended.outcome  # the end was reached before the stop was seen
        elif ended.bounded:
            expected = RunOutcome.FINISHED.value
        else:
            expected = RunOutcome.STOPPED.value
        if ended.outcome != expected:
            return (
                f"{proc.name} ended {ended.outcome} (exit {ended.exit_status}), expected {expected}"
            )
        if ended.outcome == RunOutcome.FINISHED.value and ended.unfinished:
            return f"{proc.name} finished (exit 0) with {ended.unfinished}"
        want = _exit_status(RunOutcome(ended.outcome))
        if ended.exit_status != want:
            return f"{proc.name}: outcome {ended.outcome} exited {ended.exit_status}, not {want}"
        return None

    # --- faults the world injects -----------------------------------------------------
    def refuse_dead_letter(self, topic: str, value: bytes | None) -> KafkaError | None:
        now = self.clock.monotonic()
        for start, end, retriable in self.refusals:
            if start <= now < end and not (self.refusal_fixed and not retriable):
                self.coverage["dead_letter_refused"] += 1
                if retriable:
                    return KafkaError(KafkaError._MSG_TIMED_OUT, "timed out", retriable=True)
                return KafkaError(
                    KafkaError.TOPIC_AUTHORIZATION_FAILED, "not authorized", retriable=False
                )
        return None

    def saw_version_race(self) -> None:
        self.coverage["version_races"] += 1

    def crash_point(self, name: str) -> None:
        running = self.scheduler.running
        proc = self.current
        if running is not None:
            owner = running.executor.split(".")[0]
            proc = next((p for p in self.processes if p.name == owner), None)
        if proc is not None and proc.alive:
            proc.crash_point(name)

    def fail(self, invariant: str, text: str) -> None:
        if self.failure is None:
            self.failure, self.invariant = text, invariant
            self.log(f"INVARIANT BROKEN {invariant}: {text}")

    def at(self, when: float, what: str, action: Callable[[], None]) -> None:
        self.events.append((when, what, action))


def _uri_kind(rng: random.Random) -> tuple[str, str | None]:
    r = rng.random()
    for kind, p in (("json", 0.02), ("missing", 0.02), ("nan", 0.01), ("zero", 0.01)):
        if r < p:
            return kind, POISON[kind]
        r -= p
    if r < 0.012:
        return "reject", POISON["reject"]
    return "ok", None


class Scenario:
    """Builds one seed's world, runs its phases, checks the invariants."""

    def __init__(self, seed: int, *, trace: bool = False, max_virtual_s: float = 400.0) -> None:
        self.world = w = World(seed, trace=trace)
        w.by_id = {}
        self.rng = w.rng
        self.max_virtual_s = max_virtual_s
        self.steps = 0
        self.names = 0

    # --- the world ------------------------------------------------------------------------
    def build(self) -> None:
        w, rng = self.world, self.rng
        parts = rng.randint(3, 5)
        ts_type = TIMESTAMP_LOG_APPEND_TIME if rng.random() < 0.25 else 1
        w.cluster.create_topic(TOPIC, parts, timestamp_type=ts_type)
        w.cluster.create_topic(DLQ, 1)
        if ts_type == TIMESTAMP_LOG_APPEND_TIME:
            w.coverage["log_append_time"] += 1
        self.ids = [f"img{n}" for n in range(rng.randint(30, 70))]
        self.parts = parts
        self.sequence = 0
        self.base_ms = w.clock.time_ms() - 3_600_000
        self.transactions = rng.random() < 0.3
        self.compaction = rng.random() < 0.3
        self.bounded = rng.random() < 0.6
        self.consumers = 1 if rng.random() < 0.5 else rng.randint(2, 3)
        if self.consumers > 1:
            w.coverage["group_of_several"] += 1
        total = rng.randint(200, 280)
        first = total if self.bounded else rng.randint(total // 2, total)
        self.produce(first)
        self.later = total - first
        self.settings_seed = rng.random()

    def produce(self, count: int) -> None:
        w, rng = self.world, self.rng
        i = 0
        while i < count:
            if self.transactions and rng.random() < 0.08:
                size = rng.randint(2, 5)
                self.produce_transaction(size, commit=rng.random() < 0.75)
                i += size
                continue
            if rng.random() < 0.03 and w.by_id:
                self.produce_old_version()
                i += 1
                continue
            self.produce_one()
            i += 1
        if self.compaction and self.world.clock.monotonic() == 0.0:  # before anyone reads
            self.compact()

    def _value(self, id_: str) -> tuple[bytes | None, str, str | None]:
        rng = self.rng
        if rng.random() < 0.08:
            return None, "delete", None
        kind, poison = _uri_kind(rng)
        self.sequence += 1
        if kind == "json":
            return b"{not json " + id_.encode(), "poison", poison
        doc = {"id": id_, "uri": uri_of(kind, self.sequence)}
        return orjson.dumps(doc), "upsert", poison

    def _timestamp(self) -> int:
        rng = self.rng
        self.base_ms += rng.randint(0, 20)
        if rng.random() < 0.12:  # a producer whose clock runs behind: an older version
            return self.base_ms - rng.randint(1, 5_000)
        return self.base_ms

    def _partition(self, id_: str) -> int:
        return zlib.crc32(id_.encode()) % self.parts

    def _record(self, rec: Any, part: int, id_: str | None, op: str, poison: str | None) -> None:
        w = self.world
        version = version_from_headers(rec.headers) or Version(rec.ts, part, rec.offset)
        msg = Msg(TOPIC, part, rec.offset, id_ if op != "poison" else None, op, poison, version)
        w.model[msg.coords] = msg
        if msg.id is not None:
            w.by_id.setdefault(msg.id, []).append(msg)

    def produce_one(self) -> None:
        w, rng = self.world, self.rng
        id_ = rng.choice(self.ids)
        value, op, poison = self._value(id_)
        part = self._partition(id_)
        rec = w.cluster.produce(TOPIC, part, id_.encode(), value, timestamp=self._timestamp())
        self._record(rec, part, id_, op, poison)

    def produce_old_version(self) -> None:
        """A redriven record: a fresh value, with the version of an older message of its id."""
        w, rng = self.world, self.rng
        upserts = sorted(i for i, ms in w.by_id.items() if any(m.op == "upsert" for m in ms))
        if not upserts:
            return
        id_ = rng.choice(upserts)
        older = rng.choice([m for m in w.by_id[id_] if m.op == "upsert"])
        self.sequence += 1
        value = orjson.dumps({"id": id_, "uri": uri_of("ok", self.sequence)})
        headers = [(HEADER_VERSION, format_version(older.version))]
        part = self._partition(id_)
        rec = w.cluster.produce(
            TOPIC, part, id_.encode(), value, headers=headers, timestamp=older.version.ts
        )
        self._record(rec, part, id_, "upsert", None)
        w.coverage["old_versions_produced"] += 1

    def produce_transaction(self, size: int, *, commit: bool) -> None:
        w, rng = self.world, self.rng
        part = rng.randrange(self.parts)
        ids = [i for i in self.ids if self._partition(i) == part] or [self.ids[0]]
        items = []
        meta = []
        for _ in range(size):
            id_ = rng.choice(ids)
            value, op, poison = self._value(id_)
            items.append((id_.encode(), value, self._timestamp()))
            meta.append((id_, op, poison))
        target = self._partition(meta[0][0]) if ids == [self.ids[0]] else part
        recs = w.cluster.produce_transaction(TOPIC, target, items, commit=commit)
        w.coverage["transactions_committed" if commit else "transactions_aborted"] += 1
        if commit:
            for rec, (id_, op, poison) in zip(recs, meta, strict=True):
                self._record(rec, target, id_, op, poison)

    def compact(self) -> None:
        """Remove a few records that a later record of the same key replaces (as compaction
        does): their offsets become gaps nobody reads."""
        w, rng = self.world, self.rng
        for part in range(self.parts):
            records = [r for r in w.cluster.records(TOPIC, part) if not r.control and not r.aborted]
            last: dict[bytes | None, int] = {}
            for rec in records:
                last[rec.key] = rec.offset
            candidates = [
                r.offset
                for r in records
                if last.get(r.key, -1) > r.offset and (TOPIC, part, r.offset) in w.model
            ]
            gone = set(rng.sample(candidates, min(len(candidates), rng.randint(0, 4))))
            if gone:
                w.cluster.compact(TOPIC, part, gone)
                for offset in gone:
                    msg = w.model.pop((TOPIC, part, offset))
                    if msg.id is not None:
                        w.by_id[msg.id].remove(msg)
                w.coverage["compacted_records"] += len(gone)

    # --- settings and processes -------------------------------------------------------
    def settings(self, group: str, *, bounded: bool, start_from: str | None = None) -> Settings:
        rng = random.Random(self.settings_seed)
        cap = rng.randint(8, 48)
        self.world.settings_cap = cap
        return Settings(
            topic=TOPIC,
            group=group,
            collection=COLLECTION,
            until_end=bounded,
            start_from=start_from,
            reset_offsets=start_from is not None,
            batch_size=rng.randint(2, 24),
            max_rows_in_flight=cap,
            infer_threads=rng.randint(1, 4),
            infer_batch_size=rng.randint(1, 8),
            write_batch_rows=rng.randint(2, 24),
            write_max_age_s=rng.uniform(0.01, 0.2),
            commit_interval_s=rng.uniform(0.1, 1.0),
            poll_timeout_s=0.05,
            drain_timeout_s=rng.uniform(2.0, 6.0),
            dead_letter_refused_timeout_s=4.0,
            session_timeout_ms=3000,
            allowed_schemes=("https",),
            metrics_port=None,
            compilation_cache_dir=None,
        )

    def spawn(self, group: str, *, bounded: bool, start_from: str | None = None) -> Proc:
        w = self.world
        self.names += 1
        proc = Proc(
            w, f"p{self.names}", self.settings(group, bounded=bounded, start_from=start_from)
        )
        w.processes.append(proc)
        proc.start()
        return proc

    # --- faults -------------------------------------------------------------------------
    def plan_faults(self, horizon: float) -> None:
        w, rng = self.world, self.rng
        cov = w.coverage

        def when() -> float:
            return w.clock.monotonic() + rng.uniform(0.05, horizon)

        procs = list(w.processes)
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 2)):
                victim = rng.choice(procs)
                if rng.random() < 0.5:
                    point = rng.choice(["after_poll", "after_infer", "after_upsert"])
                    w.at(when(), f"arm {point} in {victim.name}", _arm(victim, point, rng))
                else:
                    w.at(when(), f"kill {victim.name}", lambda v=victim: v.kill("at a step"))
        if rng.random() < 0.35:
            victim = rng.choice(procs)
            w.at(when(), f"session of {victim.name} expires", lambda v=victim: self.evict(v))
        if rng.random() < 0.55:  # early, while there is work to move
            join_at = w.clock.monotonic() + rng.uniform(0.05, 1.0)
            w.at(join_at, "a consumer joins", lambda: self.join())
        if rng.random() < 0.2:
            victim = rng.choice(procs)
            w.at(when(), f"SIGTERM {victim.name}", lambda v=victim: self.sigterm(v))
        if rng.random() < 0.08:
            victim = rng.choice(procs)
            w.at(when(), f"SIGINT x2 {victim.name}", lambda v=victim: self.sigint_twice(v))
        if rng.random() < 0.3:
            start = when()
            end = start + rng.uniform(0.3, 4.0)
            w.milvus.outages.append((start, end))
            cov["outage_milvus"] += 1
            if rng.random() < 0.5:
                w.at(end, "Milvus restarts: collections released", self.release)
        if rng.random() < 0.3:
            w.milvus.timeout_applied_rate = rng.uniform(0.03, 0.15)
            cov["milvus_timeout_applied"] += 1
        if rng.random() < 0.2:
            w.milvus.fail_rate = rng.uniform(0.01, 0.05)
        if rng.random() < 0.3:
            w.milvus_latency_max = rng.uniform(0.1, 0.6)
            cov["milvus_slow"] += 1
        if rng.random() < 0.3:
            start = when()
            w.triton.unavailable.append((start, start + rng.uniform(0.3, 3.0)))
            cov["outage_triton"] += 1
        if rng.random() < 0.2:
            w.triton.timeout_rate = rng.uniform(0.02, 0.1)
            cov["triton_timeouts"] += 1
        if rng.random() < 0.12:
            w.triton.short_rate = rng.uniform(0.02, 0.08)
            cov["triton_short_answers"] += 1
        if rng.random() < 0.15:
            start = when()
            end = start + rng.uniform(0.3, 2.5)
            w.at(start, "brokers down", lambda e=end: setattr(w.cluster, "down_until", e))
            cov["outage_kafka"] += 1
        if rng.random() < 0.3:
            w.cluster.commit_fail_rate = rng.uniform(0.05, 0.3)
            cov["commit_failures"] += 1
        if rng.random() < 0.2:
            w.cluster.commit_slow_rate = 0.1
            w.cluster.commit_slow_s = rng.uniform(0.2, 2.0)
            cov["commit_slow"] += 1
        if rng.random() < 0.3:
            start = when()
            w.refusals.append((start, start + rng.uniform(0.2, 3.0), True))
            cov["dead_letter_retriable_errors"] += 1
        if rng.random() < 0.15:
            start = when()
            w.refusals.append((start, start + rng.uniform(0.2, 2.0), False))
            cov["dead_letter_non_retriable_errors"] += 1
        elif rng.random() < 0.04:
            start = when()
            w.refusals.append((start, start + 1e9, False))
            w.permanent_refusal = True
            cov["dead_letter_refused_for_good"] += 1

    def evict(self, proc: Proc) -> None:
        if proc.alive and proc.consumer is not None:
            self.world.cluster.group(proc.settings.group or "").evict(proc.consumer.member_id)
            self.world.coverage["partitions_lost"] += 1

    def join(self) -> None:
        w = self.world
        if w.stopping:
            return
        self.spawn(w.phase_group, bounded=self.phase_bounded, start_from=self.phase_from)
        w.coverage["joins"] += 1

    def sigterm(self, proc: Proc) -> None:
        if proc.alive:
            proc.stops += 1
            proc.engine.request_stop()
            self.world.coverage["sigterm"] += 1

    def sigint_twice(self, proc: Proc) -> None:
        if proc.alive:
            proc.sigints += 2
            proc.engine.interrupt()
            proc.engine.interrupt()
            self.world.coverage["second_sigint"] += 1

    def release(self) -> None:
        for name in (COLLECTION, TOMBSTONES):
            self.world.milvus.release(name)
        self.world.coverage["collection_released"] += 1

    @property
    def failure(self) -> str | None:
        return self.world.failure

    @property
    def invariant(self) -> str | None:
        return self.world.invariant

    # --- running --------------------------------------------------------------------------
    def check(self, checks: list[invariants.Check]) -> bool:
        if self.failure is not None:
            return False
        for check in checks:
            problem = check(self.world)
            if problem:
                self.world.fail(check.__name__, problem)
                return False
        return True

    def run_phase(
        self,
        group: str,
        *,
        bounded: bool,
        consumers: int,
        start_from: str | None = None,
        faults: bool,
        produce_later: int = 0,
    ) -> bool:
        w, rng = self.world, self.rng
        w.phase_group, w.stopping = group, False
        self.phase_bounded, self.phase_from = bounded, start_from
        w.log(f"phase {group}: bounded={bounded} consumers={consumers} from={start_from}")
        w.verified = {k: v for k, v in w.verified.items() if k[0] != group}
        [self.spawn(group, bounded=bounded, start_from=start_from) for _ in range(consumers)]
        if faults:
            self.plan_faults(horizon=rng.uniform(2.0, 12.0))
        if produce_later:
            waves = rng.randint(1, 4)
            for n in range(waves):
                count = produce_later // waves + (1 if n < produce_later % waves else 0)
                w.at(
                    w.clock.monotonic() + rng.uniform(0.1, 8.0),
                    f"produce {count}",
                    lambda c=count: self.produce(c),
                )
        started = w.clock.monotonic()
        while True:
            if self.failure is not None:
                return False
            now = w.clock.monotonic()
            if now - started > self.max_virtual_s:
                self.world.fail(
                    "never_stuck", f"phase {group} not done after {now - started:.0f} s"
                )
                return False
            self._fire_events()
            for proc in w.processes:
                due = proc.restart_at is not None and now >= proc.restart_at
                if not proc.alive and not proc.done and due and proc.settings.group == group:
                    if w.stopping and not bounded:  # the end of the run: no restart
                        proc.done = True
                        continue
                    w.coverage["restarts"] += 1
                    proc.start()
            live = w.live_processes()
            if not bounded and not w.stopping and self._idle(group):
                w.stopping = True
                w.log("all work done: SIGTERM to every consumer")
                for proc in live:
                    proc.engine.request_stop()  # the planned end of an unbounded run
            waiting = [p for p in w.processes if p.settings.group == group and not p.done]
            if not waiting:
                break
            if live:
                rng.choice(live).step()
                w.scheduler.run_some(rng.randint(0, 3))
            else:
                upcoming = [p.restart_at for p in waiting if p.restart_at is not None]
                upcoming += [e[0] for e in w.events]
                due = w.scheduler.next_due()
                if due is not None:
                    upcoming.append(due)
                if not upcoming:
                    self.world.fail(
                        "never_stuck", f"phase {group}: no process and nothing to wait for"
                    )
                    return False
                w.scheduler.run_until(max(now, min(upcoming)))
            self.steps += 1
            if not self.check(invariants.STEP):
                return False
        return self.check(invariants.END)

    def _idle(self, group: str) -> bool:
        w = self.world
        if any(what.startswith("produce") for _, what, _ in w.events):
            return False
        ends = w.partition_ends()
        return all(w.cluster.committed(group, key) == high for key, high in ends.items())

    def _fire_events(self) -> None:
        w = self.world
        now = w.clock.monotonic()
        due = sorted((e for e in w.events if e[0] <= now), key=lambda e: e[0])
        if not due:
            return
        w.events = [e for e in w.events if e[0] > now]
        for _, what, action in due:
            w.log(f"fault: {what}")
            action()

    def run(self) -> Result:
        w = self.world
        with sim_engine.patched(w.crash_point, w.clock):
            self.build()
            ok = self.run_phase(
                MAIN_GROUP,
                bounded=self.bounded,
                consumers=self.consumers,
                faults=True,
                produce_later=self.later,
            )
            if ok and self.rng.random() < 0.25:
                w.coverage["replays"] += 1
                self._clear_faults()
                ok = self.run_phase(
                    REPLAY_GROUP, bounded=True, consumers=1, start_from="earliest", faults=False
                )
            if ok and self.rng.random() < 0.3:
                ok = self.redrive()
        self._coverage_summary()
        return Result(
            w.seed,
            self.failure,
            self.invariant,
            w.lines,
            w.coverage,
            self.steps,
            w.clock.monotonic(),
        )

    def _clear_faults(self) -> None:
        w = self.world
        w.milvus.outages.clear()
        w.milvus.timeout_applied_rate = w.milvus.fail_rate = 0.0
        w.triton.unavailable.clear()
        w.triton.timeout_rate = 0.0
        w.cluster.commit_fail_rate = w.cluster.commit_slow_rate = 0.0
        w.refusals.clear()
        w.events = [e for e in w.events if e[1].startswith("produce")]
        for proc in w.processes:
            proc.crash_at_point = None

    def redrive(self) -> bool:
        """Fix the causes (the missing images appear, the model is repaired) and publish the
        dead letters again with their original version, as ``producer redrive`` does; the main
        group then runs once more to its new end."""
        w = self.world
        self._clear_faults()
        fixable = {POISON["missing"], POISON["nan"], POISON["reject"]}
        records = list(w.cluster.topics[DLQ].partitions[0].records)
        chosen = []
        for rec in records:
            h = dict(rec.headers or [])
            if h.get("error.type", b"").decode() in fixable and rec.value is not None:
                chosen.append(rec)
        if not chosen:
            return True
        w.coverage["redrives"] += len(chosen)
        for rec in chosen:
            doc = orjson.loads(rec.value)
            doc["uri"] = doc["uri"].replace("/missing/", "/ok/").replace("/nan/", "/ok/")
            doc["uri"] = doc["uri"].replace("/reject/", "/ok/")
            headers = [(k, v) for k, v in rec.headers or [] if k == HEADER_VERSION]
            part = self._partition(doc["id"])
            new = w.cluster.produce(
                TOPIC, part, rec.key, orjson.dumps(doc), headers=headers, timestamp=rec.ts
            )
            self._record(new, part, doc["id"], "upsert", None)
        return self.run_phase(MAIN_GROUP, bounded=True, consumers=1, faults=False)

    def _coverage_summary(self) -> None:
        w = self.world
        cov = w.coverage
        for group in w.cluster.groups.values():
            cov["rebalances"] += group.rebalances
        cov["revocations"] += w.cluster.revocations
        cov["seeds"] = 1
        flags = {
            "seed_rebalance": cov["revocations"] > 0,
            "seed_crash": cov["crashes"] > 0,
            "seed_outage": any(cov[k] for k in ("outage_milvus", "outage_triton", "outage_kafka")),
            "seed_version_race": cov["version_races"] > 0,
            "seed_transactions": cov["transactions_committed"] + cov["transactions_aborted"] > 0,
            "seed_redrive": cov["redrives"] > 0,
            "seed_replay": cov["replays"] > 0,
            "seed_several_consumers": cov["group_of_several"] > 0,
        }
        for key, flag in flags.items():
            cov[key] = int(flag)


def _arm(proc: Proc, point: str, rng: random.Random) -> Callable[[], None]:
    count = rng.randint(1, 4)

    def arm() -> None:
        proc.crash_at_point = (point, count)
        proc.point_hits[point] = 0

    return arm


def run_seed(seed: int, *, trace: bool = False) -> Result:
    """Run one seed; the result names the first invariant broken (None when all held)."""
    return Scenario(seed, trace=trace).run()


def replay_command(seed: int, variant: str | None = None) -> str:
    extra = f" --variant {variant}" if variant else ""
    return f".venv/bin/python -m tests.simulation --seed {seed} --trace{extra}"

"""The fakes at the simulation's edges behave as the real servers do where it matters."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from pymilvus.exceptions import MilvusException

from consumer.inference import InferenceRejectedError, InferenceUnavailableError
from consumer.observability.metrics import Outcome
from consumer.sink.writer import MilvusWriter, WriteOp, WriteResult
from schemas import Version
from tests.simulation.clock import DeterministicExecutor, Scheduler, VirtualClock
from tests.simulation.engine import MilvusView, WriterThread
from tests.simulation.kafka import Cluster, FakeConsumer, FakeProducer
from tests.simulation.milvus import CODE_NOT_LOADED, FakeMilvus
from tests.simulation.triton import FakeFetcher, FakeTriton, NotFoundError, uri_of


def _world() -> tuple[VirtualClock, Cluster]:
    clock = VirtualClock()
    Scheduler(clock, random.Random(1))
    return clock, Cluster(clock, random.Random(2))


def _consumer(cluster: Cluster, group: str = "g", *, eof: bool = False, calls=None):
    consumer = FakeConsumer(
        cluster, {"group.id": group, "enable.partition.eof": eof, "session.timeout.ms": 3000}
    )
    log = calls if calls is not None else []
    consumer.subscribe(
        ["t"],
        on_assign=lambda c, tps: log.append(("assign", c.member_id, [tp.partition for tp in tps])),
        on_revoke=lambda c, tps: log.append(("revoke", c.member_id, [tp.partition for tp in tps])),
        on_lost=lambda c, tps: log.append(("lost", c.member_id, [tp.partition for tp in tps])),
    )
    return consumer


def test_gaps_transactions_and_eof_under_read_committed() -> None:
    _clock, cluster = _world()
    cluster.create_topic("t", 1)
    cluster.produce("t", 0, b"a", b"1", timestamp=5)  # offset 0
    cluster.produce_transaction("t", 0, [(b"b", b"2", 6)], commit=False)  # 1 aborted, 2 marker
    cluster.produce_transaction("t", 0, [(b"c", b"3", 7)], commit=True)  # 3, 4 marker
    cluster.produce("t", 0, b"a", b"4", timestamp=8)  # 5
    cluster.compact("t", 0, {0})  # 0 is gone (a later record of key a exists)
    consumer = _consumer(cluster, eof=True)
    got = consumer.consume(10, timeout=0)
    records = [m for m in got if m.error() is None]
    assert [m.offset() for m in records] == [3, 5]
    assert got[-1].error().code() == KafkaError._PARTITION_EOF
    assert got[-1].offset() == 6
    assert consumer.consume(10, timeout=0) == []  # one EOF per arrival at the end
    assert consumer.position([TopicPartition("t", 0)])[0].offset == 6
    assert consumer.get_watermark_offsets(TopicPartition("t", 0)) == (0, 6)
    assert records[0].timestamp() == (TIMESTAMP_CREATE_TIME, 7)
    found = consumer.offsets_for_times([TopicPartition("t", 0, 7)])
    assert found[0].offset == 3


def test_log_append_time_stamps_with_the_broker_clock() -> None:
    clock, cluster = _world()
    cluster.create_topic("t", 1, timestamp_type=TIMESTAMP_LOG_APPEND_TIME)
    clock.advance(2.5)
    cluster.produce("t", 0, b"a", b"1", timestamp=5)
    msg = _consumer(cluster).consume(1, timeout=0)[0]
    assert msg.timestamp() == (TIMESTAMP_LOG_APPEND_TIME, clock.time_ms())


def test_cooperative_group_revokes_before_it_assigns_and_calls_back_inside_consume() -> None:
    clock, cluster = _world()
    cluster.create_topic("t", 4)
    calls: list[tuple] = []
    first = _consumer(cluster, calls=calls)
    assert calls == []  # nothing happens outside consume()
    first.consume(1, timeout=0)
    assert calls == [("assign", first.member_id, [0, 1, 2, 3])]
    second = _consumer(cluster, calls=calls)
    second.consume(1, timeout=0)
    # the second gets nothing until the first gave its share up
    assert len(calls) == 1
    assert not second.assigned
    first.consume(1, timeout=0)
    assert calls[-1] == ("revoke", first.member_id, [2, 3])
    second.consume(1, timeout=0)
    assert calls[-1] == ("assign", second.member_id, [2, 3])
    # a member that dies keeps its partitions until its session times out, then they move
    second.kill()
    first.consume(1, timeout=0)
    assert sorted(first.assigned) == [("t", 0), ("t", 1)]
    clock.advance(3.1)
    first.consume(1, timeout=0)
    assert calls[-1] == ("assign", first.member_id, [2, 3])
    # an evicted member loses its partitions (on_lost), then joins again
    cluster.group("g").evict(first.member_id)
    first.consume(1, timeout=0)
    assert ("lost", first.member_id, [0, 1, 2, 3]) in calls


def test_commits_with_metadata_failures_and_slowness() -> None:
    clock, cluster = _world()
    cluster.create_topic("t", 1)
    consumer = _consumer(cluster)
    consumer.consume(1, timeout=0)
    out = consumer.commit(offsets=[TopicPartition("t", 0, 3, metadata="plan")], asynchronous=False)
    assert out[0].offset == 3
    assert consumer.committed([TopicPartition("t", 0)])[0].metadata == "plan"
    cluster.commit_fail_rate = 1.0
    with pytest.raises(KafkaException):
        consumer.commit(offsets=[TopicPartition("t", 0, 4)], asynchronous=False)
    assert cluster.committed("g", ("t", 0)) == 3
    cluster.commit_fail_rate, cluster.commit_slow_rate, cluster.commit_slow_s = 0.0, 1.0, 2.0
    before = clock.monotonic()
    consumer.commit(offsets=[TopicPartition("t", 0, 4)], asynchronous=False)
    assert clock.monotonic() - before == pytest.approx(2.0)
    cluster.down_until = clock.monotonic() + 1
    with pytest.raises(KafkaException):
        consumer.commit(offsets=[TopicPartition("t", 0, 5)], asynchronous=False)


def test_pause_resume_and_seek() -> None:
    _clock, cluster = _world()
    cluster.create_topic("t", 1)
    for i in range(3):
        cluster.produce("t", 0, b"k", str(i).encode(), timestamp=i)
    consumer = _consumer(cluster)
    consumer.consume(1, timeout=0)  # assigned, one record
    consumer.pause([TopicPartition("t", 0)])
    assert consumer.consume(5, timeout=0) == []
    consumer.resume([TopicPartition("t", 0)])
    consumer.seek(TopicPartition("t", 0, 0))
    assert [m.offset() for m in consumer.consume(5, timeout=0)] == [0, 1, 2]


def test_dead_letter_producer_reports_on_poll_with_retriable_and_fatal_errors() -> None:
    clock, cluster = _world()
    cluster.create_topic("t.dlq", 1)
    errors = iter([KafkaError(KafkaError._MSG_TIMED_OUT, "x", retriable=True), None])
    producer = FakeProducer(cluster, latency=lambda: 0.5, refuse=lambda t, v: next(errors))
    reports: list = []
    for _ in range(2):
        producer.produce("t.dlq", key=b"k", value=b"v", on_delivery=lambda e, m: reports.append(e))
    producer.poll(0)
    assert reports == []  # not due yet
    clock.advance(0.5)
    producer.poll(0)
    assert reports[0].retriable() and reports[1] is None
    assert len(cluster.records("t.dlq", 0)) == 1
    producer.produce("nope", value=b"v", on_delivery=lambda e, m: reports.append(e))
    producer.flush()
    assert reports[-1].code() == KafkaError.UNKNOWN_TOPIC_OR_PART and not reports[-1].retriable()


def test_milvus_keeps_duplicate_keys_on_insert_and_replaces_on_upsert() -> None:
    clock = VirtualClock()
    milvus = FakeMilvus(clock, random.Random(1))
    milvus.create_collection("c")
    milvus.insert("c", [{"id": "a", "v": 1}])
    milvus.insert("c", [{"id": "a", "v": 2}])
    assert len(milvus.get("c", ids=["a"])) == 2  # two rows for one key, as Milvus does
    milvus.upsert("c", [{"id": "a", "v": 3}])
    assert milvus.get("c", ids=["a"]) == [{"id": "a", "v": 3}]
    milvus.upsert("c", [{"id": "b", "deleted_at": 5}, {"id": "d", "deleted_at": 9}])
    milvus.delete("c", filter="deleted_at < 6")
    assert [r["id"] for r in milvus.rows("c")] == ["a", "d"]
    milvus.delete("c", ids=["a"])
    assert milvus.query("c", filter="", output_fields=["count(*)"]) == [{"count(*)": 1}]
    with pytest.raises(MilvusException):
        milvus.query("c", filter="uri like 'x%'")  # an expression the fake does not know


def test_milvus_outage_release_and_a_write_that_timed_out_after_applying() -> None:
    clock = VirtualClock()
    milvus = FakeMilvus(clock, random.Random(1))
    milvus.create_collection("c")
    milvus.outages.append((1.0, 2.0))
    clock.advance(1.5)
    with pytest.raises(MilvusException):
        milvus.upsert("c", [{"id": "a"}])
    clock.advance(1.0)
    milvus.release("c")
    with pytest.raises(MilvusException) as err:
        milvus.get("c", ids=["a"])
    assert err.value.code == CODE_NOT_LOADED
    milvus.load_collection("c")
    milvus.timeout_applied_rate = 1.0
    with pytest.raises(MilvusException):
        milvus.upsert("c", [{"id": "a"}])
    assert [r["id"] for r in milvus.rows("c")] == ["a"]  # applied all the same


def test_triton_outages_refusals_and_degenerate_vectors() -> None:
    clock = VirtualClock()
    triton = FakeTriton(clock, random.Random(1))
    fetcher = FakeFetcher()
    batch = np.stack([fetcher.load(uri_of(k, i)) for i, k in enumerate(["ok", "nan", "zero"])])
    out = triton.infer(batch)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all() and not out[2].any()
    with pytest.raises(InferenceRejectedError):
        triton.infer(np.stack([fetcher.load(uri_of("ok", 1)), fetcher.load(uri_of("reject", 2))]))
    triton.unavailable.append((0.0, 1.0))
    with pytest.raises(InferenceUnavailableError):
        triton.infer(batch)
    clock.advance(1.0)
    triton.short_rate = 1.0
    with pytest.raises(InferenceRejectedError, match="model returned"):
        triton.infer(batch)
    with pytest.raises(NotFoundError):
        fetcher.load(uri_of("missing", 3))


def test_the_scheduler_picks_ready_tasks_from_the_seed() -> None:
    def order(seed: int) -> list[int]:
        clock = VirtualClock()
        sched = Scheduler(clock, random.Random(seed))
        pool = DeterministicExecutor(sched, "io")
        ran: list[int] = []
        futures = [pool.submit(ran.append, i) for i in range(8)]
        sched.run_until(1.0)
        assert all(f.done() for f in futures)
        return ran

    assert order(1) == order(1)
    assert len({tuple(order(s)) for s in range(6)}) > 1
    clock = VirtualClock()
    sched = Scheduler(clock, random.Random(0))
    late = DeterministicExecutor(sched, "late", latency=lambda: 2.0).submit(lambda: "x")
    clock.sleep(1.0)
    assert not late.done()
    clock.sleep(1.0)
    assert late.result() == "x" and clock.monotonic() == 2.0


def test_a_write_is_checked_against_a_read_taken_after_it_was_submitted() -> None:
    """The writer reads the stored versions after it took its operations, so an operation that
    arrives after one turn's read waits for the next turn. The simulation once checked it against
    the older read: an older version landed over a row another process had written meanwhile
    (10 of 10 000 seeds broke ``stored_versions_never_go_back`` that way, not the engine)."""
    clock = VirtualClock()
    sched = Scheduler(clock, random.Random(0))
    milvus = FakeMilvus(clock, random.Random(0))
    milvus.create_collection("c")
    results: list[WriteResult] = []

    def writer_of(name: str, latency_s: float) -> MilvusWriter:
        view = MilvusView(milvus)

        def start(target: Callable[[], None], _name: str) -> WriterThread:
            return WriterThread(target.__self__, view, sched, name, lambda: latency_s)  # type: ignore[attr-defined]

        writer = MilvusWriter(
            view, "c", on_results=results.extend, max_age_s=0.0, start_thread=start
        )
        writer.start()
        return writer

    def op(version: Version) -> WriteOp:
        row = {
            "id": "x",
            "kafka_ts": version.ts,
            "kafka_partition": 0,
            "kafka_offset": version.offset,
        }
        return WriteOp(version, "x", version, row)

    fast, slow = writer_of("fast", 0.1), writer_of("slow", 1.0)
    newer, older = Version(2_000, 0, 5), Version(1_000, 0, 3)
    fast.submit([op(newer)])
    start = clock.monotonic()
    sched.run_until(
        start + 0.5
    )  # the slow writer read the (empty) collection at 0 and writes at 1.0
    assert [Version.of_row(r) for r in milvus.rows("c")] == [newer]
    slow.submit([op(older)])  # after the slow writer's read, before its write
    sched.run_until(start + 3.0)

    assert [Version.of_row(r) for r in milvus.rows("c")] == [newer]
    assert (older, Outcome.SKIPPED_STALE) in [(r.token, r.outcome) for r in results]

"""The engine's components in-process, with fake edges: the dead-letter router across a
re-assignment, the backfill's rate share, fetch completions as events, the shared backoff."""

from __future__ import annotations

import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import structlog.testing
from confluent_kafka import KafkaError, TopicPartition

from consumer.backoff import Backoff
from consumer.engine.assignments import Assignments
from consumer.engine.committer import Committer
from consumer.engine.deadletters import DeadLetterRouter
from consumer.engine.events import (
    DeadLetterDelivered,
    Events,
    Fetched,
    FetchFailed,
)
from consumer.engine.flow import FlowControl
from consumer.engine.intake import Intake
from consumer.engine.ledger import InFlightLedger, RawRecord
from consumer.engine.plan import Plan
from consumer.engine.rebalance import Rebalance
from consumer.engine.runtime import SystemClock
from consumer.engine.stages import Stages
from consumer.fetch.exceptions import FetchFailed as FetchFailedError
from consumer.inference import ModelSpec
from consumer.observability.metrics import Metrics
from consumer.security import AuthFailureWatch
from consumer.settings import Settings
from schemas import ErrorType, ImageMessage, Stage, Version
from tests.simulation.triton import fake_preprocess
from tests.support.clock import ManualClock

KEY = ("t", 0)


class FakeProducer:
    """Records what is produced; ``poll`` reports every record delivered."""

    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []
        self._reports: list[Any] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})
        self._reports.append(kwargs["on_delivery"])

    def poll(self, timeout: float = -1) -> int:
        reports, self._reports = self._reports, []
        for report in reports:
            report(None, None)
        return len(reports)

    def flush(self, timeout: float = -1) -> int:
        return self.poll()


def _admit(ledger: InFlightLedger, offset: int) -> Any:
    ref = ledger.admit(KEY, offset)
    assert ref is not None
    ledger.record(ref, RawRecord(b"k", b"not json", 0, None, Version(1, 0, offset)))
    return ref


def _drain(router: DeadLetterRouter, events: Events) -> list[Any]:
    router.poll()
    delivered = []
    while (event := events.take()) is not None:
        assert isinstance(event, DeadLetterDelivered)
        if router.delivered(event.job):
            delivered.append(event.job.ref)
    return delivered


def test_a_dead_letter_delivered_before_a_reassignment_is_not_sent_again() -> None:
    """Revoked before its commit (the commit failed, or the partition was lost) and given back,
    a partition is read again from its last commit: a record this process already delivered to
    the dead-letter topic is finished without a second copy (before: it was sent again)."""
    ledger, events, producer = InFlightLedger(), Events(), FakeProducer()
    router = DeadLetterRouter(
        producer,
        topic="dlq",
        refused_timeout_s=60,
        ledger=ledger,
        events=events,
        metrics=Metrics(),
        clock=SystemClock(),
        rng=random.Random(0),
    )
    ledger.advance(KEY)
    ref = _admit(ledger, 3)
    assert not router.route(ref, Stage.PARSE, ErrorType.INVALID_JSON, "bad")
    assert _drain(router, events) == [ref]
    ledger.retire(ref)
    # lost before any commit: forgotten, then assigned again and read from offset 3 again
    ledger.forget([KEY])
    router.forget([KEY])
    ledger.advance(KEY)
    again = _admit(ledger, 3)
    assert router.route(again, Stage.PARSE, ErrorType.INVALID_JSON, "bad"), "finished at once"
    assert len(producer.produced) == 1, "delivered once, never sent again"
    assert router.pending == 0
    # once committed past it, the offset is forgotten (a later replay dead-letters it again)
    router.committed({KEY: 4})
    ledger.retire(again)
    ledger.forget([KEY])
    ledger.advance(KEY)
    third = _admit(ledger, 3)
    assert not router.route(third, Stage.PARSE, ErrorType.INVALID_JSON, "bad")
    assert len(producer.produced) == 2


def test_a_dead_letter_of_a_forgotten_partition_is_dropped_from_the_pending_count() -> None:
    ledger, events, producer = InFlightLedger(), Events(), FakeProducer()
    router = DeadLetterRouter(
        producer,
        topic="dlq",
        refused_timeout_s=60,
        ledger=ledger,
        events=events,
        metrics=Metrics(),
        clock=SystemClock(),
        rng=random.Random(0),
    )
    ledger.advance(KEY)
    ref = _admit(ledger, 0)
    router.route(ref, Stage.PARSE, ErrorType.INVALID_JSON, "bad")
    job = producer.produced[0]["on_delivery"].args[0]
    router.failed(job, None, "broker down")  # waits for a resend
    assert router.pending == 1
    router.forget([KEY])
    assert router.pending == 0, "a drain must not wait for a forgotten partition's resend"


class _AssignConsumer:
    """What ``Rebalance.on_assign`` / ``on_revoke`` call on the consumer."""

    def __init__(self) -> None:
        self.assigned: list[tuple[str, int]] = []

    def committed(self, partitions: list[Any], timeout: float = -1) -> list[Any]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in partitions]

    def incremental_assign(self, partitions: list[Any]) -> None:
        self.assigned += [(tp.topic, tp.partition) for tp in partitions]

    def get_watermark_offsets(self, tp: Any, timeout: float = -1, cached: bool = False) -> Any:
        return (0, 100)

    def pause(self, partitions: list[Any]) -> None:
        pass

    def resume(self, partitions: list[Any]) -> None:
        pass


def _committer(
    consumer: Any,
    ledger: InFlightLedger,
    assignments: Assignments,
    plan: Plan | None,
    metrics: Metrics,
    clock: Any,
) -> Committer:
    return Committer(
        consumer,
        topic="t",
        ledger=ledger,
        assignments=assignments,
        plan=plan,
        metrics=metrics,
        clock=clock,
        commit_interval_s=1.0,
        on_committed=lambda committed: None,
    )


def test_a_backfill_worker_takes_its_share_of_the_plans_rate_after_each_assignment() -> None:
    settings = Settings(topic="t", group="g", collection="c", until_end=True, max_rate=100.0)
    plan = Plan("p", ends={0: 10, 1: 10, 2: 10, 3: 10}, starts={}, max_rate=40.0)
    ledger, assignments, metrics, clock = InFlightLedger(), Assignments(), Metrics(), SystemClock()
    flow = FlowControl(
        max_rows_in_flight=100,
        resume_fraction=0.5,
        rate=100.0,
        burst=10,
        clock=clock,
        metrics=metrics,
    )
    consumer = _AssignConsumer()
    rebalance = Rebalance(
        settings,
        assignments=assignments,
        ledger=ledger,
        flow=flow,
        committer=_committer(consumer, ledger, assignments, plan, metrics, clock),
        router=DeadLetterRouter(
            FakeProducer(),
            topic="dlq",
            refused_timeout_s=60,
            ledger=ledger,
            events=Events(),
            metrics=metrics,
            clock=clock,
            rng=random.Random(0),
        ),
        metrics=metrics,
        clock=clock,
        plan=plan,
        start=None,
        bounded=True,
        pump=lambda: None,
        abort=threading.Event(),
        on_fatal=pytest.fail,
    )
    rebalance.on_assign(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])
    assert flow.limiter.rate == pytest.approx(20.0)  # 2 of 4 partitions of 40/s
    rebalance.on_assign(consumer, [TopicPartition("t", 2)])
    assert flow.limiter.rate == pytest.approx(30.0)
    rebalance.on_lost(consumer, [TopicPartition("t", 0), TopicPartition("t", 2)])
    assert flow.limiter.rate == pytest.approx(10.0)


def _stages(io: Any, events: Events, ledger: InFlightLedger, fetcher: Any) -> Stages:
    return Stages(
        io=io,
        infer=io,
        fetcher=fetcher,
        preprocessor=fake_preprocess,
        inference=None,  # type: ignore[arg-type]
        spec=ModelSpec("m", "1", "IMAGE", "FP32", "EMBEDDING", 3, 64, "python"),
        submit=lambda ops: None,
        ledger=ledger,
        events=events,
        metrics=Metrics(),
        clock=SystemClock(),
        rng=random.Random(0),
        halt=threading.Event(),
        batch_size=4,
        infer_batch_size=4,
        infer_threads=1,
        canvas_px=64,
        max_pixels=10**6,
    )


def test_fetch_completions_arrive_as_events_through_done_callbacks() -> None:
    class Fetcher:
        def fetch(self, uri: str) -> bytes:
            if "bad" in uri:
                raise FetchFailedError("no such image")
            raise RuntimeError("boom")  # an unexpected failure: corrupt image

        def close(self) -> None:
            pass

    ledger, events = InFlightLedger(), Events()
    with ThreadPoolExecutor(2) as pool:
        stages = _stages(pool, events, ledger, Fetcher())
        ledger.advance(KEY)
        first, second = _admit(ledger, 0), _admit(ledger, 1)
        stages.fetch(first, ImageMessage.upsert("http://x/bad.jpg", id="a"))
        stages.fetch(second, ImageMessage.upsert("http://x/other.jpg", id="b"))
    seen = []
    while (event := events.take()) is not None:
        seen.append(event)
    assert sorted((e.ref.offset, type(e).__name__) for e in seen) == [
        (0, "FetchFailed"),
        (1, "FetchFailed"),
    ]
    by_offset = {e.ref.offset: e for e in seen if isinstance(e, FetchFailed)}
    assert by_offset[1].error_type is ErrorType.CORRUPT_IMAGE
    assert stages.busy, "the main thread has not taken the events yet"
    for _ in seen:
        stages.fetch_ended()
    assert not stages.busy


def test_a_cancelled_fetch_is_reported_so_nothing_waits_for_it() -> None:
    class Pool:
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.cancel()
            return future

        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            pass

    ledger, events = InFlightLedger(), Events()
    stages = _stages(Pool(), events, ledger, None)
    ledger.advance(KEY)
    stages.fetch(_admit(ledger, 0), ImageMessage.upsert("http://x/a.jpg", id="a"))
    event = events.take()
    assert type(event).__name__ == "FetchCancelled"
    assert not isinstance(event, Fetched)


def test_backoff_doubles_up_to_its_cap_with_seeded_jitter() -> None:
    backoff = Backoff(initial=0.1, cap=1.0, start=1, jitter=0.5, random=random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    highs = [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert all(h / 2 <= d <= h for d, h in zip(delays, highs, strict=True))
    again = Backoff(initial=0.1, cap=1.0, start=1, jitter=0.5, random=random.Random(7))
    assert [again.next_delay() for _ in range(6)] == delays, "the same seed, the same delays"
    backoff.reset()
    assert backoff.next_delay() <= 0.2
    assert Backoff(initial=0.5, cap=5.0, jitter=0.0).next_delay() == 0.5


class _CommitsConsumer:
    """The group's commits of every partition, as ``committed()`` returns them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.at = {p: plan.starts.get(p, 0) for p in plan.ends}
        self.asked: list[list[int]] = []

    def committed(self, partitions: list[Any], timeout: float = -1) -> list[Any]:
        self.asked.append([tp.partition for tp in partitions])
        return [
            TopicPartition(
                "t", tp.partition, self.at[tp.partition], self.plan.metadata(tp.partition)
            )
            for tp in partitions
        ]


def test_a_backfills_remaining_messages_are_reported_every_15_s_of_the_runtime_clock() -> None:
    """From the commits of *all* the plan's partitions (other workers' too), not only the
    assigned ones; at most every 15 s of the runtime clock."""
    from consumer.engine.committer import REMAINING_INTERVAL_S

    plan = Plan("p", ends={0: 10, 1: 20, 2: 30}, starts={0: 0, 1: 5, 2: 10})
    consumer, clock, metrics = _CommitsConsumer(plan), ManualClock(), Metrics()
    assignments = Assignments()
    assignments.assign(("t", 0), 1)  # this worker holds one partition of three
    committer = _committer(consumer, InFlightLedger(), assignments, plan, metrics, clock)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("image_embedder_backfill_remaining_messages")

    committer.report_remaining()
    assert consumer.asked == [[0, 1, 2]]
    assert gauge() == 10 + 15 + 20
    consumer.at = {0: 10, 1: 12, 2: 30}  # another worker finished partition 2
    clock.now += REMAINING_INTERVAL_S - 1
    committer.report_remaining()
    assert len(consumer.asked) == 1, "not before 15 s"
    clock.now += 1
    committer.report_remaining()
    assert gauge() == 8
    assert REMAINING_INTERVAL_S == 15.0


class _ErrorMessage:
    """A poll's error event, as ``consume()`` hands it out."""

    def __init__(self, err: KafkaError) -> None:
        self._err = err

    def error(self) -> KafkaError:
        return self._err

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return -1001


def test_an_auth_failure_seen_in_a_poll_is_reported_once_by_the_watch() -> None:
    """The watch logs its own line for an authentication failure (with the retry metric); the
    generic "kafka consume error" line is for every other error only."""
    auth = KafkaError(-169, "sasl_ssl://b:9094/bootstrap: SASL authentication error: failed")
    down = KafkaError(-195, "127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: refused")
    causes: list[str] = []
    intake = Intake(
        consumer=None,  # type: ignore[arg-type]  # errors never reach the consumer
        assignments=Assignments(),
        ledger=InFlightLedger(),
        flow=None,  # type: ignore[arg-type]  # nothing is taken in
        stages=None,  # type: ignore[arg-type]
        submit=lambda ops: pytest.fail("nothing to write"),
        dead_letter=lambda *args: pytest.fail("nothing to dead-letter"),
        auth_watch=AuthFailureWatch(30, lambda: 0.0, on_retry=lambda c, _line: causes.append(c)),
        metrics=Metrics(),
        clock=SystemClock(),
        allowed_schemes=("http",),
    )
    with structlog.testing.capture_logs() as logs:
        intake.take_in([_ErrorMessage(auth), _ErrorMessage(down)])  # type: ignore[list-item]
    generic = [e["error"] for e in logs if e["event"] == "kafka consume error"]
    assert generic == [str(down)]
    assert causes == ["authentication"]


def test_the_handler_notes_when_the_last_message_was_done() -> None:
    """Pass: ``last_retired_at`` is the clock's reading at the latest retirement (a write
    acknowledged here), None before any; an outcome for a message already retired moves it
    not. The run summary's ``busy_seconds`` ends there."""
    from consumer.engine.events import WriteAcknowledged
    from consumer.engine.handler import EventHandler
    from consumer.engine.outcome import RunSummary
    from consumer.observability.metrics import Outcome
    from consumer.sink import WriteResult

    ledger, events, clock = InFlightLedger(), Events(), ManualClock(500.0)
    summary = RunSummary()
    handler = EventHandler(
        events=events,
        ledger=ledger,
        stages=_stages(ThreadPoolExecutor(1), events, ledger, None),
        router=None,  # type: ignore[arg-type]
        summary=summary,
        metrics=Metrics(),
        clock=clock,
        live=True,
        on_retired=lambda: None,
    )
    ledger.advance(KEY)
    first, second = _admit(ledger, 0), _admit(ledger, 1)
    assert handler.last_retired_at is None
    clock.now = 503.0
    handler.handle(WriteAcknowledged((WriteResult(first, Outcome.INGESTED),)))
    clock.now = 507.5
    handler.handle(WriteAcknowledged((WriteResult(second, Outcome.INGESTED),)))
    clock.now = 520.0
    handler.handle(WriteAcknowledged((WriteResult(first, Outcome.INGESTED),)))  # retired before
    assert handler.last_retired_at == 507.5
    assert summary.ingested == 2


def test_run_times_from_the_first_message_to_the_last_one_done() -> None:
    """Pass: start-up ends at the first message polled; busy time runs from it to the last
    message done (the drain's wait after it is not work); a run that saw no message has none."""
    from consumer.engine.outcome import RunSummary

    summary = RunSummary(ingested=300)
    summary.set_times(started=10.0, first_message=12.5, last_done=17.5, ended=20.0)
    assert (summary.seconds, summary.startup_seconds, summary.busy_seconds) == (10.0, 2.5, 5.0)
    assert summary.images_per_second == 40.0  # ingested over first message to the end
    idle = RunSummary()
    idle.set_times(started=10.0, first_message=None, last_done=None, ended=14.0)
    assert (idle.startup_seconds, idle.busy_seconds, idle.images_per_second) == (4.0, 0.0, 0.0)


def test_the_stages_say_once_when_everything_was_handed_on() -> None:
    """Pass: ``went_idle()`` is True on the first look after the last piece of work left the
    stages (here a failed fetch taken by the main thread), and only then: not while work is
    under way, not again while idle."""

    class Fetcher:
        def fetch(self, uri: str) -> bytes:
            raise FetchFailedError("no such image")

        def close(self) -> None:
            pass

    ledger, events = InFlightLedger(), Events()
    with ThreadPoolExecutor(1) as pool:
        stages = _stages(pool, events, ledger, Fetcher())
        assert not stages.went_idle()  # never busy yet
        ledger.advance(KEY)
        stages.fetch(_admit(ledger, 0), ImageMessage.upsert("http://x/a.jpg", id="a"))
        assert not stages.went_idle()  # a fetch under way
    assert isinstance(events.take(), FetchFailed)
    stages.fetch_ended()
    assert stages.went_idle()
    assert not stages.went_idle()  # once per time it goes idle

"""The consumer engine: an orchestrator of components that each own one kind of state.

- ``InFlightLedger`` (ledger.py): every message between poll and retirement (raw records,
  offset tracker, latest-version registry, assignment generations);
- ``Assignments`` (assignments.py): one ``PartitionState`` per partition;
- ``Stages`` (stages.py): I/O pool, decoded-square buffer, JAX batching, inference pool;
- ``DeadLetterRouter`` (deadletters.py): dead letters until the broker acknowledges them;
- ``FlowControl`` (flow.py): the rate limit and pause/resume at the rows-in-flight cap;
- ``Committer`` (committer.py): the group's commits;
- ``Intake`` (intake.py): a poll's records into the ledger and the stages (or marked not taken);
- ``EventHandler`` (handler.py): the workers' and the broker's events; outcomes, retirements;
- ``Rebalance`` (rebalance.py): the group's assign, revoke and lost callbacks;
- ``GroupEnd`` (groupend.py): when a bounded run's whole group is done;
- ``MilvusWriter`` (consumer/sink/writer.py): grouped upserts and deletes on its own thread.

The engine itself sets them up (``setup``), runs the loop (``step``: pump, flow control, one
poll, a commit when due, the bounded end) and stops in order: intake, drain, commit, close.

Threads: the main thread runs ``step()`` (the Kafka consumer, JAX, the ledger, every commit and
every dead-letter delivery report); the I/O and inference pools and the writer hand results back
as typed events (events.py) on one queue, which ``step()`` drains between polls. Signal handlers
only set flags. Offsets are committed only up to the contiguous watermark of finished messages
(written to Milvus or acknowledged by the dead-letter topic), whatever order the work finishes in.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer import preflight
from consumer.engine import assembly, crash
from consumer.engine import plan as backfill_plan
from consumer.engine.assignments import Assignments
from consumer.engine.committer import Committer
from consumer.engine.deadletters import DeadLetterRouter
from consumer.engine.events import (
    Events,
    PartitionKey,
    Ref,
)
from consumer.engine.exceptions import EngineFatalError
from consumer.engine.flow import FlowControl
from consumer.engine.groupend import GroupEnd
from consumer.engine.handler import EventHandler
from consumer.engine.intake import Intake
from consumer.engine.ledger import InFlightLedger
from consumer.engine.outcome import RunOutcome, RunSummary
from consumer.engine.plan import Plan
from consumer.engine.rebalance import Rebalance
from consumer.engine.runtime import (
    Edges,
    InferenceLike,
    KafkaConsumerLike,
    MilvusLike,
    Runtime,
    SystemClock,
)
from consumer.engine.stages import Stages
from consumer.engine.wiring import (
    consumer_conf,
    fetch_policy,
    triton_endpoint,
)
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics, RetryOperation
from consumer.security import AuthFailureWatch
from consumer.settings import Settings, parse_start
from consumer.sink import (
    MilvusWriter,
)

__all__ = ["Engine", "Ref", "RunOutcome", "RunSummary"]

log = get_logger("consumer.engine")


class Engine:
    """Runs the consumer until stopped, or until the end bound of a bounded run."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        runtime: Runtime | None = None,
        edges: Edges | None = None,
    ) -> None:
        if not settings.topic or not settings.group or not settings.collection:
            raise EngineFatalError("run needs --topic, --group and --collection")
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.summary = RunSummary()
        self._on_progress = on_progress
        self._runtime = runtime  # None: the real one, built at set-up (it starts threads)
        self._edges = edges or Edges.real()
        self._clock = runtime.clock if runtime is not None else SystemClock()
        self._events = Events()
        self._ledger = InFlightLedger()
        self._assignments = Assignments()
        self._flow = FlowControl(
            max_rows_in_flight=settings.max_rows_in_flight,
            resume_fraction=settings.resume_fraction,
            rate=settings.max_rate,
            burst=settings.batch_size,
            clock=self._clock,
            metrics=self.metrics,
        )
        self._stop = threading.Event()
        self._abort = threading.Event()
        # set on a second SIGINT or when the drain gives up: inference stops retrying
        self._halt_inference = threading.Event()
        self._drain_timed_out = False
        self._fatal: BaseException | None = None
        self._reached_end = False
        self._sigint_count = 0
        self._start_spec = parse_start(settings.start_from) if settings.start_from else None
        self._bounded = backfill_plan.bounded(settings)
        # records of a bounded run or a replay are old by design: kept out of the live freshness
        self._live = not (self._bounded or settings.start_from is not None)
        self._plan: Plan | None = None
        self._group_end: GroupEnd | None = None  # a bounded run: the end of the whole group's
        self._auth_watch = AuthFailureWatch(
            settings.auth_failure_timeout_s,
            clock=self._clock.monotonic,
            on_retry=self._auth_retry,
            conf=settings.kafka_common(),
        )
        self.collection_name = ""
        # made at set-up
        self._consumer: KafkaConsumerLike | None = None
        self._writer: MilvusWriter | None = None
        self._router: DeadLetterRouter | None = None
        self._stages: Stages | None = None
        self._committer: Committer | None = None
        self._handler: EventHandler | None = None
        self._intake: Intake | None = None
        self._rebalance: Rebalance | None = None
        self._triton: InferenceLike | None = None
        self._milvus: MilvusLike | None = None
        self._closers: list[Callable[[], None]] = []  # the fetcher's, Triton's

    # ================================================================================ set-up
    def setup(self) -> None:
        """Connect, validate the model and the collection, warm the JAX buckets, subscribe.
        Main thread; the Kafka checks first, so a misconfiguration fails before the slow work."""
        s = self.settings
        edges = self._edges
        admin = edges.admin(s.kafka_common())  # one admin client for the start-up checks
        preflight.check_kafka(edges.admin, admin, s)
        endpoint = triton_endpoint(s)
        spec = edges.model_spec(endpoint, s, self._stop)
        self._triton = triton = edges.inference(endpoint, spec)
        self._closers.append(triton.close)
        self._milvus = milvus = edges.milvus(s)
        self.collection_name = assembly.open_collection(milvus, s, spec, self.metrics)
        if self._runtime is None:
            self._runtime = Runtime.system(s)
        runtime = self._runtime
        fetcher = edges.fetcher(
            fetch_policy(s), lambda: self.metrics.record_retry(RetryOperation.FETCH)
        )
        self._closers.insert(0, fetcher.close)  # closed even if the rest of set-up fails
        workers = assembly.open_workers(
            s,
            edges,
            runtime,
            assembly.Shared(
                self._ledger, self._events, self.metrics, self._halt_inference, self._on_kafka_error
            ),
            milvus=milvus,
            collection=self.collection_name,
            spec=spec,
            triton=triton,
            fetcher=fetcher,
            topic_configs=preflight.topic_configs(admin, [s.topic or "", s.dead_letter_topic]),
        )
        self._writer, self._router, self._stages = workers.writer, workers.router, workers.stages
        consumer = self._open_consumer(runtime)
        self._subscribe(consumer, runtime)

    def _open_consumer(self, runtime: Runtime) -> KafkaConsumerLike:
        """The Kafka consumer, a backfill's plan (made once, resumed), the committer and, for a
        bounded run, the group's end."""
        s = self.settings
        self._consumer = consumer = self._edges.kafka_consumer(
            consumer_conf(
                s,
                bounded=self._bounded,
                on_error=self._on_kafka_error,
                on_stats=self.metrics.update_from_librdkafka_stats,
            )
        )
        if backfill_plan.applies(s):
            self._plan = self._prepare_plan(consumer)
        self._committer = Committer(
            consumer,
            topic=s.topic or "",
            ledger=self._ledger,
            assignments=self._assignments,
            plan=self._plan,
            metrics=self.metrics,
            clock=runtime.clock,
            commit_interval_s=s.commit_interval_s,
            on_committed=self._on_committed,
        )
        if self._bounded:
            self._group_end = GroupEnd.resolve(
                consumer, s.topic or "", runtime.clock, plan=self._plan, until=s.until
            )
        return consumer

    def _subscribe(self, consumer: KafkaConsumerLike, runtime: Runtime) -> None:
        """The main thread's owners of intake, outcomes and rebalances; then the subscription."""
        s = self.settings
        stages, router, writer, committer = (
            self._stages,
            self._router,
            self._writer,
            self._committer,
        )
        assert stages is not None and router is not None
        assert writer is not None and committer is not None
        self._handler = handler = EventHandler(
            events=self._events,
            ledger=self._ledger,
            stages=stages,
            router=router,
            summary=self.summary,
            metrics=self.metrics,
            clock=runtime.clock,
            live=self._live,
            on_retired=self._progress,
        )
        self._intake = Intake(
            consumer=consumer,
            assignments=self._assignments,
            ledger=self._ledger,
            flow=self._flow,
            stages=stages,
            submit=writer.submit,
            dead_letter=handler.dead_letter,
            auth_watch=self._auth_watch,
            metrics=self.metrics,
            clock=runtime.clock,
            allowed_schemes=s.allowed_schemes,
        )
        self._rebalance = rebalance = Rebalance(
            s,
            assignments=self._assignments,
            ledger=self._ledger,
            flow=self._flow,
            committer=committer,
            router=router,
            metrics=self.metrics,
            clock=runtime.clock,
            plan=self._plan,
            start=self._start_spec,
            bounded=self._bounded,
            pump=self._pump,
            abort=self._abort,
            on_fatal=self._set_fatal,
        )
        consumer.subscribe(
            [s.topic or ""],
            on_assign=rebalance.on_assign,
            on_revoke=rebalance.on_revoke,
            on_lost=rebalance.on_lost,
        )

    def _set_fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc

    def _prepare_plan(self, consumer: KafkaConsumerLike) -> Plan:
        plan, made = backfill_plan.prepare(consumer, self.settings)
        log.info(
            "backfill plan made" if made else "backfill plan resumed",
            plan=plan.plan_id,
            partitions=len(plan.ends),
            messages=plan.messages if made else None,
            ends={str(p): end for p, end in sorted(plan.ends.items())},
        )
        return plan

    # ============================================================================ main loop
    def run(self) -> RunSummary:
        """Run until a stop signal, a fatal error or the end bound; returns the summary."""
        self._install_signals()
        started = self._clock.monotonic()
        try:
            self.setup()
            while self.step():
                pass
            if not self._abort.is_set() and self._fatal is None:
                self._drain()
        finally:
            self._close()
            self.summary.set_times(
                started=started,
                first_message=self._intake.first_message_at if self._intake else None,
                last_done=self._handler.last_retired_at if self._handler else None,
                ended=self._clock.monotonic(),
            )
            self.summary.outcome = self._outcome()
        if self._fatal is not None:
            raise EngineFatalError(str(self._fatal)) from self._fatal
        return self.summary

    def finish(self) -> RunOutcome | None:
        """What ``run`` does after the loop, for a caller that drives ``step()`` itself: drain
        (unless aborted or fatal), close; the outcome, or None after a fatal error."""
        try:
            if not self._abort.is_set() and self._fatal is None and self._consumer is not None:
                self._drain()
        finally:
            self._close()
        self.summary.outcome = self._outcome()
        return None if self._fatal is not None else self.summary.outcome

    def step(self) -> bool:
        """One iteration of the main loop: pump the events, flow control, one poll, a commit
        when due, the bounded run's end. False once the loop should end (stop, fatal, end)."""
        if self._stop.is_set() or self._fatal is not None:
            return False
        consumer, committer = self._consumer, self._committer
        assert consumer is not None and committer is not None
        s = self.settings
        self.metrics.tick()
        self._pump()
        in_flight = self._ledger.in_flight()
        assigned = self._assignments.assigned()
        self._flow.apply(in_flight, consumer, self._assignments.unreached(), len(assigned))
        budget = min(s.batch_size, self._flow.limiter.available())
        if budget < 1:
            self._clock.sleep(min(s.poll_timeout_s, self._flow.limiter.wait_s()))
            return self._fatal is None
        if self._nothing_to_poll():
            self._wait_for_work()
            timeout = 0.0  # the poll only serves the group's callbacks now
        else:
            busy = self._stages is not None and self._stages.busy
            timeout = 0.005 if busy else s.poll_timeout_s
        room = self._flow.room(in_flight)
        messages = consumer.consume(num_messages=min(budget, room), timeout=timeout)
        if (line := self._auth_watch.fatal()) is not None and self._fatal is None:
            self._fatal = EngineFatalError(line)
        assert self._intake is not None
        if self._fatal is not None:  # e.g. set by a callback inside this very poll
            self._intake.not_taken(messages)
            return False
        if messages:
            crash.crash_point("after_poll")
            self._intake.take_in(messages)
        committer.maybe_commit()
        committer.report_remaining()
        if self._bounded and self._bounded_run_complete():
            log.info("reached the end offsets", ends=self._assignments.ends_for_log())
            self._reached_end = True
            return False
        return True

    def _nothing_to_poll(self) -> bool:
        """No record can come from a poll now: the partitions are paused at the rows-in-flight
        cap, or a bounded run has read every assigned partition to its end."""
        if self._flow.paused:
            return True
        return (
            self._bounded and self._assignments.any_assigned() and not self._assignments.unreached()
        )

    def _wait_for_work(self) -> None:
        """Sleep until an event lets the main thread act (a task's end, a write, enough decoded
        images for a batch), a partial batch is due, or the poll timeout passes (the group's
        callbacks, commits); a few milliseconds while dead letters wait for their delivery
        reports (served by polling the producer). Polling every 5 ms instead cost the main
        thread more CPU than all its other work on a busy core."""
        stages, router = self._stages, self._router
        assert stages is not None and router is not None
        wait = self.settings.poll_timeout_s
        if router.pending:
            wait = min(wait, 0.005)
        due = stages.dispatch_due_in()
        if due is not None:
            wait = min(wait, due)
        self._events.wait(self._clock, wait, fetched_enough=stages.fetched_to_act())

    def _bounded_run_complete(self) -> bool:
        """Every assigned partition read to its end, finished and committed, and the group's
        commits at the end of every other partition too (groupend.py: a member whose own
        partitions are done stays as a standby until then; one that holds none ends then)."""
        assignments, tracker = self._assignments, self._ledger.tracker
        if assignments.any_assigned():
            if not assignments.all_reached_and_idle(tracker.in_flight):
                return False
            if tracker.committable(assignments.assigned()):
                assert self._committer is not None
                self._committer.maybe_commit(force=True)
            if not assignments.bounded_run_complete(tracker.in_flight, tracker.committable):
                return False
        if self._group_end is None:
            return assignments.any_assigned()
        held = {p: end for (_, p), end in assignments.ends().items()}
        return self._group_end.complete(held)

    def _pump(self) -> None:
        """Everything but polling: dead-letter reports and resends, events, dispatch."""
        router, stages, handler = self._router, self._stages, self._handler
        assert router is not None and stages is not None and handler is not None
        router.poll()
        handler.drain()
        stages.dispatch()
        if stages.went_idle() and self._writer is not None:
            self._writer.write_now()  # nothing else is on its way: the rows need not wait
        if router.fatal is not None and self._fatal is None:
            self._fatal = router.fatal
        self.metrics.set_rows_in_flight(self._ledger.in_flight())

    def _outcome(self) -> RunOutcome:
        if self._abort.is_set():
            return RunOutcome.ABORTED
        if not self._bounded:
            return RunOutcome.STOPPED
        return RunOutcome.FINISHED if self._reached_end else RunOutcome.STOPPED_EARLY

    def request_stop(self) -> None:
        """Stop intake, drain, write, commit, close (what SIGTERM does)."""
        self._stop.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum: int, frame: Any) -> None:
            self._stop.set()

        def on_int(signum: int, frame: Any) -> None:
            self.interrupt()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)

    def interrupt(self) -> None:
        """What SIGINT does: the first stops like SIGTERM, the second aborts at once."""
        self._sigint_count += 1
        self._stop.set()
        if self._sigint_count >= 2:
            self._abort.set()
            self._halt_inference.set()

    # --- what a test or a simulation may read ------------------------------------------------
    @property
    def fatal(self) -> BaseException | None:
        return self._fatal

    def assigned(self) -> list[PartitionKey]:
        return self._assignments.assigned()

    def ends(self) -> dict[PartitionKey, int]:
        return self._assignments.ends()

    def rows_in_flight(self) -> int:
        return self._ledger.in_flight()

    def bookkeeping(self) -> dict[str, int]:
        """What the engine still holds per kind of state (all zero once its work is done)."""
        return {
            **self._ledger.sizes(),
            **(self._router.sizes() if self._router is not None else {}),
            **(self._stages.sizes() if self._stages is not None else {}),
            "writer_backlog": self._writer.backlog if self._writer is not None else 0,
            "events": len(self._events),
        }

    # ============================================================================ progress
    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.summary.done(), self._assignments.total_count())

    def _on_committed(self, committed: dict[PartitionKey, int]) -> None:
        self._auth_watch.ok()  # the group coordinator answered: access works again
        for (topic, part), off in committed.items():
            self.summary.committed[f"{topic}:{part}"] = off
        if self._router is not None:
            self._router.committed(committed)

    # ============================================================================ shutdown
    def _drain(self) -> None:
        """Stop intake, finish what is in flight (bounded), then commit."""
        consumer, router, committer = self._consumer, self._router, self._committer
        intake = self._intake
        if consumer is None or router is None or committer is None or intake is None:
            return
        assigned = self._assignments.assigned()
        if assigned:
            consumer.pause([TopicPartition(t, p) for t, p in assigned])
        deadline = self._clock.monotonic() + self.settings.drain_timeout_s
        while (
            self._clock.monotonic() < deadline
            and not self._abort.is_set()
            and (self._ledger.in_flight() or router.pending)
        ):
            self._pump()
            # the group's callbacks run in consume(); paused, it hands out nothing normally
            intake.not_taken(consumer.consume(num_messages=1, timeout=0.01))
        if self._ledger.in_flight():
            self._halt_inference.set()  # e.g. Triton down: stop retrying, the pool can stop
            self._drain_timed_out = True  # stuck work (a held fetch) must not hold the exit
            log.warning(
                "drain timed out; uncommitted work will be redone after restart",
                rows_in_flight=self._ledger.in_flight(),
            )
        committer.commit(self._assignments.assigned())

    def _close(self) -> None:
        if self._rebalance is not None:  # consumer.close() revokes: nothing can finish any more
            self._rebalance.closing()
        self._halt_inference.set()
        if self._writer is not None:
            if self._abort.is_set():
                self._writer.abort()
            else:
                self._writer.close(self.settings.drain_timeout_s)
                if self._handler is not None:
                    self._handler.drain()
        if self._consumer is not None:
            if not self._abort.is_set() and self._committer is not None:
                self._committer.commit(self._assignments.assigned())
            with contextlib.suppress(Exception):
                self._consumer.close()
        if self._router is not None:
            self._router.flush(10)
        wait = not (self._abort.is_set() or self._drain_timed_out or self._fatal is not None)
        if self._runtime is not None:
            for pool in (self._runtime.io_executor, self._runtime.infer_executor):
                pool.shutdown(wait=wait, cancel_futures=True)
        for close in self._closers:
            close()

    # ============================================================================ helpers
    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = KafkaException(err)
        if self._auth_watch.observe(err) is None:  # an auth failure logs its own line
            log.warning("kafka error", error=str(err))

    def _auth_retry(self, cause: str, line: str) -> None:
        """An authentication or authorization failure during the run: retried (librdkafka
        reconnects) until ``--auth-failure-timeout-s``, then the run exits 1 with ``line``."""
        self.metrics.record_retry(RetryOperation.KAFKA_AUTH)
        log.warning("kafka access refused; retrying", cause=cause, error=line)

    def readiness(self) -> dict[str, bool | str]:
        """Checks for /readyz (called from the health server's thread)."""
        checks: dict[str, bool | str] = {"assigned": self._assignments.any_assigned()}
        checks["triton"] = bool(self._triton and self._triton.is_ready())
        try:
            checks["milvus"] = bool(
                self._milvus is not None and self._milvus.list_collections() is not None
            )
        except Exception as exc:
            checks["milvus"] = f"unreachable: {type(exc).__name__}"
        return checks

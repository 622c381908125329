"""The group's rebalance callbacks, served on the main thread inside ``consume()``.

Guarantees:
- an assigned partition gets a new generation before anything of it is read, is positioned
  (``--from``, a plan's start, the group's commit) and, in a bounded run, gets its end; a
  failure there makes the run fatal instead of reading from a wrong place;
- a revoked partition's work finishes (bounded by the drain timeout) and is committed before it
  goes, unless the run is aborting or closing (then nothing can finish any more);
- a lost partition is dropped at once: its uncommitted work is redone by its new owner, and
  late results of the old generation are ignored (never written, never committed);
- a backfill with a total rate takes the plan's share for the partitions held after each change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from confluent_kafka import TopicPartition

from consumer.engine.assignments import Assignments
from consumer.engine.committer import Committer
from consumer.engine.deadletters import DeadLetterRouter
from consumer.engine.events import PartitionKey
from consumer.engine.flow import FlowControl
from consumer.engine.ledger import InFlightLedger
from consumer.engine.plan import Plan
from consumer.engine.runtime import Clock, KafkaConsumerLike
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics
from consumer.settings import Settings, StartPosition

log = get_logger("consumer.engine")


class Rebalance:
    """``on_assign``, ``on_revoke`` and ``on_lost`` for ``consumer.subscribe``."""

    def __init__(
        self,
        settings: Settings,
        *,
        assignments: Assignments,
        ledger: InFlightLedger,
        flow: FlowControl,
        committer: Committer,
        router: DeadLetterRouter,
        metrics: Metrics,
        clock: Clock,
        plan: Plan | None,
        start: StartPosition | None,
        bounded: bool,
        pump: Callable[[], None],
        abort: threading.Event,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._settings = settings
        self._assignments = assignments
        self._ledger = ledger
        self._flow = flow
        self._committer = committer
        self._router = router
        self._metrics = metrics
        self._clock = clock
        self._plan = plan
        self._start = None if plan is not None else start  # a plan applied ``--from`` once
        self._bounded = bounded
        self._pump = pump
        self._abort = abort
        self._on_fatal = on_fatal
        self._closing = False

    def closing(self) -> None:
        """``consumer.close()`` is next: it revokes, but nothing can finish or start any more."""
        self._closing = True

    def on_assign(self, consumer: KafkaConsumerLike, partitions: list[TopicPartition]) -> None:
        if self._closing:  # served inside close(): the handle is going away, nothing to start
            return
        s = self._settings
        try:
            self._assignments.position(
                consumer, partitions, self._start, group=s.group, reset_offsets=s.reset_offsets
            )
        except Exception as exc:
            self._on_fatal(exc)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assignments.assign(key, self._ledger.advance(key))
        consumer.incremental_assign(partitions)
        if self._bounded:
            try:
                self._assignments.compute_ends(consumer, partitions, self._plan, s.until)
            except Exception as exc:
                self._on_fatal(exc)
        to_pause = [
            TopicPartition(tp.topic, tp.partition)
            for tp in partitions
            if self._flow.paused or self._assignments.is_reached((tp.topic, tp.partition))
        ]
        if to_pause:
            consumer.pause(to_pause)
            self._flow.report_paused(len(self._assignments.assigned()))
        self._share_rate()
        log.info("partitions assigned", partitions=[tp.partition for tp in partitions])

    def on_revoke(self, consumer: KafkaConsumerLike, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if not self._abort.is_set():
            if not self._closing:  # while closing nothing can finish any more: do not wait
                self._finish_in_flight(keys)
            self._committer.commit(keys)
        self._forget(keys)
        log.info("partitions revoked", partitions=[k[1] for k in keys])

    def on_lost(self, consumer: KafkaConsumerLike, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._forget(keys)
        log.warning(
            "partitions lost; their uncommitted work will be redone by the new owner",
            partitions=[k[1] for k in keys],
        )

    def _finish_in_flight(self, keys: list[PartitionKey]) -> None:
        """Let the work of ``keys`` finish (bounded by the drain timeout) before they go."""
        deadline = self._clock.monotonic() + self._settings.drain_timeout_s
        while self._clock.monotonic() < deadline and any(self._ledger.in_flight(k) for k in keys):
            self._pump()
            self._clock.sleep(0.005)

    def _forget(self, keys: list[PartitionKey]) -> None:
        self._ledger.forget(keys)
        for key in keys:
            self._assignments.forget(key, self._ledger.generations.current(key))
            self._metrics.forget_partition(key[0], key[1])
        self._router.forget(keys)
        self._share_rate()

    def _share_rate(self) -> None:
        """A backfill with a total rate: this worker takes its share for the plan's partitions
        it holds (kept while it holds none: nothing is read then)."""
        plan = self._plan
        if plan is None or plan.max_rate is None:
            return
        held = sum(1 for _, p in self._assignments.assigned() if p in plan.ends)
        if held:
            self._flow.set_rate(plan.rate_share(held))

"""The end of each message: the events the worker threads and the broker send back, each
message's outcome counted, its offset retired.

Guarantees (main thread only):
- a message is retired (its offset may commit) only on a write outcome from the writer
  (written, deleted, skipped as stale, superseded) or on a dead letter the broker acknowledged;
- an outcome for a message that is no longer current (its partition moved to another owner, or
  it was retired already) changes nothing;
- every retirement is counted once: in the run summary, the outcome metrics and the end-to-end
  freshness (live only for a live run's records that were never redriven).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from consumer.engine import crash
from consumer.engine.deadletters import DeadLetterRouter
from consumer.engine.events import (
    DeadLetterDelivered,
    DeadLetterFailed,
    Event,
    Events,
    FetchCancelled,
    Fetched,
    FetchFailed,
    InferenceDone,
    InputRefused,
    Ref,
    VectorsBad,
    WriteAcknowledged,
)
from consumer.engine.ledger import InFlightLedger
from consumer.engine.outcome import RunSummary
from consumer.engine.runtime import Clock
from consumer.engine.stages import Stages
from consumer.observability.metrics import EndToEndKind, Metrics, Outcome
from consumer.sink import WriteResult
from schemas import ErrorType, Stage


class EventHandler:
    """Turns the events on the engine's queue into retirements (and dead letters to send)."""

    def __init__(
        self,
        *,
        events: Events,
        ledger: InFlightLedger,
        stages: Stages,
        router: DeadLetterRouter,
        summary: RunSummary,
        metrics: Metrics,
        clock: Clock,
        live: bool,
        on_retired: Callable[[], None],
    ) -> None:
        self._events = events
        self._ledger = ledger
        self._stages = stages
        self._router = router
        self._summary = summary
        self._metrics = metrics
        self._clock = clock
        self._live = live
        self._on_retired = on_retired
        #: When the last message was retired (the clock's monotonic seconds); None before one.
        self.last_retired_at: float | None = None

    def drain(self) -> None:
        """Handle every event queued now."""
        while (event := self._events.take()) is not None:
            self.handle(event)

    def handle(self, event: Event) -> None:
        """One event from a worker thread or a delivery report."""
        stages, router = self._stages, self._router
        match event:
            case Fetched():
                stages.fetch_ended()
                if self._ledger.is_current(event.ref):
                    stages.ready(event)
            case FetchFailed(ref=ref, stage=stage, error_type=error_type, text=text):
                stages.fetch_ended()
                self.dead_letter(ref, stage, error_type, text)
            case FetchCancelled():
                stages.fetch_ended()
            case InputRefused(ref=ref, text=text):
                self.dead_letter(ref, Stage.INFER, ErrorType.MODEL_REJECTED, text)
            case VectorsBad(ref=ref, text=text):
                self.dead_letter(ref, Stage.NORMALIZE, ErrorType.INVALID_EMBEDDING, text)
            case InferenceDone():
                stages.infer_ended()
            case WriteAcknowledged(results=results):
                crash.crash_point("after_upsert")
                for result in results:
                    self._written(result)
            case DeadLetterDelivered(job=job):
                if router.delivered(job):
                    self._dead_lettered(job.ref, job.error_type)
            case DeadLetterFailed(job=job, error=error, text=text):
                router.failed(job, error, text)
            case _:
                assert_never(event)

    def dead_letter(self, ref: Ref, stage: Stage, error_type: ErrorType, text: str) -> None:
        """Send the original record to the dead-letter topic; its offset finishes on delivery
        (at once if this process delivered it before, under an earlier assignment)."""
        if self._router.route(ref, stage, error_type, text):
            self._dead_lettered(ref, error_type)

    def _written(self, result: WriteResult) -> None:
        """One write outcome: the message is durably handled."""
        ref: Ref = result.token
        if not self._ledger.is_current(ref):
            return
        summary = self._summary
        match result.outcome:
            case Outcome.INGESTED:
                summary.ingested += 1
            case Outcome.DELETED:
                summary.deleted += 1
            case Outcome.SKIPPED_STALE:
                summary.skipped_stale += 1
            case Outcome.SUPERSEDED:
                summary.superseded += 1
        self._metrics.record_outcome(result.outcome)
        self._observe_age(ref, EndToEndKind.WRITTEN)
        self._retire(ref)

    def _dead_lettered(self, ref: Ref, error_type: ErrorType) -> None:
        summary = self._summary
        summary.dead_lettered += 1
        key = str(error_type)
        summary.dead_letters_by_type[key] = summary.dead_letters_by_type.get(key, 0) + 1
        self._metrics.record_dead_letter(error_type)
        self._observe_age(ref, EndToEndKind.DEAD_LETTERED)
        self._retire(ref)

    def _observe_age(self, ref: Ref, kind: EndToEndKind) -> None:
        """Freshness: from the record's Kafka timestamp to its acknowledgement (now). A redriven
        record carries its first timestamp: it is never live."""
        raw = self._ledger.raw(ref)
        if raw is None:
            return
        live = self._live and raw.redrive_count == 0
        age = self._clock.time() - raw.version.ts / 1000
        self._metrics.observe_end_to_end(age, kind=kind, live=live)

    def _retire(self, ref: Ref) -> None:
        self._ledger.retire(ref)
        self.last_retired_at = self._clock.monotonic()
        self._on_retired()

"""Prometheus metrics of the consumer, held in one dedicated registry.

Conventions: base units (seconds, messages), ``_total`` counters, and no URIs or other
unbounded values in labels (a label value is a topic, a partition number or one of the fixed
sets below). The Grafana dashboard in the Helm chart queries these exact names.

Threading: prometheus-client metrics are thread-safe, so any thread may record. The lag and
uncommitted gauges are written by the main thread (statistics callback, offset tracker).
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from typing import Final

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumer.observability.exceptions import InvalidLabelError
from schemas.deadletter import ErrorType, Stage

PREFIX: Final = "image_embedder"

#: Stage duration buckets, 1 ms to 30 s.
STAGE_BUCKETS_SECONDS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: End-to-end (freshness) buckets, 50 ms to a day: live records land in the first ones, a replay's
#: or a backfill's (in their own series) in the last.
END_TO_END_BUCKETS_SECONDS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    21600.0,
    86400.0,
)
#: Micro-batch size buckets, in messages.
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Outcome(StrEnum):
    """What finally happened to one consumed message."""

    INGESTED = "ingested"  # row upserted into Milvus
    DELETED = "deleted"  # tombstone or delete message applied
    DEAD_LETTERED = "dead_lettered"  # acknowledged by the dead-letter topic
    SKIPPED_STALE = "skipped_stale"  # not newer than the row already written for its id
    SUPERSEDED = "superseded"  # a higher version of its id in flight won: nothing written for it


#: The stages whose duration is measured: the pipeline's stages (``schemas.Stage``, one enum for
#: where a message is and where it failed; parsing is not timed) and the commit.
COMMIT_STAGE: Final = "commit"
TIMED_STAGES: Final = (*(s.value for s in Stage if s is not Stage.PARSE), COMMIT_STAGE)


class EndToEndKind(StrEnum):
    """What acknowledged a record, for the end-to-end histogram."""

    WRITTEN = "written"  # its row upserted (or deleted) and acknowledged by Milvus
    DEAD_LETTERED = "dead_lettered"  # its dead-letter record acknowledged by the topic


class RetryOperation(StrEnum):
    """Operations that are retried after a transient failure."""

    TRITON = "triton"
    MILVUS = "milvus"
    FETCH = "fetch"
    KAFKA_COMMIT = "kafka_commit"
    DEAD_LETTER = "dead_letter"
    KAFKA_AUTH = "kafka_auth"


def package_version() -> str:
    """Installed version of the service, or ``0+unknown`` when run from a bare checkout."""
    try:
        return importlib.metadata.version("image-embedder")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _checked(value: str, allowed: type[StrEnum]) -> str:
    """Return ``value`` if it belongs to ``allowed``; label sets stay bounded by construction."""
    try:
        return allowed(value).value
    except ValueError:
        raise InvalidLabelError(
            f"{value!r} is not a {allowed.__name__}; expected one of {[m.value for m in allowed]}"
        ) from None


def _timed(stage: str) -> str:
    """``stage`` if its duration is measured (``TIMED_STAGES``)."""
    value = str(stage)
    if value not in TIMED_STAGES:
        raise InvalidLabelError(f"{value!r} is not a timed stage; expected one of {TIMED_STAGES}")
    return value


class Metrics:
    """Every metric the consumer exports, registered in ``registry``.

    Tests build one per test with a fresh :class:`CollectorRegistry`; the service builds one and
    serves ``registry`` on ``/metrics``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages_total = Counter(
            f"{PREFIX}_messages_total",
            "Consumed messages by final outcome.",
            ["outcome"],
            registry=r,
        )
        self.dead_letters_total = Counter(
            f"{PREFIX}_dead_letters_total",
            "Messages sent to the dead-letter topic, by error.type header.",
            ["error_type"],
            registry=r,
        )
        self.stage_duration_seconds = Histogram(
            f"{PREFIX}_stage_duration_seconds",
            "Duration of one pipeline stage for one micro-batch or message, in seconds.",
            ["stage"],
            buckets=STAGE_BUCKETS_SECONDS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            f"{PREFIX}_end_to_end_seconds",
            "From a record's Kafka timestamp to its acknowledgement (Milvus row or dead letter), "
            'in seconds; live="false" for bounded runs (backfills, replays) and redriven records.',
            ["kind", "live"],
            buckets=END_TO_END_BUCKETS_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Messages per consumed micro-batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.rows_in_flight = Gauge(
            f"{PREFIX}_rows_in_flight",
            "Messages consumed but not yet written or dead-lettered.",
            registry=r,
        )
        self.paused_partitions = Gauge(
            f"{PREFIX}_paused_partitions",
            "Assigned partitions currently paused for backpressure.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            f"{PREFIX}_consumer_lag",
            "Messages between the partition's end and the committed offset (librdkafka).",
            ["topic", "partition"],
            registry=r,
        )
        self.uncommitted_messages = Gauge(
            f"{PREFIX}_uncommitted_messages",
            "Messages between the highest written offset and the committed offset.",
            ["topic", "partition"],
            registry=r,
        )
        self.retries_total = Counter(
            f"{PREFIX}_retries_total",
            "Retries after a transient failure, by operation.",
            ["operation"],
            registry=r,
        )
        self.near_duplicates_total = Counter(
            f"{PREFIX}_near_duplicates_total",
            "Rows written flagged as near-duplicates of a stored original (none are dropped).",
            registry=r,
        )
        self.backfill_remaining_messages = Gauge(
            f"{PREFIX}_backfill_remaining_messages",
            "Messages of the group's backfill plan not yet committed, over all its partitions.",
            registry=r,
        )
        self.build_info = Gauge(
            f"{PREFIX}_build_info",
            "Always 1; labels name the running version and model.",
            ["version", "model", "model_version"],
            registry=r,
        )
        self.last_loop_tick_timestamp_seconds = Gauge(
            f"{PREFIX}_last_loop_tick_timestamp_seconds",
            "Unix time of the consumer loop's last iteration.",
            registry=r,
        )
        # Series with a known label set exist from the start (at zero), so rate() works at once.
        for outcome in Outcome:
            self.messages_total.labels(outcome=outcome.value)
        for error_type in ErrorType:
            self.dead_letters_total.labels(error_type=error_type.value)
        for stage in TIMED_STAGES:
            self.stage_duration_seconds.labels(stage=stage)
        for operation in RetryOperation:
            self.retries_total.labels(operation=operation.value)
        for kind in EndToEndKind:
            for live in ("true", "false"):
                self.end_to_end_seconds.labels(kind=kind.value, live=live)
        self._lag_series: set[tuple[str, str]] = set()
        self._last_tick_monotonic: float | None = None

    # -- counters -------------------------------------------------------------------------------

    def record_outcome(self, outcome: Outcome | str, count: int = 1) -> None:
        """Count ``count`` messages that ended with ``outcome``.

        Dead letters go through :meth:`record_dead_letter`, which counts both series, so that the
        outcome and the per-reason counter can never disagree.
        """
        label = _checked(outcome, Outcome)
        if label == Outcome.DEAD_LETTERED:
            raise InvalidLabelError("count dead letters with record_dead_letter(error_type)")
        self.messages_total.labels(outcome=label).inc(count)

    def record_dead_letter(self, error_type: ErrorType | str) -> None:
        """Count one dead-lettered message by its ``error.type`` (also counts the outcome)."""
        self.dead_letters_total.labels(error_type=_checked(error_type, ErrorType)).inc()
        self.messages_total.labels(outcome=Outcome.DEAD_LETTERED.value).inc()

    def record_retry(self, operation: RetryOperation | str) -> None:
        """Count one retry of ``operation``."""
        self.retries_total.labels(operation=_checked(operation, RetryOperation)).inc()

    def record_near_duplicates(self, rows: int) -> None:
        """Count ``rows`` written with a near-duplicate flag."""
        self.near_duplicates_total.inc(rows)

    # -- histograms -----------------------------------------------------------------------------

    def observe_stage(self, stage: Stage | str, seconds: float) -> None:
        """Record that ``stage`` took ``seconds``."""
        self.stage_duration_seconds.labels(stage=_timed(stage)).observe(seconds)

    @contextmanager
    def time_stage(self, stage: Stage | str) -> Iterator[None]:
        """Time the body of a ``with`` block as ``stage`` (recorded even when it raises)."""
        child = self.stage_duration_seconds.labels(stage=_timed(stage))
        start = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - start)

    def observe_end_to_end(self, seconds: float, *, kind: EndToEndKind | str, live: bool) -> None:
        """Record one acknowledged record's age: now minus its Kafka timestamp, in seconds.

        ``kind``: ``written`` (Milvus acknowledged its row) or ``dead_lettered``. ``live`` is False
        for a bounded run (``--until-end``, ``--until``, ``--from``, backfill workers) and for a
        redriven record (``redrive.count`` > 0), so that days-old ages never reach the live
        series the freshness alert watches. A negative age (the producer's clock ahead of ours)
        counts as 0.
        """
        self.end_to_end_seconds.labels(
            kind=_checked(kind, EndToEndKind), live="true" if live else "false"
        ).observe(max(0.0, seconds))

    def observe_batch_size(self, messages: int) -> None:
        """Record the size of one consumed micro-batch."""
        self.batch_size.observe(messages)

    # -- gauges ---------------------------------------------------------------------------------

    def set_rows_in_flight(self, rows: int) -> None:
        """Messages consumed but not yet acknowledged by Milvus or the dead-letter topic."""
        self.rows_in_flight.set(rows)

    def set_paused_partitions(self, partitions: int) -> None:
        """Assigned partitions paused for backpressure."""
        self.paused_partitions.set(partitions)

    def set_uncommitted(self, topic: str, partition: int, messages: int) -> None:
        """Messages written (or dead-lettered) past the committed offset of one partition."""
        self.uncommitted_messages.labels(topic=topic, partition=str(partition)).set(
            max(0, messages)
        )

    def set_backfill_remaining(self, messages: int) -> None:
        """Messages between the group's commits and the ends of its backfill plan."""
        self.backfill_remaining_messages.set(max(0, messages))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the per-partition series of a revoked partition, so no stale value remains."""
        key = (topic, str(partition))
        for gauge in (self.uncommitted_messages, self.consumer_lag):
            with suppress(KeyError):
                gauge.remove(*key)
        self._lag_series.discard(key)

    def set_build_info(self, *, model: str, model_version: str, version: str | None = None) -> None:
        """Publish the running version and model as the labels of a constant 1."""
        self.build_info.clear()
        self.build_info.labels(
            version=version if version is not None else package_version(),
            model=model,
            model_version=model_version,
        ).set(1)

    def tick(self) -> None:
        """Mark one iteration of the consumer loop (feeds ``/livez`` and the tick gauge)."""
        self._last_tick_monotonic = time.monotonic()
        self.last_loop_tick_timestamp_seconds.set(time.time())

    def seconds_since_tick(self) -> float | None:
        """Seconds since the last :meth:`tick`, or ``None`` before the first one."""
        if self._last_tick_monotonic is None:
            return None
        return time.monotonic() - self._last_tick_monotonic

    # -- librdkafka statistics ------------------------------------------------------------------

    def update_from_librdkafka_stats(self, stats_json: str | bytes) -> None:
        """Set ``consumer_lag`` from a librdkafka statistics document (the ``stats_cb`` payload).

        Reads ``topics.<topic>.partitions.<partition>.consumer_lag``; skips the internal
        partition ``-1`` and lags of ``-1`` (unknown: no committed offset or no end offset yet).
        Partitions absent from the document, or whose lag became unknown, lose their series so
        a revoked partition does not keep reporting its last lag.
        """
        stats = orjson.loads(stats_json)
        seen: set[tuple[str, str]] = set()
        topics = stats.get("topics") or {}
        for topic_name, topic in topics.items():
            partitions = (topic or {}).get("partitions") or {}
            for partition_id, partition in partitions.items():
                if str(partition_id) == "-1" or not isinstance(partition, dict):
                    continue
                lag = partition.get("consumer_lag", -1)
                if not isinstance(lag, int) or lag < 0:
                    continue
                key = (str(topic_name), str(partition_id))
                self.consumer_lag.labels(topic=key[0], partition=key[1]).set(lag)
                seen.add(key)
        for key in self._lag_series - seen:
            with suppress(KeyError):
                self.consumer_lag.remove(*key)
        self._lag_series = seen

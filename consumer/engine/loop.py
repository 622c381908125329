"""The consumer engine.

Threads and what they own:
- main: the Kafka consumer, the offset tracker, JAX preprocessing, the dead-letter producer's
  callbacks and every commit. Signal handlers only set flags that this loop reads.
- I/O pool: fetch + decode + fit to the canvas (no JAX).
- inference pool: Triton calls (one client per thread) and NumPy normalization; hands rows to the
  writer and bad vectors back to the main thread.
- Milvus writer: grouped upserts and deletes; acknowledgements go back to the main thread.

Offsets are committed only up to the contiguous watermark of finished messages (written to Milvus
or acknowledged by the dead-letter topic), whatever order the work finishes in.
"""

from __future__ import annotations

import contextlib
import queue
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any

import numpy as np
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from consumer import preflight
from consumer.engine import plan as backfill_plan
from consumer.engine.crash import crash_point
from consumer.engine.exceptions import EngineFatalError
from consumer.engine.generations import Generations
from consumer.engine.plan import Plan
from consumer.engine.pool import DaemonPool
from consumer.engine.registry import LatestRegistry
from consumer.engine.runtime import Edges, Runtime
from consumer.engine.wiring import (
    collection_contract,
    dead_letter_max_bytes,
    fetch_policy,
    tombstone_retention_s,
    triton_endpoint,
)
from consumer.fetch import Fetcher, FetchError, decode_image
from consumer.inference import (
    InferenceRejectedError,
    InferenceUnavailableError,
    ModelSpec,
    TritonInference,
    l2_normalize,
)
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics, Outcome, RetryOperation
from consumer.offsets import OffsetOrderError, OffsetTracker
from consumer.preprocess import fit_to_canvas
from consumer.settings import Settings, parse_start
from consumer.sink import (
    CollectionMismatchError,
    MilvusCollection,
    MilvusWriter,
    WriteOp,
    WriteResult,
    collection_name,
)
from consumer.sink.collection import URI_MAX_LENGTH
from consumer.sink.neardup import NearDuplicates
from consumer.sink.tombstones import Tombstones
from schemas import (
    HEADER_VERSION,
    ErrorType,
    ImageMessage,
    InvalidMessage,
    Stage,
    Version,
    dead_letter_headers,
    decode_message,
    format_version,
    redact_uri,
    redrive_count,
    version_from_headers,
)
from schemas import preprocessing as contract

log = get_logger("consumer.engine")

PartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Ref:
    """Identifies one delivered message within one assignment generation of its partition."""

    gen: int
    topic: str
    partition: int
    offset: int

    @property
    def key(self) -> PartitionKey:
        return (self.topic, self.partition)


@dataclass(slots=True)
class _Raw:
    """What the main thread keeps per in-flight message: enough to dead-letter it."""

    key: bytes | None
    value: bytes | None
    redrive_count: int
    id: str | None
    version: Version


@dataclass(slots=True)
class _Fetching:
    ref: Ref
    msg: ImageMessage
    future: Future[np.ndarray]


_InferItem = tuple[Ref, ImageMessage, Version]
"""One message on its way through inference: its reference, the message, its version."""


@dataclass(slots=True)
class _DeadLetterJob:
    """One dead letter on its way to the dead-letter topic (retried until delivered)."""

    ref: Ref
    stage: Stage | str
    error_type: ErrorType | str
    text: str
    attempts: int = 0
    due: float = 0.0
    refused_since: float | None = None  # first of an unbroken run of non-retriable refusals


class RunOutcome(StrEnum):
    """How a run ended; the CLI picks its exit status from it."""

    FINISHED = "finished"  # a bounded run reached its end offsets
    STOPPED = "stopped"  # an unbounded run stopped by a signal (drained and committed)
    STOPPED_EARLY = "stopped_early"  # a bounded run stopped before its end: run it again
    ABORTED = "aborted"  # a second SIGINT: stopped at once, nothing more committed


@dataclass
class RunSummary:
    """Counts per outcome for one run; printed at the end and written with --summary-json."""

    ingested: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    skipped_stale: int = 0
    superseded: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # connecting, checking the model, compiling, joining the group
    images_per_second: float = 0.0  # ingested rows per second from the first message on
    dead_letters_by_type: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    outcome: RunOutcome = RunOutcome.STOPPED

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


class _RateLimiter:
    """Token bucket in messages per second (``--max-rate``)."""

    def __init__(self, rate: float | None, burst: int) -> None:
        self.rate = rate
        self.capacity = max(1.0, float(burst))
        self.tokens = self.capacity
        self.last = time.monotonic()

    def available(self) -> int:
        if self.rate is None:
            return sys.maxsize
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return int(self.tokens)

    def take(self, count: int) -> None:
        if self.rate is not None:
            self.tokens -= count

    def wait_s(self) -> float:
        if self.rate is None or self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate


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
        self._runtime = runtime  # None: the real one, built at set-up (it starts threads)
        self._edges = edges or Edges.real()
        self.summary = RunSummary()
        self._on_progress = on_progress
        self._tracker = OffsetTracker()
        self._registry = LatestRegistry()
        self._results: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._raw: dict[Ref, _Raw] = {}
        self._generations = Generations()
        self._assigned: set[PartitionKey] = set()
        self._positioned: set[PartitionKey] = set()
        self._ends: dict[PartitionKey, int] = {}
        self._starts: dict[PartitionKey, int] = {}
        self._reached: set[PartitionKey] = set()
        # per partition, the lowest offset handed out by the consumer but not taken in
        self._not_taken: dict[PartitionKey, int] = {}
        self._fetching: deque[_Fetching] = deque()
        self._ready: deque[tuple[Ref, ImageMessage, np.ndarray]] = deque()
        self._ready_since = 0.0
        self._infer_in_flight = 0
        self._dlq_pending = 0
        self._dlq_retry: list[_DeadLetterJob] = []
        self._paused = False
        self._stop = threading.Event()
        self._abort = threading.Event()
        # set on a second SIGINT or when the drain gives up: inference stops retrying
        self._halt_inference = threading.Event()
        self._closing = False
        self._drain_timed_out = False
        self._fatal: BaseException | None = None
        self._last_commit = 0.0
        self._reached_end = False
        self._first_message_at: float | None = None
        self._sigint_count = 0
        self._start_spec = parse_start(settings.start_from) if settings.start_from else None
        self._bounded = backfill_plan.bounded(settings)
        self._limiter = _RateLimiter(settings.max_rate, settings.batch_size)
        self._consumer: Consumer | None = None
        self._plan: Plan | None = None
        self._producer: Producer | None = None
        self._writer: MilvusWriter | None = None
        self._preprocessor: Any = None
        self._triton: TritonInference | None = None
        self._spec: ModelSpec | None = None
        self._fetcher: Fetcher | None = None
        self._io_pool: DaemonPool | None = None
        self._infer_pool: DaemonPool | None = None
        self._collection: MilvusCollection | None = None
        self._milvus: Any = None

    # ================================================================================ set-up
    def setup(self) -> None:
        """Connect, validate the model and the collection, warm the JAX buckets. Main thread."""
        s = self.settings
        edges = self._edges
        admin = edges.admin(s.kafka_common())  # one admin client for the start-up checks
        preflight.check_kafka(admin, s)  # before the slow start-up work: fail fast
        endpoint = triton_endpoint(s)
        self._spec = edges.model_spec(endpoint, s, self._stop)
        self._triton = edges.inference(endpoint, self._spec)
        contract_ = collection_contract(self._spec)
        self._milvus = edges.milvus(s)
        self.collection_name = collection_name(s.collection or "", contract_)
        self._collection = MilvusCollection(self._milvus, self.collection_name)
        try:
            created = self._collection.ensure(contract_)
        except CollectionMismatchError as exc:
            raise EngineFatalError(str(exc)) from exc
        log.info(
            "collection ready", collection=self.collection_name, created=created, dim=contract_.dim
        )
        self.metrics.set_build_info(model=self._spec.name, model_version=self._spec.version)
        self._preprocessor = edges.preprocessor(s)
        self._fetcher = edges.fetcher(
            fetch_policy(s), lambda: self.metrics.record_retry(RetryOperation.FETCH)
        )
        if self._runtime is None:
            self._runtime = Runtime.system(s)
        self._io_pool = self._runtime.io_executor
        self._infer_pool = self._runtime.infer_executor
        configs = preflight.topic_configs(admin, [s.topic or "", s.dead_letter_topic])
        tombstones = Tombstones(self._milvus, self.collection_name)
        tombstones.ensure()
        near_duplicates = None
        if s.near_duplicate_threshold is not None:
            near_duplicates = NearDuplicates(
                self._milvus,
                self.collection_name,
                s.near_duplicate_threshold,
                on_flagged=self.metrics.record_near_duplicates,
            )
            near_duplicates.ensure()
        self._writer = MilvusWriter(
            self._milvus,
            self.collection_name,
            on_results=lambda results: self._results.put(("write", results)),
            # an old owner's rows (the partition moved on) are dropped, never written late
            is_latest=lambda op: (
                self._generations.is_current(op.token.key, op.token.gen)
                and self._registry.is_latest(op.id, op.token)
            ),
            rewrite_same_version=s.rewrite_same_version,
            tombstones=tombstones,
            tombstone_retention_s=tombstone_retention_s(s, configs),
            batch_rows=s.write_batch_rows,
            max_age_s=s.write_max_age_s,
            flush_interval_s=s.flush_interval_s,
            on_retry=lambda exc, delay: self.metrics.record_retry(RetryOperation.MILVUS),
            on_write_seconds=lambda sec: self.metrics.observe_stage("write", sec),
            near_duplicates=near_duplicates,
        )
        self._writer.start()
        self._producer = edges.dead_letter_producer(
            {
                **s.kafka_common(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "zstd",
                # every record the source topic accepts must fit, with its dead-letter headers
                "message.max.bytes": dead_letter_max_bytes(configs.get(s.topic or "", {})),
                "error_cb": self._on_kafka_error,
            }
        )
        conf = {
            **s.kafka_common(),
            "group.id": s.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": s.session_timeout_ms,
            "max.poll.interval.ms": s.max_poll_interval_ms,
            "enable.partition.eof": self._bounded,
            "error_cb": self._on_kafka_error,
            "statistics.interval.ms": 5000,
            "stats_cb": self.metrics.update_from_librdkafka_stats,
        }
        self._consumer = edges.kafka_consumer(conf)
        if backfill_plan.applies(self.settings):  # a backfill: made once, resumed
            self._plan = self._prepare_plan(self._consumer)
        self._consumer.subscribe(
            [s.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _prepare_plan(self, consumer: Consumer) -> Plan:
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
        started = time.monotonic()
        try:
            self.setup()
            self._loop()
            if not self._abort.is_set() and self._fatal is None:
                self._drain()
        finally:
            self._close()
            ended = time.monotonic()
            first = self._first_message_at or ended
            self.summary.seconds = round(ended - started, 3)
            self.summary.startup_seconds = round(first - started, 3)
            busy = ended - first
            self.summary.images_per_second = (
                round(self.summary.ingested / busy, 2) if busy > 0 else 0.0
            )
            self.summary.outcome = self._outcome()
        if self._fatal is not None:
            raise EngineFatalError(str(self._fatal)) from self._fatal
        return self.summary

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
            self._sigint_count += 1
            self._stop.set()
            if self._sigint_count >= 2:
                self._abort.set()
                self._halt_inference.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)

    def _loop(self) -> None:
        assert self._consumer is not None
        s = self.settings
        while not self._stop.is_set() and self._fatal is None:
            self.metrics.tick()
            self._pump()
            self._apply_backpressure()
            budget = min(s.batch_size, self._limiter.available())
            if budget < 1:
                time.sleep(min(s.poll_timeout_s, self._limiter.wait_s()))
                continue
            busy = bool(self._fetching or self._ready or self._infer_in_flight)
            timeout = 0.005 if busy else s.poll_timeout_s
            # never more than the room under the cap; at the cap the partitions are paused and
            # this poll only serves the group (rebalances, liveness)
            room = max(1, s.max_rows_in_flight - self._tracker.in_flight())
            messages = self._consumer.consume(num_messages=min(budget, room), timeout=timeout)
            if self._fatal is not None:
                break
            if messages:
                crash_point("after_poll")
                self._handle_batch(messages)
            self._maybe_commit()
            if self._bounded and self._bounded_run_complete():
                log.info("reached the end offsets", ends=self._ends_for_log())
                self._reached_end = True
                break

    def _pump(self) -> None:
        """Everything but polling: results, fetch completions, preprocessing, dead letters."""
        if self._producer is not None:
            self._producer.poll(0)
            self._resend_due_dead_letters()
        self._drain_results()
        self._collect_fetches()
        self._dispatch_inference()
        self.metrics.set_rows_in_flight(self._tracker.in_flight())

    # ======================================================================= message intake
    def _handle_batch(self, messages: list[Message]) -> None:
        good = 0
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    key = (message.topic(), message.partition())
                    if key not in self._assigned:  # a late event of a partition given away
                        continue
                    end = self._ends.get(key)
                    if end is not None and message.offset() >= end:
                        self._reached.add(key)
                    elif end is not None and self._tracker.position(key) is None:
                        # an empty slice up to the end (e.g. compaction): nothing more to read
                        self._reached.add(key)
                    continue
                log.warning("kafka consume error", error=str(err))
                continue
            key = (message.topic(), message.partition())
            if key not in self._assigned:
                continue
            offset = message.offset()
            end = self._ends.get(key)
            if end is not None and offset >= end:
                self._not_taken.setdefault(key, offset)
                self._reached.add(key)
                self._consumer.pause([TopicPartition(key[0], key[1])])  # type: ignore[union-attr]
                continue
            ref = Ref(self._generations.current(key), key[0], key[1], offset)
            try:
                self._tracker.delivered(key, offset)
            except OffsetOrderError:
                log.warning("duplicate delivery ignored", partition=key[1], offset=offset)
                continue
            good += 1
            if end is not None and offset >= end - 1:
                self._reached.add(key)
            self._intake(ref, message)
        if good:
            if self._first_message_at is None:
                self._first_message_at = time.monotonic()
            self._limiter.take(good)
            self.metrics.observe_batch_size(good)

    def _intake(self, ref: Ref, message: Message) -> None:
        _, ts = message.timestamp()
        kafka_ts = int(ts) if ts and ts > 0 else int(time.time() * 1000)
        headers = message.headers()
        # a dead-lettered and redriven record carries the version it was first produced at
        version = version_from_headers(headers) or Version(kafka_ts, ref.partition, ref.offset)
        raw = _Raw(message.key(), message.value(), redrive_count(headers), None, version)
        self._raw[ref] = raw
        try:
            msg = decode_message(
                message.key(), message.value(), allowed_schemes=self.settings.allowed_schemes
            )
        except InvalidMessage as exc:
            self._dead_letter(ref, Stage.PARSE, exc.error_type, str(exc))
            return
        raw.id = msg.id
        self._registry.register(msg.id, ref, version)
        if msg.op == "delete":
            assert self._writer is not None
            self._writer.submit([WriteOp(ref, msg.id, version, None)])
            return
        assert self._io_pool is not None
        future = self._io_pool.submit(self._load, msg.uri or "")
        self._fetching.append(_Fetching(ref, msg, future))

    def _load(self, uri: str) -> np.ndarray:
        """I/O thread: fetch, decode, cut to the canvas. Never touches JAX."""
        assert self._fetcher is not None
        started = time.perf_counter()
        data = self._fetcher.fetch(uri)
        fetched = time.perf_counter()
        self.metrics.observe_stage("fetch", fetched - started)
        image = decode_image(
            data, min_shorter_px=contract.RESIZE_SHORTER_PX, max_pixels=self.settings.max_pixels
        )
        square = fit_to_canvas(image, self.settings.canvas_px)
        self.metrics.observe_stage("decode", time.perf_counter() - fetched)
        return square

    def _collect_fetches(self) -> None:
        still: deque[_Fetching] = deque()
        while self._fetching:
            item = self._fetching.popleft()
            if not item.future.done():
                still.append(item)
                continue
            if not self._is_current(item.ref):
                continue
            exc = item.future.exception()
            if exc is None:
                if not self._ready:
                    self._ready_since = time.monotonic()
                self._ready.append((item.ref, item.msg, item.future.result()))
            elif isinstance(exc, FetchError):
                self._dead_letter(item.ref, exc.stage, exc.error_type, str(exc))
            else:
                log.error("unexpected fetch failure", error=repr(exc))
                self._dead_letter(item.ref, Stage.DECODE, ErrorType.CORRUPT_IMAGE, repr(exc))
        self._fetching = still

    # ========================================================================== inference
    def _dispatch_inference(self) -> None:
        s = self.settings
        limit = s.infer_threads * 2
        while self._ready and self._infer_in_flight < limit:
            enough = len(self._ready) >= s.batch_size
            stale = time.monotonic() - self._ready_since > 0.02
            if not (enough or stale or not self._fetching):
                return
            batch = [self._ready.popleft() for _ in range(min(s.batch_size, len(self._ready)))]
            batch = [b for b in batch if self._is_current(b[0])]
            if self._ready:
                self._ready_since = time.monotonic()
            if not batch:
                continue
            started = time.perf_counter()
            tensor = self._preprocessor([square for _, _, square in batch])
            self.metrics.observe_stage("preprocess", time.perf_counter() - started)
            for start in range(0, len(batch), s.infer_batch_size):
                chunk = batch[start : start + s.infer_batch_size]
                arr = tensor[start : start + s.infer_batch_size]
                items = [(ref, msg, self._raw[ref].version) for ref, msg, _ in chunk]
                self._infer_in_flight += 1
                assert self._infer_pool is not None
                self._infer_pool.submit(self._infer_task, items, arr)

    def _infer_task(self, items: list[_InferItem], arr: np.ndarray) -> None:
        """Inference thread: Triton (retried while unavailable), normalize, hand rows on."""
        try:
            vectors = self._infer_with_retry(items, arr)
            if vectors is not None:
                crash_point("after_infer")
                self._hand_on(items, vectors)
        except Exception as exc:  # never lose track of a batch: report it as failed input
            log.error("inference task failed", error=repr(exc))
            for ref, _, _ in items:
                self._results.put(("dead", ref, Stage.INFER, ErrorType.MODEL_REJECTED, repr(exc)))
        finally:
            self._results.put(("infer_done",))

    def _hand_on(self, items: list[_InferItem], vectors: np.ndarray) -> None:
        """Normalize; valid rows go to the writer, degenerate vectors to the dead-letter topic."""
        started = time.perf_counter()
        unit, valid = l2_normalize(vectors)
        self.metrics.observe_stage("normalize", time.perf_counter() - started)
        assert self._spec is not None and self._writer is not None
        model_label = f"{self._spec.name}/{self._spec.version}"
        now_ms = int(time.time() * 1000)
        ops: list[WriteOp] = []
        for (ref, msg, version), vec, ok in zip(items, unit, valid, strict=True):
            if not ok:
                reason = "the model returned a NaN, infinite or zero vector"
                self._results.put(
                    ("dead", ref, Stage.NORMALIZE, ErrorType.INVALID_EMBEDDING, reason)
                )
                continue
            row = {
                "id": msg.id,
                "embedding": vec.tolist(),
                "uri": redact_uri(msg.uri or "")[:URI_MAX_LENGTH],
                "metadata": msg.metadata,
                "model": model_label,
                "ingested_at": now_ms,
                "kafka_ts": version.ts,
                "kafka_partition": version.partition,
                "kafka_offset": version.offset,
            }
            ops.append(WriteOp(ref, msg.id, version, row))
        if ops:
            self._writer.submit(ops)

    def _infer_with_retry(self, items: list[_InferItem], arr: np.ndarray) -> np.ndarray | None:
        """Vectors for ``arr``; None when the input was refused (then handled image by image)."""
        assert self._triton is not None
        attempt = 0
        while not self._halt_inference.is_set():
            started = time.perf_counter()
            try:
                vectors = self._triton.infer(arr)
                self.metrics.observe_stage("infer", time.perf_counter() - started)
                return vectors
            except InferenceUnavailableError as exc:
                attempt += 1
                self.metrics.record_retry(RetryOperation.TRITON)
                delay = min(10.0, 0.1 * 2 ** min(attempt, 10))
                delay = random.uniform(delay / 2, delay)
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("triton unavailable, retrying", attempt=attempt, error=str(exc))
                self._halt_inference.wait(delay)
            except InferenceRejectedError as exc:
                if len(items) == 1:
                    ref = items[0][0]
                    self._results.put(
                        ("dead", ref, Stage.INFER, ErrorType.MODEL_REJECTED, str(exc))
                    )
                    return None
                # find the refused input: one request per image, the others go on as usual
                for i, item in enumerate(items):
                    single = self._infer_with_retry([item], arr[i : i + 1])
                    if single is not None:
                        self._hand_on([item], single)
                return None
        return None

    # ============================================================================= results
    def _drain_results(self) -> None:
        while True:
            try:
                event = self._results.get_nowait()
            except queue.Empty:
                return
            kind = event[0]
            if kind == "write":
                results: list[WriteResult] = event[1]
                crash_point("after_upsert")
                for result in results:
                    self._finish(result.token, result.outcome)
            elif kind == "dead":
                _, ref, stage, error_type, text = event
                self._dead_letter(ref, stage, error_type, text)
            elif kind == "infer_done":
                self._infer_in_flight -= 1

    def _is_current(self, ref: Ref) -> bool:
        return self._generations.is_current(ref.key, ref.gen) and self._tracker.knows(
            ref.key, ref.offset
        )

    def _finish(self, ref: Ref, outcome: str) -> None:
        """Mark one message durably handled (main thread)."""
        if not self._is_current(ref):
            return
        if outcome == "written":
            self.summary.ingested += 1
            self.metrics.record_outcome(Outcome.INGESTED)
        elif outcome == "deleted":
            self.summary.deleted += 1
            self.metrics.record_outcome(Outcome.DELETED)
        elif outcome == "skipped_stale":
            self.summary.skipped_stale += 1
            self.metrics.record_outcome(Outcome.SKIPPED_STALE)
        elif outcome == "superseded":
            self.summary.superseded += 1
        self._retire(ref)

    def _done_count(self) -> int:
        s = self.summary
        return s.ingested + s.deleted + s.dead_lettered + s.skipped_stale + s.superseded

    def _total_count(self) -> int:
        return sum(max(0, self._ends[k] - self._starts.get(k, 0)) for k in self._ends)

    # ======================================================================== dead letters
    def _dead_letter(
        self, ref: Ref, stage: Stage | str, error_type: ErrorType | str, text: str
    ) -> None:
        """Send the original record to the dead-letter topic; its offset finishes on delivery."""
        if not self._is_current(ref) or ref not in self._raw:
            return
        self._dlq_pending += 1
        log.info(
            "dead-lettering",
            topic=ref.topic,
            partition=ref.partition,
            offset=ref.offset,
            stage=str(stage),
            error_type=str(error_type),
            reason=text[:300],
        )
        self._send_dead_letter(_DeadLetterJob(ref, stage, error_type, text))

    def _send_dead_letter(self, job: _DeadLetterJob) -> None:
        raw = self._raw.get(job.ref)
        if raw is None or not self._is_current(job.ref):
            self._dlq_pending -= 1  # the partition moved on: the new owner redoes it
            return
        assert self._producer is not None
        headers = dead_letter_headers(
            stage=Stage(job.stage),
            error_type=ErrorType(job.error_type),
            message=job.text,
            source_topic=job.ref.topic,
            source_partition=job.ref.partition,
            source_offset=job.ref.offset,
            redrive_count=raw.redrive_count,
        )
        headers.append((HEADER_VERSION, format_version(raw.version)))  # kept by redrive
        while True:
            try:
                self._producer.produce(
                    self.settings.dead_letter_topic,
                    key=raw.key,
                    value=raw.value,
                    headers=headers,
                    timestamp=raw.version.ts,  # a redriven record keeps its age (stale guard)
                    on_delivery=partial(self._on_dlq_delivery, job),
                )
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                self._retry_dead_letter(job, exc.args[0] if exc.args else None, str(exc))
                return

    def _retry_dead_letter(self, job: _DeadLetterJob, err: KafkaError | None, error: str) -> None:
        """Try again later, with backoff: the offset stays uncommitted until it is delivered.

        An error Kafka calls non-retriable (the record is too large for the topic, the topic is
        unknown, writing it is not authorized) may still be fixed by an operator, so it is
        retried too, but for at most ``dead_letter_refused_timeout_s``: then the run stops with
        the cause (exit 1) rather than hold the partition's commits forever."""
        job.attempts += 1
        self.metrics.record_retry(RetryOperation.DEAD_LETTER)
        now = time.monotonic()
        if isinstance(err, KafkaError) and not err.retriable():
            job.refused_since = job.refused_since or now
            if now - job.refused_since > self.settings.dead_letter_refused_timeout_s:
                self._fatal = EngineFatalError(
                    f"the dead-letter topic {self.settings.dead_letter_topic!r} refuses a record "
                    f"(offset {job.ref.offset} of {job.ref.topic}[{job.ref.partition}]) for "
                    f"{now - job.refused_since:.0f} s: {error}; nothing past it was committed"
                )
        else:
            job.refused_since = None
        if job.attempts == 1 or job.attempts % 10 == 0:
            log.warning(
                "dead-letter delivery failed; retrying",
                attempt=job.attempts,
                dlq_topic=self.settings.dead_letter_topic,
                error=error,
            )
        delay = min(30.0, 0.2 * 2 ** min(job.attempts, 10))
        job.due = time.monotonic() + random.uniform(delay / 2, delay)
        self._dlq_retry.append(job)

    def _resend_due_dead_letters(self) -> None:
        if not self._dlq_retry:
            return
        now = time.monotonic()
        due = [job for job in self._dlq_retry if job.due <= now]
        if due:
            self._dlq_retry = [job for job in self._dlq_retry if job.due > now]
            for job in due:
                self._send_dead_letter(job)

    def _on_dlq_delivery(self, job: _DeadLetterJob, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._retry_dead_letter(job, err, str(err))
            return
        self._dlq_pending -= 1
        ref, error_type = job.ref, job.error_type
        if not self._is_current(ref):
            return
        self.summary.dead_lettered += 1
        key = str(error_type)
        self.summary.dead_letters_by_type[key] = self.summary.dead_letters_by_type.get(key, 0) + 1
        self.metrics.record_dead_letter(error_type)
        self._retire(ref)

    def _retire(self, ref: Ref) -> None:
        """The message is durably handled: its offset may commit, its id bookkeeping ends."""
        self._tracker.finished(ref.key, ref.offset)
        raw = self._raw.pop(ref, None)
        if raw is not None and raw.id is not None:
            self._registry.release(raw.id)
        if self._on_progress is not None:
            self._on_progress(self._done_count(), self._total_count())

    # =========================================================================== commits
    def _maybe_commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self.settings.commit_interval_s:
            return
        self._last_commit = now
        for topic, part in self._assigned:  # the written-but-not-committed gap, before commit
            self.metrics.set_uncommitted(topic, part, self._tracker.uncommitted((topic, part)))
        self._commit(sorted(self._assigned))

    def _commit(self, keys: list[PartitionKey]) -> bool:
        if self._consumer is None or not keys:
            return True
        self._skip_invisible(keys)
        positions = self._tracker.committable(keys)
        if not positions:
            return True
        offsets = [self._commit_position(t, p, off) for (t, p), off in positions.items()]
        started = time.perf_counter()
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.metrics.record_retry(RetryOperation.KAFKA_COMMIT)
            log.warning("commit failed; will retry", error=str(exc))
            return False
        self.metrics.observe_stage("commit", time.perf_counter() - started)
        committed = {}
        for tp in result or []:
            if tp.error is None:
                committed[(tp.topic, tp.partition)] = tp.offset
        self._tracker.mark_committed(committed)
        for (topic, part), off in committed.items():
            self.summary.committed[f"{topic}:{part}"] = off
            self.metrics.set_uncommitted(topic, part, self._tracker.uncommitted((topic, part)))
        return True

    def _commit_position(self, topic: str, partition: int, offset: int) -> TopicPartition:
        """What to commit for one partition: a backfill's commits carry its plan (metadata)."""
        metadata = self._plan.metadata(partition) if self._plan is not None else None
        if metadata is None:
            return TopicPartition(topic, partition, offset)
        return TopicPartition(topic, partition, offset, metadata=metadata)

    def _skip_invisible(self, keys: list[PartitionKey]) -> None:
        """Move idle partitions past records the consumer never hands out (transaction
        markers, aborted records), so a finished partition commits its end and shows no lag.

        The consumer's position is the next offset it would hand out; it is taken only when
        nothing of the partition is in flight, never past a record that was handed out but not
        taken in (past a bounded run's end, or polled while draining)."""
        assert self._consumer is not None
        idle = [k for k in keys if not self._tracker.in_flight(k)]
        if not idle:
            return
        try:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in idle])
        except KafkaException as exc:
            log.warning("could not read the consumer's positions", error=str(exc))
            return
        for tp in positions:
            key = (tp.topic, tp.partition)
            target = min(tp.offset, self._not_taken.get(key, tp.offset))
            end = self._ends.get(key)
            if end is not None:
                target = min(target, end)
            if target >= 0:
                self._tracker.skip_to(key, target)

    # ======================================================================= backpressure
    def _apply_backpressure(self) -> None:
        s = self.settings
        in_flight = self._tracker.in_flight()
        if not self._paused and in_flight >= s.max_rows_in_flight:
            self._set_paused(True)
            log.info("backpressure: partitions paused", rows_in_flight=in_flight)
        elif self._paused and in_flight <= int(s.max_rows_in_flight * s.resume_fraction):
            self._set_paused(False)
            log.info("backpressure released: partitions resumed", rows_in_flight=in_flight)

    def _set_paused(self, paused: bool) -> None:
        assert self._consumer is not None
        self._paused = paused
        tps = [
            TopicPartition(t, p) for t, p in sorted(self._assigned) if (t, p) not in self._reached
        ]
        if tps:
            if paused:
                self._consumer.pause(tps)
            else:
                self._consumer.resume(tps)
        self.metrics.set_paused_partitions(len(self._assigned) if paused else 0)

    # ========================================================================== rebalance
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._position(consumer, partitions)
        except Exception as exc:
            self._fatal = exc
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._generations.advance(key)
            self._assigned.add(key)
        consumer.incremental_assign(partitions)
        if self._bounded:
            try:
                self._compute_ends(consumer, partitions)
            except Exception as exc:
                self._fatal = exc
        to_pause = [
            TopicPartition(tp.topic, tp.partition)
            for tp in partitions
            if self._paused or (tp.topic, tp.partition) in self._reached
        ]
        if to_pause:
            consumer.pause(to_pause)
            self.metrics.set_paused_partitions(len(self._assigned) if self._paused else 0)
        log.info("partitions assigned", partitions=[tp.partition for tp in partitions])

    def _position(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Apply --from to partitions assigned for the first time in this run (a backfill's
        plan applied it once, in the group's commits)."""
        spec = None if self._plan is not None else self._start_spec
        fresh = [tp for tp in partitions if (tp.topic, tp.partition) not in self._positioned]
        for tp in fresh:
            self._positioned.add((tp.topic, tp.partition))
        if spec is None or not fresh:
            return
        if not self.settings.reset_offsets:
            committed = consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in fresh], timeout=10
            )
            moved = [c for c in committed if c.offset >= 0]
            if moved:
                raise EngineFatalError(
                    f"group {self.settings.group!r} already has committed offsets on "
                    f"{[c.partition for c in moved]}; pass --reset-offsets to move it with --from"
                )
        if spec == "earliest":
            for tp in fresh:
                tp.offset = OFFSET_BEGINNING
        elif spec == "latest":
            for tp in fresh:
                tp.offset = OFFSET_END
        elif isinstance(spec, datetime):
            ms = int(spec.timestamp() * 1000)
            query = [TopicPartition(tp.topic, tp.partition, ms) for tp in fresh]
            found = consumer.offsets_for_times(query, timeout=10)
            by_part = {f.partition: f.offset for f in found}
            for tp in fresh:
                off = by_part.get(tp.partition, -1)
                tp.offset = off if off >= 0 else OFFSET_END
        elif isinstance(spec, dict):
            for tp in fresh:
                if tp.partition in spec:
                    tp.offset = spec[tp.partition]

    def _compute_ends(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Record, once per partition, the offset a bounded run stops at."""
        until = self.settings.until
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if key in self._ends:
                continue
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=10, cached=False
            )
            end = high
            if self._plan is not None:
                end = self._plan.ends.get(tp.partition, high)
            elif until is not None:
                ms = int(until.timestamp() * 1000) + 1
                found = consumer.offsets_for_times(
                    [TopicPartition(tp.topic, tp.partition, ms)], timeout=10
                )
                if found and found[0].offset >= 0:
                    end = found[0].offset
            self._ends[key] = end
            if tp.offset == OFFSET_BEGINNING:
                start = low
            elif tp.offset == OFFSET_END:
                start = high
            elif tp.offset >= 0:
                start = tp.offset
            else:  # no explicit position: the group's committed offset, else the beginning
                committed = consumer.committed([TopicPartition(tp.topic, tp.partition)], timeout=10)
                start = committed[0].offset if committed and committed[0].offset >= 0 else low
            self._starts[key] = start
            if end <= low or start >= end:
                self._reached.add(key)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if not self._abort.is_set():
            if not self._closing:  # while closing nothing can finish any more: do not wait
                self._finish_in_flight(keys)
            self._commit(keys)
        self._forget(keys)
        log.info("partitions revoked", partitions=[k[1] for k in keys])

    def _finish_in_flight(self, keys: list[PartitionKey]) -> None:
        """Let the work of ``keys`` finish (bounded by the drain timeout) before they go."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while time.monotonic() < deadline and any(self._tracker.in_flight(k) for k in keys):
            self._pump()
            time.sleep(0.005)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._forget(keys)
        log.warning(
            "partitions lost; their uncommitted work will be redone by the new owner",
            partitions=[k[1] for k in keys],
        )

    def _forget(self, keys: list[PartitionKey]) -> None:
        for key in keys:
            self._generations.advance(key)  # late results of the old generation are ignored
            self._assigned.discard(key)
            # given back later, it is read again from the group's commit up to its end
            self._reached.discard(key)
            self._not_taken.pop(key, None)
            self.metrics.forget_partition(key[0], key[1])
        stale = [ref for ref in self._raw if ref.key in keys]
        for ref in stale:
            raw = self._raw.pop(ref)
            if raw.id is not None:
                self._registry.release(raw.id)
        self._tracker.drop(keys)
        # dead letters waiting for a resend belong to the old owner: the new one redoes them
        waiting = [job for job in self._dlq_retry if job.ref.key in keys]
        if waiting:
            self._dlq_retry = [job for job in self._dlq_retry if job.ref.key not in keys]
            self._dlq_pending -= len(waiting)

    def _bounded_run_complete(self) -> bool:
        if not self._assigned:
            return False
        for key in self._assigned:
            if key not in self._reached or self._tracker.in_flight(key):
                return False
            if self._tracker.committable([key]):
                self._maybe_commit(force=True)
                if self._tracker.committable([key]):
                    return False
        return True

    def _ends_for_log(self) -> dict[str, int]:
        return {f"{t}:{p}": off for (t, p), off in sorted(self._ends.items())}

    # ============================================================================ shutdown
    def _drain(self) -> None:
        """Stop intake, finish what is in flight (bounded), then commit."""
        if self._consumer is None:
            return
        if self._assigned:
            self._consumer.pause([TopicPartition(t, p) for t, p in sorted(self._assigned)])
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while (
            time.monotonic() < deadline
            and not self._abort.is_set()
            and (self._tracker.in_flight() or self._dlq_pending)
        ):
            self._pump()
            for message in self._consumer.consume(num_messages=1, timeout=0.01):  # the group
                if message.error() is None:  # (paused: none expected) never committed past
                    key = (message.topic(), message.partition())
                    self._not_taken[key] = min(
                        self._not_taken.get(key, sys.maxsize), message.offset()
                    )
        if self._tracker.in_flight():
            self._halt_inference.set()  # e.g. Triton down: stop retrying, the pool can stop
            self._drain_timed_out = True  # stuck work (a held fetch) must not hold the exit
            log.warning(
                "drain timed out; uncommitted work will be redone after restart",
                rows_in_flight=self._tracker.in_flight(),
            )
        self._commit(sorted(self._assigned))

    def _close(self) -> None:
        self._closing = True  # consumer.close() revokes: nothing can finish any more
        self._halt_inference.set()
        if self._writer is not None:
            if self._abort.is_set():
                self._writer.abort()
            else:
                self._writer.close(self.settings.drain_timeout_s)
                self._drain_results()
        if self._consumer is not None:
            if not self._abort.is_set():
                self._commit(sorted(self._assigned))
            with contextlib.suppress(Exception):
                self._consumer.close()
        if self._producer is not None:
            self._producer.flush(10)
        wait = not (self._abort.is_set() or self._drain_timed_out or self._fatal is not None)
        for pool in (self._io_pool, self._infer_pool):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=True)
        if self._fetcher is not None:
            self._fetcher.close()
        if self._triton is not None:
            self._triton.close()

    # ============================================================================ helpers
    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = KafkaException(err)
        log.warning("kafka error", error=str(err))

    def readiness(self) -> dict[str, bool | str]:
        """Checks for /readyz (called from the health server's thread)."""
        checks: dict[str, bool | str] = {"assigned": bool(self._assigned)}
        checks["triton"] = bool(self._triton and self._triton.is_ready())
        try:
            checks["milvus"] = bool(
                self._milvus is not None and self._milvus.list_collections() is not None
            )
        except Exception as exc:
            checks["milvus"] = f"unreachable: {type(exc).__name__}"
        return checks

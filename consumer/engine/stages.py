"""The stage pipeline: fetch + decode (I/O pool), JAX batching (main thread), inference with
retry and the split that finds a refused input (inference pool), normalization, hand-off to the
Milvus writer.

It owns the work between intake and the writer: the count of fetches in flight, the buffer of
decoded squares waiting for preprocessing, the count of inference tasks in flight. Workers never
touch the engine's state: what they find goes back as events (``consumer.engine.events``).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial

import numpy as np

from consumer.backoff import Backoff
from consumer.engine import crash
from consumer.engine.events import (
    Events,
    FetchCancelled,
    Fetched,
    FetchFailed,
    InferenceDone,
    InferItem,
    InputRefused,
    Ref,
    VectorsBad,
)
from consumer.engine.ledger import InFlightLedger
from consumer.engine.runtime import (
    Clock,
    Executor,
    FetcherLike,
    InferenceLike,
    PreprocessorLike,
)
from consumer.fetch import FetchError, decode_image
from consumer.inference import (
    InferenceRejectedError,
    InferenceUnavailableError,
    ModelSpec,
    l2_normalize,
)
from consumer.inference.batch import TensorBatch, group_images
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics, RetryOperation
from consumer.preprocess import fit_to_canvas
from consumer.sink import WriteOp
from consumer.sink.collection import URI_MAX_LENGTH
from schemas import ErrorType, ImageMessage, Stage, redact_uri
from schemas import preprocessing as contract

log = get_logger("consumer.engine")

#: A partial batch waits at most this long for more decoded images while fetches are running.
READY_MAX_WAIT_S = 0.02

#: ``fetched_to_act`` when no number of decoded images lets a batch go.
NEVER = sys.maxsize


class Stages:
    def __init__(
        self,
        *,
        io: Executor,
        infer: Executor,
        fetcher: FetcherLike,
        preprocessor: PreprocessorLike,
        inference: InferenceLike,
        spec: ModelSpec,
        submit: Callable[[list[WriteOp]], None],
        ledger: InFlightLedger,
        events: Events,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        halt: threading.Event,
        batch_size: int,
        infer_batch_size: int,
        infer_threads: int,
        canvas_px: int,
        max_pixels: int,
    ) -> None:
        self._io = io
        self._infer = infer
        self._fetcher = fetcher
        self._preprocessor = preprocessor
        self._inference = inference
        self._spec = spec
        self._submit = submit
        self._ledger = ledger
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._random = rng
        self._halt = halt  # set: inference stops retrying (a second SIGINT, a drain given up)
        self._batch_size = batch_size
        self._infer_batch_size = infer_batch_size
        self._infer_limit = infer_threads * 2
        self._canvas_px = canvas_px
        self._max_pixels = max_pixels
        self._fetching = 0
        self._ready: deque[Fetched] = deque()
        self._ready_since = 0.0
        self._infer_in_flight = 0
        self._was_busy = False

    @property
    def busy(self) -> bool:
        """Work is under way between intake and the writer."""
        return bool(self._fetching or self._ready or self._infer_in_flight)

    def went_idle(self) -> bool:
        """True once each time the work between intake and the writer has all been handed on
        (main thread): what the writer holds then is all there is for now."""
        busy = self.busy
        edge = self._was_busy and not busy
        self._was_busy = busy
        return edge

    def sizes(self) -> dict[str, int]:
        return {
            "fetching": self._fetching,
            "ready": len(self._ready),
            "inferring": self._infer_in_flight,
        }

    # --- fetch (main thread submits, the I/O pool runs, the done-callback reports) ---------
    def fetch(self, ref: Ref, msg: ImageMessage) -> None:
        future = self._io.submit(self._load, msg.uri or "")
        self._fetching += 1
        future.add_done_callback(partial(self._fetched, ref, msg))

    def _load(self, uri: str) -> np.ndarray:
        """I/O thread: fetch, decode, cut to the canvas. Never touches JAX."""
        started = time.perf_counter()
        data = self._fetcher.fetch(uri)
        fetched = time.perf_counter()
        self._metrics.observe_stage("fetch", fetched - started)
        image = decode_image(
            data, min_shorter_px=contract.RESIZE_SHORTER_PX, max_pixels=self._max_pixels
        )
        square = fit_to_canvas(image, self._canvas_px)
        self._metrics.observe_stage("decode", time.perf_counter() - fetched)
        return square

    def _fetched(self, ref: Ref, msg: ImageMessage, future: Future[np.ndarray]) -> None:
        """Done-callback (the I/O thread that finished, or the caller if already done)."""
        if future.cancelled():
            self._events.put(FetchCancelled(ref))
            return
        exc = future.exception()
        if exc is None:
            self._events.put(Fetched(ref, msg, future.result()))
        elif isinstance(exc, FetchError):
            self._events.put(FetchFailed(ref, exc.stage, exc.error_type, str(exc)))
        else:
            log.error("unexpected fetch failure", error=repr(exc))
            self._events.put(FetchFailed(ref, Stage.DECODE, ErrorType.CORRUPT_IMAGE, repr(exc)))

    def fetch_ended(self) -> None:
        """One fetch event was taken (main thread)."""
        self._fetching -= 1

    def ready(self, item: Fetched) -> None:
        """A decoded square of a current message waits for preprocessing (main thread)."""
        if not self._ready:
            self._ready_since = self._clock.monotonic()
        self._ready.append(item)

    def dispatch_due_in(self) -> float | None:
        """Seconds until ``dispatch`` would send the partial batch that waits for more decoded
        images (main thread); None when none waits or the inference pool is full (then a
        task's end, an event, is what lets the next batch go)."""
        if not self._ready or not self._fetching or len(self._ready) >= self._batch_size:
            return None
        if self._infer_in_flight >= self._infer_limit:
            return None
        waited = self._clock.monotonic() - self._ready_since
        return max(0.001, READY_MAX_WAIT_S - waited)  # past due by a hair: the next step sends

    def fetched_to_act(self) -> int:
        """How many more decoded images would let ``dispatch`` send (main thread): the rest of
        a batch, or every running fetch when fewer are running; ``NEVER`` while the inference
        pool is full or nothing is being fetched."""
        if self._infer_in_flight >= self._infer_limit or not self._fetching:
            return NEVER
        missing = self._batch_size - len(self._ready)
        return NEVER if missing <= 0 else min(missing, self._fetching)

    # --- preprocessing (main thread) and dispatch ------------------------------------------
    def dispatch(self) -> None:
        """Preprocess whole micro-batches on the main thread and hand them to the inference
        pool, while it has room; a partial batch goes when no fetch is running or it waited
        long enough."""
        while self._ready and self._infer_in_flight < self._infer_limit:
            enough = len(self._ready) >= self._batch_size
            stale = self._clock.monotonic() - self._ready_since > READY_MAX_WAIT_S
            if not (enough or stale or not self._fetching):
                return
            count = min(self._batch_size, len(self._ready))
            batch = [self._ready.popleft() for _ in range(count)]
            batch = [b for b in batch if self._ledger.is_current(b.ref)]
            if self._ready:
                self._ready_since = self._clock.monotonic()
            if batch:
                self._preprocess_and_submit(batch)

    def _preprocess_and_submit(self, batch: list[Fetched]) -> None:
        """JAX, then each request packed straight from JAX's buffers (one copy), on the main
        thread; the inference pool gets owned requests only."""
        started = time.perf_counter()
        chunks = self._preprocessor.chunks([b.square for b in batch])
        requests = [
            self._inference.pack(parts) for parts in group_images(chunks, self._infer_batch_size)
        ]
        self._metrics.observe_stage("preprocess", time.perf_counter() - started)
        start = 0
        for request in requests:
            items = [
                InferItem(b.ref, b.msg, self._ledger.version(b.ref))
                for b in batch[start : start + len(request)]
            ]
            start += len(request)
            self._infer_in_flight += 1
            self._infer.submit(self.infer_task, items, request)

    def infer_ended(self) -> None:
        """One inference task ended (main thread, from its event)."""
        self._infer_in_flight -= 1

    # --- inference (inference pool) --------------------------------------------------------
    def infer_task(self, items: list[InferItem], request: TensorBatch) -> None:
        """Inference thread: Triton (retried while unavailable), normalize, hand rows on."""
        try:
            vectors = self._infer_with_retry(items, request)
            if vectors is not None:
                crash.crash_point("after_infer")
                self._hand_on(items, vectors)
        except Exception as exc:  # never lose track of a batch: report it as failed input
            log.error("inference task failed", error=repr(exc))
            for item in items:
                self._events.put(InputRefused(item.ref, repr(exc)))
        finally:
            self._events.put(InferenceDone())

    def _hand_on(self, items: list[InferItem], vectors: np.ndarray) -> None:
        """Normalize; valid rows go to the writer, degenerate vectors to the dead-letter topic."""
        started = time.perf_counter()
        unit, valid = l2_normalize(vectors)
        self._metrics.observe_stage("normalize", time.perf_counter() - started)
        model_label = f"{self._spec.name}/{self._spec.version}"
        now_ms = int(self._clock.time() * 1000)
        ops: list[WriteOp] = []
        for item, vec, ok in zip(items, unit, valid, strict=True):
            if not ok:
                self._events.put(
                    VectorsBad(item.ref, "the model returned a NaN, infinite or zero vector")
                )
                continue
            msg, version = item.msg, item.version
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
            ops.append(WriteOp(item.ref, msg.id, version, row))
        if ops:
            self._submit(ops)

    def _infer_with_retry(self, items: list[InferItem], request: TensorBatch) -> np.ndarray | None:
        """Vectors for ``request``; None when the input was refused (then handled image by
        image)."""
        backoff = Backoff(initial=0.1, cap=10.0, start=1, random=self._random)
        while not self._halt.is_set():
            started = time.perf_counter()
            try:
                vectors = self._inference.infer(request)
                self._metrics.observe_stage("infer", time.perf_counter() - started)
                return vectors
            except InferenceUnavailableError as exc:
                self._metrics.record_retry(RetryOperation.TRITON)
                delay = backoff.next_delay()
                if backoff.attempts == 1 or backoff.attempts % 10 == 0:
                    log.warning(
                        "triton unavailable, retrying", attempt=backoff.attempts, error=str(exc)
                    )
                self._clock.wait(self._halt, delay)
            except InferenceRejectedError as exc:
                if len(items) == 1:
                    self._events.put(InputRefused(items[0].ref, str(exc)))
                    return None
                # find the refused input: one request per image, the others go on as usual
                for i, item in enumerate(items):
                    single = self._infer_with_retry([item], request.one(i))
                    if single is not None:
                        self._hand_on([item], single)
                return None
        return None

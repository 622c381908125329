"""What the worker threads and the producer's callbacks hand back to the main thread.

One queue (``Events``), one kind of thing on it: the frozen event classes below. Fetch
completions arrive through ``Future.add_done_callback`` (on the I/O thread that finished, or at
once if already done), inference and write outcomes from their threads, dead-letter delivery
reports from ``Producer.poll`` on the main thread. The main thread takes them all between polls
and dispatches them with ``match`` (``EventHandler.handle``, handler.py); a new event class that
is not handled is a type error (``assert_never``).

The queue is not bounded by a size of its own: at most a few events exist per message in flight,
and ``--max-rows-in-flight`` bounds those (see docs/architecture.md).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas import ErrorType, ImageMessage, Stage, Version

if TYPE_CHECKING:
    import numpy as np
    from confluent_kafka import KafkaError

    from consumer.engine.deadletters import DeadLetterJob
    from consumer.engine.runtime import Clock
    from consumer.sink import WriteResult

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


@dataclass(frozen=True, slots=True)
class InferItem:
    """One message on its way through inference: its reference, the message, its version."""

    ref: Ref
    msg: ImageMessage
    version: Version


@dataclass(frozen=True, slots=True)
class Fetched:
    """I/O pool: the image was fetched, decoded and cut to the canvas."""

    ref: Ref
    msg: ImageMessage
    square: np.ndarray


@dataclass(frozen=True, slots=True)
class FetchFailed:
    """I/O pool: the image could not be had (dead-letter it with this stage and type)."""

    ref: Ref
    stage: Stage
    error_type: ErrorType
    text: str


@dataclass(frozen=True, slots=True)
class FetchCancelled:
    """I/O pool: the fetch never ran (the pool was shut down)."""

    ref: Ref


@dataclass(frozen=True, slots=True)
class InputRefused:
    """Inference: Triton refused this one input (found by splitting the batch), or the task
    failed unexpectedly; dead-letter it as ``model_rejected``."""

    ref: Ref
    text: str


@dataclass(frozen=True, slots=True)
class VectorsBad:
    """Inference: the model returned a NaN, infinite or zero vector for this input."""

    ref: Ref
    text: str


@dataclass(frozen=True, slots=True)
class InferenceDone:
    """Inference: one batch task ended, whatever its outcome (a slot of the pool is free)."""


@dataclass(frozen=True, slots=True)
class WriteAcknowledged:
    """Milvus writer: these operations are durably handled (written, deleted, skipped)."""

    results: tuple[WriteResult, ...]


@dataclass(frozen=True, slots=True)
class DeadLetterDelivered:
    """Dead-letter producer: the broker acknowledged this job's record."""

    job: DeadLetterJob


@dataclass(frozen=True, slots=True)
class DeadLetterFailed:
    """Dead-letter producer: producing or delivering this job's record failed."""

    job: DeadLetterJob
    error: KafkaError | None
    text: str


Event = (
    Fetched
    | FetchFailed
    | FetchCancelled
    | InputRefused
    | VectorsBad
    | InferenceDone
    | WriteAcknowledged
    | DeadLetterDelivered
    | DeadLetterFailed
)


class Events:
    """The one way back to the main thread: ``put`` from any thread, ``take`` on the main one,
    and ``wait``: the main thread sleeps until an event it can act on was put.

    A decoded image (``Fetched``) is one the main thread can act on only once enough of them
    make a batch; every other event (a task's end, a write, a failure, a dead letter) may free
    a slot or a row at once. Each timed wake costs the main thread tens of microseconds of CPU
    on a small virtual machine, so waking once per batch instead of once per image matters.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._others = 0  # events waiting that are not Fetched
        self._fetched = 0  # Fetched events waiting
        self._enough = 1  # Fetched events that make a wake worth it (set by ``wait``)

    def put(self, event: Event) -> None:
        with self._lock:
            self._queue.put(event)
            if isinstance(event, Fetched):
                self._fetched += 1
            else:
                self._others += 1
            if self._others or self._fetched >= self._enough:
                self._wake.set()

    def take(self) -> Event | None:
        """The next event, or None when there is none now (never blocks)."""
        with self._lock:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return None
            if isinstance(event, Fetched):
                self._fetched -= 1
            else:
                self._others -= 1
            return event

    def wait(self, clock: Clock, seconds: float, *, fetched_enough: int) -> None:
        """Main thread: return once an event other than ``Fetched`` waits, or
        ``fetched_enough`` ``Fetched`` ones do (at once if so already), or after ``seconds``.
        The check and the clearing of the wake-up are one step under the lock, as is each
        ``put``'s check and setting: a wake-up is never lost between them."""
        with self._lock:
            self._enough = max(1, fetched_enough)
            if self._others or self._fetched >= self._enough:
                return
            self._wake.clear()
        clock.wait(self._wake, seconds)

    def __len__(self) -> int:
        return self._queue.qsize()

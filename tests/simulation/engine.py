"""How the simulation drives the real engine: ``Engine(settings, runtime=..., edges=...)``.

Everything of the engine runs as it is: its set-up (start-up checks, the collection and its
tombstones, the writer, the dead-letter router, the stages, the committer, the subscription),
``step()`` (one loop iteration), ``finish()`` (drain, close, outcome), ``request_stop()`` (what
SIGTERM does) and ``interrupt()`` (what SIGINT does). What the simulation hands in:

- ``Runtime``: the virtual clock, the seed's random source, deterministic executors for the I/O
  and inference pools, and a thread starter that starts no thread: the Milvus writer's
  ``step()`` runs as scheduler tasks instead;
- ``Edges``: the fake Kafka consumer, dead-letter producer and admin client, Milvus (one view per
  process, see :class:`MilvusView`), Triton, the model spec, the fetcher and the preprocessor.

Decoding (``decode_image``, ``fit_to_canvas``) is replaced in the stages module by a copy of the
fake image's bytes, and the engine's crash hook by the world's (patched while a run lasts).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import queue
import random
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np

from consumer.engine import crash as engine_crash
from consumer.engine import loop as engine_loop
from consumer.engine import stages as engine_stages
from consumer.engine import wiring as engine_wiring
from consumer.engine.runtime import Edges, Runtime
from consumer.inference.client import ModelSpec
from consumer.observability.metrics import Metrics
from consumer.settings import Settings
from consumer.sink.tombstones import Tombstones
from tests.simulation.clock import DeterministicExecutor, Scheduler, VirtualClock
from tests.simulation.milvus import FakeMilvus
from tests.simulation.triton import DIM

SPEC = ModelSpec(
    name="sim-model",
    version="1",
    input_name="input",
    input_datatype="FP32",
    output="embedding",
    dim=DIM,
    max_batch_size=16,
    platform="sim",
)


#: How finely a simulated wait notices that its event was set (virtual seconds).
WAIT_STEP_S = 0.005


class SimClock:
    """The engine's ``Clock`` on virtual time: ``wait`` passes time instead of blocking."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def time(self) -> float:
        return self._clock.time()

    def sleep(self, seconds: float) -> None:
        self._clock.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        """Pass time until ``event`` is set or ``seconds`` have passed, in steps of at most
        ``WAIT_STEP_S``: a wait of the main thread ends soon after a task sets it, as a real
        wait ends when the event is set."""
        remaining = seconds or 0.0
        while not event.is_set() and remaining > 0:
            step = min(remaining, WAIT_STEP_S)
            self._clock.sleep(step)
            remaining -= step
        return event.is_set()


class MilvusView:
    """One process's connection to the shared fake Milvus. While ``reads_from`` is set, ``get``
    answers from that snapshot: a write group's read of the stored versions and its write then
    happen at two instants, with other processes' writes possibly in between, as with a real
    server (the snapshot is taken one write latency before the write)."""

    def __init__(self, milvus: FakeMilvus) -> None:
        self._milvus = milvus
        self.reads_from: dict[str, list[dict[str, Any]]] | None = None

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {name: [dict(r) for r in c.rows] for name, c in self._milvus.collections.items()}

    def get(self, collection_name: str, ids: list[Any], output_fields: Any = None, **kw: Any):
        if self.reads_from is None:
            return self._milvus.get(collection_name, ids, output_fields, **kw)
        self._milvus._gate("get", collection_name)
        wanted = set(ids)
        rows = self.reads_from.get(collection_name, [])
        return [
            {k: r[k] for k in ("id", *(output_fields or r)) if k in r}
            for r in rows
            if r["id"] in wanted
        ]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._milvus, name)


class GatedQueue:
    """The writer's queue as the simulation hands it out: what is put in becomes takeable only
    at ``release()``, the instant the writer reads the stored versions. A real writer reads them
    after it took its operations, so an operation submitted between that read and the write it
    lands with waits for the next turn instead of being checked against a read older than it."""

    def __init__(self) -> None:
        self._arrived: collections.deque[Any] = collections.deque()
        self._ready: collections.deque[Any] = collections.deque()

    def put(self, item: Any) -> None:
        self._arrived.append(item)

    def release(self) -> None:
        self._ready.extend(self._arrived)
        self._arrived.clear()

    def get_nowait(self) -> Any:
        if not self._ready:
            raise queue.Empty
        return self._ready.popleft()

    def get(self, timeout: float | None = None) -> Any:  # the writer's step(block=False) never
        return self.get_nowait()  # blocks; a blocking take would stall the virtual clock

    def qsize(self) -> int:
        return len(self._arrived) + len(self._ready)


class WriterThread:
    """What the writer's thread starter returns: no thread; the scheduler runs the writer's
    ``step(block=False)`` one write latency after it took what was queued and read the stored
    versions (see :class:`GatedQueue`)."""

    def __init__(
        self,
        writer: Any,
        view: MilvusView,
        scheduler: Scheduler,
        executor: str,
        latency: Callable[[], float],
    ) -> None:
        self.writer = writer
        self.view = view
        self.scheduler = scheduler
        self.executor = executor
        self.latency = latency
        self.alive = True
        self.gate = GatedQueue()
        with contextlib.suppress(queue.Empty):  # anything submitted before the thread started
            while True:
                self.gate.put(writer._queue.get_nowait())
        writer._queue = self.gate
        self._tick()

    def _tick(self) -> None:
        if self.alive:
            self.scheduler.submit(self.executor, self._read, delay_s=0.0, label="writer read")

    def _read(self) -> None:
        if not self.alive:
            return
        self.gate.release()
        try:
            snap = self.view.snapshot()
        except Exception:
            snap = None
        self.scheduler.submit(
            self.executor, self._write, (snap,), delay_s=self.latency(), label="writer step"
        )

    def _write(self, snap: dict[str, list[dict[str, Any]]] | None) -> None:
        if not self.alive:
            return
        self.view.reads_from = snap
        try:
            going = self.writer.step(block=False)
        finally:
            self.view.reads_from = None
        if going:
            self._tick()
            return
        if not self.writer._abort.is_set():
            self.writer._flush()
        self.alive = False

    def join(self, timeout: float | None = None) -> None:
        clock = self.scheduler.clock
        deadline = clock.monotonic() + (timeout if timeout is not None else 1e9)
        while self.alive and clock.monotonic() < deadline:
            due = self.scheduler.next_due()
            if due is None:
                break
            clock.sleep(max(0.0, min(due, deadline) - clock.monotonic()))

    def is_alive(self) -> bool:
        return self.alive

    def kill(self) -> None:
        self.alive = False


class FakeAdmin:
    """The admin client of the start-up checks: every ACL granted, topic configurations."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    @staticmethod
    def _done(value: Any) -> Any:
        return SimpleNamespace(result=lambda *a, **k: value)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        names = [topic] if topic else list(self.cluster.topics)
        topics = {
            n: SimpleNamespace(topic=n, error=None, partitions={})
            for n in names
            if n in self.cluster.topics
        }
        return SimpleNamespace(topics=topics, brokers={1: None})

    def poll(self, timeout: float = -1) -> int:
        return 0  # no errors to report: the simulated broker always takes the connection

    def describe_topics(self, topics: Any, **_: Any) -> dict[str, Any]:
        ops = [SimpleNamespace(name=n) for n in ("READ", "WRITE", "DESCRIBE")]
        return {
            n: self._done(SimpleNamespace(authorized_operations=ops)) for n in topics.topic_names
        }

    def describe_consumer_groups(self, groups: list[str], **_: Any) -> dict[str, Any]:
        ops = [SimpleNamespace(name="READ")]
        return {g: self._done(SimpleNamespace(authorized_operations=ops)) for g in groups}

    def describe_configs(self, resources: list[Any], **_: Any) -> dict[Any, Any]:
        out = {}
        for res in resources:
            topic = self.cluster.topics.get(res.name)
            entries = {}
            if topic is not None:
                entries = {
                    "max.message.bytes": SimpleNamespace(value=str(topic.max_message_bytes)),
                    "retention.ms": SimpleNamespace(value=str(topic.retention_ms)),
                }
            out[res] = self._done(entries)
        return out


class FakeFetcherEdge:
    """The fetcher edge: the fake image's bytes (decoded back by the patched decoder)."""

    def __init__(self, fetcher: Any) -> None:
        self._fetcher = fetcher

    def fetch(self, uri: str) -> bytes:
        return self._fetcher.load(uri).tobytes()

    def close(self) -> None:
        pass


def _decode(data: bytes, **_: Any) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32).copy()


def _fit(image: np.ndarray, canvas_px: int) -> np.ndarray:
    return image


@contextlib.contextmanager
def patched(crash_point: Callable[[str], None], clock: VirtualClock) -> Iterator[None]:
    """The crash hook, the decoder, and the tombstones' clock (the engine builds them without
    its runtime's clock)."""
    saved = [
        (engine_crash, "crash_point"),
        (engine_stages, "decode_image"),
        (engine_stages, "fit_to_canvas"),
        (engine_wiring, "Tombstones"),
    ]
    old = [(m, n, getattr(m, n)) for m, n in saved]
    engine_crash.crash_point = crash_point  # every crash point calls it through the module
    engine_stages.decode_image = _decode  # type: ignore[assignment]
    engine_stages.fit_to_canvas = _fit  # type: ignore[assignment]
    engine_wiring.Tombstones = functools.partial(Tombstones, clock=clock.time)  # type: ignore[misc]
    try:
        yield
    finally:
        for module, name, value in old:
            setattr(module, name, value)


@dataclasses.dataclass
class Handles:
    """What the harness keeps of one process's engine besides the engine."""

    engine: engine_loop.Engine
    view: MilvusView
    writer_thread: list[WriterThread]


def build(
    settings: Settings,
    *,
    name: str,
    scheduler: Scheduler,
    rng: random.Random,
    make_consumer: Callable[[dict[str, Any]], Any],
    producer: Any,
    cluster: Any,
    milvus: FakeMilvus,
    triton: Any,
    fetcher: Any,
    preprocess: Callable[..., Any],
    io_latency: Callable[[], float],
    infer_latency: Callable[[], float],
    write_latency: Callable[[], float],
) -> Handles:
    """An engine with the simulation's runtime and edges (set up, subscribed)."""
    view = MilvusView(milvus)
    threads: list[WriterThread] = []

    def start_thread(target: Callable[[], None], thread_name: str) -> WriterThread:
        writer = target.__self__  # type: ignore[attr-defined]  # the writer's bound _run
        handle = WriterThread(writer, view, scheduler, f"{name}.writer", write_latency)
        threads.append(handle)
        return handle

    runtime = Runtime(
        clock=SimClock(scheduler.clock),
        random=rng,
        io_executor=DeterministicExecutor(scheduler, f"{name}.io", io_latency),
        infer_executor=DeterministicExecutor(scheduler, f"{name}.infer", infer_latency),
        start_thread=start_thread,
    )
    edges = Edges(
        kafka_consumer=make_consumer,
        dead_letter_producer=lambda conf: producer,
        admin=lambda conf: FakeAdmin(cluster),
        milvus=lambda s: view,
        inference=lambda endpoint, spec: triton,
        model_spec=lambda endpoint, s, stop: SPEC,
        fetcher=lambda policy, on_retry: FakeFetcherEdge(fetcher),
        preprocessor=lambda s: preprocess,
    )
    engine = engine_loop.Engine(settings, metrics=Metrics(), runtime=runtime, edges=edges)
    engine.setup()
    return Handles(engine, view, threads)

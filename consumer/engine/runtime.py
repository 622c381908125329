"""The engine's seams: its time, randomness and threads (``Runtime``) and its outside world
(``Edges``: Kafka, Milvus, Triton, the fetcher, the preprocessor).

``Engine(settings)`` uses the real ones (``Runtime.system(settings)``, ``Edges.real()``); a test
or a simulation hands in its own, so it can drive the engine deterministically: a clock it
advances, a seeded random source, executors that run work when it says so, a writer without a
thread of its own, and fakes of the outside world that implement the protocols below (exactly the
methods the engine and its components call).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

if TYPE_CHECKING:
    import numpy as np

    from consumer.fetch import FetchPolicy
    from consumer.inference import ModelSpec
    from consumer.inference.batch import TensorBatch
    from consumer.inference.client import TritonEndpoint
    from consumer.settings import Settings

T = TypeVar("T")


# ==================================================================================== runtime
class Clock(Protocol):
    """Where every reading of time, every sleep and every timed wait of the engine goes."""

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back (intervals, deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (record timestamps, ``ingested_at``)."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        """Wait until ``event`` is set or ``seconds`` passed (None: no limit); returns whether
        it is set. A fake clock advances its time instead of blocking."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        return event.wait(seconds)


class Executor(Protocol):
    """A worker pool (``DaemonPool`` and ``ThreadPoolExecutor`` satisfy it)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...


class Joinable(Protocol):
    """What the owner of a background loop keeps of its thread."""

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


ThreadStarter = Callable[[Callable[[], None], str], Joinable]
"""Starts ``target`` as a background loop named ``name`` and returns its handle. The real one
starts a daemon thread; a simulation may start nothing and call the component's ``step()``."""


def start_daemon_thread(target: Callable[[], None], name: str) -> Joinable:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class Runtime:
    """Time, randomness and threads of one engine (and of its writer)."""

    clock: Clock
    random: random.Random
    io_executor: Executor
    infer_executor: Executor
    #: how the Milvus writer runs its loop (``MilvusWriter.step()`` in a loop on this thread)
    start_thread: ThreadStarter = start_daemon_thread

    @classmethod
    def system(cls, settings: Settings) -> Runtime:
        """The real one: the system clock, an unseeded random source, daemon pools. (The
        process's malloc arenas are capped by ``consumer run`` before any library's threads
        start: ``wiring.limit_malloc_arenas``.)"""
        from consumer.engine.pool import DaemonPool
        from consumer.engine.wiring import lower_thread_priority

        return cls(
            clock=SystemClock(),
            random=random.Random(),
            io_executor=DaemonPool(
                settings.io_threads,
                name="io",
                initializer=lower_thread_priority,
                initargs=(settings.io_nice,),
            ),
            infer_executor=DaemonPool(settings.infer_threads, name="infer"),
            start_thread=start_daemon_thread,
        )


# ============================================================================ outside world
class TopicPartitionLike(Protocol):
    topic: str
    partition: int
    offset: int
    error: Any


class KafkaMessageLike(Protocol):
    """One record (or event) as ``consume()`` returns it."""

    def error(self) -> Any: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class KafkaConsumerLike(Protocol):
    """The ``confluent_kafka.Consumer`` methods the engine (and the backfill plan) call."""

    def subscribe(
        self, topics: list[str], *, on_assign: Any, on_revoke: Any, on_lost: Any
    ) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]: ...
    def incremental_assign(self, partitions: list[Any]) -> None: ...
    def pause(self, partitions: list[Any]) -> None: ...
    def resume(self, partitions: list[Any]) -> None: ...
    def position(self, partitions: list[Any]) -> list[Any]: ...
    def committed(self, partitions: list[Any], timeout: float = -1) -> list[Any]: ...
    def commit(self, *, offsets: list[Any], asynchronous: bool = True) -> list[Any] | None: ...
    def get_watermark_offsets(
        self, partition: Any, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]: ...
    def offsets_for_times(self, partitions: list[Any], timeout: float = -1) -> list[Any]: ...
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...
    def close(self) -> None: ...


class ProducerLike(Protocol):
    """The ``confluent_kafka.Producer`` methods the dead-letter router calls. ``produce`` reports
    each record later through ``on_delivery(err, msg)`` from ``poll``/``flush``."""

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int = 0,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None: ...
    def poll(self, timeout: float = -1) -> int: ...
    def flush(self, timeout: float = -1) -> int: ...


class AdminLike(Protocol):
    """The ``confluent_kafka.admin.AdminClient`` methods of the start-up checks."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...
    def poll(self, timeout: float = -1) -> int: ...
    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Any]: ...
    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Any]: ...
    def describe_consumer_groups(self, group_ids: list[str], **kwargs: Any) -> dict[str, Any]: ...


class MilvusLike(Protocol):
    """The pymilvus ``MilvusClient`` methods of the writer, the collection and the tombstones."""

    def has_collection(self, collection_name: str, **kwargs: Any) -> bool: ...
    def describe_collection(self, collection_name: str, **kwargs: Any) -> dict[str, Any]: ...
    def create_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> None: ...
    def prepare_index_params(self, *args: Any, **kwargs: Any) -> Any: ...
    def load_collection(self, collection_name: str, **kwargs: Any) -> None: ...
    def list_collections(self, **kwargs: Any) -> list[str]: ...
    def describe_alias(self, alias: str, **kwargs: Any) -> dict[str, Any]: ...
    def create_alias(self, collection_name: str, alias: str, **kwargs: Any) -> None: ...
    def alter_alias(self, collection_name: str, alias: str, **kwargs: Any) -> None: ...
    def upsert(self, collection_name: str, data: Any, **kwargs: Any) -> Any: ...
    def delete(self, collection_name: str, ids: Any = None, **kwargs: Any) -> Any: ...
    def get(self, collection_name: str, ids: Any, **kwargs: Any) -> list[dict[str, Any]]: ...
    def query(self, collection_name: str, **kwargs: Any) -> list[dict[str, Any]]: ...
    def search(self, collection_name: str, *args: Any, **kwargs: Any) -> Any: ...
    def flush(self, collection_name: str, **kwargs: Any) -> None: ...


class InferenceLike(Protocol):
    """What ``TritonInference`` offers the engine (``pack`` on the main thread, ``infer`` from
    any inference thread)."""

    def pack(self, parts: Sequence[np.ndarray]) -> TensorBatch: ...
    def infer(self, batch: TensorBatch) -> np.ndarray: ...
    def is_ready(self) -> bool: ...
    def close(self) -> None: ...


class FetcherLike(Protocol):
    """What ``consumer.fetch.Fetcher`` offers the I/O threads."""

    def fetch(self, uri: str) -> bytes: ...
    def close(self) -> None: ...


class PreprocessorLike(Protocol):
    """The JAX preprocessor (main thread only): squares in, the output chunk by chunk as views
    that must be copied before they leave the main thread."""

    def chunks(self, squares: Sequence[np.ndarray]) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class Edges:
    """Factories of the engine's outside world; ``Edges.real()`` builds today's ones. A fake
    replaces a few with ``dataclasses.replace(Edges.real(), kafka_consumer=...)`` or all."""

    kafka_consumer: Callable[[dict[str, Any]], KafkaConsumerLike]
    dead_letter_producer: Callable[[dict[str, Any]], ProducerLike]
    admin: Callable[[dict[str, Any]], AdminLike]
    milvus: Callable[[Settings], MilvusLike]
    inference: Callable[[TritonEndpoint, ModelSpec], InferenceLike]
    model_spec: Callable[[TritonEndpoint, Settings, threading.Event], ModelSpec]
    fetcher: Callable[[FetchPolicy, Callable[[], None] | None], FetcherLike]
    preprocessor: Callable[[Settings], PreprocessorLike]

    @classmethod
    def real(cls) -> Edges:
        return cls(
            kafka_consumer=_real_consumer,
            dead_letter_producer=_real_producer,
            admin=_real_admin,
            milvus=_real_milvus,
            inference=_real_inference,
            model_spec=_real_model_spec,
            fetcher=_real_fetcher,
            preprocessor=_real_preprocessor,
        )


# the classes are looked up when called, so a test launcher that replaces them first wins
def _real_consumer(conf: dict[str, Any]) -> KafkaConsumerLike:
    import confluent_kafka

    # the protocol names the part the engine uses (the library's own types are stricter)
    return cast(KafkaConsumerLike, confluent_kafka.Consumer(conf))


def _real_producer(conf: dict[str, Any]) -> ProducerLike:
    import confluent_kafka

    # the protocol names the part the engine uses (the library's own types are stricter)
    return cast(ProducerLike, confluent_kafka.Producer(conf))


def _real_admin(conf: dict[str, Any]) -> AdminLike:
    from confluent_kafka.admin import AdminClient

    # the protocol names the part the engine uses (the library's own types are stricter)
    return cast(AdminLike, AdminClient(conf))


def _real_milvus(s: Settings) -> MilvusLike:
    from consumer.sink import connect

    client: MilvusLike = connect(
        s.milvus_uri,
        s.milvus_token.get_secret_value() if s.milvus_token else None,
        s.milvus_db,
        s.milvus_timeout_s,
        s.milvus_server_pem_path,
    )
    return client


def _real_inference(endpoint: TritonEndpoint, spec: ModelSpec) -> InferenceLike:
    from consumer.inference import TritonInference

    return TritonInference(endpoint, spec)


def _real_model_spec(endpoint: TritonEndpoint, s: Settings, stop: threading.Event) -> ModelSpec:
    from consumer.engine.wiring import wait_for_model_spec

    return wait_for_model_spec(endpoint, s, stop)


def _real_fetcher(policy: FetchPolicy, on_retry: Callable[[], None] | None) -> FetcherLike:
    from consumer.fetch import Fetcher

    return Fetcher(policy, on_retry=on_retry)


def _real_preprocessor(s: Settings) -> PreprocessorLike:
    from consumer.engine.wiring import make_preprocessor

    pre: PreprocessorLike = make_preprocessor(s)
    return pre

"""Set-up steps of the engine that make components from the settings and the edges: the
collection (created, or checked against the model's contract) and the workers (the Milvus
writer, the dead-letter router, the stages). The engine calls them in order after the Kafka
checks; each raises ``EngineFatalError`` with one line for what a user must fix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from consumer.engine.deadletters import DeadLetterRouter
from consumer.engine.events import Events, WriteAcknowledged
from consumer.engine.exceptions import EngineFatalError
from consumer.engine.ledger import InFlightLedger
from consumer.engine.runtime import Edges, FetcherLike, InferenceLike, MilvusLike, Runtime
from consumer.engine.stages import Stages
from consumer.engine.wiring import (
    collection_contract,
    dead_letter_producer_conf,
    make_writer,
)
from consumer.inference.client import ModelSpec
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics
from consumer.settings import Settings
from consumer.sink import (
    CollectionMismatchError,
    MilvusCollection,
    MilvusWriter,
    collection_name,
)

log = get_logger("consumer.engine")


def open_collection(milvus: MilvusLike, s: Settings, spec: ModelSpec, metrics: Metrics) -> str:
    """The collection for the model's contract, created or checked; returns its name."""
    contract_ = collection_contract(spec)
    name = collection_name(s.collection or "", contract_)
    try:
        created = MilvusCollection(milvus, name).ensure(contract_)
    except CollectionMismatchError as exc:
        raise EngineFatalError(str(exc)) from exc
    log.info("collection ready", collection=name, created=created, dim=contract_.dim)
    metrics.set_build_info(model=spec.name, model_version=spec.version)
    return name


@dataclass(frozen=True, slots=True)
class Workers:
    """What works off the main thread, or reports back to it: started and ready."""

    writer: MilvusWriter
    router: DeadLetterRouter
    stages: Stages


@dataclass(frozen=True, slots=True)
class Shared:
    """The engine's own state and callbacks the workers are built around."""

    ledger: InFlightLedger
    events: Events
    metrics: Metrics
    halt_inference: threading.Event
    on_kafka_error: Callable[[KafkaError], None]


def open_workers(
    s: Settings,
    edges: Edges,
    runtime: Runtime,
    shared: Shared,
    *,
    milvus: MilvusLike,
    collection: str,
    spec: ModelSpec,
    triton: InferenceLike,
    fetcher: FetcherLike,
    topic_configs: Any,
) -> Workers:
    """The writer (started: it reports through the events), the dead-letter router and the
    stages, on the runtime's executors, clock and random source."""
    metrics, ledger, events = shared.metrics, shared.ledger, shared.events
    writer = make_writer(
        milvus,
        collection,
        s,
        topic_configs,
        metrics=metrics,
        runtime=runtime,
        on_results=lambda results: events.put(WriteAcknowledged(tuple(results))),
        # an old owner's rows (the partition moved on) are dropped, never written late
        is_latest=ledger.is_latest,
    )
    writer.start()
    producer = edges.dead_letter_producer(
        dead_letter_producer_conf(s, topic_configs, shared.on_kafka_error)
    )
    router = DeadLetterRouter(
        producer,
        topic=s.dead_letter_topic,
        refused_timeout_s=s.dead_letter_refused_timeout_s,
        ledger=ledger,
        events=events,
        metrics=metrics,
        clock=runtime.clock,
        rng=runtime.random,
    )
    stages = Stages(
        io=runtime.io_executor,
        infer=runtime.infer_executor,
        fetcher=fetcher,
        preprocessor=edges.preprocessor(s),
        inference=triton,
        spec=spec,
        submit=writer.submit,
        ledger=ledger,
        events=events,
        metrics=metrics,
        clock=runtime.clock,
        rng=runtime.random,
        halt=shared.halt_inference,
        batch_size=s.batch_size,
        infer_batch_size=s.infer_batch_size,
        infer_threads=s.infer_threads,
        canvas_px=s.canvas_px,
        max_pixels=s.max_pixels,
    )
    return Workers(writer, router, stages)

"""What the inference stage does with bad vectors and refused inputs (stubbed Triton and writer).

These paths cannot be provoked with the reference model, so the stage's inference task runs here
against a stub that returns NaN/zero vectors or refuses one input.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from consumer.engine.events import (
    Event,
    Events,
    InferenceDone,
    InferItem,
    InputRefused,
    Ref,
    VectorsBad,
)
from consumer.engine.ledger import InFlightLedger
from consumer.engine.runtime import SystemClock
from consumer.engine.stages import Stages
from consumer.inference import InferenceRejectedError, ModelSpec
from consumer.inference.batch import ArrayBatch, TensorBatch, pack_arrays
from consumer.observability.metrics import Metrics
from schemas import ImageMessage, Version


class StubTriton:
    def __init__(self, vectors: dict[int, np.ndarray], reject: set[int]) -> None:
        self.vectors = vectors  # keyed by the image's marker value
        self.reject = reject
        self.calls: list[int] = []

    def pack(self, parts: Sequence[np.ndarray]) -> ArrayBatch:
        return pack_arrays(parts)

    def infer(self, request: TensorBatch) -> np.ndarray:
        markers = [int(img[0, 0, 0]) for img in request.array()]
        self.calls.append(len(markers))
        if any(m in self.reject for m in markers):
            raise InferenceRejectedError("INVALID_ARGUMENT: bad input")
        return np.stack([self.vectors[m] for m in markers])

    def is_ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _stages(triton: StubTriton) -> tuple[Stages, list[Any], Events]:
    ops: list[Any] = []
    events = Events()
    stages = Stages(
        io=None,  # type: ignore[arg-type]  # not used by the inference task
        infer=None,  # type: ignore[arg-type]
        fetcher=None,  # type: ignore[arg-type]
        preprocessor=None,  # type: ignore[arg-type]
        inference=triton,
        spec=ModelSpec("m", "1", "IMAGE", "FP32", "EMBEDDING", 3, 64, "python"),
        submit=ops.extend,
        ledger=InFlightLedger(),
        events=events,
        metrics=Metrics(),
        clock=SystemClock(),
        rng=random.Random(0),
        halt=threading.Event(),
        batch_size=8,
        infer_batch_size=8,
        infer_threads=1,
        canvas_px=64,
        max_pixels=10**6,
    )
    return stages, ops, events


def _items(count: int) -> tuple[list[InferItem], ArrayBatch]:
    items = [
        InferItem(
            Ref(1, "t", 0, i),
            ImageMessage.upsert(f"http://example.com/{i}.jpg", id=f"id{i}"),
            Version(1000, 0, i),
        )
        for i in range(count)
    ]
    batch = np.zeros((count, 4, 4, 3), np.float32)
    for i in range(count):
        batch[i, 0, 0, 0] = i
    return items, ArrayBatch(batch)


def _events(events: Events) -> list[Event]:
    out = []
    while (event := events.take()) is not None:
        out.append(event)
    return out


def test_nan_and_zero_vectors_are_dead_lettered_the_rest_written() -> None:
    vectors = {0: np.array([3.0, 4.0, 0.0]), 1: np.array([np.nan, 1, 1]), 2: np.zeros(3)}
    stages, ops, events = _stages(StubTriton(vectors, reject=set()))
    items, batch = _items(3)
    stages.infer_task(items, batch)
    seen = _events(events)
    assert [e.ref.offset for e in seen if isinstance(e, VectorsBad)] == [1, 2]
    assert [op.id for op in ops] == ["id0"]
    np.testing.assert_allclose(ops[0].row["embedding"], [0.6, 0.8, 0.0], rtol=1e-6)
    assert seen[-1] == InferenceDone()


def test_a_refused_input_is_found_by_splitting_and_only_it_is_dead_lettered() -> None:
    vectors = {i: np.array([1.0, float(i), 0.0]) for i in range(4)}
    triton = StubTriton(vectors, reject={2})
    stages, ops, events = _stages(triton)
    items, batch = _items(4)
    stages.infer_task(items, batch)
    refused = [e for e in _events(events) if isinstance(e, InputRefused)]
    assert [e.ref.offset for e in refused] == [2]
    assert sorted(op.id for op in ops) == ["id0", "id1", "id3"]
    assert triton.calls == [4, 1, 1, 1, 1]

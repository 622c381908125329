"""What the inference stage does with bad vectors and refused inputs (stubbed Triton and writer).

These paths cannot be provoked with the reference model, so the engine's inference task runs here
against a stub that returns NaN/zero vectors or refuses one input.
"""

from __future__ import annotations

import queue
from typing import Any

import numpy as np

from consumer.engine.loop import Engine, Ref
from consumer.inference import InferenceRejectedError, ModelSpec
from consumer.settings import Settings
from schemas import ErrorType, ImageMessage, Stage, Version


class StubTriton:
    def __init__(self, vectors: dict[int, np.ndarray], reject: set[int]) -> None:
        self.vectors = vectors  # keyed by the image's marker value
        self.reject = reject
        self.calls: list[int] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        markers = [int(img[0, 0, 0]) for img in batch]
        self.calls.append(len(markers))
        if any(m in self.reject for m in markers):
            raise InferenceRejectedError("INVALID_ARGUMENT: bad input")
        return np.stack([self.vectors[m] for m in markers])


class StubWriter:
    def __init__(self) -> None:
        self.ops: list[Any] = []

    def submit(self, ops: list[Any]) -> None:
        self.ops.extend(ops)


def _engine(triton: StubTriton) -> tuple[Engine, StubWriter]:
    engine = Engine(Settings(topic="t", group="g", collection="c"))
    writer = StubWriter()
    engine._triton = triton  # type: ignore[assignment]
    engine._writer = writer  # type: ignore[assignment]
    engine._spec = ModelSpec("m", "1", "IMAGE", "FP32", "EMBEDDING", 3, 64, "python")
    return engine, writer


def _items(count: int) -> tuple[list[tuple[Ref, ImageMessage, Version]], np.ndarray]:
    items = [
        (
            Ref(1, "t", 0, i),
            ImageMessage.upsert(f"http://example.com/{i}.jpg", id=f"id{i}"),
            Version(1000, 0, i),
        )
        for i in range(count)
    ]
    batch = np.zeros((count, 4, 4, 3), np.float32)
    for i in range(count):
        batch[i, 0, 0, 0] = i
    return items, batch


def _events(engine: Engine) -> list[tuple[Any, ...]]:
    out = []
    while True:
        try:
            out.append(engine._results.get_nowait())
        except queue.Empty:
            return out


def test_nan_and_zero_vectors_are_dead_lettered_the_rest_written() -> None:
    vectors = {0: np.array([3.0, 4.0, 0.0]), 1: np.array([np.nan, 1, 1]), 2: np.zeros(3)}
    engine, writer = _engine(StubTriton(vectors, reject=set()))
    items, batch = _items(3)
    engine._infer_task(items, batch)
    events = _events(engine)
    dead = [e for e in events if e[0] == "dead"]
    assert [(e[1].offset, e[2], e[3]) for e in dead] == [
        (1, Stage.NORMALIZE, ErrorType.INVALID_EMBEDDING),
        (2, Stage.NORMALIZE, ErrorType.INVALID_EMBEDDING),
    ]
    assert [op.id for op in writer.ops] == ["id0"]
    np.testing.assert_allclose(writer.ops[0].row["embedding"], [0.6, 0.8, 0.0], rtol=1e-6)
    assert events[-1] == ("infer_done",)


def test_a_refused_input_is_found_by_splitting_and_only_it_is_dead_lettered() -> None:
    vectors = {i: np.array([1.0, float(i), 0.0]) for i in range(4)}
    triton = StubTriton(vectors, reject={2})
    engine, writer = _engine(triton)
    items, batch = _items(4)
    engine._infer_task(items, batch)
    dead = [e for e in _events(engine) if e[0] == "dead"]
    assert [(e[1].offset, e[3]) for e in dead] == [(2, ErrorType.MODEL_REJECTED)]
    assert sorted(op.id for op in writer.ops) == ["id0", "id1", "id3"]
    assert triton.calls == [4, 1, 1, 1, 1]

"""Triton and the image path in front of it, as the engine sees them.

- :class:`FakeTriton` stands where ``TritonInference`` does (``infer``, ``is_ready``,
  ``close``): latency (drawn by the harness for each inference task), unavailability windows and
  timeouts (``InferenceUnavailableError``), inputs it refuses (``InferenceRejectedError``), NaN
  or zero vectors, and answers with fewer rows than sent (refused, as ``TritonInference`` does).
- :class:`FakeFetcher` stands for fetch + decode: a URI ``https://sim.example/<kind>/<n>`` gives
  a small "image" whose first value carries what Triton will do with it; kind ``missing`` is a
  404.
- :data:`fake_preprocess` stands for the JAX step (main thread): it stacks the images.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from consumer.fetch.exceptions import FetchError
from consumer.inference import InferenceRejectedError, InferenceUnavailableError
from consumer.inference.batch import ArrayBatch, TensorBatch, pack_arrays
from schemas import ErrorType, Stage
from tests.simulation.clock import VirtualClock

DIM = 4

#: Image kinds: what the model does with each (the first value of the fake image).
KINDS = {"ok": 0.0, "nan": 1.0, "zero": 2.0, "reject": 3.0}


class NotFoundError(FetchError):
    """A 404, as the HTTP fetcher reports it."""

    error_type = ErrorType.NOT_FOUND
    stage = Stage.FETCH


HOST = "https://sim.example/"


def uri_of(kind: str, n: int) -> str:
    return f"{HOST}{kind}/{n}"


class FakeFetcher:
    """Fetch and decode in one: ``load(uri)`` gives the image or raises a FetchError."""

    def __init__(self) -> None:
        self.calls = 0

    def load(self, uri: str) -> np.ndarray:
        self.calls += 1
        rest = uri.removeprefix(HOST)
        kind, _, _n = rest.partition("/")
        if kind == "missing":
            raise NotFoundError(f"HTTP 404 for {uri}")
        seed = zlib.crc32(uri.encode())
        return np.array(
            [KINDS[kind], (seed % 97) + 1.0, (seed % 89) + 1.0, (seed % 83) + 1.0], np.float32
        )

    def close(self) -> None:
        pass


class FakePreprocessor:
    """The JAX step's stand-in: the images stacked as float32, in chunks of up to four (as the
    real one hands out one chunk per compiled bucket)."""

    def chunks(self, squares: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        for start in range(0, len(squares), 4):
            yield np.stack(squares[start : start + 4]).astype(np.float32)


fake_preprocess = FakePreprocessor()


class FakeTriton:
    """The ``TritonInference`` the engine calls from its inference threads."""

    def __init__(self, clock: VirtualClock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self.unavailable: list[tuple[float, float]] = []  # [start, end) virtual seconds
        self.timeout_rate = 0.0  # a request that times out (retried by the engine)
        self.short_rate = 0.0  # an answer with fewer rows than sent (refused)
        self.latency: Callable[[], float] = lambda: 0.0  # drawn by the harness per task
        self.calls = 0
        self.refusals = 0
        self.closed = False

    def down(self) -> bool:
        now = self.clock.monotonic()
        return any(start <= now < end for start, end in self.unavailable)

    def pack(self, parts: Sequence[np.ndarray]) -> ArrayBatch:
        return pack_arrays(parts)

    def infer(self, request: TensorBatch | np.ndarray) -> np.ndarray:
        batch = request if isinstance(request, np.ndarray) else request.array()
        self.calls += 1
        if self.down():
            raise InferenceUnavailableError("Triton unavailable: connection refused")
        if self.timeout_rate and self.rng.random() < self.timeout_rate:
            raise InferenceUnavailableError("Triton request timed out (Deadline Exceeded)")
        kinds = batch[:, 0]
        if np.any(kinds == KINDS["reject"]):
            self.refusals += 1
            raise InferenceRejectedError("inference refused: input failed validation")
        rows = batch.shape[0]
        if self.short_rate and self.rng.random() < self.short_rate:
            # what TritonInference says when the server answers with fewer rows than sent
            raise InferenceRejectedError(f"model returned ({rows - 1}, {DIM}) for {rows}")
        out = np.array(batch[:, :DIM], dtype=np.float32, copy=True)
        out[:, 0] = 1.0
        out[kinds == KINDS["nan"]] = np.nan
        out[kinds == KINDS["zero"]] = 0.0
        return out

    def is_ready(self) -> bool:
        return not self.down()

    def close(self) -> None:
        self.closed = True

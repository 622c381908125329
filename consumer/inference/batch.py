"""Images packed for one inference request, and the packing of preprocessed chunks into requests.

The JAX step hands its output over as zero-copy views of its buffers, chunk by chunk (one per
compiled bucket). ``group_images`` cuts them into requests of ``size`` images, and the inference
client packs each request on the main thread: the views' bytes are copied once, into what the
request is sent from (``TritonInference.pack``: the gRPC request's own bytes; ``pack_arrays``: one
NumPy array). The views never leave the main thread, so JAX's buffers are released there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class TensorBatch(Protocol):
    """``n`` images ready to send in one request (owned: no view of a JAX buffer)."""

    def __len__(self) -> int: ...

    def array(self) -> np.ndarray:
        """The images as one ``[n, ...]`` float32 array (it may be a read-only view)."""
        ...

    def one(self, index: int) -> TensorBatch:
        """Image ``index`` alone, as a batch of its own (to find a refused input)."""
        ...


@dataclass(frozen=True)
class ArrayBatch:
    """A batch held as one NumPy array (the HTTP protocol, tests and fakes)."""

    data: np.ndarray

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def array(self) -> np.ndarray:
        return self.data

    def one(self, index: int) -> ArrayBatch:
        return ArrayBatch(self.data[index : index + 1])


def pack_arrays(parts: Sequence[np.ndarray]) -> ArrayBatch:
    """One owned array of ``parts`` (concatenated along the first axis; always a copy)."""
    if len(parts) == 1:
        return ArrayBatch(np.array(parts[0], copy=True))
    return ArrayBatch(np.concatenate(parts))


def group_images(chunks: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Cut ``chunks`` (arrays of images along the first axis) into groups of ``size`` images,
    each a list of views of the chunks; the last group may be smaller."""
    if size < 1:
        raise ValueError("a group holds at least one image")
    pending: list[np.ndarray] = []
    count = 0
    for chunk in chunks:
        start = 0
        while start < len(chunk):
            take = min(size - count, len(chunk) - start)
            pending.append(chunk[start : start + take])
            count += take
            start += take
            if count == size:
                yield pending
                pending, count = [], 0
    if pending:
        yield pending

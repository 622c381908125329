"""Packing preprocessed chunks into requests (consumer/inference/batch.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.inference.batch import ArrayBatch, group_images, pack_arrays


def _chunks(sizes: list[int]) -> list[np.ndarray]:
    start = 0
    out = []
    for size in sizes:
        out.append(np.arange(start, start + size, dtype=np.float32).reshape(size, 1))
        start += size
    return out


@given(st.lists(st.integers(0, 9), max_size=8), st.integers(1, 12))
def test_groups_keep_every_image_in_order_and_hold_size_images(sizes: list[int], size: int) -> None:
    groups = list(group_images(_chunks(sizes), size))
    counts = [sum(len(part) for part in group) for group in groups]
    assert all(count == size for count in counts[:-1])
    assert not counts or 0 < counts[-1] <= size
    seen = [int(v) for group in groups for part in group for v in part[:, 0]]
    assert seen == list(range(sum(sizes)))


def test_groups_are_views_of_the_chunks() -> None:
    chunks = _chunks([4, 4, 4])
    groups = list(group_images(chunks, 6))
    assert [[len(p) for p in g] for g in groups] == [[4, 2], [2, 4]]
    assert all(np.shares_memory(p, c) for p, c in zip(groups[0], chunks[:2], strict=True))


def test_a_group_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        list(group_images(_chunks([2]), 0))


def test_packed_arrays_are_owned_copies() -> None:
    chunks = _chunks([3, 2])
    one = pack_arrays([chunks[0]])
    both = pack_arrays(chunks)
    assert not np.shares_memory(one.array(), chunks[0])
    assert both.array()[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert len(both) == 5
    assert both.one(3).array().tolist() == [[3.0]]
    assert isinstance(both.one(0), ArrayBatch)

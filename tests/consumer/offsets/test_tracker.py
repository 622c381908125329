"""Property-based tests of the contiguous-watermark offset tracker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.offsets import OffsetOrderError, OffsetTracker, UnknownOffsetError

TP = ("topic", 0)


@st.composite
def deliveries_and_finish_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Increasing offsets with gaps, and a permutation of a subset of them (finish order)."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60))
    start = draw(st.integers(min_value=0, max_value=1000))
    offsets = []
    cur = start
    for gap in gaps:
        offsets.append(cur)
        cur += gap
    finished = draw(st.permutations(offsets))
    cut = draw(st.integers(min_value=0, max_value=len(finished)))
    return offsets, list(finished[:cut])


@given(deliveries_and_finish_order())
def test_position_never_passes_an_unfinished_offset(case: tuple[list[int], list[int]]) -> None:
    offsets, finish_order = case
    tracker = OffsetTracker()
    for off in offsets:
        tracker.delivered(TP, off)
    done: set[int] = set()
    for off in finish_order:
        tracker.finished(TP, off)
        done.add(off)
        pos = tracker.position(TP)
        assert pos is not None
        # every delivered offset below the position is finished ...
        assert all(o in done for o in offsets if o < pos)
        # ... and the position is either an unfinished delivered offset or one past the last
        unfinished = [o for o in offsets if o not in done]
        expected = unfinished[0] if unfinished else offsets[-1] + 1
        assert pos == expected
    assert tracker.in_flight(TP) == len([o for o in offsets if o not in done])


@given(deliveries_and_finish_order())
def test_committable_only_moves_forward(case: tuple[list[int], list[int]]) -> None:
    offsets, finish_order = case
    tracker = OffsetTracker()
    for off in offsets:
        tracker.delivered(TP, off)
    last = None
    for off in finish_order:
        tracker.finished(TP, off)
        positions = tracker.committable()
        if TP in positions:
            assert last is None or positions[TP] > last
            last = positions[TP]
            tracker.mark_committed(positions)
            assert tracker.committable() == {}
    if len(finish_order) == len(offsets):
        assert tracker.position(TP) == offsets[-1] + 1


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=1, max_value=3)),
        min_size=1,
        max_size=80,
    )
)
def test_partitions_are_independent(steps: list[tuple[int, int]]) -> None:
    tracker = OffsetTracker()
    next_off = {p: 0 for p in range(4)}
    delivered: dict[int, list[int]] = {p: [] for p in range(4)}
    for part, gap in steps:
        off = next_off[part]
        tracker.delivered(("t", part), off)
        delivered[part].append(off)
        next_off[part] = off + gap
    # finish everything of partition 0 only
    for off in delivered[0]:
        tracker.finished(("t", 0), off)
    for part in range(1, 4):
        if delivered[part]:
            assert tracker.position(("t", part)) == delivered[part][0]
    if delivered[0]:
        assert tracker.position(("t", 0)) == delivered[0][-1] + 1


def test_out_of_order_example() -> None:
    tracker = OffsetTracker()
    for off in (10, 11, 12, 15):
        tracker.delivered(TP, off)
    tracker.finished(TP, 12)
    tracker.finished(TP, 15)
    assert tracker.committable() == {TP: 10}
    tracker.finished(TP, 10)
    assert tracker.committable() == {TP: 11}
    tracker.finished(TP, 11)
    assert tracker.committable() == {TP: 16}
    assert tracker.in_flight() == 0


def test_uncommitted_gap() -> None:
    tracker = OffsetTracker()
    for off in range(5):
        tracker.delivered(TP, off)
    tracker.mark_committed({TP: 0})
    for off in range(3):
        tracker.finished(TP, off)
    assert tracker.uncommitted(TP) == 3
    tracker.mark_committed(tracker.committable())
    assert tracker.uncommitted(TP) == 0


def test_misuse_is_refused() -> None:
    tracker = OffsetTracker()
    tracker.delivered(TP, 5)
    with pytest.raises(OffsetOrderError):
        tracker.delivered(TP, 5)
    with pytest.raises(UnknownOffsetError):
        tracker.finished(TP, 6)
    tracker.finished(TP, 5)
    with pytest.raises(UnknownOffsetError):
        tracker.finished(TP, 5)


def test_drop_forgets_partition() -> None:
    tracker = OffsetTracker()
    tracker.delivered(TP, 1)
    assert tracker.knows(TP, 1)
    tracker.drop([TP])
    assert not tracker.knows(TP, 1)
    assert tracker.position(TP) is None
    assert tracker.committable() == {}


def test_skip_to_moves_an_idle_partition_past_records_never_delivered() -> None:
    """Transaction markers are never handed out: an idle partition's position moves past them,
    a partition with work pending does not move, and a position behind the watermark is ignored."""
    tracker = OffsetTracker()
    key = ("t", 0)
    tracker.delivered(key, 0)
    tracker.delivered(key, 1)
    assert not tracker.skip_to(key, 3), "work is pending"
    tracker.finished(key, 0)
    tracker.finished(key, 1)
    assert tracker.committable([key]) == {key: 2}
    assert tracker.skip_to(key, 3)
    assert tracker.committable([key]) == {key: 3}
    assert not tracker.skip_to(key, 2)
    tracker.delivered(key, 4)  # later records are delivered as usual
    assert tracker.committable([key]) == {key: 4}

"""The plan's pure logic: what its commits say, what is left, when the whole plan is done."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import TopicPartition

from consumer.engine import plan as bp
from consumer.engine.exceptions import EngineFatalError

PLAN = bp.Plan("p1", ends={0: 10, 1: 20, 2: 5}, starts={0: 0, 1: 4, 2: 5}, max_rate=30.0)


def _commits(offsets: dict[int, int], plan: bp.Plan = PLAN) -> list[TopicPartition]:
    return [TopicPartition("t", p, off, metadata=plan.metadata(p)) for p, off in offsets.items()]


def test_the_metadata_carries_start_end_rate_and_specs_and_stays_small() -> None:
    plan = bp.Plan("abc", {0: 9}, {0: 2}, 4.5, "earliest", "2026-01-01T00:00:00+00:00")
    entry = bp.decode_entry(plan.metadata(0))
    assert entry == bp.Entry("abc", 9, 2, 4.5, "earliest", "2026-01-01T00:00:00+00:00")
    long_spec = ",".join(f"{p}:{10**12 + p}" for p in range(200))
    text = bp.Plan("abc", {0: 9}, {0: 2}, None, long_spec, None).metadata(0)
    assert text is not None and len(text.encode()) <= bp.METADATA_MAX_BYTES
    assert bp.decode_entry(text) == bp.Entry("abc", 9, 2)
    assert bp.decode(text) == ("abc", 9)


@pytest.mark.parametrize(
    "foreign",
    [None, "", "{", '{"f": 1, "plan": "a", "end": true}', orjson.dumps([1]).decode()],
)
def test_foreign_metadata_is_no_entry(foreign: str | None) -> None:
    assert bp.decode_entry(foreign) is None


def test_remaining_counts_from_the_commits_and_the_start_without_one() -> None:
    assert bp.remaining(_commits({0: 0, 1: 4, 2: 5}), PLAN) == 10 + 16
    assert bp.remaining(_commits({0: 7, 1: 20, 2: 5}), PLAN) == 3
    assert bp.remaining(_commits({0: 7}), PLAN) == 3 + 16, "no commit: from the start"
    other = bp.Plan("other", PLAN.ends, PLAN.starts)
    assert bp.remaining(_commits({0: 10, 1: 20, 2: 5}, other), PLAN) == 26, "not this plan's"
    assert bp.remaining(_commits({0: 10, 1: 20, 2: 5}), PLAN) == 0


def test_complete_needs_every_partition_of_the_plan_at_its_end() -> None:
    assert bp.complete(_commits({0: 10, 1: 20, 2: 5}), PLAN)
    assert not bp.complete(_commits({0: 10, 1: 19, 2: 5}), PLAN)
    assert not bp.complete(_commits({0: 10, 1: 20}), PLAN), "a partition without a commit"
    reset = [*_commits({0: 10, 1: 20}), TopicPartition("t", 2, 5)]
    assert not bp.complete(reset, PLAN), "a commit without the plan (an operator's reset)"


def test_a_plan_is_read_back_from_its_commits_with_its_original_starts() -> None:
    back = bp.from_commits([0, 1, 2], _commits({0: 3, 1: 20, 2: 5}))
    assert back == PLAN
    assert back is not None and back.rate_share(1) == pytest.approx(10.0)


def test_a_lost_or_missing_plan_is_a_clear_error_never_a_restart() -> None:
    with pytest.raises(EngineFatalError, match=r"no backfill plan.*backfill plan --topic t"):
        bp.found("g", "t", [0, 1], [TopicPartition("t", 0, -1001), TopicPartition("t", 1, -1001)])
    reset = [*_commits({0: 3, 1: 4}), TopicPartition("t", 2, 0)]
    with pytest.raises(EngineFatalError, match=r"is lost: partitions \[2\].*--replace"):
        bp.found("g", "t", [0, 1, 2], reset)
    other = bp.Plan("p2", PLAN.ends, PLAN.starts)
    mixed = [*_commits({0: 3, 1: 4}), *_commits({2: 5}, other)]
    with pytest.raises(EngineFatalError, match="several plans"):
        bp.found("g", "t", [0, 1, 2], mixed)


def test_status_figures_rate_and_time_left() -> None:
    from consumer.backfill import Status

    st = Status(PLAN, committed={0: 6, 1: 10}, rate=2.0, members=2, interval_s=5.0)
    d = st.to_dict()
    assert (d["done"], d["total"], d["remaining"]) == (12, 26, 14)
    assert [(p["done"], p["total"]) for p in d["partitions"]] == [(6, 10), (6, 16), (0, 0)]
    assert d["progress"] == round(12 / 26, 4) and d["eta_s"] == 7.0 and not d["complete"]
    assert Status(PLAN, {0: 6}, rate=None, members=0, interval_s=0).eta_s is None
    done = Status(PLAN, {0: 10, 1: 20, 2: 5}, rate=0.0, members=0, interval_s=5).to_dict()
    assert (done["remaining"], done["eta_s"], done["complete"]) == (0, 0.0, True)

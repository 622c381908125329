"""The group's end of a bounded run (consumer/engine/groupend.py), in-process: a member whose own
partitions are done is not finished while the group's commits are short of another partition's
end, whoever holds it; the commits are read at most every interval; a plan's ends win."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition

from consumer.engine import plan as backfill_plan
from consumer.engine.groupend import GroupEnd
from consumer.engine.plan import Plan
from tests.support.clock import ManualClock

TOPIC = "images"


class Cluster:
    """What the group coordinator and the brokers answer: watermarks and the group's commits."""

    def __init__(self, watermarks: dict[int, tuple[int, int]]) -> None:
        self.watermarks = watermarks
        self.commits: dict[int, tuple[int, str | None]] = {}
        self.reads = 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = SimpleNamespace(error=None, partitions={p: None for p in self.watermarks})
        return SimpleNamespace(topics={topic: meta})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> Any:
        return self.watermarks[tp.partition]

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> Any:
        return [TopicPartition(tp.topic, tp.partition, -1) for tp in tps]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.reads += 1
        out = []
        for tp in tps:
            offset, metadata = self.commits.get(tp.partition, (-1001, None))
            found = TopicPartition(tp.topic, tp.partition, offset)
            if metadata is not None:
                found = TopicPartition(tp.topic, tp.partition, offset, metadata=metadata)
            out.append(found)
        return out


def test_own_partitions_done_is_not_the_end_while_another_partition_is_short() -> None:
    cluster, clock = Cluster({0: (0, 10), 1: (0, 7), 2: (5, 5)}), ManualClock(100.0)
    end = GroupEnd.resolve(cluster, TOPIC, clock, plan=None, until=None)  # type: ignore[arg-type]
    assert end.ends == {0: 10, 1: 7, 2: 5}
    cluster.commits = {0: (10, None)}  # ours: partition 0 done; 1 is another member's
    assert not end.complete({0: 10})
    cluster.commits[1] = (7, None)  # the other member (or this one after a rebalance) ends it
    assert not end.complete({0: 10})  # not read again before the interval
    clock.sleep(2.0)
    assert end.complete({0: 10})  # partition 2 is empty (end at its beginning): nothing to read
    reads = cluster.reads
    assert end.complete({0: 10}) and cluster.reads == reads  # once true, no more reads


def test_the_ends_a_member_fixed_at_assignment_win_over_the_start_up_ones() -> None:
    """Messages that arrived between start-up and the assignment are part of this member's run."""
    cluster, clock = Cluster({0: (0, 10), 1: (0, 4)}), ManualClock(100.0)
    end = GroupEnd.resolve(cluster, TOPIC, clock, plan=None, until=None)  # type: ignore[arg-type]
    cluster.commits = {0: (10, None), 1: (4, None)}
    assert not end.complete({0: 12})
    cluster.commits[0] = (12, None)
    clock.sleep(2.0)
    assert end.complete({0: 12})


def test_a_plan_is_done_when_its_commits_carry_it_to_every_end() -> None:
    plan = Plan("p1", ends={0: 10, 1: 7}, starts={0: 0, 1: 0})
    cluster, clock = Cluster({0: (0, 20), 1: (0, 20)}), ManualClock(100.0)
    end = GroupEnd(cluster, TOPIC, clock, plan=plan, ends={}, lows={})  # type: ignore[arg-type]
    assert end.ends == {0: 10, 1: 7}  # the plan's, not the watermarks
    cluster.commits = {0: (10, plan.metadata(0)), 1: (7, None)}  # 1: someone else's commit
    assert not end.complete({})
    cluster.commits[1] = (7, plan.metadata(1))
    clock.sleep(2.0)
    assert end.complete({}) and backfill_plan.complete(
        cluster.committed([TopicPartition(TOPIC, p) for p in (0, 1)], 10), plan
    )

"""Consumers joining, dying and leaving one group mid-stream: nothing is lost, committed work is
never done twice, only moved partitions are revoked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import (
    CommitSampler,
    ConsumerProcess,
    MilvusIds,
    assert_upserts_only,
    describe_group,
    image_record,
    publish,
    wait_until,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6
PHASE = 20
#: Periodic commits are rare, so work moves between members through the revoke's synchronous
#: commit (or, for the killed member, is left uncommitted and redone).
COMMIT_INTERVAL_S = "10"


def revokes_before_shutdown(proc: ConsumerProcess) -> list[tuple[set[int], set[int]]]:
    """(partitions held, partitions revoked) for each revoke of a member before its shutdown."""
    held: set[int] = set()
    out: list[tuple[set[int], set[int]]] = []
    for call in proc.calls():
        if call["op"] == "assign":
            held |= set(call["partitions"])
        elif call["op"] in ("revoke", "lost"):
            out.append((set(held), set(call["partitions"])))
            held -= set(call["partitions"])
    return out


def assert_revokes_commit(proc: ConsumerProcess, positions: dict[str, tuple[int, int]]) -> None:
    """Each mid-stream revoke of a partition the member wrote to since its last commit of it is
    followed, before the next rebalance, by a synchronous commit of that partition."""
    calls = proc.calls()
    dirty: set[int] = set()
    for i, call in enumerate(calls):
        if call["op"] == "upsert":
            dirty |= {positions[m][0] for m in call["ids"] if m in positions}
        elif call["op"] == "commit":
            dirty -= {p for _, p, _ in call["offsets"]}
        elif call["op"] == "revoke":
            committed: set[int] = set()
            for later in calls[i + 1 :]:
                if later["op"] in ("assign", "revoke", "lost"):
                    break
                if later["op"] == "upsert":
                    dirty |= {positions[m][0] for m in later["ids"] if m in positions}
                if later["op"] == "commit":
                    committed |= {p for _, p, _ in later["offsets"]}
            missing = (set(call["partitions"]) & dirty) - committed
            assert not missing, (
                f"REVOKE WITHOUT COMMIT: {proc.log_path.name} gave up {sorted(missing)} "
                "with written, uncommitted rows"
            )
            dirty -= set(call["partitions"])


def group_scenario(
    *,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    topic: str,
    mutant: str | None = None,
) -> None:
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    ids: list[str] = []
    positions: dict[str, tuple[int, int]] = {}

    def publish_phase(phase: int) -> dict[str, tuple[int, int]]:
        batch = [f"g{phase}-{i:02d}" for i in range(PHASE)]
        records = [
            image_record(msg_id, photos[i % len(photos)].as_uri(), partition=i % PARTITIONS)
            for i, msg_id in enumerate(batch)
        ]
        placed = dict(zip(batch, publish(kafka_bootstrap, topic, records), strict=True))
        ids.extend(batch)
        positions.update(placed)
        return placed

    def rows() -> int:
        return count_rows(milvus_uri, topic)

    def group_is(members: int) -> Callable[[], bool]:
        def check() -> bool:
            state = describe_group(kafka_bootstrap, topic)
            return (
                state.state == "STABLE"
                and state.members == members
                and state.assigned == PARTITIONS
            )

        return check

    args = (
        "--topic", topic, "--group", topic, "--collection", topic,
        "--file-root", str(photos[0].parent), "--batch-size", "2", "--max-rate", "4",
    )  # fmt: skip
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_url}
    env = {"IMAGE_EMBEDDER_COMMIT_INTERVAL_S": COMMIT_INTERVAL_S}

    def member(name: str) -> ConsumerProcess:
        return spawn(*args, **servers, env=env, name=name, mutant=mutant)

    sampler_positions = publish_phase(1)
    durable = MilvusIds(milvus_uri, topic)
    with CommitSampler(kafka_bootstrap, topic, topic, sampler_positions, durable) as sampler:
        a, b = member("a"), member("b")
        wait_until(group_is(2), "two members sharing every partition", alive=[a, b])
        wait_until(lambda: rows() >= PHASE // 2, "the two consumers to ingest", alive=[a, b])

        c = member("c")
        wait_until(group_is(3), "three members sharing every partition", alive=[a, b, c])
        sampler.add(publish_phase(2))
        wait_until(lambda: rows() >= PHASE + 4, "ingestion after c joined", alive=[a, b, c])
        sampler.add(publish_phase(3))  # more work for a, so it writes after its last commit

        def a_has_uncommitted_rows() -> bool:
            calls = a.calls()
            last_commit = max((i for i, x in enumerate(calls) if x["op"] == "commit"), default=-1)
            return any(x["op"] == "upsert" for x in calls[last_commit + 1 :])

        wait_until(a_has_uncommitted_rows, "a row written by a after its last commit", alive=[a])
        a.kill()  # mid-stream, with acknowledged rows it never committed
        at_kill = committed_offsets(kafka_bootstrap, topic, topic)
        a_rows = set(a.upserted_ids())
        a_uncommitted = {m for m in a_rows if positions[m][1] >= at_kill.get(positions[m][0], 0)}
        assert a_uncommitted, "the killed member had no uncommitted rows"

        wait_until(group_is(2), "the group to settle on the two survivors", alive=[b, c])
        wait_until(lambda: rows() == len(ids), "every id to reach Milvus", alive=[b, c])
        ends = end_offsets(kafka_bootstrap, topic)
        wait_until(
            lambda: committed_offsets(kafka_bootstrap, topic, topic) == ends,
            "the group to commit to the end",
            alive=[b, c],
        )
        if mutant:
            for proc in (a, b, c):
                proc.assert_mutant_applied()
        mid_stream = {p.log_path.name: revokes_before_shutdown(p) for p in (a, b, c)}
        for proc in (a, b, c):
            assert_revokes_commit(proc, positions)
        b.terminate()
        c.terminate()
        assert b.wait() == 0, b.log_tail()
        assert c.wait() == 0, c.log_tail()
    durable.close()
    sampler.check(min_committed=len(ids))
    sampler.check_commits(a, b, c)

    members = (a, b, c)
    assert_upserts_only(*members)
    # cooperative rebalancing: a member gives up only the partitions that move, never all
    for name, revokes in mid_stream.items():
        for held, revoked in revokes:
            assert revoked < held or not held, f"{name} revoked {revoked} of {held}"
    # Exactly once for committed work: a row is sent again only if the killed member had
    # written it without committing it; every such row is redone by a survivor; each member
    # sends each id once.
    per_member = [Counter(p.upserted_ids()) for p in members]
    for proc, sent in zip(members, per_member, strict=True):
        twice = [m for m, n in sent.items() if n > 1]
        assert not twice, f"DUPLICATE WRITE: {proc.log_path.name} sent {twice[:5]} twice"
    total = Counter(m for sent in per_member for m in sent)
    redone = {m for m, n in total.items() if n > 1}
    assert redone <= a_uncommitted, (
        f"DUPLICATE WRITE: committed work sent again: {sorted(redone - a_uncommitted)[:5]}"
    )
    survivors = set(per_member[1]) | set(per_member[2])
    assert set(total) == set(ids)
    # the survivors account for every message the killed member had not committed, once:
    # written, or skipped as the version already stored (the killed member's uncommitted rows)
    summaries = [b.summary(), c.summary()]
    assert sum(s["ingested"] for s in summaries) == len(survivors), summaries
    accounted = sum(s["ingested"] + s["skipped_stale"] + s["superseded"] for s in summaries)
    assert accounted == len(ids) - len(a_rows - a_uncommitted), (summaries, len(a_rows))
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(ids)
    assert count_rows(milvus_uri, topic) == len(ids)
    assert committed_offsets(kafka_bootstrap, topic, topic) == ends


def test_two_then_three_consumers_one_killed_nothing_missing(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass: two consumers share the stream, a third joins (3 members, all partitions
    assigned), more is published, one of the three is killed with SIGKILL right after it
    wrote rows it had not committed, and the group settles on two members; a sampler reading
    the committed offsets every 0.1 s never saw an offset whose message was not in Milvus;
    every write sent was an upsert; mid-stream revokes gave up only the moved partitions,
    each followed by a commit of what the member had written on them; each member sent each
    id at most once, and an id was sent by two members only when the killed one had left it
    uncommitted; the survivors' summaries add up to the ids they sent and account, once each,
    for every message the killed member had not committed; every id is in Milvus once and the
    group is committed to the end."""
    group_scenario(
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        triton_url=triton_url,
        photos=photos,
        spawn=spawn,
        topic=unique_name,
    )

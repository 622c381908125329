"""A planned backfill run by several workers against the real servers: workers start and stop at
any time, one is killed and restarted, one never gets a partition; all end when the whole plan
is done, every planned message is a row, and little is done twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from tests.consumer.backfill.conftest import WorkerProcess, backfill_command
from tests.consumer.conftest import photo_messages
from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import rows_by_id
from tests.support.reliability import (
    GroupState,
    describe_group,
    image_record,
    publish,
    wait_until,
)

pytestmark = pytest.mark.integration

#: Commits often and a dead member leaves the group soon, so a kill costs little time.
FAST = {"IMAGE_EMBEDDER_COMMIT_INTERVAL_S": "0.2", "IMAGE_EMBEDDER_SESSION_TIMEOUT_MS": "6000"}


def _records(photo_dir: Path, prefix: str, per_partition: int, partitions: int) -> list:
    photos = photo_messages(photo_dir)
    return [
        image_record(f"{prefix}{p}-{i:03d}", photos[(i + p) % len(photos)]["uri"], p)
        for i in range(per_partition)
        for p in range(partitions)
    ]


def _committed_by(proc: WorkerProcess, topic: str) -> int:
    """Messages the worker's own acknowledged commits moved past (0 before its first)."""
    last: dict[int, int] = {}
    first: dict[int, int] = {}
    for call in proc.calls():
        if call["op"] == "commit":
            for t, p, off in call["offsets"]:
                if t == topic:
                    first.setdefault(p, off)
                    last[p] = off
    return sum(last[p] - first[p] for p in last)


def _held(proc: WorkerProcess) -> list[int]:
    """The partitions the worker's log says it was given (so far)."""
    held: list[int] = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if '"partitions assigned"' in line:
            held += orjson.loads(line)["partitions"]
    return held


def test_three_workers_one_killed_and_restarted_and_a_fourth_without_a_partition(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    worker: Callable[..., WorkerProcess],
    unique_name: str,
) -> None:
    partitions, per_partition = 3, 40
    topic = group = unique_name
    create_topic(kafka_bootstrap, topic, partitions=partitions)
    planned = _records(photo_dir, "m", per_partition, partitions)
    publish(kafka_bootstrap, topic, planned)
    common = ("--topic", topic, "--group", group)
    made = backfill_command(
        kafka_bootstrap, "plan", *common, "--from", "earliest", "--until-end", "--json"
    )
    assert made.returncode == 0, made.stderr
    plan = made.json()
    assert plan["messages"] == len(planned)
    late = _records(photo_dir, "late", 2, partitions)  # after the plan: not part of it
    publish(kafka_bootstrap, topic, late)

    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
    args = (*common, "--collection", topic, "--file-root", str(photo_dir), "--batch-size", "4")
    # slow enough for the fourth to join while they work (40 s a partition), and for the first
    # to be killed mid-way
    workers = [worker(*args, "--max-rate", "1", env=FAST, **servers) for _ in range(3)]
    victim = workers[0]
    wait_until(
        lambda: describe_group(kafka_bootstrap, group) == GroupState("STABLE", 3, 3),
        "three workers holding the three partitions",
        alive=workers,
    )
    fourth = worker(*args, env=FAST, **servers)
    wait_until(
        lambda: describe_group(kafka_bootstrap, group) == GroupState("STABLE", 4, 3),
        "a fourth member",
        alive=[*workers, fourth],
    )
    assert not _held(fourth), "the fourth worker got no partition"
    wait_until(
        lambda: _committed_by(victim, topic) >= 3, "the first worker committed", alive=[victim]
    )
    assert victim.running(), "killed mid-way"
    victim.kill()
    assert sum(committed_offsets(kafka_bootstrap, group, topic).values()) < len(planned)
    restarted = worker(*args, env=FAST, **servers)
    everyone = [*workers, fourth, restarted]

    for proc in [*workers[1:], fourth, restarted]:
        assert proc.wait() == 0, proc.log_tail()
    ends = end_offsets(kafka_bootstrap, topic)
    assert committed_offsets(kafka_bootstrap, group, topic) == {
        p: ends[p] - 2 for p in range(partitions)
    }, "the plan's ends, not the messages published after it"
    ids = sorted(rows_by_id(milvus_uri, topic, ["id"]))
    assert ids == sorted(r.key.decode() for r in planned)
    processed = [proc.processed() for proc in everyone]
    assert sum(processed) <= 1.15 * len(planned), (processed, len(planned))
    assert all(proc.plan_ends() for proc in [*workers[1:], fourth, restarted])

    status = backfill_command(kafka_bootstrap, "status", *common, "--interval", "0", "--json")
    assert status.returncode == 0, status.stderr
    st = status.json()
    total = len(planned)
    assert (st["remaining"], st["done"], st["total"], st["complete"]) == (0, total, total, True)
    commits = committed_offsets(kafka_bootstrap, group, topic)
    assert {p["partition"]: p["committed"] for p in st["partitions"]} == commits
    assert st["eta_s"] == 0.0

    again = worker(*args, env=FAST, **servers)  # the plan is done: a new worker ends at once
    assert again.wait() == 0, again.log_tail()
    assert again.processed() == 0


def test_a_plan_until_a_time_ends_at_the_same_offsets_for_every_worker_while_messages_arrive(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    worker: Callable[..., WorkerProcess],
    unique_name: str,
) -> None:
    partitions = 2
    topic = group = unique_name
    create_topic(kafka_bootstrap, topic, partitions=partitions)
    before = _records(photo_dir, "old", 6, partitions)
    publish(kafka_bootstrap, topic, before)
    time.sleep(1.0)
    until = datetime.now(UTC)
    time.sleep(1.0)
    stop = threading.Event()
    sent: list[int] = []

    def keep_publishing() -> None:
        while not stop.is_set():
            publish(kafka_bootstrap, topic, _records(photo_dir, f"new{len(sent)}-", 1, partitions))
            sent.append(partitions)
            stop.wait(0.3)

    publisher = threading.Thread(target=keep_publishing, daemon=True)
    publisher.start()
    try:
        common = ("--topic", topic, "--group", group)
        wait_until(lambda: len(sent) >= 2, "messages after --until")
        made = backfill_command(
            kafka_bootstrap, "plan", *common, "--from", "earliest", "--until", until.isoformat()
        )
        assert made.returncode == 0, made.stderr
        servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
        args = (*common, "--collection", topic, "--file-root", str(photo_dir))
        first = worker(*args, env=FAST, **servers)
        wait_until(lambda: bool(first.calls()), "the first worker started", alive=[first])
        second = worker(*args, env=FAST, **servers)
        assert first.wait() == 0, first.log_tail()
        assert second.wait() == 0, second.log_tail()
    finally:
        stop.set()
        publisher.join(30)
    expected = {str(p): 6 for p in range(partitions)}
    assert first.plan_ends() == second.plan_ends() == expected
    assert committed_offsets(kafka_bootstrap, group, topic) == {p: 6 for p in range(partitions)}
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(r.key.decode() for r in before)
    assert end_offsets(kafka_bootstrap, topic)[0] > 6, "the topic kept receiving messages"


def test_a_worker_without_a_plan_exits_1_and_says_what_to_do(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    worker: Callable[..., WorkerProcess],
    unique_name: str,
) -> None:
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
    lone = worker(
        "--topic", unique_name, "--group", unique_name, "--collection", unique_name, **servers
    )
    assert lone.wait() == 1
    log = lone.log_tail()
    assert "no backfill plan" in log and "backfill plan --topic" in log, log
    assert "Traceback" not in log
    refused = backfill_command(
        kafka_bootstrap, "run", "--topic", unique_name, "--group", unique_name, "--from", "earliest"
    )
    assert refused.returncode == 2 and "belongs to the plan" in refused.stderr


def test_no_worker_ends_before_the_whole_plan_is_done(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    worker: Callable[..., WorkerProcess],
    unique_name: str,
) -> None:
    """A worker that finished its partitions while another still works stays, so that a Job's
    pods do not succeed while part of the plan has nobody left to take it over."""
    partitions = 2
    topic = group = unique_name
    create_topic(kafka_bootstrap, topic, partitions=partitions)
    planned = _records(photo_dir, "m", 40, partitions)
    publish(kafka_bootstrap, topic, planned)
    common = ("--topic", topic, "--group", group)
    made = backfill_command(kafka_bootstrap, "plan", *common, "--from", "earliest", "--until-end")
    assert made.returncode == 0, made.stderr
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
    args = (*common, "--collection", topic, "--file-root", str(photo_dir))
    slow = worker(*args, "--max-rate", "1", env=FAST, **servers)
    wait_until(lambda: len(_held(slow)) == partitions, "the first worker holds both", alive=[slow])
    fast = worker(*args, env=FAST, **servers)
    wait_until(lambda: bool(_held(fast)), "the second worker took a partition", alive=[fast])
    assert fast.wait() == 0, fast.log_tail()
    done_when_fast_ended = committed_offsets(kafka_bootstrap, group, topic)
    assert slow.wait() == 0, slow.log_tail()
    assert done_when_fast_ended == {p: 40 for p in range(partitions)}, "ended before the plan"

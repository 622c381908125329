"""SIGTERM mid-batch: drain, commit exactly what was processed, and a restart repeats nothing;
a second SIGINT aborts without committing unfinished work; the drain is bounded."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import (
    CommitSampler,
    ConsumerProcess,
    LocalHttpServer,
    MilvusIds,
    Route,
    assert_restart_redid_the_rest,
    assert_upserts_only,
    assert_written_once_per_ingest,
    image_record,
    publish,
    send_bytes,
    send_slowly,
    wait_until,
)

pytestmark = pytest.mark.integration

MESSAGES = 30
PARTITIONS = 2
#: Position of the message fetched from a slow server: its fetch is in flight at SIGTERM.
SLOW_INDEX = 10


def test_sigterm_mid_batch_commits_what_was_processed_and_restart_repeats_nothing(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass: SIGTERM lands while a fetch is in flight (a slow HTTP answer) and intake is
    throttled, so work remains; the process drains and exits 0; per partition the offsets
    present in Milvus are exactly [0, committed) (committed position == processed position,
    the in-flight message included); the restart ingests exactly end - committed messages
    (nothing processed twice) and every id ends in Milvus once."""
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    started = threading.Event()
    slow = LocalHttpServer(
        {"/slow.jpg": send_slowly(photos[1].read_bytes(), delay_s=3.0, started=started)}
    ).start()
    try:
        ids = [f"s{i:02d}" for i in range(MESSAGES)]
        records = [
            image_record(
                msg_id,
                slow.url("/slow.jpg") if i == SLOW_INDEX else photos[i % len(photos)].as_uri(),
                partition=i % PARTITIONS,
            )
            for i, msg_id in enumerate(ids)
        ]
        positions = dict(zip(ids, publish(kafka_bootstrap, topic, records), strict=True))
        args = (
            "--topic",
            topic,
            "--group",
            topic,
            "--collection",
            topic,
            "--file-root",
            str(photos[0].parent),
            "--allowed-network",
            "127.0.0.1/32",
            "--batch-size",
            "2",
            "--max-rate",
            "4",
        )
        servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_url}
        durable = MilvusIds(milvus_uri, topic)
        with CommitSampler(kafka_bootstrap, topic, topic, positions, durable) as sampler:
            first = spawn(*args, **servers, name="first")
            wait_until(started.is_set, "the slow fetch to start", alive=[first])
            first.terminate()
            assert first.wait() == 0, first.log_tail()
            assert "drain timed out" not in first.log_path.read_text()
        durable.close()
        sampler.check(min_committed=1)
        sampler.check_commits(first)
    finally:
        slow.stop()

    committed = committed_offsets(kafka_bootstrap, topic, topic)
    rows = rows_by_id(milvus_uri, topic, ["id", "kafka_partition", "kafka_offset"])
    assert ids[SLOW_INDEX] in rows, "the message in flight at SIGTERM was not drained"
    for part in range(PARTITIONS):
        present = sorted(r["kafka_offset"] for r in rows.values() if r["kafka_partition"] == part)
        assert present == list(range(committed.get(part, 0))), (part, present, committed)
    done = sum(committed.values())
    assert done < MESSAGES, "SIGTERM came after everything was processed"
    first_summary = first.summary()
    assert first_summary["ingested"] == done, first_summary

    restart = spawn(*args, "--until-end", **servers, name="restart")
    assert restart.wait() == 0, restart.log_tail()
    summary = restart.summary()
    assert summary["ingested"] == MESSAGES - done, (summary, committed)
    assert summary["dead_lettered"] == 0, summary
    assert_upserts_only(first, restart)
    assert_written_once_per_ingest(first)
    uncommitted = {m for m, (p, off) in positions.items() if off >= committed.get(p, 0)}
    assert_restart_redid_the_rest(restart, uncommitted, set(first.upserted_ids()))
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(positions)
    assert count_rows(milvus_uri, topic) == MESSAGES
    assert committed_offsets(kafka_bootstrap, topic, topic) == end_offsets(kafka_bootstrap, topic)


#: Messages of the abort and drain-bound scenarios; the one at HELD_INDEX is fetched from a
#: server that answers only when the test lets it (after the consumer has exited).
STOP_MESSAGES = 12
HELD_INDEX = 4
#: Exit wait for a stop that must end by itself: far above the 3 s drain bound, far below
#: the held fetch (600 s timeouts), so only a bounded drain or an abort can end the process.
STOP_EXIT_WAIT_S = 30.0


def send_held(data: bytes, started: threading.Event, release: threading.Event) -> Route:
    """A route that sets ``started``, waits until ``release`` is set, then answers ``data``."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        started.set()
        release.wait(900)
        send_bytes(data)(handler)

    return route


def stop_scenario(
    how: str,
    *,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    topic: str,
    mutant: str | None = None,
    hold_until_exit: bool = False,
) -> None:
    """``how`` = "sigint-twice" (abort: exit 130, no summary) or "sigterm-drain-bound" (the
    drain gives up after drain_timeout_s = 3 s: exit 0). Either way, with one fetch held:
    nothing is committed whose message is not in Milvus (sampled every 0.1 s), the held
    message is not committed, and the restart ingests exactly the uncommitted rest.

    The held fetch is let go once the consumer has closed its Kafka consumer (all that is left
    is the exit), or with ``hold_until_exit`` only after the process exited by itself."""
    create_topic(kafka_bootstrap, topic, partitions=PARTITIONS)
    started, release = threading.Event(), threading.Event()
    held = LocalHttpServer({"/held.jpg": send_held(photos[2].read_bytes(), started, release)})
    held.start()
    try:
        ids = [f"h{i:02d}" for i in range(STOP_MESSAGES)]
        records = [
            image_record(
                msg_id,
                held.url("/held.jpg") if i == HELD_INDEX else photos[i % len(photos)].as_uri(),
                partition=i % PARTITIONS,
            )
            for i, msg_id in enumerate(ids)
        ]
        positions = dict(zip(ids, publish(kafka_bootstrap, topic, records), strict=True))
        held_at = positions[ids[HELD_INDEX]]
        args = (
            "--topic", topic, "--group", topic, "--collection", topic,
            "--file-root", str(photos[0].parent), "--allowed-network", "127.0.0.1/32",
            "--batch-size", "2",
        )  # fmt: skip
        servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_url}
        env = {
            "IMAGE_EMBEDDER_DRAIN_TIMEOUT_S": "3",
            "IMAGE_EMBEDDER_COMMIT_INTERVAL_S": "0.2",
            "IMAGE_EMBEDDER_FETCH_READ_TIMEOUT_S": "600",
            "IMAGE_EMBEDDER_FETCH_TOTAL_TIMEOUT_S": "600",
        }
        durable = MilvusIds(milvus_uri, topic)
        with CommitSampler(kafka_bootstrap, topic, topic, positions, durable) as sampler:
            first = spawn(*args, **servers, env=env, name="first", mutant=mutant)
            wait_until(started.is_set, "the held fetch to start", alive=[first])
            wait_until(
                lambda: any(c["op"] == "commit" for c in first.calls()),
                "a first commit",
                alive=[first],
            )
            if how == "sigint-twice":
                first.send_signal(signal.SIGINT)
                time.sleep(1.0)  # the first one starts the drain (same outcome if both land)
                first.send_signal(signal.SIGINT)
            else:
                first.terminate()
            if not hold_until_exit:
                wait_until(
                    lambda: "partitions revoked" in first.log_path.read_text(),
                    "the consumer to close (DRAIN BOUND)",
                    timeout_s=STOP_EXIT_WAIT_S,
                    alive=[first],
                )
                release.set()
            code = first.wait(STOP_EXIT_WAIT_S)
            if how == "sigint-twice":
                assert code == 130, f"ABORT: exit {code} after two SIGINTs\n{first.log_tail()}"
                assert not first.summary_path or not first.summary_path.exists()
            else:
                assert code == 0, f"DRAIN BOUND: exit {code}\n{first.log_tail()}"
                assert "drain timed out" in first.log_path.read_text(), first.log_tail()
            if mutant:
                first.assert_mutant_applied()
            committed = committed_offsets(kafka_bootstrap, topic, topic)
            assert committed.get(held_at[0], 0) <= held_at[1], (
                f"COMMITTED BEFORE DURABLE: the held message {held_at} was committed: {committed}"
            )
            release.set()
            restart = spawn(*args, "--until-end", **servers, name="restart")
            assert restart.wait() == 0, restart.log_tail()
        durable.close()
        sampler.check(min_committed=1)
        sampler.check_commits(first, restart)
    finally:
        release.set()
        held.stop()
    done = sum(committed.values())
    assert 0 < done < STOP_MESSAGES, committed
    assert_upserts_only(first, restart)
    uncommitted = {m for m, (p, off) in positions.items() if off >= committed.get(p, 0)}
    assert len(uncommitted) == STOP_MESSAGES - done
    assert_restart_redid_the_rest(restart, uncommitted, set(first.upserted_ids()))
    assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == sorted(positions)
    assert committed_offsets(kafka_bootstrap, topic, topic) == end_offsets(kafka_bootstrap, topic)


@pytest.mark.parametrize("how", ["sigint-twice", "sigterm-drain-bound"])
def test_second_sigint_aborts_and_drain_is_bounded_committing_nothing_unwritten(
    how: str,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass, with one fetch held by its server and a first commit done: after two SIGINTs the
    consumer closes without waiting for the fetch and exits 130 with no summary; after a
    SIGTERM with drain_timeout_s = 3 the drain gives up ("drain timed out") and the process
    exits 0; in both, every offset committed at any 0.1 s sample names a message in Milvus,
    the held message's offset is not committed, and the restart ingests exactly the
    uncommitted rest, all ids once. (The held fetch is let go once the Kafka consumer is
    closed; that the exit itself does not wait for it is the test below.)"""
    stop_scenario(
        how,
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        triton_url=triton_url,
        photos=photos,
        spawn=spawn,
        topic=unique_name,
    )


@pytest.mark.parametrize("how", ["sigint-twice", "sigterm-drain-bound"])
def test_abort_and_drain_bound_exit_while_a_fetch_is_stuck(
    how: str,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass: as above, but the held fetch is let go only after the process has exited: the
    process must exit by itself (within STOP_EXIT_WAIT_S, far below the fetch's 600 s)."""
    stop_scenario(
        how,
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        triton_url=triton_url,
        photos=photos,
        spawn=spawn,
        topic=unique_name,
        hold_until_exit=True,
    )

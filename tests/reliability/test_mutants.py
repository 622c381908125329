"""Tests of the tests: each deliberately broken consumer (``tests/support/mutant_consumer.py``)
must be caught by the reliability check written for it, with that check's own message.

A mutant test passes only when (1) the mutant was applied in every consumer it ran in (the
launcher records it) and (2) the scenario failed with the named check's assertion. A check
that stops catching its mutant turns its mutant test red.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack import KafkaServer, MilvusServer, TritonServer
from tests.reliability.test_burst import _ingest
from tests.reliability.test_crash import crash_scenario
from tests.reliability.test_group import group_scenario
from tests.reliability.test_outages import (
    broker_outage_scenario,
    milvus_outage_scenario,
    triton_outage_scenario,
)
from tests.reliability.test_poison import huge_body_scenario
from tests.reliability.test_replay import replay_scenario
from tests.reliability.test_shutdown import stop_scenario
from tests.support.reliability import ConsumerProcess

pytestmark = pytest.mark.integration


class Tracked:
    """``spawn`` that remembers the processes it started."""

    def __init__(self, spawn: Callable[..., ConsumerProcess]) -> None:
        self._spawn = spawn
        self.procs: list[ConsumerProcess] = []

    def __call__(self, *args: Any, **kwargs: Any) -> ConsumerProcess:
        proc = self._spawn(*args, **kwargs)
        self.procs.append(proc)
        return proc


def assert_caught(
    mutant: str, match: str, scenario: Callable[..., None], spawn: Tracked, **kwargs: Any
) -> None:
    with pytest.raises(AssertionError, match=match) as caught:
        scenario(spawn=spawn, mutant=mutant, **kwargs)
    mutated = [p for p in spawn.procs if p.mutant == mutant]
    assert mutated, "the mutant never ran"
    for proc in mutated:
        if proc.calls():  # started far enough to write its calls file
            proc.assert_mutant_applied()
    print(f"{mutant} caught: {str(caught.value).splitlines()[0][:200]}")


@pytest.fixture
def tracked(spawn: Callable[..., ConsumerProcess]) -> Tracked:
    return Tracked(spawn)


@pytest.fixture
def servers(kafka_bootstrap: str, milvus_uri: str, triton_url: str) -> dict[str, str]:
    return {"kafka_bootstrap": kafka_bootstrap, "milvus_uri": milvus_uri, "triton_url": triton_url}


@pytest.mark.parametrize(
    ("mutant", "match"), [("insert", "NOT AN UPSERT"), ("double_write", "DUPLICATE WRITE")]
)
def test_insert_or_a_row_written_twice_is_caught(
    mutant: str,
    match: str,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    tracked: Tracked,
    unique_name: str,
) -> None:
    """Milvus Lite hides both (count(*) and the ids are right): what was sent shows them."""

    def scenario(*, spawn: Tracked, mutant: str) -> None:
        servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_url}
        _ingest(12, unique_name, servers, photos, spawn, mutant=mutant)

    assert_caught(mutant, match, scenario, tracked)


def test_no_stale_write_guard_is_caught_by_the_replay(
    servers: dict[str, str], photos: list[Path], tracked: Tracked, unique_name: str
) -> None:
    assert_caught(
        "no_stale_guard",
        "STALE OVERWRITE",
        replay_scenario,
        tracked,
        photos=photos,
        topic=unique_name,
        **servers,
    )


def test_committing_what_was_polled_is_caught_by_the_crash_test(
    servers: dict[str, str],
    photos: list[Path],
    tracked: Tracked,
    unique_name: str,
    tmp_path: Path,
) -> None:
    assert_caught(
        "commit_ahead",
        "COMMITTED BEFORE DURABLE",
        crash_scenario,
        tracked,
        point="after_poll",
        photos=photos,
        topic=unique_name,
        tmp_path=tmp_path,
        **servers,
    )


@pytest.mark.slow
def test_committing_on_hand_off_is_caught_by_the_milvus_outage_test(
    kafka_bootstrap: str,
    triton_url: str,
    start_milvus: Callable[..., MilvusServer],
    photos: list[Path],
    tracked: Tracked,
    unique_name: str,
) -> None:
    assert_caught(
        "commit_on_handoff",
        "COMMITTED BEFORE DURABLE",
        milvus_outage_scenario,
        tracked,
        outage_s=6.0,
        kafka_bootstrap=kafka_bootstrap,
        triton_url=triton_url,
        start_milvus=start_milvus,
        photos=photos,
        topic=unique_name,
    )


@pytest.mark.parametrize(
    ("how", "mutant", "match"),
    [
        ("sigint-twice", "sigint_once", "ABORT: exit 0"),
        ("sigterm-drain-bound", "no_drain_bound", "DRAIN BOUND"),
    ],
)
def test_no_abort_on_a_second_sigint_or_an_unbounded_drain_is_caught(
    how: str,
    mutant: str,
    match: str,
    servers: dict[str, str],
    photos: list[Path],
    tracked: Tracked,
    unique_name: str,
) -> None:
    assert_caught(
        mutant, match, stop_scenario, tracked, how=how, photos=photos, topic=unique_name, **servers
    )


def test_no_download_cap_is_caught_by_the_memory_bound(
    servers: dict[str, str], photos: list[Path], tracked: Tracked, unique_name: str
) -> None:
    assert_caught(
        "no_download_cap",
        "MEMORY",
        huge_body_scenario,
        tracked,
        photos=photos,
        topic=unique_name,
        **servers,
    )


@pytest.mark.slow
def test_revoke_without_its_commit_is_caught_by_the_group_test(
    servers: dict[str, str], photos: list[Path], tracked: Tracked, unique_name: str
) -> None:
    assert_caught(
        "revoke_no_commit",
        "REVOKE WITHOUT COMMIT",
        group_scenario,
        tracked,
        photos=photos,
        topic=unique_name,
        **servers,
    )


@pytest.mark.slow
def test_inference_retries_without_backoff_are_caught_by_the_triton_outage_test(
    kafka_bootstrap: str,
    milvus_uri: str,
    start_triton: Callable[..., TritonServer],
    photos: list[Path],
    tracked: Tracked,
    unique_name: str,
) -> None:
    assert_caught(
        "no_triton_backoff",
        "NO BACKOFF",
        triton_outage_scenario,
        tracked,
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        start_triton=start_triton,
        photos=photos,
        topic=unique_name,
    )


@pytest.mark.slow
def test_committing_what_was_polled_is_caught_by_the_broker_outage_test(
    start_kafka: Callable[..., KafkaServer],
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    tracked: Tracked,
    unique_name: str,
) -> None:
    assert_caught(
        "commit_ahead",
        "COMMITTED BEFORE DURABLE",
        broker_outage_scenario,
        tracked,
        start_kafka=start_kafka,
        milvus_uri=milvus_uri,
        triton_url=triton_url,
        photos=photos,
        topic=unique_name,
    )

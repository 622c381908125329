"""Replaying a topic: the same rows, the same vectors, and a replayed older message never
overwrites the newer row."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tests.support.kafka import create_topic
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import (
    ConsumerProcess,
    assert_upserts_only,
    assert_written_once_per_ingest,
    image_record,
    publish,
)

pytestmark = pytest.mark.integration

IDS = 20
REPUBLISHED = 4


def replay_scenario(
    *,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    topic: str,
    mutant: str | None = None,
) -> None:
    create_topic(kafka_bootstrap, topic, partitions=2)
    ids = [f"r{i:02d}" for i in range(IDS)]
    publish(
        kafka_bootstrap,
        topic,
        [
            image_record(msg_id, photos[i % len(photos)].as_uri(), partition=i % 2)
            for i, msg_id in enumerate(ids)
        ],
    )
    # every original is acknowledged (timestamped) before this instant, every newer copy after
    between = datetime.now(UTC)
    time.sleep(0.05)
    later = {msg_id: photos[(i + 5) % len(photos)].as_uri() for i, msg_id in enumerate(ids[:4])}
    publish(
        kafka_bootstrap,
        topic,
        [image_record(m, uri, partition=i % 2) for i, (m, uri) in enumerate(later.items())],
    )
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_url}
    base = ("--topic", topic, "--collection", topic, "--file-root", str(photos[0].parent))
    live = spawn(
        *base, "--until-end", "--group", f"{topic}_live", **servers, name="live", mutant=mutant
    )
    assert live.wait() == 0, live.log_tail()
    before = rows_by_id(milvus_uri, topic, ["id", "uri", "embedding"])
    assert sorted(before) == ids
    for msg_id, uri in later.items():
        assert before[msg_id]["uri"] == uri

    # Replay only the originals: each republished id's original is older than its stored row,
    # and nothing newer of it is in flight, so only the stale-write guard keeps the newer row.
    replay = spawn(
        *base, "--group", f"{topic}_replay", "--from", "earliest", "--until", between.isoformat(),
        **servers, name="replay", mutant=mutant,
    )  # fmt: skip
    assert replay.wait() == 0, replay.log_tail()
    if mutant:
        replay.assert_mutant_applied()
    after = rows_by_id(milvus_uri, topic, ["id", "uri", "embedding"])
    for msg_id, uri in later.items():
        assert after[msg_id]["uri"] == uri, f"STALE OVERWRITE: the replay overwrote {msg_id}"
    assert_upserts_only(live, replay)
    assert_written_once_per_ingest(live)
    assert_written_once_per_ingest(replay)
    summary = replay.summary()
    assert summary["dead_lettered"] == 0, summary
    # the older copies are skipped as stale; a copy of the stored version itself may be
    # rewritten (same row) or skipped, but each message is accounted for once
    assert summary["skipped_stale"] >= REPUBLISHED, summary
    assert summary["ingested"] + summary["skipped_stale"] + summary["superseded"] == IDS, summary
    assert not set(replay.upserted_ids()) & set(later), "STALE OVERWRITE: an older copy was sent"
    assert count_rows(milvus_uri, topic) == IDS
    assert sorted(after) == ids
    for msg_id, row in before.items():
        assert after[msg_id]["uri"] == row["uri"]
        np.testing.assert_allclose(after[msg_id]["embedding"], row["embedding"], atol=1e-5)


def test_replay_of_older_messages_changes_nothing(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass: 20 ids, 4 of them published again later with another image, are ingested by one
    group (each write an upsert, one per ingested message); a replay with a new group from the
    earliest offset up to the instant between the two publications (so only the originals)
    skips the 4 older copies as stale (never sent to Milvus; the stored rows keep their later
    image), accounts for each of the 20 messages once, keeps every vector (within 1e-5) and
    leaves 20 rows."""
    replay_scenario(
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        triton_url=triton_url,
        photos=photos,
        spawn=spawn,
        topic=unique_name,
    )

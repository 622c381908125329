"""Replaying a whole topic: the same rows, the same vectors, latest still wins."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.support.kafka import create_topic
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import ConsumerProcess, image_record, publish

pytestmark = pytest.mark.integration


def test_replay_of_the_whole_topic_changes_nothing(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass: a topic of 20 ids, 4 of them published again later with another image, is
    ingested by one group; a replay of the whole topic with a new group (--from earliest)
    leaves the row count unchanged (20), every vector equal within 1e-5, and the re-published
    ids still hold their later image (the older copies are skipped as stale, never written
    over the newer rows)."""
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=2)
    ids = [f"r{i:02d}" for i in range(20)]
    records = [
        image_record(msg_id, photos[i % len(photos)].as_uri(), partition=i % 2)
        for i, msg_id in enumerate(ids)
    ]
    later = {msg_id: photos[(i + 5) % len(photos)].as_uri() for i, msg_id in enumerate(ids[:4])}
    records += [
        image_record(msg_id, uri, partition=i % 2) for i, (msg_id, uri) in enumerate(later.items())
    ]
    publish(kafka_bootstrap, topic, records)
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
    base = (
        "--topic", topic, "--collection", topic, "--until-end",
        "--file-root", str(photos[0].parent),
    )  # fmt: skip
    first = spawn(*base, "--group", f"{topic}_live", **servers, name="live")
    assert first.wait() == 0, first.log_tail()
    before = rows_by_id(milvus_uri, topic, ["id", "uri", "embedding"])
    assert sorted(before) == ids
    for msg_id, uri in later.items():
        assert before[msg_id]["uri"] == uri

    replay = spawn(
        *base, "--group", f"{topic}_replay", "--from", "earliest", **servers, name="replay"
    )
    assert replay.wait() == 0, replay.log_tail()
    summary = replay.summary()
    assert summary["dead_lettered"] == 0, summary
    assert summary["ingested"] + summary["skipped_stale"] + summary["superseded"] == len(records)
    after = rows_by_id(milvus_uri, topic, ["id", "uri", "embedding"])
    assert count_rows(milvus_uri, topic) == len(ids)
    assert sorted(after) == ids
    for msg_id, row in before.items():
        assert after[msg_id]["uri"] == row["uri"]
        np.testing.assert_allclose(after[msg_id]["embedding"], row["embedding"], atol=1e-5)

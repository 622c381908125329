"""Replay and backfill: --from, --until, --reset-offsets and the stale-write guard."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from tests.consumer.conftest import photo_messages
from tests.support.kafka import create_topic
from tests.support.milvus import count_rows, rows_by_id

pytestmark = pytest.mark.integration


def _produce_at(bootstrap: str, topic: str, items: list[tuple[dict, int]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value, ts_ms in items:
        producer.produce(
            topic, key=value["id"].encode(), value=orjson.dumps(value), timestamp=ts_ms
        )
    assert producer.flush(30) == 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_replay_from_a_time_ingests_exactly_the_messages_at_or_after_it(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """--from <time> with --until-end: only messages stamped at or after the time."""
    messages = photo_messages(photo_dir)[:6]
    base = int(time.time() * 1000) - 60_000
    stamps = [base + i * 1000 for i in range(len(messages))]
    create_topic(kafka_bootstrap, unique_name, partitions=2)
    _produce_at(kafka_bootstrap, unique_name, list(zip(messages, stamps, strict=True)))
    run = run_consumer(
        "--topic",
        unique_name,
        "--collection",
        unique_name,
        "--until-end",
        "--from",
        _iso(stamps[3]),
        "--file-root",
        str(photo_dir),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = rows_by_id(milvus_uri, unique_name, ["id"])
    assert sorted(rows) == sorted(m["id"] for m in messages[3:])


def test_until_time_bounds_the_run(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """--until <time>: messages stamped after it are neither ingested nor committed."""
    messages = photo_messages(photo_dir)[:5]
    base = int(time.time() * 1000) - 60_000
    stamps = [base + i * 1000 for i in range(len(messages))]
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    _produce_at(kafka_bootstrap, unique_name, list(zip(messages, stamps, strict=True)))
    run = run_consumer(
        "--topic",
        unique_name,
        "--group",
        unique_name,
        "--collection",
        unique_name,
        "--until",
        _iso(stamps[1]),
        "--file-root",
        str(photo_dir),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(rows_by_id(milvus_uri, unique_name, ["id"])) == sorted(
        m["id"] for m in messages[:2]
    )


def test_older_replay_never_overwrites_newer_rows(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """Stale-write guard: a message older than the stored row for its id is skipped."""
    now = int(time.time() * 1000)
    newer = {"id": "x", "uri": (photo_dir / "rocket.jpg").as_uri()}
    older = {"id": "x", "uri": (photo_dir / "chelsea.jpg").as_uri()}
    live, old = f"{unique_name}_live", f"{unique_name}_old"
    create_topic(kafka_bootstrap, live)
    create_topic(kafka_bootstrap, old)
    _produce_at(kafka_bootstrap, live, [(newer, now)])
    _produce_at(kafka_bootstrap, old, [(older, now - 10_000)])
    common = ("--collection", unique_name, "--until-end", "--file-root", str(photo_dir))
    assert run_consumer("--topic", live, "--group", live, *common).returncode == 0
    replay = run_consumer("--topic", old, "--group", old, *common)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert replay.summary is not None and replay.summary["skipped_stale"] == 1
    row = rows_by_id(milvus_uri, unique_name, ["id", "uri", "kafka_ts"])["x"]
    assert row["uri"].endswith("rocket.jpg") and row["kafka_ts"] == now


def test_from_needs_reset_offsets_to_move_a_committed_group(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """A group with committed offsets is not moved by --from unless --reset-offsets is given."""
    messages = photo_messages(photo_dir)[:3]
    create_topic(kafka_bootstrap, unique_name)
    _produce_at(kafka_bootstrap, unique_name, [(m, int(time.time() * 1000)) for m in messages])
    common = (
        "--topic",
        unique_name,
        "--group",
        unique_name,
        "--collection",
        unique_name,
        "--until-end",
        "--file-root",
        str(photo_dir),
    )
    assert run_consumer(*common).returncode == 0
    refused = run_consumer(*common, "--from", "earliest")
    assert refused.returncode == 1
    assert "--reset-offsets" in refused.stderr
    moved = run_consumer(*common, "--from", "earliest", "--reset-offsets")
    assert moved.returncode == 0, moved.stderr[-3000:]
    # moved back to the start: every message is read again (the same versions: not rewritten)
    assert moved.summary is not None and moved.summary["skipped_stale"] == len(messages)


def test_an_older_upsert_arriving_after_a_delete_leaves_the_id_deleted(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """A deletion keeps its version in a tombstone: an older upsert of the id replayed later
    (here from another topic, as a backfill or a redrive would bring it) does not bring the id
    back, a newer one does, and tombstones never count as rows (before: the old upsert found
    no row and resurrected the deleted image)."""
    now = int(time.time() * 1000)
    rocket = (photo_dir / "rocket.jpg").as_uri()
    live, old = f"{unique_name}_live", f"{unique_name}_old"
    create_topic(kafka_bootstrap, live)
    create_topic(kafka_bootstrap, old)
    _produce_at(
        kafka_bootstrap,
        live,
        [({"id": "x", "uri": rocket}, now - 5_000), ({"id": "x", "op": "delete"}, now)],
    )
    _produce_at(kafka_bootstrap, old, [({"id": "x", "uri": rocket}, now - 10_000)])
    common = ("--collection", unique_name, "--until-end", "--file-root", str(photo_dir))
    deleted = run_consumer("--topic", live, "--group", live, *common)
    assert deleted.returncode == 0, deleted.stderr[-3000:]
    assert rows_by_id(milvus_uri, unique_name, ["id"]) == {}

    replay = run_consumer("--topic", old, "--group", old, *common)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert replay.summary is not None and replay.summary["skipped_stale"] == 1, replay.summary
    assert rows_by_id(milvus_uri, unique_name, ["id"]) == {}, "a deleted id came back"
    assert count_rows(milvus_uri, unique_name) == 0

    _produce_at(kafka_bootstrap, live, [({"id": "x", "uri": rocket}, now + 5_000)])
    newer = run_consumer("--topic", live, "--group", live, *common)
    assert newer.returncode == 0, newer.stderr[-3000:]
    assert rows_by_id(milvus_uri, unique_name, ["kafka_ts"])["x"]["kafka_ts"] == now + 5_000


def test_an_existing_collection_gains_its_tombstones_without_a_manual_step(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """A collection made before tombstones existed (its side collection missing) gets one at
    the next start, and deletes then keep their version."""
    from pymilvus import MilvusClient

    now = int(time.time() * 1000)  # (records stamped far in the past would expire at once)
    create_topic(kafka_bootstrap, unique_name)
    _produce_at(
        kafka_bootstrap,
        unique_name,
        [({"id": "a", "uri": (photo_dir / "coffee.jpg").as_uri()}, now)],
    )
    args = ("--topic", unique_name, "--group", unique_name, "--collection", unique_name)
    args += ("--until-end", "--file-root", str(photo_dir))
    assert run_consumer(*args).returncode == 0
    client = MilvusClient(milvus_uri)
    try:
        client.drop_collection(f"{unique_name}_tombstones")  # as an older release left it
        _produce_at(kafka_bootstrap, unique_name, [({"id": "a", "op": "delete"}, now + 1)])
        run = run_consumer(*args)
        assert run.returncode == 0, run.stderr[-3000:]
        assert client.has_collection(f"{unique_name}_tombstones")
        client.load_collection(f"{unique_name}_tombstones")
        stones = client.get(f"{unique_name}_tombstones", ids=["a"], output_fields=["kafka_ts"])
        assert [s["kafka_ts"] for s in stones] == [now + 1], (run.summary, run.stderr[-3000:])
    finally:
        client.close()

"""Dead letters: the record is complete, and a redriven one is ingested once its cause is fixed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from schemas import parse_dead_letter_headers
from tests.support.kafka import create_topic, produce_json
from tests.support.milvus import rows_by_id

pytestmark = pytest.mark.integration


def _dead_letters(bootstrap: str, topic: str, expected: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}.reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    found = []
    for _ in range(60):
        for msg in consumer.consume(num_messages=100, timeout=0.5):
            if msg.error() is None:
                found.append(msg)
        if len(found) >= expected:
            break
    consumer.close()
    return found


def _redrive(bootstrap: str, topic: str, *extra: str) -> None:
    """``producer redrive`` of ``topic``'s dead letters back to ``topic``, up to their end."""
    command = [sys.executable, "-m", "producer", "redrive", "--dlq-topic", f"{topic}.dlq"]
    redrive = subprocess.run(
        [*command, "--topic", topic, *extra, "--until-end"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert redrive.returncode == 0, redrive.stdout + redrive.stderr


def test_dead_letter_then_redrive_after_the_fix(
    kafka_bootstrap: str,
    milvus_uri: str,
    photo_dir: Path,
    run_consumer,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """A missing file is dead-lettered with its original key, value and reason; once the file
    exists, `producer redrive` re-publishes it and the next run ingests it."""
    root = tmp_path / "images"
    root.mkdir()
    shutil.copy(photo_dir / "coffee.jpg", root / "coffee.jpg")
    good = {"id": "coffee", "uri": (root / "coffee.jpg").as_uri()}
    late = {"id": "late", "uri": (root / "late.jpg").as_uri()}
    create_topic(kafka_bootstrap, unique_name)
    create_topic(kafka_bootstrap, f"{unique_name}.dlq")
    produce_json(kafka_bootstrap, unique_name, [good, late])
    args = (
        "--topic",
        unique_name,
        "--group",
        unique_name,
        "--collection",
        unique_name,
        "--until-end",
        "--file-root",
        str(root),
    )
    first = run_consumer(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.summary is not None and first.summary["dead_letters_by_type"] == {"not_found": 1}
    [record] = _dead_letters(kafka_bootstrap, f"{unique_name}.dlq", 1)
    assert record.key() == b"late"
    letter = parse_dead_letter_headers(record.headers())
    assert letter.error_type == "not_found" and letter.stage == "fetch"
    assert letter.source_topic == unique_name and letter.redrive_count == 0
    assert sorted(rows_by_id(milvus_uri, unique_name, ["id"])) == ["coffee"]

    shutil.copy(photo_dir / "rocket.jpg", root / "late.jpg")  # the cause is fixed
    _redrive(kafka_bootstrap, unique_name, "--where", "error.type=not_found")
    second = run_consumer(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.summary is not None and second.summary["ingested"] == 1
    assert sorted(rows_by_id(milvus_uri, unique_name, ["id"])) == ["coffee", "late"]


def test_a_redriven_old_version_never_overwrites_a_newer_one_on_a_log_append_time_topic(
    kafka_bootstrap: str,
    milvus_uri: str,
    photo_dir: Path,
    run_consumer,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """On a LogAppendTime topic the broker stamps a redriven record with the time of the redrive,
    so its timestamp says nothing of its age: the message's version travels in a header through
    dead-lettering and redrive, and the older message, once fixed and redriven, is skipped as not
    newer than the row of the message published after it (before: it overwrote that row)."""
    root = tmp_path / "images"
    root.mkdir()
    old = {"id": "x", "uri": (root / "old.jpg").as_uri()}  # missing for now: dead-lettered
    new = {"id": "x", "uri": (root / "new.jpg").as_uri()}
    shutil.copy(photo_dir / "coffee.jpg", root / "new.jpg")
    create_topic(kafka_bootstrap, unique_name, config={"message.timestamp.type": "LogAppendTime"})
    create_topic(kafka_bootstrap, f"{unique_name}.dlq")
    produce_json(kafka_bootstrap, unique_name, [old])
    produce_json(kafka_bootstrap, unique_name, [new])
    args = ("--topic", unique_name, "--group", unique_name, "--collection", unique_name)
    args += ("--until-end", "--file-root", str(root))
    first = run_consumer(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.summary is not None, first.stderr[-3000:]
    assert (first.summary["ingested"], first.summary["dead_lettered"]) == (1, 1), first.summary
    shutil.copy(photo_dir / "rocket.jpg", root / "old.jpg")  # the old one's cause is fixed
    _redrive(kafka_bootstrap, unique_name)
    second = run_consumer(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.summary is not None
    assert (second.summary["ingested"], second.summary["skipped_stale"]) == (0, 1), second.summary
    assert rows_by_id(milvus_uri, unique_name, ["uri"])["x"]["uri"] == new["uri"]

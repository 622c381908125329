"""The consumer image, run exactly as the Helm chart runs it, against the test stack.

The chart's arguments, environment, uid 10001, read-only root filesystem with the chart's
emptyDirs as tmpfs, every capability dropped, no-new-privileges; host network, because the test
servers listen on loopback. The images come from a read-only bind mount (``--file-root /data``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.containers.helpers import ConsumerContainer, wait_until
from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows, rows_by_id
from tests.support.reliability import image_record, publish

pytestmark = pytest.mark.integration

#: The chart's terminationGracePeriodSeconds (what `docker stop -t` stands in for).
GRACE_S = 120


def make_photos(folder: Path, count: int) -> list[str]:
    """``count`` small JPEGs readable by any user; their ``file:///data/...`` URIs."""
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.chmod(0o755)
    rng = np.random.default_rng(14)
    uris = []
    for i in range(count):
        base = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((320, 240), Image.Resampling.BILINEAR)
        path = folder / f"photo-{i:03d}.jpg"
        image.save(path, quality=90)
        path.chmod(0o644)
        uris.append(f"file:///data/{path.name}")
    return uris


def publish_photos(bootstrap: str, topic: str, uris: list[str], partitions: int = 2) -> list[str]:
    ids = [f"c{i:03d}" for i in range(len(uris))]
    records = [
        image_record(msg_id, uri, partition=i % partitions)
        for i, (msg_id, uri) in enumerate(zip(ids, uris, strict=True))
    ]
    publish(bootstrap, topic, records)
    return ids


def test_ingests_every_file_exactly_once(
    run_chart_consumer: Callable[..., ConsumerContainer],
    kafka_bootstrap: str,
    milvus_uri: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Pass: N file:// images published; a bounded run of the image, as the chart runs it,
    exits 0 with exactly N rows (each id once) and its offsets committed to the end."""
    count = 12
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=2)
    ids = publish_photos(kafka_bootstrap, topic, make_photos(tmp_path / "photos", count))

    run = run_chart_consumer(
        topic=topic,
        group=topic,
        collection=topic,
        files=tmp_path / "photos",
        extra_args=["--until-end"],
    )
    assert run.wait() == 0, run.log_tail()
    assert run.summary()["ingested"] == count, run.log_tail()
    assert run.summary()["dead_lettered"] == 0, run.log_tail()
    assert sorted(rows_by_id(milvus_uri, topic)) == sorted(ids)
    assert count_rows(milvus_uri, topic) == count
    assert committed_offsets(kafka_bootstrap, topic, topic) == end_offsets(kafka_bootstrap, topic)


def test_docker_stop_mid_stream_commits_and_restart_ingests_the_rest(
    run_chart_consumer: Callable[..., ConsumerContainer],
    kafka_bootstrap: str,
    milvus_uri: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Pass: an unbounded run (throttled, so work remains) answers /livez and /readyz with 200;
    `docker stop -t 120` mid-stream makes it exit 0 before the grace period ends, with its
    offsets committed for exactly the rows written; a restart ingests exactly the rest."""
    count = 40
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=2)
    ids = publish_photos(kafka_bootstrap, topic, make_photos(tmp_path / "photos", count))
    throttle = ["--max-rate", "4", "--batch-size", "2"]

    first = run_chart_consumer(
        topic=topic,
        group=topic,
        collection=topic,
        files=tmp_path / "photos",
        extra_args=throttle,
    )
    wait_until(lambda: first.probe("/readyz") == 200, "/readyz to answer 200", alive=first)
    assert first.probe("/livez") == 200
    wait_until(lambda: count_rows(milvus_uri, topic) >= 4, "the first rows", alive=first)
    assert first.docker_stop(GRACE_S) == 0, first.log_tail()

    committed = committed_offsets(kafka_bootstrap, topic, topic)
    done = sum(committed.values())
    assert 0 < done < count, f"stopped too late or too early: {done} of {count} committed"
    assert first.summary()["ingested"] == done, first.log_tail()
    rows = rows_by_id(milvus_uri, topic, ["id", "kafka_partition", "kafka_offset"])
    assert len(rows) == done, "rows written but not committed (or committed but not written)"
    for part, offset in committed.items():
        present = sorted(r["kafka_offset"] for r in rows.values() if r["kafka_partition"] == part)
        assert present == list(range(offset)), (part, present, committed)

    restart = run_chart_consumer(
        topic=topic,
        group=topic,
        collection=topic,
        files=tmp_path / "photos",
        extra_args=["--until-end"],
    )
    assert restart.wait() == 0, restart.log_tail()
    assert restart.summary()["ingested"] == count - done, restart.log_tail()
    assert sorted(rows_by_id(milvus_uri, topic)) == sorted(ids)
    assert committed_offsets(kafka_bootstrap, topic, topic) == end_offsets(kafka_bootstrap, topic)


def test_bounded_run_stopped_early_exits_75(
    run_chart_consumer: Callable[..., ConsumerContainer],
    kafka_bootstrap: str,
    milvus_uri: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Pass: a bounded run (--until-end) stopped by SIGTERM before its end exits 75 ("try
    again"), having committed exactly what it wrote."""
    count = 30
    topic = unique_name
    create_topic(kafka_bootstrap, topic, partitions=1)
    publish_photos(kafka_bootstrap, topic, make_photos(tmp_path / "photos", count), partitions=1)

    run = run_chart_consumer(
        topic=topic,
        group=topic,
        collection=topic,
        files=tmp_path / "photos",
        extra_args=["--until-end", "--max-rate", "4", "--batch-size", "2"],
    )
    wait_until(lambda: count_rows(milvus_uri, topic) >= 2, "the first rows", alive=run)
    assert run.docker_stop(GRACE_S) == 75, run.log_tail()
    done = sum(committed_offsets(kafka_bootstrap, topic, topic).values())
    assert 0 < done < count
    assert count_rows(milvus_uri, topic) == done

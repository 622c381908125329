"""The consumer end to end against the real Kafka, Triton and Milvus servers."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from tests.consumer.conftest import photo_messages
from tests.support.kafka import committed_offsets, create_topic, end_offsets, produce_json
from tests.support.milvus import count_rows, rows_by_id

pytestmark = pytest.mark.integration


def test_every_message_lands_once_and_a_rerun_ingests_nothing(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """Each published id is one row; the same group run again finds nothing new to do."""
    messages = photo_messages(photo_dir)
    create_topic(kafka_bootstrap, unique_name, partitions=3)
    produce_json(kafka_bootstrap, unique_name, messages)
    args = (
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
    first = run_consumer(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.summary is not None
    assert first.summary["ingested"] == len(messages)
    assert first.summary["dead_lettered"] == 0
    rows = rows_by_id(milvus_uri, unique_name, ["id", "uri", "embedding"])
    assert sorted(rows) == sorted(m["id"] for m in messages)
    for row in rows.values():
        assert abs(np.linalg.norm(np.asarray(row["embedding"])) - 1.0) < 1e-4
    assert committed_offsets(kafka_bootstrap, unique_name, unique_name) == end_offsets(
        kafka_bootstrap, unique_name
    )
    # Milvus Lite replaces a row on a duplicate-key insert, so counting rows cannot show that no
    # id was written twice: what was sent must be upserts, one per message
    writes = first.milvus_writes(unique_name)
    assert {w["op"] for w in writes} == {"upsert"}, writes[:3]
    assert sorted(i for w in writes for i in w["ids"]) == sorted(m["id"] for m in messages)
    again = run_consumer(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.summary is not None
    assert again.summary["ingested"] == 0
    assert again.milvus_writes(unique_name) == []
    assert count_rows(milvus_uri, unique_name) == len(messages)


def test_replay_leaves_rows_and_vectors_unchanged(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """A replay of the whole topic with a new group reads the same versions again: they are not
    rewritten (skipped as not newer); with --rewrite-same-version they are embedded and written
    again: same row count, vectors equal within 1e-5."""
    messages = photo_messages(photo_dir)[:9]
    create_topic(kafka_bootstrap, unique_name, partitions=2)
    produce_json(kafka_bootstrap, unique_name, messages)
    base = (
        "--topic",
        unique_name,
        "--collection",
        unique_name,
        "--until-end",
        "--file-root",
        str(photo_dir),
    )
    assert run_consumer(*base, "--group", f"{unique_name}_a").returncode == 0
    before = rows_by_id(milvus_uri, unique_name, ["id", "embedding"])
    replay = run_consumer(*base, "--group", f"{unique_name}_b", "--from", "earliest")
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert replay.summary is not None
    assert (replay.summary["ingested"], replay.summary["skipped_stale"]) == (0, len(messages))
    rewrite = run_consumer(
        *base, "--group", f"{unique_name}_c", "--from", "earliest", "--rewrite-same-version"
    )
    assert rewrite.returncode == 0, rewrite.stderr[-3000:]
    assert rewrite.summary is not None and rewrite.summary["ingested"] == len(messages)
    after = rows_by_id(milvus_uri, unique_name, ["id", "embedding"])
    assert sorted(after) == sorted(before)
    for key, row in before.items():
        np.testing.assert_allclose(row["embedding"], after[key]["embedding"], atol=1e-5)


def test_delete_message_and_tombstone_remove_rows(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """An op=delete message and a Kafka tombstone each delete their id."""
    messages = photo_messages(photo_dir)[:4]
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    produce_json(kafka_bootstrap, unique_name, messages)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        unique_name,
        key=messages[0]["id"].encode(),
        value=b'{"op": "delete", "id": "%s"}' % messages[0]["id"].encode(),
    )
    producer.produce(unique_name, key=messages[1]["id"].encode(), value=None)
    assert producer.flush(30) == 0
    run = run_consumer(
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
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.summary is not None and run.summary["deleted"] == 2
    rows = rows_by_id(milvus_uri, unique_name, ["id"])
    assert sorted(rows) == sorted(m["id"] for m in messages[2:])


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    delay_s = 3.0

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server(photo_dir: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers each request after a delay."""

    def handler(*args: object, **kwargs: object) -> _SlowHandler:
        return _SlowHandler(*args, directory=str(photo_dir), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_later_message_wins_when_batches_finish_out_of_order(
    kafka_bootstrap: str,
    milvus_uri: str,
    photo_dir: Path,
    run_consumer,
    unique_name: str,
    slow_server: str,
) -> None:
    """Same id twice in a partition, the earlier one slow: the later one's row is what remains,
    and offsets are committed to the end even though batches finished out of order."""
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    filler = [{"id": f"f{i}", "uri": (photo_dir / "coins.jpg").as_uri()} for i in range(6)]
    first = {"id": "same", "uri": f"{slow_server}/chelsea.jpg"}
    later = {"id": "same", "uri": (photo_dir / "rocket.jpg").as_uri()}
    produce_json(kafka_bootstrap, unique_name, [first, *filler, later])
    run = run_consumer(
        "--topic",
        unique_name,
        "--group",
        unique_name,
        "--collection",
        unique_name,
        "--until-end",
        "--file-root",
        str(photo_dir),
        "--allowed-network",
        "127.0.0.1/32",
        "--batch-size",
        "2",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = rows_by_id(milvus_uri, unique_name, ["id", "uri"])
    assert rows["same"]["uri"].endswith("rocket.jpg")
    assert len(rows) == 1 + len(filler)
    assert run.summary is not None and run.summary["superseded"] == 1
    assert committed_offsets(kafka_bootstrap, unique_name, unique_name) == end_offsets(
        kafka_bootstrap, unique_name
    )


def test_http_and_grpc_triton_give_the_same_vectors(
    kafka_bootstrap: str,
    milvus_uri: str,
    photo_dir: Path,
    run_consumer,
    unique_name: str,
    triton_http_url: str,
) -> None:
    """Both Triton protocols work from the worker pool (one client per thread) and agree."""
    messages = photo_messages(photo_dir)[:8]
    create_topic(kafka_bootstrap, unique_name, partitions=2)
    produce_json(kafka_bootstrap, unique_name, messages)
    common = (
        "--topic",
        unique_name,
        "--until-end",
        "--file-root",
        str(photo_dir),
        "--infer-threads",
        "4",
        "--infer-batch-size",
        "1",
    )
    grpc_run = run_consumer(
        *common, "--group", f"{unique_name}_g", "--collection", f"{unique_name}_g"
    )
    http_run = run_consumer(
        *common,
        "--group",
        f"{unique_name}_h",
        "--collection",
        f"{unique_name}_h",
        "--triton-url",
        triton_http_url,
    )
    assert grpc_run.returncode == 0, grpc_run.stderr[-3000:]
    assert http_run.returncode == 0, http_run.stderr[-3000:]
    assert "Cannot switch to a different thread" not in http_run.stderr
    grpc_rows = rows_by_id(milvus_uri, f"{unique_name}_g", ["id", "embedding"])
    http_rows = rows_by_id(milvus_uri, f"{unique_name}_h", ["id", "embedding"])
    assert sorted(grpc_rows) == sorted(http_rows) == sorted(m["id"] for m in messages)
    for key, row in grpc_rows.items():
        np.testing.assert_allclose(row["embedding"], http_rows[key]["embedding"], atol=1e-5)


def test_model_and_collection_mismatch_is_fatal_then_reembed_and_promote(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    run_consumer,
    unique_name: str,
) -> None:
    """Another model output into an existing collection is refused at start-up; the same run
    into its own collection works, and promote switches an alias to it."""
    from pymilvus import MilvusClient

    messages = photo_messages(photo_dir)[:3]
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    produce_json(kafka_bootstrap, unique_name, messages)
    base = ("--topic", unique_name, "--until-end", "--file-root", str(photo_dir))
    live = run_consumer(*base, "--group", f"{unique_name}_1", "--collection", unique_name)
    assert live.returncode == 0, live.stderr[-3000:]
    wrong = run_consumer(
        *base, "--group", f"{unique_name}_2", "--collection", unique_name, "--output", "LOGITS"
    )
    assert wrong.returncode == 1
    assert "dim" in wrong.stderr and "another model" in wrong.stderr
    new = f"{unique_name}_LOGITS"
    reembed = run_consumer(  # the collection is named for the model output it holds
        *base,
        "--group",
        f"{unique_name}_3",
        "--collection",
        unique_name + "_{output}",
        "--output",
        "LOGITS",
    )
    assert reembed.returncode == 0, reembed.stderr[-3000:]
    assert count_rows(milvus_uri, new) == len(messages)

    import subprocess
    import sys

    alias = f"{unique_name}_alias"
    for target in (unique_name, new):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "consumer",
                "promote",
                "--alias",
                alias,
                "--collection",
                target,
                "--milvus-uri",
                milvus_uri,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        client = MilvusClient(milvus_uri)
        assert client.describe_alias(alias)["collection_name"] == target
        client.close()
    # readers of the alias now search the re-embedded collection
    env = {**os.environ, "MILVUS_URI": milvus_uri, "TRITON_URL": triton_grpc_url}
    found = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "search",
            "--collection",
            alias,
            "--output",
            "LOGITS",
            "--top-k",
            "1",
            str(photo_dir / f"{messages[1]['id']}.jpg"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert found.returncode == 0, found.stderr
    assert orjson.loads(found.stdout.splitlines()[0])["id"] == messages[1]["id"]
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer",
            "search",
            "--collection",
            alias,
            "--top-k",
            "1",
            str(photo_dir / f"{messages[1]['id']}.jpg"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert refused.returncode == 1 and "another model" in refused.stderr

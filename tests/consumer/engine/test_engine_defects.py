"""Regression tests for engine defects, each run against the real Kafka, Triton and Milvus.

Every test here failed on the engine before its fix (they were committed marked
``xfail(strict=True)``, and each mark was removed with its fix).
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from devstack import TcpProxy, TritonServer, free_port
from schemas import preprocessing as contract
from tests.consumer.conftest import photo_messages
from tests.consumer.engine.conftest import wait_for_commits
from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import rows_by_id
from tests.support.reliability import (
    ConsumerProcess,
    LocalHttpServer,
    consumer_env,
    send_bytes,
    send_status,
    wait_until,
)

pytestmark = pytest.mark.integration

#: The exit status of a bounded run stopped before its end (EX_TEMPFAIL: "try again").
EXIT_STOPPED_EARLY = 75


def _produce(bootstrap: str, topic: str, items: list[tuple[dict, int]]) -> None:
    """Publish (value, timestamp ms) pairs in order to partition 0."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value, ts_ms in items:
        producer.produce(
            topic,
            key=value["id"].encode(),
            value=orjson.dumps(value),
            partition=0,
            timestamp=ts_ms,
        )
    assert producer.flush(30) == 0


def _log_events(path: Path, event: str) -> list[dict]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def test_latest_wins_takes_the_highest_version_not_the_last_polled(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """Milvus holds X at T-30 min; one poll then brings A (X at T) and B (X at T-60 min, e.g. a
    redriven old record). A is the newest version: Milvus must end with A's row, and B counts
    as superseded or skipped, never written. (Before: B superseded A by poll order, the guard
    refused B as older than the stored row, and X kept its T-30 min row.)"""
    photos = photo_messages(photo_dir)
    now = int(time.time() * 1000)
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    args = ("--topic", unique_name, "--group", unique_name, "--collection", unique_name)
    args += ("--until-end", "--file-root", str(photo_dir))
    _produce(
        kafka_bootstrap, unique_name, [({"id": "x", "uri": photos[0]["uri"]}, now - 1_800_000)]
    )
    first = run_consumer(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert rows_by_id(milvus_uri, unique_name, ["kafka_ts"])["x"]["kafka_ts"] == now - 1_800_000

    a = {"id": "x", "uri": photos[1]["uri"]}
    b = {"id": "x", "uri": photos[2]["uri"]}
    _produce(kafka_bootstrap, unique_name, [(a, now), (b, now - 3_600_000)])
    second = run_consumer(*args, "--batch-size", "8")
    assert second.returncode == 0, second.stderr[-3000:]
    row = rows_by_id(milvus_uri, unique_name, ["kafka_ts", "uri"])["x"]
    assert (row["kafka_ts"], row["uri"]) == (now, a["uri"])
    assert second.summary is not None
    assert second.summary["ingested"] == 1, second.summary
    assert second.summary["superseded"] + second.summary["skipped_stale"] == 1, second.summary


def test_bounded_run_stopped_by_sigterm_exits_75_and_unbounded_exits_0(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """A bounded run stopped before its end is not done: it exits 75 so a Job retries it, with
    what it finished committed. An unbounded run stopped the same way exits 0."""
    photos = photo_messages(photo_dir)
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    base = int(time.time() * 1000) - 60_000
    _produce(
        kafka_bootstrap,
        unique_name,
        [({"id": f"m{i}", "uri": photos[i % len(photos)]["uri"]}, base + i) for i in range(60)],
    )
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
    common = ("--topic", unique_name, "--collection", unique_name, "--file-root", str(photo_dir))
    common += ("--max-rate", "4", "--batch-size", "2")
    fast_commits = {"IMAGE_EMBEDDER_COMMIT_INTERVAL_S": "0.2"}

    bounded = spawn(
        *common, "--group", f"{unique_name}_b", "--until-end", env=fast_commits, **servers
    )
    wait_for_commits(kafka_bootstrap, f"{unique_name}_b", unique_name, 2, bounded)
    bounded.terminate()
    assert bounded.wait() == EXIT_STOPPED_EARLY, bounded.log_tail()
    done = committed_offsets(kafka_bootstrap, f"{unique_name}_b", unique_name)[0]
    assert 2 <= done < 60
    assert bounded.summary()["ingested"] >= done

    unbounded = spawn(*common, "--group", f"{unique_name}_u", env=fast_commits, **servers)
    wait_for_commits(kafka_bootstrap, f"{unique_name}_u", unique_name, 2, unbounded)
    unbounded.terminate()
    assert unbounded.wait() == 0, unbounded.log_tail()


def test_transactional_topic_is_committed_past_its_control_records(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """After a transactional producer's committed transactions, a finished bounded run leaves
    no lag: the group's commit is the end offset (past the commit marker), not the offset of
    the marker (which would leave consumer lag at 1 on every partition forever)."""
    photos = photo_messages(photo_dir)
    create_topic(kafka_bootstrap, unique_name, partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": unique_name})
    producer.init_transactions(30)
    for batch in range(2):
        producer.begin_transaction()
        for i in range(3):
            msg = {"id": f"t{batch}_{i}", "uri": photos[i]["uri"]}
            producer.produce(
                unique_name, key=msg["id"].encode(), value=orjson.dumps(msg), partition=i % 2
            )
        producer.commit_transaction(30)
    run = run_consumer(
        "--topic", unique_name, "--group", unique_name, "--collection", unique_name,
        "--until-end", "--file-root", str(photo_dir),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(rows_by_id(milvus_uri, unique_name, ["id"])) == 6
    assert committed_offsets(kafka_bootstrap, unique_name, unique_name) == end_offsets(
        kafka_bootstrap, unique_name
    )


def test_poll_budget_respects_the_rows_in_flight_cap(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """``--max-rows-in-flight`` bounds what is taken from Kafka: a poll never takes more than
    the room left under the cap (before: a whole ``--batch-size`` on top of it)."""
    photos = photo_messages(photo_dir)
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    base = int(time.time() * 1000) - 60_000
    _produce(
        kafka_bootstrap,
        unique_name,
        [({"id": f"m{i}", "uri": photos[i % len(photos)]["uri"]}, base + i) for i in range(40)],
    )
    proc = spawn(
        "--topic", unique_name, "--group", unique_name, "--collection", unique_name,
        "--file-root", str(photo_dir), "--until-end", "--batch-size", "32",
        "--max-rows-in-flight", "4",
        kafka=kafka_bootstrap, milvus=milvus_uri, triton=triton_grpc_url,
    )  # fmt: skip
    assert proc.wait() == 0, proc.log_tail()
    pauses = _log_events(proc.log_path, "backpressure: partitions paused")
    assert pauses, proc.log_tail()
    assert max(p["rows_in_flight"] for p in pauses) <= 4, pauses


def test_readiness_probes_from_fresh_threads_share_one_client(
    triton_grpc_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/readyz`` runs each probe on a new thread: probes must not each keep a Triton client
    (before: one client per probe thread until shutdown, +36 MiB per 1 000 probes)."""
    from consumer.inference import client as client_module
    from consumer.inference.client import TritonEndpoint, TritonInference, read_model_spec

    endpoint = TritonEndpoint("grpc", triton_grpc_url.removeprefix("grpc://"), timeout_s=5)
    spec = read_model_spec(endpoint, contract.MODEL_NAME, "", contract.EMBEDDING_OUTPUT)
    created: list[object] = []
    real = client_module._new_client

    def counting(ep: TritonEndpoint) -> object:
        made = real(ep)
        created.append(made)
        return made

    monkeypatch.setattr(client_module, "_new_client", counting)
    triton = TritonInference(endpoint, spec)
    answers: list[bool] = []
    for _ in range(40):
        probe = threading.Thread(target=lambda: answers.append(triton.is_ready()))
        probe.start()
        probe.join()
    triton.close()
    assert answers == [True] * 40
    assert len(created) <= 1, f"{len(created)} clients for 40 probes"


def test_graceful_stop_while_triton_is_down_ends_within_the_drain_timeout(
    kafka_bootstrap: str,
    milvus_uri: str,
    start_triton: Callable[..., TritonServer],
    photo_dir: Path,
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """SIGTERM while every Triton request fails: the drain gives up after ``--drain-timeout-s``,
    nothing unwritten is committed, and the process exits (before: inference retries only
    stopped on a second SIGINT, so the pool's shutdown waited forever)."""
    triton = start_triton()
    proxy = TcpProxy("127.0.0.1", triton.grpc_port).start()
    try:
        photos = photo_messages(photo_dir)
        create_topic(kafka_bootstrap, unique_name, partitions=1)
        metrics_port = free_port()
        proc = spawn(
            "--topic", unique_name, "--group", unique_name, "--collection", unique_name,
            "--file-root", str(photo_dir),
            kafka=kafka_bootstrap, milvus=milvus_uri, triton=f"grpc://127.0.0.1:{proxy.port}",
            metrics_port=metrics_port,
            env={"IMAGE_EMBEDDER_TRITON_TIMEOUT_S": "2", "IMAGE_EMBEDDER_DRAIN_TIMEOUT_S": "3"},
        )  # fmt: skip
        wait_until(lambda: proc.probe("/readyz") == 200, "the consumer ready", alive=[proc])
        proxy.set_down(True)
        _produce(
            kafka_bootstrap,
            unique_name,
            [({"id": f"m{i}", "uri": photos[i]["uri"]}, int(time.time() * 1000)) for i in range(4)],
        )

        def triton_retries() -> float:
            text = proc.scrape()
            match = re.search(r'image_embedder_retries_total\{operation="triton"\} (\S+)', text)
            return float(match.group(1)) if match else 0.0

        wait_until(lambda: triton_retries() >= 1, "inference retried", alive=[proc])
        stopped = time.monotonic()
        proc.terminate()
        code = proc.wait(timeout_s=60)
        took = time.monotonic() - stopped
    finally:
        proxy.stop()
    assert code == 0, proc.log_tail()
    assert took < 30, took
    assert committed_offsets(kafka_bootstrap, unique_name, unique_name).get(0, 0) <= 0
    assert rows_by_id(milvus_uri, unique_name, ["id"]) == {}


def test_a_record_near_the_topic_limit_is_dead_lettered(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """A poison record of 1.02 MB is accepted by Kafka's default topic limit (1 048 588 bytes)
    but is over librdkafka's default producer limit (1 000 000): the dead-letter producer is
    sized to the source topic, so it is dead-lettered and the run ends (before: every resend was
    refused locally and the run never ended)."""
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    good = photo_messages(photo_dir)[0]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 2_000_000})
    producer.produce(unique_name, key=b"big", value=b"not json " * 113_000, partition=0)
    producer.produce(unique_name, key=good["id"].encode(), value=orjson.dumps(good), partition=0)
    assert producer.flush(30) == 0
    args = ("--topic", unique_name, "--group", unique_name, "--collection", unique_name)
    try:
        run = run_consumer(*args, "--until-end", "--file-root", str(photo_dir), timeout_s=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not end: the dead letter was never delivered")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.summary is not None
    assert (run.summary["ingested"], run.summary["dead_lettered"]) == (1, 1), run.summary
    assert committed_offsets(kafka_bootstrap, unique_name, unique_name) == {0: 2}


def test_a_dead_letter_the_topic_keeps_refusing_stops_the_run_with_the_cause(
    kafka_bootstrap: str, milvus_uri: str, photo_dir: Path, run_consumer, unique_name: str
) -> None:
    """A dead-letter topic that refuses the record (non-retriable: over its max.message.bytes)
    is retried for the refused-timeout, then the run exits 1 naming the cause, with nothing past
    the record committed (before: retried forever, the partition's commits frozen)."""
    create_topic(kafka_bootstrap, unique_name, partitions=1)
    create_topic(kafka_bootstrap, f"{unique_name}.dlq", config={"max.message.bytes": "2000"})
    good = photo_messages(photo_dir)[0]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    poison = b"\xff" + random.Random(7).randbytes(8000)  # not JSON, and incompressible
    producer.produce(unique_name, key=b"bad", value=poison, partition=0)
    producer.produce(unique_name, key=good["id"].encode(), value=orjson.dumps(good), partition=0)
    assert producer.flush(30) == 0
    args = ("--topic", unique_name, "--group", unique_name, "--collection", unique_name)
    env = {"IMAGE_EMBEDDER_DEAD_LETTER_REFUSED_TIMEOUT_S": "3"}
    try:
        run = run_consumer(
            *args, "--until-end", "--file-root", str(photo_dir), env=env, timeout_s=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not end: the refused dead letter was retried forever")
    assert run.returncode == 1, run.stderr[-3000:]
    assert "refuses a record" in run.stderr and "Traceback" not in run.stderr
    assert committed_offsets(kafka_bootstrap, unique_name, unique_name).get(0, 0) == 0


def test_a_missing_dead_letter_topic_on_a_cluster_that_does_not_create_topics_fails_at_start(
    start_kafka: Callable[..., Any],
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    tmp_path: Path,
    unique_name: str,
) -> None:
    """Without auto-creation, a missing dead-letter topic is a clear start-up error (exit 1,
    one line naming the topic and the fix), before any message is read (before: the consumer
    ran, and the first poison message was retried forever)."""
    kafka = start_kafka(extra_config={"auto.create.topics.enable": "false"})
    create_topic(kafka.bootstrap_servers, unique_name, partitions=1)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "consumer", "run", "--no-metrics", "--until-end"),
            *("--topic", unique_name, "--group", unique_name, "--collection", unique_name),
        ],
        env=consumer_env(kafka.bootstrap_servers, milvus_uri, triton_grpc_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"dead-letter topic '{unique_name}.dlq' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fetch_retries_are_counted_in_the_retry_metric(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """An image server that answers 503 twice, then the image: the row is written and the two
    retries show as ``retries_total{operation="fetch"}`` (before: fetch retries were counted
    nowhere)."""
    data = (photo_dir / "coffee.jpg").read_bytes()
    answers = [send_status(503), send_status(503)]

    def flaky(handler: Any) -> None:
        (answers.pop(0) if answers else send_bytes(data))(handler)

    server = LocalHttpServer({"/coffee.jpg": flaky}).start()
    try:
        create_topic(kafka_bootstrap, unique_name, partitions=1)
        _produce(
            kafka_bootstrap,
            unique_name,
            [({"id": "c", "uri": server.url("/coffee.jpg")}, int(time.time() * 1000))],
        )
        proc = spawn(
            "--topic", unique_name, "--group", unique_name, "--collection", unique_name,
            "--allowed-network", "127.0.0.0/8",
            kafka=kafka_bootstrap, milvus=milvus_uri, triton=triton_grpc_url,
            metrics_port=free_port(), env={"IMAGE_EMBEDDER_FETCH_RETRIES": "3"},
        )  # fmt: skip

        def fetch_retries() -> float:
            text = proc.scrape()
            match = re.search(r'image_embedder_retries_total\{operation="fetch"\} (\S+)', text)
            return float(match.group(1)) if match else 0.0

        wait_until(lambda: "c" in rows_by_id(milvus_uri, unique_name), "the row", alive=[proc])
        assert fetch_retries() == 2
        proc.terminate()
        assert proc.wait() == 0, proc.log_tail()
    finally:
        server.stop()

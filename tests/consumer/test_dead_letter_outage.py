"""A dead-letter topic that refuses records: nothing is committed past the refused dead letter;
once the topic accepts it, the record is delivered and the offsets move on."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from devstack import free_port
from tests.consumer.conftest import start_consumer
from tests.support.kafka import committed_offsets, create_topic, produce_json
from tests.support.reliability import metric, wait_until

pytestmark = pytest.mark.integration


def test_refused_dead_letter_blocks_commits_until_it_is_delivered(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Pass: while the DLQ refuses the record (max.message.bytes too small) the good message
    after it is written but the committed offset stays at the poison message, with retries
    counted; after the topic is fixed, the dead letter arrives and everything is committed."""
    dlq = f"{unique_name}.dlq"
    create_topic(kafka_bootstrap, unique_name)
    create_topic(kafka_bootstrap, dlq, config={"max.message.bytes": "64"})
    poison = {"id": "gone", "uri": (photo_dir / "missing.jpg").as_uri()}
    good = {"id": "coffee", "uri": (photo_dir / "coffee.jpg").as_uri()}
    produce_json(kafka_bootstrap, unique_name, [poison, good])
    port = free_port()
    log_file = tmp_path / "consumer.log"
    proc = start_consumer(
        [
            "--topic",
            unique_name,
            "--group",
            unique_name,
            "--collection",
            unique_name,
            "--file-root",
            str(photo_dir),
            "--metrics-port",
            str(port),
        ],
        kafka=kafka_bootstrap,
        milvus=milvus_uri,
        triton=triton_grpc_url,
        log_file=log_file,
    )
    try:

        def scrape() -> str:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                return ""

        wait_until(
            lambda: metric(scrape(), "image_embedder_messages_total", 'outcome="ingested"') >= 1,
            "the good message",
        )
        wait_until(
            lambda: (
                metric(scrape(), "image_embedder_retries_total", 'operation="kafka_commit"') >= 2
            ),
            "dead-letter retries",
        )
        time.sleep(2.5)  # more than two commit intervals: a wrong commit would have happened
        assert committed_offsets(kafka_bootstrap, unique_name, unique_name).get(0, 0) == 0
        assert metric(scrape(), "image_embedder_dead_letters_total", "") == 0

        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            dlq,
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes", "1048576", incremental_operation=AlterConfigOpType.SET
                )
            ],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=30)

        wait_until(
            lambda: committed_offsets(kafka_bootstrap, unique_name, unique_name).get(0) == 2,
            "the commit after the dead letter was delivered",
        )
        assert metric(scrape(), "image_embedder_dead_letters_total", 'error_type="not_found"') == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_file.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()

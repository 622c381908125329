"""A dead-letter topic that refuses records: nothing is committed past the refused dead letter;
once the topic accepts it, the record is delivered and the offsets move on."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from devstack import free_port
from tests.support.kafka import committed_offsets, create_topic, produce_json
from tests.support.reliability import ConsumerProcess, consumer_env, metric, wait_until

pytestmark = pytest.mark.integration

#: Commit points (the engine asking what it may commit) to see after the good message was
#: written, none answering a position past the poison message (offset 0): a wrong commit would
#: have been made there.
COMMIT_POINTS = 3


def dead_letter_outage_scenario(
    *,
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photo_dir: Path,
    topic: str,
    tmp_path: Path,
    mutant: str | None = None,
) -> None:
    dlq = f"{topic}.dlq"
    create_topic(kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, dlq, config={"max.message.bytes": "64"})
    poison = {"id": "gone", "uri": (photo_dir / "missing.jpg").as_uri()}
    good = {"id": "coffee", "uri": (photo_dir / "coffee.jpg").as_uri()}
    produce_json(kafka_bootstrap, topic, [poison, good])
    args = ("--topic", topic, "--group", topic, "--collection", topic)
    proc = ConsumerProcess(
        args=(*args, "--file-root", str(photo_dir)),
        env=consumer_env(kafka_bootstrap, milvus_uri, triton_url),
        log_path=tmp_path / "consumer.log",
        metrics_port=free_port(),
        mutant=mutant,
    ).start()
    try:

        def scrape() -> str:
            try:
                return proc.scrape()
            except Exception:
                return ""

        def retries() -> float:  # any operation label: the event is the refused resend
            return metric(scrape(), "image_embedder_retries_total")

        wait_until(lambda: "coffee" in proc.upserted_ids(), "the good message", alive=[proc])
        written_at = next(c["t"] for c in proc.calls() if "coffee" in c.get("ids", []))

        def points_after_write() -> list[dict]:
            return [c for c in proc.calls() if c["op"] == "committable" and c["t"] > written_at]

        def assert_nothing_committed_past_the_dead_letter() -> None:
            committed = committed_offsets(kafka_bootstrap, topic, topic).get(0, 0)
            assert committed == 0, f"COMMITTED PAST A REFUSED DEAD LETTER: offset {committed}"
            past = [pos for c in points_after_write() for pos in c["positions"] if pos[2] > 0]
            assert not past, f"COMMITTED PAST A REFUSED DEAD LETTER: the engine would commit {past}"

        # the commit points first: a consumer that took the dead letter as delivered may never
        # retry it, and must be caught by what it commits, not by a wait for its retries
        wait_until(
            lambda: len(points_after_write()) >= COMMIT_POINTS,
            f"{COMMIT_POINTS} commit points after the good message was written",
            alive=[proc],
        )
        if mutant:
            proc.assert_mutant_applied()
        assert_nothing_committed_past_the_dead_letter()
        # refused, produced again, and still nothing committed past it
        wait_until(lambda: retries() >= 2, "the dead letter produced again", alive=[proc])
        assert_nothing_committed_past_the_dead_letter()
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
            lambda: committed_offsets(kafka_bootstrap, topic, topic).get(0) == 2,
            "the commit after the dead letter was delivered",
            alive=[proc],
        )
        assert metric(scrape(), "image_embedder_dead_letters_total", 'error_type="not_found"') == 1
        proc.terminate()
        assert proc.wait(60) == 0, proc.log_tail()
    finally:
        proc.kill()


def test_refused_dead_letter_blocks_commits_until_it_is_delivered(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Pass: while the DLQ refuses the record (max.message.bytes too small) the good message
    after it is written, the resend is retried (retries counted, whatever their label), and
    at three commit points after the write the engine finds no position past it and the
    committed offset stays at the poison message; after the topic is fixed, the dead letter
    arrives and everything is committed."""
    dead_letter_outage_scenario(
        kafka_bootstrap=kafka_bootstrap,
        milvus_uri=milvus_uri,
        triton_url=triton_grpc_url,
        photo_dir=photo_dir,
        topic=unique_name,
        tmp_path=tmp_path,
    )


def test_a_dead_letter_counted_before_delivery_is_caught(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Test of the test: a consumer that treats a dead letter as delivered when it is handed to
    the producer commits past it, and the check above fails."""
    with pytest.raises(AssertionError, match="COMMITTED PAST A REFUSED DEAD LETTER"):
        dead_letter_outage_scenario(
            kafka_bootstrap=kafka_bootstrap,
            milvus_uri=milvus_uri,
            triton_url=triton_grpc_url,
            photo_dir=photo_dir,
            topic=unique_name,
            tmp_path=tmp_path,
            mutant="dlq_ack_on_produce",
        )

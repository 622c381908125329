"""Re-embedding at scale, end to end: a planned backfill of another model output into a new
collection by two workers while search on the alias keeps answering from the old one, then
``promote`` moves readers to the new one."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.consumer.backfill.conftest import WorkerProcess, backfill_command
from tests.consumer.backfill.test_workers import FAST, _held
from tests.consumer.conftest import photo_messages
from tests.support.kafka import create_topic, produce_json
from tests.support.milvus import count_rows
from tests.support.reliability import wait_until

pytestmark = pytest.mark.integration


def _vector(client: Any, collection: str) -> list[float]:
    (row,) = client.query(collection, filter="", output_fields=["embedding"], limit=1)
    return [float(x) for x in row["embedding"]]


def test_two_workers_reembed_while_the_alias_answers_then_promote_switches_readers(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    run_consumer: Callable[..., Any],
    worker: Callable[..., WorkerProcess],
    unique_name: str,
) -> None:
    from pymilvus import MilvusClient

    photos = photo_messages(photo_dir)
    messages = [{"id": f"m{i:02d}", "uri": photos[i % len(photos)]["uri"]} for i in range(24)]
    topic, old, new, alias = unique_name, unique_name, f"{unique_name}_LOGITS", f"{unique_name}_a"
    create_topic(kafka_bootstrap, topic, partitions=2)
    produce_json(kafka_bootstrap, topic, messages)
    live = run_consumer(
        "--topic", topic, "--group", f"{topic}_live", "--collection", old, "--from", "earliest",
        "--until-end", "--file-root", str(photo_dir),
    )  # fmt: skip
    assert live.returncode == 0, live.stderr[-3000:]

    def promote(target: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "consumer", "promote", "--alias", alias, "--collection",
             target, "--milvus-uri", milvus_uri],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    promote(old)
    client = MilvusClient(milvus_uri)
    try:
        old_query = _vector(client, old)
        group = f"{topic}_reembed"
        plan = backfill_command(
            kafka_bootstrap, "plan", "--topic", topic, "--group", group, "--from", "earliest",
            "--until-end", "--max-rate", "2", "--json",
        )  # fmt: skip
        assert plan.returncode == 0, plan.stderr
        assert plan.json()["messages"] == len(messages)

        searches: list[int] = []  # hits of each search on the alias during the backfill
        errors: list[str] = []
        stop = threading.Event()

        def search_alias() -> None:
            reader = MilvusClient(milvus_uri)
            try:
                while not stop.is_set():
                    try:
                        hits = reader.search(alias, data=[old_query], limit=3)
                        searches.append(len(hits[0]))
                    except Exception as exc:
                        errors.append(repr(exc))
                    stop.wait(0.5)
            finally:
                reader.close()

        servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_grpc_url}
        args = ("--topic", topic, "--group", group, "--collection", new, "--output", "LOGITS")
        args += ("--file-root", str(photo_dir), "--batch-size", "4")
        reader = threading.Thread(target=search_alias, daemon=True)
        reader.start()
        try:
            workers = [worker(*args, env=FAST, **servers) for _ in range(2)]
            wait_until(
                lambda: 0 < count_rows(milvus_uri, new) < len(messages) or not workers[0].running(),
                "the backfill under way",
            )
            for proc in workers:
                assert proc.wait() == 0, proc.log_tail()
        finally:
            stop.set()
            reader.join(30)
        assert not errors, errors[:3]
        assert len(searches) >= 3 and all(n == 3 for n in searches), searches
        assert count_rows(milvus_uri, new) == len(messages)
        assert sum(w.processed() for w in workers) == len(messages)
        assert all(_held(w) for w in workers), "both workers took part"

        promote(new)
        assert client.describe_alias(alias)["collection_name"] == new
        new_query = _vector(client, new)
        assert len(new_query) != len(old_query), "another model output"
        hits = client.search(alias, data=[new_query], limit=3)
        assert len(hits[0]) == 3
        assert {h["id"] for h in hits[0]} <= {m["id"] for m in messages}
        status = backfill_command(
            kafka_bootstrap, "status", "--topic", topic, "--group", group, "--interval", "0",
            "--json",
        )  # fmt: skip
        assert status.returncode == 0 and status.json()["complete"] is True, status.stderr
    finally:
        client.close()

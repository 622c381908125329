"""End to end from a bucket: ``producer publish s3://...`` then ``consumer run --until-end``.

Real Kafka, Triton, Milvus and MinIO; the consumer process finds its credentials in the
environment (the AWS chain) and its endpoint in ``--s3-endpoint-url``.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from producer.cli import app as producer_app
from schemas import parse_dead_letter_headers
from tests.consumer.s3.conftest import BUCKET, OTHER, VERSIONED, S3World
from tests.producer.kafka_records import read_all
from tests.support.kafka import create_topic
from tests.support.milvus import rows_by_id

pytestmark = pytest.mark.integration


def test_published_s3_uris_are_ingested_and_bad_ones_dead_lettered(
    s3_world: S3World, kafka_bootstrap: str, milvus_uri: str, run_consumer, unique_name: str
) -> None:
    old_version = s3_world.versions[0][0]
    good = {
        "chelsea": f"s3://{BUCKET}/chelsea.jpg",
        "coffee": f"s3://{BUCKET}/set/coffee.jpg",
        "cat-v1": f"s3://{VERSIONED}/cat.jpg?versionId={old_version}",
    }
    bad = {
        "elsewhere": (f"s3://{OTHER}/chelsea.jpg", "forbidden_bucket"),
        "missing": (f"s3://{BUCKET}/no-such.jpg", "not_found"),
    }
    create_topic(kafka_bootstrap, unique_name, partitions=2)
    create_topic(kafka_bootstrap, f"{unique_name}.dlq")
    lines = [orjson.dumps({"id": i, "uri": u}).decode() for i, u in good.items()]
    lines += [orjson.dumps({"id": i, "uri": u}).decode() for i, (u, _) in bad.items()]
    published = CliRunner().invoke(
        producer_app,
        ["publish", "--topic", unique_name, "--bootstrap-servers", kafka_bootstrap, "-"],
        input="\n".join(lines) + "\n",
    )
    assert published.exit_code == 0, published.output

    result = run_consumer(
        "--topic",
        unique_name,
        "--group",
        unique_name,
        "--collection",
        unique_name,
        "--until-end",
        "--s3-endpoint-url",
        s3_world.endpoint,
        "--s3-region",
        "us-east-1",
        "--allowed-bucket",
        BUCKET,
        "--allowed-bucket",
        VERSIONED,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.summary is not None
    assert result.summary["ingested"] == len(good)
    assert result.summary["dead_lettered"] == len(bad)
    assert "s3:// URIs limited to the allowed buckets" in result.stderr

    rows = rows_by_id(milvus_uri, unique_name, ["id", "uri", "embedding"])
    assert sorted(rows) == sorted(good)
    assert rows["cat-v1"]["uri"] == f"s3://{VERSIONED}/cat.jpg"  # stored without its query
    vectors = {k: np.asarray(r["embedding"]) for k, r in rows.items()}
    # the pinned old version holds chelsea's bytes; the latest version is coffee
    assert float(vectors["cat-v1"] @ vectors["chelsea"]) > 0.9999
    assert float(vectors["cat-v1"] @ vectors["coffee"]) < 0.99

    letters = {
        orjson.loads(r.value)["id"]: parse_dead_letter_headers(r.headers)
        for r in read_all(kafka_bootstrap, f"{unique_name}.dlq")
    }
    assert {i: letter.error_type for i, letter in letters.items()} == {
        i: reason for i, (_, reason) in bad.items()
    }
    assert all(letter.stage == "fetch" for letter in letters.values())

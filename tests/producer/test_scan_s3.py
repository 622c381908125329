"""``scan s3://bucket/prefix`` through botocore (the consumer's S3 library), against MinIO."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import botocore.session
import orjson
import pytest
from typer.testing import CliRunner

from devstack import MinioServer
from producer.cli import app
from producer.sources import MessageOptions, items_from_scan, scan
from schemas import decode_message
from tests.producer.kafka_records import read_all

BUCKET = "photos-bucket"
OBJECTS = {
    "set1/b.jpg": b"\xff\xd8\xff\xe0jpeg-b",
    "set1/a.PNG": b"\x89PNG\r\n\x1a\npng-a",
    "set1/nested/c d.webp": b"RIFF\x00\x00\x00\x00WEBPc",
    "set1/readme.txt": b"text",
    "set1/.hidden.jpg": b"\xff\xd8\xff",
    "set2/other.jpg": b"\xff\xd8\xffother",
}


@pytest.fixture(scope="module")
def s3_endpoint(minio: MinioServer) -> Iterator[str]:
    client = botocore.session.Session().create_client(
        "s3",
        endpoint_url=minio.endpoint,
        region_name="us-east-1",
        aws_access_key_id=minio.root_user,
        aws_secret_access_key=minio.root_password,
    )
    client.create_bucket(Bucket=BUCKET)
    for key, body in OBJECTS.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    yield minio.endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, minio: MinioServer, tmp_path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.root_user)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.root_password)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("aws_env")
def test_scan_s3_prefix_lists_images_sorted(s3_endpoint: str) -> None:
    options = {"endpoint_url": s3_endpoint}
    uris = [e.uri for e in scan(f"s3://{BUCKET}/set1/", options)]
    assert uris == [
        f"s3://{BUCKET}/set1/a.PNG",
        f"s3://{BUCKET}/set1/b.jpg",
        f"s3://{BUCKET}/set1/nested/c%20d.webp",
    ]


@pytest.mark.usefixtures("aws_env")
def test_scan_s3_content_ids(s3_endpoint: str) -> None:
    options = {"s3_endpoint_url": s3_endpoint}
    items = list(
        items_from_scan(scan(f"s3://{BUCKET}/set1/", options), MessageOptions(id_from="content"))
    )
    ids = [i.message.id for i in items if i.message is not None]
    expected = [OBJECTS[k] for k in ("set1/a.PNG", "set1/b.jpg", "set1/nested/c d.webp")]
    assert ids == ["sha256-" + hashlib.sha256(body).hexdigest() for body in expected]


@pytest.mark.usefixtures("aws_env")
def test_cli_scan_s3_dry_run(s3_endpoint: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "scan",
            f"s3://{BUCKET}/set2",
            "--topic",
            "t",
            "--dry-run",
            "--storage-option",
            f"endpoint_url={s3_endpoint}",
        ],
    )
    assert result.exit_code == 0, result.output
    msgs = [
        decode_message(None, line.encode())
        for line in result.stdout.splitlines()
        if line.startswith("{")
    ]
    assert [m.uri for m in msgs] == [f"s3://{BUCKET}/set2/other.jpg"]


@pytest.mark.usefixtures("aws_env")
def test_cli_scan_missing_bucket_fails_clearly(s3_endpoint: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "scan",
            "s3://no-such-bucket/x",
            "--topic",
            "t",
            "--dry-run",
            "--storage-option",
            f"endpoint_url={s3_endpoint}",
        ],
    )
    assert result.exit_code == 1
    assert "cannot list s3://no-such-bucket/x: NoSuchBucket" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.integration
@pytest.mark.usefixtures("aws_env")
def test_scan_s3_publishes_to_kafka(
    s3_endpoint: str, kafka_bootstrap: str, unique_name: str
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "scan",
            f"s3://{BUCKET}/set1",
            "--topic",
            unique_name,
            "--bootstrap-servers",
            kafka_bootstrap,
            "--storage-option",
            f"endpoint_url={s3_endpoint}",
        ],
    )
    assert result.exit_code == 0, result.output
    records = read_all(kafka_bootstrap, unique_name)
    assert sorted(orjson.loads(r.value)["uri"] for r in records) == [
        f"s3://{BUCKET}/set1/a.PNG",
        f"s3://{BUCKET}/set1/b.jpg",
        f"s3://{BUCKET}/set1/nested/c%20d.webp",
    ]
    assert all(r.key == orjson.loads(r.value)["id"].encode() for r in records)


@pytest.mark.usefixtures("aws_env")
def test_cli_scan_unknown_storage_option_fails_clearly(s3_endpoint: str) -> None:
    result = CliRunner().invoke(
        app,
        ["scan", f"s3://{BUCKET}/set2", "--topic", "t", "--dry-run", "--storage-option", "anon=1"],
    )
    assert result.exit_code == 1
    assert "unknown --storage-option 'anon'" in result.stderr
    assert "endpoint_url, region, path_style, requester_pays" in result.stderr


@pytest.mark.usefixtures("aws_env")
def test_scan_reads_the_consumer_s3_settings_from_the_environment(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGE_EMBEDDER_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("IMAGE_EMBEDDER_S3_PATH_STYLE", "true")
    assert [e.uri for e in scan(f"s3://{BUCKET}/set2/")] == [f"s3://{BUCKET}/set2/other.jpg"]

"""Fixtures for the s3:// tests: buckets and objects in the session's real MinIO, credentials.

Every test here runs with a clean AWS environment: no variables from the machine, shared files
pointed at empty files in the test's folder, and instance metadata off (so a missing credential
is found missing at once instead of after a metadata timeout, and nothing leaves loopback).
Root credentials are set in the environment unless a test removes them.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from PIL import Image
from skimage import data as skdata

from consumer.fetch import Fetcher, FetchPolicy
from devstack import HttpFaultProxy, MinioServer
from devstack.minio import KMS_KEY_ID

BUCKET = "photos"
VERSIONED = "versioned-photos"
OTHER = "other-bucket"
REGION = "us-east-1"


def jpeg(image: Any, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class S3World:
    """What the session put in MinIO: bucket -> key -> bytes, versions, restricted credentials."""

    endpoint: str
    objects: dict[str, dict[str, bytes]]
    versions: list[tuple[str, bytes]]  # (version id, bytes) of VERSIONED/cat.jpg, oldest first
    restricted: dict[str, str]  # AccessKeyId, SecretAccessKey, SessionToken
    root_user: str
    root_password: str

    def client(self, **credentials: str) -> Any:
        creds = credentials or {
            "aws_access_key_id": self.root_user,
            "aws_secret_access_key": self.root_password,
        }
        session = botocore.session.Session()
        return session.create_client("s3", endpoint_url=self.endpoint, region_name=REGION, **creds)


def root_client(server: MinioServer, service: str = "s3") -> Any:
    return botocore.session.Session().create_client(
        service,
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=server.root_user,
        aws_secret_access_key=server.root_password,
    )


@pytest.fixture(scope="session")
def s3_world(minio: MinioServer) -> S3World:
    """Buckets ``photos`` (images, a big object, a private folder, SSE-KMS and SSE-S3 objects),
    ``versioned-photos`` (two
    versions of one key) and ``other-bucket``; credentials that may read ``photos`` but not
    ``photos/private/``, obtained through STS AssumeRole with a session policy (MinIO's root
    user bypasses policies, its temporary credentials with a session policy do not)."""
    s3 = root_client(minio)
    objects: dict[str, dict[str, bytes]] = {
        BUCKET: {
            "chelsea.jpg": jpeg(skdata.chelsea()),
            "set/coffee.jpg": jpeg(skdata.coffee()),
            "set/astronaut.jpg": jpeg(skdata.astronaut()),
            "caf é+100%.jpg": jpeg(skdata.rocket()),
            "b": jpeg(skdata.camera()),
            "big.jpg": jpeg(skdata.astronaut(), quality=100) + bytes(3 * 1024 * 1024),
            "private/secret.jpg": jpeg(skdata.coffee()),
        },
        OTHER: {"chelsea.jpg": jpeg(skdata.chelsea())},
        VERSIONED: {},
    }
    for bucket, items in objects.items():
        s3.create_bucket(Bucket=bucket)
        for key, body in items.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    for key, sse in (("kms/chelsea.jpg", "aws:kms"), ("sse-s3/chelsea.jpg", "AES256")):
        extra = {"SSEKMSKeyId": KMS_KEY_ID} if sse == "aws:kms" else {}
        body = objects[BUCKET]["chelsea.jpg"]
        answer = s3.put_object(Bucket=BUCKET, Key=key, Body=body, ServerSideEncryption=sse, **extra)
        assert answer["ServerSideEncryption"] == sse
        objects[BUCKET][key] = body
    s3.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    versions = []
    for image in (skdata.chelsea(), skdata.coffee()):
        body = jpeg(image)
        answer = s3.put_object(Bucket=VERSIONED, Key="cat.jpg", Body=body)
        versions.append((answer["VersionId"], body))
    objects[VERSIONED]["cat.jpg"] = versions[-1][1]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{BUCKET}/*"],
            },
            {
                "Effect": "Deny",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{BUCKET}/private/*"],
            },
        ],
    }
    sts = root_client(minio, "sts")
    creds = sts.assume_role(
        RoleArn="arn:minio:iam:::role/tests",
        RoleSessionName="image-embedder-tests",
        Policy=json.dumps(policy),
        DurationSeconds=3600,
    )["Credentials"]
    restricted = {k: creds[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}
    return S3World(
        minio.endpoint, objects, versions, restricted, minio.root_user, minio.root_password
    )


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, minio: MinioServer) -> dict[str, str]:
    """A clean AWS environment with the root keys; returns the variables set."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("IMAGE_EMBEDDER_S3_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    values = {
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": minio.root_user,
        "AWS_SECRET_ACCESS_KEY": minio.root_password,
        "AWS_DEFAULT_REGION": REGION,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def fault_proxy(minio: MinioServer) -> Iterator[HttpFaultProxy]:
    """An HTTP fault proxy in front of MinIO (use ``proxy.endpoint`` as the S3 endpoint)."""
    proxy = HttpFaultProxy("127.0.0.1", minio.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def s3_policy(endpoint: str | None, **overrides: Any) -> FetchPolicy:
    """A policy for MinIO at ``endpoint``; quick retries, loopback allowed for presigned URLs."""
    settings: dict[str, Any] = {
        "s3_endpoint_url": endpoint,
        "s3_region": REGION,
        "backoff_s": 0.01,
        "allowed_networks": ("127.0.0.1/32",),
    }
    settings.update(overrides)
    return FetchPolicy(**settings)


@dataclass
class Made:
    fetcher: Fetcher
    retries: list[int]
    sleeps: list[float]


@pytest.fixture
def make_s3_fetcher() -> Iterator[Callable[..., Made]]:
    """``make_s3_fetcher(endpoint, **policy overrides)``: a fetcher that records its retries."""
    made: list[Fetcher] = []

    def make(endpoint: str | None, *, real_sleep: bool = False, **overrides: Any) -> Made:
        retries: list[int] = []
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if real_sleep:
                import time

                time.sleep(seconds)

        fetcher = Fetcher(
            s3_policy(endpoint, **overrides),
            sleep=sleep,
            on_retry=lambda: retries.append(1),
        )
        made.append(fetcher)
        return Made(fetcher, retries, sleeps)

    yield make
    for fetcher in made:
        fetcher.close()


def random_version() -> str:
    return str(uuid.uuid4())

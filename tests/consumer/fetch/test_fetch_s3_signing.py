"""The s3:// signer against botocore's own S3 SigV4 signer: the same request, time and keys give
the same Authorization header; endpoints come from botocore's endpoint rules, kept per bucket."""

from __future__ import annotations

import datetime as dt
from typing import Any

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from consumer.fetch import FetchPolicy, s3direct
from consumer.fetch.s3 import make_client
from consumer.fetch.s3direct import Signer

NOW = dt.datetime(2026, 12, 8, 1, 2, 3, tzinfo=dt.UTC)


class _Session:
    """A botocore session whose credentials are fixed (and counted), endpoints botocore's own."""

    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        self.asked = 0
        self.real = botocore.session.Session()
        self.real.set_credentials("probe", "probe")

    def get_credentials(self) -> Credentials | None:
        self.asked += 1
        return self.credentials

    def get_component(self, name: str) -> Any:
        return self.real.get_component(name)

    def create_client(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.create_client(*args, **kwargs)


def _signer(
    credentials: Credentials | _Session | None,
    made: list[str | None] | None = None,
    **policy: Any,
) -> Signer:
    def make(p: FetchPolicy, session: Any, region: str | None) -> Any:
        if made is not None:
            made.append(region)
        return make_client(p, session, region)

    session = credentials if isinstance(credentials, _Session) else _Session(credentials)
    return Signer(FetchPolicy(**policy), session, make, clock=lambda: NOW.timestamp())


def _botocores_authorization(
    get: Any, credentials: Credentials, region: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    """What botocore's S3 signer puts in ``Authorization`` for the same GET at ``NOW``."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    headers: dict[str, str] = {}
    if "x-amz-request-payer" in get.headers:
        headers["x-amz-request-payer"] = "requester"
    url = f"{get.scheme}://{get.headers['host']}{get.target}"
    request = AWSRequest(method="GET", url=url, headers=headers)
    botocore.auth.S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return str(request.headers["Authorization"])


@pytest.mark.parametrize(
    ("key", "version_id", "token", "payer", "endpoint"),
    [
        ("cat.jpg", None, None, False, "http://127.0.0.1:9000"),
        ("a b/c~d+é%.jpg", "v 1/2+", "tok/en+=", True, "http://127.0.0.1:9000"),
        ("a//b/../c/./d", None, "token", False, None),
        ("x", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", None, True, "https://minio.example:8443"),
        ("photos/2026/12/IMG_0001.JPG", None, None, False, "https://s3.example:443"),
    ],
)
def test_the_signature_is_the_one_botocore_computes(
    key: str,
    version_id: str | None,
    token: str | None,
    payer: bool,
    endpoint: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    signer = _signer(
        credentials, s3_endpoint_url=endpoint, s3_region="eu-west-1", s3_requester_pays=payer
    )
    get = signer.sign("photos", key, version_id)
    assert get is not None
    assert get.headers["x-amz-date"] == "20261208T010203Z"
    assert get.headers["Authorization"] == _botocores_authorization(
        get, credentials, "eu-west-1", monkeypatch
    )
    assert get.headers.get("x-amz-security-token") == token
    assert ("x-amz-request-payer" in get.headers) is payer


def test_endpoints_follow_botocores_rules_and_are_kept_per_bucket() -> None:
    made: list[str | None] = []
    signer = _signer(Credentials("a", "b"), made, s3_region="eu-west-1")
    virtual = signer.sign("photos", "k/1.jpg", None)
    dotted = signer.sign("my.photos", "k", None)  # dots: path style, TLS names stay valid
    assert virtual is not None and dotted is not None
    assert (virtual.scheme, virtual.host, virtual.port) == (
        "https",
        "photos.s3.eu-west-1.amazonaws.com",
        443,
    )
    assert virtual.headers["host"] == "photos.s3.eu-west-1.amazonaws.com"
    assert virtual.target == "/k/1.jpg"
    assert (dotted.host, dotted.target) == ("s3.eu-west-1.amazonaws.com", "/my.photos/k")
    for _ in range(3):
        signer.sign("photos", "k/2.jpg", "v1")
    assert made == [None]  # one client for the default region, its rules run once per bucket
    signer.learn("photos", "ap-south-1")
    moved = signer.sign("photos", "k", None)
    assert moved is not None and moved.region == "ap-south-1"
    assert moved.host == "photos.s3.ap-south-1.amazonaws.com"
    assert "/ap-south-1/s3/aws4_request" in moved.headers["Authorization"]
    assert made == [None, "ap-south-1"]


def test_learned_regions_are_bounded_and_the_oldest_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(s3direct, "MAX_BUCKETS", 2)
    signer = _signer(Credentials("a", "b"), s3_region="eu-west-1")
    for bucket in ("first", "second", "third"):
        signer.learn(bucket, "ap-south-1")
    signer.learn("second", "ap-south-1")  # learned again: the most recent now
    regions = {b: getattr(signer.sign(b, "k", None), "region", None) for b in ("first", "second")}
    # forgotten: signed for the default region again, learned anew from S3's next refusal
    assert regions == {"first": "eu-west-1", "second": "ap-south-1"}
    signer.learn("fourth", "ap-south-1")  # "third" is now the oldest learned
    third = signer.sign("third", "k", None)
    assert third is not None and third.region == "eu-west-1"


def test_a_custom_endpoints_port_is_in_the_signed_host_only_when_not_the_default() -> None:
    for endpoint, host in (
        ("http://127.0.0.1:9000", "127.0.0.1:9000"),
        ("https://minio.example:443", "minio.example"),
        ("http://minio.example", "minio.example"),
    ):
        get = _signer(Credentials("a", "b"), s3_endpoint_url=endpoint).sign("bkt", "k", None)
        assert get is not None and get.headers["host"] == host


def test_credentials_are_asked_for_each_request_and_missing_ones_are_refused() -> None:
    from botocore.exceptions import NoCredentialsError

    session = _Session(Credentials("a", "b"))
    signer = _signer(session)
    for _ in range(3):
        signer.sign("bkt", "k", None)
    assert session.asked == 3  # botocore refreshes them when asked, near their expiry
    with pytest.raises(NoCredentialsError):
        _signer(None).sign("bkt", "k", None)

"""Presigned URLs through the http(s) path (SSRF guard, limits) against a real MinIO.

A presigned URL is an ``http(s)://`` URI like any other; MinIO on loopback is reached because
the policy allows 127.0.0.1/32 (the guard refuses loopback otherwise, also tested).
"""

from __future__ import annotations

import http.server
import threading
import time

import botocore.session
import pytest
from botocore.config import Config

from consumer.fetch import FetchError
from schemas import ErrorType, redact_uri
from tests.consumer.s3.conftest import BUCKET, REGION, S3World


def _presign(world: S3World, key: str, expires_s: int, signature: str = "s3v4") -> str:
    client = botocore.session.Session().create_client(
        "s3",
        endpoint_url=world.endpoint,
        region_name=REGION,
        aws_access_key_id=world.root_user,
        aws_secret_access_key=world.root_password,
        config=Config(signature_version=signature),
    )
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=expires_s
    )


def _error(made, uri: str) -> FetchError:  # type: ignore[no-untyped-def]
    with pytest.raises(FetchError) as caught:
        made.fetcher.fetch(uri)
    return caught.value


def test_a_valid_presigned_url_is_fetched(s3_world: S3World, make_s3_fetcher) -> None:
    url = _presign(s3_world, "chelsea.jpg", 300)
    assert url.startswith("http://127.0.0.1:") and "X-Amz-Signature=" in url
    made = make_s3_fetcher(None)
    assert made.fetcher.fetch(url) == s3_world.objects[BUCKET]["chelsea.jpg"]


def test_the_ssrf_guard_still_refuses_loopback_by_default(
    s3_world: S3World, make_s3_fetcher
) -> None:
    made = make_s3_fetcher(None, allowed_networks=())
    error = _error(made, _presign(s3_world, "chelsea.jpg", 300))
    assert error.error_type is ErrorType.FORBIDDEN_ADDRESS


@pytest.mark.parametrize("signature", ["s3v4", "s3"])
def test_an_expired_presigned_url_is_url_expired(
    s3_world: S3World, make_s3_fetcher, signature: str
) -> None:
    """SigV4 (X-Amz-Date + X-Amz-Expires) and SigV2 (Expires) URLs; before, both were
    ``http_error``."""
    url = _presign(s3_world, "chelsea.jpg", 1, signature)
    time.sleep(2.1)
    made = make_s3_fetcher(None)
    error = _error(made, url)
    assert error.error_type is ErrorType.URL_EXPIRED
    assert error.message == f"HTTP 403 for {redact_uri(url)}: the presigned URL expired"
    assert "Signature" not in error.message
    assert made.retries == []


def test_a_refused_presigned_url_that_has_not_expired_stays_http_error(
    s3_world: S3World, make_s3_fetcher
) -> None:
    url = _presign(s3_world, "chelsea.jpg", 300)
    head, _, signature = url.rpartition("X-Amz-Signature=")
    tampered = head + "X-Amz-Signature=" + ("0" if signature[0] != "0" else "1") + signature[1:]
    error = _error(make_s3_fetcher(None), tampered)
    assert error.error_type is ErrorType.HTTP_ERROR
    assert "HTTP 403" in error.message


class _Expired(http.server.BaseHTTPRequestHandler):
    """Answers every request as S3 does an expired presigned URL."""

    def do_GET(self) -> None:
        body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_servers_answer_decides_when_the_url_names_no_dates(make_s3_fetcher) -> None:
    """A signed URL without readable dates: the 403 body ``Request has expired`` decides; the
    same answer for an unsigned URL stays ``http_error``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Expired)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/photos/a.jpg"
        made = make_s3_fetcher(None)
        signed = _error(made, base + "?X-Amz-Credential=k&X-Amz-Signature=ab12")
        assert signed.error_type is ErrorType.URL_EXPIRED
        assert _error(made, base).error_type is ErrorType.HTTP_ERROR
    finally:
        server.shutdown()
        server.server_close()

"""s3:// fetches against a real MinIO: objects, limits, errors, credentials, faults, versions."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import botocore.session
import pytest

from consumer.fetch import FetchError, load_image
from devstack import HttpFaultProxy
from schemas import ErrorType, decode_message
from tests.consumer.s3.conftest import BUCKET, OTHER, REGION, VERSIONED, S3World, random_version


def _use_restricted_credentials(
    s3_world: S3World, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The session's restricted credentials (``photos`` but not ``photos/private/``) in the
    environment; returns them."""
    creds = s3_world.restricted
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])
    return creds


def _error(made, uri: str) -> FetchError:  # type: ignore[no-untyped-def]
    with pytest.raises(FetchError) as caught:
        made.fetcher.fetch(uri)
    return caught.value


# -- good objects -----------------------------------------------------------------------------


def test_good_objects_are_fetched_byte_for_byte_and_decode(
    s3_world: S3World, make_s3_fetcher
) -> None:
    made = make_s3_fetcher(s3_world.endpoint)
    for key in ("chelsea.jpg", "set/coffee.jpg", "set/astronaut.jpg"):
        assert made.fetcher.fetch(f"s3://{BUCKET}/{key}") == s3_world.objects[BUCKET][key]
    image = load_image(made.fetcher, f"s3://{BUCKET}/chelsea.jpg")
    assert image.ndim == 3 and image.shape[2] == 3
    assert made.retries == []


def test_percent_encoded_keys_name_the_decoded_key(s3_world: S3World, make_s3_fetcher) -> None:
    """``caf é+100%.jpg`` travels as ``caf%20%C3%A9+100%25.jpg``; '+' is a plus, not a space."""
    key = "caf é+100%.jpg"
    uri = f"s3://{BUCKET}/" + quote(key, safe="/+")
    decode_message(None, f'{{"uri": "{uri}"}}'.encode())  # a valid image.v1 URI
    made = make_s3_fetcher(s3_world.endpoint)
    assert made.fetcher.fetch(uri) == s3_world.objects[BUCKET][key]


# -- errors -----------------------------------------------------------------------------------


def test_missing_key_version_and_bucket_are_not_found(s3_world: S3World, make_s3_fetcher) -> None:
    made = make_s3_fetcher(s3_world.endpoint)
    missing = _error(made, f"s3://{BUCKET}/no/such/key.jpg")
    assert missing.error_type is ErrorType.NOT_FOUND
    assert "NoSuchKey" in missing.message and f"s3://{BUCKET}/no/such/key.jpg" in missing.message
    bucket = _error(made, "s3://no-such-bucket/a.jpg")
    assert bucket.error_type is ErrorType.NOT_FOUND and "NoSuchBucket" in bucket.message
    version = _error(made, f"s3://{VERSIONED}/cat.jpg?versionId={random_version()}")
    assert version.error_type is ErrorType.NOT_FOUND
    assert made.retries == []  # permanent: never retried


def test_bucket_not_allowed_is_refused_before_any_request(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    made = make_s3_fetcher(fault_proxy.endpoint, allowed_buckets=(BUCKET,))
    assert (
        made.fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg") == s3_world.objects[BUCKET]["chelsea.jpg"]
    )
    fault_proxy.clear()
    error = _error(made, f"s3://{OTHER}/chelsea.jpg")
    assert error.error_type is ErrorType.FORBIDDEN_BUCKET
    assert "'other-bucket' is not in the allowed buckets" in error.message
    assert fault_proxy.requests == []


def test_object_over_the_size_limit_is_refused_from_its_declared_length(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    size = len(s3_world.objects[BUCKET]["big.jpg"])
    made = make_s3_fetcher(fault_proxy.endpoint, max_bytes=1024 * 1024)
    error = _error(made, f"s3://{BUCKET}/big.jpg")
    assert error.error_type is ErrorType.TOO_LARGE
    assert f"declares {size} bytes, more than the 1048576 allowed" in error.message


def test_object_over_the_size_limit_is_cut_while_streaming_without_a_length(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    """A chunked answer (no Content-Length) is cut once the limit is passed."""
    fault_proxy.add_fault("chunked", match="big.jpg")
    fault_proxy.add_fault("chunked", match="chelsea.jpg")
    made = make_s3_fetcher(fault_proxy.endpoint, max_bytes=1024 * 1024)
    error = _error(made, f"s3://{BUCKET}/big.jpg")
    assert error.error_type is ErrorType.TOO_LARGE
    assert "is larger than the 1048576 bytes allowed" in error.message
    # the same path without a length still delivers a small object whole
    assert (
        made.fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg") == s3_world.objects[BUCKET]["chelsea.jpg"]
    )


def test_denied_object_is_access_denied_and_allowed_ones_still_read(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = _use_restricted_credentials(s3_world, monkeypatch)
    made = make_s3_fetcher(s3_world.endpoint)
    assert (
        made.fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg") == s3_world.objects[BUCKET]["chelsea.jpg"]
    )
    denied = _error(made, f"s3://{BUCKET}/private/secret.jpg")
    assert denied.error_type is ErrorType.ACCESS_DENIED
    assert "403 AccessDenied" in denied.message and "s3:ListBucket" in denied.message
    other = _error(made, f"s3://{OTHER}/chelsea.jpg")  # no grant on that bucket at all
    assert other.error_type is ErrorType.ACCESS_DENIED
    assert made.retries == []
    for secret in creds.values():
        assert secret not in denied.message


def test_wrong_secret_is_access_denied(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    error = _error(make_s3_fetcher(s3_world.endpoint), f"s3://{BUCKET}/chelsea.jpg")
    assert error.error_type is ErrorType.ACCESS_DENIED
    assert "SignatureDoesNotMatch" in error.message
    assert "not-the-secret" not in error.message


def test_missing_credentials_fail_clearly_and_at_once(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    made = make_s3_fetcher(s3_world.endpoint)
    started = time.monotonic()
    error = _error(made, f"s3://{BUCKET}/chelsea.jpg")
    assert time.monotonic() - started < 5
    assert error.error_type is ErrorType.FETCH_FAILED
    assert "no AWS credentials found" in error.message
    assert made.retries == []


# -- faults: throttling and slow bodies --------------------------------------------------------


def test_slowdown_is_retried_and_counted(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    fault = fault_proxy.add_fault("slowdown", match="chelsea.jpg", times=2)
    made = make_s3_fetcher(fault_proxy.endpoint, retries=3)
    assert (
        made.fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg") == s3_world.objects[BUCKET]["chelsea.jpg"]
    )
    assert fault.applied == 2
    assert len(made.retries) == 2
    assert len(made.sleeps) == 2 and made.sleeps[1] > 0


def test_endless_slowdown_ends_as_server_error_after_the_retries(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    fault_proxy.add_fault("slowdown", match="chelsea.jpg")
    made = make_s3_fetcher(fault_proxy.endpoint, retries=2)
    error = _error(made, f"s3://{BUCKET}/chelsea.jpg")
    assert error.error_type is ErrorType.SERVER_ERROR
    assert "503 SlowDown" in error.message and "(after 3 attempts)" in error.message
    assert len(made.retries) == 2


def test_throttled_bucket_holds_a_thread_no_longer_than_the_total_timeout(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    """Many retries allowed, long backoff: the total deadline still ends the fetch."""
    fault_proxy.add_fault("slowdown", match="chelsea.jpg")
    made = make_s3_fetcher(
        fault_proxy.endpoint, retries=10, backoff_s=0.2, total_timeout_s=1.0, real_sleep=True
    )
    started = time.monotonic()
    error = _error(made, f"s3://{BUCKET}/chelsea.jpg")
    elapsed = time.monotonic() - started
    assert error.error_type is ErrorType.SERVER_ERROR
    assert elapsed < 1.5, elapsed
    assert 1 <= len(made.retries) < 10


def test_slow_body_ends_at_the_total_timeout(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    """Bytes keep coming (each read in time), but the whole download passes the deadline."""
    fault_proxy.add_fault("slow_body", match="chelsea.jpg", delay_s=0.02, chunk_bytes=512)
    made = make_s3_fetcher(fault_proxy.endpoint, total_timeout_s=1.0, read_timeout_s=5.0)
    started = time.monotonic()
    error = _error(made, f"s3://{BUCKET}/chelsea.jpg")
    assert time.monotonic() - started < 2.0
    assert error.error_type is ErrorType.FETCH_TIMEOUT
    assert "passed while downloading" in error.message


def test_stalled_body_is_a_read_timeout_retried_then_fetch_timeout(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    fault_proxy.add_fault("slow_body", match="chelsea.jpg", delay_s=2.0, chunk_bytes=1024)
    made = make_s3_fetcher(fault_proxy.endpoint, read_timeout_s=0.3, retries=1)
    started = time.monotonic()
    error = _error(made, f"s3://{BUCKET}/chelsea.jpg")
    assert time.monotonic() - started < 3.0
    assert error.error_type is ErrorType.FETCH_TIMEOUT
    assert "read timeout" in error.message and "(after 2 attempts)" in error.message
    assert len(made.retries) == 1


def test_a_slow_body_that_recovers_is_retried_to_success(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    fault_proxy.add_fault("slow_body", match="chelsea.jpg", delay_s=2.0, times=1)
    made = make_s3_fetcher(fault_proxy.endpoint, read_timeout_s=0.3, retries=2)
    assert (
        made.fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg") == s3_world.objects[BUCKET]["chelsea.jpg"]
    )
    assert len(made.retries) == 1


# -- credentials and endpoint from the environment and shared files ----------------------------


def test_credentials_and_endpoint_from_a_profile_file(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AWS_PROFILE picks keys from the credentials file and region and endpoint from config."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n"
        f"[embedder]\naws_access_key_id = {s3_world.root_user}\n"
        f"aws_secret_access_key = {s3_world.root_password}\n"
    )
    config = tmp_path / "config"
    config.write_text(
        f"[profile embedder]\nregion = {REGION}\nendpoint_url = {s3_world.endpoint}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "embedder")
    made = make_s3_fetcher(None, s3_region=None)
    assert (
        made.fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg") == s3_world.objects[BUCKET]["chelsea.jpg"]
    )


def test_restricted_session_credentials_from_a_profile_file(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = s3_world.restricted
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {creds['AccessKeyId']}\n"
        f"aws_secret_access_key = {creds['SecretAccessKey']}\n"
        f"aws_session_token = {creds['SessionToken']}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    made = make_s3_fetcher(s3_world.endpoint)
    assert (
        made.fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg") == s3_world.objects[BUCKET]["chelsea.jpg"]
    )
    assert _error(made, f"s3://{BUCKET}/private/secret.jpg").error_type is ErrorType.ACCESS_DENIED


def test_endpoint_from_aws_endpoint_url_and_the_setting_wins_over_it(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch, fault_proxy: HttpFaultProxy
) -> None:
    uri = f"s3://{BUCKET}/chelsea.jpg"
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    assert make_s3_fetcher(None).fetcher.fetch(uri) == s3_world.objects[BUCKET]["chelsea.jpg"]
    assert ("GET", f"/{BUCKET}/chelsea.jpg") in fault_proxy.requests
    fault_proxy.clear()
    # the explicit endpoint (straight to MinIO) wins: the proxy sees nothing
    assert (
        make_s3_fetcher(s3_world.endpoint).fetcher.fetch(uri)
        == s3_world.objects[BUCKET]["chelsea.jpg"]
    )
    assert fault_proxy.requests == []


# -- versions and flat keys ---------------------------------------------------------------------


def test_a_pinned_version_reads_those_bytes(s3_world: S3World, make_s3_fetcher) -> None:
    made = make_s3_fetcher(s3_world.endpoint)
    (old_id, old_body), (new_id, new_body) = s3_world.versions
    assert old_body != new_body
    assert made.fetcher.fetch(f"s3://{VERSIONED}/cat.jpg") == new_body
    assert made.fetcher.fetch(f"s3://{VERSIONED}/cat.jpg?versionId={old_id}") == old_body
    assert made.fetcher.fetch(f"s3://{VERSIONED}/cat.jpg?versionId={new_id}") == new_body
    msg = decode_message(None, f'{{"uri": "s3://{VERSIONED}/cat.jpg?versionId={old_id}"}}'.encode())
    assert msg.id != decode_message(None, f'{{"uri": "s3://{VERSIONED}/cat.jpg"}}'.encode()).id


@pytest.mark.parametrize("key", ["a//b", "./x", "a/../b", "a/./b", "x/.."])
def test_keys_are_flat_strings_sent_as_written(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy, key: str
) -> None:
    """No dot-segment removal or slash merging on the way: ``a/../b`` never reads ``b``.

    MinIO refuses such names (it stores objects as files), so the answer is a clear
    ``fetch_failed`` naming its error; AWS S3 serves them as the distinct objects they are.
    """
    made = make_s3_fetcher(fault_proxy.endpoint)
    error = _error(made, f"s3://{BUCKET}/{key}")
    assert fault_proxy.requests == [("GET", f"/{BUCKET}/{key}")]
    assert error.error_type is ErrorType.FETCH_FAILED
    assert "XMinioInvalid" in error.message and f"s3://{BUCKET}/{key}" in error.message


def test_s3_uris_with_another_query_or_a_fragment_are_refused(
    s3_world: S3World, make_s3_fetcher
) -> None:
    made = make_s3_fetcher(s3_world.endpoint)
    for uri in (f"s3://{BUCKET}/b?partNumber=1", f"s3://{BUCKET}/b?versionId=1&x=2"):
        error = _error(made, uri)
        assert error.error_type is ErrorType.FETCH_FAILED
        assert "only one query parameter, versionId" in error.message


def test_connections_are_pooled_across_fetches_and_threads(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    from concurrent.futures import ThreadPoolExecutor

    made = make_s3_fetcher(s3_world.endpoint)
    uri = f"s3://{BUCKET}/set/astronaut.jpg"
    made.fetcher.fetch(uri)  # the client and its first connection
    connects: list[object] = []
    real = socket.socket.connect

    def counting(self: socket.socket, address: object) -> None:
        connects.append(address)
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", counting)
    for _ in range(10):
        assert made.fetcher.fetch(uri) == s3_world.objects[BUCKET]["set/astronaut.jpg"]
    assert connects == []
    with ThreadPoolExecutor(4) as pool:
        assert len(set(pool.map(lambda _: made.fetcher.fetch(uri), range(40)))) == 1
    assert len(connects) <= 4


def test_bucket_names_are_checked_before_any_request(make_s3_fetcher) -> None:
    made = make_s3_fetcher("http://127.0.0.1:9")
    for uri in ("s3://Bad_Bucket/k", "s3://user@bucket/k", "s3://bucket:80/k", "s3://ab/k"):
        error = _error(made, uri)
        assert error.error_type is ErrorType.FETCH_FAILED
        assert "without a valid bucket name" in error.message


def test_encrypted_objects_read_with_the_usual_permission(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSE-KMS and SSE-S3 objects: the server decrypts; restricted s3:GetObject is enough."""
    _use_restricted_credentials(s3_world, monkeypatch)
    made = make_s3_fetcher(s3_world.endpoint)
    for key in ("kms/chelsea.jpg", "sse-s3/chelsea.jpg"):
        assert made.fetcher.fetch(f"s3://{BUCKET}/{key}") == s3_world.objects[BUCKET]["chelsea.jpg"]


def test_a_bucket_in_another_region_is_found_once_then_cached(
    make_s3_fetcher, tmp_path: Path
) -> None:
    """A server in eu-central-1 refuses requests signed for us-east-1 and names its region;
    botocore signs again for it, and later fetches of that bucket go there at once."""
    from devstack import MinioServer, free_port

    server = MinioServer(
        tmp_path / "data", tmp_path / "minio.log", port=free_port(), region="eu-central-1"
    )
    server.start()
    try:
        s3 = botocore.session.Session().create_client(
            "s3",
            endpoint_url=server.endpoint,
            region_name="eu-central-1",
            aws_access_key_id=server.root_user,
            aws_secret_access_key=server.root_password,
        )
        s3.create_bucket(
            Bucket="far-photos", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
        )
        s3.put_object(Bucket="far-photos", Key="a.jpg", Body=b"far away")
        with HttpFaultProxy("127.0.0.1", server.port) as proxy:
            made = make_s3_fetcher(proxy.endpoint, s3_region=REGION)
            assert made.fetcher.fetch("s3://far-photos/a.jpg") == b"far away"
            assert len(proxy.requests) == 2  # refused for us-east-1, then signed for the right one
            assert made.fetcher.fetch("s3://far-photos/a.jpg") == b"far away"
            assert len(proxy.requests) == 3
            assert made.retries == []  # a redirect is not a retry
    finally:
        server.stop()


def test_expiring_credentials_are_refreshed(
    s3_world: S3World, make_s3_fetcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A profile's ``credential_process`` hands out keys that expire in 5 minutes: botocore asks
    again before using them (inside its refresh window), with no restart and no failed fetch."""
    import json
    import sys
    from datetime import UTC, datetime, timedelta

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    calls = tmp_path / "calls"
    script = tmp_path / "issue_credentials.py"
    expires = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = {
        "Version": 1,
        "AccessKeyId": s3_world.root_user,
        "SecretAccessKey": s3_world.root_password,
        "Expiration": expires,
    }
    script.write_text(
        "import sys\n"
        f"open({str(calls)!r}, 'a').write('x')\n"
        f"sys.stdout.write({json.dumps(answer)!r})\n"
    )
    config = tmp_path / "config"
    config.write_text(f"[profile rotating]\ncredential_process = {sys.executable} {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "rotating")
    made = make_s3_fetcher(s3_world.endpoint)
    for _ in range(3):
        assert (
            made.fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg")
            == s3_world.objects[BUCKET]["chelsea.jpg"]
        )
    assert len(calls.read_text()) >= 3  # once to start, then again for each use


# -- which path sends the GET: signed here and sent on the pools, or botocore's client -----------


def _sent_by_botocore(headers: dict[str, str]) -> bool:
    """botocore's client marks each request it sends with an invocation id; the pools do not."""
    return "amz-sdk-invocation-id" in headers


def test_objects_are_read_by_gets_signed_here_on_kept_alive_connections(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    """The GET is SigV4-signed (MinIO checks it) by the consumer and sent on its own pools."""
    made = make_s3_fetcher(fault_proxy.endpoint)
    for _ in range(3):
        assert made.fetcher.fetch(f"s3://{BUCKET}/b") == s3_world.objects[BUCKET]["b"]
    assert fault_proxy.requests == [("GET", f"/{BUCKET}/b")] * 3
    for headers in fault_proxy.headers:
        assert not _sent_by_botocore(headers)
        assert headers["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={s3_world.root_user}/"
        )
        assert f"/{REGION}/s3/aws4_request, SignedHeaders=" in headers["authorization"]


def test_requester_pays_sends_the_signed_payer_header(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    """``x-amz-request-payer`` is one of the signed headers: MinIO checks the signature over
    it, so a request that signed it wrongly, or sent it unsigned, would be refused."""
    made = make_s3_fetcher(fault_proxy.endpoint, s3_requester_pays=True)
    assert made.fetcher.fetch(f"s3://{BUCKET}/b") == s3_world.objects[BUCKET]["b"]
    (headers,) = fault_proxy.headers
    assert headers["x-amz-request-payer"] == "requester"
    assert (
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-request-payer,"
        in (headers["authorization"])
    )


def test_session_credentials_send_their_token_signed(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = _use_restricted_credentials(s3_world, monkeypatch)
    made = make_s3_fetcher(fault_proxy.endpoint)
    assert made.fetcher.fetch(f"s3://{BUCKET}/b") == s3_world.objects[BUCKET]["b"]
    (headers,) = fault_proxy.headers
    assert headers["x-amz-security-token"] == creds["SessionToken"]
    assert "x-amz-date;x-amz-security-token," in headers["authorization"]


def test_an_endpoint_behind_the_environments_proxy_goes_through_botocores_client(
    s3_world: S3World, make_s3_fetcher, fault_proxy: HttpFaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY`` covers the endpoint: botocore's client sends the request (to the proxy,
    in absolute form), since the pools here do not speak to proxies; ``NO_PROXY`` lifts it."""
    monkeypatch.setenv("HTTP_PROXY", fault_proxy.endpoint)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    made = make_s3_fetcher(s3_world.endpoint)
    assert made.fetcher.fetch(f"s3://{BUCKET}/b") == s3_world.objects[BUCKET]["b"]
    assert fault_proxy.requests == [("GET", f"{s3_world.endpoint}/{BUCKET}/b")]
    assert _sent_by_botocore(fault_proxy.headers[0])
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fault_proxy.clear()
    bypassing = make_s3_fetcher(s3_world.endpoint)
    assert bypassing.fetcher.fetch(f"s3://{BUCKET}/b") == s3_world.objects[BUCKET]["b"]
    assert fault_proxy.requests == []


def test_a_directory_bucket_goes_through_botocores_client(
    make_s3_fetcher, fault_proxy: HttpFaultProxy
) -> None:
    """S3 Express directory buckets need session authentication, which botocore's client does
    (it asks for a session first); nothing is signed here for them."""
    made = make_s3_fetcher(fault_proxy.endpoint)
    with pytest.raises(FetchError):
        made.fetcher.fetch("s3://photos--use1-az4--x-s3/b")
    assert fault_proxy.headers, "botocore's client sent nothing"
    assert all(_sent_by_botocore(headers) for headers in fault_proxy.headers)

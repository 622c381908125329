"""The rest of the AWS credential chain against the real MinIO: container credentials (ECS, EKS
Pod Identity), instance metadata (IMDSv2) and web identity (IRSA: a service-account token traded
at STS for temporary keys).

Each provider hands out the *restricted* keys of the session (they may read ``photos`` but not
``photos/private/``), so a read that works and a read that is denied together prove the keys came
from that provider and not from anywhere else. The fetcher's client is botocore's default chain
(``consumer.fetch.s3.make_client``): nothing here is configured on the fetcher beyond its
endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from consumer.fetch import FetchError
from devstack import MinioServer
from devstack.process import free_port
from schemas import ErrorType
from tests.consumer.s3.conftest import BUCKET, REGION, S3World, root_client

Handler = Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]


class _Endpoint:
    """A loopback HTTP server answering each request with ``handler``; records what it saw."""

    def __init__(self, handler: Handler) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class _Request(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.seen.append((self.command, self.path, dict(self.headers.items())))
                status, headers, body = handler(self)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Request)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Callable[[Handler], _Endpoint]]:
    made: list[_Endpoint] = []

    def make(handler: Handler) -> _Endpoint:
        made.append(_Endpoint(handler))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _expiry(minutes: int = 60) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _assert_restricted_keys_in_use(s3_world: S3World, fetcher: Any) -> None:
    assert fetcher.fetch(f"s3://{BUCKET}/chelsea.jpg") == s3_world.objects[BUCKET]["chelsea.jpg"]
    with pytest.raises(FetchError) as denied:
        fetcher.fetch(f"s3://{BUCKET}/private/secret.jpg")
    assert denied.value.error_type is ErrorType.ACCESS_DENIED


@pytest.fixture
def no_static_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")


# -- container credentials: ECS task roles and EKS Pod Identity -------------------------------


@pytest.mark.usefixtures("no_static_keys")
def test_container_credentials_with_the_pod_identity_token(
    s3_world: S3World,
    make_s3_fetcher: Any,
    endpoint: Callable[[Handler], _Endpoint],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """EKS Pod Identity sets a full URI and a token file: the agent is asked with the token."""
    creds = s3_world.restricted
    token = "pod-identity-token-1"

    def agent(request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("Authorization") != token:
            return 401, {}, b"no token"
        return _json(
            {
                "AccessKeyId": creds["AccessKeyId"],
                "SecretAccessKey": creds["SecretAccessKey"],
                "Token": creds["SessionToken"],
                "Expiration": _expiry(),
            }
        )

    agent_server = endpoint(agent)
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(token)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{agent_server.url}/v1/credentials")
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
    _assert_restricted_keys_in_use(s3_world, make_s3_fetcher(s3_world.endpoint).fetcher)
    assert [(method, path) for method, path, _ in agent_server.seen] == [("GET", "/v1/credentials")]


# -- instance metadata: EC2 instance profiles (IMDSv2) ----------------------------------------


@pytest.mark.usefixtures("no_static_keys")
def test_instance_profile_credentials_through_imdsv2(
    s3_world: S3World,
    make_s3_fetcher: Any,
    endpoint: Callable[[Handler], _Endpoint],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A session token is PUT first, then every metadata read carries it (IMDSv2 only)."""
    creds = s3_world.restricted
    session_token = "imds-session-token"

    def imds(request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.command == "PUT" and request.path == "/latest/api/token":
            return 200, {}, session_token.encode()
        if request.headers.get("X-aws-ec2-metadata-token") != session_token:
            return 401, {}, b""
        base = "/latest/meta-data/iam/security-credentials/"
        if request.path == base:
            return 200, {}, b"embedder-role"
        if request.path == base + "embedder-role":
            return _json(
                {
                    "Code": "Success",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": creds["AccessKeyId"],
                    "SecretAccessKey": creds["SecretAccessKey"],
                    "Token": creds["SessionToken"],
                    "Expiration": _expiry(),
                }
            )
        return 404, {}, b""

    metadata = endpoint(imds)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata.url + "/")
    _assert_restricted_keys_in_use(s3_world, make_s3_fetcher(s3_world.endpoint).fetcher)
    paths = [(method, path) for method, path, _ in metadata.seen]
    assert paths[0] == ("PUT", "/latest/api/token")
    assert ("GET", "/latest/meta-data/iam/security-credentials/embedder-role") in paths


# -- web identity: IRSA (a Kubernetes service-account token traded at STS) --------------------

CLIENT_ID = "image-embedder"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Issuer:
    """An OpenID provider as Kubernetes is for IRSA: a discovery document and a JWKS."""

    def __init__(self, make_endpoint: Callable[[Handler], _Endpoint]) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.jwks = {
            "keys": [
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": "irsa-1",
                    "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": _b64(numbers.e.to_bytes(3, "big")),
                }
            ]
        }
        self.endpoint = make_endpoint(self._answer)
        self.url = self.endpoint.url

    def _answer(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.path == "/.well-known/openid-configuration":
            return _json(
                {
                    "issuer": self.url,
                    "jwks_uri": f"{self.url}/keys",
                    "authorization_endpoint": f"{self.url}/authorize",
                    "token_endpoint": f"{self.url}/token",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            )
        if request.path == "/keys":
            return _json(self.jwks)
        return 404, {}, b""

    def token(self, key: rsa.RSAPrivateKey | None = None, lifetime_s: int = 600) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "kid": "irsa-1", "typ": "JWT"}
        claims = {
            "iss": self.url,
            "sub": "system:serviceaccount:embedding:image-embedder",
            "aud": CLIENT_ID,
            "azp": CLIENT_ID,
            "iat": now,
            "exp": now + lifetime_s,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = (key or self.key).sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{_b64(signature)}"


@pytest.fixture
def irsa_minio(
    endpoint: Callable[[Handler], _Endpoint], tmp_path: Path
) -> Iterator[tuple[MinioServer, _Issuer]]:
    """A MinIO that trusts the issuer's tokens for a role with the built-in ``readonly`` policy."""
    issuer = _Issuer(endpoint)
    server = MinioServer(
        tmp_path / "irsa-data",
        tmp_path / "irsa-minio.log",
        port=free_port(),
        region=REGION,
        extra_env={
            "MINIO_IDENTITY_OPENID_CONFIG_URL": f"{issuer.url}/.well-known/openid-configuration",
            "MINIO_IDENTITY_OPENID_CLIENT_ID": CLIENT_ID,
            "MINIO_IDENTITY_OPENID_ROLE_POLICY": "readonly",
        },
    )
    server.start()
    try:
        s3 = root_client(server)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="cat.jpg", Body=b"cat bytes")
        yield server, issuer
    finally:
        server.stop()


def _role_arn() -> str:
    """MinIO names a role-policy provider's role after the SHA-1 of its client ID."""
    resource = _b64(hashlib.sha1(CLIENT_ID.encode()).digest())
    return f"arn:minio:iam:{REGION}::role/{resource}"


@pytest.mark.usefixtures("no_static_keys")
def test_web_identity_token_is_traded_at_sts_for_keys(
    irsa_minio: tuple[MinioServer, _Issuer],
    make_s3_fetcher: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """What EKS's IRSA webhook sets (role ARN, token file) is all the consumer needs; a token
    signed by another key gets no keys, and the fetch says the credentials are the problem."""
    server, issuer = irsa_minio
    token_file = tmp_path / "token"
    token_file.write_text(issuer.token())
    monkeypatch.setenv("AWS_ROLE_ARN", _role_arn())
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "image-embedder-test")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", server.endpoint)
    assert make_s3_fetcher(server.endpoint).fetcher.fetch(f"s3://{BUCKET}/cat.jpg") == b"cat bytes"

    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token_file.write_text(issuer.token(key=forged))
    with pytest.raises(FetchError) as refused:
        make_s3_fetcher(server.endpoint).fetcher.fetch(f"s3://{BUCKET}/cat.jpg")
    assert refused.value.error_type is ErrorType.ACCESS_DENIED, refused.value
    assert "AssumeRoleWithWebIdentity" in refused.value.message  # where to look, not the object


# -- IAM Identity Center (SSO) profiles --------------------------------------------------------


@pytest.mark.usefixtures("no_static_keys")
def test_sso_profile_credentials_from_the_cached_login(
    s3_world: S3World,
    make_s3_fetcher: Any,
    endpoint: Callable[[Handler], _Endpoint],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """An SSO profile (after ``aws sso login``) trades the cached access token for role keys at
    the portal; the consumer needs nothing but ``AWS_PROFILE``."""
    creds = s3_world.restricted
    access_token = "sso-access-token"
    start_url = "https://example.awsapps.com/start"

    def portal(request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("x-amz-sso_bearer_token") != access_token:
            return 401, {}, b"{}"
        expires_ms = int((time.time() + 3600) * 1000)
        return _json(
            {
                "roleCredentials": {
                    "accessKeyId": creds["AccessKeyId"],
                    "secretAccessKey": creds["SecretAccessKey"],
                    "sessionToken": creds["SessionToken"],
                    "expiration": expires_ms,
                }
            }
        )

    sso = endpoint(portal)
    cache = tmp_path / "home" / ".aws" / "sso" / "cache"
    cache.mkdir(parents=True)
    (cache / f"{hashlib.sha1(start_url.encode()).hexdigest()}.json").write_text(
        json.dumps(
            {
                "startUrl": start_url,
                "region": REGION,
                "accessToken": access_token,
                "expiresAt": _expiry(),
            }
        )
    )
    config = tmp_path / "sso-config"
    config.write_text(
        "[profile reader]\n"
        f"sso_start_url = {start_url}\nsso_region = {REGION}\n"
        "sso_account_id = 123456789012\nsso_role_name = PhotoReader\n"
        f"region = {REGION}\n"
    )
    # botocore fixes its token cache folder (~/.aws/sso/cache) when it is imported: point it at
    # this test's home instead of the user's
    import botocore.credentials

    monkeypatch.setattr(botocore.credentials.SSOProvider, "_SSO_TOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "reader")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSO", sso.url)
    _assert_restricted_keys_in_use(s3_world, make_s3_fetcher(s3_world.endpoint).fetcher)
    [(method, path, _)] = sso.seen
    assert method == "GET" and path.startswith("/federation/credentials?")
    assert "role_name=PhotoReader" in path and "account_id=123456789012" in path

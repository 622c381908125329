"""s3:// downloads through botocore: the AWS credential chain, bounded in bytes and time.

botocore resolves the endpoint and the credentials of every request; the GET itself is signed
(SigV4 headers) and sent on this package's keep-alive urllib3 pools
(:mod:`consumer.fetch.s3direct`, about 1.5 ms of Python less per object than botocore's
``get_object``), except where only botocore's client can send it (a proxy, a directory bucket, a
redirect that names no region). The clients serve every thread (botocore clients are
thread-safe; each pool keeps up to ``s3_max_pool_connections`` connections open). They are
created on the first ``s3://`` fetch, so a consumer that never sees one never loads botocore nor
looks for credentials.

Credentials come only from the process's chain, never from a message: environment, the shared
credentials and config files (profiles, SSO, ``credential_process``, assume-role), web identity
(IRSA, workload identity federation), container and instance metadata; botocore refreshes
temporary ones before they expire.

Retries: botocore's own retry loop is given one attempt, so that every retry happens here, inside
the fetch's total deadline, with jittered exponential backoff, and is reported to ``on_retry``
(the consumer counts it in ``retries_total{operation="fetch"}``). Throttling (503 ``SlowDown``
and the other throttling codes), 5xx, timeouts and dropped connections are retried; the rest is
permanent. A bucket in another region costs one extra request the first time it is seen (S3
names its region in the refusal), then its region is kept.

Keys are flat strings: ``a//b``, ``./x`` and ``a/../b`` are three objects, sent as written
(botocore percent-encodes them; nothing removes dot segments; tested). The body is read in one
``read(n)`` of its declared length (:mod:`consumer.fetch.body`); the watchdog cuts it at the
total deadline, so a slow body cannot hold an I/O thread past it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from consumer.fetch.body import Attempts, BodyReader, Transient, finish, request_timeout
from consumer.fetch.exceptions import (
    AccessDenied,
    FetchFailed,
    FetchTimeout,
    ForbiddenBucket,
    NotFound,
    ServerError,
    TooLarge,
)
from consumer.fetch.policy import FetchPolicy
from consumer.fetch.s3direct import DIRECTORY_BUCKET_SUFFIX, SignedPools, Signer, read_error
from consumer.fetch.watchdog import Watchdog
from schemas.redaction import redact_uri

_NOT_FOUND_CODES: Final = frozenset({"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "NotFound"})
_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
_TRANSIENT_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "XMinioServerNotInitialized",
    }
)
_TRANSIENT_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_T = TypeVar("_T")
_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True, slots=True)
class S3Object:
    """What an ``s3://bucket/key[?versionId=V]`` URI names (key and version percent-decoded)."""

    bucket: str
    key: str
    version_id: str | None = None


def parse_s3_uri(uri: str) -> S3Object:
    """Split an s3 URI; the key is everything after the bucket's ``/``, exactly as written.

    Raises :class:`FetchFailed` for a URI that names no bucket or key, a query other than one
    ``versionId``, or a key that is not UTF-8 once percent-decoded.
    """
    shown = redact_uri(uri)
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() != "s3":
        raise FetchFailed(f"not an s3 URI: {shown}")
    if "#" in rest:
        raise FetchFailed(f"s3 URIs may not carry a fragment (percent-encode '#'): {shown}")
    rest, _, query = rest.partition("?")
    bucket, slash, raw_key = rest.partition("/")
    if not bucket or not slash or not raw_key:
        raise FetchFailed(f"s3 URI without a bucket and a key: {shown}")
    if _BUCKET_RE.fullmatch(bucket) is None:
        raise FetchFailed(f"s3 URI without a valid bucket name: {shown}")
    version_id = None
    if query:
        name, eq, value = query.partition("=")
        if name != "versionId" or not eq or not value or "&" in value:
            raise FetchFailed(f"s3 URIs allow only one query parameter, versionId: {shown}")
        version_id = _decode(value, "versionId", shown)
    return S3Object(bucket, _decode(raw_key, "key", shown), version_id)


def _decode(text: str, what: str, shown: str) -> str:
    try:
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise FetchFailed(f"s3 {what} is not UTF-8 once percent-decoded: {shown}") from None


class S3Downloader:
    """Downloads s3 URIs under a :class:`FetchPolicy`. Thread-safe.

    ``on_retry()`` is called before each retry; ``sleep`` replaces :func:`time.sleep` between
    retries; ``watchdog`` cuts bodies still downloading at their total deadline.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        watchdog: Watchdog,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._attempts = Attempts(policy, sleep=sleep, on_retry=on_retry)
        self._bodies = BodyReader(policy, watchdog, what="s3 ")
        self._allowed = frozenset(policy.allowed_buckets)
        self._clients: S3Clients | None = None
        self._lock = threading.Lock()

    # -- the clients -----------------------------------------------------------------------------
    def _get_clients(self) -> S3Clients:
        clients = self._clients
        if clients is not None:
            return clients
        with self._lock:
            if self._clients is None:
                self._clients = S3Clients.open(self._policy)
            return self._clients

    def close(self) -> None:
        """Close the pooled connections (a later fetch opens new clients)."""
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is not None:
            clients.close()

    # -- fetching --------------------------------------------------------------------------------
    def fetch(self, uri: str) -> bytes:
        """The bytes of the object ``uri`` names; raises a :class:`FetchError`."""
        shown = redact_uri(uri)
        obj = parse_s3_uri(uri)
        if self._allowed and obj.bucket not in self._allowed:
            raise ForbiddenBucket(f"bucket {obj.bucket!r} is not in the allowed buckets: {shown}")
        return self._attempts.run(lambda deadline: self._fetch_once(obj, deadline, shown))

    def _fetch_once(self, obj: S3Object, deadline: float, shown: str) -> bytes:
        """One attempt: a GET signed here and sent on the pools, or botocore's ``get_object``."""
        if time.monotonic() >= deadline:
            raise FetchTimeout(f"total timeout of {self._policy.total_timeout_s:g} s passed")
        clients = self._get_clients()
        if not obj.bucket.endswith(DIRECTORY_BUCKET_SUFFIX):
            data = self._signed_get(clients, obj, deadline, shown)
            if data is not None:
                return data
        params: dict[str, str] = {"Bucket": obj.bucket, "Key": obj.key}
        if obj.version_id is not None:
            params["VersionId"] = obj.version_id
        if self._policy.s3_requester_pays:
            params["RequestPayer"] = "requester"
        response = _botocore_call(lambda: clients.client.get_object(**params), shown)
        return self._read_client_body(response, deadline, shown)

    def _signed_get(
        self, clients: S3Clients, obj: S3Object, deadline: float, shown: str
    ) -> bytes | None:
        """The object through a signed GET; ``None`` where botocore's client must send it.

        A refusal naming the bucket's region signs the request again for that region (once).
        """
        for _hop in range(2):
            get = _botocore_call(
                lambda: clients.signer.sign(obj.bucket, obj.key, obj.version_id), shown
            )
            if get is None or clients.pools.proxied(get):
                return None
            resp = clients.pools.send(get, request_timeout(self._policy, deadline), shown)
            try:
                if 200 <= resp.status < 300:
                    return self._bodies.read_response(resp, deadline=deadline, shown=shown)
                answer = read_error(resp)
            finally:
                finish(resp)
            if not answer.names_another_region:
                raise classify_answer(answer.status, answer.code, answer.message, shown)
            if answer.region is None or answer.region == get.region:
                return None
            clients.signer.learn(obj.bucket, answer.region)
        return None

    def _read_client_body(self, response: dict[str, Any], deadline: float, shown: str) -> bytes:
        limit = self._policy.max_bytes
        body = response["Body"]
        try:
            declared = response.get("ContentLength")
            if isinstance(declared, int) and declared > limit:
                raise TooLarge(f"{shown} has {declared} bytes, more than the {limit} allowed")
            # botocore's StreamingBody wraps the urllib3 response; read that one directly, which
            # can be cut at the deadline (``shutdown``) and reads the declared length in one call
            raw = getattr(body, "_raw_stream", body)
            return self._bodies.read(
                raw,
                declared=declared if isinstance(declared, int) else None,
                deadline=deadline,
                shown=shown,
            )
        finally:
            body.close()


@dataclass(frozen=True, slots=True)
class S3Clients:
    """botocore's client, the signer and the pools signed GETs go through."""

    client: Any
    signer: Signer
    pools: SignedPools

    @classmethod
    def open(cls, policy: FetchPolicy) -> S3Clients:
        """Clients for ``policy`` sharing one botocore session (one credential chain)."""
        import botocore.session

        session = botocore.session.get_session()
        client = make_client(policy, session)
        ca_bundle = session.get_config_variable("ca_bundle")
        return cls(client, Signer(policy, session, make_client), SignedPools(policy, ca_bundle))

    def close(self) -> None:
        """Close the pooled connections of both paths."""
        self.pools.close()
        self.client.close()


def _botocore_call(call: Callable[[], _T], shown: str) -> _T:
    """``call()``; botocore's errors become fetch errors (``Transient`` where they may pass)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        HTTPClientError,
        NoCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
        SSLError,
    )

    try:
        return call()
    except ClientError as exc:
        raise _classify(exc, shown) from None
    except NoCredentialsError:
        raise FetchFailed(
            f"no AWS credentials found for {shown} (environment, shared files, profile, "
            "web identity or instance role)"
        ) from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise Transient(FetchTimeout(f"s3 timeout for {shown}")) from None
    except SSLError:
        raise FetchFailed(f"s3 TLS error (certificate or handshake) for {shown}") from None
    except (ConnectionError, HTTPClientError, ResponseStreamingError) as exc:
        raise Transient(FetchFailed(f"s3 {_describe(exc)} for {shown}")) from None
    except BotoCoreError as exc:
        raise FetchFailed(f"s3 client error {type(exc).__name__} for {shown}") from None


def make_client(policy: FetchPolicy, session: Any = None, region: str | None = None) -> Any:
    """A botocore S3 client for ``policy``: its endpoint, region, addressing and limits.

    ``session`` is a botocore session (default: a new one); ``region`` overrides the policy's.

    ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` apply when no endpoint is configured (botocore
    reads them); the credential chain is botocore's default one.

    Three per-request costs of botocore are cut, as its own settings allow: the User-Agent is the
    policy's (botocore otherwise rebuilds and sanitises its composite one for every request),
    timestamps in responses stay text (``LastModified`` went through dateutil for each object,
    and nothing here reads it), and parameters are not validated against the API model again
    (:func:`parse_s3_uri` has checked the bucket and the key).
    """
    import botocore.session
    from botocore.config import Config

    if session is None:
        session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_timestamp_as_text
    )
    config = Config(
        connect_timeout=policy.connect_timeout_s,
        read_timeout=policy.read_timeout_s,
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=policy.s3_max_pool_connections,
        s3={"addressing_style": "path" if policy.s3_path_style else "auto"},
        user_agent=policy.user_agent,
        parameter_validation=False,
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.create_client(
        "s3",
        region_name=region or policy.s3_region or None,
        endpoint_url=policy.s3_endpoint_url or None,
        config=config,
    )


def _timestamp_as_text(value: str) -> str:
    return value


def _classify(exc: Any, shown: str) -> Exception:
    """A :class:`FetchError` (or ``Transient``) for a botocore ``ClientError``."""
    error = exc.response.get("Error", {}) or {}
    code = str(error.get("Code") or "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    operation = getattr(exc, "operation_name", "GetObject")
    if operation != "GetObject" and not (code in _TRANSIENT_CODES or status in _TRANSIENT_STATUSES):
        # the credential chain's own call (STS for web identity or a profile's role) failed:
        # the object was never asked for, and the message must say where to look
        reason = str(error.get("Message") or "").strip()
        return AccessDenied(
            f"the AWS credential provider's {operation} call was refused ({status} {code}"
            f"{': ' + reason if reason else ''}) before reading {shown}: check the role and "
            "its token (web identity, profile role_arn)"
        )
    return classify_answer(status, code, str(error.get("Message") or ""), shown)


def classify_answer(status: int | None, code: str, message: str, shown: str) -> Exception:
    """A :class:`FetchError` (or ``Transient``) for S3's error answer to a ``GetObject``.

    ``message`` is S3's own text; it names the failure only where the code alone does not say
    enough (an expired request).
    """
    what = f"s3 {status} {code}".rstrip() + f" for {shown}"
    if code in _NOT_FOUND_CODES or status in (404, 410):
        return NotFound(what)
    if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUSES:
        return Transient(ServerError(what))
    if code in _DENIED_CODES or status in (401, 403):
        if "expired" in message.lower():
            what += f" ({message[:120]})"
        return AccessDenied(
            f"{what}: the consumer's credentials may not read it (without s3:ListBucket on the "
            "bucket, S3 answers a missing key with 403 too)"
        )
    if code == "InvalidObjectState":
        return FetchFailed(f"{what}: an archived object (restore it first)")
    return FetchFailed(what)


def _describe(exc: Exception) -> str:
    names = {
        "EndpointConnectionError": "cannot connect",
        "ConnectionClosedError": "connection closed",
        "ProxyConnectionError": "cannot connect to the proxy",
        "ResponseStreamingError": "read error",
    }
    return names.get(type(exc).__name__, f"transport error {type(exc).__name__}")

"""s3:// GETs signed here with botocore's endpoints and credentials, sent on our urllib3 pools.

A botocore ``get_object`` call spends about 1.5 ms of Python per object on this machine's cores
(event hooks, endpoint rules, signing, retry bookkeeping, response parsing), and the consumer's
I/O threads pay it on the core that decodes. Here botocore still decides what makes a request
right: the endpoint (its endpoint rules, run once per bucket and region: path or virtual
addressing, FIPS, dual-stack, a custom endpoint) and the credentials (its chain, refreshed before
they expire). The request is signed here with SigV4 (the same canonical request botocore's S3
signer builds, checked against it in the tests), sent on a keep-alive urllib3 pool and its
answer read here (:mod:`consumer.fetch.body`): it costs about what an ``http://`` fetch costs.

What this path leaves to botocore's client (:class:`~consumer.fetch.s3.S3Downloader` sends those
requests with ``get_object``): an endpoint that the environment's proxy settings cover
(``HTTPS_PROXY`` / ``NO_PROXY``, botocore's own rule), S3 Express directory buckets (``--x-s3``:
session authentication), and a redirect that names no region.

Buckets in another region: S3 refuses a request signed for the wrong region and names the right
one (``x-amz-bucket-region``); the request is signed again for it at once (not a retry), and the
bucket's region is kept, so later requests go there first time.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.connection import HTTPConnection

from consumer.fetch.body import send_get
from consumer.fetch.policy import FetchPolicy

#: Buckets named like this are S3 Express One Zone directory buckets (session authentication).
DIRECTORY_BUCKET_SUFFIX: Final = "--x-s3"
#: Origins (scheme, host, port) whose pools are kept; the least recently used is closed beyond.
MAX_POOLS: Final = 64
#: Buckets whose endpoints are kept (per region), and buckets whose region was learned from a
#: refusal; beyond it the least recently used endpoint, or the region learned longest ago, is
#: forgotten (a forgotten region is learned again from the bucket's next refusal).
MAX_BUCKETS: Final = 1024
#: Signing keys kept (one per secret, day and region); all are dropped when it is reached.
MAX_SIGNING_KEYS: Final = 64
#: The payload hash SigV4 signs for a GET: that of no bytes (what botocore's client sends too;
#: every S3-compatible server takes it, where some refuse ``UNSIGNED-PAYLOAD``).
EMPTY_PAYLOAD_SHA256: Final = hashlib.sha256(b"").hexdigest()
#: The key of the request botocore prepares (never sends) once per bucket: its endpoint.
_PROBE_KEY: Final = "endpoint-probe"
#: Bytes of an error answer read for its code, message and region.
ERROR_BODY_BYTES: Final = 8192
#: Error codes S3 answers a request signed for the wrong region with.
REGION_CODES: Final = frozenset(
    {
        "AuthorizationHeaderMalformed",
        "AuthorizationQueryParametersError",
        "PermanentRedirect",
        "IllegalLocationConstraintException",
    }
)
_XML_FIELD: Final = re.compile(rb"<(Code|Message|Region)>([^<]{0,1024})</\1>")


@dataclass(frozen=True, slots=True)
class SignedGet:
    """One signed GET: where it goes, what to send, and the region it was signed for."""

    scheme: str
    host: str  # to connect to
    port: int
    target: str  # path and query, percent-encoded
    headers: dict[str, str]  # the signed ones (Host among them) and the Authorization
    region: str


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What an S3 error answer says: its status, code, message and the bucket's region."""

    status: int
    code: str
    message: str
    region: str | None

    @property
    def names_another_region(self) -> bool:
        """Whether S3 refused the request for its region (and, when it says so, which one)."""
        return self.status in (301, 307) or self.code in REGION_CODES


@dataclass(frozen=True, slots=True)
class _Base:
    """Where a bucket's objects are, as botocore's endpoint rules put it (for one region)."""

    scheme: str
    host: str  # the Host header's value (the port only when not the scheme's default)
    connect_host: str
    port: int
    prefix: str  # the path before the key: ``/bucket/`` (path style) or ``/`` (virtual host)
    region: str


class Signer:
    """Signs GETs of S3 objects with SigV4 headers, as botocore's S3 signer does.

    Thread-safe. botocore supplies what decides a request: the endpoint (its endpoint rules run
    once per bucket and region, for a probe request that is never sent; the result is kept) and the
    credentials (the session's chain, refreshed by botocore before they expire). The signature
    itself (a SHA-256 of the canonical request and one HMAC with the day's signing key, which is
    kept) is computed here in about 0.03 ms, where botocore's request path spends over 1 ms. The
    tests compare both signatures for the same request and time.

    ``make_client(policy, session, region)`` builds botocore's client for a region (used only
    for the probes); ``clock()`` gives seconds since the epoch.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        session: Any,
        make_client: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._session = session
        self._make_client = make_client
        self._clock = clock
        self._clients: dict[str | None, Any] = {}
        self._regions: OrderedDict[str, str] = OrderedDict()
        self._bases: OrderedDict[tuple[str, str | None], _Base | None] = OrderedDict()
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._lock = threading.Lock()

    def sign(self, bucket: str, key: str, version_id: str | None) -> SignedGet | None:
        """A signed GET of the object; ``None`` where botocore's endpoint rules gave no URL this
        signer can extend (the request is then botocore's client's to send).

        Raises botocore's errors (no credentials, a failed credential provider).
        """
        base = self._base(bucket, self._regions.get(bucket))
        if base is None:
            return None
        credentials = self._credentials()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        headers = {
            "host": base.host,
            "x-amz-content-sha256": EMPTY_PAYLOAD_SHA256,
            "x-amz-date": stamp,
        }
        if self._policy.s3_requester_pays:
            headers["x-amz-request-payer"] = "requester"
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        names = sorted(headers)
        signed_headers = ";".join(names)
        path = base.prefix + quote(key, safe="/~")
        query = "" if version_id is None else f"versionId={_encode(version_id)}"
        canonical_headers = "".join(f"{name}:{headers[name]}\n" for name in names)
        request = (
            f"GET\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{EMPTY_PAYLOAD_SHA256}"
        )
        scope = f"{stamp[:8]}/{base.region}/s3/aws4_request"
        digest = hashlib.sha256(request.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}"
        signing_key = self._signing_key(credentials.secret_key, stamp[:8], base.region)
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        target = f"{path}?{query}" if query else path
        return SignedGet(base.scheme, base.connect_host, base.port, target, headers, base.region)

    def learn(self, bucket: str, region: str) -> None:
        """Sign ``bucket``'s later requests for ``region`` (kept for the last ``MAX_BUCKETS``
        buckets learned)."""
        with self._lock:
            self._regions[bucket] = region
            self._regions.move_to_end(bucket)
            if len(self._regions) > MAX_BUCKETS:
                self._regions.popitem(last=False)

    def _credentials(self) -> Any:
        from botocore.exceptions import NoCredentialsError

        credentials = self._session.get_credentials()
        if credentials is None:
            raise NoCredentialsError()
        frozen = credentials.get_frozen_credentials()  # refreshed first when about to expire
        if not frozen.access_key or not frozen.secret_key:
            raise NoCredentialsError()
        return frozen

    def _signing_key(self, secret: str, day: str, region: str) -> bytes:
        cache_key = (secret, day, region)
        key = self._keys.get(cache_key)
        if key is None:
            key = f"AWS4{secret}".encode()
            for part in (day, region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            with self._lock:
                if len(self._keys) >= MAX_SIGNING_KEYS:
                    self._keys.clear()
                self._keys[cache_key] = key
        return key

    def _base(self, bucket: str, region: str | None) -> _Base | None:
        cache_key = (bucket, region)
        with self._lock:
            if cache_key in self._bases:
                self._bases.move_to_end(cache_key)
                return self._bases[cache_key]
        base = self._discover(bucket, region)
        with self._lock:
            self._bases[cache_key] = base
            if len(self._bases) > MAX_BUCKETS:
                self._bases.popitem(last=False)
        return base

    def _discover(self, bucket: str, region: str | None) -> _Base | None:
        """The bucket's endpoint: the URL botocore's client would send a ``GetObject`` of a
        probe key to (captured before it is sent; nothing goes on the wire)."""
        client = self._client(region)
        try:
            client.get_object(Bucket=bucket, Key=_PROBE_KEY)
        except _Probe as probe:
            parts = urlsplit(probe.url)
        else:  # pragma: no cover - the probe handler always stops the call
            return None
        if not parts.path.endswith("/" + _PROBE_KEY) or parts.hostname is None:
            return None
        scheme = parts.scheme.lower()
        default_port = 443 if scheme == "https" else 80
        port = parts.port or default_port
        netloc = parts.netloc.lower().rpartition("@")[2]
        host = netloc if port != default_port else netloc.removesuffix(f":{default_port}")
        prefix = parts.path[: -len(_PROBE_KEY)]
        return _Base(scheme, host, parts.hostname, port, prefix, client.meta.region_name)

    def _client(self, region: str | None) -> Any:
        client = self._clients.get(region)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._make_client(self._policy, self._session, region)
                client.meta.events.register_first("before-send.s3.GetObject", _stop_at_send)
                self._clients[region] = client
            return client


class _Probe(Exception):
    """Carries the URL of a request botocore was about to send."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _stop_at_send(request: Any, **_: Any) -> None:
    """botocore's ``before-send`` hook on the probe clients: capture the URL, send nothing."""
    raise _Probe(str(request.url))


def _encode(text: str) -> str:
    """RFC 3986 percent-encoding, as SigV4's canonical query wants it."""
    return quote(text, safe="-_.~")


class SignedPools:
    """Keep-alive urllib3 pools for signed GETs, one per origin. Thread-safe.

    TLS is verified against the CA bundle botocore would use (``AWS_CA_BUNDLE`` or the config
    file's ``ca_bundle``, else botocore's default bundle). The endpoint is the operator's (a
    message names only a bucket and a key), so the SSRF guard does not apply here, as it does
    not to botocore's own client.
    """

    def __init__(self, policy: FetchPolicy, ca_bundle: str | None) -> None:
        from botocore.httpsession import get_cert_path

        self._policy = policy
        context = ssl.create_default_context(cafile=ca_bundle or get_cert_path(True))
        options = [*HTTPConnection.default_socket_options]
        options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        self._pools = urllib3.PoolManager(
            num_pools=MAX_POOLS,
            maxsize=policy.s3_max_pool_connections,
            block=False,
            retries=False,
            ssl_context=context,
            socket_options=options,
        )
        self._headers: dict[str, str] = {"User-Agent": policy.user_agent}
        self._proxied: dict[tuple[str, str, int], bool] = {}

    def proxied(self, get: SignedGet) -> bool:
        """Whether the environment's proxy settings cover ``get``'s origin (botocore's rule)."""
        origin = (get.scheme, get.host, get.port)
        known = self._proxied.get(origin)
        if known is None:
            from botocore.utils import get_environ_proxies

            url = f"{get.scheme}://{get.host}:{get.port}/"
            known = bool(get_environ_proxies(url).get(get.scheme))
            self._proxied[origin] = known
        return known

    def send(
        self, get: SignedGet, timeout: urllib3.Timeout, shown: str
    ) -> urllib3.BaseHTTPResponse:
        """The answer's status and headers (the body is left to read); see :func:`send_get`."""
        pool = self._pools.connection_from_host(get.host, port=get.port, scheme=get.scheme)
        headers = {**self._headers, **get.headers}
        return send_get(pool, get.target, headers=headers, timeout=timeout, shown=shown, what="s3 ")

    def close(self) -> None:
        """Close every pooled connection."""
        self._pools.clear()


def read_error(resp: urllib3.BaseHTTPResponse) -> ErrorAnswer:
    """The code, message and region of an S3 error answer (its first bytes, XML or none)."""
    try:
        body = resp.read(ERROR_BODY_BYTES)
    except (urllib3.exceptions.HTTPError, OSError):
        body = b""
    fields = {m.group(1).decode(): m.group(2) for m in _XML_FIELD.finditer(body)}

    def field(name: str) -> str:
        return html.unescape(fields.get(name, b"").decode("utf-8", "replace")).strip()

    region = resp.headers.get("x-amz-bucket-region") or field("Region") or None
    return ErrorAnswer(resp.status, field("Code"), field("Message"), region)

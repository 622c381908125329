"""http(s) downloads: bounded in bytes and time, retried when the failure may pass.

One :class:`httpx.Client` is shared by every thread (httpx's pool is thread-safe). Redirects are
never followed by httpx itself: each hop is checked here (scheme, host allow-list) and dialed
through the guarded transport (address check), or refused. Cookies are never stored, environment
proxies and ``.netrc`` are ignored, and only the identity encoding is asked for; a gzip or deflate
body sent anyway is inflated under the same byte limit.
"""

from __future__ import annotations

import email.utils
import math
import ssl
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Final
from urllib.parse import urlsplit

import httpx

from consumer.backoff import Backoff
from consumer.fetch.addresses import AddressGuard, parse_numeric_host
from consumer.fetch.exceptions import (
    FetchError,
    FetchFailed,
    FetchTimeout,
    ForbiddenAddress,
    HttpError,
    NotFound,
    RedirectRefused,
    ServerError,
    TooLarge,
    UnsupportedScheme,
    UrlExpired,
)
from consumer.fetch.policy import FetchPolicy
from consumer.fetch.transport import GuardedTransport
from schemas.redaction import redact_uri

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_HTTP_SCHEMES: Final = frozenset({"http", "https"})


class _Transient(Exception):
    """A failure worth another attempt; ``error`` is what to raise once attempts run out."""

    def __init__(self, error: FetchError, retry_after_s: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after_s = retry_after_s


class HttpDownloader:
    """Downloads http(s) URIs under a :class:`FetchPolicy`. Thread-safe."""

    def __init__(
        self,
        policy: FetchPolicy,
        guard: AddressGuard,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._sleep = sleep
        self._on_retry = on_retry
        if policy.ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(policy.ca_file))
        else:
            ssl_context = httpx.create_ssl_context(trust_env=False)
        transport = GuardedTransport(guard, ssl_context=ssl_context, limits=httpx.Limits())
        self._client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            headers={
                "User-Agent": policy.user_agent,
                "Accept": "image/*, */*;q=0.5",
                "Accept-Encoding": "identity",
            },
        )
        self._allowed_hosts = tuple(h.lower().rstrip(".") for h in policy.allowed_hosts)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def fetch(self, uri: str) -> bytes:
        """The body of ``uri``; raises a :class:`FetchError` once retries are spent."""
        policy = self._policy
        shown = redact_uri(uri)
        try:
            url = httpx.URL(uri)
        except (httpx.InvalidURL, TypeError, ValueError):
            if _has_numeric_host(uri):  # e.g. "0177.0.0.1", which httpx will not parse
                raise ForbiddenAddress(f"ambiguous numeric host in {shown}") from None
            raise FetchFailed(f"invalid URL {shown}") from None
        deadline = time.monotonic() + policy.total_timeout_s
        attempt = 0
        while True:
            try:
                return self._fetch_once(url, deadline)
            except _Transient as transient:
                attempt += 1
                error = transient.error
                delay = self._backoff_s(attempt, transient.retry_after_s)
                if attempt > policy.retries or time.monotonic() + delay >= deadline:
                    tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
                    raise type(error)(f"{error.message} (after {tries})") from None
                if self._on_retry is not None:
                    self._on_retry()
                self._sleep(delay)

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with jitter (half to full step), at least a capped Retry-After."""
        delay = Backoff(initial=self._policy.backoff_s, cap=math.inf).jittered(attempt)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self._policy.max_retry_after_s))
        return delay

    def _check_url(self, url: httpx.URL, original: str) -> None:
        scheme = url.scheme
        if scheme not in _HTTP_SCHEMES or scheme not in self._policy.allowed_schemes:
            raise UnsupportedScheme(f"scheme {scheme!r} is not allowed: {redact_uri(original)}")
        if not url.host:
            raise FetchFailed(f"URL without a host: {redact_uri(original)}")
        if self._allowed_hosts and not self._host_allowed(url.raw_host.decode("ascii")):
            raise ForbiddenAddress(f"host {url.host!r} is not in the allowed hosts")

    def _host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self._allowed_hosts:
            if entry.startswith(("*.", ".")):
                if host.endswith("." + entry.lstrip("*.")):
                    return True
            elif host == entry:
                return True
        return False

    def _timeout(self, deadline: float) -> httpx.Timeout:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchTimeout(f"total timeout of {self._policy.total_timeout_s:g} s passed")
        connect = min(self._policy.connect_timeout_s, remaining)
        read = min(self._policy.read_timeout_s, remaining)
        return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)

    def _fetch_once(self, url: httpx.URL, deadline: float) -> bytes:
        """One attempt: the request and its redirects. Raises ``_Transient`` or FetchError."""
        policy = self._policy
        current = url
        for _hop in range(policy.max_redirects + 1):
            shown = redact_uri(str(current))
            self._check_url(current, str(current))
            try:
                with self._client.stream("GET", current, timeout=self._timeout(deadline)) as resp:
                    status = resp.status_code
                    if status in _REDIRECTS:
                        current = self._redirect_target(resp, current, shown)
                        continue
                    if 200 <= status < 300:
                        return self._read_body(resp, deadline, shown)
                    if status in (404, 410):
                        raise NotFound(f"HTTP {status} for {shown}")
                    if status in (400, 403) and _presigned_url_expired(current, resp):
                        raise UrlExpired(f"HTTP {status} for {shown}: the presigned URL expired")
                    if status == 429 or status >= 500:
                        raise _Transient(
                            ServerError(f"HTTP {status} for {shown}"), _retry_after_s(resp)
                        )
                    raise HttpError(f"HTTP {status} for {shown}")
            except httpx.TimeoutException as exc:
                raise _Transient(FetchTimeout(f"{_describe(exc)} for {shown}")) from None
            except httpx.TransportError as exc:
                if _caused_by(exc, ssl.SSLCertVerificationError):
                    raise FetchFailed(f"TLS certificate verification failed for {shown}") from None
                raise _Transient(FetchFailed(f"{_describe(exc)} for {shown}")) from None
        raise RedirectRefused(
            f"more than {policy.max_redirects} redirects from {redact_uri(str(url))}"
        )

    def _redirect_target(self, resp: httpx.Response, current: httpx.URL, shown: str) -> httpx.URL:
        location = resp.headers.get("location")
        if not location:
            raise HttpError(f"HTTP {resp.status_code} without a Location for {shown}")
        try:
            target = current.join(location)
        except (httpx.InvalidURL, ValueError):
            raise RedirectRefused(
                f"HTTP {resp.status_code} to an invalid URL from {shown}"
            ) from None
        target_shown = redact_uri(str(target))
        if not self._policy.follow_redirects:
            raise RedirectRefused(
                f"HTTP {resp.status_code} redirect from {shown} to {target_shown} refused "
                "(redirects are not followed)"
            )
        if target.scheme not in _HTTP_SCHEMES or target.scheme not in self._policy.allowed_schemes:
            raise RedirectRefused(f"redirect from {shown} to {target_shown}: scheme not allowed")
        return target

    def _read_body(self, resp: httpx.Response, deadline: float, shown: str) -> bytes:
        limit = self._policy.max_bytes
        declared = resp.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise TooLarge(f"{shown} declares {int(declared)} bytes, more than the {limit} allowed")
        inflater = _Inflater.for_encoding(resp.headers.get("content-encoding"), shown)
        # chunks joined once at the end: one copy of the body, not a growing buffer and a copy
        chunks: list[bytes] = []
        size = 0

        def take(data: bytes) -> None:
            nonlocal size
            if size + len(data) > limit:
                raise TooLarge(f"{shown} is larger than the {limit} bytes allowed")
            chunks.append(data)
            size += len(data)

        for chunk in resp.iter_raw():
            if time.monotonic() > deadline:
                raise FetchTimeout(
                    f"total timeout of {self._policy.total_timeout_s:g} s passed while "
                    f"downloading {shown}"
                )
            if inflater is None:
                take(chunk)
            else:
                inflater.feed(chunk, take, limit - size)
        if inflater is not None:
            inflater.finish(take)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Inflater:
    """gzip/deflate decoding whose output per step never exceeds what is still allowed."""

    def __init__(self, wbits: int, shown: str) -> None:
        self._decompressor = zlib.decompressobj(wbits)
        self._shown = shown

    @classmethod
    def for_encoding(cls, encoding: str | None, shown: str) -> _Inflater | None:
        codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if not codings:
            return None
        if codings in (["gzip"], ["x-gzip"]):
            return cls(16 + zlib.MAX_WBITS, shown)
        if codings == ["deflate"]:
            return cls(zlib.MAX_WBITS, shown)
        raise FetchFailed(f"unsupported Content-Encoding {encoding!r} for {shown}")

    def feed(self, chunk: bytes, take: Callable[[bytes], None], room: int) -> None:
        data = chunk
        try:
            while data:
                out = self._decompressor.decompress(data, max(room, 0) + 1)
                take(out)
                room -= len(out)
                data = self._decompressor.unconsumed_tail
        except zlib.error:
            raise FetchFailed(f"corrupt compressed body for {self._shown}") from None

    def finish(self, take: Callable[[bytes], None]) -> None:
        try:
            take(self._decompressor.flush())
        except zlib.error:
            raise FetchFailed(f"corrupt compressed body for {self._shown}") from None


def _describe(exc: httpx.HTTPError) -> str:
    """The kind of transport failure, without text that could echo the URL."""
    names = {
        httpx.ConnectTimeout: "connect timeout",
        httpx.ReadTimeout: "read timeout",
        httpx.WriteTimeout: "write timeout",
        httpx.PoolTimeout: "timed out waiting for a connection",
        httpx.ConnectError: "cannot connect",
        httpx.ReadError: "read error",
        httpx.WriteError: "write error",
        httpx.RemoteProtocolError: "protocol error from the server",
    }
    for kind, text in names.items():
        if isinstance(exc, kind):
            detail = str(exc).split("\n", 1)[0][:120]
            return f"{text} ({detail})" if detail and "://" not in detail else text
    return type(exc).__name__


def _has_numeric_host(uri: str) -> bool:
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return False
    try:
        return host is not None and parse_numeric_host(host) is not None
    except ForbiddenAddress:
        return True


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in ``exc``'s chain of causes."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


#: Bytes of an error body read to find S3's "Request has expired" answer.
_ERROR_BODY_BYTES: Final = 4096


def _presigned_url_expired(url: httpx.URL, resp: httpx.Response) -> bool:
    """Whether a refused presigned URL has expired: by its own signed dates, or as the server says.

    SigV4 (``X-Amz-Date`` + ``X-Amz-Expires``, also GCS's ``X-Goog-*``) and SigV2 (``Expires``
    as epoch seconds) are read from the query; when they do not show it (or this clock is
    behind the server's), a short error body saying ``Request has expired`` (S3, MinIO) decides.
    """
    params = {k.lower(): v for k, v in url.params.multi_items()}
    now = time.time()
    for prefix in ("x-amz-", "x-goog-"):
        signed, lifetime = params.get(prefix + "date"), params.get(prefix + "expires")
        if signed and lifetime and lifetime.isdigit():
            try:
                start = datetime.strptime(signed, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            except ValueError:
                break
            if now >= start.timestamp() + int(lifetime):
                return True
    expires = params.get("expires")
    signed_v2 = "signature" in params or "awsaccesskeyid" in params
    if expires and expires.isdigit() and signed_v2 and now >= int(expires):
        return True
    if not any(k.startswith(("x-amz-", "x-goog-")) or k == "signature" for k in params):
        return False
    body = bytearray()
    try:
        for chunk in resp.iter_raw():
            body.extend(chunk)
            if len(body) >= _ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        return False
    return b"Request has expired" in body


def _retry_after_s(resp: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or HTTP date), or ``None``."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())

"""http(s) downloads: bounded in bytes and time, retried when the failure may pass.

urllib3 connection pools (one per host, kept alive, shared by every thread) dial through the
SSRF guard (:mod:`consumer.fetch.transport`). Redirects are never followed by urllib3 itself:
each hop is checked here (scheme, host allow-list) and dialed through the guard (address check),
or refused. No cookies are stored, no proxy or ``.netrc`` is read, and only the identity
encoding is asked for; a gzip or deflate body sent anyway is inflated under the same byte limit.
A body of declared length is read in one call (:mod:`consumer.fetch.body`).
"""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl, unquote, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, LocationParseError
from urllib3.util import Url, make_headers, parse_url

from consumer.fetch.addresses import AddressGuard, parse_numeric_host
from consumer.fetch.body import (
    Attempts,
    BodyReader,
    Inflater,
    Transient,
    finish,
    request_timeout,
    send_get,
)
from consumer.fetch.exceptions import (
    FetchFailed,
    ForbiddenAddress,
    HttpError,
    NotFound,
    RedirectRefused,
    ServerError,
    UnsupportedScheme,
    UrlExpired,
)
from consumer.fetch.policy import FetchPolicy
from consumer.fetch.transport import GuardedPools
from consumer.fetch.watchdog import Watchdog
from schemas.redaction import redact_uri

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_HTTP_SCHEMES: Final = frozenset({"http", "https"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class HttpDownloader:
    """Downloads http(s) URIs under a :class:`FetchPolicy`. Thread-safe.

    ``watchdog`` cuts bodies still downloading at their total deadline (shared with the other
    downloaders of one fetcher).
    """

    def __init__(
        self,
        policy: FetchPolicy,
        guard: AddressGuard,
        *,
        watchdog: Watchdog,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._attempts = Attempts(policy, sleep=sleep, on_retry=on_retry)
        self._bodies = BodyReader(policy, watchdog)
        if policy.ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(policy.ca_file))
        else:
            ssl_context = ssl.create_default_context()
        self._pools = GuardedPools(guard, ssl_context=ssl_context)
        self._headers = {
            "User-Agent": policy.user_agent,
            "Accept": "image/*, */*;q=0.5",
            "Accept-Encoding": "identity",
        }
        self._allowed_hosts = tuple(h.lower().rstrip(".") for h in policy.allowed_hosts)

    def close(self) -> None:
        """Close the pooled connections."""
        self._pools.close()

    def fetch(self, uri: str) -> bytes:
        """The body of ``uri``; raises a :class:`FetchError` once retries are spent."""
        url = _parse(uri)
        return self._attempts.run(lambda deadline: self._fetch_once(url, deadline))

    def _check_url(self, url: Url, original: str) -> None:
        scheme = url.scheme or ""
        if scheme not in _HTTP_SCHEMES or scheme not in self._policy.allowed_schemes:
            raise UnsupportedScheme(f"scheme {scheme!r} is not allowed: {redact_uri(original)}")
        if not url.host:
            raise FetchFailed(f"URL without a host: {redact_uri(original)}")
        if self._allowed_hosts and not self._host_allowed(url.host):
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

    def _fetch_once(self, url: Url, deadline: float) -> bytes:
        """One attempt: the request and its redirects. Raises ``Transient`` or FetchError."""
        policy = self._policy
        current = url
        for _hop in range(policy.max_redirects + 1):
            shown = redact_uri(current.url)
            self._check_url(current, current.url)
            resp = self._request(current, deadline, shown)
            try:
                status = resp.status
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
                    raise Transient(ServerError(f"HTTP {status} for {shown}"), _retry_after_s(resp))
                raise HttpError(f"HTTP {status} for {shown}")
            finally:
                finish(resp)
        raise RedirectRefused(
            f"more than {policy.max_redirects} redirects from {redact_uri(url.url)}"
        )

    def _request(self, url: Url, deadline: float, shown: str) -> urllib3.BaseHTTPResponse:
        """The response's status and headers; the body is left to read."""
        scheme = url.scheme or "http"
        host = url.host or ""
        pool = self._pools.pool(scheme, host, url.port or _DEFAULT_PORTS[scheme])
        headers = dict(self._headers)
        if url.auth:
            headers.update(make_headers(basic_auth=unquote(url.auth)))
        timeout = request_timeout(self._policy, deadline)
        return send_get(pool, url.request_uri, headers=headers, timeout=timeout, shown=shown)

    def _redirect_target(self, resp: urllib3.BaseHTTPResponse, current: Url, shown: str) -> Url:
        location = resp.headers.get("location")
        if not location:
            raise HttpError(f"HTTP {resp.status} without a Location for {shown}")
        try:
            target = parse_url(urljoin(current.url, location.strip()))
        except (LocationParseError, ValueError):
            raise RedirectRefused(f"HTTP {resp.status} to an invalid URL from {shown}") from None
        target_shown = redact_uri(target.url)
        if not self._policy.follow_redirects:
            raise RedirectRefused(
                f"HTTP {resp.status} redirect from {shown} to {target_shown} refused "
                "(redirects are not followed)"
            )
        if target.scheme not in _HTTP_SCHEMES or target.scheme not in self._policy.allowed_schemes:
            raise RedirectRefused(f"redirect from {shown} to {target_shown}: scheme not allowed")
        return target

    def _read_body(self, resp: urllib3.BaseHTTPResponse, deadline: float, shown: str) -> bytes:
        inflater = Inflater.for_encoding(resp.headers.get("content-encoding"), shown)
        return self._bodies.read_response(resp, deadline=deadline, shown=shown, inflater=inflater)


def _parse(uri: str) -> Url:
    """``uri`` parsed (scheme and host lower-cased, invalid characters percent-encoded)."""
    shown = redact_uri(uri)
    try:
        return parse_url(uri)  # the fragment stays in the URL, never in the request
    except (LocationParseError, ValueError, TypeError):
        if _has_numeric_host(uri):  # e.g. "0177.0.0.1" in a form the parser refuses
            raise ForbiddenAddress(f"ambiguous numeric host in {shown}") from None
        raise FetchFailed(f"invalid URL {shown}") from None


def _has_numeric_host(uri: str) -> bool:
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return False
    try:
        return host is not None and parse_numeric_host(host) is not None
    except ForbiddenAddress:
        return True


#: Bytes of an error body read to find S3's "Request has expired" answer.
_ERROR_BODY_BYTES: Final = 4096


def _presigned_url_expired(url: Url, resp: urllib3.BaseHTTPResponse) -> bool:
    """Whether a refused presigned URL has expired: by its own signed dates, or as the server says.

    SigV4 (``X-Amz-Date`` + ``X-Amz-Expires``, also GCS's ``X-Goog-*``) and SigV2 (``Expires``
    as epoch seconds) are read from the query; when they do not show it (or this clock is
    behind the server's), a short error body saying ``Request has expired`` (S3, MinIO) decides.
    """
    params = {k.lower(): v for k, v in parse_qsl(url.query or "", keep_blank_values=True)}
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
    try:
        body = resp.read(_ERROR_BODY_BYTES)
    except (HTTPError, OSError):
        return False
    return b"Request has expired" in body


def _retry_after_s(resp: urllib3.BaseHTTPResponse) -> float | None:
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

"""What the http(s) and s3 downloads share: the retry loop, sending a GET, reading a body.

Both send on urllib3 pools (:func:`send_get` turns urllib3's failures into fetch errors, the
ones that may pass marked :class:`Transient`), and a body is read the same way: in one
``read(n)`` of its declared length, bounded in bytes before the first byte is read, and in time
by the :class:`~consumer.fetch.watchdog.Watchdog` (the read is one call, so the total deadline is
enforced by cutting the socket, not by checks between reads). A body of unknown length, or one
to inflate, is read in chunks under the same limits.
"""

from __future__ import annotations

import math
import ssl
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import urllib3
import urllib3.exceptions
from urllib3.connectionpool import HTTPConnectionPool

from consumer.backoff import Backoff
from consumer.fetch.exceptions import FetchError, FetchFailed, FetchTimeout, TooLarge
from consumer.fetch.policy import FetchPolicy
from consumer.fetch.watchdog import Watchdog

#: Bytes per read when the length is not declared or the body is inflated.
_CHUNK_BYTES: Final = 256 * 1024


class Transient(Exception):
    """A failure worth another attempt; ``error`` is what to raise once attempts run out."""

    def __init__(self, error: FetchError, retry_after_s: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after_s = retry_after_s


class Attempts:
    """Runs one fetch's attempts inside its total deadline, with jittered exponential backoff.

    ``attempt(deadline)`` raises :class:`Transient` for what may pass; a ``Retry-After`` it
    carries is honoured up to ``max_retry_after_s``. ``on_retry()`` runs before each retry (the
    consumer counts them); ``sleep`` waits between attempts.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._sleep = sleep
        self._on_retry = on_retry

    def run(self, attempt: Callable[[float], bytes]) -> bytes:
        """``attempt``'s bytes; the last error, with its number of attempts, once they run out."""
        policy = self._policy
        deadline = time.monotonic() + policy.total_timeout_s
        tries = 0
        while True:
            try:
                return attempt(deadline)
            except Transient as transient:
                tries += 1
                error = transient.error
                delay = self._backoff_s(tries, transient.retry_after_s)
                if tries > policy.retries or time.monotonic() + delay >= deadline:
                    counted = "1 attempt" if tries == 1 else f"{tries} attempts"
                    raise type(error)(f"{error.message} (after {counted})") from None
                if self._on_retry is not None:
                    self._on_retry()
                self._sleep(delay)

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with jitter (half to full step), at least a capped Retry-After."""
        delay = Backoff(initial=self._policy.backoff_s, cap=math.inf).jittered(attempt)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self._policy.max_retry_after_s))
        return delay


def request_timeout(policy: FetchPolicy, deadline: float) -> urllib3.Timeout:
    """Connect and read timeouts for one request, neither past ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchTimeout(f"total timeout of {policy.total_timeout_s:g} s passed")
    connect = min(policy.connect_timeout_s, remaining)
    read = min(policy.read_timeout_s, remaining)
    return urllib3.Timeout(connect=connect, read=read)


def send_get(
    pool: HTTPConnectionPool,
    target: str,
    *,
    headers: Mapping[str, str],
    timeout: urllib3.Timeout,
    shown: str,
    what: str = "",
) -> urllib3.BaseHTTPResponse:
    """One GET of ``target`` (a path and query, sent as written) on ``pool``: status and headers.

    The body is left to read. No redirect is followed and nothing is retried here. Raises
    :class:`Transient` for what may pass (cannot connect, timeouts, a dropped connection) and
    :class:`FetchFailed` for a TLS certificate that does not verify; ``what`` prefixes the
    messages (``"s3 "``).
    """
    try:
        return pool.urlopen(
            "GET",
            target,
            headers=dict(headers),
            timeout=timeout,
            retries=False,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
        )
    except urllib3.exceptions.NewConnectionError as exc:  # first: it is a ConnectTimeoutError too
        raise Transient(FetchFailed(f"{what}cannot connect ({_reason(exc)}) for {shown}")) from None
    except urllib3.exceptions.ConnectTimeoutError:
        raise Transient(FetchTimeout(f"{what}connect timeout for {shown}")) from None
    except urllib3.exceptions.ReadTimeoutError:
        raise Transient(FetchTimeout(f"{what}read timeout for {shown}")) from None
    except urllib3.exceptions.SSLError as exc:
        if caused_by(exc, ssl.SSLCertVerificationError):
            raise FetchFailed(f"{what}TLS certificate verification failed for {shown}") from None
        raise Transient(FetchFailed(f"{what}TLS error for {shown}")) from None
    except urllib3.exceptions.ProtocolError:
        raise Transient(FetchFailed(f"{what}protocol error from the server for {shown}")) from None
    except urllib3.exceptions.HTTPError as exc:
        raise Transient(FetchFailed(f"{what}{type(exc).__name__} for {shown}")) from None


def finish(resp: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back: kept alive when its body was read, closed otherwise."""
    if resp.connection is not None:
        resp.close()
    resp.release_conn()


def _reason(exc: urllib3.exceptions.NewConnectionError) -> str:
    """What urllib3's connection error says, without the connection object it names."""
    text = str(exc)
    return text.split(": ", 1)[1][:120] if ": " in text else "cannot connect"


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in ``exc``'s chain of causes."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Body(Protocol):
    """The part of a urllib3 response a body is read through."""

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes: ...

    def shutdown(self) -> None: ...


class Inflater:
    """gzip/deflate decoding whose output per step never exceeds what is still allowed."""

    def __init__(self, wbits: int, shown: str) -> None:
        self._decompressor = zlib.decompressobj(wbits)
        self._shown = shown

    @classmethod
    def for_encoding(cls, encoding: str | None, shown: str) -> Inflater | None:
        """The inflater a ``Content-Encoding`` needs; ``None`` for identity."""
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


class BodyReader:
    """Reads whole bodies under the policy's byte limit and total deadline. Thread-safe."""

    def __init__(self, policy: FetchPolicy, watchdog: Watchdog, *, what: str = "") -> None:
        self._limit = policy.max_bytes
        self._total_s = policy.total_timeout_s
        self._watchdog = watchdog
        self._what = what  # "s3 " or "": how read errors are named

    def read(
        self,
        body: Body,
        *,
        declared: int | None,
        deadline: float,
        shown: str,
        inflater: Inflater | None = None,
    ) -> bytes:
        """The body's bytes (inflated when ``inflater`` is given).

        Raises :class:`TooLarge` for a declared length or a body over the limit,
        :class:`FetchTimeout` once the total deadline cut the read, and :class:`Transient` for a
        read timeout, a dropped connection or a body shorter than it declared.
        """
        limit = self._limit
        if declared is not None and declared > limit:
            raise TooLarge(f"{shown} declares {declared} bytes, more than the {limit} allowed")
        if time.monotonic() >= deadline:
            raise self._timeout(shown)
        whole = declared if inflater is None else None  # the length of a one-call read
        alarm = self._watchdog.arm(deadline, body.shutdown)
        cut = False
        try:
            try:
                if whole is not None:
                    data = body.read(whole)
                else:
                    data = self._read_chunks(body, shown, inflater)
            finally:
                cut = alarm.cancel()
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if cut:
                raise self._timeout(shown) from None
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
                raise Transient(FetchTimeout(f"{self._what}read timeout for {shown}")) from None
            raise Transient(
                FetchFailed(f"{self._what}read error ({type(exc).__name__}) for {shown}")
            ) from None
        if cut:
            raise self._timeout(shown)
        if whole is not None and len(data) != whole:
            raise Transient(
                FetchFailed(f"{self._what}body of {shown} ended after {len(data)} of {whole} bytes")
            )
        return data

    def read_response(
        self,
        resp: urllib3.BaseHTTPResponse,
        *,
        deadline: float,
        shown: str,
        inflater: Inflater | None = None,
    ) -> bytes:
        """A urllib3 response's whole body (:meth:`read` at its ``Content-Length``, when it
        declares one); the connection then goes back to its pool."""
        declared = resp.headers.get("content-length")
        length = int(declared) if declared is not None and declared.strip().isdigit() else None
        data = self.read(resp, declared=length, deadline=deadline, shown=shown, inflater=inflater)
        resp.release_conn()  # read to its end: the connection goes back to the pool
        return data

    def _timeout(self, shown: str) -> FetchTimeout:
        return FetchTimeout(
            f"total timeout of {self._total_s:g} s passed while downloading {shown}"
        )

    def _read_chunks(self, body: Body, shown: str, inflater: Inflater | None) -> bytes:
        limit = self._limit
        # chunks joined once at the end: one copy of the body, not a growing buffer and a copy
        chunks: list[bytes] = []
        size = 0

        def take(data: bytes) -> None:
            nonlocal size
            if size + len(data) > limit:
                raise TooLarge(f"{shown} is larger than the {limit} bytes allowed")
            chunks.append(data)
            size += len(data)

        while True:
            chunk = body.read(_CHUNK_BYTES if inflater else min(_CHUNK_BYTES, limit + 1 - size))
            if not chunk:
                break
            if inflater is None:
                take(chunk)
            else:
                inflater.feed(chunk, take, limit - size)
        if inflater is not None:
            inflater.finish(take)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

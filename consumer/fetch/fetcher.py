"""The entry point: a URI in, bytes or an RGB8 array out, under one :class:`FetchPolicy`."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from urllib.parse import urlsplit

import numpy as np

from consumer.fetch.addresses import AddressGuard, Resolver
from consumer.fetch.decode import DEFAULT_MIN_SHORTER_PX, decode_image
from consumer.fetch.exceptions import FetchFailed, UnsupportedScheme
from consumer.fetch.files import FileReader
from consumer.fetch.http import HttpDownloader
from consumer.fetch.policy import KNOWN_SCHEMES, FetchPolicy
from consumer.fetch.s3 import S3Downloader
from consumer.fetch.watchdog import Watchdog
from schemas.redaction import redact_uri


class Fetcher:
    """Fetches http(s), file and s3 URIs safely. Thread-safe: share one across the I/O pool.

    ``resolver(host, port)`` replaces the system resolver (tests stub it); ``sleep`` replaces
    :func:`time.sleep` between retries; ``on_retry()`` is called before each retry of an s3 or
    http(s) fetch (the consumer counts them).
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self._files = FileReader(policy)
        self._watchdog = Watchdog()
        self._http = HttpDownloader(
            policy,
            AddressGuard(policy, resolver),
            watchdog=self._watchdog,
            sleep=sleep,
            on_retry=on_retry,
        )
        self._s3 = S3Downloader(policy, watchdog=self._watchdog, sleep=sleep, on_retry=on_retry)

    def fetch(self, uri: str) -> bytes:
        """The bytes ``uri`` names. Raises a :class:`~consumer.fetch.exceptions.FetchError`."""
        try:
            scheme = urlsplit(uri).scheme.lower()
        except ValueError:
            raise FetchFailed(f"invalid URI {redact_uri(uri)}") from None
        if scheme not in KNOWN_SCHEMES or scheme not in self.policy.allowed_schemes:
            allowed = ", ".join(sorted(self.policy.allowed_schemes)) or "none"
            shown = f"{scheme!r}" if scheme else "no scheme"
            raise UnsupportedScheme(f"URI scheme {shown} is not allowed (allowed: {allowed})")
        if scheme == "file":
            return self._files.fetch(uri)
        if scheme == "s3":
            return self._s3.fetch(uri)
        return self._http.fetch(uri)

    def close(self) -> None:
        """Release pooled connections. The fetcher must not be used afterwards."""
        self._http.close()
        self._s3.close()
        self._watchdog.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def load_image(
    fetcher: Fetcher, uri: str, *, min_shorter_px: int = DEFAULT_MIN_SHORTER_PX
) -> np.ndarray:
    """Fetch ``uri`` and decode it to ``HxWx3`` ``uint8`` RGB under the fetcher's pixel limit."""
    data = fetcher.fetch(uri)
    return decode_image(data, min_shorter_px=min_shorter_px, max_pixels=fetcher.policy.max_pixels)

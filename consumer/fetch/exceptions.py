"""Exceptions of the ``consumer.fetch`` package.

Every :class:`FetchError` that leaves the package is permanent for its message: the caller
dead-letters it and never retries it. Transient failures (timeouts, 5xx, 429) are retried inside
:meth:`consumer.fetch.Fetcher.fetch` and only surface here once the retries are spent.

Messages never contain a URI's query string or userinfo (presigned URLs are secrets): they are
built from :func:`schemas.redaction.redact_uri`.
"""

from __future__ import annotations

from typing import ClassVar

from schemas.deadletter import ErrorType, Stage


class FetchError(Exception):
    """A URI that cannot be turned into an image: dead-letter the message, do not retry it.

    ``error_type`` and ``stage`` are the dead-letter reason and stage; ``message`` is safe to log
    and to put in a dead-letter header.
    """

    error_type: ClassVar[ErrorType] = ErrorType.FETCH_FAILED
    stage: ClassVar[Stage] = Stage.FETCH

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[FetchError], tuple[str]]:
        return (type(self), (self.message,))


class UnsupportedScheme(FetchError):
    """The URI's scheme is not allowed by the policy (or not one this package speaks)."""

    error_type = ErrorType.UNSUPPORTED_SCHEME


class ForbiddenAddress(FetchError):
    """SSRF guard: the host, or the address it resolves to, is not allowed."""

    error_type = ErrorType.FORBIDDEN_ADDRESS


class ForbiddenPath(FetchError):
    """A file:// URI outside the file roots, with traversal, a symlink escape or a special file."""

    error_type = ErrorType.FORBIDDEN_PATH


class RedirectRefused(FetchError):
    """A redirect the policy does not follow: redirects off, too many, or to a refused URI."""

    error_type = ErrorType.REDIRECT_REFUSED


class NotFound(FetchError):
    """HTTP 404/410, a missing file, or a missing s3 bucket, key or version."""

    error_type = ErrorType.NOT_FOUND


class AccessDenied(FetchError):
    """s3: the credentials may not read the object (403), or they are invalid or expired."""

    error_type = ErrorType.ACCESS_DENIED


class ForbiddenBucket(FetchError):
    """s3: the bucket is not in the policy's allowed buckets."""

    error_type = ErrorType.FORBIDDEN_BUCKET


class UrlExpired(FetchError):
    """A presigned http(s) URL whose validity has passed (a 403 that was ``http_error``)."""

    error_type = ErrorType.URL_EXPIRED


class HttpError(FetchError):
    """Any other HTTP status that is not a success (4xx, unexpected 3xx)."""

    error_type = ErrorType.HTTP_ERROR


class ServerError(FetchError):
    """HTTP 5xx or 429 still answered after every retry."""

    error_type = ErrorType.SERVER_ERROR


class FetchTimeout(FetchError):
    """Connect/read timeouts after every retry, or the total deadline of one fetch passed."""

    error_type = ErrorType.FETCH_TIMEOUT


class FetchFailed(FetchError):
    """Any other transport or I/O failure (after retries where retrying makes sense)."""

    error_type = ErrorType.FETCH_FAILED


class TooLarge(FetchError):
    """The body is larger than the policy's byte limit."""

    error_type = ErrorType.TOO_LARGE


class TooManyPixels(FetchError):
    """The image header announces more pixels than allowed (decompression bomb guard)."""

    error_type = ErrorType.TOO_MANY_PIXELS
    stage = Stage.DECODE


class NotAnImage(FetchError):
    """Bytes of no supported image format."""

    error_type = ErrorType.NOT_AN_IMAGE
    stage = Stage.DECODE


class CorruptImage(FetchError):
    """A supported format whose data fails to decode (truncated, corrupt, unsupported variant)."""

    error_type = ErrorType.CORRUPT_IMAGE
    stage = Stage.DECODE

"""Turning a URI into an RGB8 image safely: schemes, SSRF guard, size and pixel limits, decode.

``Fetcher(policy).fetch(uri)`` returns bytes (``http``, ``https``, ``file`` and ``s3`` URIs);
:func:`decode_image` turns bytes into an ``HxWx3`` ``uint8`` array; :func:`load_image` does
both. Every failure is a :class:`~consumer.fetch.exceptions.FetchError` carrying its
dead-letter ``error_type`` and ``stage``; transient network failures are retried inside
``fetch`` before one is raised.
"""

from consumer.fetch.decode import decode_image, sniff_format
from consumer.fetch.exceptions import (
    AccessDenied,
    CorruptImage,
    FetchError,
    FetchFailed,
    FetchTimeout,
    ForbiddenAddress,
    ForbiddenBucket,
    ForbiddenPath,
    HttpError,
    NotAnImage,
    NotFound,
    RedirectRefused,
    ServerError,
    TooLarge,
    TooManyPixels,
    UnsupportedScheme,
    UrlExpired,
)
from consumer.fetch.fetcher import Fetcher, load_image
from consumer.fetch.policy import FetchPolicy

__all__ = [
    "AccessDenied",
    "CorruptImage",
    "FetchError",
    "FetchFailed",
    "FetchPolicy",
    "FetchTimeout",
    "Fetcher",
    "ForbiddenAddress",
    "ForbiddenBucket",
    "ForbiddenPath",
    "HttpError",
    "NotAnImage",
    "NotFound",
    "RedirectRefused",
    "ServerError",
    "TooLarge",
    "TooManyPixels",
    "UnsupportedScheme",
    "UrlExpired",
    "decode_image",
    "load_image",
    "sniff_format",
]

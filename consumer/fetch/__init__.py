"""Turning a URI into an RGB8 image safely: schemes, SSRF guard, size and pixel limits, decode.

``Fetcher(policy).fetch(uri)`` returns bytes; :func:`decode_image` turns bytes into an ``HxWx3``
``uint8`` array; :func:`load_image` does both. Every failure is a
:class:`~consumer.fetch.exceptions.FetchError` carrying its dead-letter ``error_type`` and
``stage``; transient network failures are retried inside ``fetch`` before one is raised.
"""

from consumer.fetch.decode import decode_image, sniff_format
from consumer.fetch.exceptions import (
    CorruptImage,
    FetchError,
    FetchFailed,
    FetchTimeout,
    ForbiddenAddress,
    ForbiddenPath,
    HttpError,
    NotAnImage,
    NotFound,
    RedirectRefused,
    ServerError,
    TooLarge,
    TooManyPixels,
    UnsupportedScheme,
)
from consumer.fetch.fetcher import Fetcher, load_image
from consumer.fetch.policy import FetchPolicy

__all__ = [
    "CorruptImage",
    "FetchError",
    "FetchFailed",
    "FetchPolicy",
    "FetchTimeout",
    "Fetcher",
    "ForbiddenAddress",
    "ForbiddenPath",
    "HttpError",
    "NotAnImage",
    "NotFound",
    "RedirectRefused",
    "ServerError",
    "TooLarge",
    "TooManyPixels",
    "UnsupportedScheme",
    "decode_image",
    "load_image",
    "sniff_format",
]

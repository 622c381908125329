"""Dead-letter record: reasons, stages and the Kafka headers that describe a failure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, TypeVar

from schemas.exceptions import InvalidDeadLetter
from schemas.redaction import MAX_ERROR_MESSAGE_BYTES, redact_text

__all__ = [
    "DEAD_LETTER_HEADERS",
    "MAX_ERROR_MESSAGE_BYTES",
    "DeadLetter",
    "ErrorType",
    "Headers",
    "Stage",
    "dead_letter_headers",
    "format_time",
    "header_value",
    "parse_dead_letter_headers",
    "redact_text",
    "redrive_count",
]

_E = TypeVar("_E", bound=StrEnum)


class Stage(StrEnum):
    """Where in the pipeline a message failed (header ``error.stage``)."""

    PARSE = "parse"
    FETCH = "fetch"
    DECODE = "decode"
    PREPROCESS = "preprocess"
    INFER = "infer"
    NORMALIZE = "normalize"
    WRITE = "write"


class ErrorType(StrEnum):
    """Why a message was dead-lettered (header ``error.type``). Documented in docs/schemas.md."""

    INVALID_JSON = "invalid_json"  # value is not UTF-8 JSON
    INVALID_MESSAGE = "invalid_message"  # JSON that breaks the image.v1 schema
    UNSUPPORTED_SCHEME = "unsupported_scheme"  # URI scheme not allowed
    FORBIDDEN_ADDRESS = "forbidden_address"  # SSRF guard: resolved/connected address refused
    FORBIDDEN_PATH = "forbidden_path"  # file:// outside --file-root, traversal or symlink escape
    REDIRECT_REFUSED = "redirect_refused"  # redirect not allowed, or too many
    NOT_FOUND = "not_found"  # HTTP 404/410, missing file, missing s3 key, version or bucket
    ACCESS_DENIED = "access_denied"  # s3: the credentials may not read the object (403)
    FORBIDDEN_BUCKET = "forbidden_bucket"  # s3: bucket not in --allowed-bucket
    URL_EXPIRED = "url_expired"  # a presigned https:// URL whose validity has passed
    HTTP_ERROR = "http_error"  # other HTTP 4xx
    SERVER_ERROR = "server_error"  # HTTP 5xx/429 still failing after retries
    FETCH_TIMEOUT = "fetch_timeout"  # connect/read timeout still failing after retries
    FETCH_FAILED = "fetch_failed"  # other transport failure after retries
    TOO_LARGE = "too_large"  # download larger than the byte limit
    TOO_MANY_PIXELS = "too_many_pixels"  # decompression bomb guard
    NOT_AN_IMAGE = "not_an_image"  # bytes of no supported image format
    CORRUPT_IMAGE = "corrupt_image"  # a known format that fails to decode (truncated, ...)
    INVALID_EMBEDDING = "invalid_embedding"  # NaN/Inf or zero vector from the model
    MODEL_REJECTED = "model_rejected"  # Triton refused the input itself (bad value)


# --- headers -----------------------------------------------------------------------------------
# The record's key and value are the original record's bytes, unchanged; these headers say why.

HEADER_STAGE: Final = "error.stage"
HEADER_TYPE: Final = "error.type"
HEADER_MESSAGE: Final = "error.message"
HEADER_SOURCE_TOPIC: Final = "source.topic"
HEADER_SOURCE_PARTITION: Final = "source.partition"
HEADER_SOURCE_OFFSET: Final = "source.offset"
HEADER_TIME: Final = "error.time"
HEADER_REDRIVE_COUNT: Final = "redrive.count"
#: Every header this module writes, in the order it writes them.
DEAD_LETTER_HEADERS: Final = (
    HEADER_STAGE,
    HEADER_TYPE,
    HEADER_MESSAGE,
    HEADER_SOURCE_TOPIC,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_OFFSET,
    HEADER_TIME,
    HEADER_REDRIVE_COUNT,
)

Headers = Sequence[tuple[str, bytes | str | None]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The parsed dead-letter headers of one record. Unknown stage/type values stay strings."""

    stage: Stage | str
    error_type: ErrorType | str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    time: datetime
    redrive_count: int


def format_time(when: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z`` suffix, e.g. ``2025-01-31T12:00:00.000Z``."""
    if when.tzinfo is None:
        raise ValueError("error.time needs an aware datetime")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter_headers(
    *,
    stage: Stage,
    error_type: ErrorType,
    message: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    time: datetime | None = None,
    redrive_count: int = 0,
) -> list[tuple[str, bytes]]:
    """Headers for a dead-letter record, as confluent-kafka's ``produce(headers=...)`` takes them.

    ``message`` is redacted and bounded (:func:`redact_text`); ``time`` defaults to now;
    ``redrive_count`` is the failed record's own ``redrive.count`` (see :func:`redrive_count`), so
    a redriven record that fails again keeps counting towards the redrive limit.
    """
    if redrive_count < 0 or source_partition < 0 or source_offset < 0:
        raise ValueError("redrive_count, source_partition and source_offset must be >= 0")
    when = time if time is not None else datetime.now(UTC)
    values = (
        Stage(stage).value,
        ErrorType(error_type).value,
        redact_text(message),
        source_topic,
        str(source_partition),
        str(source_offset),
        format_time(when),
        str(redrive_count),
    )
    return [
        (name, value.encode("utf-8"))
        for name, value in zip(DEAD_LETTER_HEADERS, values, strict=True)
    ]


def header_value(headers: Headers | None, name: str) -> str | None:
    """The last value of header ``name`` as text, or ``None`` when absent."""
    found: str | None = None
    for key, value in headers or ():
        if key == name and value is not None:
            found = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return found


def redrive_count(headers: Headers | None) -> int:
    """A record's ``redrive.count`` (0 when absent or malformed): how often it was redriven."""
    raw = header_value(headers, HEADER_REDRIVE_COUNT)
    try:
        count = int(raw) if raw is not None else 0
    except ValueError:
        return 0
    return max(count, 0)


def parse_dead_letter_headers(headers: Headers | None) -> DeadLetter:
    """Parse the headers :func:`dead_letter_headers` wrote; raise :class:`InvalidDeadLetter` if
    one is missing or malformed. Other headers are ignored."""
    values: dict[str, str] = {}
    for name in DEAD_LETTER_HEADERS:
        value = header_value(headers, name)
        if value is None:
            raise InvalidDeadLetter(f"header {name!r} is missing")
        values[name] = value
    try:
        partition = int(values[HEADER_SOURCE_PARTITION])
        offset = int(values[HEADER_SOURCE_OFFSET])
        count = int(values[HEADER_REDRIVE_COUNT])
    except ValueError as exc:
        raise InvalidDeadLetter(f"numeric header is malformed: {exc}") from None
    try:
        when = datetime.fromisoformat(values[HEADER_TIME])
    except ValueError:
        raise InvalidDeadLetter(
            f"header {HEADER_TIME!r} is not ISO-8601: {values[HEADER_TIME]!r}"
        ) from None
    if when.tzinfo is None:
        raise InvalidDeadLetter(f"header {HEADER_TIME!r} has no time zone")
    return DeadLetter(
        stage=_enum_or_str(Stage, values[HEADER_STAGE]),
        error_type=_enum_or_str(ErrorType, values[HEADER_TYPE]),
        message=values[HEADER_MESSAGE],
        source_topic=values[HEADER_SOURCE_TOPIC],
        source_partition=partition,
        source_offset=offset,
        time=when.astimezone(UTC),
        redrive_count=count,
    )


def _enum_or_str(enum: type[_E], value: str) -> _E | str:
    try:
        return enum(value)
    except ValueError:
        return value

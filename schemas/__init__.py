"""Message formats shared by the producer and the consumer: ``image.v1`` and dead letters.

Imports nothing from the rest of the project (only the standard library and orjson), so it can
be tested and reused alone.
"""

from schemas.deadletter import (
    DeadLetter,
    ErrorType,
    Stage,
    dead_letter_headers,
    parse_dead_letter_headers,
    redrive_count,
)
from schemas.exceptions import InvalidDeadLetter, InvalidMessage
from schemas.message import (
    DEFAULT_ALLOWED_SCHEMES,
    MAX_ID_LENGTH,
    SCHEMA_NAME,
    ImageMessage,
    decode_message,
    encode_message,
    is_valid_id,
    message_id_for_content,
    message_id_for_uri,
    normalize_uri,
)
from schemas.redaction import redact_text, redact_uri
from schemas.version import HEADER_VERSION, Version, format_version, version_from_headers

__all__ = [
    "DEFAULT_ALLOWED_SCHEMES",
    "HEADER_VERSION",
    "MAX_ID_LENGTH",
    "SCHEMA_NAME",
    "DeadLetter",
    "ErrorType",
    "ImageMessage",
    "InvalidDeadLetter",
    "InvalidMessage",
    "Stage",
    "Version",
    "dead_letter_headers",
    "decode_message",
    "encode_message",
    "format_version",
    "is_valid_id",
    "message_id_for_content",
    "message_id_for_uri",
    "normalize_uri",
    "parse_dead_letter_headers",
    "redact_text",
    "redact_uri",
    "redrive_count",
    "version_from_headers",
]

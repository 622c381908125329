"""The ``image.v1`` message: one image URI to embed, or one id to delete.

A record's value is a JSON object (orjson on both sides); its key is the message id, so every
message about one id lands in one partition and keeps its order. A Kafka tombstone (null value
with the id as key) is a delete. The same rules are published as a JSON Schema
(``image.v1.schema.json`` beside this module) for producers written in other languages; a test
keeps the two in agreement. See docs/schemas.md.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal

import orjson

from schemas.deadletter import ErrorType
from schemas.exceptions import InvalidMessage
from schemas.redaction import redact_uri

__all__ = [
    "DEFAULT_ALLOWED_SCHEMES",
    "MAX_ID_LENGTH",
    "MAX_URI_LENGTH",
    "METADATA_MAX_BYTES",
    "SCHEMA_NAME",
    "ImageMessage",
    "InvalidMessage",
    "decode_message",
    "encode_message",
    "is_valid_id",
    "json_schema",
    "message_from_dict",
    "message_id_for_content",
    "message_id_for_uri",
    "normalize_uri",
    "redact_uri",
]

SCHEMA_NAME: Final = "image.v1"
OP_UPSERT: Final = "upsert"
OP_DELETE: Final = "delete"
Op = Literal["upsert", "delete"]

#: Schemes accepted unless the caller narrows or widens the set. The consumer passes the schemes it
#: can actually fetch; the JSON Schema encodes exactly this default set.
DEFAULT_ALLOWED_SCHEMES: Final = frozenset({"http", "https", "file", "s3"})

#: Ids fit a Milvus ``VARCHAR(max_length=512)`` primary key (ASCII, so characters == bytes) and
#: contain no quote, backslash or space, so they are safe inside Milvus filter expressions.
MAX_ID_LENGTH: Final = 512
MAX_URI_LENGTH: Final = 8192
METADATA_MAX_KEYS: Final = 64
METADATA_MAX_KEY_LENGTH: Final = 64
METADATA_MAX_STRING_LENGTH: Final = 1024
#: Cap on ``orjson.dumps(metadata)`` (compact UTF-8); the one rule the JSON Schema cannot express.
METADATA_MAX_BYTES: Final = 8192
#: Numbers in metadata stay within the signed 64-bit range (Milvus JSON stores int64/double).
METADATA_MIN_NUMBER: Final = -(2**63)
METADATA_MAX_NUMBER: Final = 2**63 - 1

_FIELDS: Final = frozenset({"schema", "op", "id", "uri", "metadata"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# --- URI grammar (a strict subset of RFC 3986: ASCII, percent-encoded) -------------------------
# Written so every pattern is valid both for Python's ``re`` and ECMA-262 (JSON Schema): the JSON
# Schema file is generated from these strings (see ``json_schema_patterns``).
_PCT = "%[0-9A-Fa-f]{2}"
_SUB = "A-Za-z0-9._~!$&'()*+,;="  # unreserved + sub-delims, '-' appended last in each class
_PCHAR = f"(?:[{_SUB}:@-]|{_PCT})"
_QCHAR = f"(?:[{_SUB}:@/?-]|{_PCT})"
_USERINFO = f"(?:[{_SUB}:-]|{_PCT})*"
# an S3 version id: query characters but the separators '&', '=', '?' and '#'
_VCHAR = f"(?:[A-Za-z0-9._~!$'()*+,;:@/-]|{_PCT})"
_REGNAME = f"(?:[{_SUB}-]|{_PCT})+"
_IP_LITERAL = r"\[[0-9A-Fa-f:.]+\]"
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_PATH_ABEMPTY = f"(?:/{_PCHAR}*)*"
_AUTHORITY = f"(?:{_USERINFO}@)?(?:{_REGNAME}|{_IP_LITERAL})(?::{_PORT})?"
_TAIL = rf"{_PATH_ABEMPTY}(?:\?{_QCHAR}*)?(?:#{_QCHAR}*)?"


def _ci(word: str) -> str:
    """A case-insensitive pattern for ``word`` without flags (ECMA-262 has no inline flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_SCHEME_PATTERNS: Final = {
    "http": f"{_ci('http')}://{_AUTHORITY}{_TAIL}",
    "https": f"{_ci('https')}://{_AUTHORITY}{_TAIL}",
    # file: absolute path, empty host or "localhost"; no query or fragment.
    "file": f"{_ci('file')}://(?:{_ci('localhost')})?(?:/{_PCHAR}*)+",
    # s3: a valid bucket name and a non-empty key (a flat string: '//', '.' and '..' are kept);
    # no userinfo, port or fragment; one optional query parameter, versionId, pins a version.
    "s3": (
        f"{_ci('s3')}://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]/{_PCHAR}(?:{_PCHAR}|/)*"
        f"(?:\\?versionId={_VCHAR}+)?"
    ),
}
_GENERIC_PATTERN: Final = f"[A-Za-z][A-Za-z0-9+.-]*://(?:{_AUTHORITY})?{_TAIL}"
_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_URI_RES: Final = {name: re.compile(p) for name, p in _SCHEME_PATTERNS.items()}
_GENERIC_RE: Final = re.compile(_GENERIC_PATTERN)
_ID_CHARS = "A-Za-z0-9._:/@+=~-"
_ID_RE: Final = re.compile(f"[{_ID_CHARS}]{{1,{MAX_ID_LENGTH}}}")
_KEY_RE: Final = re.compile(f"[A-Za-z0-9_.-]{{1,{METADATA_MAX_KEY_LENGTH}}}")
_URI_ALLOWED_CHARS_RE: Final = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
# generic split (RFC 3986, appendix B) and authority split, used on already-validated URIs
_SPLIT_RE: Final = re.compile(r"([^:/?#]+):(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?", re.S)
_AUTHORITY_RE: Final = re.compile(r"(?:(.*)@)?(\[[^\]]*\]|[^:]*)(?::([0-9]*))?", re.S)
_PCT_RE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def json_schema_patterns() -> dict[str, str]:
    """The anchored patterns the JSON Schema uses, so the file can be checked against the code.

    ``$(?!\\n)`` ends each pattern because Python's ``$`` (used by the jsonschema library) also
    matches before a final newline; in ECMA-262 the look-ahead is a no-op.
    """
    uri = "|".join(f"(?:{_SCHEME_PATTERNS[s]})" for s in sorted(DEFAULT_ALLOWED_SCHEMES))
    return {
        "id": f"^[{_ID_CHARS}]{{1,{MAX_ID_LENGTH}}}$(?!\\n)",
        "uri": f"^(?:{uri})$(?!\\n)",
        "metadata_key": f"^[A-Za-z0-9_.-]{{1,{METADATA_MAX_KEY_LENGTH}}}$(?!\\n)",
    }


# --- the message -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageMessage:
    """One ``image.v1`` message; build it with :meth:`upsert`, :meth:`delete` or a decoder.

    ``uri`` is kept exactly as given (it is what the consumer fetches); only the default id is
    derived from its normalized form. ``metadata`` is a flat JSON object or ``None``.
    """

    op: Op
    id: str
    uri: str | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.op not in (OP_UPSERT, OP_DELETE):
            raise InvalidMessage(
                ErrorType.INVALID_MESSAGE, "op", f"must be 'upsert' or 'delete', not {self.op!r}"
            )
        _check_id(self.id, "id")
        if self.op == OP_UPSERT and not isinstance(self.uri, str):
            raise InvalidMessage(ErrorType.INVALID_MESSAGE, "uri", "is required for an upsert")
        if self.op == OP_DELETE and self.metadata is not None:
            raise InvalidMessage(
                ErrorType.INVALID_MESSAGE, "metadata", "is not allowed on a delete"
            )

    @classmethod
    def upsert(
        cls,
        uri: str,
        *,
        id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        allowed_schemes: Collection[str] = DEFAULT_ALLOWED_SCHEMES,
    ) -> ImageMessage:
        """A validated upsert; ``id`` defaults to :func:`message_id_for_uri`."""
        _check_uri(uri, allowed_schemes)
        meta = _check_metadata(dict(metadata)) if metadata is not None else None
        return cls(OP_UPSERT, id if id is not None else message_id_for_uri(uri), uri, meta)

    @classmethod
    def delete(cls, id: str) -> ImageMessage:
        """A validated delete of ``id``."""
        return cls(OP_DELETE, id)


def decode_message(
    key: bytes | None,
    value: bytes | None,
    *,
    allowed_schemes: Collection[str] = DEFAULT_ALLOWED_SCHEMES,
) -> ImageMessage:
    """Decode one Kafka record into a message, or raise :class:`InvalidMessage`.

    A tombstone (``value is None`` with a key) is a delete of the id in the key. For any other
    record the key is not consulted: producers set it to the id so partitioning keeps per-id order.
    """
    if value is None:
        if key is None:
            raise InvalidMessage(
                ErrorType.INVALID_MESSAGE, None, "record has neither key nor value"
            )
        try:
            tombstone_id = key.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage(
                ErrorType.INVALID_MESSAGE, "key", "tombstone key is not UTF-8"
            ) from None
        _check_id(tombstone_id, "key")
        return ImageMessage(OP_DELETE, tombstone_id)
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(ErrorType.INVALID_JSON, None, f"value is not JSON: {exc}") from None
    return message_from_dict(doc, allowed_schemes=allowed_schemes)


def message_from_dict(
    doc: object, *, allowed_schemes: Collection[str] = DEFAULT_ALLOWED_SCHEMES
) -> ImageMessage:
    """Validate an already-parsed JSON document as ``image.v1`` (see :func:`decode_message`)."""
    if not isinstance(doc, dict):
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, None, f"value must be a JSON object, not {_json_type(doc)}"
        )
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise InvalidMessage(ErrorType.INVALID_MESSAGE, unknown[0], "unknown field")
    schema = doc.get("schema")
    if schema is not None and schema != SCHEMA_NAME:
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, "schema", f"must be {SCHEMA_NAME!r}, not {schema!r}"
        )
    op = doc.get("op")
    if op is None:
        op = OP_UPSERT
    if op not in (OP_UPSERT, OP_DELETE):
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, "op", f"must be 'upsert' or 'delete', not {op!r}"
        )
    msg_id = doc.get("id")
    if msg_id is not None:
        _check_id(msg_id, "id")
    uri = doc.get("uri")
    if uri is not None:
        _check_uri(uri, allowed_schemes)
    metadata = doc.get("metadata")
    if metadata is not None:
        metadata = _check_metadata(metadata)
    if op == OP_DELETE:
        if msg_id is None:
            raise InvalidMessage(ErrorType.INVALID_MESSAGE, "id", "is required for a delete")
        if metadata is not None:
            raise InvalidMessage(
                ErrorType.INVALID_MESSAGE, "metadata", "is not allowed on a delete"
            )
        return ImageMessage(OP_DELETE, msg_id, uri)
    if uri is None:
        raise InvalidMessage(ErrorType.INVALID_MESSAGE, "uri", "is required for an upsert")
    return ImageMessage(
        OP_UPSERT, msg_id if msg_id is not None else message_id_for_uri(uri), uri, metadata
    )


def encode_message(msg: ImageMessage) -> bytes:
    """The record value for ``msg``: compact JSON with ``schema``, ``op`` and ``id`` always set."""
    doc: dict[str, Any] = {"schema": SCHEMA_NAME, "op": msg.op, "id": msg.id}
    if msg.uri is not None:
        doc["uri"] = msg.uri
    if msg.metadata is not None:
        doc["metadata"] = msg.metadata
    return orjson.dumps(doc)


# --- ids ---------------------------------------------------------------------------------------


def message_id_for_uri(uri: str) -> str:
    """Default id of an upsert: ``uri-sha256-`` + SHA-256 hex of the normalized URI (UTF-8)."""
    return "uri-sha256-" + hashlib.sha256(normalize_uri(uri).encode("utf-8")).hexdigest()


def message_id_for_content(data: bytes) -> str:
    """Id from the image bytes (``--id-from content``): ``sha256-`` + SHA-256 hex of ``data``."""
    return "sha256-" + hashlib.sha256(data).hexdigest()


def is_valid_id(value: object) -> bool:
    """True when ``value`` is usable as a message id (and so as a Kafka key and Milvus key)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def normalize_uri(uri: str) -> str:
    """The URI's canonical form, used only to derive ids: equal resources give equal strings.

    Lowercases scheme and host, drops default ports (80/443), empty ports, the fragment and a
    ``localhost`` file host; upper-cases percent-escapes and decodes escaped unreserved
    characters; resolves ``.``/``..`` segments (not for ``s3``, whose keys are flat strings);
    sorts the query's ``&``-separated parameters. Raises :class:`InvalidMessage` for a string
    that is not an absolute URI.
    """
    m = _SPLIT_RE.fullmatch(uri)
    if m is None or not _SCHEME_RE.fullmatch(m.group(1) + ":"):
        raise InvalidMessage(ErrorType.INVALID_MESSAGE, "uri", "is not an absolute URI")
    scheme = m.group(1).lower()
    authority, path, query = m.group(2), _norm_pct(m.group(3)), m.group(4)
    out = [scheme, ":"]
    if authority is not None:
        out.append("//")
        a = _AUTHORITY_RE.fullmatch(authority)
        assert a is not None  # the pattern matches any string
        userinfo, host, port = a.groups()
        if userinfo is not None:
            out += [_norm_pct(userinfo), "@"]
        host = _norm_pct(host).lower()
        if not (scheme == "file" and host == "localhost"):
            out.append(host)
        if port and int(port) != _DEFAULT_PORTS.get(scheme):
            out += [":", str(int(port))]
    if scheme != "s3":
        path = _remove_dot_segments(path)
    if authority is not None and not path and scheme in _DEFAULT_PORTS:
        path = "/"
    out.append(path)
    if query:
        params = sorted(p for p in _norm_pct(query).split("&") if p)
        if params:
            out += ["?", "&".join(params)]
    return "".join(out)


# --- validation helpers ------------------------------------------------------------------------


def _check_id(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, field, f"must be a string, not {_json_type(value)}"
        )
    if not value:
        raise InvalidMessage(ErrorType.INVALID_MESSAGE, field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, field, f"longer than {MAX_ID_LENGTH} characters"
        )
    if _ID_RE.fullmatch(value) is None:
        bad = next(c for c in value if not re.fullmatch(f"[{_ID_CHARS}]", c))
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE,
            field,
            f"character {bad!r} not allowed (allowed: letters, digits and ._:/@+=~-)",
        )


def _check_uri(value: object, allowed_schemes: Collection[str]) -> None:
    if not isinstance(value, str):
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, "uri", f"must be a string, not {_json_type(value)}"
        )
    if len(value) > MAX_URI_LENGTH:
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, "uri", f"longer than {MAX_URI_LENGTH} characters"
        )
    m = _SCHEME_RE.match(value)
    if m is None:
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, "uri", "has no scheme (expected e.g. https://...)"
        )
    scheme = m.group(1).lower()
    if scheme not in {s.lower() for s in allowed_schemes}:
        allowed = ", ".join(sorted(allowed_schemes))
        raise InvalidMessage(
            ErrorType.UNSUPPORTED_SCHEME,
            "uri",
            f"scheme {scheme!r} is not allowed (allowed: {allowed})",
        )
    chars = _URI_ALLOWED_CHARS_RE.match(value)
    assert chars is not None
    if chars.end() != len(value):
        bad = value[chars.end()]
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, "uri", f"character {bad!r} must be percent-encoded"
        )
    pattern = _URI_RES.get(scheme, _GENERIC_RE)
    if pattern.fullmatch(value) is None:
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE,
            "uri",
            f"is not a valid {scheme} URI ({_URI_HINTS.get(scheme, _URI_HINTS[''])})",
        )


_URI_HINTS: Final = {
    "http": "expected http://host[:port]/path with a port of 0-65535 and %XX escapes",
    "https": "expected https://host[:port]/path with a port of 0-65535 and %XX escapes",
    "file": "expected file:///absolute/path, no query or fragment",
    "s3": (
        "expected s3://bucket/key with a valid bucket name, and no query but an optional "
        "?versionId=V"
    ),
    "": "expected scheme://authority/path",
}


def _check_metadata(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, "metadata", f"must be an object, not {_json_type(value)}"
        )
    if len(value) > METADATA_MAX_KEYS:
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE, "metadata", f"more than {METADATA_MAX_KEYS} keys"
        )
    for k, v in value.items():
        if not isinstance(k, str) or _KEY_RE.fullmatch(k) is None:
            raise InvalidMessage(
                ErrorType.INVALID_MESSAGE,
                "metadata",
                f"key {k!r} must be 1-{METADATA_MAX_KEY_LENGTH} of letters, digits and _.-",
            )
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, str):
            if len(v) > METADATA_MAX_STRING_LENGTH:
                raise InvalidMessage(
                    ErrorType.INVALID_MESSAGE,
                    "metadata",
                    f"value of {k!r} longer than {METADATA_MAX_STRING_LENGTH} characters",
                )
        elif isinstance(v, int | float):
            if (isinstance(v, float) and not math.isfinite(v)) or not (
                METADATA_MIN_NUMBER <= v <= METADATA_MAX_NUMBER
            ):
                raise InvalidMessage(
                    ErrorType.INVALID_MESSAGE,
                    "metadata",
                    f"value of {k!r} outside the 64-bit range",
                )
        else:
            raise InvalidMessage(
                ErrorType.INVALID_MESSAGE,
                "metadata",
                f"value of {k!r} must be a string, number, boolean or null, not {_json_type(v)}",
            )
    size = len(orjson.dumps(value))
    if size > METADATA_MAX_BYTES:
        raise InvalidMessage(
            ErrorType.INVALID_MESSAGE,
            "metadata",
            f"{size} bytes encoded, more than {METADATA_MAX_BYTES}",
        )
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _norm_pct(text: str) -> str:
    """Decode escaped unreserved characters and upper-case the other escapes (RFC 3986 6.2.2)."""

    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    return _PCT_RE.sub(fix, text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    out: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./") or path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = path[3:]
            if out:
                out.pop()
        elif path == "/..":
            path = "/"
            if out:
                out.pop()
        elif path in (".", ".."):
            path = ""
        else:
            start = 1 if path.startswith("/") else 0
            end = path.find("/", start)
            if end < 0:
                end = len(path)
            out.append(path[:end])
            path = path[end:]
    return "".join(out)


def json_schema() -> dict[str, Any]:
    """The ``image.v1`` JSON Schema (draft 2020-12) shipped beside this module."""
    text = resources.files("schemas").joinpath("image.v1.schema.json").read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema

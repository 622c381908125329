"""A corpus of record values, valid and invalid, shared by the validator and JSON Schema tests.

Each case is ``(name, value, expected)``: ``value`` is the raw record value (bytes) or a JSON
document (encoded with orjson); ``expected`` is ``None`` for a valid message or the
``(error_type, field)`` the Python validator must report.
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas import ErrorType

INVALID_JSON = ErrorType.INVALID_JSON
INVALID = ErrorType.INVALID_MESSAGE
SCHEME = ErrorType.UNSUPPORTED_SCHEME

Expected = tuple[ErrorType, str | None] | None


def up(uri: Any, **fields: Any) -> dict[str, Any]:
    """An upsert document for ``uri`` with extra fields."""
    return {"uri": uri, **fields}


CASES: list[tuple[str, bytes | dict[str, Any] | list[Any] | str | int | None, Expected]] = [
    # ---- valid ------------------------------------------------------------------------------
    ("minimal upsert", up("https://example.com/a.jpg"), None),
    (
        "full upsert",
        {
            "schema": "image.v1",
            "op": "upsert",
            "id": "img-1",
            "uri": "https://example.com/a.jpg",
            "metadata": {"caption": "a cat", "year": 2024, "score": 0.5, "ok": True, "x": None},
        },
        None,
    ),
    ("delete", {"op": "delete", "id": "img-1"}, None),
    ("delete with uri", {"op": "delete", "id": "img-1", "uri": "https://example.com/a"}, None),
    ("delete with null metadata", {"op": "delete", "id": "a", "metadata": None}, None),
    (
        "nulls mean absent",
        {"schema": None, "op": None, "id": None, "uri": "http://x.org/y", "metadata": None},
        None,
    ),
    ("upper-case scheme and host", up("HTTPS://EXAMPLE.com/A.JPG"), None),
    ("userinfo and port", up("http://user:pa%20ss@example.com:8080/a.png"), None),
    ("ipv6 literal", up("http://[::1]:8000/x.jpg"), None),
    ("ipv4 host", up("http://192.0.2.10/x.jpg"), None),
    ("http without path", up("http://example.com"), None),
    ("query and fragment", up("https://h.example/a.jpg?x=1&y=%2F#frag"), None),
    ("presigned-style query", up("https://b.s3.amazonaws.com/k.jpg?X-Amz-Signature=ab%2Bc"), None),
    ("port 65535", up("http://example.com:65535/"), None),
    ("port 0", up("http://example.com:0/"), None),
    ("file uri", up("file:///data/images/a.jpg"), None),
    ("file uri with localhost", up("file://localhost/data/a.jpg"), None),
    ("file uri percent-encoded", up("file:///data/caf%C3%A9%20photo.jpg"), None),
    ("s3 uri", up("s3://my-bucket/path/to/key.png"), None),
    ("s3 bucket with dots", up("s3://my.bucket.name/k"), None),
    ("s3 pinned version", up("s3://bucket/k.jpg?versionId=3/L4kqtJl%2BrmSp.X_y-z"), None),
    ("s3 flat keys", up("s3://bucket/a//b/./c/../d"), None),
    ("sub-delims in path", up("https://example.com/a;b=c/(1),*!$'+.jpg"), None),
    ("id of 512 characters", up("https://e.com/a", id="a" * 512), None),
    ("id with every allowed punctuation", up("https://e.com/a", id="a._:/@+=~-"), None),
    ("schema explicit", up("https://e.com/a", schema="image.v1"), None),
    ("empty metadata", up("https://e.com/a", metadata={}), None),
    (
        "metadata with 64 keys",
        up("https://e.com/a", metadata={f"k{i}": i for i in range(64)}),
        None,
    ),
    ("metadata string of 1024", up("https://e.com/a", metadata={"s": "x" * 1024}), None),
    ("metadata unicode value", up("https://e.com/a", metadata={"s": "café ☕"}), None),
    ("metadata key of 64", up("https://e.com/a", metadata={"k" * 64: 1}), None),
    ("metadata key punctuation", up("https://e.com/a", metadata={"exif.iso-speed_2": 1}), None),
    ("metadata int64 max", up("https://e.com/a", metadata={"n": 2**63 - 1}), None),
    ("metadata int64 min", up("https://e.com/a", metadata={"n": -(2**63)}), None),
    ("metadata float", up("https://e.com/a", metadata={"n": -1.5e-300}), None),
    ("whitespace around json", b'  {"uri": "https://e.com/a"}\n', None),
    ("duplicate key, last wins", b'{"uri": 1, "uri": "https://e.com/a"}', None),
    # ---- not JSON ---------------------------------------------------------------------------
    ("empty value", b"", (INVALID_JSON, None)),
    ("plain text", b"https://example.com/a.jpg", (INVALID_JSON, None)),
    ("truncated json", b'{"uri": "https://e.com/a"', (INVALID_JSON, None)),
    ("not utf-8", b'{"uri": "\xff"}', (INVALID_JSON, None)),
    ("NaN literal", b'{"uri": "https://e.com/a", "metadata": {"n": NaN}}', (INVALID_JSON, None)),
    ("byte order mark", b'\xef\xbb\xbf{"uri": "https://e.com/a"}', (INVALID_JSON, None)),
    ("lone surrogate", b'{"uri": "https://e.com/\\ud800"}', (INVALID_JSON, None)),
    (
        "number overflows double",
        b'{"uri":"https://e.com/a","metadata":{"n":1e400}}',
        (INVALID_JSON, None),
    ),
    # ---- not an object ----------------------------------------------------------------------
    ("json array", ["https://e.com/a"], (INVALID, None)),
    ("json string", "https://e.com/a", (INVALID, None)),
    ("json number", 42, (INVALID, None)),
    ("json null", None, (INVALID, None)),
    ("empty object", {}, (INVALID, "uri")),
    # ---- top-level fields -------------------------------------------------------------------
    ("unknown field", up("https://e.com/a", url="https://e.com/a"), (INVALID, "url")),
    ("other schema", up("https://e.com/a", schema="image.v2"), (INVALID, "schema")),
    ("schema not a string", up("https://e.com/a", schema=1), (INVALID, "schema")),
    ("op upper-case", up("https://e.com/a", op="UPSERT"), (INVALID, "op")),
    ("op unknown", up("https://e.com/a", op="remove"), (INVALID, "op")),
    ("op number", up("https://e.com/a", op=1), (INVALID, "op")),
    ("upsert without uri", {"op": "upsert", "id": "a"}, (INVALID, "uri")),
    ("upsert with null uri", {"id": "a", "uri": None}, (INVALID, "uri")),
    ("delete without id", {"op": "delete", "uri": "https://e.com/a"}, (INVALID, "id")),
    ("delete with null id", {"op": "delete", "id": None}, (INVALID, "id")),
    ("delete with metadata", {"op": "delete", "id": "a", "metadata": {}}, (INVALID, "metadata")),
    # ---- id ---------------------------------------------------------------------------------
    ("id empty", up("https://e.com/a", id=""), (INVALID, "id")),
    ("id of 513 characters", up("https://e.com/a", id="a" * 513), (INVALID, "id")),
    ("id with space", up("https://e.com/a", id="a b"), (INVALID, "id")),
    ("id with quote", up("https://e.com/a", id='a"b'), (INVALID, "id")),
    ("id with backslash", up("https://e.com/a", id="a\\b"), (INVALID, "id")),
    ("id non-ascii", up("https://e.com/a", id="café"), (INVALID, "id")),
    ("id trailing newline", up("https://e.com/a", id="abc\n"), (INVALID, "id")),
    ("id number", up("https://e.com/a", id=7), (INVALID, "id")),
    ("id object", up("https://e.com/a", id={"a": 1}), (INVALID, "id")),
    # ---- uri --------------------------------------------------------------------------------
    ("uri number", up(12), (INVALID, "uri")),
    ("uri list", up(["https://e.com/a"]), (INVALID, "uri")),
    ("uri empty", up(""), (INVALID, "uri")),
    ("uri without scheme", up("example.com/a.jpg"), (INVALID, "uri")),
    ("uri relative path", up("/data/a.jpg"), (INVALID, "uri")),
    ("uri ftp", up("ftp://example.com/a.jpg"), (SCHEME, "uri")),
    ("uri javascript", up("javascript:alert(1)"), (SCHEME, "uri")),
    ("uri data", up("data:image/png;base64,iVBORw0KGgo="), (SCHEME, "uri")),
    ("uri gs not allowed by default", up("gs://bucket/key"), (SCHEME, "uri")),
    ("uri http without host", up("http:///a.jpg"), (INVALID, "uri")),
    ("uri http without slashes", up("http:example.com/a"), (INVALID, "uri")),
    ("uri with space", up("https://e.com/a b.jpg"), (INVALID, "uri")),
    ("uri with space in host", up("http://a b/"), (INVALID, "uri")),
    ("uri non-ascii", up("https://e.com/café.jpg"), (INVALID, "uri")),
    ("uri trailing newline", up("https://e.com/a.jpg\n"), (INVALID, "uri")),
    ("uri control char", up("https://e.com/a\x00.jpg"), (INVALID, "uri")),
    ("uri angle bracket", up("https://e.com/<a>.jpg"), (INVALID, "uri")),
    ("uri port 65536", up("http://e.com:65536/"), (INVALID, "uri")),
    ("uri port 99999", up("http://e.com:99999/"), (INVALID, "uri")),
    ("uri port leading zero 5 digits", up("http://e.com:08080/"), (INVALID, "uri")),
    ("uri empty port", up("http://e.com:/a"), (INVALID, "uri")),
    ("uri port not a number", up("http://e.com:http/a"), (INVALID, "uri")),
    ("uri bad percent escape", up("https://e.com/a%zz.jpg"), (INVALID, "uri")),
    ("uri truncated percent escape", up("https://e.com/a%2"), (INVALID, "uri")),
    ("uri bad ip literal", up("http://[zz]/a"), (INVALID, "uri")),
    ("uri two @", up("http://a@b@c/a"), (INVALID, "uri")),
    ("uri too long", up("https://e.com/" + "a" * 8179), (INVALID, "uri")),
    ("file with host", up("file://server/share/a.jpg"), (INVALID, "uri")),
    ("file relative", up("file:a.jpg"), (INVALID, "uri")),
    ("file with query", up("file:///a.jpg?x=1"), (INVALID, "uri")),
    ("file with fragment", up("file:///a.jpg#x"), (INVALID, "uri")),
    ("file without path", up("file://"), (INVALID, "uri")),
    ("s3 bucket upper-case", up("s3://My-Bucket/k"), (INVALID, "uri")),
    ("s3 bucket too short", up("s3://ab/k"), (INVALID, "uri")),
    ("s3 bucket too long", up("s3://" + "b" * 64 + "/k"), (INVALID, "uri")),
    ("s3 without key", up("s3://bucket"), (INVALID, "uri")),
    ("s3 with empty key", up("s3://bucket/"), (INVALID, "uri")),
    ("s3 with another query", up("s3://bucket/k?partNumber=1"), (INVALID, "uri")),
    ("s3 with empty version", up("s3://bucket/k?versionId="), (INVALID, "uri")),
    ("s3 with two parameters", up("s3://bucket/k?versionId=1&x=2"), (INVALID, "uri")),
    ("s3 version name case", up("s3://bucket/k?versionid=1"), (INVALID, "uri")),
    ("s3 with fragment", up("s3://bucket/k#f"), (INVALID, "uri")),
    ("s3 with userinfo", up("s3://user@bucket/k"), (INVALID, "uri")),
    # ---- metadata ---------------------------------------------------------------------------
    ("metadata array", up("https://e.com/a", metadata=[1, 2]), (INVALID, "metadata")),
    ("metadata string", up("https://e.com/a", metadata="a=b"), (INVALID, "metadata")),
    (
        "metadata nested object",
        up("https://e.com/a", metadata={"a": {"b": 1}}),
        (INVALID, "metadata"),
    ),
    ("metadata list value", up("https://e.com/a", metadata={"tags": ["a"]}), (INVALID, "metadata")),
    ("metadata key empty", up("https://e.com/a", metadata={"": 1}), (INVALID, "metadata")),
    ("metadata key with space", up("https://e.com/a", metadata={"a b": 1}), (INVALID, "metadata")),
    ("metadata key with quote", up("https://e.com/a", metadata={'a"': 1}), (INVALID, "metadata")),
    ("metadata key of 65", up("https://e.com/a", metadata={"k" * 65: 1}), (INVALID, "metadata")),
    (
        "metadata key trailing newline",
        up("https://e.com/a", metadata={"k\n": 1}),
        (INVALID, "metadata"),
    ),
    (
        "metadata with 65 keys",
        up("https://e.com/a", metadata={f"k{i}": i for i in range(65)}),
        (INVALID, "metadata"),
    ),
    (
        "metadata string of 1025",
        up("https://e.com/a", metadata={"s": "x" * 1025}),
        (INVALID, "metadata"),
    ),
    ("metadata int64 max + 1", up("https://e.com/a", metadata={"n": 2**63}), (INVALID, "metadata")),
    (
        "metadata uint64 max",
        b'{"uri":"https://e.com/a","metadata":{"n":18446744073709551615}}',
        (INVALID, "metadata"),
    ),
    ("metadata huge float", up("https://e.com/a", metadata={"n": 1e300}), (INVALID, "metadata")),
]


def as_bytes(value: bytes | dict[str, Any] | list[Any] | str | int | None) -> bytes:
    """The record value of a corpus case."""
    return value if isinstance(value, bytes) else orjson.dumps(value)

"""The image.v1 validator, encoder and ids."""

from __future__ import annotations

import pickle
import string

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import schemas
from schemas import (
    ErrorType,
    ImageMessage,
    InvalidMessage,
    decode_message,
    encode_message,
    message_id_for_content,
    message_id_for_uri,
    normalize_uri,
)
from schemas.message import MAX_ID_LENGTH, METADATA_MAX_BYTES
from tests.schemas.image_v1_corpus import CASES, as_bytes


@pytest.mark.parametrize(("name", "value", "expected"), CASES, ids=[c[0] for c in CASES])
def test_corpus_verdicts(
    name: str, value: object, expected: tuple[ErrorType, str | None] | None
) -> None:
    raw = as_bytes(value)  # type: ignore[arg-type]
    if expected is None:
        msg = decode_message(b"ignored-key", raw)
        assert msg.op in ("upsert", "delete")
        return
    with pytest.raises(InvalidMessage) as info:
        decode_message(None, raw)
    error_type, field = expected
    assert info.value.error_type == error_type
    assert info.value.field == field
    assert info.value.reason
    if field is not None:
        assert str(info.value).startswith(f"{field}: ")


def test_upsert_defaults() -> None:
    msg = decode_message(None, b'{"uri": "https://example.com/a.jpg"}')
    assert msg == ImageMessage(
        "upsert", message_id_for_uri("https://example.com/a.jpg"), "https://example.com/a.jpg"
    )
    assert msg.metadata is None


def test_explicit_id_and_metadata_kept() -> None:
    raw = orjson.dumps({"id": "x-1", "uri": "s3://bucket/k.png", "metadata": {"a": "b", "n": 1}})
    msg = decode_message(b"x-1", raw)
    assert (msg.id, msg.uri, msg.metadata) == ("x-1", "s3://bucket/k.png", {"a": "b", "n": 1})


def test_uri_is_kept_as_given() -> None:
    uri = "HTTPS://Example.COM:443/a/../b.jpg?z=1&a=2"
    assert decode_message(None, orjson.dumps({"uri": uri})).uri == uri


def test_tombstone_is_delete_of_key() -> None:
    assert decode_message(b"img-7", None) == ImageMessage("delete", "img-7")


@pytest.mark.parametrize("key", [b"", b"a b", b"\xff\xfe", b"x" * 513])
def test_tombstone_with_bad_key(key: bytes) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_message(key, None)
    assert (info.value.error_type, info.value.field) == (ErrorType.INVALID_MESSAGE, "key")


def test_record_without_key_and_value() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_message(None, None)
    assert info.value.error_type == ErrorType.INVALID_MESSAGE


def test_allowed_schemes_are_configurable() -> None:
    raw = b'{"uri": "gs://bucket/key.jpg"}'
    assert decode_message(None, raw, allowed_schemes={"gs"}).uri == "gs://bucket/key.jpg"
    with pytest.raises(InvalidMessage) as info:
        decode_message(None, b'{"uri": "https://e.com/a"}', allowed_schemes={"file"})
    assert info.value.error_type == ErrorType.UNSUPPORTED_SCHEME
    assert "https" in str(info.value)


def test_metadata_byte_cap() -> None:
    """The encoded-size cap (the rule the JSON Schema cannot express) is enforced here."""
    big = {f"k{i}": "é" * 100 for i in range(45)}  # short strings, many keys: > 8192 bytes
    assert len(orjson.dumps(big)) > METADATA_MAX_BYTES
    with pytest.raises(InvalidMessage) as info:
        decode_message(None, orjson.dumps({"uri": "https://e.com/a", "metadata": big}))
    assert info.value.field == "metadata"
    assert "bytes" in info.value.reason


def test_error_messages_name_field_and_reason() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_message(None, b'{"uri": "https://e.com/a", "id": "a b"}')
    assert (
        str(info.value) == "id: character ' ' not allowed (allowed: letters, digits and ._:/@+=~-)"
    )
    with pytest.raises(InvalidMessage) as info:
        decode_message(None, b'{"uri": "ftp://e.com/a"}')
    assert str(info.value) == "uri: scheme 'ftp' is not allowed (allowed: file, http, https, s3)"


def test_invalid_message_pickles() -> None:
    err = InvalidMessage(ErrorType.INVALID_MESSAGE, "uri", "bad")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.error_type, copy.field, copy.reason, str(copy)) == (
        err.error_type,
        "uri",
        "bad",
        "uri: bad",
    )


def test_constructors_validate() -> None:
    with pytest.raises(InvalidMessage):
        ImageMessage("upsert", "a", None)
    with pytest.raises(InvalidMessage):
        ImageMessage("delete", "a", metadata={"a": 1})
    with pytest.raises(InvalidMessage):
        ImageMessage("replace", "a", "https://e.com/a")  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage):
        ImageMessage.upsert("ftp://e.com/a")
    with pytest.raises(InvalidMessage):
        ImageMessage.upsert("https://e.com/a", metadata={"a": [1]})
    with pytest.raises(InvalidMessage):
        ImageMessage.delete("")
    assert ImageMessage.upsert("https://e.com/a").id == message_id_for_uri("https://e.com/a")


def test_message_is_frozen() -> None:
    msg = ImageMessage.delete("a")
    with pytest.raises(AttributeError):
        msg.id = "b"  # type: ignore[misc]


def test_encode_has_schema_op_and_id() -> None:
    doc = orjson.loads(encode_message(ImageMessage.upsert("file:///a.jpg")))
    assert doc == {
        "schema": "image.v1",
        "op": "upsert",
        "id": message_id_for_uri("file:///a.jpg"),
        "uri": "file:///a.jpg",
    }
    assert orjson.loads(encode_message(ImageMessage.delete("a"))) == {
        "schema": "image.v1",
        "op": "delete",
        "id": "a",
    }


# ---- normalization and ids ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "normalized"),
    [
        ("HTTP://Example.COM:80/a/./b/../c?b=2&a=1#frag", "http://example.com/a/c?a=1&b=2"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
        ("http://example.com:0080/x", "http://example.com/x"),
        ("https://example.com/%7e%41%2f%c3%a9", "https://example.com/~A%2F%C3%A9"),
        ("https://User:Pw@Example.com/x", "https://User:Pw@example.com/x"),
        ("https://e.com/x?", "https://e.com/x"),
        ("https://e.com/x?b&&a", "https://e.com/x?a&b"),
        ("https://e.com/a/../../b", "https://e.com/b"),
        ("http://[::1]:80/x", "http://[::1]/x"),
        ("file://localhost/a/../b.jpg", "file:///b.jpg"),
        ("FILE:///A/./B.jpg", "file:///A/B.jpg"),
        ("s3://bucket/a/../b/./c", "s3://bucket/a/../b/./c"),
    ],
)
def test_normalize_uri(uri: str, normalized: str) -> None:
    assert normalize_uri(uri) == normalized


def test_ids_of_equivalent_uris_are_equal() -> None:
    a = message_id_for_uri("HTTPS://Example.com:443/x/../a.jpg?b=1&a=2#f")
    assert a == message_id_for_uri("https://example.com/a.jpg?a=2&b=1")
    assert a != message_id_for_uri("https://example.com/a.jpg?a=2&b=2")
    assert a != message_id_for_uri("http://example.com/a.jpg?a=2&b=1")
    assert a.startswith("uri-sha256-") and len(a) == len("uri-sha256-") + 64
    assert schemas.is_valid_id(a)


def test_content_id() -> None:
    assert message_id_for_content(b"abc") == (
        "sha256-ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert schemas.is_valid_id(message_id_for_content(b""))


def test_normalize_refuses_relative() -> None:
    with pytest.raises(InvalidMessage):
        normalize_uri("/a/b.jpg")


_URI_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%"


@st.composite
def valid_uris(draw: st.DrawFn) -> str:
    """Valid URIs of the default schemes, with odd but legal parts."""
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "file", "s3"]))
    seg = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@", max_size=8)
    pct = st.builds(lambda b: f"%{b:02x}", st.integers(0, 255))
    segment = st.lists(st.one_of(seg, pct), max_size=4).map("".join)
    path = draw(st.lists(st.one_of(segment, st.sampled_from([".", ".."])), min_size=1, max_size=6))
    if scheme == "file":
        return "file:///" + "/".join(path)
    if scheme == "s3":
        bucket = draw(st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True))
        return f"s3://{bucket}/k" + "/".join(path)
    host = draw(st.from_regex(r"[A-Za-z0-9-]{1,10}(\.[A-Za-z0-9-]{1,10}){0,2}", fullmatch=True))
    port = draw(st.one_of(st.none(), st.integers(0, 65535)))
    query = draw(st.one_of(st.none(), st.lists(st.one_of(segment, pct), max_size=4).map("&".join)))
    uri = f"{scheme}://{host}" + (f":{port}" if port is not None else "") + "/" + "/".join(path)
    return uri + (f"?{query}" if query is not None else "")


@given(valid_uris())
def test_normalization_is_idempotent_and_valid(uri: str) -> None:
    msg = decode_message(None, orjson.dumps({"uri": uri}))
    once = normalize_uri(uri)
    assert normalize_uri(once) == once
    assert message_id_for_uri(once) == msg.id
    assert schemas.is_valid_id(msg.id)


_metadata = st.dictionaries(
    st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e18, max_value=1e18),
        st.text(max_size=50),
    ),
    max_size=10,
)


@given(
    uri=valid_uris(),
    msg_id=st.one_of(
        st.none(), st.from_regex(rf"[A-Za-z0-9._:/@+=~-]{{1,{MAX_ID_LENGTH}}}", fullmatch=True)
    ),
    metadata=st.one_of(st.none(), _metadata),
)
def test_encode_decode_round_trip(uri: str, msg_id: str | None, metadata: dict | None) -> None:
    msg = ImageMessage.upsert(uri, id=msg_id, metadata=metadata)
    assert decode_message(msg.id.encode(), encode_message(msg)) == msg


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(value: bytes) -> None:
    try:
        decode_message(None, value)
    except InvalidMessage as exc:
        assert exc.error_type in (
            ErrorType.INVALID_JSON,
            ErrorType.INVALID_MESSAGE,
            ErrorType.UNSUPPORTED_SCHEME,
        )


def test_version_header_round_trips_and_malformed_ones_are_ignored() -> None:
    from schemas import HEADER_VERSION, Version, format_version, version_from_headers

    version = Version(1_700_000_000_123, 3, 42)
    headers = [("trace", b"x"), (HEADER_VERSION, format_version(version))]
    assert version_from_headers(headers) == version
    assert version_from_headers([(HEADER_VERSION, "1:2:3")]) == Version(1, 2, 3)
    for bad in (b"", b"1:2", b"a:b:c", b"-1:0:0", b"1:2:3:4"):
        assert version_from_headers([(HEADER_VERSION, bad)]) is None
    assert version_from_headers(None) is None and version_from_headers([]) is None
    assert Version(5, 0, 9) > Version(5, 0, 8) > Version(4, 9, 100), "timestamp first"

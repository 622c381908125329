"""The JSON Schema for other languages' producers agrees with the Python validator."""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from schemas import InvalidMessage, decode_message
from schemas import message as m
from tests.schemas.image_v1_corpus import CASES, as_bytes

VALIDATOR = jsonschema.Draft202012Validator(m.json_schema())


def schema_accepts(raw: bytes) -> bool:
    """The JSON Schema's verdict on a record value (a value that is not JSON is refused)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return VALIDATOR.is_valid(doc)


def python_accepts(raw: bytes) -> bool:
    try:
        decode_message(None, raw)
    except InvalidMessage:
        return False
    return True


def beyond_byte_cap(raw: bytes) -> bool:
    """The one rule the JSON Schema cannot express: encoded metadata size."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    return isinstance(meta, dict) and len(orjson.dumps(meta)) > m.METADATA_MAX_BYTES


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(m.json_schema())
    assert m.json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_file_matches_code_constants() -> None:
    """The file is hand-kept; this pins its patterns and limits to the validator's."""
    schema = m.json_schema()
    props = schema["properties"]
    patterns = m.json_schema_patterns()
    assert props["id"]["pattern"] == patterns["id"]
    assert props["uri"]["pattern"] == patterns["uri"]
    assert props["uri"]["maxLength"] == m.MAX_URI_LENGTH
    meta = props["metadata"]
    assert meta["propertyNames"]["pattern"] == patterns["metadata_key"]
    assert meta["maxProperties"] == m.METADATA_MAX_KEYS
    value = meta["additionalProperties"]
    assert value["maxLength"] == m.METADATA_MAX_STRING_LENGTH
    assert (value["minimum"], value["maximum"]) == (m.METADATA_MIN_NUMBER, m.METADATA_MAX_NUMBER)
    assert str(m.METADATA_MAX_BYTES) in meta["description"]
    assert set(props) == {"schema", "op", "id", "uri", "metadata"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(("name", "value", "expected"), CASES, ids=[c[0] for c in CASES])
def test_corpus_agreement(name: str, value: Any, expected: object) -> None:
    raw = as_bytes(value)
    assert python_accepts(raw) is (expected is None)
    assert schema_accepts(raw) is (expected is None)


def test_byte_cap_is_the_only_documented_difference() -> None:
    meta = {f"k{i}": "é" * 100 for i in range(45)}
    raw = orjson.dumps({"uri": "https://e.com/a", "metadata": meta})
    assert schema_accepts(raw)
    assert not python_accepts(raw)


# ---- generated documents: valid-looking parts mixed with broken ones -----------------------

_printable = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_ascii = st.text(alphabet=string.printable, max_size=16)


@st.composite
def uris(draw: st.DrawFn) -> str:
    scheme = draw(
        st.sampled_from(
            ["http", "https", "HtTpS", "file", "s3", "S3", "ftp", "gs", "data", "", "h"]
        )
    )
    sep = draw(st.sampled_from(["://", ":", ":///", "//", "://localhost/"]))
    userinfo = draw(st.sampled_from(["", "u@", "u:p@", "a@b@", "%41@"]))
    host = draw(
        st.one_of(
            st.sampled_from(
                ["example.com", "EXAMPLE.com", "[::1]", "[zz]", "my-bucket", "ab", "a b", ""]
            ),
            st.text(alphabet=string.ascii_letters + string.digits + ".-_~%[]:", max_size=10),
        )
    )
    port = draw(st.one_of(st.just(""), st.integers(0, 99999).map(lambda p: f":{p}"), st.just(":")))
    path = draw(
        st.lists(
            st.one_of(
                st.text(alphabet=string.ascii_letters + "-._~!$&'()*+,;=:@", max_size=6),
                st.sampled_from(["%41", "%zz", "%2", "..", ".", "é", " ", "\n", "<", "?", "#"]),
            ),
            max_size=4,
        ).map("/".join)
    )
    tail = draw(st.sampled_from(["", "?a=1&b=2", "?", "#f", "?x#y", "\n"]))
    return f"{scheme}{sep}{userinfo}{host}{port}/{path}{tail}"


_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:/@+=~-]{1,20}", fullmatch=True),
    st.sampled_from(["", "a" * 512, "a" * 513, "a\n", "é", "a b"]),
    _ascii,
    st.integers(),
)
_meta_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _printable,
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1020, max_size=1030),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_meta_keys = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
    _ascii,
    st.sampled_from(["k" * 65, "k\n"]),
)
_metadata = st.one_of(
    st.dictionaries(_meta_keys, _meta_values, max_size=8),
    st.dictionaries(
        st.from_regex(r"k[0-9]{1,3}", fullmatch=True), st.integers(0, 9), min_size=60, max_size=70
    ),
    st.lists(st.integers(), max_size=2),
    _ascii,
    st.none(),
)
_field_values: dict[str, st.SearchStrategy[Any]] = {
    "schema": st.sampled_from(["image.v1", "image.v2", None, 1, ""]),
    "op": st.sampled_from(["upsert", "delete", None, "UPSERT", "remove", 0, True]),
    "id": _ids,
    "uri": st.one_of(uris(), st.none(), st.integers()),
    "metadata": _metadata,
    "extra": st.integers(),
}


_good_uris = st.one_of(
    st.from_regex(
        r"https?://[a-z0-9.-]{1,12}(:[0-9]{1,5})?(/[A-Za-z0-9._~%-]{0,8}){0,3}", fullmatch=True
    ),
    st.from_regex(r"file:///[A-Za-z0-9._~-]{1,8}(/[A-Za-z0-9._~%-]{1,8}){0,3}", fullmatch=True),
    st.from_regex(r"s3://[a-z0-9][a-z0-9.-]{1,8}[a-z0-9]/[A-Za-z0-9._~/%-]{1,12}", fullmatch=True),
)
_good_metadata = st.dictionaries(
    st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(-1e18, 1e18),
        _printable,
    ),
    max_size=6,
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document, then perhaps one field replaced by an arbitrary value."""
    if draw(st.booleans()):
        doc: dict[str, Any] = {
            "op": "delete",
            "id": draw(_ids.filter(lambda v: isinstance(v, str))),
        }
    else:
        doc = {"uri": draw(_good_uris)}
        if draw(st.booleans()):
            doc["metadata"] = draw(_good_metadata)
    for name in draw(st.sets(st.sampled_from(["schema", "op", "id"]), max_size=2)):
        doc.setdefault(
            name,
            draw(
                st.sampled_from({"schema": ["image.v1", None], "op": [None], "id": ["x-1"]}[name])
            ),
        )
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(_field_values)))
        doc[name] = draw(_field_values[name])
    return doc


@st.composite
def documents(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(near_valid())
    if draw(st.integers(0, 20)) == 0:
        return draw(
            st.one_of(st.lists(st.integers(), max_size=2), _ascii, st.none(), st.integers())
        )
    fields = draw(st.sets(st.sampled_from(sorted(_field_values)), max_size=6))
    if draw(st.booleans()):
        fields.add("uri")
    return {name: draw(_field_values[name]) for name in fields}


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_agreement(doc: Any) -> None:
    try:
        raw = orjson.dumps(doc)
    except (orjson.JSONEncodeError, TypeError):
        return  # e.g. integers beyond 64 bits: not representable as a record at all
    expected = schema_accepts(raw) and not beyond_byte_cap(raw)
    assert python_accepts(raw) is expected, raw


def test_generator_reaches_both_verdicts() -> None:
    """The generated agreement test is only meaningful if it sees valid and invalid documents."""

    def verdict(doc: Any) -> bool | None:
        try:
            return python_accepts(orjson.dumps(doc))
        except (orjson.JSONEncodeError, TypeError):
            return None

    for want in (True, False):
        find(
            documents(),
            lambda doc, want=want: verdict(doc) is want,
            settings=settings(max_examples=5000, database=None),
        )


_NODE_PROBE = """
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = input.cases.map(([name, text]) => new RegExp(input.patterns[name], "u").test(text));
process.stdout.write(JSON.stringify(out));
"""


def _node() -> str:
    """The node binary; under CI (``CI=true``) its absence fails instead of skipping."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("node is required for the ECMA-262 check and is not on PATH under CI")
        pytest.skip("node is not installed")
    return node


def test_patterns_behave_the_same_in_ecma262() -> None:
    """Other languages use ECMA-262 regular expressions (unicode mode): same verdicts as Python."""
    node = _node()
    schema = m.json_schema()["properties"]
    patterns = {
        "id": schema["id"]["pattern"],
        "uri": schema["uri"]["pattern"],
        "key": schema["metadata"]["propertyNames"]["pattern"],
    }
    cases: list[tuple[str, str]] = []
    for _name, value, _expected in CASES:
        if isinstance(value, dict):
            for field in ("id", "uri"):
                if isinstance(value.get(field), str):
                    cases.append((field, value[field]))
            if isinstance(value.get("metadata"), dict):
                cases += [("key", k) for k in value["metadata"]]
    cases += [
        ("uri", "https://e.com/a\n"),
        ("id", "a\n"),
        ("key", "k\n"),
        ("uri", "https://e.com/\u00e9"),
    ]
    proc = subprocess.run(
        [node, "-e", _NODE_PROBE],
        input=orjson.dumps({"patterns": patterns, "cases": cases}),
        capture_output=True,
        timeout=60,
        check=True,
    )
    ecma = orjson.loads(proc.stdout)
    python = [re.search(patterns[name], text) is not None for name, text in cases]
    assert ecma == python
    assert any(python) and not all(python)

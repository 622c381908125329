"""Dead-letter headers: building, parsing, redaction and the documented list of reasons."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import (
    ErrorType,
    InvalidDeadLetter,
    Stage,
    dead_letter_headers,
    parse_dead_letter_headers,
)
from schemas.deadletter import (
    DEAD_LETTER_HEADERS,
    MAX_ERROR_MESSAGE_BYTES,
    format_time,
    redrive_count,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas.md"
WHEN = datetime(2025, 1, 31, 12, 30, 45, 123456, tzinfo=UTC)


def build(**overrides: object) -> list[tuple[str, bytes]]:
    args: dict[str, object] = {
        "stage": Stage.FETCH,
        "error_type": ErrorType.NOT_FOUND,
        "message": "HTTP 404",
        "source_topic": "images",
        "source_partition": 3,
        "source_offset": 1234,
        "time": WHEN,
        "redrive_count": 1,
    }
    args.update(overrides)
    return dead_letter_headers(**args)  # type: ignore[arg-type]


def test_headers_exact() -> None:
    assert build() == [
        ("error.stage", b"fetch"),
        ("error.type", b"not_found"),
        ("error.message", b"HTTP 404"),
        ("source.topic", b"images"),
        ("source.partition", b"3"),
        ("source.offset", b"1234"),
        ("error.time", b"2025-01-31T12:30:45.123Z"),
        ("redrive.count", b"1"),
    ]


def test_round_trip() -> None:
    parsed = parse_dead_letter_headers(build())
    assert parsed.stage is Stage.FETCH
    assert parsed.error_type is ErrorType.NOT_FOUND
    assert (parsed.message, parsed.source_topic, parsed.source_partition, parsed.source_offset) == (
        "HTTP 404",
        "images",
        3,
        1234,
    )
    assert parsed.time == WHEN.replace(microsecond=123000)
    assert parsed.redrive_count == 1


@given(
    stage=st.sampled_from(Stage),
    error_type=st.sampled_from(ErrorType),
    message=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300),
    topic=st.from_regex(r"[A-Za-z0-9._-]{1,249}", fullmatch=True),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    when=st.datetimes(timezones=st.just(UTC)),
    count=st.integers(0, 1000),
)
def test_round_trip_generated(
    stage: Stage,
    error_type: ErrorType,
    message: str,
    topic: str,
    partition: int,
    offset: int,
    when: datetime,
    count: int,
) -> None:
    headers = dead_letter_headers(
        stage=stage,
        error_type=error_type,
        message=message,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        time=when,
        redrive_count=count,
    )
    assert [name for name, _ in headers] == list(DEAD_LETTER_HEADERS)
    parsed = parse_dead_letter_headers(headers)
    assert (parsed.stage, parsed.error_type, parsed.source_topic) == (stage, error_type, topic)
    assert (parsed.source_partition, parsed.source_offset, parsed.redrive_count) == (
        partition,
        offset,
        count,
    )
    assert abs(parsed.time - when) < timedelta(milliseconds=1)
    assert len(parsed.message.encode()) <= MAX_ERROR_MESSAGE_BYTES


def test_message_is_redacted_and_bounded() -> None:
    secret_url = "https://user:hunter2@bucket.example.com/a.jpg?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
    text = f"GET {secret_url} failed: 403 " + "x" * 5000
    value = dict(build(message=text))["error.message"]
    assert len(value) <= MAX_ERROR_MESSAGE_BYTES
    decoded = value.decode()
    assert decoded.startswith("GET https://bucket.example.com/a.jpg failed: 403 ")
    assert decoded.endswith("…")
    for secret in ("hunter2", "deadbeef", "AKIA", "Signature"):
        assert secret not in decoded


def test_time_is_utc_iso8601() -> None:
    plus_two = timezone(timedelta(hours=2))
    value = dict(build(time=datetime(2025, 6, 1, 14, 0, tzinfo=plus_two)))["error.time"]
    assert value == b"2025-06-01T12:00:00.000Z"
    assert datetime.fromisoformat(value.decode()) == datetime(2025, 6, 1, 12, tzinfo=UTC)
    with pytest.raises(ValueError):
        format_time(datetime(2025, 1, 1))  # naive: refused


def test_default_time_is_now() -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    parsed = parse_dead_letter_headers(build(time=None))
    assert parsed.time >= before.replace(microsecond=0)


def test_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError):
        build(redrive_count=-1)
    with pytest.raises(ValueError):
        build(source_offset=-1)


def test_parse_tolerates_other_headers_and_str_values() -> None:
    headers: list[tuple[str, bytes | str | None]] = [("trace", b"x"), ("empty", None)]
    headers += [(k, v.decode()) for k, v in build()]
    headers.append(("redrive.count", b"2"))  # a later duplicate wins
    parsed = parse_dead_letter_headers(headers)
    assert parsed.redrive_count == 2


def test_parse_keeps_unknown_reason_as_text() -> None:
    headers = [(k, b"future_reason" if k == "error.type" else v) for k, v in build()]
    assert parse_dead_letter_headers(headers).error_type == "future_reason"


@pytest.mark.parametrize("missing", DEAD_LETTER_HEADERS)
def test_parse_missing_header(missing: str) -> None:
    with pytest.raises(InvalidDeadLetter, match=re.escape(missing)):
        parse_dead_letter_headers([(k, v) for k, v in build() if k != missing])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("source.offset", b"x"),
        ("source.partition", b""),
        ("redrive.count", b"1.5"),
        ("error.time", b"yesterday"),
    ],
)
def test_parse_malformed(name: str, value: bytes) -> None:
    with pytest.raises(InvalidDeadLetter):
        parse_dead_letter_headers([(k, value if k == name else v) for k, v in build()])


def test_parse_none() -> None:
    with pytest.raises(InvalidDeadLetter):
        parse_dead_letter_headers(None)


@pytest.mark.parametrize(
    ("headers", "count"),
    [
        (None, 0),
        ([], 0),
        ([("redrive.count", b"3")], 3),
        ([("redrive.count", b"x")], 0),
        ([("redrive.count", b"-2")], 0),
    ],
)
def test_redrive_count(headers: list[tuple[str, bytes]] | None, count: int) -> None:
    assert redrive_count(headers) == count


def test_every_reason_and_stage_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for member in [*ErrorType, *Stage]:
        assert f"`{member.value}`" in text, member
    for header in DEAD_LETTER_HEADERS:
        assert f"`{header}`" in text, header


def test_enum_values_are_stable() -> None:
    """Other components and stored dead letters rely on these exact strings."""
    assert [s.value for s in Stage] == [
        "parse",
        "fetch",
        "decode",
        "preprocess",
        "infer",
        "normalize",
        "write",
    ]
    assert ErrorType("invalid_json") is ErrorType.INVALID_JSON
    assert len(ErrorType) == 20

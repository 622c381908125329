"""Redaction of URIs and free text: presigned URLs and credentials never leave the process."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import redact_text, redact_uri


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("https://example.com/a.jpg", "https://example.com/a.jpg"),
        ("https://user:pw@example.com/a.jpg", "https://example.com/a.jpg"),
        (
            "https://example.com/a.jpg?X-Amz-Signature=abc&X-Amz-Credential=k",
            "https://example.com/a.jpg",
        ),
        ("https://example.com/a.jpg#access_token=abc", "https://example.com/a.jpg"),
        ("https://u:p@[::1]:8080/a?b", "https://[::1]:8080/a"),
        ("https://u@p@example.com/x", "https://example.com/x"),
        ("https://example.com/path@with/at", "https://example.com/path@with/at"),
        ("s3://bucket/key.png?versionId=3", "s3://bucket/key.png"),
        ("file:///data/a.jpg", "file:///data/a.jpg"),
        ("https://token@example.com", "https://example.com"),
        ("not a uri ?secret=1", "not a uri "),
        ("", ""),
    ],
)
def test_redact_uri(uri: str, redacted: str) -> None:
    assert redact_uri(uri) == redacted


@given(st.text())
def test_redact_uri_never_raises_and_drops_query(text: str) -> None:
    out = redact_uri(text)
    assert "?" not in out and "#" not in out


def test_redact_text_urls_and_secret_params() -> None:
    text = (
        "fetch https://AKIA:s3cr3t@b.example/k.jpg?X-Amz-Signature=ff00 failed; "
        "retry with password=hunter2 api_key=xyz&sig=abc, status=404"
    )
    out = redact_text(text)
    assert out == (
        "fetch https://b.example/k.jpg failed; retry with password=[redacted] "
        "api_key=[redacted]&sig=[redacted], status=404"
    )


def test_redact_text_cut_keeps_utf8_and_bound() -> None:
    out = redact_text("é" * 2000, max_bytes=101)
    assert len(out.encode()) <= 101
    assert out.endswith("…")
    assert out[:-1] == "é" * len(out[:-1])


def test_redact_before_cut() -> None:
    """A URL cut in half by the bound must not leak its query string."""
    text = "x" * 60 + " https://e.com/a?X-Amz-Signature=" + "f" * 200
    out = redact_text(text, max_bytes=100)
    assert "Signature" not in out and "fff" not in out


@given(st.text(), st.integers(8, 300))
def test_redact_text_bound(text: str, max_bytes: int) -> None:
    assert len(redact_text(text, max_bytes=max_bytes).encode("utf-8", "surrogatepass")) <= max_bytes

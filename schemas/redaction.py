"""Redaction of URIs and free text before they reach logs, metrics or dead-letter headers.

Presigned URLs carry credentials in their query string, and URIs may carry ``user:password@``;
neither may leave the process.
"""

from __future__ import annotations

import re
from typing import Final

#: ``error.message`` and similar texts are cut to this many UTF-8 bytes (after redaction).
MAX_ERROR_MESSAGE_BYTES: Final = 1024

_URL_IN_TEXT_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_SECRET_PARAM_RE: Final = re.compile(
    r"(?i)\b([\w.\-]*(?:signature|token|secret|password|passwd|credential|api[_-]?key|sig)"
    r"[\w.\-]*)=([^&\s'\",;]+)"
)
_URL_PARTS_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/]*)(.*)", re.S)


def redact_uri(uri: str) -> str:
    """``uri`` without userinfo, query string or fragment. Never raises.

    ``https://u:p@host/a.jpg?X-Amz-Signature=...`` becomes ``https://host/a.jpg``.
    """
    cut = re.split(r"[?#]", uri, maxsplit=1)[0]
    m = _URL_PARTS_RE.fullmatch(cut)
    if m is None:
        return cut
    scheme, authority, rest = m.groups()
    return scheme + authority.rpartition("@")[2] + rest


def redact_text(text: str, max_bytes: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """``text`` safe for a header or a log line: URLs in it lose userinfo, query and fragment,
    secret-looking ``name=value`` pairs lose their value, and the result is cut to ``max_bytes``
    UTF-8 bytes (ending with an ellipsis when cut).

    Redaction happens before the cut, so a cut can never expose half a redacted URL.
    """
    text = _URL_IN_TEXT_RE.sub(lambda m: redact_uri(m.group(0)), text)
    text = _SECRET_PARAM_RE.sub(lambda m: f"{m.group(1)}=[redacted]", text)
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    ellipsis = "…"
    keep = max(0, max_bytes - len(ellipsis.encode("utf-8")))
    return raw[:keep].decode("utf-8", "ignore") + ellipsis

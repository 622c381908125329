"""A token provider for the ``kafka_oauth_cb`` tests: records its calls, returns a fixed token."""

from __future__ import annotations

import time

CALLS: list[str] = []


def token(config: str) -> tuple[str, float]:
    CALLS.append(config)
    return "header.payload.signature", time.time() + 300

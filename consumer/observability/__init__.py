"""Prometheus metrics, the ``/livez`` ``/readyz`` ``/metrics`` server and the structlog set-up."""

from __future__ import annotations

from consumer.observability.exceptions import MetricsServerFatalError, ObservabilityError
from consumer.observability.health import HealthServer, ReadinessCheck
from consumer.observability.logging import (
    LogFormat,
    bind_message_context,
    clear_message_context,
    configure_logging,
    get_logger,
    message_context,
    redact_secrets,
    redact_text,
)
from consumer.observability.metrics import (
    Metrics,
    Outcome,
    RetryOperation,
)
from schemas.deadletter import Stage

__all__ = [
    "HealthServer",
    "LogFormat",
    "Metrics",
    "MetricsServerFatalError",
    "ObservabilityError",
    "Outcome",
    "ReadinessCheck",
    "RetryOperation",
    "Stage",
    "bind_message_context",
    "clear_message_context",
    "configure_logging",
    "get_logger",
    "message_context",
    "redact_secrets",
    "redact_text",
]

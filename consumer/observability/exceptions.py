"""Errors raised by the observability package, named after what the caller should do."""

from __future__ import annotations


class ObservabilityError(Exception):
    """Base class for errors of the observability package."""


class MetricsServerFatalError(ObservabilityError):
    """The metrics/health server cannot start (port taken, bad address): stop the service.

    Kubernetes probes and Prometheus depend on this port, so running without it is not an option.
    """


class InvalidLabelError(ObservabilityError, ValueError):
    """A metric label value outside its documented set: a programming error, fix the caller."""

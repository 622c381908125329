"""Exceptions of the ``schemas`` package, named after what the caller should do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.deadletter import ErrorType


class InvalidMessage(ValueError):
    """A record that is not a valid ``image.v1`` message: dead-letter it, never retry it.

    ``error_type`` is the dead-letter reason (``invalid_json``, ``invalid_message`` or
    ``unsupported_scheme``), ``field`` the offending top-level field (``None`` when the record as
    a whole is wrong) and ``reason`` a short human explanation.
    """

    def __init__(self, error_type: ErrorType, field: str | None, reason: str) -> None:
        self.error_type = error_type
        self.field = field
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    def __reduce__(self) -> tuple[type[InvalidMessage], tuple[ErrorType, str | None, str]]:
        return (type(self), (self.error_type, self.field, self.reason))


class InvalidDeadLetter(ValueError):
    """Dead-letter headers that are missing or malformed: report the record, skip it."""

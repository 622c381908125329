"""Errors of the offset tracker; both mean a bug in the caller, never a bad message."""


class OffsetOrderError(ValueError):
    """An offset was delivered that is not greater than the last one delivered for its partition."""


class UnknownOffsetError(KeyError):
    """An offset was acknowledged that was never delivered (or was already dropped)."""

"""Errors of the model server, named after what the caller should do.

Every one of them is fatal for the server: it cannot serve without valid weights.
"""

from __future__ import annotations


class FatalWeightsError(Exception):
    """The weights file is unreadable, malformed or not the expected network: stop, do not retry."""


class UnsafeWeightsError(FatalWeightsError):
    """The weights pickle names a global outside the allow-list: refused without executing it."""

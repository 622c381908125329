"""Errors of the preprocessing stage."""


class PreprocessThreadError(RuntimeError):
    """JAX preprocessing was called off the main thread: a bug, never retried."""

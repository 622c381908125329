"""Inference errors, named after what the caller should do."""


class InferenceUnavailableError(RuntimeError):
    """Triton is unreachable, overloaded or timed out: retry with backoff, commit nothing."""


class InferenceRejectedError(ValueError):
    """Triton refused the input itself (a bad value): dead-letter the message, do not retry."""


class ModelMismatchError(RuntimeError):
    """The served model does not match what the consumer or the collection expects: fatal."""

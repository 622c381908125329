"""Inference errors, named after what the caller should do."""


class InferenceUnavailableError(RuntimeError):
    """Triton is unreachable, overloaded or timed out: retry with backoff, commit nothing."""


class InferenceTLSError(InferenceUnavailableError):
    """TLS with Triton failed (an untrusted certificate, a host name it does not name, a client
    certificate required or refused, an unreadable TLS file): waiting does not mend it, so at
    start-up it is fatal at once; during a run it is retried like any other unavailability."""


class InferenceRejectedError(ValueError):
    """Triton refused the input itself (a bad value): dead-letter the message, do not retry."""


class ModelMismatchError(RuntimeError):
    """The served model does not match what the consumer or the collection expects: fatal."""

"""Milvus errors, named after what the caller should do."""


class SinkUnavailableError(RuntimeError):
    """Milvus is unreachable or failing: retry with backoff, commit nothing past the failure."""


class CollectionMismatchError(RuntimeError):
    """The collection exists with another dimension, model or preprocessing: fatal at start-up."""

"""Exceptions of the ``producer`` package, named after what the caller should do."""

from __future__ import annotations


class ProducerError(Exception):
    """Base of the producer's errors; the CLI prints it and exits non-zero."""


class InvalidInput(ProducerError):
    """An input line, URI, option or file is wrong: fix the input; nothing was sent for it."""


class SourceUnavailable(ProducerError):
    """A directory or object store to scan cannot be listed or read: fix access, then rerun."""


class TopicConflict(ProducerError):
    """A topic exists with settings that differ from those asked for: fatal, choose another."""


class KafkaUnavailable(ProducerError):
    """The brokers did not answer in time: retry when Kafka is reachable."""

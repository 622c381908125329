"""Per-partition state of a bounded run across revocations: what 'reached the end' means."""

from __future__ import annotations

from confluent_kafka import KafkaError

from consumer.engine.loop import Engine
from consumer.settings import Settings

KEY = ("t", 0)


class _Eof:
    """A partition-EOF event as ``consume()`` returns it."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> KafkaError:
        return KafkaError(KafkaError._PARTITION_EOF)

    def topic(self) -> str:
        return KEY[0]

    def partition(self) -> int:
        return KEY[1]

    def offset(self) -> int:
        return self._offset


def _bounded_engine() -> Engine:
    engine = Engine(Settings(topic="t", group="g", collection="c", until_end=True))
    engine._ends[KEY] = 5
    return engine


def test_an_eof_of_a_partition_not_assigned_does_not_mark_it_reached() -> None:
    """A late EOF event of a partition given away must not count it as finished (before: it did,
    so a bounded run could end without finishing a partition given back to it)."""
    engine = _bounded_engine()
    engine._handle_batch([_Eof(5)])
    assert KEY not in engine._reached
    engine._assigned.add(KEY)
    engine._handle_batch([_Eof(5)])
    assert KEY in engine._reached


def test_a_revoked_partition_is_no_longer_reached() -> None:
    """Revoked (or lost) and given back, a reached partition is read again from the group's
    commit up to its end (before: it stayed reached, and the run could exit 0 without it)."""
    engine = _bounded_engine()
    engine._assigned.add(KEY)
    engine._handle_batch([_Eof(5)])
    assert KEY in engine._reached
    engine._forget([KEY])
    assert KEY not in engine._reached

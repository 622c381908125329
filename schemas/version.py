"""The version of a message: one total order for "latest wins", used everywhere.

A message's version is ``(record timestamp, partition, offset)`` of its Kafka record. Two messages
for one id are ordered by timestamp first; records with the same millisecond (common: a producer
batch, or a LogAppendTime topic, gives many records one timestamp) are ordered by partition and
then offset, so the later record of one partition wins. The in-flight registry keeps the message
with the highest version per id and the stale-write guard writes only a strictly higher version
than the row already stored: an equal version is the same message, read again by a replay.
"""

from __future__ import annotations

from typing import NamedTuple


class Version(NamedTuple):
    """A message's place in the latest-wins order (compares as a tuple)."""

    ts: int
    partition: int
    offset: int

    @classmethod
    def of_row(cls, row: dict[str, object]) -> Version:
        """The version a stored row was written at (its ``kafka_*`` fields)."""
        return cls(
            _as_int(row["kafka_ts"]), _as_int(row["kafka_partition"]), _as_int(row["kafka_offset"])
        )


def _as_int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str | float):
        return int(value)
    raise TypeError(f"not an integer: {value!r}")

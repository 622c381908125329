"""The version of a message: one total order for "latest wins", used everywhere.

A message's version is ``(record timestamp, partition, offset)`` of its Kafka record. Two messages
for one id are ordered by timestamp first; records with the same millisecond (common: a producer
batch, or a LogAppendTime topic, gives many records one timestamp) are ordered by partition and
then offset, so the later record of one partition wins. The in-flight registry keeps the message
with the highest version per id and the stale-write guard writes only a strictly higher version
than the row already stored: an equal version is the same message, read again by a replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

#: The header that carries a message's version through dead-lettering and redrive, as
#: ``"<timestamp ms>:<partition>:<offset>"`` of the record as first produced. Without it a
#: record's version is its own (timestamp, partition, offset): on a LogAppendTime topic a
#: redriven record is stamped anew by the broker, so only the header keeps its age.
HEADER_VERSION: Final = "message.version"


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


def format_version(version: Version) -> bytes:
    """The ``message.version`` header value of ``version``."""
    return f"{version.ts}:{version.partition}:{version.offset}".encode()


def version_from_headers(
    headers: Sequence[tuple[str, bytes | str | None]] | None,
) -> Version | None:
    """The version a ``message.version`` header carries, or None (absent or malformed)."""
    for key, value in headers or ():
        if key != HEADER_VERSION or value is None:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        parts = text.split(":")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return Version(int(parts[0]), int(parts[1]), int(parts[2]))
        return None
    return None


def _as_int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str | float):
        return int(value)
    raise TypeError(f"not an integer: {value!r}")

"""Contiguous-watermark offset tracking.

Messages of a partition are delivered in increasing offset order but finish (written to Milvus or
acknowledged by the dead-letter topic) in any order. The committable position of a partition is
the lowest delivered offset that is not finished yet, or one past the last delivered offset when
all are finished. Offsets may have gaps (compacted topics, transaction markers): only delivered
offsets count.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from consumer.offsets.exceptions import OffsetOrderError, UnknownOffsetError

PartitionKey = tuple[str, int]
"""A (topic, partition) pair."""


@dataclass
class _Partition:
    pending: deque[int] = field(default_factory=deque)  # delivered, in order, not yet retired
    finished: set[int] = field(default_factory=set)  # finished but not yet at the head
    last_delivered: int = -1
    committed: int | None = None  # last position committed (next offset to read)

    def position(self) -> int | None:
        """Next offset to commit, or None when nothing was delivered yet."""
        if self.pending:
            return self.pending[0]
        if self.last_delivered >= 0:
            return self.last_delivered + 1
        return None


class OffsetTracker:
    """Tracks delivered and finished offsets per partition; not thread-safe (main thread only)."""

    def __init__(self) -> None:
        self._partitions: dict[PartitionKey, _Partition] = {}

    def delivered(self, key: PartitionKey, offset: int) -> None:
        """Record that ``offset`` entered the pipeline; offsets must increase per partition."""
        part = self._partitions.setdefault(key, _Partition())
        if offset <= part.last_delivered:
            raise OffsetOrderError(f"{key}: offset {offset} delivered after {part.last_delivered}")
        part.last_delivered = offset
        part.pending.append(offset)

    def skip_to(self, key: PartitionKey, offset: int) -> bool:
        """Offsets below ``offset`` that were never delivered (transaction markers, records of
        aborted transactions) need no work: when nothing of the partition is pending, its
        position moves to ``offset``. Returns whether it moved."""
        part = self._partitions.setdefault(key, _Partition())
        if part.pending or offset <= part.last_delivered + 1:
            return False
        part.last_delivered = offset - 1
        return True

    def finished(self, key: PartitionKey, offset: int) -> None:
        """Record that ``offset`` is durably handled (written or dead-lettered)."""
        part = self._partitions.get(key)
        if part is None or offset > part.last_delivered or offset in part.finished:
            raise UnknownOffsetError(f"{key}: offset {offset} was not delivered or is finished")
        if not part.pending or offset < part.pending[0]:
            raise UnknownOffsetError(f"{key}: offset {offset} was not delivered or is finished")
        part.finished.add(offset)
        while part.pending and part.pending[0] in part.finished:
            part.finished.discard(part.pending.popleft())

    def in_flight(self, key: PartitionKey | None = None) -> int:
        """Delivered messages not finished yet, for one partition or all."""
        if key is not None:
            part = self._partitions.get(key)
            return 0 if part is None else len(part.pending) - len(part.finished)
        return sum(len(p.pending) - len(p.finished) for p in self._partitions.values())

    def position(self, key: PartitionKey) -> int | None:
        """The committable position of a partition (next offset to read), or None."""
        part = self._partitions.get(key)
        return None if part is None else part.position()

    def committable(self, keys: list[PartitionKey] | None = None) -> dict[PartitionKey, int]:
        """Positions that moved past the last committed one, for the given partitions or all."""
        out: dict[PartitionKey, int] = {}
        for key in self._partitions if keys is None else keys:
            part = self._partitions.get(key)
            if part is None:
                continue
            pos = part.position()
            if pos is not None and (part.committed is None or pos > part.committed):
                out[key] = pos
        return out

    def mark_committed(self, positions: dict[PartitionKey, int]) -> None:
        """Record positions the broker acknowledged as committed."""
        for key, pos in positions.items():
            part = self._partitions.get(key)
            if part is not None and (part.committed is None or pos > part.committed):
                part.committed = pos

    def committed(self, key: PartitionKey) -> int | None:
        """The last position recorded as committed for a partition."""
        part = self._partitions.get(key)
        return None if part is None else part.committed

    def uncommitted(self, key: PartitionKey) -> int:
        """Finished messages whose offsets are not committed yet (the written-vs-committed gap)."""
        part = self._partitions.get(key)
        if part is None:
            return 0
        pos = part.position()
        if pos is None:
            return 0
        base = (
            part.committed
            if part.committed is not None
            else (part.pending[0] if part.pending else pos)
        )
        return max(0, pos - base)

    def partitions(self) -> list[PartitionKey]:
        """Partitions with any state."""
        return list(self._partitions)

    def drop(self, keys: list[PartitionKey]) -> None:
        """Forget partitions (revoked or lost): their in-flight results will be ignored."""
        for key in keys:
            self._partitions.pop(key, None)

    def knows(self, key: PartitionKey, offset: int) -> bool:
        """Whether ``offset`` is delivered and still pending (results of dropped ones are stale)."""
        part = self._partitions.get(key)
        return (
            part is not None
            and bool(part.pending)
            and part.pending[0] <= offset <= part.last_delivered
            and offset not in part.finished
        )

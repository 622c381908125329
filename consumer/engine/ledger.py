"""The in-flight ledger: every message between its poll and its retirement.

It owns the raw records (enough to dead-letter a message), the offset tracker (what may be
committed), the latest-version registry (which message of an id may be written) and the
assignment generations (which owner of a partition a piece of work belongs to). A message is
*admitted* when polled, *retired* when durably handled (written, deleted, skipped or
dead-lettered), and *forgotten* with its partition when the partition is revoked or lost.

The main thread changes it; the writer thread asks ``is_latest`` (the registry and the generations
are thread-safe; the raw records and the tracker are touched by the main thread only).
"""

from __future__ import annotations

from dataclasses import dataclass

from consumer.engine.events import PartitionKey, Ref
from consumer.engine.generations import Generations
from consumer.engine.registry import LatestRegistry
from consumer.offsets import OffsetOrderError, OffsetTracker
from consumer.sink import WriteOp
from schemas import Version


@dataclass(slots=True)
class RawRecord:
    """What the main thread keeps per in-flight message: enough to dead-letter it."""

    key: bytes | None
    value: bytes | None
    redrive_count: int
    id: str | None
    version: Version


class InFlightLedger:
    def __init__(self) -> None:
        self.tracker = OffsetTracker()  # read by the committer; changed only through the ledger
        self.registry = LatestRegistry()
        self.generations = Generations()
        self._raw: dict[Ref, RawRecord] = {}

    # --- generations -----------------------------------------------------------------------
    def advance(self, key: PartitionKey) -> int:
        """A new owner of ``key`` (assigned, revoked or lost): older work is no longer current."""
        return self.generations.advance(key)

    # --- admission -------------------------------------------------------------------------
    def admit(self, key: PartitionKey, offset: int) -> Ref | None:
        """The message at ``offset`` was polled; its reference, or None for a duplicate."""
        try:
            self.tracker.delivered(key, offset)
        except OffsetOrderError:
            return None
        return Ref(self.generations.current(key), key[0], key[1], offset)

    def record(self, ref: Ref, raw: RawRecord) -> None:
        self._raw[ref] = raw

    def register(self, ref: Ref, id_: str) -> None:
        """The message's id is known: it competes for its id by version from now on."""
        raw = self._raw[ref]
        raw.id = id_
        self.registry.register(id_, ref, raw.version)

    def raw(self, ref: Ref) -> RawRecord | None:
        return self._raw.get(ref)

    def version(self, ref: Ref) -> Version:
        return self._raw[ref].version

    # --- questions -------------------------------------------------------------------------
    def is_current(self, ref: Ref) -> bool:
        """Whether ``ref`` is still this owner's, not yet retired."""
        return self.generations.is_current(ref.key, ref.gen) and self.tracker.knows(
            ref.key, ref.offset
        )

    def is_latest(self, op: WriteOp) -> bool:
        """For the writer (its thread): the op is the current owner's and its id's highest."""
        ref: Ref = op.token
        return self.generations.is_current(ref.key, ref.gen) and self.registry.is_latest(op.id, ref)

    def in_flight(self, key: PartitionKey | None = None) -> int:
        return self.tracker.in_flight(key)

    def sizes(self) -> dict[str, int]:
        return {
            "tracker_in_flight": self.tracker.in_flight(),
            "registry": len(self.registry),
            "raw": len(self._raw),
        }

    # --- the end of a message --------------------------------------------------------------
    def retire(self, ref: Ref) -> None:
        """Durably handled: its offset may commit, its id bookkeeping ends."""
        self.tracker.finished(ref.key, ref.offset)
        raw = self._raw.pop(ref, None)
        if raw is not None and raw.id is not None:
            self.registry.release(raw.id)

    def forget(self, keys: list[PartitionKey]) -> None:
        """The partitions went to another owner: their messages are no longer ours."""
        for key in keys:
            self.generations.advance(key)  # late results of the old generation are ignored
        wanted = set(keys)
        for ref in [ref for ref in self._raw if ref.key in wanted]:
            raw = self._raw.pop(ref)
            if raw.id is not None:
                self.registry.release(raw.id)
        self.tracker.drop(keys)

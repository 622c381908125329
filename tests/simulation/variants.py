"""Known-bad variants of the engine, applied as monkeypatches: the simulation must find each.

Each entry breaks one promise the way a plausible bug would; ``test_variants.py`` requires the
simulation to find every one within 500 seeds (``python -m tests.simulation --variant NAME``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import KafkaError

from consumer.engine.assignments import Assignments
from consumer.engine.deadletters import DeadLetterRouter
from consumer.engine.events import DeadLetterDelivered
from consumer.engine.ledger import InFlightLedger
from consumer.engine.registry import LatestRegistry, _Entry
from consumer.offsets.tracker import OffsetTracker
from schemas import Version

Undo = Callable[[], None]


def _patch(owner: Any, name: str, value: Any) -> Undo:
    old = owner.__dict__[name]
    setattr(owner, name, value)
    return lambda: setattr(owner, name, old)


def registry_last_polled() -> Undo:
    """The in-flight registry keeps the last polled message of an id, not its highest version."""

    def register(self: LatestRegistry, id_: str, token: Any, version: Version) -> None:
        with self._lock:
            entry = self._entries.get(id_)
            if entry is None:
                self._entries[id_] = _Entry(token, version, 1)
                return
            entry.in_flight += 1
            entry.token, entry.version = token, version

    return _patch(LatestRegistry, "register", register)


def reached_kept_on_revoke() -> Undo:
    """A revoked or lost partition stays "reached": given back, a bounded run ends early."""
    original = Assignments.forget

    def forget(self: Assignments, key: Any, generation: int) -> None:
        was = self.is_reached(key)
        original(self, key, generation)
        self.state(key).reached = was

    return _patch(Assignments, "forget", forget)


def writer_ignores_generations() -> Undo:
    """The writer writes an old owner's rows (it asks only whether the id's version is the
    highest in flight, not whether the partition is still this owner's)."""

    def is_latest(self: InFlightLedger, op: Any) -> bool:
        return self.registry.is_latest(op.id, op.token)

    return _patch(InFlightLedger, "is_latest", is_latest)


def commit_highest_finished() -> Undo:
    """Commit one past the highest finished offset instead of the contiguous watermark."""
    finished, committable = OffsetTracker.finished, OffsetTracker.committable
    highest: dict[int, dict[Any, int]] = {}

    def record(self: OffsetTracker, key: Any, offset: int) -> None:
        finished(self, key, offset)
        mine = highest.setdefault(id(self), {})
        mine[key] = max(mine.get(key, -1), offset)

    def ahead(self: OffsetTracker, keys: list[Any] | None = None) -> dict[Any, int]:
        out = committable(self, keys)
        for key, top in highest.get(id(self), {}).items():
            if key in self._partitions and (keys is None or key in keys):
                pos = self._partitions[key].position()
                if pos is not None and top + 1 > pos:
                    out[key] = top + 1
        return out

    undo = [_patch(OffsetTracker, "finished", record), _patch(OffsetTracker, "committable", ahead)]
    return lambda: [u() for u in undo] and None


def dead_letter_refusal_swallowed() -> Undo:
    """A non-retriable delivery error of a dead letter is taken as delivered."""
    failed = DeadLetterRouter.failed

    def swallow(self: DeadLetterRouter, job: Any, err: KafkaError | None, error: str) -> None:
        if isinstance(err, KafkaError) and not err.retriable():
            self._events.put(DeadLetterDelivered(job))
            return
        failed(self, job, err, error)

    return _patch(DeadLetterRouter, "failed", swallow)


VARIANTS: dict[str, Callable[[], Undo]] = {
    "registry_last_polled": registry_last_polled,
    "reached_kept_on_revoke": reached_kept_on_revoke,
    "writer_ignores_generations": writer_ignores_generations,
    "commit_highest_finished": commit_highest_finished,
    "dead_letter_refusal_swallowed": dead_letter_refusal_swallowed,
}


@contextlib.contextmanager
def applied(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    undo = VARIANTS[name]()
    try:
        yield
    finally:
        undo()

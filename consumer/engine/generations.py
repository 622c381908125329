"""Assignment generations: which owner of a partition a piece of work belongs to.

Every assignment and every revocation or loss of a partition starts a new generation. Work is
tagged with the generation it was polled in; results of an older generation belong to a previous
owner (the partition moved, or came back) and are dropped, wherever they turn up: on the main
thread, or in the Milvus writer before it writes (so an old owner's queued rows cannot land after
the new owner's).
"""

from __future__ import annotations

import threading

PartitionKey = tuple[str, int]


class Generations:
    """Thread-safe: the main thread moves generations on, any thread may ask."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[PartitionKey, int] = {}
        self._counter = 0

    def advance(self, key: PartitionKey) -> int:
        """Start a new generation of ``key`` (on assign, revoke or loss); returns it."""
        with self._lock:
            self._counter += 1
            self._current[key] = self._counter
            return self._counter

    def current(self, key: PartitionKey) -> int:
        """The generation of ``key`` now (0 before its first assignment)."""
        with self._lock:
            return self._current.get(key, 0)

    def is_current(self, key: PartitionKey, generation: int) -> bool:
        with self._lock:
            return self._current.get(key) == generation

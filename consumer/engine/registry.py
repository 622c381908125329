"""Latest-version-per-id bookkeeping, shared by the main thread and the Milvus writer.

When two messages with the same id are in flight, the one with the highest version
(:class:`schemas.Version`: timestamp, then partition and offset) must win, whatever order they
were polled in and whatever order their inference finishes in. The main thread registers every
message it polls with its version; the writer asks ``is_latest`` before writing; an entry
disappears once no message of that id is in flight.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from schemas import Version


@dataclass(slots=True)
class _Entry:
    token: Any
    version: Version
    in_flight: int


class LatestRegistry:
    """Thread-safe map: id -> (token of the highest version, messages in flight)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def register(self, id_: str, token: Any, version: Version) -> None:
        """One more message of ``id_`` is in flight; it becomes the latest if its version is."""
        with self._lock:
            entry = self._entries.get(id_)
            if entry is None:
                self._entries[id_] = _Entry(token, version, 1)
                return
            entry.in_flight += 1
            if version >= entry.version:
                entry.token, entry.version = token, version

    def is_latest(self, id_: str, token: Any) -> bool:
        """Whether ``token`` is the highest version of ``id_`` in flight (True when unknown)."""
        with self._lock:
            entry = self._entries.get(id_)
            return entry is None or entry.token == token

    def release(self, id_: str) -> None:
        """One message of ``id_`` is no longer in flight."""
        with self._lock:
            entry = self._entries.get(id_)
            if entry is None:
                return
            entry.in_flight -= 1
            if entry.in_flight <= 0:
                del self._entries[id_]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

"""Latest-message-per-id bookkeeping, shared by the main thread and the Milvus writer.

When two messages with the same id are in flight, the later one (in poll order) must win even if
the earlier one finishes inference last. The main thread registers every message it polls; the
writer asks ``is_latest`` before writing; an entry disappears once no message of that id is in
flight.
"""

from __future__ import annotations

import threading
from typing import Any


class LatestRegistry:
    """Thread-safe map: id -> (latest token, messages in flight)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, list[Any]] = {}

    def register(self, id_: str, token: Any) -> None:
        with self._lock:
            entry = self._entries.get(id_)
            if entry is None:
                self._entries[id_] = [token, 1]
            else:
                entry[0] = token
                entry[1] += 1

    def is_latest(self, id_: str, token: Any) -> bool:
        with self._lock:
            entry = self._entries.get(id_)
            return entry is None or entry[0] == token

    def release(self, id_: str) -> None:
        with self._lock:
            entry = self._entries.get(id_)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._entries[id_]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

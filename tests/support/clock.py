"""A clock the test moves by hand (the engine's ``Clock`` protocol): ``sleep`` and ``wait``
advance it instead of blocking."""

from __future__ import annotations

import threading


class ManualClock:
    """Monotonic and wall time are the same number, starting at ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        self.now += seconds or 0
        return event.is_set()

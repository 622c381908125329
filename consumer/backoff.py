"""One exponential backoff with jitter for every retry loop of the service.

``Backoff(initial, cap, factor, jitter, random)``: the n-th ``next_delay()`` is drawn from
``[d * (1 - jitter), d]`` where ``d = min(cap, initial * factor ** n)`` (``n`` from ``start``);
``reset()`` starts over after a success. The random source is handed in, so a test or a
simulation with a seeded ``random.Random`` gets the same delays every time.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.5  # the share of the delay that is random (0: none, 1: full jitter)
    random: _random.Random = field(default_factory=_random.Random)
    start: int = 0  # the exponent of the first delay
    max_exponent: int = 10
    attempts: int = 0  # delays handed out since the last reset

    def delay(self, attempt: int) -> float:
        """The upper bound of the delay of the ``attempt``-th retry (1-based), no jitter."""
        exponent = min(self.start + attempt - 1, self.max_exponent)
        return min(self.cap, self.initial * self.factor**exponent)

    def jittered(self, attempt: int) -> float:
        """A delay for the ``attempt``-th retry (1-based), jitter drawn from ``random``."""
        high = self.delay(attempt)
        if self.jitter <= 0:
            return high
        return self.random.uniform(high * (1 - self.jitter), high)

    def next_delay(self) -> float:
        """The delay before the next retry (counts it)."""
        self.attempts += 1
        return self.jittered(self.attempts)

    def reset(self) -> None:
        self.attempts = 0

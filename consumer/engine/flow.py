"""Flow control: the ``--max-rate`` token bucket and pause/resume at the rows-in-flight cap.

Main thread only. The rate can change while running (``set_rate``): a backfill worker's share of
the plan's ``max_rate`` follows the number of the plan's partitions it holds.
"""

from __future__ import annotations

import sys

from confluent_kafka import TopicPartition

from consumer.engine.events import PartitionKey
from consumer.engine.runtime import Clock, KafkaConsumerLike, SystemClock
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics

log = get_logger("consumer.engine")


class RateLimiter:
    """Token bucket in messages per second (``--max-rate``); None: no limit."""

    def __init__(self, rate: float | None, burst: int, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self.rate = rate
        self.capacity = max(1.0, float(burst))
        self.tokens = self.capacity
        self.last = self._clock.monotonic()

    def set_rate(self, rate: float | None) -> None:
        """A new rate from now on (the tokens gathered so far are kept, up to the burst)."""
        self.available()  # settle the refill at the old rate
        self.rate = rate
        self.last = self._clock.monotonic()

    def available(self) -> int:
        if self.rate is None:
            return sys.maxsize
        now = self._clock.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return int(self.tokens)

    def take(self, count: int) -> None:
        if self.rate is not None:
            self.tokens -= count

    def wait_s(self) -> float:
        if self.rate is None or self.tokens >= 1:
            return 0.0
        if self.rate <= 0:
            return float("inf")
        return (1 - self.tokens) / self.rate


class FlowControl:
    """Pauses the partitions at ``max_rows_in_flight``, resumes them at ``resume_fraction`` of
    it, and limits the intake rate."""

    def __init__(
        self,
        *,
        max_rows_in_flight: int,
        resume_fraction: float,
        rate: float | None,
        burst: int,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.limiter = RateLimiter(rate, burst, clock)
        self._max_rows = max_rows_in_flight
        self._resume_at = int(max_rows_in_flight * resume_fraction)
        self._metrics = metrics
        self.paused = False

    def set_rate(self, rate: float | None) -> None:
        self.limiter.set_rate(rate)

    def room(self, in_flight: int) -> int:
        """How many messages one poll may take: never more than the room under the cap (at
        the cap the partitions are paused and a poll only serves the group)."""
        return max(1, self._max_rows - in_flight)

    def apply(
        self,
        in_flight: int,
        consumer: KafkaConsumerLike,
        unreached: list[PartitionKey],
        assigned: int,
    ) -> None:
        """Pause at the cap, resume below the resume threshold."""
        if not self.paused and in_flight >= self._max_rows:
            self.set_paused(True, consumer, unreached, assigned)
            log.info("backpressure: partitions paused", rows_in_flight=in_flight)
        elif self.paused and in_flight <= self._resume_at:
            self.set_paused(False, consumer, unreached, assigned)
            log.info("backpressure released: partitions resumed", rows_in_flight=in_flight)

    def set_paused(
        self,
        paused: bool,
        consumer: KafkaConsumerLike,
        unreached: list[PartitionKey],
        assigned: int,
    ) -> None:
        self.paused = paused
        tps = [TopicPartition(t, p) for t, p in unreached]
        if tps:
            if paused:
                consumer.pause(tps)
            else:
                consumer.resume(tps)
        self._metrics.set_paused_partitions(assigned if paused else 0)

    def report_paused(self, assigned: int) -> None:
        self._metrics.set_paused_partitions(assigned if self.paused else 0)

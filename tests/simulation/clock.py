"""A virtual clock and a deterministic executor: one seed is one run.

The clock only moves when the simulation moves it. Work submitted to a
:class:`DeterministicExecutor` is not run on a thread: it waits in the :class:`Scheduler`, which
runs one ready task at a time, picked with the seed's random source, so interleavings differ from
seed to seed and are the same for one seed.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

#: The wall-clock instant the virtual clock starts at (2024-01-01T00:00:00Z).
EPOCH_S = 1_704_067_200.0


class VirtualClock:
    """``monotonic()``, ``time()``, ``perf_counter()`` and ``sleep()`` on virtual time.

    ``sleep`` from the main thread (outside a task) lets the scheduler run the tasks that become
    due meanwhile; inside a task it only moves time on (that task's thread is blocked, and the
    others stand still with it: a coarse but deterministic model of a blocked thread).
    """

    def __init__(self, start_s: float = EPOCH_S) -> None:
        self._start = start_s
        self._now = 0.0
        self.scheduler: Scheduler | None = None

    def monotonic(self) -> float:
        return self._now

    def perf_counter(self) -> float:
        return self._now

    def time(self) -> float:
        return self._start + self._now

    def time_ms(self) -> int:
        return int(self.time() * 1000)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"time cannot go back ({seconds})")
        self._now += seconds

    def advance_to(self, instant: float) -> None:
        if instant > self._now:
            self._now = instant

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        sched = self.scheduler
        if sched is None or sched.running is not None:
            self.advance(seconds)
            return
        sched.run_until(self._now + seconds)


@dataclass(order=True)
class Task:
    due: float
    seq: int
    executor: str = field(compare=False)
    fn: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    future: Future[Any] = field(compare=False)
    label: str = field(default="", compare=False)


class Scheduler:
    """Holds every submitted task; runs one ready task at a time, chosen from the seed."""

    def __init__(
        self,
        clock: VirtualClock,
        rng: random.Random,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        clock.scheduler = self
        self.rng = rng
        self.tasks: list[Task] = []
        self.running: Task | None = None
        self.ran = 0
        self._seq = itertools.count()
        self._trace = trace

    def submit(
        self,
        executor: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        *,
        delay_s: float = 0.0,
        label: str = "",
    ) -> Future[Any]:
        future: Future[Any] = Future()
        due = self.clock.monotonic() + max(0.0, delay_s)
        self.tasks.append(Task(due, next(self._seq), executor, fn, args, future, label))
        return future

    def ready(self) -> list[Task]:
        now = self.clock.monotonic()
        return [t for t in self.tasks if t.due <= now]

    def next_due(self) -> float | None:
        return min((t.due for t in self.tasks), default=None)

    def run_one(self) -> bool:
        """Run one ready task (the seed picks which); False when none is ready."""
        ready = self.ready()
        if not ready:
            return False
        task = ready[self.rng.randrange(len(ready))] if len(ready) > 1 else ready[0]
        self.tasks.remove(task)
        if not task.future.set_running_or_notify_cancel():
            return True
        self.running = task
        try:
            task.future.set_result(task.fn(*task.args))
        except BaseException as exc:  # handed to whoever reads the future
            task.future.set_exception(exc)
        finally:
            self.running = None
            self.ran += 1
        return True

    def run_some(self, most: int) -> int:
        """Run up to ``most`` ready tasks; returns how many ran."""
        ran = 0
        while ran < most and self.run_one():
            ran += 1
        return ran

    def run_until(self, instant: float) -> None:
        """Move time to ``instant``, running tasks as they become due (in seeded order)."""
        while True:
            while self.run_one():
                pass
            due = self.next_due()
            if due is None or due > instant:
                break
            self.clock.advance_to(due)
        self.clock.advance_to(instant)

    def cancel(self, executor: str) -> int:
        """Drop the tasks of ``executor`` that have not started (a crash, a shutdown)."""
        dropped = [t for t in self.tasks if t.executor == executor]
        self.tasks = [t for t in self.tasks if t.executor != executor]
        for task in dropped:
            task.future.cancel()
        return len(dropped)

    def pending(self, executor: str | None = None) -> int:
        return sum(1 for t in self.tasks if executor is None or t.executor == executor)


class DeterministicExecutor:
    """``submit`` / ``shutdown`` like a thread pool; the work runs when the scheduler says.

    ``latency`` gives each task a delay before it is ready (drawn from the seed), which is how
    slow fetches and inference reorder work."""

    def __init__(
        self,
        scheduler: Scheduler,
        name: str,
        latency: Callable[[], float] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.name = name
        self.latency = latency or (lambda: 0.0)
        self.closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        if self.closed:
            raise RuntimeError("the pool is shut down")
        return self.scheduler.submit(self.name, fn, args, delay_s=self.latency())

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.closed = True
        if cancel_futures:
            self.scheduler.cancel(self.name)
        if wait:
            while self.scheduler.pending(self.name):
                due = min(t.due for t in self.scheduler.tasks if t.executor == self.name)
                self.scheduler.clock.advance_to(due)
                self.scheduler.run_one()

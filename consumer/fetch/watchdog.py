"""One thread that cuts downloads still running at their total deadline.

A body is read in one call (``read(n)`` of its declared length): the bytes move in a C-level loop
instead of one Python iteration per socket read, which is most of the CPU an HTTP body costs.
Such a call returns only when the body is complete, so the total deadline cannot be checked
between reads; a server dripping a byte just inside every read timeout would hold an I/O thread
for far longer than ``total_timeout_s``. The fetch arms an :class:`Alarm` instead: at the
deadline the watchdog calls the alarm's ``cut`` (shut the socket down for reading), the blocked
read returns early, and the fetch reports the timeout.

Guarantees: ``cut`` runs at most once, at or after the deadline (up to ``_SLACK_S`` late, so
that alarms armed close together share one wake-up), and never after :meth:`Alarm.cancel` has
returned: a connection handed back to the pool after ``cancel`` is never cut.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Final

#: How late an alarm may fire, so that one wake-up serves the alarms due within it.
_SLACK_S: Final = 0.05


class Alarm:
    """One armed deadline. ``fired`` says whether its ``cut`` ran."""

    __slots__ = ("_cut", "_lock", "fired")

    def __init__(self, cut: Callable[[], None], lock: threading.Condition) -> None:
        self._cut: Callable[[], None] | None = cut
        self._lock = lock
        self.fired = False

    def cancel(self) -> bool:
        """Disarm; ``True`` when the alarm had already fired (the connection was cut)."""
        with self._lock:
            self._cut = None
            return self.fired

    def fire(self) -> None:
        """Run ``cut`` unless cancelled. The watchdog calls this holding the lock."""
        cut, self._cut = self._cut, None
        if cut is None:
            return
        self.fired = True
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            cut()  # fails only when already closed or released: nothing left to interrupt


class Watchdog:
    """Fires alarms at their deadlines from one daemon thread, started on the first alarm.

    Thread-safe. ``clock`` must be the clock the deadlines are taken from.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, deadline: float, cut: Callable[[], None]) -> Alarm:
        """An alarm that calls ``cut()`` once ``deadline`` passes, unless cancelled first."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the watchdog is closed")
            alarm = Alarm(cut, self._cond)
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline, next(self._order), alarm))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fetch-watchdog", daemon=True
                )
                self._thread.start()
            elif earliest is None or deadline < earliest:
                self._cond.notify()
            return alarm

    def close(self) -> None:
        """Stop the thread; alarms still armed never fire."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - self._clock()
                if wait > 0:
                    self._cond.wait(wait + _SLACK_S)
                    continue
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].fire()

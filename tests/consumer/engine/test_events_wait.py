"""``Events.wait``: the main thread sleeps until an event it can act on was put: any event but a
decoded image at once, decoded images only once enough of them make a batch; nothing put
between its check and its sleep is missed."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from consumer.engine.events import Event, Events, Fetched, InferenceDone, Ref, WriteAcknowledged
from schemas import ImageMessage


def fetched(offset: int) -> Fetched:
    msg = ImageMessage.upsert("file:///x.jpg", id=f"m{offset}")
    return Fetched(Ref(1, "t", 0, offset), msg, np.zeros((2, 2, 3), np.uint8))


class PuttingClock:
    """A clock whose ``wait`` stands for the time asleep: the worker threads' ``put`` calls
    happen then (``during``), and it reports whether the sleeper would have been woken."""

    def __init__(self, during: Callable[[], None] = lambda: None) -> None:
        self.during = during
        self.slept: list[bool] = []  # one entry per sleep: woken by an event or not

    def monotonic(self) -> float:
        return 0.0

    def time(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        raise AssertionError("Events.wait never sleeps unconditionally")

    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        self.during()
        self.slept.append(event.is_set())
        return event.is_set()


def put_all(events: Events, items: list[Event]) -> Callable[[], None]:
    return lambda: [events.put(e) for e in items]


def test_decoded_images_short_of_a_batch_do_not_wake_the_main_thread() -> None:
    events = Events()
    clock = PuttingClock(put_all(events, [fetched(i) for i in range(3)]))
    events.wait(clock, 0.1, fetched_enough=4)
    assert clock.slept == [False]


def test_the_decoded_image_that_completes_a_batch_wakes_it() -> None:
    events = Events()
    clock = PuttingClock(put_all(events, [fetched(i) for i in range(4)]))
    events.wait(clock, 0.1, fetched_enough=4)
    assert clock.slept == [True]


def test_any_other_event_wakes_it_at_once() -> None:
    for other in (InferenceDone(), WriteAcknowledged(())):
        events = Events()
        clock = PuttingClock(put_all(events, [fetched(0), other]))
        events.wait(clock, 0.1, fetched_enough=16)
        assert clock.slept == [True], other


def test_what_waits_already_returns_without_sleeping() -> None:
    events = Events()
    clock = PuttingClock()
    for i in range(4):
        events.put(fetched(i))
    events.wait(clock, 0.1, fetched_enough=4)
    events.put(InferenceDone())
    events.wait(clock, 0.1, fetched_enough=16)
    assert clock.slept == []


def test_taken_events_no_longer_count() -> None:
    events = Events()
    for item in (fetched(0), fetched(1), InferenceDone()):
        events.put(item)
    taken = [events.take() for _ in range(3)]
    assert events.take() is None and len(taken) == 3
    clock = PuttingClock()
    events.wait(clock, 0.1, fetched_enough=1)
    assert clock.slept == [False]


def test_a_put_racing_the_wait_is_never_lost() -> None:
    """Threads put while the main thread waits over and over: every wait that ends early ends
    with what it waited for, and each put event is taken exactly once."""
    events = Events()
    puts = [fetched(i) if i % 5 else InferenceDone() for i in range(2000)]
    worker = threading.Thread(target=put_all(events, puts))
    taken = 0
    worker.start()
    while worker.is_alive() or len(events):
        events.wait(SystemLikeClock(), 0.001, fetched_enough=3)
        while events.take() is not None:
            taken += 1
    worker.join()
    assert taken == len(puts)


class SystemLikeClock(PuttingClock):
    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        return event.wait(seconds)

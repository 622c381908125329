"""The watchdog that cuts downloads at their total deadline: when it fires, and when it must not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from consumer.fetch.watchdog import Watchdog


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    dog = Watchdog()
    yield dog
    dog.close()


def test_an_alarm_fires_once_at_its_deadline(watchdog: Watchdog) -> None:
    cuts: list[float] = []
    start = time.monotonic()
    alarm = watchdog.arm(start + 0.2, lambda: cuts.append(time.monotonic()))
    time.sleep(0.6)
    assert len(cuts) == 1
    assert cuts[0] >= start + 0.2
    assert alarm.cancel() is True  # cancel after the cut says so


def test_a_cancelled_alarm_never_fires(watchdog: Watchdog) -> None:
    cuts: list[str] = []
    alarm = watchdog.arm(time.monotonic() + 0.1, lambda: cuts.append("cut"))
    assert alarm.cancel() is False
    time.sleep(0.4)
    assert cuts == []
    assert alarm.fired is False


def test_an_earlier_alarm_armed_later_wakes_the_thread(watchdog: Watchdog) -> None:
    """The thread sleeps until the earliest deadline; a new earlier one must wake it."""
    cuts: list[str] = []
    now = time.monotonic()
    late = watchdog.arm(now + 30, lambda: cuts.append("late"))
    time.sleep(0.1)  # the thread now waits for the 30 s alarm
    watchdog.arm(time.monotonic() + 0.1, lambda: cuts.append("early"))
    time.sleep(0.5)
    assert cuts == ["early"]
    assert late.cancel() is False


def test_a_failing_cut_is_contained(watchdog: Watchdog) -> None:
    def cut() -> None:
        raise OSError("already closed")

    alarm = watchdog.arm(time.monotonic(), cut)
    after: list[str] = []
    watchdog.arm(time.monotonic() + 0.05, lambda: after.append("cut"))
    time.sleep(0.4)
    assert alarm.fired is True
    assert after == ["cut"]  # the thread lived on


def test_cancel_and_cut_exclude_each_other() -> None:
    """``cancel() is False`` means the cut never ran and never will; ``True`` that it ran."""
    dog = Watchdog()
    try:
        for _ in range(200):
            ran = threading.Event()
            alarm = dog.arm(time.monotonic() + 0.001, ran.set)
            time.sleep(0.001)
            cut = alarm.cancel()
            time.sleep(0.002)
            assert ran.is_set() is cut
    finally:
        dog.close()


def test_closed_watchdog_refuses_alarms_and_fires_none() -> None:
    dog = Watchdog()
    cuts: list[str] = []
    dog.arm(time.monotonic() + 0.1, lambda: cuts.append("cut"))
    dog.close()
    time.sleep(0.3)
    assert cuts == []
    with pytest.raises(RuntimeError):
        dog.arm(time.monotonic(), lambda: None)

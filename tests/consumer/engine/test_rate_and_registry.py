"""Pure logic of the engine: the latest-id registry and the --max-rate token bucket."""

from __future__ import annotations

import pytest

from consumer.engine.flow import RateLimiter
from consumer.engine.registry import LatestRegistry
from schemas import Version


def test_registry_latest_wins_until_all_in_flight_are_released() -> None:
    reg = LatestRegistry()
    reg.register("x", 1, Version(10, 0, 1))
    reg.register("x", 2, Version(10, 0, 2))
    assert not reg.is_latest("x", 1) and reg.is_latest("x", 2)
    reg.release("x")  # the later one finished first
    assert not reg.is_latest("x", 1), "the earlier one must stay superseded while in flight"
    reg.release("x")
    assert len(reg) == 0 and reg.is_latest("x", 1)


def test_registry_keeps_the_highest_version_not_the_last_registered() -> None:
    """A redriven old record polled after the current one must not supersede it."""
    reg = LatestRegistry()
    reg.register("x", "current", Version(2_000, 0, 7))
    reg.register("x", "redriven", Version(1_000, 0, 8))
    assert reg.is_latest("x", "current") and not reg.is_latest("x", "redriven")
    reg.register("x", "same-ms-later-offset", Version(2_000, 0, 9))
    assert reg.is_latest("x", "same-ms-later-offset")


def test_rate_limiter_refills_at_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("consumer.engine.runtime.time.monotonic", lambda: now[0])
    limiter = RateLimiter(rate=10.0, burst=5)
    assert limiter.available() == 5
    limiter.take(5)
    assert limiter.available() == 0
    assert limiter.wait_s() == pytest.approx(0.1)
    now[0] += 0.35
    assert limiter.available() == 3
    now[0] += 100
    assert limiter.available() == 5  # capped at the burst


def test_no_rate_means_no_limit() -> None:
    limiter = RateLimiter(rate=None, burst=5)
    limiter.take(10**6)
    assert limiter.available() > 10**6 and limiter.wait_s() == 0


def test_lower_thread_priority_changes_only_the_calling_thread() -> None:
    import os
    import sys
    import threading

    from consumer.engine.wiring import lower_thread_priority

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread niceness is a Linux feature")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []

    def work() -> None:
        lower_thread_priority(3)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [min(19, base + 3)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    lower_thread_priority(0)  # 0: nothing to do
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base

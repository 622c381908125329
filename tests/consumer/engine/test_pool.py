"""The worker pool: results and errors through futures, and a shutdown a stuck job cannot hold."""

from __future__ import annotations

import threading
import time

import pytest

from consumer.engine.pool import DaemonPool


def test_results_errors_and_thread_names() -> None:
    pool = DaemonPool(2, name="io")
    ok = pool.submit(lambda a, b: a + b, 2, 3)
    bad = pool.submit(lambda: 1 / 0)
    where = pool.submit(lambda: threading.current_thread().name)
    assert ok.result(5) == 5
    assert isinstance(bad.exception(5), ZeroDivisionError)
    assert where.result(5) in {"io_0", "io_1"}
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_shutdown_without_wait_returns_while_a_job_is_stuck_and_cancels_the_queued() -> None:
    pool = DaemonPool(1, name="io", initializer=lambda: None)
    release = threading.Event()
    stuck = pool.submit(release.wait, 60)
    queued = pool.submit(lambda: "never")
    while not stuck.running():
        time.sleep(0.01)
    started = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - started < 1
    assert queued.cancelled()
    assert all(t.daemon for t in threading.enumerate() if t.name == "io_0")
    release.set()
    assert stuck.result(5) is True

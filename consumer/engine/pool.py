"""A bounded worker pool whose threads never hold the process up at exit.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits, so a
thread stuck in a fetch (a server that holds the response) or a Triton call keeps a stopped
consumer alive for as long as that call's own timeout, whatever the drain timeout or a second
SIGINT says. These threads are daemons: ``shutdown(wait=False)`` returns at once and the process
exits with them still blocked; their results, if any, are ignored (the work was not committed
and is redone by the next owner of the partition).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonPool:
    """``submit`` / ``shutdown`` like ``ThreadPoolExecutor``, with daemon threads."""

    def __init__(
        self,
        workers: int,
        *,
        name: str,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._work, args=(initializer, initargs), name=f"{name}_{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._closed:
            raise RuntimeError("the pool is shut down")
        future: Future[T] = Future()
        self._jobs.put((future, partial(fn, **kwargs) if kwargs else fn, args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop taking work; with ``cancel_futures`` drop what has not started; with ``wait``
        join the threads (else return at once, leaving any blocked thread to the exit)."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever reads the future
                future.set_exception(exc)

"""Test-only crash hook for fault-injection tests.

Disabled unless ``IMAGE_EMBEDDER_TEST_CRASH_AT`` names a point (``after_poll``, ``after_infer``,
``after_upsert``). Then, the ``IMAGE_EMBEDDER_TEST_CRASH_AFTER``-th time (default 1) the point is
reached, the process writes the point's name to ``IMAGE_EMBEDDER_TEST_CRASH_MARKER`` (if set) and
kills itself with SIGKILL, so the test knows the kill landed exactly there.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = ("after_poll", "after_infer", "after_upsert")

_lock = threading.Lock()
_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill the process here if the environment asks for it; otherwise do nothing."""
    wanted = os.environ.get("IMAGE_EMBEDDER_TEST_CRASH_AT")
    if wanted != name:
        return
    after = int(os.environ.get("IMAGE_EMBEDDER_TEST_CRASH_AFTER", "1"))
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] < after:
            return
        marker = os.environ.get("IMAGE_EMBEDDER_TEST_CRASH_MARKER")
        if marker:
            with open(marker, "w", encoding="utf-8") as fh:
                fh.write(name)
                fh.flush()
                os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

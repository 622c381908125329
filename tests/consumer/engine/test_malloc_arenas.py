"""The process's malloc arenas are capped (``consumer run`` does it before any library's
threads start) and the pools' threads then share them (glibc).

Each case runs in a child process: the cap is process-wide and cannot be undone. The child's
arenas are counted from glibc's own ``malloc_info`` report (one ``<heap nr=...>`` per arena).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's"
)

CHILD = textwrap.dedent(
    """
    import ctypes, sys, tempfile, threading
    from consumer.engine.runtime import Runtime
    from consumer.engine.wiring import limit_malloc_arenas
    from consumer.settings import Settings

    settings = Settings(malloc_arenas=int(sys.argv[1]), io_threads=8)
    limit_malloc_arenas(settings.malloc_arenas)  # as ``consumer run`` does, before any pool
    runtime = Runtime.system(settings)
    ready = threading.Barrier(8)

    def work():
        ready.wait()  # all eight alive at once: each picks an arena for its first malloc
        return len(bytearray(1 << 20))

    futures = [runtime.io_executor.submit(work) for _ in range(8)]
    assert sum(f.result() for f in futures) == 8 << 20
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile(suffix=".xml") as out:
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        print(open(out.name).read().count("<heap nr="))
    """
)


def arenas_after_eight_threads(arenas: int, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(arenas)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_the_default_two_arenas_hold_eight_io_threads() -> None:
    assert arenas_after_eight_threads(2) <= 2


def test_zero_leaves_glibc_its_arena_per_thread() -> None:
    """The control: without the cap the same eight threads take more arenas than two."""
    assert arenas_after_eight_threads(0) > 2


def test_an_operators_malloc_arena_max_wins() -> None:
    assert arenas_after_eight_threads(2, MALLOC_ARENA_MAX="4") > 2

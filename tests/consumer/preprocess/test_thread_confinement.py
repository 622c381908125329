"""jaxlib stays on the main thread even through side doors: the garbage collector's hook and
the release of the buffers behind the preprocessed batch."""

from __future__ import annotations

import gc
import threading
from types import SimpleNamespace

import jax._src.lib as jax_lib
import numpy as np
import pytest

from consumer.preprocess.jaxprep import Preprocessor


@pytest.fixture(scope="module")
def preprocessor() -> Preprocessor:
    pre = Preprocessor(canvas_px=256, buckets=(1,))
    pre.warm_up()
    return pre


def test_gc_on_a_worker_thread_does_not_run_jaxlib(
    preprocessor: Preprocessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python runs GC callbacks on the thread that triggers a collection: jax's hook must not
    call jaxlib there; the main thread runs it once at its next preprocessing call instead (and
    not on every young collection of its own)."""
    calls: list[str] = []
    fake = SimpleNamespace(collect_garbage=lambda: calls.append(threading.current_thread().name))
    monkeypatch.setattr(jax_lib, "_jax", fake)
    worker = threading.Thread(target=gc.collect, name="io_0")
    worker.start()
    worker.join()
    assert calls == [], "jaxlib's GC hook ran on a worker thread"
    preprocessor([np.zeros((256, 256, 3), np.uint8)])
    main = threading.main_thread().name
    assert calls and set(calls) == {main}, calls
    before = len(calls)
    gc.collect()  # on the main thread too, a collection only marks the hook as due
    assert len(calls) == before, calls
    preprocessor([np.zeros((256, 256, 3), np.uint8)])
    assert len(calls) == before + 1 and set(calls) == {main}, calls
    preprocessor([np.zeros((256, 256, 3), np.uint8)])  # no collection since: not run again
    assert len(calls) == before + 1, calls


def test_the_batch_handed_to_workers_is_numpy_owned(preprocessor: Preprocessor) -> None:
    """A zero-copy view of a JAX buffer would be released by the inference thread that drops it
    last; the preprocessed batch owns its memory (or is a view of a NumPy array that does)."""
    out = preprocessor([np.full((200, 200, 3), 128, np.uint8)])
    assert out.shape[0] == 1 and out.dtype == np.float32
    owner = out if out.base is None else out.base
    assert isinstance(owner, np.ndarray) and owner.flags.owndata, type(out.base)

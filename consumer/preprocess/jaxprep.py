"""The JAX preprocessing step: a micro-batch of squares in a fixed canvas -> model input.

One compiled function per batch bucket; image sizes vary inside the canvas without recompiling,
because the side of each image is a traced value. The resize is the separable, antialiased
bilinear filter of ``jax.image.scale_and_translate``, applied through its nonzero taps only
(gathers instead of dense matrices): the same numbers, about 7x less CPU per image.
Main thread only.
"""

from __future__ import annotations

import gc
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from consumer.preprocess.exceptions import PreprocessThreadError
from schemas import preprocessing as contract


def enable_compilation_cache(directory: Path | None) -> None:
    """Use JAX's persistent compilation cache so a restart skips recompiling."""
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    update: Any = jax.config.update  # untyped in jax
    update("jax_compilation_cache_dir", os.fspath(directory))
    update("jax_persistent_cache_min_compile_time_secs", 0.0)
    update("jax_persistent_cache_min_entry_size_bytes", 0)


class _MainThreadGc:
    """jaxlib's garbage-collection hook, run by the main thread at its next preprocessing call.

    jax registers ``_xla_gc_callback`` in ``gc.callbacks``: after a collection it releases the
    Python objects whose release jaxlib had to defer. Python runs GC callbacks on whichever
    thread allocates when a collection starts, so the I/O and inference threads would call into
    jaxlib; and on the main thread it ran twice per collection (start and stop), young
    collections included: 0.17 ms of main-thread CPU per image in the consumer-bound run. This
    wrapper replaces the hook: a collection, on any thread, only notes that one happened, and
    the main thread runs the hook once at its next preprocessing call (``run_pending``), when it
    is about to use jaxlib anyway.
    """

    def __init__(self, hook: Callable[[Literal["start", "stop"], dict[str, int]], object]) -> None:
        self.hook = hook
        self.pending = threading.Event()

    def __call__(self, phase: Literal["start", "stop"], info: dict[str, int]) -> None:
        if phase == "stop":
            self.pending.set()

    def run_pending(self) -> None:
        if self.pending.is_set():
            self.pending.clear()
            self.hook("stop", {"generation": 2, "collected": 0, "uncollectable": 0})


def confine_jax_gc_to_main_thread() -> _MainThreadGc | None:
    """Replace jaxlib's GC hook in ``gc.callbacks`` by its main-thread wrapper (idempotent)."""
    for callback in gc.callbacks:
        if isinstance(callback, _MainThreadGc):
            return callback
    for index, callback in enumerate(gc.callbacks):
        if getattr(callback, "__name__", "") == "_xla_gc_callback":
            wrapper = _MainThreadGc(callback)
            gc.callbacks[index] = wrapper
            return wrapper
    return None


def _check_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise PreprocessThreadError(
            "JAX preprocessing must run on the main thread, not "
            f"{threading.current_thread().name!r}"
        )


def _filter_taps(side: jnp.ndarray, canvas_px: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Input indices and weights, ``[CROP_PX, taps]`` each, of one axis of the resize.

    The same antialiased triangle filter, sample positions and normalization as
    ``jax.image.scale_and_translate(method="linear", antialias=True)``, which builds them as a
    dense ``[canvas, crop]`` matrix and contracts with it (about 250 M multiply-adds per image
    for a 512 px canvas). Here only the taps a filter can reach are kept: the host reduces every
    square to at most the canvas, so the scale is at least ``RESIZE_SHORTER_PX / canvas_px``
    and the filter covers at most ``2 * ceil(canvas_px / RESIZE_SHORTER_PX)`` input pixels.
    """
    crop = contract.CROP_PX
    resize = float(contract.RESIZE_SHORTER_PX)
    offset_px = (resize - crop) / 2.0  # the centre crop, as a translation of the output
    reach = math.ceil(max(canvas_px / resize, 1.0))
    inv_scale = side.astype(jnp.float32) / resize
    kernel_scale = jnp.maximum(inv_scale, 1.0)  # widen the filter when downsampling
    sample = (jnp.arange(crop, dtype=jnp.float32) + 0.5 + offset_px) * inv_scale - 0.5
    index = jnp.floor(sample).astype(jnp.int32)[:, None] + jnp.arange(
        1 - reach, reach + 1, dtype=jnp.int32
    )
    weight = jnp.maximum(0.0, 1.0 - jnp.abs(sample[:, None] - index) / kernel_scale)
    weight = jnp.where((index >= 0) & (index < canvas_px), weight, 0.0)
    total = weight.sum(axis=1, keepdims=True)
    weight = jnp.where(
        jnp.abs(total) > 1000.0 * float(np.finfo(np.float32).eps),
        weight / jnp.where(total != 0, total, 1.0),
        0.0,
    )
    inside = (sample >= -0.5) & (sample <= canvas_px - 0.5)
    weight = jnp.where(inside[:, None], weight, 0.0)
    return jnp.clip(index, 0, canvas_px - 1), weight


def row_spans(canvas_px: int) -> tuple[int, ...]:
    """The row counts the resize's first pass is compiled for: half, three quarters and all of
    the canvas (256, 384 and 512 rows for 512 px). Each is one more branch to compile per
    bucket; finer steps saved no CPU measurably and cost start-up time (a cold compile)."""
    return tuple(canvas_px * quarters // 4 for quarters in (2, 3, 4))


def _build(canvas_px: int) -> Any:  # a jitted function: jax types it loosely
    crop = contract.CROP_PX
    scale_px, shift = contract.scale_and_offset()
    if contract.INTERPOLATION not in ("bilinear", "linear"):
        raise ValueError(f"no sparse filter for {contract.INTERPOLATION!r} interpolation")

    barrier: Any = jax.lax.optimization_barrier  # untyped in jax
    spans = row_spans(canvas_px)
    bounds = np.asarray(spans[:-1], np.int32)

    def passes(rows_px: int) -> Callable[..., jnp.ndarray]:
        """Both passes over the ``rows_px`` canvas rows from the first one the filter reads."""

        def run(
            image: jnp.ndarray, index: jnp.ndarray, weight: jnp.ndarray, first: jnp.ndarray
        ) -> jnp.ndarray:
            start = jnp.minimum(first, canvas_px - rows_px)
            rows = jax.lax.dynamic_slice(image, (start, 0, 0), (rows_px, canvas_px, 3))
            # columns first, straight from the uint8 canvas: [rows_px, crop, 3]
            cols = jnp.zeros((rows_px, crop, 3), jnp.float32)
            for tap in range(index.shape[1]):
                gathered = rows[:, index[:, tap]].astype(jnp.float32)
                cols = cols + gathered * weight[None, :, tap, None]
            # Kept as an array: fused into the rows pass, XLA would recompute every column tap
            # for every row tap (16 gathers per output value instead of 4 + 4 per axis).
            cols = barrier(cols)
            # then rows: [crop, crop, 3]
            local = index - start
            out = jnp.zeros((crop, crop, 3), jnp.float32)
            for tap in range(index.shape[1]):
                out = out + cols[local[:, tap]] * weight[:, tap, None, None]
            out = jnp.clip(out, 0.0, 255.0)
            return out * scale_px + shift

        return run

    branches = [passes(rows_px) for rows_px in spans]

    def one(image: jnp.ndarray, side: jnp.ndarray) -> Any:  # lax.switch is typed loosely
        # The centre crop reads only the middle 7/8 of a square's rows, and a square is often
        # much smaller than the canvas: the first pass runs over the rows the second one reads
        # (rounded up to a compiled span), not over the whole canvas.
        index, weight = _filter_taps(side, canvas_px)
        first = jnp.min(index)
        which = jnp.searchsorted(bounds, jnp.max(index) - first + 1)
        return jax.lax.switch(which, branches, image, index, weight, first)

    def padding(image: jnp.ndarray, side: jnp.ndarray) -> jnp.ndarray:
        return jnp.zeros((crop, crop, 3), jnp.float32)

    def each(pair: tuple[jnp.ndarray, jnp.ndarray]) -> Any:  # lax.cond is typed loosely
        image, side = pair
        return jax.lax.cond(side > 0, one, padding, image, side)

    def batch(images: jnp.ndarray, sides: jnp.ndarray) -> Any:  # so is lax.map
        # One image at a time (a loop inside the compiled function, not ``vmap``): each
        # image's canvas and intermediate stay in the core's cache while both passes run over
        # them, and a bucket's padding (side 0) costs nothing. Measured on the consumer's
        # core: a full bucket 3.5 -> 1.75 ms of CPU per image against the vectorized batch;
        # 2 images in a bucket of 8, 15.5 -> 5.0 ms per call. The same numbers to float32
        # rounding.
        return jax.lax.map(each, (images, sides))

    return jax.jit(batch)


class Preprocessor:
    """Turns decoded squares (from ``fit_to_canvas``) into float32 NHWC model input."""

    def __init__(
        self,
        *,
        canvas_px: int = 512,
        buckets: Sequence[int] = (1, 8, 32),
        cache_dir: Path | None = None,
    ) -> None:
        _check_main_thread()
        self._gc = confine_jax_gc_to_main_thread()
        enable_compilation_cache(cache_dir)
        self.canvas_px = canvas_px
        self.buckets = tuple(sorted(set(buckets)))
        self._fn = _build(canvas_px)
        #: One canvas per bucket, reused by every call (main thread only): a fresh one per call
        #: costs the main thread its zeroing and page faults, 0.75 MiB per image at 512 px.
        #: Pixels left from an earlier, larger square are never read: the filter's taps stay
        #: inside each square's own ``side`` (see ``_filter_taps``; tested).
        self._canvases: dict[int, np.ndarray] = {}

    def warm_up(self) -> None:
        """Compile (or load from the cache) every bucket before the first message."""
        _check_main_thread()
        for bucket in self.buckets:
            canvas = np.zeros((bucket, self.canvas_px, self.canvas_px, 3), np.uint8)
            sides = np.full((bucket,), contract.RESIZE_SHORTER_PX, np.int32)
            np.asarray(self._fn(canvas, sides))

    def bucket_for(self, count: int) -> int:
        for bucket in self.buckets:
            if count <= bucket:
                return bucket
        return self.buckets[-1]

    def __call__(self, squares: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocess a micro-batch; returns ``[len(squares), 224, 224, 3]`` float32.

        The result is a NumPy-owned copy: the JAX buffers are released here, on the main
        thread, never by the inference thread that holds the array last."""
        if not squares:
            _check_main_thread()
            return np.zeros((0, contract.CROP_PX, contract.CROP_PX, 3), np.float32)
        views = list(self.chunks(squares))
        return np.array(views[0], copy=True) if len(views) == 1 else np.concatenate(views)

    def chunks(self, squares: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """The micro-batch's output chunk by chunk (one call of a compiled bucket each):
        ``[k, 224, 224, 3]`` float32, read-only views of JAX's own buffers, no copy.

        A view keeps its JAX buffer alive: copy what you keep (``TritonInference.pack`` copies
        into the request), and never hand a view to another thread, so that JAX's buffers are
        released on the main thread."""
        _check_main_thread()
        if self._gc is not None:
            self._gc.run_pending()
        largest = self.buckets[-1]
        for start in range(0, len(squares), largest):
            chunk = squares[start : start + largest]
            bucket = self.bucket_for(len(chunk))
            canvas = self._canvas(bucket)
            sides = np.zeros((bucket,), np.int32)  # side 0: padding, skipped by the kernel
            for i, square in enumerate(chunk):
                side = square.shape[0]
                if side > self.canvas_px or square.shape[1] != side:
                    raise ValueError(f"square of {square.shape} does not fit the canvas")
                canvas[i, :side, :side] = square
                sides[i] = side
            # the call has finished once its output is read: the canvas may be filled again
            yield np.asarray(self._fn(canvas, sides))[: len(chunk)]

    def _canvas(self, bucket: int) -> np.ndarray:
        canvas = self._canvases.get(bucket)
        if canvas is None:
            canvas = np.zeros((bucket, self.canvas_px, self.canvas_px, 3), np.uint8)
            self._canvases[bucket] = canvas
        return canvas

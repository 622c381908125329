"""The JAX preprocessing step: a micro-batch of squares in a fixed canvas -> model input.

One compiled function per batch bucket; image sizes vary inside the canvas without recompiling,
because the scale of each image is a traced value fed to ``jax.image.scale_and_translate``.
Main thread only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from consumer.preprocess.exceptions import PreprocessThreadError
from schemas import preprocessing as contract

_METHODS = {"bilinear": "linear", "linear": "linear", "bicubic": "cubic", "cubic": "cubic"}


def enable_compilation_cache(directory: Path | None) -> None:
    """Use JAX's persistent compilation cache so a restart skips recompiling."""
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _check_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise PreprocessThreadError(
            "JAX preprocessing must run on the main thread, not "
            f"{threading.current_thread().name!r}"
        )


def _build(canvas_px: int):
    crop = contract.CROP_PX
    resize = float(contract.RESIZE_SHORTER_PX)
    offset_px = (resize - crop) / 2.0
    scale_px, shift = contract.scale_and_offset()
    method = _METHODS[contract.INTERPOLATION]

    def one(image: jnp.ndarray, side: jnp.ndarray) -> jnp.ndarray:
        factor = resize / side.astype(jnp.float32)
        scale = jnp.stack([factor, factor])
        translation = jnp.array([-offset_px, -offset_px], dtype=jnp.float32)
        out = jax.image.scale_and_translate(
            image.astype(jnp.float32),
            (crop, crop, 3),
            (0, 1),
            scale,
            translation,
            method=method,
            antialias=True,
        )
        out = jnp.clip(out, 0.0, 255.0)
        return out * scale_px + shift

    batched = jax.vmap(one)
    del canvas_px
    return jax.jit(batched)


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
        enable_compilation_cache(cache_dir)
        self.canvas_px = canvas_px
        self.buckets = tuple(sorted(set(buckets)))
        self._fn = _build(canvas_px)

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
        """Preprocess a micro-batch; returns ``[len(squares), 224, 224, 3]`` float32."""
        _check_main_thread()
        if not squares:
            return np.zeros((0, contract.CROP_PX, contract.CROP_PX, 3), np.float32)
        outputs = []
        largest = self.buckets[-1]
        for start in range(0, len(squares), largest):
            chunk = squares[start : start + largest]
            bucket = self.bucket_for(len(chunk))
            canvas = np.zeros((bucket, self.canvas_px, self.canvas_px, 3), np.uint8)
            sides = np.full((bucket,), contract.RESIZE_SHORTER_PX, np.int32)
            for i, square in enumerate(chunk):
                side = square.shape[0]
                if side > self.canvas_px or square.shape[1] != side:
                    raise ValueError(f"square of {square.shape} does not fit the canvas")
                canvas[i, :side, :side] = square
                sides[i] = side
            result = np.asarray(self._fn(canvas, sides))
            outputs.append(result[: len(chunk)])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

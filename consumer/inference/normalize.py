"""L2 normalization with validity checks (NumPy only; safe from any thread)."""

from __future__ import annotations

import numpy as np

#: Vectors whose norm is at or below this are degenerate (no direction to compare by cosine).
MIN_NORM = 1e-12


def l2_normalize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(unit_vectors, valid)`` for an ``[n, d]`` array.

    A row is valid when every value is finite and its norm exceeds ``MIN_NORM``; invalid rows come
    back as zeros and must be dead-lettered (``invalid_embedding``), never written.
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {array.shape}")
    finite = np.asarray(np.isfinite(array).all(axis=1))
    safe = np.where(finite[:, None], array, 0.0).astype(np.float32, copy=False)
    norms = np.linalg.norm(safe.astype(np.float64), axis=1)
    valid = finite & (norms > MIN_NORM)
    out = np.zeros_like(safe)
    out[valid] = (safe[valid] / norms[valid, None]).astype(np.float32)
    return out, valid

"""A benchmark-only model: the reference model's input/output contract at almost no cost.

It answers exactly what ``schemas.preprocessing`` promises (``IMAGE`` ``[N, 224, 224, 3]``
float32 in, ``EMBEDDING`` ``[N, 1280]`` and ``LOGITS`` ``[N, 1000]`` float32 out, same model name
and version), so the consumer cannot tell it from the reference model, but it costs microseconds
per image instead of tens of milliseconds. With it behind Triton the consumer, not the model, is
the bottleneck: ``make bench`` uses it to measure the consumer's own CPU per image.

The embedding is a fixed projection of each image's coarse colour statistics: images that differ
get different vectors (never all zeros, so they normalize), but the vectors carry no meaning.
Never serve it for real search: ``python -m serving --bench-model near-free`` says so at start-up.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from schemas import preprocessing as contract

NAME: Final = "near-free"
#: Every 16th pixel in each direction: 14 x 14 samples of a 224 x 224 crop.
_STRIDE: Final = 16
_FEATURES: Final = 6  # mean and standard deviation of each channel


def _projection(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((_FEATURES, contract.EMBEDDING_DIM)).astype(np.float32)
    bias = rng.standard_normal(contract.EMBEDDING_DIM).astype(np.float32)
    return weights, bias


class NearFreeModel:
    """``images [N, H, W, 3] -> (embedding [N, 1280], logits [N, 1000])`` in a few microseconds."""

    def __init__(self, seed: int = 0) -> None:
        self.weights, self.bias = _projection(seed)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected [N, H, W, 3] images, got shape {images.shape}")
        sample = images[:, ::_STRIDE, ::_STRIDE, :].astype(np.float32, copy=False)
        features = np.concatenate([sample.mean(axis=(1, 2)), sample.std(axis=(1, 2))], axis=1)
        embedding = features @ self.weights + self.bias
        logits = np.zeros((images.shape[0], contract.NUM_CLASSES), dtype=np.float32)
        return embedding.astype(np.float32, copy=False), logits

"""Triton inference: one client per worker thread, model metadata checks, NumPy normalization."""

from consumer.inference.client import ModelSpec, TritonInference, read_model_spec
from consumer.inference.exceptions import (
    InferenceRejectedError,
    InferenceTLSError,
    InferenceUnavailableError,
    ModelMismatchError,
)
from consumer.inference.normalize import l2_normalize

__all__ = [
    "InferenceRejectedError",
    "InferenceTLSError",
    "InferenceUnavailableError",
    "ModelMismatchError",
    "ModelSpec",
    "TritonInference",
    "l2_normalize",
    "read_model_spec",
]

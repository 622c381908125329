"""EfficientNet-Lite0 in JAX, from ImageNet weights in lukemelas' EfficientNet-PyTorch layout.

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish and a fixed stem
(32 channels) and head (1280 channels). Convolutions use TensorFlow's "SAME" padding (extra pixel
at the bottom/right, as JAX's ``'SAME'``). BatchNorm (eps 1e-3) is folded into the preceding
convolution when the weights are loaded, so inference runs convolutions with a bias only.

Input: NHWC float32 images already mapped to [-1, 1] (see ``schemas.preprocessing``).
Output: ``(embedding [N, 1280], logits [N, 1000])``; the embedding is the global average of the
head's activations, not normalized.

This module imports nothing of Triton, so the service's environment can test it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import jax
import jax.numpy as jnp
import numpy as np

from serving.exceptions import FatalWeightsError

BN_EPS: Final = 1e-3
STEM_CHANNELS: Final = 32
HEAD_CHANNELS: Final = 1280
IMAGE_CHANNELS: Final = 3

#: How a depthwise convolution is computed: ``"shifted"`` sums k*k shifted slices times the
#: per-channel tap; ``"grouped"`` calls XLA's convolution with one group per channel. On XLA's
#: CPU backend the shifted form measured several times faster (see docs/model.md).
Depthwise = Literal["shifted", "grouped"]
DEFAULT_DEPTHWISE: Final[Depthwise] = "shifted"

Params = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """One mobile inverted bottleneck block (MBConv) of the network."""

    kernel: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int

    @property
    def hidden_channels(self) -> int:
        return self.in_channels * self.expand_ratio

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


#: Lite0 (= B0 layout) stages: (repeats, kernel, stride, expand ratio, in, out); width, depth 1.0.
_STAGES: Final = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _block_specs() -> tuple[BlockSpec, ...]:
    specs = []
    for repeats, kernel, stride, expand, cin, cout in _STAGES:
        for i in range(repeats):
            first = i == 0
            specs.append(
                BlockSpec(kernel, stride if first else 1, expand, cin if first else cout, cout)
            )
    return tuple(specs)


BLOCKS: Final = _block_specs()


# --------------------------------------------------------------------------------------- weights


def fold_batch_norm(
    weight: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float = BN_EPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference BatchNorm into the preceding bias-free conv: ``(weight', bias)``.

    ``weight`` has the output channel first (PyTorch layout). ``bn(conv(x, w))`` equals
    ``conv(x, w') + bias``.
    """
    scale = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).astype(np.float64)
    folded = weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    bias = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return folded.astype(np.float32), bias.astype(np.float32)


def _take(state: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        value = state[name]
    except KeyError:
        raise FatalWeightsError(f"weights lack {name!r}: not EfficientNet-Lite0") from None
    if tuple(value.shape) != shape:
        raise FatalWeightsError(f"{name!r} has shape {tuple(value.shape)}, expected {shape}")
    return np.asarray(value, dtype=np.float32)


def _conv_bn(
    state: Mapping[str, np.ndarray], conv: str, bn: str, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    channels = (shape[0],)
    return fold_batch_norm(
        _take(state, f"{conv}.weight", shape),
        _take(state, f"{bn}.weight", channels),
        _take(state, f"{bn}.bias", channels),
        _take(state, f"{bn}.running_mean", channels),
        _take(state, f"{bn}.running_var", channels),
    )


def _dense(w_oihw: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """A 1x1 convolution as a matrix ``[in, out]``."""
    return {"w": np.ascontiguousarray(w_oihw[:, :, 0, 0].T), "b": b}


def load_params(state: Mapping[str, np.ndarray]) -> Params:
    """Turn a lukemelas-layout state dict into folded, JAX-layout parameters (NumPy arrays).

    Raises :class:`FatalWeightsError` when a tensor is missing or has the wrong shape.
    """
    stem_w, stem_b = _conv_bn(state, "_conv_stem", "_bn0", (STEM_CHANNELS, IMAGE_CHANNELS, 3, 3))
    blocks = []
    for i, spec in enumerate(BLOCKS):
        p = f"_blocks.{i}"
        hidden = spec.hidden_channels
        block: dict[str, Any] = {}
        if spec.expand_ratio != 1:
            block["expand"] = _dense(
                *_conv_bn(state, f"{p}._expand_conv", f"{p}._bn0", (hidden, spec.in_channels, 1, 1))
            )
        dw_w, dw_b = _conv_bn(
            state, f"{p}._depthwise_conv", f"{p}._bn1", (hidden, 1, spec.kernel, spec.kernel)
        )
        # [C, 1, k, k] -> [k, k, C]: one tap vector per kernel position.
        block["depthwise"] = {"w": np.ascontiguousarray(dw_w[:, 0].transpose(1, 2, 0)), "b": dw_b}
        block["project"] = _dense(
            *_conv_bn(state, f"{p}._project_conv", f"{p}._bn2", (spec.out_channels, hidden, 1, 1))
        )
        blocks.append(block)
    if f"_blocks.{len(BLOCKS)}._depthwise_conv.weight" in state:
        raise FatalWeightsError("weights have more blocks than EfficientNet-Lite0")
    head = _dense(
        *_conv_bn(state, "_conv_head", "_bn1", (HEAD_CHANNELS, BLOCKS[-1].out_channels, 1, 1))
    )
    num_classes = state["_fc.weight"].shape[0] if "_fc.weight" in state else 0
    fc_w = _take(state, "_fc.weight", (num_classes, HEAD_CHANNELS))
    fc_b = _take(state, "_fc.bias", (num_classes,))
    return {
        # OIHW -> HWIO
        "stem": {"w": np.ascontiguousarray(stem_w.transpose(2, 3, 1, 0)), "b": stem_b},
        "blocks": blocks,
        "head": head,
        "fc": {"w": np.ascontiguousarray(fc_w.T), "b": fc_b},
    }


# --------------------------------------------------------------------------------------- network


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding: the odd pixel goes after (bottom/right)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_shifted(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """Depthwise conv, "SAME" padding, as a sum of ``k*k`` strided slices times ``w[i, j]``.

    ``x``: [N, H, W, C]; ``w``: [k, k, C].
    """
    k = w.shape[0]
    n, h, wd, c = x.shape
    pad_h, pad_w = _same_padding(h, k, stride), _same_padding(wd, k, stride)
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    out_h, out_w = math.ceil(h / stride), math.ceil(wd / stride)
    acc = None
    for i in range(k):
        for j in range(k):
            window = jax.lax.slice(
                xp,
                (0, i, j, 0),
                (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                (1, stride, stride, 1),
            )
            term = window * w[i, j]
            acc = term if acc is None else acc + term
    assert acc is not None
    return acc


def depthwise_grouped(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """Depthwise conv, "SAME" padding, as XLA's convolution with one group per channel."""
    k, _, c = w.shape
    return jax.lax.conv_general_dilated(
        x,
        w.reshape(k, k, 1, c),
        window_strides=(stride, stride),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )


_DEPTHWISE: Final[dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]]] = {
    "shifted": depthwise_shifted,
    "grouped": depthwise_grouped,
}


def _pointwise(x: jax.Array, p: Mapping[str, jax.Array]) -> jax.Array:
    return jnp.dot(x, p["w"]) + p["b"]


def forward(
    params: Params, images: jax.Array, depthwise: Depthwise = DEFAULT_DEPTHWISE
) -> tuple[jax.Array, jax.Array]:
    """Run the network: ``images`` [N, 224, 224, 3] in [-1, 1] -> (embedding, logits)."""
    dw = _DEPTHWISE[depthwise]
    x = jax.lax.conv_general_dilated(
        images,
        params["stem"]["w"],
        window_strides=(2, 2),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    x = jax.nn.relu6(x + params["stem"]["b"])
    for spec, p in zip(BLOCKS, params["blocks"], strict=True):
        y = x
        if "expand" in p:
            y = jax.nn.relu6(_pointwise(y, p["expand"]))
        y = jax.nn.relu6(dw(y, p["depthwise"]["w"], spec.stride) + p["depthwise"]["b"])
        y = _pointwise(y, p["project"])  # linear bottleneck: no activation
        x = x + y if spec.residual else y
    x = jax.nn.relu6(_pointwise(x, params["head"]))
    embedding = jnp.mean(x, axis=(1, 2))
    logits = _pointwise(embedding, params["fc"])
    return embedding, logits


# ------------------------------------------------------------------------------------- execution


def repo_root() -> Path:
    """The directory holding ``serving/`` (the repository root in a checkout)."""
    return Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    """Default location of the persistent compilation cache of the model server."""
    return repo_root() / ".cache" / "jax-serving"


def enable_compilation_cache(cache_dir: str | os.PathLike[str]) -> None:
    """Persist every compiled executable under ``cache_dir`` so a restart skips compilation."""
    path = Path(cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def decompose(batch: int, sizes: Sequence[int]) -> list[int]:
    """Split ``batch`` into compiled sizes, largest first, without padding.

    ``sizes`` must contain 1 so that every batch splits exactly, e.g. 13 with (1, 2, 4, 8) is
    ``[8, 4, 1]`` and 20 is ``[8, 8, 4]``.
    """
    if 1 not in sizes:
        raise ValueError("the compiled sizes must include 1")
    chunks = []
    remaining = batch
    for size in sorted(set(sizes), reverse=True):
        count, remaining = divmod(remaining, size)
        chunks.extend([size] * count)
    return chunks


class EfficientNetLite0:
    """The network with its parameters on the device and one compiled executable per chunk size.

    ``__call__`` runs a batch of any size as consecutive chunks of the compiled sizes (largest
    first, no padding), so throughput follows the best measured chunk size, not the request size.
    """

    def __init__(
        self,
        params: Params,
        chunk_sizes: Sequence[int] = (1,),
        depthwise: Depthwise = DEFAULT_DEPTHWISE,
        image_size: int = 224,
    ) -> None:
        if not chunk_sizes or any(s < 1 for s in chunk_sizes) or 1 not in chunk_sizes:
            raise ValueError(f"chunk sizes must be positive and include 1, got {chunk_sizes}")
        self.chunk_sizes = tuple(sorted(set(chunk_sizes)))
        self.image_size = image_size
        self.depthwise = depthwise
        self._params = jax.device_put(params)
        self._jitted = jax.jit(forward, static_argnames="depthwise")
        self._compiled: dict[int, Any] = {}
        self.num_classes = int(params["fc"]["b"].shape[0])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray], **kwargs: Any) -> EfficientNetLite0:
        return cls(load_params(state), **kwargs)

    def compile(self) -> None:
        """Compile (or load from the persistent cache) every chunk size, then run each once."""
        for size in self.chunk_sizes:
            if size in self._compiled:
                continue
            spec = jax.ShapeDtypeStruct(
                (size, self.image_size, self.image_size, IMAGE_CHANNELS), jnp.float32
            )
            compiled = self._jitted.lower(self._params, spec, depthwise=self.depthwise).compile()
            self._compiled[size] = compiled
            zeros = np.zeros(spec.shape, np.float32)
            jax.block_until_ready(compiled(self._params, zeros))

    def run_chunk(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run exactly one compiled size (compiling it first if needed)."""
        size = images.shape[0]
        if size not in self._compiled:
            if size not in self.chunk_sizes:
                raise ValueError(f"batch {size} is not a compiled chunk size {self.chunk_sizes}")
            self.compile()
        embedding, logits = self._compiled[size](self._params, images)
        return np.asarray(embedding), np.asarray(logits)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images`` [N, 224, 224, 3] float32 in [-1, 1] -> (embedding [N, 1280], logits)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = (self.image_size, self.image_size, IMAGE_CHANNELS)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected images [N, {', '.join(map(str, expected))}]")
        n = images.shape[0]
        if n == 0:
            return (
                np.zeros((0, HEAD_CHANNELS), np.float32),
                np.zeros((0, self.num_classes), np.float32),
            )
        embeddings, logits = [], []
        start = 0
        for size in decompose(n, self.chunk_sizes):
            emb, log = self.run_chunk(images[start : start + size])
            embeddings.append(emb)
            logits.append(log)
            start += size
        if len(embeddings) == 1:
            return embeddings[0], logits[0]
        return np.concatenate(embeddings), np.concatenate(logits)

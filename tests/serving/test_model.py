"""The JAX network itself (no Triton): depthwise forms, BatchNorm folding, shapes, chunking."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serving.exceptions import FatalWeightsError
from serving.model import (
    BLOCKS,
    BN_EPS,
    HEAD_CHANNELS,
    EfficientNetLite0,
    Params,
    decompose,
    depthwise_grouped,
    depthwise_shifted,
    fold_batch_norm,
    forward,
    load_params,
)
from serving.weights import load_legacy_state_dict


def synthetic_state(num_classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict with Lite0's names and shapes and random values (for shape tests only)."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}

    def conv_bn(conv: str, bn: str, shape: tuple[int, ...]) -> None:
        fan_in = int(np.prod(shape[1:]))
        state[f"{conv}.weight"] = rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(np.float32)
        c = shape[0]
        state[f"{bn}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        state[f"{bn}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        state[f"{bn}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        state[f"{bn}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        state[f"{bn}.num_batches_tracked"] = np.array(0, dtype=np.int64)

    conv_bn("_conv_stem", "_bn0", (32, 3, 3, 3))
    for i, spec in enumerate(BLOCKS):
        p = f"_blocks.{i}"
        hidden = spec.hidden_channels
        if spec.expand_ratio != 1:
            conv_bn(f"{p}._expand_conv", f"{p}._bn0", (hidden, spec.in_channels, 1, 1))
        conv_bn(f"{p}._depthwise_conv", f"{p}._bn1", (hidden, 1, spec.kernel, spec.kernel))
        conv_bn(f"{p}._project_conv", f"{p}._bn2", (spec.out_channels, hidden, 1, 1))
    conv_bn("_conv_head", "_bn1", (HEAD_CHANNELS, BLOCKS[-1].out_channels, 1, 1))
    state["_fc.weight"] = rng.normal(0, 0.03, (num_classes, HEAD_CHANNELS)).astype(np.float32)
    state["_fc.bias"] = np.zeros(num_classes, np.float32)
    return state


@pytest.fixture(scope="module")
def synthetic_params() -> Params:
    return load_params(synthetic_state())


@pytest.fixture(scope="module")
def real_state(weights_path: Path) -> dict[str, np.ndarray]:
    return load_legacy_state_dict(weights_path)


def images(n: int, size: int = 224, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


# -- depthwise convolution ------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 9), (8, 8), (112, 112)])
def test_depthwise_forms_agree(kernel: int, stride: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(kernel * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, *size, 16)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 16)).astype(np.float32))

    shifted = np.asarray(jax.jit(depthwise_shifted, static_argnums=2)(x, w, stride))
    grouped = np.asarray(jax.jit(depthwise_grouped, static_argnums=2)(x, w, stride))

    assert shifted.shape == (2, -(-size[0] // stride), -(-size[1] // stride), 16)
    np.testing.assert_allclose(shifted, grouped, rtol=1e-5, atol=1e-5)


def test_depthwise_uses_tensorflow_same_padding() -> None:
    """Even input, stride 2: the one padding row/column goes after (bottom/right), none before.

    Symmetric padding (PyTorch's ``padding=1``) would make output[0, 0] the sum of x[0:2, 0:2].
    """
    x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    w = jnp.ones((3, 3, 1), jnp.float32)

    out = np.asarray(depthwise_shifted(x, w, 2))

    assert out.shape == (1, 2, 2, 1)
    assert out[0, 0, 0, 0] == pytest.approx(float(x[0, 0:3, 0:3, 0].sum()))
    assert out[0, 1, 1, 0] == pytest.approx(float(x[0, 2:4, 2:4, 0].sum()))


def test_whole_network_same_with_either_depthwise_form(synthetic_params: Params) -> None:
    x = images(1)
    run = jax.jit(forward, static_argnames="depthwise")

    shifted = run(synthetic_params, x, depthwise="shifted")
    grouped = run(synthetic_params, x, depthwise="grouped")

    for a, b in zip(shifted, grouped, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


# -- BatchNorm folding ----------------------------------------------------------------------


def batch_norm(x: np.ndarray, gamma, beta, mean, var, eps: float = BN_EPS) -> np.ndarray:
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def conv_nhwc(x: np.ndarray, w_oihw: np.ndarray, stride: int, groups: int = 1) -> np.ndarray:
    return np.asarray(
        jax.lax.conv_general_dilated(
            jnp.asarray(x),
            jnp.asarray(w_oihw.transpose(2, 3, 1, 0)),
            (stride, stride),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
            precision=jax.lax.Precision.HIGHEST,
        )
    )


@pytest.mark.parametrize(
    ("shape", "stride", "groups"),
    [((32, 3, 3, 3), 2, 1), ((24, 96, 1, 1), 1, 1), ((40, 1, 5, 5), 2, 40)],
    ids=["stem", "pointwise", "depthwise"],
)
def test_folded_batch_norm_equals_conv_then_batch_norm(
    shape: tuple[int, ...], stride: int, groups: int
) -> None:
    rng = np.random.default_rng(3)
    c_out, c_in = shape[0], shape[1] * groups
    w = rng.normal(size=shape).astype(np.float32)
    gamma, beta, mean = (rng.normal(size=c_out).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.01, 2.0, c_out).astype(np.float32)
    x = rng.normal(size=(2, 17, 17, c_in)).astype(np.float32)

    unfolded = batch_norm(conv_nhwc(x, w, stride, groups), gamma, beta, mean, var)
    w_folded, bias = fold_batch_norm(w, gamma, beta, mean, var)
    folded = conv_nhwc(x, w_folded, stride, groups) + bias

    np.testing.assert_allclose(folded, unfolded, rtol=1e-4, atol=1e-4)


def test_real_stem_folding_matches_unfolded(real_state: dict[str, np.ndarray]) -> None:
    s = real_state
    bn = [s[f"_bn0.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    x = images(1, size=32)

    unfolded = batch_norm(conv_nhwc(x, s["_conv_stem.weight"], 2), *bn)
    w_folded, bias = fold_batch_norm(s["_conv_stem.weight"], *bn)

    np.testing.assert_allclose(conv_nhwc(x, w_folded, 2) + bias, unfolded, rtol=1e-4, atol=1e-4)


# -- weights and shapes ---------------------------------------------------------------------


def test_real_weights_load_into_the_network(real_state: dict[str, np.ndarray]) -> None:
    params = load_params(real_state)

    assert len(params["blocks"]) == 16
    assert "expand" not in params["blocks"][0]
    assert params["blocks"][3]["depthwise"]["w"].shape == (5, 5, 144)
    assert params["fc"]["w"].shape == (1280, 1000)


def test_missing_or_misshapen_weights_are_refused() -> None:
    state = synthetic_state()
    del state["_blocks.7._bn1.running_var"]
    with pytest.raises(FatalWeightsError, match=r"_blocks\.7\._bn1\.running_var"):
        load_params(state)

    state = synthetic_state()
    state["_conv_head.weight"] = np.zeros((1280, 321, 1, 1), np.float32)
    with pytest.raises(FatalWeightsError, match=r"_conv_head\.weight"):
        load_params(state)


def test_output_shapes_and_dtypes(synthetic_params: Params) -> None:
    embedding, logits = jax.jit(forward)(synthetic_params, images(2))

    assert embedding.shape == (2, HEAD_CHANNELS) and embedding.dtype == jnp.float32
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    # global average pool after ReLU6: every feature lies in [0, 6]
    assert float(embedding.min()) >= 0.0 and float(embedding.max()) <= 6.0


# -- chunked execution ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "sizes", "chunks"),
    [
        (1, (1,), [1]),
        (5, (1,), [1] * 5),
        (13, (1, 2, 4, 8), [8, 4, 1]),
        (20, (1, 8), [8, 8, 1, 1, 1, 1]),
        (0, (1, 2), []),
    ],
)
def test_decompose(batch: int, sizes: tuple[int, ...], chunks: list[int]) -> None:
    assert decompose(batch, sizes) == chunks
    assert sum(chunks) == batch


def test_decompose_needs_size_one() -> None:
    with pytest.raises(ValueError, match="include 1"):
        decompose(3, (2, 4))


def test_chunked_batch_equals_single_images(synthetic_params: Params) -> None:
    model = EfficientNetLite0(synthetic_params, chunk_sizes=(1, 2))
    model.compile()
    x = images(3)

    embedding, logits = model(x)
    singles = [model(x[i : i + 1]) for i in range(3)]

    assert embedding.shape == (3, HEAD_CHANNELS) and logits.shape == (3, 1000)
    np.testing.assert_allclose(embedding, np.concatenate([e for e, _ in singles]), atol=1e-4)
    np.testing.assert_allclose(logits, np.concatenate([lg for _, lg in singles]), atol=1e-4)


def test_wrong_input_shape_is_refused(synthetic_params: Params) -> None:
    model = EfficientNetLite0(synthetic_params)
    with pytest.raises(ValueError, match="expected images"):
        model(np.zeros((1, 200, 224, 3), np.float32))

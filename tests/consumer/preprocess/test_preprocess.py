"""JAX preprocessing: agrees with a Pillow reference, keeps shapes fixed, main thread only."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from consumer.preprocess import PreprocessThreadError, fit_to_canvas
from consumer.preprocess.jaxprep import Preprocessor


def _reference(image: np.ndarray) -> np.ndarray:
    """Shorter side to 256 (bilinear), centre crop 224, x / 127.5 - 1."""
    h, w = image.shape[:2]
    scale = 256 / min(h, w)
    resized = Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    crop = resized.crop((left, top, left + 224, top + 224))
    return np.asarray(crop, np.float32) / 127.5 - 1


@pytest.fixture(scope="module")
def pre() -> Preprocessor:
    p = Preprocessor(canvas_px=512, buckets=(1, 4))
    p.warm_up()
    return p


def _photos() -> list[np.ndarray]:
    from skimage import data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [data.chelsea(), data.coffee(), data.astronaut(), data.hubble_deep_field()]


def test_matches_pillow_reference(pre: Preprocessor) -> None:
    for image in _photos():
        out = pre([fit_to_canvas(image, 512)])[0]
        assert out.shape == (224, 224, 3) and out.dtype == np.float32
        diff = np.abs(out - _reference(image))
        assert diff.mean() < 0.02, diff.mean()


def test_batch_equals_single_and_pads_to_buckets(pre: Preprocessor) -> None:
    squares = [fit_to_canvas(img, 512) for img in _photos()[:3]]
    batch = pre(squares)
    assert batch.shape == (3, 224, 224, 3)
    for i, square in enumerate(squares):
        np.testing.assert_allclose(batch[i], pre([square])[0], atol=1e-5)
    assert pre.bucket_for(3) == 4


def test_chunks_are_read_only_views_of_one_bucket_call_each(pre: Preprocessor) -> None:
    """``chunks`` hands out JAX's own output buffers, one per call of the largest bucket at
    most, without a copy; copied and joined they are the batch ``__call__`` returns, and every
    chunk stays intact while later ones are computed on the same reused canvas."""
    squares = [fit_to_canvas(img, 512) for img in _photos()] * 2 + [
        fit_to_canvas(_photos()[0], 512)
    ]
    chunks = list(pre.chunks(squares))
    assert [len(c) for c in chunks] == [4, 4, 1]
    assert all(not c.flags.writeable and not c.flags.owndata for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), pre(squares))
    np.testing.assert_array_equal(chunks[0], chunks[1])


@pytest.mark.parametrize("side", [256, 259, 300, 511])
def test_pixels_left_on_the_reused_canvas_are_never_read(pre: Preprocessor, side: int) -> None:
    """The canvas is reused between calls: a small square after a large bright one (whose
    pixels stay beyond the small one's side) gives exactly what a fresh canvas gives."""
    rng = np.random.default_rng(side)
    small = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    fresh = Preprocessor(canvas_px=512, buckets=(1, 4))
    expected = fresh([small])
    pre([np.full((512, 512, 3), 255, np.uint8)] * 4)  # fill every slot of the 4-bucket
    pre([np.full((512, 512, 3), 255, np.uint8)])  # and of the 1-bucket
    np.testing.assert_array_equal(pre([small]), expected)
    np.testing.assert_array_equal(pre([small, small])[1], expected[0])


def test_fit_to_canvas_cuts_the_centre_square_and_reduces_large_ones() -> None:
    wide = np.zeros((300, 900, 3), np.uint8)
    wide[:, 300:600] = 200
    square = fit_to_canvas(wide, 512)
    assert square.shape == (300, 300, 3) and square.min() == 200
    big = np.full((2000, 3000, 3), 50, np.uint8)
    reduced = fit_to_canvas(big, 512)
    assert reduced.shape[0] == reduced.shape[1] <= 512
    assert reduced.shape[0] >= 256 and int(reduced.mean()) == 50


def test_refuses_to_run_off_the_main_thread(pre: Preprocessor) -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            pre([np.zeros((256, 256, 3), np.uint8)])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], PreprocessThreadError)


def _dense_reference(canvas: np.ndarray, side: int) -> np.ndarray:
    """The same resize through ``jax.image.scale_and_translate`` (dense weight matrices)."""
    import jax

    factor = 256 / side
    out = jax.image.scale_and_translate(
        canvas.astype(np.float32),
        (224, 224, 3),
        (0, 1),
        np.array([factor, factor], np.float32),
        np.array([-16.0, -16.0], np.float32),
        method="linear",
        antialias=True,
    )
    return np.asarray(np.clip(out, 0, 255)) / 127.5 - 1


@pytest.mark.parametrize("canvas_px", [256, 384, 512, 1024])
def test_sparse_filter_equals_jax_image_scale_and_translate(canvas_px: int) -> None:
    rng = np.random.default_rng(canvas_px)
    picks = {64, 255, 256, 257, canvas_px - 1, canvas_px, *rng.integers(64, canvas_px, 4)}
    sides = sorted(int(s) for s in picks if s <= canvas_px)
    pre = Preprocessor(canvas_px=canvas_px, buckets=(len(sides),))
    squares = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in sides]
    batch = pre(squares)
    for side, square, out in zip(sides, squares, batch, strict=True):
        canvas = np.zeros((canvas_px, canvas_px, 3), np.uint8)
        canvas[:side, :side] = square
        # float32 sums in another order: within 0.013 of a grey level
        expected = _dense_reference(canvas, side)
        np.testing.assert_allclose(out, expected, atol=1e-4, err_msg=str(side))


#: Squares whose rows read fall on both sides of the edges of the first pass's compiled spans
#: (256 and 384 rows on a 512 px canvas, and every eighth between), up to the largest squares,
#: whose rows end at the canvas's last.
_SPAN_EDGE_SIDES = (64, 200, 288, 289, 290, 291, 330, 362, 363, 364, 400, 434, 435, 436, 437)
_SPAN_EDGE_SIDES_LARGE = (470, 507, 508, 509, 510, 511, 512)


def test_the_first_pass_covers_the_rows_read_at_every_span() -> None:
    """The resize's first pass runs over the canvas rows its second pass reads (from the first
    one, in a compiled number of rows), not the whole canvas: at the edges of every span it
    gives the dense resize, with bright pixels left on the reused canvas around each square."""
    sides = _SPAN_EDGE_SIDES + _SPAN_EDGE_SIDES_LARGE
    rng = np.random.default_rng(7)
    pre = Preprocessor(canvas_px=512, buckets=(len(sides),))
    pre([np.full((512, 512, 3), 255, np.uint8)] * len(sides))
    squares = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in sides]
    for side, square, out in zip(sides, squares, pre(squares), strict=True):
        canvas = np.zeros((512, 512, 3), np.uint8)
        canvas[:side, :side] = square
        np.testing.assert_allclose(
            out, _dense_reference(canvas, side), atol=1e-4, err_msg=str(side)
        )

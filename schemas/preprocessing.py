"""The model contract shared by the service and the model server.

Dependency-free on purpose: both the service's environment and the model server's environment
import this module, so the two sides can never disagree on sizes, interpolation or scaling.
"""

from __future__ import annotations

from typing import Final

#: Triton model served by ``serving`` and used by default by the consumer.
MODEL_NAME: Final = "efficientnet_lite0"
MODEL_VERSION: Final = "1"
#: Triton tensor names.
INPUT_NAME: Final = "IMAGE"
EMBEDDING_OUTPUT: Final = "EMBEDDING"
LOGITS_OUTPUT: Final = "LOGITS"
#: Width of ``EMBEDDING`` (global-average-pooled features) and ``LOGITS``.
EMBEDDING_DIM: Final = 1280
NUM_CLASSES: Final = 1000

#: The shorter side is resized to this many pixels, then the centre is cropped.
RESIZE_SHORTER_PX: Final = 256
CROP_PX: Final = 224
#: Interpolation used for the resize (``jax.image`` method name).
INTERPOLATION: Final = "bilinear"
#: Pixels in [0, 255] map to ``(x - MEAN * 255) / (STD * 255)``, i.e. ``x / 127.5 - 1``.
MEAN: Final = (0.5, 0.5, 0.5)
STD: Final = (0.5, 0.5, 0.5)
#: Layout of the model input: batch, height, width, channels (RGB).
LAYOUT: Final = "NHWC"
#: Largest batch the server accepts in one request.
MAX_BATCH: Final = 64


def preprocessing_id() -> str:
    """A stable description of the preprocessing, recorded with every collection."""
    return (
        f"resize-shorter-{RESIZE_SHORTER_PX}-{INTERPOLATION}/center-crop-{CROP_PX}/"
        f"mean-{MEAN[0]}-std-{STD[0]}/{LAYOUT}-rgb-f32"
    )


def scale_and_offset() -> tuple[float, float]:
    """Per-pixel affine map ``x * scale + offset`` taking uint8 RGB to the model's range."""
    scale = 1.0 / (255.0 * STD[0])
    offset = -MEAN[0] / STD[0]
    return scale, offset

"""Fixtures of the model server's tests: the real weights file and a reference preprocessing."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from serving.exceptions import FatalWeightsError
from serving.weights import WEIGHTS_PACKAGE, default_weights_path

ROOT = Path(__file__).resolve().parents[2]
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"


@pytest.fixture(scope="session")
def weights_path() -> Path:
    """The ImageNet weights file, from this environment or the model server's environment."""
    try:
        return default_weights_path()
    except FatalWeightsError:
        pass
    if SERVING_PYTHON.is_file():
        proc = subprocess.run(
            [
                str(SERVING_PYTHON),
                "-c",
                "import sys; sys.path.insert(0, sys.argv[1]); "
                "from serving.weights import default_weights_path; print(default_weights_path())",
                str(ROOT),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        path = Path(proc.stdout.strip())
        if proc.returncode == 0 and path.is_file():
            return path
    pytest.skip(f"{WEIGHTS_PACKAGE} is installed neither here nor in .venv-serving")


def reference_preprocess(rgb: np.ndarray) -> np.ndarray:
    """Pillow version of the model contract: shorter side to 256 (bilinear), centre crop 224,
    ``x / 127.5 - 1``; returns float32 [224, 224, 3]."""
    from PIL import Image

    from schemas import preprocessing as contract

    image = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")
    width, height = image.size
    scale = contract.RESIZE_SHORTER_PX / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    crop = contract.CROP_PX
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    scale_px, offset = contract.scale_and_offset()
    return np.asarray(image, dtype=np.float32) * np.float32(scale_px) + np.float32(offset)


@pytest.fixture(scope="session")
def preprocess() -> Callable[[np.ndarray], np.ndarray]:
    """The reference preprocessing (see :func:`reference_preprocess`)."""
    return reference_preprocess

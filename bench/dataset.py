"""The benchmark's images: real photos from scikit-image, re-cut and re-encoded to a realistic mix.

Each file is a random crop of one photo (aspect 1:1 to 16:9, either orientation) resized so its
long side lies between 320 and 3000 px (log-uniform, so small and large are equally common in
ratio), with light sensor noise so large files compress like real photos rather than like
upscaled ones. About 85% are JPEG (quality 75-95, some greyscale, some 4:4:4 chroma), the rest
PNG (up to 1600 px, one with an alpha channel). The set is written once under
``.cache/bench/`` and reused by every later run with the same size and seed.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

DATASET_VERSION = 1
#: scikit-image photos bundled with the package (no download needed).
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "motorcycle_left",
    "motorcycle_right",
    "cell",
    "clock",
    "logo",
)
ASPECTS: tuple[float, ...] = (1.0, 4 / 3, 3 / 2, 16 / 9)
MIN_LONG_SIDE_PX = 320
MAX_LONG_SIDE_PX = 3000
MAX_PNG_LONG_SIDE_PX = 1600
PNG_SHARE = 0.15


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One generated file (name relative to the dataset folder)."""

    name: str
    format: str
    width: int
    height: int
    bytes: int


@dataclass(frozen=True)
class Dataset:
    """The generated files and the folder that holds them."""

    folder: Path
    files: tuple[ImageFile, ...]

    def uri(self, index: int, base_url: str | None = None) -> str:
        """URI of file ``index`` (modulo the set size): file:// or under ``base_url``."""
        item = self.files[index % len(self.files)]
        if base_url:
            return f"{base_url.rstrip('/')}/{item.name}"
        return (self.folder / item.name).as_uri()

    def summary(self) -> dict[str, Any]:
        """Counts and size distribution, for the results file."""
        sides = np.array([max(f.width, f.height) for f in self.files])
        sizes = np.array([f.bytes for f in self.files])
        formats: dict[str, int] = {}
        for f in self.files:
            formats[f.format] = formats.get(f.format, 0) + 1
        return {
            "files": len(self.files),
            "formats": formats,
            "long_side_px": {
                "min": int(sides.min()),
                "p50": int(np.median(sides)),
                "max": int(sides.max()),
            },
            "file_kib": {
                "mean": round(float(sizes.mean()) / 1024, 1),
                "p50": round(float(np.median(sizes)) / 1024, 1),
                "max": round(float(sizes.max()) / 1024, 1),
            },
            "total_mib": round(float(sizes.sum()) / 1024 / 1024, 1),
        }


def _photo(name: str) -> np.ndarray:
    from skimage import data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            image = left if name.endswith("left") else right
        else:
            image = getattr(data, name)()
    if image.dtype != np.uint8:
        image = (image * 255).astype(np.uint8) if image.dtype == bool else image.astype(np.uint8)
    return np.ascontiguousarray(image)


def _noisy(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = rng.normal(0.0, sigma, image.shape).astype(np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _one(
    photo: np.ndarray, rng: np.random.Generator, index: int, name: str, folder: Path
) -> ImageFile:
    from PIL import Image

    alpha = photo.ndim == 3 and photo.shape[2] == 4
    png = alpha or rng.random() < PNG_SHARE
    h, w = photo.shape[:2]
    aspect = float(rng.choice(ASPECTS))
    if rng.random() < 0.35:
        aspect = 1 / aspect  # portrait
    # the largest crop of this aspect, then shrink it to 60-100% of that
    cw, ch = (w, w / aspect) if w / aspect <= h else (h * aspect, h)
    shrink = math.sqrt(rng.uniform(0.6, 1.0))
    cw, ch = max(16, int(cw * shrink)), max(16, int(ch * shrink))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    top = MAX_PNG_LONG_SIDE_PX if png else MAX_LONG_SIDE_PX
    long_side = int(math.exp(rng.uniform(math.log(MIN_LONG_SIDE_PX), math.log(top))))
    scale = long_side / max(cw, ch)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    image = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BILINEAR)
    if scale > 1.2 and not alpha:  # upscaled: give it the grain of a real photo
        image = Image.fromarray(_noisy(np.asarray(image), rng, 2.5))
    if not png and image.mode == "RGB" and rng.random() < 0.05:
        image = image.convert("L")
    stem = f"{index:05d}_{name}"
    if png:
        path = folder / f"{stem}.png"
        image.save(path, format="PNG", compress_level=6)
        fmt = "PNG"
    else:
        path = folder / f"{stem}.jpg"
        quality = int(rng.integers(75, 96))
        subsampling = 0 if rng.random() < 0.2 else 2  # 4:4:4 or 4:2:0
        image.save(path, format="JPEG", quality=quality, subsampling=subsampling, optimize=False)
        fmt = "JPEG"
    return ImageFile(path.name, fmt, image.width, image.height, path.stat().st_size)


def build_dataset(cache_dir: Path, count: int, seed: int = 0) -> Dataset:
    """The data set of ``count`` files for ``seed``: read from the cache, else generated there."""
    folder = cache_dir / f"images-v{DATASET_VERSION}-n{count}-s{seed}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        files = tuple(ImageFile(**f) for f in orjson.loads(manifest.read_bytes())["files"])
        if len(files) == count and all((folder / f.name).is_file() for f in files):
            return Dataset(folder.resolve(), files)
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    photos = {name: _photo(name) for name in PHOTOS}
    files = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        files.append(_one(photos[name], rng, i, name, staging))
    (staging / "manifest.json").write_bytes(
        orjson.dumps(
            {"version": DATASET_VERSION, "seed": seed, "files": [asdict(f) for f in files]}
        )
    )
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return Dataset(folder.resolve(), tuple(files))


def message_value(id_: str, uri: str, metadata: dict[str, Any] | None = None) -> bytes:
    """An ``image.v1`` upsert record value."""
    from schemas import ImageMessage, encode_message

    return encode_message(ImageMessage("upsert", id_, uri, metadata))


def backlog(
    dataset: Dataset, count: int, prefix: str, base_url: str | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """``count`` (key, value) records with fresh ids, cycling through the files in a fixed order."""
    order = np.random.default_rng(1).permutation(len(dataset.files))
    for i in range(count):
        id_ = f"{prefix}-{i:07d}"
        uri = dataset.uri(int(order[i % len(order)]), base_url)
        yield id_.encode(), message_value(id_, uri)

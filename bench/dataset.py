"""The benchmark's images: real photos from scikit-image, re-cut and re-encoded to a realistic mix.

Each file is a random crop of one photo (aspect 1:1 to 16:9, either orientation) resized so its
long side lies between 320 and 3000 px (log-uniform, so small and large are equally common in
ratio), with light sensor noise so large files compress like real photos rather than like
upscaled ones. About 85% are JPEG (quality 75-95, some greyscale, some 4:4:4 chroma), the rest
PNG (up to 1600 px, one with an alpha channel). The set is written once under
``.cache/bench/`` and reused by every later run with the same size and seed.

The photo-sized set (:func:`build_photo_dataset`, for the consumer-bound section) holds JPEGs
only, long side 1600-4000 px with sensor-like noise, about 1 MB or more each, like phone or
catalogue photos.
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
    return _cached(cache_dir / f"images-v{DATASET_VERSION}-n{count}-s{seed}", count, seed, _one)


def _cached(folder: Path, count: int, seed: int, make: Any) -> Dataset:
    """The set in ``folder`` when its manifest lists ``count`` files that exist, else written
    there with ``make(photo, rng, index, name, folder)`` for each file (atomically)."""
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
        files.append(make(photos[name], rng, i, name, staging))
    (staging / "manifest.json").write_bytes(
        orjson.dumps(
            {"version": DATASET_VERSION, "seed": seed, "files": [asdict(f) for f in files]}
        )
    )
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return Dataset(folder.resolve(), tuple(files))


#: The photo-sized set: JPEGs only, long side 1600-4000 px, as phone or catalogue photos.
PHOTO_MIN_LONG_SIDE_PX = 1600
PHOTO_MAX_LONG_SIDE_PX = 4000


def _photo_sized(
    photo: np.ndarray, rng: np.random.Generator, index: int, name: str, folder: Path
) -> ImageFile:
    """One photo-sized JPEG: a crop of ``photo`` upscaled to a long side of 1600-4000 px, with
    sensor-like noise (per-pixel grain plus a little per-row banding) so that it compresses like
    a camera's file (about 1 MB and more), not like a smooth upscaled one."""
    from PIL import Image

    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    photo = photo[..., :3]
    h, w = photo.shape[:2]
    aspect = float(rng.choice(ASPECTS[1:]))
    if rng.random() < 0.35:
        aspect = 1 / aspect  # portrait
    cw, ch = (w, w / aspect) if w / aspect <= h else (h * aspect, h)
    shrink = math.sqrt(rng.uniform(0.7, 1.0))
    cw, ch = max(16, int(cw * shrink)), max(16, int(ch * shrink))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = np.ascontiguousarray(photo[y0 : y0 + ch, x0 : x0 + cw])
    long_side = int(rng.uniform(PHOTO_MIN_LONG_SIDE_PX, PHOTO_MAX_LONG_SIDE_PX))
    scale = long_side / max(cw, ch)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    image = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC))
    sigma = float(rng.uniform(3.5, 6.0))
    grain = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    banding = rng.normal(0.0, sigma / 4, (image.shape[0], 1, 1)).astype(np.float32)
    noisy = np.clip(image.astype(np.float32) + grain + banding, 0, 255).astype(np.uint8)
    path = folder / f"{index:05d}_{name}.jpg"
    quality = int(rng.integers(88, 96))
    Image.fromarray(noisy).save(path, format="JPEG", quality=quality, subsampling=2)
    return ImageFile(path.name, "JPEG", size[0], size[1], path.stat().st_size)


def build_photo_dataset(cache_dir: Path, count: int, seed: int = 0) -> Dataset:
    """The photo-sized set of ``count`` JPEGs for ``seed``: from the cache, else generated there."""
    return _cached(
        cache_dir / f"photos-v{DATASET_VERSION}-n{count}-s{seed}", count, seed, _photo_sized
    )


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

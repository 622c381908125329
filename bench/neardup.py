"""How well the near-duplicate threshold separates copies of a photo from other photos.

A labelled set is built from every real photo shipped with the installed packages (scikit-image's
data, matplotlib's sample data): each photo plus copies made the way copies are made in the wild
(crops of 60-90 %, resizes, JPEG recompression, a mirror flip, small overlays, combinations),
encoded as files. Every image is embedded exactly as ingestion does it (decode, JAX preprocess,
the real model behind Triton, L2 normalisation); for every pair the cosine similarity is the score
Milvus would report. Two images are a true pair when they come from the same photo; the two views
of scikit-image's stereo motorcycle pair are different photos (near-identical, but distinct).

    .venv/bin/python -m bench.neardup [--triton-url grpc://host:port] [--json FILE]

Without ``--triton-url`` a Triton with the reference model is started on free loopback ports.
Prints a Markdown table of precision and recall at thresholds 0.90-0.99.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

#: The threshold the measurement below recommends (docs/near-duplicates.md).
RECOMMENDED = 0.92
THRESHOLDS = (0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


@dataclass(frozen=True)
class Item:
    name: str  # source/transform
    source: str  # the photo it comes from
    transform: str
    data: bytes  # the encoded file


def _rgb(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.dtype != np.uint8:
        array = (255 * (array - array.min()) / max(1e-9, float(array.max() - array.min()))).astype(
            np.uint8
        )
    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


def photos() -> dict[str, Image.Image]:
    """Every real photo available offline (synthetic images, scans of text, 25-pixel faces and
    volumes left out)."""
    from skimage import data

    found: dict[str, Image.Image] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in (
            "astronaut",
            "camera",
            "chelsea",
            "coffee",
            "coins",
            "hubble_deep_field",
            "immunohistochemistry",
            "moon",
            "retina",
            "rocket",
            "clock",
            "microaneurysms",
            "brick",
            "grass",
            "gravel",
            "cell",
            "page",
        ):
            found[name] = _rgb(getattr(data, name)())
        left, right, _ = data.stereo_motorcycle()
        found["motorcycle_left"] = _rgb(left)
        found["motorcycle_right"] = _rgb(right)
    import matplotlib.cbook as cbook

    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        with cbook.get_sample_data(name) as f:
            found[Path(name).stem] = Image.open(io.BytesIO(f.read())).convert("RGB")
    with cbook.get_sample_data("s1045.ima.gz") as f:  # an MRI slice, 256x256 16-bit
        raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        found["mri"] = _rgb(np.frombuffer(raw, np.uint16).reshape(256, 256).astype(np.float64))
    return found


def _crop(fraction: float, where: str = "centre") -> Callable[[Image.Image], Image.Image]:
    def crop(im: Image.Image) -> Image.Image:
        w, h = im.size
        cw, ch = int(w * fraction), int(h * fraction)
        x, y = ((w - cw) // 2, (h - ch) // 2) if where == "centre" else (0, 0)
        if where == "corner_br":
            x, y = w - cw, h - ch
        return im.crop((x, y, x + cw, y + ch))

    return crop


def _resize(factor: float) -> Callable[[Image.Image], Image.Image]:
    def resize(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.resize((max(16, int(w * factor)), max(16, int(h * factor))), Image.LANCZOS)

    return resize


def _overlay_text(im: Image.Image) -> Image.Image:
    im = im.copy()
    draw = ImageDraw.Draw(im)
    w, h = im.size
    for k in range(3):
        draw.text((w // 20, h - h // 8 - k * h // 30), "(c) example.com  SAMPLE", fill=(255,) * 3)
    return im


def _overlay_logo(im: Image.Image) -> Image.Image:
    """A coloured badge over about 4 % of the image, in a corner."""
    im = im.copy()
    w, h = im.size
    bw, bh = w // 5, h // 5
    draw = ImageDraw.Draw(im)
    draw.rectangle((w - bw - 4, 4, w - 4, 4 + bh), fill=(230, 40, 40), outline=(255, 255, 255))
    draw.ellipse((w - bw + bw // 4, 4 + bh // 4, w - bw // 4, 4 + 3 * bh // 4), fill=(255,) * 3)
    return im


def _jpeg(quality: int) -> Callable[[Image.Image], bytes]:
    def encode(im: Image.Image) -> bytes:
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=quality)
        return out.getvalue()

    return encode


def _png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


#: name -> (image transform, encoder): how copies are made in the wild.
TRANSFORMS: dict[
    str, tuple[Callable[[Image.Image], Image.Image], Callable[[Image.Image], bytes]]
] = {
    "crop60": (_crop(0.60), _jpeg(90)),
    "crop75_corner": (_crop(0.75, "corner"), _jpeg(90)),
    "crop90_corner": (_crop(0.90, "corner_br"), _jpeg(90)),
    "resize50": (_resize(0.5), _jpeg(90)),
    "resize25": (_resize(0.25), _jpeg(90)),
    "jpeg30": (lambda im: im, _jpeg(30)),
    "jpeg10": (lambda im: im, _jpeg(10)),
    "flip": (ImageOps.mirror, _jpeg(90)),
    "text_overlay": (_overlay_text, _jpeg(85)),
    "logo_overlay": (_overlay_logo, _jpeg(85)),
    "crop80_resize60_jpeg40": (lambda im: _resize(0.6)(_crop(0.8)(im)), _jpeg(40)),
    "flip_crop85_text": (lambda im: _overlay_text(_crop(0.85)(ImageOps.mirror(im))), _jpeg(75)),
}


def labelled_set() -> list[Item]:
    items = []
    for source, im in sorted(photos().items()):
        items.append(Item(f"{source}/original", source, "original", _png(im)))
        for name, (transform, encode) in TRANSFORMS.items():
            items.append(Item(f"{source}/{name}", source, name, encode(transform(im))))
    return items


def embed(items: list[Item], triton_url: str) -> np.ndarray:
    """Unit vectors of ``items``, through the ingestion's decode, preprocessing and model."""
    from consumer.engine.wiring import triton_endpoint
    from consumer.fetch import decode_image
    from consumer.inference import read_model_spec
    from consumer.query import Query, Searcher
    from consumer.settings import Settings
    from schemas import preprocessing as contract

    cache = Path(tempfile.gettempdir()) / "image-embedder-neardup-jax"
    s = Settings(triton_url=triton_url, compilation_cache_dir=cache)
    queries = [
        Query(
            item.name,
            pixels=decode_image(
                item.data, min_shorter_px=contract.RESIZE_SHORTER_PX, max_pixels=s.max_pixels
            ),
        )
        for item in items
    ]
    searcher = Searcher(s)
    searcher.spec = read_model_spec(triton_endpoint(s), s.model, s.model_version, s.output)
    searcher.embed(queries)
    bad = [q.image for q in queries if q.vector is None]
    if bad:
        raise SystemExit(f"error: not embedded: {', '.join(bad)}")
    return np.stack([np.asarray(q.vector, dtype=np.float64) for q in queries])


def measure(items: list[Item], vectors: np.ndarray) -> dict[str, object]:
    sims = np.clip(vectors @ vectors.T, -1.0, 1.0)
    n = len(items)
    upper = np.triu_indices(n, k=1)
    source = np.array([it.source for it in items])
    same = (source[:, None] == source[None, :])[upper]
    scores = sims[upper]
    rows = []
    for t in THRESHOLDS:
        flagged = scores >= t - 1e-9
        tp = int(np.sum(flagged & same))
        fp = int(np.sum(flagged & ~same))
        fn = int(np.sum(~flagged & same))
        # per copy, as ingestion decides: ingest the originals, then is the copy's nearest
        # original at or above t, and is it its own?
        originals = [i for i, it in enumerate(items) if it.transform == "original"]
        copies = [i for i, it in enumerate(items) if it.transform != "original"]
        o = np.array(originals)
        right = wrong = 0
        for c in copies:
            best = o[int(np.argmax(sims[c, o]))]
            if sims[c, best] >= t - 1e-9:
                if items[best].source == items[c].source:
                    right += 1
                else:
                    wrong += 1
        # distinct originals that a threshold would call copies of each other
        orig_fp = sum(
            1
            for a in range(len(originals))
            for b in range(a + 1, len(originals))
            if sims[originals[a], originals[b]] >= t - 1e-9
        )
        rows.append(
            {
                "threshold": t,
                "pair_precision": tp / (tp + fp) if tp + fp else 1.0,
                "pair_recall": tp / (tp + fn) if tp + fn else 1.0,
                "copies_flagged_right": right,
                "copies_flagged_wrong": wrong,
                "copies": len(copies),
                "distinct_originals_flagged": orig_fp,
            }
        )
    per_transform = {}
    for name in ["original", *TRANSFORMS]:
        if name == "original":
            continue
        idx = [i for i, it in enumerate(items) if it.transform == name]
        own = [
            next(
                j
                for j, it in enumerate(items)
                if it.source == items[i].source and it.transform == "original"
            )
            for i in idx
        ]
        vals = [float(sims[i, j]) for i, j in zip(idx, own, strict=True)]
        per_transform[name] = {
            "min": min(vals),
            "median": float(np.median(vals)),
            **{
                f"share_at_{t:.2f}": float(np.mean(np.array(vals) >= t - 1e-9))
                for t in (0.92, 0.95)
            },
        }
    order = np.argsort(-np.where(same, -2.0, scores))
    hardest = []
    pairs = list(zip(*upper, strict=True))
    for k in order[:8]:
        i, j = pairs[int(k)]
        hardest.append({"a": items[i].name, "b": items[j].name, "score": float(scores[k])})
    return {
        "photos": len({it.source for it in items}),
        "images": n,
        "pairs": len(scores),
        "true_pairs": int(np.sum(same)),
        "thresholds": rows,
        "copy_vs_own_original": per_transform,
        "hardest_distinct_pairs": hardest,
        "stereo_pair_score": float(
            sims[
                next(i for i, it in enumerate(items) if it.name == "motorcycle_left/original"),
                next(i for i, it in enumerate(items) if it.name == "motorcycle_right/original"),
            ]
        ),
    }


def table(result: dict[str, object]) -> str:
    lines = [
        "| threshold | pair precision | pair recall | copies flagged to their photo | "
        "copies flagged to another | distinct photos flagged |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["thresholds"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {r['threshold']:.2f} | {r['pair_precision']:.3f} | {r['pair_recall']:.3f} | "
            f"{r['copies_flagged_right']}/{r['copies']} | {r['copies_flagged_wrong']} | "
            f"{r['distinct_originals_flagged']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.neardup", description=__doc__)
    parser.add_argument("--triton-url", help="grpc://host:port of a running Triton")
    parser.add_argument("--json", type=Path, help="write the full result here")
    args = parser.parse_args(argv)
    items = labelled_set()
    print(f"{len(items)} images from {len({i.source for i in items})} photos", file=sys.stderr)
    if args.triton_url:
        vectors = embed(items, args.triton_url)
    else:
        from devstack import TritonServer, free_port

        with tempfile.TemporaryDirectory() as tmp:
            server = TritonServer(
                Path(tmp) / "triton.log",
                http_port=free_port(),
                grpc_port=free_port(),
                metrics_port=free_port(),
            )
            server.start()
            try:
                vectors = embed(items, server.grpc_url)
            finally:
                server.stop()
    result = measure(items, vectors)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "thresholds"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

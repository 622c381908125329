"""The decode floor: decoding the photo set alone, one thread, at the consumer's reduced size.

``python -m bench.floor FOLDER`` (started by the harness under ``taskset`` on the consumer's core)
reads every JPEG of the folder into memory, then decodes each with libjpeg-turbo's DCT scaling to
the largest power-of-two reduction whose shorter side stays >= 256 px (the consumer's own decode
path, ``consumer.fetch.decode``), and prints one JSON object: images/s (wall) and CPU ms per
image of the best of ``--rounds`` passes. Nothing else runs in the process while it is timed: it
is the least CPU any consumer must spend per image, the figure the consumer's rate is held
against.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import simplejpeg

from consumer.fetch.decode import dct_scale_factor
from schemas import preprocessing as contract


def decode_reduced(
    data: bytes, min_shorter_px: int = contract.RESIZE_SHORTER_PX
) -> tuple[int, int]:
    """Decode one JPEG at its reduced size; returns the decoded (height, width)."""
    height, width, _colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
    factor = dct_scale_factor(width, height, min_shorter_px)
    array = simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        min_height=-(-height // factor),
        min_width=-(-width // factor),
    )
    return int(array.shape[0]), int(array.shape[1])


def measure(blobs: Sequence[bytes], rounds: int) -> dict[str, Any]:
    """Best of ``rounds`` passes over ``blobs`` (after one warm-up decode)."""
    if not blobs:
        raise ValueError("no JPEG files to decode")
    decode_reduced(blobs[0])
    best: dict[str, Any] = {}
    shorter: list[int] = []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.thread_time()
        shorter = [min(decode_reduced(b)) for b in blobs]
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        point = {
            "images": len(blobs),
            "seconds": round(wall, 3),
            "images_per_s": round(len(blobs) / wall, 2),
            "ms_per_image": round(1000 * wall / len(blobs), 3),
            "cpu_ms_per_image": round(1000 * cpu / len(blobs), 3),
        }
        if not best or point["images_per_s"] > best["images_per_s"]:
            best = point
    best["rounds"] = rounds
    best["decoded_shorter_px_min"] = min(shorter)
    best["mean_input_kib"] = round(sum(map(len, blobs)) / len(blobs) / 1024, 1)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("folder", type=Path, help="folder of the photo-sized JPEGs")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    blobs = [p.read_bytes() for p in sorted(args.folder.glob("*.jpg"))]
    try:
        result = measure(blobs, max(1, args.rounds))
    except ValueError as exc:
        print(f"error: {exc} in {args.folder}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure the network's throughput per chunk size, to choose ``--chunk-sizes``.

Run it pinned the way the server will run, e.g. on one core::

    taskset -c 0 .venv-serving/bin/python -m serving.measure --sizes 1,2,4,8,16,32

Sizes are measured in interleaved rounds and the best round is kept, which damps the noise of a
machine shared with other work.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from serving.model import (  # noqa: E402
    EfficientNetLite0,
    default_cache_dir,
    enable_compilation_cache,
    load_params,
)
from serving.weights import default_weights_path, load_legacy_state_dict  # noqa: E402


def measure(sizes: Sequence[int], rounds: int = 3, images_per_round: int = 32) -> dict[int, float]:
    """Best images/s over ``rounds`` for each chunk size (direct calls, no Triton)."""
    params = load_params(load_legacy_state_dict(default_weights_path()))
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1, 1, (max(sizes), 224, 224, 3)).astype(np.float32)
    models = {}
    for size in sizes:
        models[size] = EfficientNetLite0(params, chunk_sizes=sorted({1, size}))
        models[size].compile()
    best = dict.fromkeys(sizes, 0.0)
    for _ in range(rounds):
        for size in sizes:
            calls = max(2, images_per_round // size)
            started = time.perf_counter()
            for _ in range(calls):
                models[size].run_chunk(batch[:size])
            best[size] = max(best[size], calls * size / (time.perf_counter() - started))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.measure", description=__doc__)
    parser.add_argument("--sizes", default="1,2,3,4,8,16,24,32", help="chunk sizes to measure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)
    enable_compilation_cache(args.cache_dir)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    print("| batch | images/s |\n|---|---|")
    for size, rate in measure(sizes, args.rounds).items():
        print(f"| {size} | {rate:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Each pipeline stage alone, on the consumer's cores, at a sweep of its settings.

- fetch + decode (+ the host-side cut to the canvas), the engine's I/O work, per pool size;
- JAX preprocessing per batch bucket (this process is pinned before JAX is imported);
- Milvus writes through the consumer's own writer (read-before-write guard + upsert), per group;
- Triton inference of the reference model with the consumer's client, per client concurrency and
  request batch size: the best point is the ceiling the end-to-end run is compared with.

Every function runs on the main thread (the JAX preprocessor insists on it).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.dataset import Dataset
from consumer.fetch import Fetcher, FetchPolicy, decode_image
from consumer.preprocess import fit_to_canvas
from schemas import preprocessing as contract

CANVAS_PX = 512


@dataclass(frozen=True)
class Sweep:
    """The settings each stage is measured at; each point is measured ``rounds`` times
    (interleaved) and its best round kept, which damps the noise of a shared machine."""

    io_threads: Sequence[int] = (1, 2, 4, 8)
    preprocess_batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
    write_groups: Sequence[int] = (16, 64, 256, 1024)
    write_rows: int = 2048
    triton_concurrency: Sequence[int] = (1, 2, 4, 8)
    triton_batches: Sequence[int] = (1, 2, 4, 8, 16, 32)
    #: Points whose images in flight (concurrency x batch) exceed this are skipped.
    triton_max_in_flight: int = 64
    triton_window_s: float = 3.0
    fetch_images: int = 300
    rounds: int = 2


def _best(points: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return max(points, key=lambda p: p[key]) if points else {}


def _keep_best(best: dict[Any, dict[str, Any]], key: Any, point: dict[str, Any], rate: str) -> None:
    if key not in best or point[rate] > best[key][rate]:
        best[key] = point


def _cpu_s() -> float:
    """CPU seconds of this process so far (all threads)."""
    times = os.times()
    return times.user + times.system


# ----------------------------------------------------------------------------- fetch + decode
def fetch_policy(dataset: Dataset, http: bool) -> FetchPolicy:
    """The consumer's fetch policy for the data set: a file root, or loopback HTTP allowed."""
    if http:
        return FetchPolicy(allowed_networks=("127.0.0.1/32",))
    return FetchPolicy(file_roots=(dataset.folder,))


@dataclass(frozen=True, slots=True)
class Loaded:
    """One image through the engine's I/O work, with the time of each step."""

    square: np.ndarray
    fetch_s: float
    decode_s: float
    fit_s: float


def load_square(fetcher: Fetcher, uri: str) -> Loaded:
    """The engine's I/O work for one URI (``Engine._load``): fetch, decode, cut to the canvas."""
    started = time.perf_counter()
    data = fetcher.fetch(uri)
    fetched = time.perf_counter()
    image = decode_image(data, min_shorter_px=contract.RESIZE_SHORTER_PX)
    decoded = time.perf_counter()
    square = fit_to_canvas(image, CANVAS_PX)
    return Loaded(square, fetched - started, decoded - fetched, time.perf_counter() - decoded)


def measure_fetch_decode(
    dataset: Dataset,
    uris: Sequence[str],
    policy: FetchPolicy,
    threads: Sequence[int],
    rounds: int = 1,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Images/s per I/O pool size, and per-format costs of each step from a single-thread pass."""
    fetcher = Fetcher(policy)
    try:
        squares = []
        by_format: dict[str, list[Loaded]] = {}
        formats = {f.name: f.format for f in dataset.files}
        for uri in uris:  # one pass warms the page cache and gives per-image costs
            loaded = load_square(fetcher, uri)
            squares.append(loaded.square)
            by_format.setdefault(formats.get(Path(uri).name, "?"), []).append(loaded)
        best: dict[int, dict[str, Any]] = {}
        for _ in range(rounds):
            for count in threads:
                with ThreadPoolExecutor(count, thread_name_prefix="io") as pool:
                    cpu = _cpu_s()
                    started = time.perf_counter()
                    list(pool.map(lambda u: load_square(fetcher, u), uris))
                    seconds = time.perf_counter() - started
                    cpu = _cpu_s() - cpu
                point = {
                    "io_threads": count,
                    "images": len(uris),
                    "seconds": round(seconds, 3),
                    "images_per_s": round(len(uris) / seconds, 1),
                    "cpu_ms_per_image": round(1000 * cpu / len(uris), 2),
                }
                _keep_best(best, count, point, "images_per_s")
    finally:
        fetcher.close()
    points = [best[c] for c in threads]
    per_format = {
        fmt: {
            "images": len(items),
            "fetch_ms": round(1000 * float(np.mean([i.fetch_s for i in items])), 2),
            "decode_ms": round(1000 * float(np.mean([i.decode_s for i in items])), 2),
            "fit_to_canvas_ms": round(1000 * float(np.mean([i.fit_s for i in items])), 2),
        }
        for fmt, items in sorted(by_format.items())
    }
    everything = [i for items in by_format.values() for i in items]
    mean_ms = {
        step: round(1000 * float(np.mean([getattr(i, f"{step}_s") for i in everything])), 2)
        for step in ("fetch", "decode", "fit")
    }
    result = {
        "sweep": points,
        "best": _best(points, "images_per_s"),
        "per_format": per_format,
        "mean_ms_per_image": mean_ms,
    }
    return result, squares


# ------------------------------------------------------------------------- JAX preprocessing
def measure_preprocess(
    squares: Sequence[np.ndarray],
    batches: Sequence[int],
    cache_dir: Path,
    min_images: int,
    rounds: int = 1,
) -> dict[str, Any]:
    """Images/s of the JAX step per batch bucket (compiled and warmed before timing)."""
    from consumer.preprocess.jaxprep import Preprocessor

    preprocessors = {}
    for batch in batches:
        pre = Preprocessor(canvas_px=CANVAS_PX, buckets=(batch,), cache_dir=cache_dir)
        pre.warm_up()
        pre(list(squares[:batch]))  # first real call
        preprocessors[batch] = pre
    best: dict[int, dict[str, Any]] = {}
    for _ in range(rounds):
        for batch, pre in preprocessors.items():
            pool = list(squares)
            while len(pool) < max(min_images, batch):
                pool.extend(squares)
            pool = pool[: max(batch, (len(pool) // batch) * batch)]
            cpu = _cpu_s()
            started = time.perf_counter()
            for start in range(0, len(pool), batch):
                pre(pool[start : start + batch])
            seconds = time.perf_counter() - started
            cpu = _cpu_s() - cpu
            point = {
                "batch_size": batch,
                "images": len(pool),
                "seconds": round(seconds, 3),
                "images_per_s": round(len(pool) / seconds, 1),
                "cpu_ms_per_image": round(1000 * cpu / len(pool), 2),
            }
            _keep_best(best, batch, point, "images_per_s")
    points = [best[b] for b in batches]
    return {"sweep": points, "best": _best(points, "images_per_s")}


# ------------------------------------------------------------------------------ Milvus writes
def _rows(count: int, dim: int, prefix: str) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    now_ms = int(time.time() * 1000)
    return [
        {
            "id": f"{prefix}-{i:07d}",
            "embedding": vectors[i].tolist(),
            "uri": f"file:///bench/images/{i:05d}.jpg",
            "metadata": None,
            "model": f"{contract.MODEL_NAME}/{contract.MODEL_VERSION}",
            "ingested_at": now_ms,
            "kafka_ts": now_ms,
            "kafka_partition": 0,
            "kafka_offset": i,
        }
        for i in range(count)
    ]


def _milvus_point(
    client: Any, collection: str, dim: int, group: int, rows: int, server_pid: int | None
) -> dict[str, Any]:
    from bench.servers import tree_cpu_seconds
    from consumer.sink import MilvusWriter, WriteOp
    from schemas import Version

    total = max(rows, 2 * group)
    ops = [
        WriteOp(i, row["id"], Version(row["kafka_ts"], 0, row["kafka_offset"]), row)
        for i, row in enumerate(_rows(total, dim, f"w{group}-{secrets.token_hex(3)}"))
    ]
    done = threading.Event()
    acknowledged = 0

    def on_results(results: list[Any]) -> None:
        nonlocal acknowledged
        acknowledged += len(results)
        if acknowledged >= total:
            done.set()

    writer = MilvusWriter(
        client, collection, on_results=on_results, batch_rows=group, max_age_s=1.0
    )
    writer.start()
    cpu = _cpu_s()
    server_cpu = tree_cpu_seconds(server_pid) if server_pid else 0.0
    started = time.perf_counter()
    writer.submit(ops)
    finished = done.wait(300)
    seconds = time.perf_counter() - started
    cpu = _cpu_s() - cpu
    server_cpu = tree_cpu_seconds(server_pid) - server_cpu if server_pid else None
    writer.close(30)
    if not finished:
        raise TimeoutError(f"Milvus writes of {total} rows did not finish in 300 s")
    return {
        "rows_per_group": group,
        "rows": total,
        "seconds": round(seconds, 3),
        "rows_per_s": round(total / seconds, 1),
        "client_cpu_ms_per_row": round(1000 * cpu / total, 3),
        "server_cpu_ms_per_row": round(1000 * server_cpu / total, 3) if server_cpu else None,
    }


def measure_milvus(
    milvus_uri: str,
    collection: str,
    dim: int,
    groups: Sequence[int],
    rows: int,
    rounds: int = 1,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Rows/s through ``MilvusWriter`` (stale-write read + upsert) per rows-per-group setting.

    ``server_pid`` (a Milvus started here) adds the server's CPU per row to each point.
    """
    from bench.servers import milvus_client
    from consumer.engine.wiring import collection_contract
    from consumer.inference import ModelSpec
    from consumer.sink import MilvusCollection

    spec = ModelSpec(
        contract.MODEL_NAME,
        contract.MODEL_VERSION,
        contract.INPUT_NAME,
        "FP32",
        contract.EMBEDDING_OUTPUT,
        dim,
        contract.MAX_BATCH,
        "python",
    )
    client = milvus_client(milvus_uri)
    try:
        MilvusCollection(client, collection).ensure(collection_contract(spec))
        best: dict[int, dict[str, Any]] = {}
        for _ in range(rounds):
            for group in groups:
                point = _milvus_point(client, collection, dim, group, rows, server_pid)
                _keep_best(best, group, point, "rows_per_s")
    finally:
        client.close()
    points = [best[g] for g in groups]
    return {"sweep": points, "best": _best(points, "rows_per_s")}


# -------------------------------------------------------------------------- Triton inference
def _triton_point(triton: Any, arr: np.ndarray, threads: int, window_s: float) -> dict[str, Any]:
    """``threads`` clients send ``arr`` back to back for ``window_s``; images/s to the last answer.

    Threads stop sending at the end of the window; the rate counts every image answered, up to
    the last answer, so a long request straddling the end is neither lost nor extrapolated.
    """
    images = 0
    latencies: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(threads + 1)
    window = {"start": 0.0, "end": float("inf"), "last": 0.0}

    def worker() -> None:
        nonlocal images
        triton.infer(arr)  # this thread's own client, connected and warm
        ready.wait()
        while time.perf_counter() < window["end"]:
            sent = time.perf_counter()
            triton.infer(arr)
            done = time.perf_counter()
            with lock:
                images += arr.shape[0]
                latencies.append(done - sent)
                window["last"] = max(window["last"], done)

    pool = [
        threading.Thread(target=worker, name=f"triton-{i}", daemon=True) for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    window["end"] = time.perf_counter() + 3600
    ready.wait()
    cpu = _cpu_s()
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + window_s
    for thread in pool:
        thread.join()
    cpu = _cpu_s() - cpu
    seconds = max(1e-9, window["last"] - window["start"])
    return {
        "concurrency": threads,
        "batch_size": int(arr.shape[0]),
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1),
        "request_ms_p50": round(1000 * float(np.median(latencies)), 1) if latencies else None,
        "client_cpu_ms_per_image": round(1000 * cpu / max(1, images), 2),
    }


def _triton_client(triton_url: str) -> tuple[Any, Any]:
    from consumer.inference import read_model_spec
    from consumer.inference.client import TritonEndpoint

    endpoint = TritonEndpoint(protocol="grpc", address=triton_url.split("://", 1)[-1])
    return endpoint, read_model_spec(endpoint, contract.MODEL_NAME, "", contract.EMBEDDING_OUTPUT)


def _triton_input(batch: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = rng.uniform(-1, 1, (batch, contract.CROP_PX, contract.CROP_PX, 3))
    return data.astype(np.float32)


def _fresh_client_point(
    endpoint: Any, spec: Any, arr: np.ndarray, threads: int, window_s: float
) -> dict[str, Any]:
    """``_triton_point`` through new clients (one per thread), closed afterwards."""
    from consumer.inference import TritonInference

    triton = TritonInference(endpoint, spec)
    try:
        return _triton_point(triton, arr, threads, window_s)
    finally:
        triton.close()


def measure_triton(
    triton_url: str,
    concurrency: Sequence[int],
    batches: Sequence[int],
    max_in_flight: int,
    window_s: float,
    rounds: int = 1,
) -> dict[str, Any]:
    """Images/s per (client threads, request batch) through the consumer's gRPC client.

    The client's own CPU per image (serializing 600 KB of float32 per image) is recorded too: on
    the consumer's core it is part of the price of each image.
    """
    endpoint, spec = _triton_client(triton_url)
    data = _triton_input(max(batches))
    grid = [(c, b) for c in concurrency for b in batches if c * b <= max_in_flight]
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for _ in range(rounds):
        for threads, batch in grid:
            point = _fresh_client_point(endpoint, spec, data[:batch], threads, window_s)
            _keep_best(best, (threads, batch), point, "images_per_s")
    points = [best[key] for key in grid]
    return {
        "model": f"{spec.name}/{spec.version}",
        "dim": spec.dim,
        "sweep": points,
        "best": _best(points, "images_per_s"),
    }


def measure_ceiling(triton_url: str, threads: int, batch: int, window_s: float) -> dict[str, Any]:
    """Triton at one setting (the sweep's best) over one long window.

    The end-to-end run is compared with this, taken just before and just after it on the same
    servers: the sweep's best point is the maximum of many short windows, which on a shared
    machine overstates what the model sustains over the half minute an end-to-end run lasts.
    """
    endpoint, spec = _triton_client(triton_url)
    return _fresh_client_point(endpoint, spec, _triton_input(batch), threads, window_s)

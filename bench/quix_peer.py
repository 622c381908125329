"""The peer of the benchmark: the same pipeline written as a Quix Streams application.

Runs in its own environment (``make quix-venv``: quixstreams pins its own confluent-kafka and
pydantic), started by ``bench.quixbench`` as a subprocess. It is written the way the Quix Streams
documentation shows a pipeline: an ``Application`` consuming the ``image.v1`` topic with a JSON
deserializer, a ``StreamingDataFrame`` that fetches, decodes (PIL with its DCT-scaled draft mode)
and preprocesses each message with NumPy to the model's input contract, one Triton gRPC call per
message, and a ``BatchingSink`` that upserts each checkpoint's rows into Milvus with pymilvus;
Quix commits the offsets after the sink has flushed (its checkpointing).

It imports nothing from the service: the contract's constants are repeated here (they are checked
against ``schemas.preprocessing`` by the tests). At the end it writes a JSON summary: rows written,
the time from the first message processed to the last row acknowledged, and its CPU seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import requests
import tritonclient.grpc as grpcclient
from PIL import Image
from pymilvus import MilvusClient
from quixstreams import Application
from quixstreams.sinks.base import BatchingSink, SinkBatch

# The model input contract (schemas/preprocessing.py).
INPUT_NAME = "IMAGE"
OUTPUT_NAME = "EMBEDDING"
RESIZE_SHORTER_PX = 256
CROP_PX = 224
SCALE = 1.0 / 127.5
OFFSET = -1.0
#: The most bytes one image may have (the consumer's default limit).
MAX_BYTES = 50 * 1024 * 1024


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Timeline:
    """First message processed, rows acknowledged, CPU seconds at both ends."""

    def __init__(self) -> None:
        self.first_t: float | None = None
        self.first_cpu = 0.0
        self.last_t: float | None = None
        self.rows = 0
        self.writes = 0

    def processed(self) -> None:
        if self.first_t is None:
            self.first_t = time.monotonic()
            self.first_cpu = _cpu_s()

    def acked(self, rows: int) -> None:
        self.rows += rows
        self.writes += 1
        self.last_t = time.monotonic()

    def summary(self) -> dict[str, Any]:
        seconds = (self.last_t or 0.0) - (self.first_t or 0.0)
        cpu = _cpu_s() - self.first_cpu
        return {
            "rows": self.rows,
            "sink_writes": self.writes,
            "seconds": round(seconds, 3),
            "images_per_s": round(self.rows / seconds, 2) if seconds > 0 else None,
            "cpu_s_per_image": round(cpu / self.rows, 4) if self.rows else None,
        }


class Fetcher:
    """file:// under one root and http(s)://, bounded in size, one HTTP session."""

    def __init__(self, file_root: Path | None, timeout_s: float = 10.0) -> None:
        self.file_root = file_root.resolve() if file_root else None
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def __call__(self, uri: str) -> bytes:
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme == "file":
            path = Path(urllib.parse.unquote(parsed.path)).resolve()
            if self.file_root is None or not path.is_relative_to(self.file_root):
                raise ValueError(f"file outside the allowed root: {uri}")
            if path.stat().st_size > MAX_BYTES:
                raise ValueError(f"image larger than {MAX_BYTES} bytes: {uri}")
            return path.read_bytes()
        if parsed.scheme in ("http", "https"):
            with self.session.get(uri, timeout=self.timeout_s, stream=True) as resp:
                resp.raise_for_status()
                body = bytearray()
                for chunk in resp.iter_content(65536):
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise ValueError(f"image larger than {MAX_BYTES} bytes: {uri}")
                return bytes(body)
        raise ValueError(f"unsupported URI scheme: {uri}")


def preprocess(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> (1, 224, 224, 3) float32: shorter side to 256 (bilinear), centre crop
    224, pixels x / 127.5 - 1 (the model's contract)."""
    img = Image.open(io.BytesIO(data))
    # DCT scaling: decode JPEGs at the smallest scale whose shorter side is still >= 256
    img.draft("RGB", (RESIZE_SHORTER_PX, RESIZE_SHORTER_PX))
    img = img.convert("RGB")
    w, h = img.size
    scale = RESIZE_SHORTER_PX / min(w, h)
    size = (max(CROP_PX, round(w * scale)), max(CROP_PX, round(h * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
    left = (size[0] - CROP_PX) // 2
    top = (size[1] - CROP_PX) // 2
    img = img.crop((left, top, left + CROP_PX, top + CROP_PX))
    pixels = np.asarray(img, dtype=np.float32)
    return (pixels * SCALE + OFFSET)[np.newaxis]


class Embedder:
    """One Triton gRPC client; one inference call per message; L2-normalized vectors."""

    def __init__(self, url: str, model: str, fetch: Fetcher) -> None:
        self.client = grpcclient.InferenceServerClient(url=url)
        self.model = model
        self.fetch = fetch

    def __call__(self, value: dict[str, Any]) -> dict[str, Any]:
        tensor = preprocess(self.fetch(value["uri"]))
        inp = grpcclient.InferInput(INPUT_NAME, list(tensor.shape), "FP32")
        inp.set_data_from_numpy(tensor)
        out = grpcclient.InferRequestedOutput(OUTPUT_NAME)
        result = self.client.infer(self.model, [inp], outputs=[out])
        vector = result.as_numpy(OUTPUT_NAME)[0].astype(np.float32)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError(f"invalid embedding for {value['id']}")
        return {"id": value["id"], "uri": value["uri"], "embedding": (vector / norm).tolist()}


class MilvusSink(BatchingSink):
    """Upserts each checkpoint's batch into a Milvus collection, ``chunk_rows`` rows a call."""

    def __init__(
        self, uri: str, collection: str, model: str, timeline: Timeline, chunk_rows: int
    ) -> None:
        super().__init__()
        self.uri = uri
        self.collection = collection
        self.model = model
        self.timeline = timeline
        self.chunk_rows = chunk_rows
        self.client: MilvusClient | None = None

    def setup(self) -> None:
        self.client = MilvusClient(uri=self.uri)
        if not self.client.has_collection(self.collection):
            raise RuntimeError(f"collection {self.collection} does not exist")

    def write(self, batch: SinkBatch) -> None:
        assert self.client is not None
        for chunk in batch.iter_chunks(n=self.chunk_rows):
            now_ms = int(time.time() * 1000)
            rows = [
                {
                    "id": item.value["id"],
                    "embedding": item.value["embedding"],
                    "uri": item.value["uri"],
                    "metadata": None,
                    "model": self.model,
                    "ingested_at": now_ms,
                    "kafka_ts": item.timestamp,
                    "kafka_partition": batch.partition,
                    "kafka_offset": item.offset,
                }
                for item in chunk
            ]
            self.client.upsert(self.collection, rows)
            self.timeline.acked(len(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="quix_peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--triton", required=True, help="host:port of Triton's gRPC endpoint")
    p.add_argument("--milvus", required=True, help="Milvus URI")
    p.add_argument("--collection", required=True)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--model-label", default="efficientnet_lite0/1", help="the rows' model field")
    p.add_argument("--file-root", type=Path)
    p.add_argument("--messages", type=int, required=True, help="stop after this many rows")
    p.add_argument("--commit-interval-s", type=float, default=5.0, help="Quix's default, 5 s")
    p.add_argument("--chunk-rows", type=int, default=256, help="rows per Milvus upsert")
    p.add_argument("--idle-timeout-s", type=float, default=30.0)
    p.add_argument("--summary", type=Path, required=True, help="write the JSON summary here")
    args = p.parse_args(argv)
    if args.messages < 1:
        p.error("--messages must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timeline = Timeline()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval_s,
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, value_deserializer="json")
    embed = Embedder(args.triton, args.model, Fetcher(args.file_root))

    def started(value: dict[str, Any]) -> bool:
        timeline.processed()
        return value.get("op") == "upsert" and bool(value.get("uri"))

    sdf = app.dataframe(topic)
    sdf = sdf.filter(started)
    sdf = sdf.apply(embed)
    sdf.sink(MilvusSink(args.milvus, args.collection, args.model_label, timeline, args.chunk_rows))
    app.run(count=args.messages, timeout=args.idle_timeout_s)
    args.summary.write_text(json.dumps(timeline.summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

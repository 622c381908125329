"""The Quix Streams peer against the consumer, on the same servers, layout and messages.

For each backlog size a fresh topic gets the same ``image.v1`` messages the end-to-end section
publishes; the peer (``bench/quix_peer.py``, run with the Quix environment's interpreter under the
same ``taskset`` as the consumer) works through one copy into a collection created exactly as the
consumer creates its own, then the consumer through another. The peer's rate runs from the first
message it processed to the last row Milvus acknowledged; the consumer's, held against it, runs
likewise from the first message it polled to the last one done (its own run summary's
``busy_seconds``), and is also held against the end-to-end section's Triton ceiling (the ramp of a
short backlog included). Its steady rate and whole-run rate (first write to last) are reported
beside them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.exceptions import BenchFatalError
from bench.report import ceiling_of

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIX_PYTHON = REPO_ROOT / ".venv-quix" / "bin" / "python"
PEER = REPO_ROOT / "bench" / "quix_peer.py"
#: Quix's default checkpoint interval (the sink flushes and offsets commit at each checkpoint).
COMMIT_INTERVAL_S = 5.0
#: Rows per Milvus upsert in the peer's sink (the consumer writes up to 256 rows in flight).
CHUNK_ROWS = 256


def quix_python() -> Path:
    """The peer's interpreter; a clear error when its environment was not built."""
    if not QUIX_PYTHON.exists():
        raise BenchFatalError("the Quix Streams environment is missing: run `make quix-venv`")
    return QUIX_PYTHON


def ensure_collection(milvus_uri: str, triton_url: str, collection: str) -> str:
    """Create ``collection`` as the consumer would (same schema and index); the model label."""
    from bench.servers import milvus_client
    from consumer.engine.wiring import collection_contract
    from consumer.inference import read_model_spec
    from consumer.inference.client import TritonEndpoint
    from consumer.sink import MilvusCollection
    from schemas import preprocessing as contract

    endpoint = TritonEndpoint(protocol="grpc", address=triton_url.split("://", 1)[-1])
    spec = read_model_spec(endpoint, contract.MODEL_NAME, "", contract.EMBEDDING_OUTPUT)
    client = milvus_client(milvus_uri)
    try:
        MilvusCollection(client, collection).ensure(collection_contract(spec))
    finally:
        client.close()
    return f"{spec.name}/{spec.version}"


def run_peer(
    *,
    bootstrap: str,
    topic: str,
    triton_url: str,
    milvus_uri: str,
    collection: str,
    messages: int,
    file_root: Path | None,
    work: Path,
    cpus: str | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run the peer on a published backlog of ``messages``; its summary plus the wall time."""
    from schemas import preprocessing as contract

    model_label = ensure_collection(milvus_uri, triton_url, collection)
    work.mkdir(parents=True, exist_ok=True)
    summary = work / f"quix-{topic}.json"
    log = work / f"quix-{topic}.log"
    cmd = [
        str(quix_python()),
        str(PEER),
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        f"{topic}-quix",
        "--triton",
        triton_url.split("://", 1)[-1],
        "--milvus",
        milvus_uri,
        "--collection",
        collection,
        "--model",
        contract.MODEL_NAME,
        "--model-label",
        model_label,
        "--messages",
        str(messages),
        "--commit-interval-s",
        str(COMMIT_INTERVAL_S),
        "--chunk-rows",
        str(CHUNK_ROWS),
        "--summary",
        str(summary),
    ]
    if file_root is not None:
        cmd += ["--file-root", str(file_root)]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    limit = timeout_s if timeout_s is not None else max(300.0, messages * 1.0)
    began = time.monotonic()
    with log.open("wb") as out:
        try:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchFatalError(f"the Quix peer ran past {limit:.0f} s; log {log}") from exc
    if proc.returncode != 0 or not summary.exists():
        tail = log.read_text(errors="replace")[-2000:]
        raise BenchFatalError(f"the Quix peer exited with code {proc.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(summary.read_text())
    result["messages"] = messages
    result["wall_s"] = round(time.monotonic() - began, 2)
    return result


def _consumer_whole_run(run: dict[str, Any]) -> float | None:
    seconds = run["seconds_total"] - run["seconds_to_first_write"]
    return round(run["ingested"] / seconds, 2) if seconds > 0 else None


def run_section(bench: Any, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Peer and consumer at each backlog size, on ``bench``'s servers and CPUs."""
    args, ep = bench.args, bench.endpoints
    runs: dict[str, Any] = {}
    ceiling, _ = ceiling_of(bench.results)  # the end-to-end section's, measured before this one
    for size in sizes:
        topic = bench.topic(f"quix{size}", size)
        target = bench.collection(f"quix{size}")
        load_before = os.getloadavg()[0]
        try:
            peer = bench.clock.run(
                f"Quix Streams peer: {size} messages",
                lambda topic=topic, target=target, size=size: run_peer(
                    bootstrap=ep.kafka,
                    topic=topic,
                    triton_url=ep.triton,
                    milvus_uri=ep.milvus,
                    collection=target,
                    messages=size,
                    file_root=None if args.http else bench.dataset.folder,
                    work=bench.work / "logs",
                    cpus=bench.rest_cpus,
                ),
            )
            peer["rows_in_collection"] = _count(ep.milvus, target)
            peer["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        finally:
            bench.release(target)
        print(f"   peer {peer}", flush=True)
        consumer = bench.clock.run(
            f"consumer: {size} messages",
            lambda size=size: bench.backlog_run(f"quixc{size}", size, bench.rest_cpus, None),
        )
        whole = _consumer_whole_run(consumer)
        polled = consumer.get("images_per_s_from_first_poll")
        runs[str(size)] = {
            "peer": peer,
            "consumer": {
                "images_per_s": consumer["images_per_s"],
                "window": consumer["window"],
                "images_per_s_first_to_last_write": whole,
                "images_per_s_from_first_poll": polled,
                "startup_seconds": consumer.get("startup_seconds"),
                "cpu_s_per_image": consumer["cpu_s_per_image"],
                "ingested": consumer["ingested"],
                "other_cores_busy": consumer["machine"]["other_cores_busy"],
                "load_average_1m_end": round(os.getloadavg()[0], 2),
            },
            "ratio": _ratio(consumer["images_per_s"], peer.get("images_per_s")),
            "ratio_first_to_last_write": _ratio(whole, peer.get("images_per_s")),
            # like for like: the peer's rate also runs from the first message it processed to
            # the last row Milvus acknowledged
            "ratio_from_first_poll": _ratio(polled, peer.get("images_per_s")),
            "over_ceiling_from_first_poll": round(polled / ceiling, 3)
            if polled and ceiling
            else None,
        }
        print(f"   {size}: {runs[str(size)]}", flush=True)
    return {
        "peer": "quixstreams 3.28.1 (bench/quix_peer.py)",
        "commit_interval_s": COMMIT_INTERVAL_S,
        "chunk_rows": CHUNK_ROWS,
        "runs": runs,
    }


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours and theirs else None


def _count(milvus_uri: str, collection: str) -> int:
    from bench.servers import milvus_client

    client = milvus_client(milvus_uri)
    try:
        rows = client.query(
            collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"])
    finally:
        client.close()

"""The baseline: a naive consumer that handles one message at a time, start to finish.

poll -> decode the message -> fetch -> decode the image -> JAX preprocess (batch of 1) -> infer
(batch of 1) -> L2 normalize -> upsert one row -> commit synchronously -> next. It uses the same
building blocks as the real consumer (same fetcher, decoder, preprocessing, client, collection),
so the difference measured is only the overlap the real engine adds. It lives here only.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
from confluent_kafka import Consumer

from bench.exceptions import BenchFatalError
from consumer.fetch import Fetcher, FetchPolicy
from schemas import decode_message
from schemas import preprocessing as contract


def run_naive(
    *,
    bootstrap: str,
    topic: str,
    group: str,
    triton_url: str,
    milvus_uri: str,
    collection: str,
    policy: FetchPolicy,
    messages: int,
    cache_dir: Any,
    warmup: int = 3,
) -> dict[str, Any]:
    """Consume ``messages`` messages one by one; images/s and CPU s per image after ``warmup``."""
    from bench.servers import milvus_client
    from bench.stages import CANVAS_PX, load_square
    from consumer.engine.wiring import collection_contract
    from consumer.inference import TritonInference, l2_normalize, read_model_spec
    from consumer.inference.client import TritonEndpoint
    from consumer.preprocess.jaxprep import Preprocessor
    from consumer.sink import MilvusCollection

    endpoint = TritonEndpoint(protocol="grpc", address=triton_url.split("://", 1)[-1])
    spec = read_model_spec(endpoint, contract.MODEL_NAME, "", contract.EMBEDDING_OUTPUT)
    triton = TritonInference(endpoint, spec)
    milvus = milvus_client(milvus_uri)
    MilvusCollection(milvus, collection).ensure(collection_contract(spec))
    pre = Preprocessor(canvas_px=CANVAS_PX, buckets=(1,), cache_dir=cache_dir)
    pre.warm_up()
    fetcher = Fetcher(policy)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    me = psutil.Process()
    done = 0
    started = cpu_started = 0.0
    deadline = time.monotonic() + max(120.0, messages * 2.0)
    try:
        while done < messages:
            if time.monotonic() > deadline:
                raise BenchFatalError(f"naive consumer handled {done} of {messages} in time")
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None:
                continue
            image_msg = decode_message(msg.key(), msg.value())
            square = load_square(fetcher, image_msg.uri or "").square
            tensor = pre([square])
            vectors = triton.infer(tensor)
            unit, valid = l2_normalize(vectors)
            if not valid[0]:
                raise BenchFatalError("the model returned an invalid vector")
            _, ts = msg.timestamp()
            row = {
                "id": image_msg.id,
                "embedding": unit[0].tolist(),
                "uri": image_msg.uri,
                "metadata": None,
                "model": f"{spec.name}/{spec.version}",
                "ingested_at": int(time.time() * 1000),
                "kafka_ts": int(ts),
                "kafka_partition": msg.partition(),
                "kafka_offset": msg.offset(),
            }
            milvus.upsert(collection, [row])
            consumer.commit(message=msg, asynchronous=False)
            done += 1
            if done == warmup:
                started = time.perf_counter()
                times = me.cpu_times()
                cpu_started = times.user + times.system
        seconds = time.perf_counter() - started
        times = me.cpu_times()
        cpu = times.user + times.system - cpu_started
    finally:
        consumer.close()
        fetcher.close()
        triton.close()
        milvus.close()
    timed = messages - warmup
    return {
        "images": timed,
        "seconds": round(seconds, 3),
        "images_per_s": round(timed / seconds, 2),
        "cpu_s_per_image": round(cpu / timed, 4),
    }

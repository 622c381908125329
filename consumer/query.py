"""Operator commands that do not run the loop: search by image, and connectivity checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from consumer.settings import Settings


class QueryError(RuntimeError):
    """The query cannot be answered; the message says why."""


def _read_image_bytes(s: Settings, image: str) -> bytes:
    """A local path (given by the operator) is read as is; a URI goes through the fetch guard."""
    if "://" not in image or image.startswith("file://"):
        path = Path(image.removeprefix("file://"))
        try:
            return path.read_bytes()
        except OSError as exc:
            raise QueryError(f"cannot read {path}: {exc.strerror}") from exc
    from consumer.engine.loop import fetch_policy
    from consumer.fetch import Fetcher, FetchError

    fetcher = Fetcher(fetch_policy(s))
    try:
        return fetcher.fetch(image)
    except FetchError as exc:
        raise QueryError(str(exc)) from exc
    finally:
        fetcher.close()


def embed_image(s: Settings, image: str) -> tuple[np.ndarray, Any]:
    """Embed one image exactly as the consumer does; returns (unit vector, model spec)."""
    from consumer.engine.loop import make_preprocessor, triton_endpoint
    from consumer.fetch import FetchError, decode_image
    from consumer.inference import (
        InferenceRejectedError,
        InferenceUnavailableError,
        ModelMismatchError,
        TritonInference,
        l2_normalize,
        read_model_spec,
    )
    from consumer.preprocess import fit_to_canvas
    from schemas import preprocessing as contract

    data = _read_image_bytes(s, image)
    try:
        decoded = decode_image(
            data, min_shorter_px=contract.RESIZE_SHORTER_PX, max_pixels=s.max_pixels
        )
    except FetchError as exc:
        raise QueryError(str(exc)) from exc
    square = fit_to_canvas(decoded, s.canvas_px)
    endpoint = triton_endpoint(s)
    try:
        spec = read_model_spec(endpoint, s.model, s.model_version, s.output)
    except (InferenceUnavailableError, ModelMismatchError) as exc:
        raise QueryError(str(exc)) from exc
    pre = make_preprocessor(s.model_copy(update={"batch_size": 1}))
    tensor = pre([square])
    triton = TritonInference(endpoint, spec)
    try:
        vectors = triton.infer(tensor)
    except (InferenceUnavailableError, InferenceRejectedError) as exc:
        raise QueryError(f"inference failed: {exc}") from exc
    finally:
        triton.close()
    unit, valid = l2_normalize(vectors)
    if not valid[0]:
        raise QueryError("the model returned a degenerate vector for this image")
    return unit[0], spec


def search_collection(s: Settings, spec: Any, vector: np.ndarray, top_k: int) -> list[dict]:
    """Nearest rows by cosine similarity, refusing a collection built for another model."""
    from consumer.engine.loop import collection_contract
    from consumer.sink import CollectionMismatchError, MilvusCollection, collection_name

    client = _milvus(s)
    try:
        name = collection_name(s.collection or "", collection_contract(spec))
    except CollectionMismatchError as exc:
        raise QueryError(str(exc)) from exc
    if not client.has_collection(name) and not _is_alias(client, name):
        raise QueryError(f"collection {name!r} does not exist")
    coll = MilvusCollection(client, name)
    try:
        coll.check(collection_contract(spec))
    except CollectionMismatchError as exc:
        raise QueryError(str(exc)) from exc
    client.load_collection(coll.name)
    return coll.search(vector.tolist(), top_k)


def _is_alias(client: Any, name: str) -> bool:
    try:
        return bool(client.describe_alias(name).get("collection_name"))
    except Exception:
        return False


def _milvus(s: Settings) -> Any:
    from consumer.sink import connect

    return connect(
        s.milvus_uri,
        s.milvus_token.get_secret_value() if s.milvus_token else None,
        s.milvus_db,
        s.milvus_timeout_s,
        s.milvus_server_pem_path,
    )


def run_checks(s: Settings) -> list[tuple[str, bool, str]]:
    """Each check as (name, passed, detail): broker, topic, Triton model, Milvus collection."""
    from confluent_kafka.admin import AdminClient

    from consumer.engine.loop import collection_contract, triton_endpoint
    from consumer.inference import read_model_spec
    from consumer.sink import MilvusCollection, collection_name

    results: list[tuple[str, bool, str]] = []
    topics: dict[str, Any] | None = None
    try:
        admin = AdminClient(s.kafka_common())
        meta = admin.list_topics(timeout=10)
        topics = meta.topics
        results.append(("kafka", True, f"{len(meta.brokers)} broker(s) at {s.bootstrap_servers}"))
    except Exception as exc:
        results.append(("kafka", False, f"broker at {s.bootstrap_servers} unreachable: {exc}"))
    if s.topic:
        if topics is None:
            results.append(("topic", False, "unknown: the broker is unreachable"))
        elif s.topic in topics and topics[s.topic].error is None:
            parts = len(topics[s.topic].partitions)
            results.append(("topic", True, f"{s.topic} has {parts} partition(s)"))
        else:
            results.append(("topic", False, f"topic {s.topic!r} does not exist"))
    spec = None
    try:
        spec = read_model_spec(triton_endpoint(s), s.model, s.model_version, s.output)
        results.append(
            (
                "triton",
                True,
                f"{spec.name} v{spec.version} ready; {spec.output} has {spec.dim} dims",
            )
        )
    except Exception as exc:
        results.append(("triton", False, f"{s.triton_url}: {exc}"))
    try:
        client = _milvus(s)
        client.list_collections()
        results.append(("milvus", True, f"reachable at {s.milvus_uri}"))
        if s.collection:
            name = s.collection
            if spec is not None:
                name = collection_name(s.collection, collection_contract(spec))
            coll = MilvusCollection(client, name)
            if not client.has_collection(name):
                results.append(("collection", True, f"{name} missing; run creates it"))
            elif spec is None:
                results.append(("collection", False, "cannot compare: the model is unavailable"))
            else:
                try:
                    coll.check(collection_contract(spec))
                    results.append(("collection", True, f"{name} matches the model"))
                except Exception as exc:
                    results.append(("collection", False, str(exc)))
    except Exception as exc:
        results.append(("milvus", False, f"{s.milvus_uri} unreachable: {exc}"))
    s3 = s3_check(s)
    if s3 is not None:
        results.append(s3)
    return results


def s3_check(s: Settings) -> tuple[str, bool, str] | None:
    """Where s3:// credentials come from and whether each allowed bucket answers.

    ``None`` when s3 is not an allowed scheme. Without credentials the check fails only when
    buckets are configured (s3:// is then meant to be used); a 403 to HeadBucket passes with a
    note, since reading objects needs only s3:GetObject.
    """
    if "s3" not in s.allowed_schemes:
        return None
    import botocore.session
    from botocore.exceptions import BotoCoreError, ClientError

    from consumer.engine.loop import fetch_policy
    from consumer.fetch.s3 import make_client

    try:
        credentials = botocore.session.get_session().get_credentials()
        client = make_client(fetch_policy(s))
    except BotoCoreError as exc:
        return ("s3", False, f"cannot configure the S3 client: {exc}")
    endpoint = client.meta.endpoint_url
    if credentials is None:
        detail = f"no AWS credentials found (endpoint {endpoint}): s3:// messages would fail"
        return ("s3", not s.allowed_buckets, detail)
    notes = []
    passed = True
    for bucket in s.allowed_buckets:
        try:
            client.head_bucket(Bucket=bucket)
            notes.append(f"{bucket} ok")
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:
                notes.append(f"{bucket} denied to HeadBucket (no s3:ListBucket?)")
            else:
                passed = False
                notes.append(
                    f"{bucket}: {status or ''} {exc.response.get('Error', {}).get('Code', '')}"
                )
        except BotoCoreError as exc:
            passed = False
            notes.append(f"{bucket}: {type(exc).__name__}")
    buckets = "; ".join(notes) if notes else "every bucket allowed (no --allowed-bucket)"
    source = getattr(credentials, "method", "unknown")
    client.close()
    return ("s3", passed, f"credentials from {source}, endpoint {endpoint}; {buckets}")

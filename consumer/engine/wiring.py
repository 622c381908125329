"""From ``Settings`` to the engine's parts: endpoints, policies, contracts, sizes.

Everything here is a plain function of the settings (and of what the servers said), shared by the
engine, ``search`` (``consumer/query.py``) and the benchmarks, so none of them imports the loop.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from consumer.backoff import Backoff
from consumer.engine.exceptions import EngineFatalError
from consumer.engine.runtime import Clock, MilvusLike, Runtime, SystemClock
from consumer.fetch import FetchPolicy
from consumer.inference import (
    InferenceTLSError,
    InferenceUnavailableError,
    ModelMismatchError,
    ModelSpec,
)
from consumer.inference.client import TritonEndpoint, read_model_spec
from consumer.observability.logging import get_logger
from consumer.observability.metrics import Metrics, RetryOperation
from consumer.settings import Settings
from consumer.sink import CollectionContract, MilvusWriter, WriteOp, WriteResult
from consumer.sink.neardup import NearDuplicates
from consumer.sink.tombstones import Tombstones
from schemas import preprocessing as contract

log = get_logger("consumer.engine")

#: Kafka's default ``max.message.bytes`` of a topic (1 MiB plus the record batch overhead).
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
#: Room for the dead-letter headers (reason, stage, source, version) on top of the record.
DEAD_LETTER_HEADROOM_BYTES = 64 * 1024


def dead_letter_max_bytes(configs: dict[str, str]) -> int:
    """The dead-letter producer's ``message.max.bytes``: the source topic's limit plus room for
    the headers, so a record the source accepted is never refused by our own producer (its
    default, 1 000 000 bytes, is below Kafka's default topic limit)."""
    try:
        limit = int(configs.get("max.message.bytes", KAFKA_DEFAULT_MAX_MESSAGE_BYTES))
    except ValueError:
        limit = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    return limit + DEAD_LETTER_HEADROOM_BYTES


def tombstone_retention_s(s: Settings, configs: dict[str, dict[str, str]]) -> float | None:
    """How long deletions are remembered: ``--tombstone-retention-s``, else the longest
    ``retention.ms`` of the source and dead-letter topics (None: a topic keeps records forever,
    or its retention is unknown, so tombstones are kept)."""
    if s.tombstone_retention_s is not None:
        return s.tombstone_retention_s
    longest = 0
    for topic in (s.topic or "", s.dead_letter_topic):
        value = configs.get(topic, {}).get("retention.ms")
        if value is None or int(value) < 0:
            return None
        longest = max(longest, int(value))
    return longest / 1000


def triton_endpoint(s: Settings) -> TritonEndpoint:
    """Where Triton is; TLS file paths are handed to the client as they are."""
    ssl = s.triton_url.startswith(("https://", "grpcs://")) or bool(s.triton_ssl_root_certificates)
    return TritonEndpoint(
        protocol=s.triton_protocol,
        address=s.triton_address,
        ssl=ssl,
        root_certificates=s.triton_ssl_root_certificates,
        private_key=s.triton_ssl_private_key,
        certificate_chain=s.triton_ssl_certificate_chain,
        timeout_s=s.triton_timeout_s,
    )


def wait_for_model_spec(
    endpoint: TritonEndpoint, s: Settings, stop: threading.Event, clock: Clock | None = None
) -> ModelSpec:
    """Read the model's metadata, waiting (with backoff) while Triton is not up yet; a TLS
    failure (an untrusted certificate, a client certificate refused) is fatal at once."""
    clock = clock or SystemClock()
    backoff = Backoff(initial=0.5, cap=5.0, jitter=0.0)
    deadline = clock.monotonic() + max(60.0, s.triton_timeout_s)
    while True:
        try:
            return read_model_spec(endpoint, s.model, s.model_version, s.output)
        except InferenceTLSError as exc:  # waiting does not mend a certificate
            raise EngineFatalError(f"Triton at {s.triton_url}: {exc}") from exc
        except InferenceUnavailableError as exc:
            if clock.monotonic() > deadline or stop.is_set():
                raise EngineFatalError(f"Triton at {s.triton_url} is not ready: {exc}") from exc
            log.warning("waiting for Triton", url=s.triton_url, error=str(exc))
            clock.wait(stop, backoff.next_delay())
        except ModelMismatchError as exc:
            raise EngineFatalError(str(exc)) from exc


def collection_contract(spec: ModelSpec) -> CollectionContract:
    """What the collection must match: the model, its output, the preprocessing, the size."""
    return CollectionContract(
        model=spec.name,
        model_version=spec.version,
        output=spec.output,
        preprocessing=contract.preprocessing_id(),
        dim=spec.dim,
    )


def make_preprocessor(s: Settings) -> Any:
    """Build and warm the JAX preprocessor (main thread; the only JAX entry point)."""
    from consumer.preprocess.jaxprep import Preprocessor

    pre = Preprocessor(
        canvas_px=s.canvas_px, buckets=s.preprocess_buckets, cache_dir=s.compilation_cache_dir
    )
    pre.warm_up()
    return pre


def fetch_policy(s: Settings) -> FetchPolicy:
    """The ingestion's fetch rules (SSRF guard, limits, timeouts, retries, s3)."""
    return FetchPolicy(
        file_roots=tuple(Path(p) for p in s.file_roots),
        allowed_schemes=frozenset(s.allowed_schemes),
        allow_private_networks=s.allow_private_networks,
        allowed_networks=tuple(s.allowed_networks),
        allowed_hosts=tuple(s.allowed_hosts),
        follow_redirects=s.follow_redirects,
        max_bytes=s.max_download_bytes,
        max_pixels=s.max_pixels,
        connect_timeout_s=s.fetch_connect_timeout_s,
        read_timeout_s=s.fetch_read_timeout_s,
        total_timeout_s=s.fetch_total_timeout_s,
        retries=s.fetch_retries,
        allowed_buckets=tuple(s.allowed_buckets),
        s3_endpoint_url=s.s3_endpoint_url,
        s3_region=s.s3_region,
        s3_path_style=s.s3_path_style,
        s3_requester_pays=s.s3_requester_pays,
        s3_max_pool_connections=max(10, s.io_threads),
    )


def lower_thread_priority(niceness: int) -> None:
    """Make the calling thread ``niceness`` nicer (Linux: per-thread nice by thread id)."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
        )
    except OSError as exc:  # e.g. a seccomp profile that forbids it: run as we are
        log.warning("could not lower the I/O threads' priority", error=str(exc))


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` for the whole process (0: leave its default).

    Left alone where the operator chose already (``MALLOC_ARENA_MAX`` or an ``arena_max`` in
    ``GLIBC_TUNABLES``) and where the C library is not glibc. Call it before the pools start:
    arenas made before the cap stay. Returns whether the cap was set.
    """
    chosen = "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", "")
    if count <= 0 or chosen or platform.libc_ver()[0] != "glibc":
        return False
    m_arena_max = -8  # <malloc.h>
    return bool(ctypes.CDLL(None).mallopt(m_arena_max, count))


def now_iso() -> str:
    """The wall-clock time now, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat()


def consumer_conf(
    s: Settings,
    *,
    bounded: bool,
    on_error: Callable[[KafkaError], None],
    on_stats: Callable[[str], None],
) -> dict[str, Any]:
    """The engine's Kafka consumer: manual commits, cooperative rebalancing, EOF events for a
    bounded run."""
    return {
        **s.kafka_common(),
        "group.id": s.group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": s.session_timeout_ms,
        "max.poll.interval.ms": s.max_poll_interval_ms,
        "enable.partition.eof": bounded,
        "error_cb": on_error,
        "statistics.interval.ms": 5000,
        "stats_cb": on_stats,
    }


def dead_letter_producer_conf(
    s: Settings, configs: dict[str, dict[str, str]], on_error: Callable[[KafkaError], None]
) -> dict[str, Any]:
    """The dead-letter producer: idempotent, every record the source topic accepts fits."""
    return {
        **s.kafka_common(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "zstd",
        # every record the source topic accepts must fit, with its dead-letter headers
        "message.max.bytes": dead_letter_max_bytes(configs.get(s.topic or "", {})),
        "error_cb": on_error,
    }


def make_writer(
    milvus: MilvusLike,
    collection: str,
    s: Settings,
    configs: dict[str, dict[str, str]],
    *,
    metrics: Metrics,
    runtime: Runtime,
    on_results: Callable[[list[WriteResult]], None],
    is_latest: Callable[[WriteOp], bool],
) -> MilvusWriter:
    """The Milvus writer with its tombstones (and near-duplicate check when set), on the
    runtime's clock, random source and thread."""
    tombstones = Tombstones(milvus, collection)
    tombstones.ensure()
    near_duplicates = None
    if s.near_duplicate_threshold is not None:
        near_duplicates = NearDuplicates(
            milvus,
            collection,
            s.near_duplicate_threshold,
            on_flagged=metrics.record_near_duplicates,
        )
        near_duplicates.ensure()
    return MilvusWriter(
        milvus,
        collection,
        on_results=on_results,
        is_latest=is_latest,
        rewrite_same_version=s.rewrite_same_version,
        tombstones=tombstones,
        tombstone_retention_s=tombstone_retention_s(s, configs),
        batch_rows=s.write_batch_rows,
        max_age_s=s.write_max_age_s,
        flush_interval_s=s.flush_interval_s,
        on_retry=lambda exc, delay: metrics.record_retry(RetryOperation.MILVUS),
        on_write_seconds=lambda sec: metrics.observe_stage("write", sec),
        near_duplicates=near_duplicates,
        clock=runtime.clock,
        rng=runtime.random,
        start_thread=runtime.start_thread,
    )

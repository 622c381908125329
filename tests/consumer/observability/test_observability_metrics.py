"""Metric names, labels and units; counters move; librdkafka statistics are parsed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.observability.exceptions import InvalidLabelError
from consumer.observability.metrics import (
    END_TO_END_BUCKETS_SECONDS,
    STAGE_BUCKETS_SECONDS,
    TIMED_STAGES,
    EndToEndKind,
    Metrics,
    Outcome,
    RetryOperation,
    Stage,
)
from schemas.deadletter import ErrorType

#: name -> (type, label names): the contract the dashboard and alerts rely on.
EXPECTED = {
    "image_embedder_messages": ("counter", {"outcome"}),
    "image_embedder_dead_letters": ("counter", {"error_type"}),
    "image_embedder_stage_duration_seconds": ("histogram", {"stage"}),
    "image_embedder_batch_size": ("histogram", set()),
    "image_embedder_end_to_end_seconds": ("histogram", {"kind", "live"}),
    "image_embedder_rows_in_flight": ("gauge", set()),
    "image_embedder_paused_partitions": ("gauge", set()),
    "image_embedder_consumer_lag": ("gauge", {"topic", "partition"}),
    "image_embedder_uncommitted_messages": ("gauge", {"topic", "partition"}),
    "image_embedder_retries": ("counter", {"operation"}),
    "image_embedder_backfill_remaining_messages": ("gauge", set()),
    "image_embedder_near_duplicates": ("counter", set()),
    "image_embedder_build_info": ("gauge", {"version", "model", "model_version"}),
    "image_embedder_last_loop_tick_timestamp_seconds": ("gauge", set()),
}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def exercise(metrics: Metrics) -> None:
    """Touch every metric once, so every labelled series exists."""
    metrics.record_outcome(Outcome.INGESTED)
    metrics.record_dead_letter(ErrorType.NOT_FOUND)
    metrics.observe_stage(Stage.INFER, 0.02)
    metrics.observe_batch_size(32)
    metrics.observe_end_to_end(0.4, kind=EndToEndKind.WRITTEN, live=True)
    metrics.set_rows_in_flight(12)
    metrics.set_paused_partitions(1)
    metrics.set_uncommitted("images", 0, 7)
    metrics.record_retry(RetryOperation.MILVUS)
    metrics.set_build_info(model="efficientnet_lite0", model_version="1", version="1.2.3")
    metrics.tick()
    metrics.update_from_librdkafka_stats(stats({"images": {"0": 5}}))


def stats(lags: dict[str, dict[str, int]]) -> str:
    """A librdkafka statistics document shaped like the real one (trimmed)."""
    topics = {}
    for topic, partitions in lags.items():
        parts = {
            pid: {"partition": int(pid), "consumer_lag": lag, "fetch_state": "active"}
            for pid, lag in partitions.items()
        }
        parts["-1"] = {"partition": -1, "consumer_lag": -1, "fetch_state": "none"}
        topics[topic] = {"topic": topic, "partitions": parts}
    doc = {"name": "rdkafka#consumer-1", "type": "consumer", "ts": 1, "topics": topics}
    return orjson.dumps(doc).decode()


def exposed(metrics: Metrics) -> dict[str, tuple[str, set[str]]]:
    text = generate_latest(metrics.registry).decode()
    families = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):  # creation times, parsed as separate gauges
            continue
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        families[family.name] = (family.type, labels)
    return families


def test_names_types_and_labels_are_the_documented_ones(metrics: Metrics) -> None:
    exercise(metrics)
    assert exposed(metrics) == EXPECTED


def test_exposition_uses_total_suffix_and_base_units(metrics: Metrics) -> None:
    exercise(metrics)
    text = generate_latest(metrics.registry).decode()
    assert 'image_embedder_messages_total{outcome="ingested"} 1.0' in text
    assert "image_embedder_retries_total" in text
    assert "image_embedder_stage_duration_seconds_bucket" in text
    assert "milliseconds" not in text


def test_known_label_values_exist_from_the_start(metrics: Metrics) -> None:
    registry = metrics.registry
    for outcome in Outcome:
        assert registry.get_sample_value("image_embedder_messages_total", {"outcome": outcome}) == 0
    for error_type in ErrorType:
        labels = {"error_type": error_type.value}
        assert registry.get_sample_value("image_embedder_dead_letters_total", labels) == 0
    for operation in RetryOperation:
        labels = {"operation": operation.value}
        assert registry.get_sample_value("image_embedder_retries_total", labels) == 0


def test_the_retry_operations_are_the_documented_ones() -> None:
    docs = Path(__file__).resolve().parents[3] / "docs" / "operations.md"
    row = next(
        line for line in docs.read_text().splitlines() if "`image_embedder_retries_total`" in line
    )
    missing = [op.value for op in RetryOperation if f"`{op.value}`" not in row.split("|")[4]]
    assert not missing, f"operations.md's retries row lacks {missing}"
    assert RetryOperation.KAFKA_AUTH.value == "kafka_auth"


def test_counters_move(metrics: Metrics) -> None:
    registry = metrics.registry
    metrics.record_outcome("ingested", 3)
    metrics.record_outcome(Outcome.DELETED)
    metrics.record_retry("kafka_commit")
    metrics.record_retry("kafka_commit")
    assert registry.get_sample_value("image_embedder_messages_total", {"outcome": "ingested"}) == 3
    assert registry.get_sample_value("image_embedder_messages_total", {"outcome": "deleted"}) == 1
    labels = {"operation": "kafka_commit"}
    assert registry.get_sample_value("image_embedder_retries_total", labels) == 2


def test_a_dead_letter_counts_its_reason_and_its_outcome(metrics: Metrics) -> None:
    registry = metrics.registry
    metrics.record_dead_letter("too_large")
    metrics.record_dead_letter(ErrorType.TOO_LARGE)
    metrics.record_dead_letter(ErrorType.NOT_AN_IMAGE)
    labels = {"error_type": "too_large"}
    assert registry.get_sample_value("image_embedder_dead_letters_total", labels) == 2
    outcome = {"outcome": "dead_lettered"}
    assert registry.get_sample_value("image_embedder_messages_total", outcome) == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.record_outcome("exploded"),
        lambda m: m.record_outcome(Outcome.DEAD_LETTERED),  # only via record_dead_letter
        lambda m: m.record_dead_letter("http://example.com/a.jpg"),
        lambda m: m.record_retry("s3"),
        lambda m: m.observe_stage("upload", 1.0),
    ],
)
def test_label_values_outside_their_set_are_refused(
    metrics: Metrics, call: Callable[[Metrics], object]
) -> None:
    with pytest.raises(InvalidLabelError):
        call(metrics)


def test_stage_histogram_spans_1ms_to_30s(metrics: Metrics) -> None:
    assert STAGE_BUCKETS_SECONDS[0] == 0.001 and STAGE_BUCKETS_SECONDS[-1] == 30.0
    metrics.observe_stage("fetch", 0.0005)
    metrics.observe_stage("fetch", 12.0)
    registry = metrics.registry
    name = "image_embedder_stage_duration_seconds_bucket"
    assert registry.get_sample_value(name, {"stage": "fetch", "le": "0.001"}) == 1
    assert registry.get_sample_value(name, {"stage": "fetch", "le": "30.0"}) == 2
    assert registry.get_sample_value(name, {"stage": "fetch", "le": "+Inf"}) == 2
    for stage in TIMED_STAGES:
        count = registry.get_sample_value(
            "image_embedder_stage_duration_seconds_count", {"stage": stage}
        )
        assert count == (2 if stage == Stage.FETCH else 0)
    assert "commit" in TIMED_STAGES and "parse" not in TIMED_STAGES


def test_end_to_end_keeps_bounded_and_redriven_ages_out_of_the_live_series(
    metrics: Metrics,
) -> None:
    assert END_TO_END_BUCKETS_SECONDS[0] == 0.05 and END_TO_END_BUCKETS_SECONDS[-1] == 86400.0
    name = "image_embedder_end_to_end_seconds"
    registry = metrics.registry
    for kind in EndToEndKind:  # every series exists from the start, at zero
        for live in ("true", "false"):
            labels = {"kind": kind.value, "live": live}
            assert registry.get_sample_value(f"{name}_count", labels) == 0
    metrics.observe_end_to_end(0.3, kind="written", live=True)
    metrics.observe_end_to_end(-2.0, kind=EndToEndKind.WRITTEN, live=True)  # clock skew
    metrics.observe_end_to_end(3 * 86400.0, kind="written", live=False)  # a replay's record
    metrics.observe_end_to_end(1.5, kind="dead_lettered", live=True)
    live = {"kind": "written", "live": "true"}
    assert registry.get_sample_value(f"{name}_count", live) == 2
    assert registry.get_sample_value(f"{name}_sum", live) == pytest.approx(0.3)
    assert registry.get_sample_value(f"{name}_bucket", {**live, "le": "0.05"}) == 1
    assert registry.get_sample_value(f"{name}_bucket", {**live, "le": "0.5"}) == 2
    bounded = {"kind": "written", "live": "false"}
    assert registry.get_sample_value(f"{name}_bucket", {**bounded, "le": "86400.0"}) == 0
    assert registry.get_sample_value(f"{name}_bucket", {**bounded, "le": "+Inf"}) == 1
    dead = {"kind": "dead_lettered", "live": "true"}
    assert registry.get_sample_value(f"{name}_bucket", {**dead, "le": "2.0"}) == 1
    assert registry.get_sample_value(f"{name}_bucket", {**dead, "le": "1.0"}) == 0
    with pytest.raises(InvalidLabelError):
        metrics.observe_end_to_end(1.0, kind="ingested", live=True)


def test_time_stage_records_even_when_the_block_raises(metrics: Metrics) -> None:
    with pytest.raises(RuntimeError), metrics.time_stage("write"):
        raise RuntimeError("milvus down")
    count = metrics.registry.get_sample_value(
        "image_embedder_stage_duration_seconds_count", {"stage": "write"}
    )
    assert count == 1


def test_librdkafka_statistics_set_the_lag_per_partition(metrics: Metrics) -> None:
    metrics.update_from_librdkafka_stats(stats({"images": {"0": 40, "1": 0, "2": -1}}))
    registry = metrics.registry
    lag = "image_embedder_consumer_lag"
    assert registry.get_sample_value(lag, {"topic": "images", "partition": "0"}) == 40
    assert registry.get_sample_value(lag, {"topic": "images", "partition": "1"}) == 0
    # Unknown lag (-1) and the internal partition -1 are skipped.
    assert registry.get_sample_value(lag, {"topic": "images", "partition": "2"}) is None
    assert registry.get_sample_value(lag, {"topic": "images", "partition": "-1"}) is None


def test_partitions_leaving_the_statistics_lose_their_lag(metrics: Metrics) -> None:
    registry = metrics.registry
    lag = "image_embedder_consumer_lag"
    metrics.update_from_librdkafka_stats(stats({"images": {"0": 40, "1": 9}}))
    metrics.update_from_librdkafka_stats(stats({"images": {"0": 35}}))
    assert registry.get_sample_value(lag, {"topic": "images", "partition": "0"}) == 35
    assert registry.get_sample_value(lag, {"topic": "images", "partition": "1"}) is None
    metrics.update_from_librdkafka_stats(stats({"images": {"0": -1}}))
    assert registry.get_sample_value(lag, {"topic": "images", "partition": "0"}) is None


def test_statistics_without_topics_are_harmless(metrics: Metrics) -> None:
    metrics.update_from_librdkafka_stats(b'{"name": "rdkafka#consumer-1", "type": "consumer"}')
    metrics.update_from_librdkafka_stats('{"topics": {"t": {"partitions": {}}}}')
    assert "image_embedder_consumer_lag{" not in generate_latest(metrics.registry).decode()


def test_uncommitted_gap_and_revoked_partitions(metrics: Metrics) -> None:
    registry = metrics.registry
    gap = "image_embedder_uncommitted_messages"
    metrics.set_uncommitted("images", 3, 120)
    metrics.update_from_librdkafka_stats(stats({"images": {"3": 500}}))
    assert registry.get_sample_value(gap, {"topic": "images", "partition": "3"}) == 120
    metrics.set_uncommitted("images", 3, -5)  # never negative
    assert registry.get_sample_value(gap, {"topic": "images", "partition": "3"}) == 0
    metrics.forget_partition("images", 3)
    metrics.forget_partition("images", 3)  # idempotent
    assert registry.get_sample_value(gap, {"topic": "images", "partition": "3"}) is None
    lag = "image_embedder_consumer_lag"
    assert registry.get_sample_value(lag, {"topic": "images", "partition": "3"}) is None


def test_build_info_is_one_series_set_to_one(metrics: Metrics) -> None:
    metrics.set_build_info(model="a", model_version="1", version="0.1.0")
    metrics.set_build_info(model="efficientnet_lite0", model_version="2", version="0.2.0")
    text = generate_latest(metrics.registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("image_embedder_build_info{")]
    assert lines == [
        'image_embedder_build_info{model="efficientnet_lite0",model_version="2",'
        'version="0.2.0"} 1.0'
    ]


def test_tick_feeds_the_gauge_and_the_age(metrics: Metrics) -> None:
    assert metrics.seconds_since_tick() is None
    before = time.time()
    metrics.tick()
    stamp = metrics.registry.get_sample_value("image_embedder_last_loop_tick_timestamp_seconds")
    assert stamp is not None and stamp >= before
    age = metrics.seconds_since_tick()
    assert age is not None and 0 <= age < 60


def test_gauges_follow_the_latest_value(metrics: Metrics) -> None:
    metrics.set_rows_in_flight(40)
    metrics.set_rows_in_flight(3)
    metrics.set_paused_partitions(2)
    registry = metrics.registry
    assert registry.get_sample_value("image_embedder_rows_in_flight") == 3
    assert registry.get_sample_value("image_embedder_paused_partitions") == 2
    metrics.observe_batch_size(17)
    assert registry.get_sample_value("image_embedder_batch_size_sum") == 17


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.record_outcome("ingested")
    labels = {"outcome": "ingested"}
    assert second.registry.get_sample_value("image_embedder_messages_total", labels) == 0
    assert Metrics().registry is not Metrics().registry

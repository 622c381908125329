"""A burst of ten times the normal backlog: resident memory stays within a fixed bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import count_rows
from tests.support.reliability import (
    ConsumerProcess,
    assert_upserts_only,
    assert_written_once_per_ingest,
    image_record,
    publish,
)

pytestmark = pytest.mark.integration

#: The backlog the other scenarios use; the burst is ten times as large.
NORMAL_BACKLOG = 24
BURST_BACKLOG = 10 * NORMAL_BACKLOG
#: Messages consumed but not yet written; the backlog beyond this waits in Kafka.
MAX_ROWS_IN_FLIGHT = 16
#: Fixed peak-RSS bound of the consumer process for MAX_ROWS_IN_FLIGHT (docs/reliability.md).
BURST_RSS_BOUND_BYTES = 1024 * 1024 * 1024
#: How much more the burst may use than the normal backlog: allocator noise, not backlog.
BACKLOG_GROWTH_BOUND_BYTES = 256 * 1024 * 1024


def _ingest(
    count: int,
    topic: str,
    servers: dict[str, str],
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    mutant: str | None = None,
) -> ConsumerProcess:
    create_topic(servers["kafka"], topic, partitions=2)
    records = [
        image_record(f"b{i:04d}", photos[i % len(photos)].as_uri(), partition=i % 2)
        for i in range(count)
    ]
    publish(servers["kafka"], topic, records)
    proc = spawn(
        "--topic", topic, "--group", topic, "--collection", topic, "--until-end",
        "--file-root", str(photos[0].parent),
        "--max-rows-in-flight", str(MAX_ROWS_IN_FLIGHT), "--batch-size", "8",
        **servers, name=f"backlog-{count}", mutant=mutant,
    )  # fmt: skip
    assert proc.wait() == 0, proc.log_tail()
    if mutant:
        proc.assert_mutant_applied()
    assert_upserts_only(proc)
    assert_written_once_per_ingest(proc)
    assert proc.summary()["ingested"] == count
    assert count_rows(servers["milvus"], topic) == count
    assert committed_offsets(servers["kafka"], topic, topic) == end_offsets(servers["kafka"], topic)
    return proc


def test_burst_of_ten_times_the_backlog_keeps_memory_bounded(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
) -> None:
    """Pass: with --max-rows-in-flight 16 the consumer ingests a normal backlog (24) and then
    a burst ten times larger (240), every message once; the burst's peak RSS stays under the
    fixed BURST_RSS_BOUND_BYTES and within BACKLOG_GROWTH_BOUND_BYTES of the normal run's peak
    (the backlog waits in Kafka, not in memory)."""
    servers = {"kafka": kafka_bootstrap, "milvus": milvus_uri, "triton": triton_url}
    normal = _ingest(NORMAL_BACKLOG, f"{unique_name}_normal", servers, photos, spawn)
    burst = _ingest(BURST_BACKLOG, f"{unique_name}_burst", servers, photos, spawn)
    peaks = (normal.peak_rss_bytes, burst.peak_rss_bytes)
    print(f"peak RSS normal {peaks[0] / 2**20:.0f} MiB, burst {peaks[1] / 2**20:.0f} MiB")
    assert 0 < burst.peak_rss_bytes < BURST_RSS_BOUND_BYTES, peaks
    assert burst.peak_rss_bytes <= normal.peak_rss_bytes + BACKLOG_GROWTH_BOUND_BYTES, peaks

"""The benchmark harness still runs: every section on a few dozen messages, no thresholds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent


def _positive(node: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = node.get(key)
        assert isinstance(value, int | float) and value > 0, f"{key} = {value!r} in {node}"


def test_quick_harness_writes_every_section(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    tmp_path: Path,
) -> None:
    """``python -m bench --quick`` on the shared test servers: JSON with sane figures, a PNG."""
    results_dir = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--messages",
            "30",
            "--skip",
            "bound",  # its own test: test_bench_bound.py
            "--skip",
            "quix",  # its own test: test_quix_peer.py
            "--kafka-bootstrap",
            kafka_bootstrap,
            "--milvus-uri",
            milvus_uri,
            "--triton-url",
            triton_grpc_url,
            "--results-dir",
            str(results_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "IMAGE_EMBEDDER_BENCH_CPUS"},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    [json_path] = results_dir.glob("*.json")
    assert json_path.with_suffix(".png").stat().st_size > 10_000
    results = orjson.loads(json_path.read_bytes())
    for section in (
        "machine",
        "layout",
        "dataset",
        "stages",
        "naive",
        "end_to_end",
        "latency",
        "memory",
        "ceiling",
        "ratios",
    ):
        assert section in results, f"no {section!r} section"
    stages = results["stages"]
    _positive(stages["fetch_decode"]["best"], "images_per_s", "io_threads")
    _positive(stages["preprocess"]["best"], "images_per_s", "batch_size")
    _positive(stages["milvus_upsert"]["best"], "rows_per_s", "rows_per_group")
    _positive(stages["triton"]["best"], "images_per_s", "concurrency", "batch_size")
    ceiling = results["ceiling"]
    _positive(ceiling, "images_per_s", "concurrency", "batch_size")
    assert ceiling["concurrency"] == stages["triton"]["best"]["concurrency"]
    _positive(ceiling["before"], "images_per_s")
    _positive(ceiling["after"], "images_per_s")
    _positive(results["naive"], "images_per_s", "cpu_s_per_image")
    e2e = results["end_to_end"]
    _positive(e2e, "images_per_s", "cpu_s_per_image", "peak_rss_mib")
    assert e2e["ingested"] == 30
    assert {"fetch", "decode", "preprocess", "infer", "write"} <= set(e2e["stage_profile"])
    levels = results["latency"]["levels"]
    assert [level["load_fraction"] for level in levels] == [0.5, 0.8, 0.95]
    for level in levels:
        assert level["found"] > 0
        _positive(level, "p50_s", "p99_s")
        assert level["p50_s"] <= level["p95_s"] <= level["p99_s"]
    for label in ("small", "large"):
        _positive(results["memory"][label], "peak_rss_mib", "ingested")
    if results["layout"]["pinned"]:
        _positive(results["unpinned"], "images_per_s")
    assert set(results["ratios"]) == {
        "e2e_over_triton_ceiling",
        "e2e_over_naive",
        "peak_rss_large_over_small_backlog",
        "p99_latency_s_at_50pct_load",
    }
    assert "end to end / Triton ceiling" in proc.stdout

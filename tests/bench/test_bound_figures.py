"""The consumer-bound section's pure parts: the near-free model, the figures and the cost model."""

from __future__ import annotations

import numpy as np
import pytest

from bench import bound
from bench.floor import decode_reduced, measure
from bench.layout import CpuLayout
from schemas import preprocessing as contract
from serving.nearfree import NearFreeModel


def test_near_free_model_keeps_the_reference_contract() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, contract.CROP_PX, contract.CROP_PX, 3)).astype(np.float32)
    images[1] = 0.5
    embedding, logits = NearFreeModel()(images)
    assert embedding.shape == (3, contract.EMBEDDING_DIM) and embedding.dtype == np.float32
    assert logits.shape == (3, contract.NUM_CLASSES) and logits.dtype == np.float32
    assert np.all(np.linalg.norm(embedding, axis=1) > 0)  # normalizable
    assert not np.allclose(embedding[0], embedding[1])  # different images, different vectors
    again, _ = NearFreeModel()(images)
    np.testing.assert_array_equal(embedding, again)  # deterministic


def test_near_free_model_refuses_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        NearFreeModel()(np.zeros((2, 224, 224), dtype=np.float32))


def test_floor_decodes_at_the_reduced_size() -> None:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (2400, 1200), (10, 200, 30)).save(buf, format="JPEG")
    assert decode_reduced(buf.getvalue()) == (300, 600)  # 1/4: shorter side 300 >= 256
    result = measure([buf.getvalue()] * 3, rounds=2)
    assert result["images"] == 3 and result["decoded_shorter_px_min"] == 300
    assert result["images_per_s"] > 0 and result["cpu_ms_per_image"] > 0
    with pytest.raises(ValueError, match="no JPEG"):
        measure([], rounds=1)


def test_plan_gives_the_consumer_a_core_of_its_own() -> None:
    layout = CpuLayout(True, "0,1,2,3", "0", "1,2,3", "4 CPUs")
    p = bound.plan(layout, 100, 2)
    assert (p.core, p.others) == ("3", "0,1,2")
    unpinned = bound.plan(CpuLayout(False, "0", None, None, "one CPU"), 100, 2)
    assert unpinned.core is None and unpinned.others is None


def _run(rate: float, cpu_s: float, main_s: float) -> dict[str, object]:
    return {
        "images_per_s": rate,
        "cpu_s_per_image": cpu_s,
        "cpu_cores_busy": rate * cpu_s,
        "thread_cpu_s_per_image": {"main thread": main_s, "worker threads": cpu_s - main_s},
        "stage_profile": {"decode": {"ms_per_image": 12.0}},
        "peak_rss_mib": 512.0,
        "machine": {"cpu_busy": {"1": 0.9}},
    }


def test_summary_ratios_and_cost_model() -> None:
    floor = {"images_per_s": 80.0, "cpu_ms_per_image": 12.5}
    sources = {
        "file": bound.summarize(_run(40.0, 0.020, 0.001), floor, "1"),
        "s3": bound.summarize(_run(36.0, 0.022, 0.001), floor, "1"),
    }
    fig = sources["file"]
    assert fig["over_decode_floor"] == 0.5
    assert fig["cpu_over_decode_floor"] == 0.625
    assert fig["main_thread_cpu_ms_per_image"] == 1.0
    assert fig["core_busy_by_others"] == pytest.approx(0.1)
    assert bound.ratios(sources) == {"s3_over_file": 0.9, "s3_over_file_per_cpu_s": 0.909}
    section = {"dataset": {"file_kib": {"mean": 1000.0}}, "sources": sources}
    cost = bound.cost_model(section)
    assert cost is not None
    rows = cost["per_source"]["file"]["at"]
    assert [r["consumer_cores"] for r in rows] == [20, 100, 400]  # 50 images per CPU second
    assert rows[0]["memory_gib"] == 10.0
    assert rows[0]["fetch_mbit_per_s"] == 8192
    assert cost["per_source"]["file"]["process_main_thread_limit_images_per_s"] == 1000.0
    assert bound.cost_model({"sources": {}}) is None


def test_sources_run_in_mirrored_parts() -> None:
    """Four parts, each turn the reverse of the one before: a step in the machine's speed
    between any two runs leaves every source's share before it within one part of the others'
    (in two mirrored halves the middle source could have both its halves before it)."""
    order = bound.run_order(("file", "http", "s3"))
    assert order == [
        ("file", 0), ("http", 0), ("s3", 0), ("s3", 1), ("http", 1), ("file", 1),
        ("file", 2), ("http", 2), ("s3", 2), ("s3", 3), ("http", 3), ("file", 3),
    ]  # fmt: skip
    for step in range(len(order) + 1):
        before = [sum(1 for s, _ in order[:step] if s == src) for src in ("file", "http", "s3")]
        assert max(before) - min(before) <= 1, (step, before)
    assert bound.run_order(("file", "http", "s3"), 2) == [
        ("file", 0), ("http", 0), ("s3", 0), ("s3", 1), ("http", 1), ("file", 1)
    ]  # fmt: skip
    assert bound.split_backlog(1500) == [375, 375, 375, 375]
    assert bound.split_backlog(13) == [4, 3, 3, 3]
    assert bound.split_backlog(13, 2) == [7, 6]
    assert bound.split_backlog(2) == [1, 1]  # never a part of no messages
    assert bound.split_backlog(1) == [1]
    assert bound.run_order(("file", "http"), 1) == [("file", 0), ("http", 0)]


def _part(images: int, seconds: float, cpu_s: float, main_s: float, **extra: object) -> dict:
    return {
        "messages": images,
        "ingested": images,
        "dead_lettered": 0,
        "window": "steady: 10% to 90% of the images written",
        "measured_images": images,
        "measured_seconds": seconds,
        "images_per_s": images / seconds,
        "cpu_s_per_image": cpu_s,
        "cpu_cores_busy": images * cpu_s / seconds,
        "thread_cpu_s_per_image": {"main thread": main_s, "worker threads": cpu_s - main_s},
        "server_cores_busy": {"kafka": 0.1},
        "machine": {"cpu_busy": {"1": images * cpu_s / seconds}, "other_cores_busy": 0.0},
        "peak_rss_mib": 500.0,
        "stage_profile": {"decode": {"ms_per_image": 12.0, "observations": images}},
        **extra,
    }


def test_parts_merge_into_one_run_weighted_by_what_each_measured() -> None:
    """Pass: per-image figures are the totals' (not the parts' plain mean), rates the totals'
    over the total time, peak memory the higher; a drift that made the second part 10% dearer
    moves the merged CPU per image to the middle."""
    first = _part(600, 10.0, 0.016, 0.0006)
    second = _part(200, 4.0, 0.0176, 0.0008, peak_rss_mib=540.0)
    second["stage_profile"] = {"decode": {"ms_per_image": 14.0}, "infer": {"ms_per_image": 2.0}}
    run = bound.merge_parts([first, second])
    assert run["measured_images"] == 800 and run["ingested"] == 800
    assert run["images_per_s"] == round(800 / 14.0, 2)
    assert run["cpu_s_per_image"] == round((600 * 0.016 + 200 * 0.0176) / 800, 4)
    assert run["thread_cpu_s_per_image"]["main thread"] == round(
        (600 * 0.0006 + 200 * 0.0008) / 800, 4
    )
    assert run["cpu_cores_busy"] == round((600 * 0.016 + 200 * 0.0176) / 14.0, 3)
    assert run["machine"]["cpu_busy"]["1"] == pytest.approx(run["cpu_cores_busy"], abs=1e-3)
    assert run["peak_rss_mib"] == 540.0
    assert run["stage_profile"] == {
        "decode": {"ms_per_image": 12.5},
        "infer": {"ms_per_image": 0.5},
    }
    assert run["parts"] == [first, second]
    floor = {"images_per_s": 80.0, "cpu_ms_per_image": 12.5}
    fig = bound.summarize(run, floor, "1")
    assert fig["cpu_ms_per_image"] == round(1000 * run["cpu_s_per_image"], 3)
    assert bound.merge_parts([first]) is first
    assert [h["cpu_ms_per_image"] for h in fig["parts"]] == [16.0, 17.6]

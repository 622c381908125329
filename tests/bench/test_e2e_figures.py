"""The latency section's check of the consumer's freshness histogram against its prober."""

from __future__ import annotations

from bench.e2e import END_TO_END, end_to_end_check


def _buckets(counts: dict[str, float], *, live: str = "true") -> dict[str, object]:
    series = {
        (("kind", "written"), ("le", le), ("live", live)): count for le, count in counts.items()
    }
    return {f"{END_TO_END}_bucket": series}


def test_the_median_bucket_and_the_prober_agree_within_a_bucket_width() -> None:
    metrics = _buckets({"0.25": 1, "0.5": 4, "1.0": 9, "2.0": 10, "+Inf": 10})
    check = end_to_end_check(metrics, 0.7)
    assert check == {
        "observed": 10,
        "p50_bucket_s": [0.5, 1.0],
        "prober_p50_s": 0.7,
        "agrees": True,
    }
    assert end_to_end_check(metrics, 1.4)["agrees"] is True  # one width above
    assert end_to_end_check(metrics, 1.6)["agrees"] is False
    assert end_to_end_check(metrics, None) == {"observed": 10, "p50_bucket_s": [0.5, 1.0]}


def test_bounded_series_and_an_unwired_histogram_are_not_compared() -> None:
    assert end_to_end_check(_buckets({"0.5": 3, "+Inf": 3}, live="false"), 0.4) == {"observed": 0}
    assert end_to_end_check({}, 0.4) == {"observed": 0}

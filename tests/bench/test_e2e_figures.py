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


def test_short_backlogs_are_held_from_the_first_poll_against_the_ceiling_and_the_peer() -> None:
    """Pass: the Quix ratio is the like-for-like one (both from the first message handled),
    the steady one only when that is missing; a 600 backlog must reach 0.9 of the ceiling
    from its first poll, a 3 000 one 0.95; another size has no such target."""
    from bench import report

    runs = {
        "600": {"ratio": 2.3, "ratio_from_first_poll": 1.9, "over_ceiling_from_first_poll": 0.88},
        "3000": {"ratio": 2.2, "ratio_from_first_poll": 2.1, "over_ceiling_from_first_poll": 0.96},
        "12": {"ratio": 2.5, "over_ceiling_from_first_poll": 0.5},
    }
    table = report.ratios({"quix": {"runs": runs}})
    assert table["consumer_over_quix_600"]["value"] == 1.9
    assert not table["consumer_over_quix_600"]["met"]
    assert table["consumer_over_quix_3000"]["met"]
    assert table["consumer_over_quix_12"]["value"] == 2.5  # no like-for-like figure: the steady
    ramp600, ramp3000 = (table[f"from_first_poll_over_ceiling_{n}"] for n in (600, 3000))
    assert (ramp600["target"], ramp600["met"]) == (0.9, False)
    assert (ramp3000["target"], ramp3000["met"]) == (0.95, True)
    assert "from_first_poll_over_ceiling_12" not in table

"""Per-partition state of a bounded run across revocations: what 'reached the end' means."""

from __future__ import annotations

from consumer.engine.assignments import Assignments

KEY = ("t", 0)


def _bounded() -> Assignments:
    assignments = Assignments()
    assignments.state(KEY).end = 5
    return assignments


def test_an_eof_of_a_partition_not_assigned_does_not_mark_it_reached() -> None:
    """A late EOF event of a partition given away must not count it as finished (before: it did,
    so a bounded run could end without finishing a partition given back to it)."""
    assignments = _bounded()
    assignments.eof(KEY, 5, position=None)
    assert not assignments.is_reached(KEY)
    assignments.assign(KEY, generation=1)
    assignments.eof(KEY, 5, position=None)
    assert assignments.is_reached(KEY)


def test_a_revoked_partition_is_no_longer_reached() -> None:
    """Revoked (or lost) and given back, a reached partition is read again from the group's
    commit up to its end (before: it stayed reached, and the run could exit 0 without it)."""
    assignments = _bounded()
    assignments.assign(KEY, generation=1)
    assignments.eof(KEY, 5, position=None)
    assert assignments.is_reached(KEY)
    assignments.forget(KEY, generation=2)
    assert not assignments.is_reached(KEY)
    assert assignments.end(KEY) == 5, "the end is fixed once per run"


def test_bounded_run_complete_has_no_side_effects_and_needs_everything_committed() -> None:
    assignments = _bounded()
    assignments.assign(KEY, generation=1)
    assignments.delivered(KEY, 4)  # the last offset before the end was taken in
    in_flight = {KEY: 1}
    committable = {KEY: 5}
    assert not assignments.bounded_run_complete(
        lambda k: in_flight.get(k, 0), lambda keys: committable
    )
    in_flight.clear()
    assert not assignments.bounded_run_complete(lambda k: 0, lambda keys: committable)
    assert assignments.bounded_run_complete(lambda k: 0, lambda keys: {})
    assignments.forget(KEY, generation=2)
    assert not assignments.bounded_run_complete(lambda k: 0, lambda keys: {})


def test_a_record_past_the_end_is_not_taken_and_marks_the_partition_reached() -> None:
    assignments = _bounded()
    assignments.assign(KEY, generation=1)
    assert not assignments.past_end(KEY, 4)
    assert assignments.past_end(KEY, 7) and assignments.past_end(KEY, 6)
    assert assignments.not_taken(KEY) == 7, "the first one handed out and not taken"
    assert assignments.is_reached(KEY)

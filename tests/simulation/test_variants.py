"""Tests of the simulation: each known-bad variant of the engine is found within 500 seeds."""

from __future__ import annotations

import pytest

from tests.simulation.__main__ import find
from tests.simulation.variants import VARIANTS

#: The invariant each variant is expected to break first (any invariant counts as found).
EXPECTED = {
    "registry_last_polled": {"committed_offsets_are_durable", "latest_version_wins"},
    # A member that takes a given-back partition as reached stops reading it; since a bounded
    # member waits for the group's commits to reach every end (groupend.py), the run never ends.
    "reached_kept_on_revoke": {
        "never_stuck",
        "every_message_terminal",
        "outcome_maps_to_exit_status",
    },
    "writer_ignores_generations": {"latest_version_wins", "stored_versions_never_go_back"},
    "commit_highest_finished": {"committed_offsets_are_durable", "no_dead_letter_lost"},
    "dead_letter_refusal_swallowed": {"no_dead_letter_lost", "committed_offsets_are_durable"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_known_bad_variant_is_found_within_500_seeds(variant: str) -> None:
    found = find(variant, most=500, workers=2)
    assert found is not None, f"{variant} not found in 500 seeds"
    print(f"{variant}: seed {found.seed}, {found.invariant}: {found.failure}")
    assert found.invariant in EXPECTED[variant], (found.invariant, found.failure)

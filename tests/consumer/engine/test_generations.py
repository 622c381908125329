"""Assignment generations: every assign, revoke or loss starts a new one; old work is stale."""

from __future__ import annotations

import threading

from consumer.engine.generations import Generations


def test_each_change_of_owner_starts_a_new_generation() -> None:
    gens = Generations()
    key = ("t", 0)
    assert gens.current(key) == 0 and not gens.is_current(key, 0)
    first = gens.advance(key)  # assigned
    assert gens.is_current(key, first)
    gens.advance(key)  # revoked: work of the first owner is stale from now on
    again = gens.advance(key)  # given back to this process
    assert not gens.is_current(key, first) and gens.is_current(key, again)
    assert gens.current(("t", 1)) == 0, "partitions are independent"


def test_generations_are_unique_across_partitions_and_threads() -> None:
    gens = Generations()
    seen: list[int] = []
    lock = threading.Lock()

    def bump(part: int) -> None:
        for _ in range(500):
            value = gens.advance(("t", part))
            with lock:
                seen.append(value)

    threads = [threading.Thread(target=bump, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(1, 2001))

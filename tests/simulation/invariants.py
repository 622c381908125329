"""The invariants: what must hold after every step of a simulated run, and at its end.

Each takes the :class:`~tests.simulation.harness.World` and returns None when it holds, else one
line saying what broke. They read only what is outside the engine (Kafka's commits and topics,
Milvus' rows, the dead-letter topic) except where the invariant is about the engine's own state
(rows in flight, bookkeeping, outcomes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from schemas import Version

if TYPE_CHECKING:
    from tests.simulation.harness import World

Check = Callable[["World"], str | None]


def committed_offsets_are_durable(world: World) -> str | None:
    """No committed offset is past a message that is not durably handled: every record below
    a group's committed offset (from where the group started reading) is in Milvus at its
    version or a higher one (row or tombstone), or in the dead-letter topic, or superseded by a
    higher version of its id that is dead-lettered or not committed yet (still to be done)."""
    stored = world.stored_versions()
    dead = world.dead_letters()
    for group, key, committed in world.commits():
        start = world.verified.get((group, key), world.floor(group, key))
        for offset in range(start, committed):
            msg = world.model.get((key[0], key[1], offset))
            if msg is None:  # a gap: control record, aborted or compacted record
                continue
            if not world.covered(msg, stored, dead, group):
                return (
                    f"group {group} committed {key[0]}[{key[1]}]={committed} but offset {offset} "
                    f"(id {msg.id}, {msg.op}, version {tuple(msg.version)}) is neither in Milvus "
                    f"at its version (stored {stored.get(msg.id or '')}) nor dead-lettered"
                )
        world.verified[(group, key)] = max(start, committed)
    return None


def stored_versions_never_go_back(world: World) -> str | None:
    """For every id, no row is ever written at a version below the highest one the id was
    held at (its rows' and tombstones' versions): an older write never lands over a newer
    one, and a deleted id stays deleted against older upserts."""
    return world.regressions[0] if world.regressions else None


def never_two_rows_for_one_id(world: World) -> str | None:
    """The collection never holds two rows with one id (Milvus keeps both on an insert)."""
    seen: set[str] = set()
    for row in world.milvus.rows(world.collection):
        if row["id"] in seen:
            return f"two rows for id {row['id']}"
        seen.add(row["id"])
    return None


def rows_in_flight_within_cap(world: World) -> str | None:
    """No process holds more messages between Kafka and their acknowledgement than
    ``max_rows_in_flight``."""
    for proc in world.live_processes():
        count = proc.rows_in_flight()
        if count > world.settings_cap:
            return f"{proc.name} holds {count} rows in flight, cap {world.settings_cap}"
    return None


def no_dead_letter_lost(world: World) -> str | None:
    """Every poison message below a committed offset is in the dead-letter topic with its
    reason and its version; every dead letter carries a reason and a version."""
    dead = world.dead_letters()
    for coords, letters in dead.items():
        for letter in letters:
            if not letter.error_type or letter.version is None:
                return f"dead letter of {coords} without its reason or version: {letter}"
    for group, key, committed in world.commits():
        for offset in range(world.floor(group, key), committed):
            msg = world.model.get((key[0], key[1], offset))
            if msg is None or msg.poison is None:
                continue
            letters = dead.get((key[0], key[1], offset), [])
            if not letters:
                return (
                    f"group {group} committed {key[0]}[{key[1]}]={committed} past poison offset "
                    f"{offset} ({msg.poison}) that is not in the dead-letter topic"
                )
            if not any(world.reason_ok(msg, letter.error_type) for letter in letters):
                got = [letter.error_type for letter in letters]
                return f"offset {offset} dead-lettered as {got}, expected {msg.poison}"
            if not any(letter.version == msg.version for letter in letters):
                return f"offset {offset} dead-lettered without its version {tuple(msg.version)}"
    return None


def every_message_terminal(world: World) -> str | None:
    """At the end of a bounded run (or once an unbounded one is idle), every partition is
    committed to its end (past transaction markers) and every record before it is handled
    (written, deleted, dead-lettered, superseded or skipped as not newer)."""
    group = world.phase_group
    for key, high in world.partition_ends().items():
        committed = world.cluster.committed(group, key)
        if committed != high:
            return (
                f"group {group} ends with {key[0]}[{key[1]}] committed at {committed}, end {high}"
            )
    return committed_offsets_are_durable(world)


def latest_version_wins(world: World) -> str | None:
    """For every id, Milvus holds the effect of its highest-version message: its row at that
    version, or no row and a tombstone at that version for a delete. When a copy of the
    highest version was dead-lettered (it supersedes the others in flight), Milvus holds
    nothing newer than it."""
    stored_rows = world.row_versions()
    tombs = world.tombstone_versions()
    dead = world.dead_letters()
    by_id = world.messages_by_id()
    for id_, msgs in by_id.items():
        top = max(m.version for m in msgs)
        at_top = [m for m in msgs if m.version == top]
        row, tomb = stored_rows.get(id_), tombs.get(id_)
        # a dead-lettered copy of the highest version supersedes the others in flight with it
        # (the documented edge of latest-wins: the id keeps what it had before them)
        if any(m.poison is not None or m.coords in dead for m in at_top):
            held = max((v for v in (row, tomb) if v is not None), default=None)
            if held is not None and held > top:
                return f"id {id_}: Milvus holds {tuple(held)} above its highest version"
            continue
        live = [m for m in at_top if m.poison is None and m.coords not in dead]
        want = live[0]
        if want.op == "delete":
            if row is not None:
                return f"id {id_}: deleted at {tuple(top)} but a row at {tuple(row)} remains"
            if tomb != top:
                return f"id {id_}: deleted at {tuple(top)}, tombstone {tomb}"
        elif row != top:
            return f"id {id_}: highest version {tuple(top)} (upsert), Milvus row {row}"
    return None


def bookkeeping_returns_to_empty(world: World) -> str | None:
    """A process that ended its run cleanly (finished, or stopped with its drain complete)
    holds nothing: ledger, offset tracker, registry, dead letters pending, writer backlog."""
    for proc in world.processes:
        if proc.final_bookkeeping and any(proc.final_bookkeeping.values()):
            return f"{proc.name} ended ({proc.outcome}) still holding {proc.final_bookkeeping}"
    return None


def outcome_maps_to_exit_status(world: World) -> str | None:
    """Each run ended with the outcome its history calls for, mapped to the documented exit
    status: finished 0, stopped (unbounded) 0, stopped early 75, aborted 130, fatal 1 (only
    when the dead-letter topic refused a record for good); a finished run had committed every
    partition it held to its end."""
    for proc in world.processes:
        for ended in proc.ended:
            problem = world.judge_exit(proc, ended)
            if problem:
                return problem
    return None


STEP: list[Check] = [
    committed_offsets_are_durable,
    stored_versions_never_go_back,
    never_two_rows_for_one_id,
    rows_in_flight_within_cap,
    no_dead_letter_lost,
    outcome_maps_to_exit_status,
]

END: list[Check] = [
    every_message_terminal,
    latest_version_wins,
    no_dead_letter_lost,
    never_two_rows_for_one_id,
    bookkeeping_returns_to_empty,
    outcome_maps_to_exit_status,
]

__all__ = ["END", "STEP", "Version"]

"""The Milvus writer's grouping, latest-wins and stale-write logic, against a fake client."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pymilvus.exceptions import MilvusException

from consumer.sink import MilvusWriter, WriteOp, WriteResult
from schemas import Version


class FakeMilvus:
    """Just enough of MilvusClient: rows by id, with a switch to fail calls."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.upserts: list[list[str]] = []
        self.fail = 0
        self.flushes = 0
        self.lock = threading.Lock()

    def _maybe_fail(self) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("milvus down")

    def get(self, collection: str, ids: list[str], output_fields: list[str]) -> list[dict]:
        self._maybe_fail()
        return [dict(self.rows[i]) for i in ids if i in self.rows]

    def upsert(self, collection: str, rows: list[dict]) -> None:
        self._maybe_fail()
        self.upserts.append([r["id"] for r in rows])
        for row in rows:
            self.rows[row["id"]] = row

    def delete(self, collection: str, ids: list[str]) -> None:
        self._maybe_fail()
        for i in ids:
            self.rows.pop(i, None)

    def flush(self, collection: str) -> None:
        self.flushes += 1


def _row(id_: str, ts: int, tag: str, offset: int = 0) -> dict[str, Any]:
    return {"id": id_, "kafka_ts": ts, "kafka_partition": 0, "kafka_offset": offset, "tag": tag}


def _v(ts: int, offset: int = 0) -> Version:
    return Version(ts, 0, offset)


def _writer(client: FakeMilvus, results: list[WriteResult], **kwargs: Any) -> MilvusWriter:
    done = threading.Lock()

    def on_results(batch: list[WriteResult]) -> None:
        with done:
            results.extend(batch)

    return MilvusWriter(client, "c", on_results=on_results, **kwargs)


def _wait_for(results: list, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(results) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_groups_rows_and_keeps_the_latest_op_per_id() -> None:
    client, results = FakeMilvus(), []
    writer = _writer(client, results, batch_rows=10, max_age_s=0.05)
    writer.start()
    writer.submit(
        [
            WriteOp(1, "a", _v(10), _row("a", 10, "old")),
            WriteOp(2, "b", _v(10), _row("b", 10, "b")),
            WriteOp(3, "a", _v(11), _row("a", 11, "new")),
        ]
    )
    _wait_for(results, 3)
    assert writer.close()
    assert {r.token: r.outcome for r in results} == {1: "superseded", 2: "ingested", 3: "ingested"}
    assert client.rows["a"]["tag"] == "new"
    assert client.upserts == [["b", "a"]] or client.upserts == [["a", "b"]]
    assert client.flushes == 1  # at close only, never per group


def test_stale_writes_and_superseded_tokens_are_skipped() -> None:
    client, results = FakeMilvus(), []
    client.rows["x"] = _row("x", 100, "newer")
    writer = _writer(client, results, max_age_s=0.01, is_latest=lambda op: op.token != "old")
    writer.start()
    writer.submit(
        [
            WriteOp("stale", "x", _v(50), _row("x", 50, "older")),
            WriteOp("old", "y", _v(10), _row("y", 10, "y")),
            WriteOp("del", "z", _v(10), None),
        ]
    )
    _wait_for(results, 3)
    writer.close()
    outcomes = {r.token: r.outcome for r in results}
    assert outcomes == {"stale": "skipped_stale", "old": "superseded", "del": "deleted"}
    assert client.rows["x"]["tag"] == "newer" and "y" not in client.rows


def test_failures_are_retried_and_nothing_is_reported_before_success() -> None:
    client, results = FakeMilvus(), []
    client.fail = 3
    retries: list[float] = []
    writer = _writer(
        client,
        results,
        max_age_s=0.01,
        max_backoff_s=0.05,
        on_retry=lambda exc, delay: retries.append(delay),
    )
    writer.start()
    writer.submit([WriteOp(1, "a", _v(1), _row("a", 1, "a"))])
    _wait_for(results, 1)
    writer.close()
    assert len(retries) == 3
    assert [r.outcome for r in results] == ["ingested"]
    assert "a" in client.rows


def _abort_while_failing(writer_cls: type[MilvusWriter] = MilvusWriter) -> None:
    """A write fails (at least one attempt, seen through on_retry), the writer is aborted and
    its thread has ended; then Milvus would accept writes: nothing was written or reported."""
    client, results = FakeMilvus(), []
    client.fail = 10**6
    attempted = threading.Event()
    writer = writer_cls(
        client,
        "c",
        on_results=results.extend,
        max_age_s=0.01,
        max_backoff_s=0.01,
        on_retry=lambda exc, delay: attempted.set(),
    )
    writer.start()
    writer.submit([WriteOp(1, "a", _v(1), _row("a", 1, "a"))])
    assert attempted.wait(10), "the writer never attempted the write"
    writer.abort()
    assert writer.close(10), "the aborted writer's thread did not end"
    client.fail = 0
    assert results == [], f"REPORTED UNWRITTEN: {results}"
    assert client.rows == {}


def test_abort_reports_nothing_unwritten() -> None:
    _abort_while_failing()


def test_abort_check_fails_for_a_writer_that_reports_on_hand_off() -> None:
    """Test of the test: a writer reporting rows written when they are handed to it."""

    class ReportsOnHandOff(MilvusWriter):
        def submit(self, ops: list[WriteOp]) -> None:
            self._on_results([WriteResult(op.token, "ingested") for op in ops])
            super().submit(ops)

    with pytest.raises(AssertionError, match="REPORTED UNWRITTEN"):
        _abort_while_failing(ReportsOnHandOff)


def test_the_highest_version_wins_within_a_group_whatever_the_order() -> None:
    """A newer version submitted before an older one of the same id (e.g. a redriven old record
    polled after the current one) is the one written; the older one is superseded."""
    client, results = FakeMilvus(), []
    writer = _writer(client, results, batch_rows=10, max_age_s=0.05)
    writer.start()
    writer.submit(
        [
            WriteOp("new", "a", _v(20), _row("a", 20, "new")),
            WriteOp("old", "a", _v(10), _row("a", 10, "old")),
        ]
    )
    _wait_for(results, 2)
    assert writer.close()
    assert {r.token: r.outcome for r in results} == {"new": "ingested", "old": "superseded"}
    assert client.rows["a"]["tag"] == "new"


def test_same_millisecond_older_offset_never_overwrites_and_equal_is_not_rewritten() -> None:
    """Records of one millisecond are ordered by partition and offset: an older offset with the
    stored row's timestamp is stale; the very same version is not rewritten (a replay)."""
    client, results = FakeMilvus(), []
    client.rows["x"] = _row("x", 100, "stored", offset=5)
    client.rows["y"] = _row("y", 100, "stored", offset=5)
    writer = _writer(client, results, max_age_s=0.01)
    writer.start()
    writer.submit(
        [
            WriteOp("older", "x", _v(100, 4), _row("x", 100, "older", offset=4)),
            WriteOp("same", "y", _v(100, 5), _row("y", 100, "again", offset=5)),
        ]
    )
    _wait_for(results, 2)
    writer.close()
    assert {r.token: r.outcome for r in results} == {
        "older": "skipped_stale",
        "same": "skipped_stale",
    }
    assert client.rows["x"]["tag"] == "stored" and client.rows["y"]["tag"] == "stored"
    assert client.upserts == []


def test_rewrite_same_version_rewrites_equal_versions_but_never_older_ones() -> None:
    client, results = FakeMilvus(), []
    client.rows["x"] = _row("x", 100, "stored", offset=5)
    client.rows["y"] = _row("y", 100, "stored", offset=5)
    writer = _writer(client, results, max_age_s=0.01, rewrite_same_version=True)
    writer.start()
    writer.submit(
        [
            WriteOp("older", "x", _v(100, 4), _row("x", 100, "older", offset=4)),
            WriteOp("same", "y", _v(100, 5), _row("y", 100, "again", offset=5)),
        ]
    )
    _wait_for(results, 2)
    writer.close()
    assert {r.token: r.outcome for r in results} == {"older": "skipped_stale", "same": "ingested"}
    assert client.rows["x"]["tag"] == "stored" and client.rows["y"]["tag"] == "again"


class FakeTombstones:
    """The writer's view of the tombstone collection: deletion versions by id."""

    def __init__(self) -> None:
        self.stones: dict[str, Version] = {}
        self.purged: list[float] = []

    def versions(self, ids: list[str]) -> dict[str, Version]:
        return {i: self.stones[i] for i in ids if i in self.stones}

    def record(self, deletions: list[tuple[str, Version]]) -> None:
        self.stones.update(deletions)

    def purge(self, retention_s: float) -> None:
        self.purged.append(retention_s)


def test_a_delete_keeps_its_version_so_older_upserts_stay_deleted() -> None:
    client, results, stones = FakeMilvus(), [], FakeTombstones()
    client.rows["x"] = _row("x", 100, "stored")
    writer = _writer(client, results, max_age_s=0.01, tombstones=stones)
    writer.start()
    writer.submit([WriteOp("del", "x", _v(200), None)])
    _wait_for(results, 1)
    assert "x" not in client.rows and stones.stones == {"x": _v(200)}
    writer.submit([WriteOp("older", "x", _v(150), _row("x", 150, "older"))])
    _wait_for(results, 2)
    writer.submit([WriteOp("newer", "x", _v(300), _row("x", 300, "newer"))])
    _wait_for(results, 3)
    writer.close()
    outcomes = {r.token: r.outcome for r in results}
    assert outcomes == {"del": "deleted", "older": "skipped_stale", "newer": "ingested"}
    assert client.rows["x"]["tag"] == "newer"


def test_tombstones_are_purged_after_their_retention() -> None:
    client, results, stones = FakeMilvus(), [], FakeTombstones()
    writer = _writer(
        client,
        results,
        max_age_s=0.01,
        flush_interval_s=0.01,
        tombstones=stones,
        tombstone_retention_s=7 * 86400,
        purge_interval_s=3600,
    )
    writer.start()
    deadline = time.monotonic() + 5
    while not stones.purged and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()
    assert stones.purged == [7 * 86400], "purged once at start, then once an interval"


def test_a_released_collection_and_its_tombstones_are_both_loaded_again() -> None:
    """A restarted Milvus serves neither the collection nor its tombstones until each is loaded
    again: the writer loads both, then the write goes through."""

    class Released(FakeMilvus):
        def __init__(self) -> None:
            super().__init__()
            self.loaded: list[str] = []

        def get(self, collection: str, ids: list[str], output_fields: list[str]) -> list[dict]:
            if "c_tombstones" not in self.loaded:  # what Milvus answers (code 101)
                raise MilvusException(
                    code=101, message="Collection 'c_tombstones' is in state 'released'"
                )
            return super().get(collection, ids, output_fields)

        def load_collection(self, name: str) -> None:
            self.loaded.append(name)

    class Stones(FakeTombstones):
        name = "c_tombstones"

    client, results = Released(), []
    writer = _writer(client, results, max_age_s=0.01, max_backoff_s=0.01, tombstones=Stones())
    writer.start()
    writer.submit([WriteOp(1, "a", _v(1), _row("a", 1, "a"))])
    _wait_for(results, 1)
    writer.close()
    assert client.loaded[:2] == ["c", "c_tombstones"]
    assert [r.outcome for r in results] == ["ingested"]


def test_not_loaded_is_read_from_the_milvus_error_code_along_a_looping_chain() -> None:
    """Milvus says 'not loaded' with code 101 (the message text is not looked at), possibly
    deep in an exception chain; a chain that loops (grpc's errors can) ends the search."""
    from consumer.sink.writer import not_loaded

    released = MilvusException(code=101, message="Collection 'c' is in state 'released'")
    assert not_loaded(released)
    assert not not_loaded(MilvusException(code=2, message="collection not loaded, load it"))
    outer = RuntimeError("write failed")
    outer.__cause__ = released
    assert not_loaded(outer)
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a  # a loop
    assert not not_loaded(a)


def test_write_now_writes_a_young_partial_group_at_once() -> None:
    """Pass: rows far from filling their group and far younger than ``max_age_s`` wait (the
    clock does not move), until ``write_now()``: the next turn writes them all; after that,
    new rows wait again."""
    from tests.support.clock import ManualClock

    client, results, clock = FakeMilvus(), [], ManualClock()
    writer = _writer(client, results, batch_rows=256, max_age_s=0.2, clock=clock)
    writer.submit([WriteOp(i, f"r{i}", _v(10, i), _row(f"r{i}", 10, "t", i)) for i in range(3)])
    writer.step(block=False)
    writer.step(block=False)
    assert client.upserts == [] and results == []  # young and partial: waiting to fill
    writer.write_now()
    writer.step(block=False)
    assert sorted(client.upserts[0]) == ["r0", "r1", "r2"]
    assert sorted(r.token for r in results) == [0, 1, 2]
    writer.submit([WriteOp(9, "r9", _v(10, 9), _row("r9", 10, "t", 9))])
    writer.step(block=False)
    assert len(client.upserts) == 1  # the request was for what was pending then
    clock.now += 0.2
    writer.step(block=False)
    assert client.upserts[1] == ["r9"]

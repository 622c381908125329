"""Near-duplicate flags written by the writer, against a real Milvus (vectors made to measure)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from consumer.sink import CollectionContract, MilvusCollection, MilvusWriter, WriteOp, connect
from consumer.sink.neardup import FIELDS, NearDuplicates, flags_collection, read_flags
from consumer.sink.tombstones import Tombstones
from schemas import Version

pytestmark = pytest.mark.integration

DIM = 8
CONTRACT = CollectionContract("m", "1", "EMBEDDING", "p", DIM)


def _unit(v: np.ndarray) -> list[float]:
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _at(cos: float, base: int = 0, towards: int = 1) -> list[float]:
    """A unit vector at cosine ``cos`` from axis ``base`` (tilted towards axis ``towards``)."""
    v = np.zeros(DIM)
    v[base] = cos
    v[towards] = np.sqrt(1 - cos * cos)
    return _unit(v)


def _row(id_: str, vector: list[float], ts: int, offset: int = 0) -> dict[str, Any]:
    return {
        "id": id_,
        "embedding": vector,
        "uri": f"file:///{id_}.jpg",
        "metadata": None,
        "model": "m/1",
        "ingested_at": ts,
        "kafka_ts": ts,
        "kafka_partition": 0,
        "kafka_offset": offset,
    }


class Sink:
    """A collection, its writer with the near-duplicate check, and what it reported."""

    def __init__(self, client: Any, name: str, threshold: float, **writer: Any) -> None:
        self.client = client
        self.name = name
        self.flagged: list[int] = []
        self.results: list[Any] = []
        self._lock = threading.Lock()
        self.nd = NearDuplicates(client, name, threshold, on_flagged=self.flagged.append)
        self.in_row = self.nd.ensure()
        tombstones = Tombstones(client, name)
        tombstones.ensure()
        self.writer = MilvusWriter(
            client,
            name,
            on_results=self._on_results,
            tombstones=tombstones,
            near_duplicates=self.nd,
            batch_rows=64,
            max_age_s=0.05,
            **writer,
        )
        self.writer.start()

    def _on_results(self, batch: list[Any]) -> None:
        with self._lock:
            self.results.extend(batch)

    def write(self, *ops: tuple[str, list[float] | None, int]) -> list[str]:
        """Write ``(id, vector or None to delete, ts)`` as one group; the outcomes in order."""
        start = len(self.results)
        self.writer.submit(
            [
                WriteOp(
                    (id_, ts),
                    id_,
                    Version(ts, 0, 0),
                    None if vector is None else _row(id_, vector, ts),
                )
                for id_, vector, ts in ops
            ]
        )
        deadline = time.monotonic() + 30
        while len(self.results) < start + len(ops) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.results) == start + len(ops), self.results
        by_token = {r.token: r.outcome for r in self.results[start:]}
        return [by_token[(id_, ts)] for id_, _, ts in ops]

    def flags(self) -> dict[str, tuple[str, float]]:
        """Every stored row's flag (``id -> (of, score)``), wherever the collection keeps it."""
        rows = self.client.query(
            self.name,
            filter="",
            output_fields=["id", *(FIELDS if self.in_row else ())],
            limit=1000,
        )
        hits = [{"id": r["id"], "entity": r} for r in rows]
        found = read_flags(self.client, self.name, hits, in_row=self.in_row)
        return {id_: (f.of, f.score) for id_, f in found.items()}

    def close(self) -> None:
        assert self.writer.close()


@pytest.fixture
def client(milvus_uri: str) -> Iterator[Any]:
    c = connect(milvus_uri)
    yield c
    c.close()


@pytest.fixture
def new_collection(client: Any, unique_name: str) -> str:
    MilvusCollection(client, unique_name).ensure(CONTRACT)
    return unique_name


def _old_collection(client: Any, name: str) -> str:
    """A collection as the previous version created it: no near-duplicate fields."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("uri", DataType.VARCHAR, max_length=4096)
    schema.add_field("metadata", DataType.JSON, nullable=True)
    schema.add_field("model", DataType.VARCHAR, max_length=256)
    for name_ in ("ingested_at", "kafka_ts", "kafka_partition", "kafka_offset"):
        schema.add_field(name_, DataType.INT64)
    index = client.prepare_index_params()
    index.add_index(field_name="embedding", index_type="AUTOINDEX", metric_type="COSINE")
    client.create_collection(
        name,
        schema=schema,
        index_params=index,
        consistency_level="Strong",
        properties=CONTRACT.properties(),
    )
    client.load_collection(name)
    return name


def test_new_collections_have_the_fields_and_rows_without_a_flag_stay_null(
    client: Any, new_collection: str
) -> None:
    names = {f["name"] for f in client.describe_collection(new_collection)["fields"]}
    assert set(FIELDS) <= names
    # detection off: the writer writes rows without the fields, they read back as null
    results: list[Any] = []
    writer = MilvusWriter(client, new_collection, on_results=results.extend, max_age_s=0.01)
    writer.start()
    writer.submit([WriteOp(1, "a", Version(1, 0, 0), _row("a", _at(1.0), 1))])
    assert writer.close()
    [row] = client.get(new_collection, ids=["a"], output_fields=list(FIELDS))
    assert row["near_duplicate_of"] is None and row["near_duplicate_score"] is None


@pytest.mark.parametrize("kind", ["new", "older"])
def test_flags_at_and_above_the_threshold_never_below(
    client: Any, unique_name: str, kind: str
) -> None:
    name = _old_collection(client, unique_name) if kind == "older" else unique_name
    if kind == "new":
        MilvusCollection(client, name).ensure(CONTRACT)
    sink = Sink(client, name, threshold=0.95)
    try:
        assert sink.in_row is (kind == "new")
        assert client.has_collection(flags_collection(name)) is (kind == "older")
        assert sink.write(("orig", _at(1.0), 1)) == ["ingested"]
        # what Milvus itself scores the pair at: that exact value must flag (at the threshold)
        probe = _at(0.95)
        [[hit]] = client.search(
            name, data=[probe], limit=1, search_params={"metric_type": "COSINE"}
        )
        sink.nd.threshold = float(hit["distance"])
        outcomes = sink.write(
            ("at", probe, 2), ("above", _at(0.99, towards=2), 3), ("below", _at(0.9, towards=3), 4)
        )
        assert outcomes == ["ingested"] * 3
        flags = sink.flags()
        assert set(flags) == {"at", "above"}, flags
        assert flags["at"][0] == "orig" and flags["above"][0] == "orig"
        assert flags["above"][1] == pytest.approx(0.99, abs=1e-4)
        assert sum(sink.flagged) == 2
        # every row is there: flagged, never dropped
        assert {r["id"] for r in client.query(name, filter="", output_fields=["id"])} == {
            "orig",
            "at",
            "above",
            "below",
        }
    finally:
        sink.close()


def test_rows_of_one_group_are_compared_with_each_other(client: Any, new_collection: str) -> None:
    """Nothing stored yet: the later of two close rows in one group is flagged against the
    earlier, a third far from both is not, and a row is never its own duplicate."""
    sink = Sink(client, new_collection, threshold=0.95)
    try:
        # submitted later-first: the version, not the order of submission, decides
        outcomes = sink.write(
            ("copy", _at(0.98), 20), ("orig", _at(1.0), 10), ("far", _at(0.5), 30)
        )
        assert outcomes == ["ingested"] * 3
        flags = sink.flags()
        assert set(flags) == {"copy"}
        assert flags["copy"][0] == "orig"
        assert flags["copy"][1] == pytest.approx(0.98, abs=1e-4)
        assert sink.flagged == [1]
    finally:
        sink.close()


def test_flags_point_at_originals_and_a_replayed_original_stays_unflagged(
    client: Any, new_collection: str
) -> None:
    """The documented replay behaviour. A replay at the same version is skipped (flags as they
    were); a rewrite of the same version (``--rewrite-same-version``) checks the row again against
    originals only, so the original is not flagged against its own copy and the copy keeps its
    flag; a third copy points at the original, never at the first copy."""
    sink = Sink(client, new_collection, threshold=0.95)
    try:
        sink.write(("orig", _at(1.0), 1))
        sink.write(("copy", _at(0.99), 2))
        sink.write(("copy2", _at(0.99, towards=2), 3))
        before = sink.flags()
        assert {k: v[0] for k, v in before.items()} == {"copy": "orig", "copy2": "orig"}
        assert sink.write(("orig", _at(1.0), 1), ("copy", _at(0.99), 2)) == ["skipped_stale"] * 2
        assert sink.flags() == before
    finally:
        sink.close()
    rewrite = Sink(client, new_collection, threshold=0.95, rewrite_same_version=True)
    try:
        assert rewrite.write(("orig", _at(1.0), 1)) == ["ingested"]
        assert rewrite.write(("copy", _at(0.99), 2)) == ["ingested"]
        after = rewrite.flags()
        assert {k: v[0] for k, v in after.items()} == {"copy": "orig", "copy2": "orig"}
    finally:
        rewrite.close()


def test_deleted_rows_are_never_matched(client: Any, new_collection: str) -> None:
    """A deleted row (its tombstone in the side collection) is no original: a copy of it written
    after the delete is not flagged, nor is one deleted in the same group as the copy arrives."""
    sink = Sink(client, new_collection, threshold=0.95)
    try:
        sink.write(("gone", _at(1.0), 1), ("gone2", _at(1.0, base=4, towards=5), 2))
        assert sink.write(("gone", None, 3)) == ["deleted"]
        assert client.get(f"{new_collection}_tombstones", ids=["gone"], output_fields=["id"])
        assert sink.write(("copy", _at(0.99), 4)) == ["ingested"]
        outcomes = sink.write(("gone2", None, 5), ("copy2", _at(0.99, base=4, towards=5), 6))
        assert outcomes == ["deleted", "ingested"]
        assert sink.flags() == {}
        assert sink.flagged == []
    finally:
        sink.close()


def test_an_older_collection_keeps_working_and_its_flags_follow_rewrites(
    client: Any, unique_name: str
) -> None:
    """An older collection is left as it is (no field added), gains its side collection, and a
    row rewritten unflagged loses its flag there (latest wins, as for the row)."""
    name = _old_collection(client, unique_name)
    fields_before = client.describe_collection(name)["fields"]
    sink = Sink(client, name, threshold=0.95)
    try:
        sink.write(("orig", _at(1.0), 1))
        sink.write(("copy", _at(0.99), 2))
        assert {k: v[0] for k, v in sink.flags().items()} == {"copy": "orig"}
        assert sink.write(("copy", _at(0.2), 3)) == ["ingested"]  # no longer a copy
        assert sink.flags() == {}
        assert client.describe_collection(name)["fields"] == fields_before
        MilvusCollection(client, name).check(CONTRACT)  # still the same collection for run
    finally:
        sink.close()

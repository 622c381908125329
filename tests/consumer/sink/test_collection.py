"""The collection against a real Milvus: consumers that start together on a new collection."""

from __future__ import annotations

import threading

import pytest

from consumer.sink import CollectionContract, MilvusCollection, connect

pytestmark = pytest.mark.integration


def test_consumers_creating_the_same_collection_at_once_all_start(
    milvus_uri: str, unique_name: str
) -> None:
    """Three clients ensure one new collection at the same moment: none fails, exactly one
    reports that it created it, and the recorded contract is the one they share."""
    contract = CollectionContract("m", "1", "EMBEDDING", "p", 8)
    barrier = threading.Barrier(3)
    results: list[object] = []

    def ensure() -> None:
        client = connect(milvus_uri)
        try:
            barrier.wait()
            results.append(MilvusCollection(client, unique_name).ensure(contract))
        except Exception as exc:  # reported below
            results.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=ensure) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(map(repr, results)) == ["False", "False", "True"], results
    client = connect(milvus_uri)
    try:
        MilvusCollection(client, unique_name).check(contract)
    finally:
        client.close()

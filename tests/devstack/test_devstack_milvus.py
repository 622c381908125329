"""Milvus from the dev stack: acknowledged rows survive a SIGKILL and a graceful restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pymilvus import DataType, MilvusClient

from devstack import MilvusServer, ServerError, free_port
from tests.support.milvus import count_rows, rows_by_id

StartMilvus = Callable[..., MilvusServer]


def _create(client: MilvusClient, name: str) -> None:
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=4)
    index = client.prepare_index_params()
    index.add_index("embedding", index_type="FLAT", metric_type="COSINE")
    client.create_collection(name, schema=schema, index_params=index)


def _rows(start: int, stop: int) -> list[dict[str, object]]:
    return [{"id": f"r{i}", "embedding": [float(i), 1.0, 0.0, 0.5]} for i in range(start, stop)]


@pytest.mark.integration
def test_acknowledged_rows_survive_kill_and_restart(
    start_milvus: StartMilvus, unique_name: str
) -> None:
    milvus = start_milvus()
    client = MilvusClient(milvus.uri)
    _create(client, unique_name)
    result = client.upsert(unique_name, _rows(0, 100))
    assert result["upsert_count"] == 100  # acknowledged
    client.close()

    milvus.kill()
    assert not milvus.is_ready()
    milvus.start()
    assert count_rows(milvus.uri, unique_name) == 100
    rows = rows_by_id(milvus.uri, unique_name, ["id", "embedding"])
    assert rows["r42"]["embedding"] == pytest.approx([42.0, 1.0, 0.0, 0.5])

    client = MilvusClient(milvus.uri)
    client.upsert(unique_name, _rows(100, 150))
    client.delete(unique_name, ids=["r0"])
    client.close()
    milvus.stop()  # graceful this time
    milvus.start()
    assert count_rows(milvus.uri, unique_name) == 149
    assert "r0" not in rows_by_id(milvus.uri, unique_name)


@pytest.mark.integration
def test_shared_server_answers(milvus_uri: str, unique_name: str) -> None:
    client = MilvusClient(milvus_uri)
    _create(client, unique_name)
    client.upsert(unique_name, _rows(0, 3))
    client.close()
    assert count_rows(milvus_uri, unique_name) == 3


@pytest.mark.integration
def test_second_server_on_a_locked_data_dir_fails_with_its_log(
    start_milvus: StartMilvus, tmp_path: Path
) -> None:
    first = start_milvus()
    second = MilvusServer(first.data_dir, tmp_path / "second.log", port=free_port())
    with pytest.raises(ServerError) as info:
        second.start(timeout_s=60)
    assert info.value.server == "milvus"
    assert "exited" in info.value.reason
    assert "lock" in info.value.log_tail.lower()
    assert first.is_ready()


@pytest.mark.integration
def test_acknowledged_rows_stay_visible_while_another_client_flushes(
    milvus_uri: str, unique_name: str
) -> None:
    """Pass: every row acknowledged before a Strong query is in its answer, even while another
    client's flush seals the rows into a segment. (Milvus Lite swaps its in-memory table out
    before the sealed segment is readable; the dev server closes that gap, as Milvus has none.
    The commit sampler of the reliability tests depends on it: a hidden row reads as an offset
    committed ahead of its write.)"""
    import threading

    writer, flusher, reader = (MilvusClient(milvus_uri) for _ in range(3))
    _create(writer, unique_name)
    stop = threading.Event()

    def flush_forever() -> None:
        while not stop.is_set():
            flusher.flush(unique_name)

    thread = threading.Thread(target=flush_forever, daemon=True)
    thread.start()
    hidden: list[tuple[int, int]] = []
    try:
        for i in range(150):
            writer.upsert(unique_name, _rows(i, i + 1))  # acknowledged: r0..ri exist
            seen = reader.query(
                unique_name, filter='id != ""', output_fields=["id"], consistency_level="Strong"
            )
            if len(seen) != i + 1:
                hidden.append((i + 1, len(seen)))
    finally:
        stop.set()
        thread.join(30)
        for client in (writer, flusher, reader):
            client.close()
    assert not hidden, f"ROWS HIDDEN DURING A FLUSH: (acknowledged, seen) {hidden[:5]}"

"""Milvus helpers for tests: count and list rows with strong consistency.

Both load the collection first: Milvus Lite does not reload collections after a restart, and a
released collection refuses queries (writes still work).
"""

from __future__ import annotations

from typing import Any

from pymilvus import MilvusClient


def count_rows(uri: str, collection: str) -> int:
    """Rows in ``collection`` as of now (Strong consistency)."""
    client = MilvusClient(uri)
    try:
        client.load_collection(collection)
        result = client.query(
            collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(result[0]["count(*)"])
    finally:
        client.close()


def rows_by_id(
    uri: str, collection: str, output_fields: list[str] | None = None, id_field: str = "id"
) -> dict[Any, dict[str, Any]]:
    """Every row of ``collection``, keyed by its primary key (Strong consistency)."""
    client = MilvusClient(uri)
    rows: dict[Any, dict[str, Any]] = {}
    try:
        client.load_collection(collection)
        iterator = client.query_iterator(
            collection,
            batch_size=1000,
            filter="",
            output_fields=output_fields or [id_field],
            consistency_level="Strong",
        )
        while batch := iterator.next():
            for row in batch:
                rows[row[id_field]] = row
        iterator.close()
    finally:
        client.close()
    return rows

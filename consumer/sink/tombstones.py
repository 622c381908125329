"""Deletions that outlive their rows: one tombstone per deleted id, with the deletion's version.

A delete removes the row, and with it the row's version. Without a record of the deletion, an
older upsert of the id arriving later (a replay, a redrive, a backfill, a zombie write) would find
no row and bring the id back. So each delete also upserts a tombstone ``(id, version,
deleted_at)`` into a side collection ``<collection>_tombstones``; the stale-write guard compares a
write against the higher of the stored row's and the tombstone's versions. A newer upsert brings
the id back as usual.

Tombstones never appear in ``count(*)`` or in searches of the collection: they live in their own
collection, whose vector field (Milvus requires one) is a constant of two dimensions. They are
kept at least as long as the source and dead-letter topics retain records (older records can no
longer be replayed or redriven) and purged after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from consumer.sink.collection import ID_MAX_LENGTH
from schemas import Version

log = logging.getLogger(__name__)

SUFFIX: Final = "_tombstones"
_VECTOR: Final = [0.0, 0.0]


def tombstone_collection(collection: str) -> str:
    """The side collection that holds the tombstones of ``collection``."""
    return f"{collection}{SUFFIX}"


class Tombstones:
    """The tombstones of one collection (used by the writer's thread only)."""

    def __init__(
        self, client: Any, collection: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.name = tombstone_collection(collection)
        self._clock = clock

    def ensure(self) -> bool:
        """Create the side collection when missing (an older collection gains it here, with no
        manual step); returns True when it was created. Safe when consumers start together."""
        created = False
        if not self.client.has_collection(self.name):
            try:
                self._create()
                created = True
            except Exception:
                if not self.client.has_collection(self.name):
                    raise
        self.client.load_collection(self.name)
        return created

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field("kafka_ts", DataType.INT64)
        schema.add_field("kafka_partition", DataType.INT64)
        schema.add_field("kafka_offset", DataType.INT64)
        schema.add_field("deleted_at", DataType.INT64)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=len(_VECTOR))
        index = self.client.prepare_index_params()
        index.add_index(field_name="v", index_type="AUTOINDEX", metric_type="L2")
        self.client.create_collection(
            self.name, schema=schema, index_params=index, consistency_level="Strong"
        )

    def versions(self, ids: Sequence[str]) -> dict[str, Version]:
        """The deletion version of each of ``ids`` that has a tombstone."""
        rows = self.client.get(
            self.name,
            ids=list(ids),
            output_fields=["id", "kafka_ts", "kafka_partition", "kafka_offset"],
        )
        return {str(r["id"]): Version.of_row(r) for r in rows}

    def record(self, deletions: Sequence[tuple[str, Version]]) -> None:
        """Upsert one tombstone per deleted id, stamped with the deletion's version."""
        now_ms = int(self._clock() * 1000)
        rows = [
            {
                "id": id_,
                "kafka_ts": version.ts,
                "kafka_partition": version.partition,
                "kafka_offset": version.offset,
                "deleted_at": now_ms,
                "v": _VECTOR,
            }
            for id_, version in deletions
        ]
        if rows:
            self.client.upsert(self.name, rows)

    def purge(self, retention_s: float) -> None:
        """Remove tombstones recorded more than ``retention_s`` ago."""
        cutoff = int((self._clock() - retention_s) * 1000)
        self.client.delete(self.name, filter=f"deleted_at < {cutoff}")

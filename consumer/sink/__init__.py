"""Milvus: the collection contract, grouped upserts and deletes, the stale-write guard, aliases."""

from consumer.sink.collection import (
    CollectionContract,
    MilvusCollection,
    collection_name,
    connect,
)
from consumer.sink.exceptions import CollectionMismatchError, SinkUnavailableError
from consumer.sink.writer import MilvusWriter, WriteOp, WriteResult

__all__ = [
    "CollectionContract",
    "CollectionMismatchError",
    "MilvusCollection",
    "MilvusWriter",
    "SinkUnavailableError",
    "WriteOp",
    "WriteResult",
    "collection_name",
    "connect",
]

"""The Milvus collection: schema, the recorded model contract, compatibility checks, aliases."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from consumer.sink.exceptions import CollectionMismatchError, SinkUnavailableError
from schemas import MAX_ID_LENGTH

ID_MAX_LENGTH = MAX_ID_LENGTH
URI_MAX_LENGTH = 4096
_PROP = "image_embedder."


@dataclass(frozen=True)
class CollectionContract:
    """What a collection's vectors mean: recorded at creation, checked by run, search and check."""

    model: str
    model_version: str
    output: str
    preprocessing: str
    dim: int

    def properties(self) -> dict[str, str]:
        return {
            f"{_PROP}model": self.model,
            f"{_PROP}model_version": self.model_version,
            f"{_PROP}output": self.output,
            f"{_PROP}preprocessing": self.preprocessing,
            f"{_PROP}dim": str(self.dim),
        }


def connect(
    uri: str,
    token: str | None = None,
    db_name: str | None = None,
    timeout_s: float = 30.0,
    server_pem_path: str | None = None,
) -> Any:
    """A pymilvus ``MilvusClient`` for a server URI or a local Milvus Lite path."""
    from pymilvus import MilvusClient

    kwargs: dict[str, Any] = {"uri": uri, "timeout": timeout_s}
    if token:
        kwargs["token"] = token
    if db_name:
        kwargs["db_name"] = db_name
    if server_pem_path:
        kwargs["server_pem_path"] = server_pem_path
    try:
        return MilvusClient(**kwargs)
    except Exception as exc:  # pymilvus raises MilvusException on connect failures
        raise SinkUnavailableError(
            f"cannot connect to Milvus: {type(exc).__name__}: {exc}"
        ) from exc


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]")


def collection_name(template: str, contract: CollectionContract) -> str:
    """Expand ``{model}``, ``{model_version}`` and ``{output}`` in a collection name.

    A re-embedding run names its collection for the model (``images_{model}_v{model_version}``),
    side by side with the live one; characters Milvus does not allow become ``_``.
    """
    try:
        name = template.format(
            model=contract.model, model_version=contract.model_version, output=contract.output
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise CollectionMismatchError(f"bad collection name template {template!r}: {exc}") from exc
    return _NAME_CHARS.sub("_", name)


class MilvusCollection:
    """One collection of embeddings keyed by message id."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def ensure(self, contract: CollectionContract) -> bool:
        """Create the collection when missing; check the contract of an existing one.

        Returns True when it was created. Raises ``CollectionMismatchError`` on any difference.
        Consumers may start together on a new collection: the contract is recorded by the very
        request that creates it, and one that loses the race to create it uses the winner's.
        """
        created = False
        if not self.client.has_collection(self.name):
            try:
                self._create(contract)
                created = True
            except Exception:
                if not self.client.has_collection(self.name):
                    raise
        if not created:
            self.check(contract)
        self._load()
        return created

    def _create(self, contract: CollectionContract) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=contract.dim)
        schema.add_field("uri", DataType.VARCHAR, max_length=URI_MAX_LENGTH)
        schema.add_field("metadata", DataType.JSON, nullable=True)
        schema.add_field("model", DataType.VARCHAR, max_length=256)
        schema.add_field("ingested_at", DataType.INT64)
        schema.add_field("kafka_ts", DataType.INT64)
        schema.add_field("kafka_partition", DataType.INT64)
        schema.add_field("kafka_offset", DataType.INT64)
        # near-duplicate flags (consumer/sink/neardup.py); older collections keep them aside
        schema.add_field(
            "near_duplicate_of", DataType.VARCHAR, max_length=ID_MAX_LENGTH, nullable=True
        )
        schema.add_field("near_duplicate_score", DataType.FLOAT, nullable=True)
        index = self.client.prepare_index_params()
        index.add_index(field_name="embedding", index_type="AUTOINDEX", metric_type="COSINE")
        self.client.create_collection(
            self.name,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            properties=contract.properties(),
        )

    def _load(self, attempts: int = 8) -> None:
        """Load for queries; retried while a consumer that just created it is still indexing."""
        for attempt in range(attempts):
            try:
                self.client.load_collection(self.name)
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(min(2.0, 0.1 * 2**attempt))

    def recorded(self) -> dict[str, str]:
        """The contract properties stored with the collection."""
        desc = self.client.describe_collection(self.name)
        props = desc.get("properties") or {}
        found = {k[len(_PROP) :]: str(v) for k, v in props.items() if k.startswith(_PROP)}
        for field in desc.get("fields", []):
            if field.get("name") == "embedding":
                found.setdefault("dim", str(field.get("params", {}).get("dim")))
        return found

    def check(self, contract: CollectionContract) -> None:
        """Raise ``CollectionMismatchError`` naming every difference from ``contract``."""
        if not self.client.has_collection(self.name):
            raise CollectionMismatchError(f"collection {self.name!r} does not exist")
        recorded = self.recorded()
        wanted = {k[len(_PROP) :]: v for k, v in contract.properties().items()}
        problems = [
            f"{key}: collection has {recorded.get(key)!r}, consumer uses {value!r}"
            for key, value in wanted.items()
            if recorded.get(key) != value
        ]
        if problems:
            raise CollectionMismatchError(
                f"collection {self.name!r} was built for another model or preprocessing; write "
                "to a new collection (and promote an alias) instead: " + "; ".join(problems)
            )

    def count(self) -> int:
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def search(self, vector: list[float], top_k: int) -> list[dict[str, Any]]:
        hits = self.client.search(
            self.name,
            data=[vector],
            limit=top_k,
            output_fields=["uri", "metadata"],
            search_params={"metric_type": "COSINE"},
        )
        return [
            {
                "id": h["id"],
                "uri": h["entity"].get("uri"),
                "score": float(h["distance"]),
                "metadata": h["entity"].get("metadata"),
            }
            for h in hits[0]
        ]

    def promote(self, alias: str) -> str | None:
        """Point ``alias`` at this collection; returns the collection it pointed at before."""
        previous = None
        try:
            previous = self.client.describe_alias(alias).get("collection_name")
        except Exception:
            previous = None
        if previous is None:
            self.client.create_alias(self.name, alias)
        elif previous != self.name:
            self.client.alter_alias(self.name, alias)
        return previous

"""Milvus at the pymilvus ``MilvusClient`` boundary, as the writer and tombstones use it.

It behaves as Milvus does where the engine's promises depend on it: ``insert`` keeps duplicate
primary keys (two rows for one id, and ``get`` returns both), ``upsert`` replaces every row of a
key, ``delete`` takes ids or a filter; reads are Strong (what was acknowledged is read back). It
can be slow, down (an outage window), time out after applying a write, or serve a collection
that was released (a restarted server): then every read and write fails with the error pymilvus
raises (code 101, "collection not loaded") until ``load_collection``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymilvus.exceptions import MilvusException

from tests.simulation.clock import VirtualClock

#: Milvus' error code for a collection that is not loaded (pymilvus ``MilvusException.code``).
CODE_NOT_LOADED = 101
#: The code pymilvus gives an unreachable server.
CODE_UNAVAILABLE = 2


@dataclass
class Collection:
    name: str
    schema: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    loaded: bool = True
    consistency_level: str = "Strong"
    properties: dict[str, Any] = field(default_factory=dict)

    def by_id(self, ids: list[Any]) -> list[dict[str, Any]]:
        wanted = set(ids)
        return [r for r in self.rows if r["id"] in wanted]


_IN = re.compile(r"^\s*id\s+in\s+\[(.*)\]\s*$", re.S)
_CMP = re.compile(r"^\s*(\w+)\s*(<=|>=|<|>|==)\s*(-?\d+)\s*$")


def _match(expr: str) -> Callable[[dict[str, Any]], bool]:
    """The filter expressions the consumer sends; anything else is refused (as a bad request),
    so a new expression shows up here instead of matching nothing silently."""
    if not expr.strip():
        return lambda row: True
    m = _IN.match(expr)
    if m:
        items = [s.strip().strip("'\"") for s in m.group(1).split(",") if s.strip()]
        wanted = set(items)
        return lambda row: str(row["id"]) in wanted
    m = _CMP.match(expr)
    if m:
        name, op, num = m.group(1), m.group(2), int(m.group(3))
        ops: dict[str, Callable[[int, int], bool]] = {
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "==": lambda a, b: a == b,
        }
        return lambda row: name in row and ops[op](int(row[name]), num)
    raise MilvusException(code=1100, message=f"cannot parse expression: {expr}")


class FakeMilvus:
    """The subset of ``pymilvus.MilvusClient`` the consumer calls."""

    def __init__(
        self,
        clock: VirtualClock,
        rng: random.Random,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.collections: dict[str, Collection] = {}
        self._trace = trace
        # faults
        self.outages: list[tuple[float, float]] = []  # [start, end) in virtual seconds
        self.timeout_applied_rate = 0.0  # a write applied, then reported as timed out
        self.fail_rate = 0.0  # a call that fails before doing anything
        self.latency: Callable[[], float] = lambda: 0.0  # used by the harness for write tasks
        self.calls: list[tuple[str, str, int]] = []  # (method, collection, rows)
        self.timeouts_applied = 0
        self.mutations = 0
        #: called after every applied write: collection, method, the rows written or removed
        self.on_change: Callable[[str, str, list[dict[str, Any]]], None] | None = None

    # --- faults --------------------------------------------------------------------------
    def down(self) -> bool:
        now = self.clock.monotonic()
        return any(start <= now < end for start, end in self.outages)

    def release(self, name: str) -> None:
        """What a restart of Milvus does to a collection: it must be loaded again."""
        self.collections[name].loaded = False

    def _gate(self, method: str, name: str | None = None, *, needs_load: bool = True) -> None:
        if self.down():
            raise MilvusException(
                code=CODE_UNAVAILABLE, message="Fail connecting to server on 127.0.0.1:19530"
            )
        if self.fail_rate and self.rng.random() < self.fail_rate:
            raise MilvusException(code=65535, message=f"{method}: internal error (injected)")
        if name is not None:
            coll = self.collections.get(name)
            if coll is None:
                raise MilvusException(code=100, message=f"collection not found[{name}]")
            if needs_load and not coll.loaded:
                raise MilvusException(
                    code=CODE_NOT_LOADED, message=f"collection not loaded[collection={name}]"
                )

    def _maybe_timeout_after_applying(self, method: str) -> None:
        if self.timeout_applied_rate and self.rng.random() < self.timeout_applied_rate:
            self.timeouts_applied += 1
            raise MilvusException(code=1, message=f"{method}: Deadline Exceeded (applied)")

    def _coll(self, name: str) -> Collection:
        return self.collections[name]

    # --- collections -----------------------------------------------------------------
    @staticmethod
    def prepare_index_params() -> Any:
        from pymilvus import MilvusClient

        return MilvusClient.prepare_index_params()

    def has_collection(self, name: str, **_: Any) -> bool:
        self._gate("has_collection")
        return name in self.collections

    def list_collections(self, **_: Any) -> list[str]:
        self._gate("list_collections")
        return sorted(self.collections)

    def create_collection(self, name: str, schema: Any = None, **kwargs: Any) -> None:
        self._gate("create_collection")
        if name in self.collections:
            return
        level = str(kwargs.get("consistency_level", "Strong"))
        coll = Collection(name, schema, consistency_level=level)
        coll.properties = dict(kwargs.get("properties") or {})
        self.collections[name] = coll

    def describe_collection(self, name: str, **_: Any) -> dict[str, Any]:
        self._gate("describe_collection", name, needs_load=False)
        coll = self._coll(name)
        fields = [
            {"name": f.name, "params": dict(getattr(f, "params", {}) or {})}
            for f in getattr(coll.schema, "fields", [])
        ]
        return {
            "collection_name": name,
            "consistency_level": coll.consistency_level,
            "properties": dict(coll.properties),
            "fields": fields,
        }

    def load_collection(self, name: str, **_: Any) -> None:
        self._gate("load_collection", name, needs_load=False)
        self._coll(name).loaded = True

    def release_collection(self, name: str, **_: Any) -> None:
        self._gate("release_collection", name, needs_load=False)
        self._coll(name).loaded = False

    def drop_collection(self, name: str, **_: Any) -> None:
        self._gate("drop_collection")
        self.collections.pop(name, None)

    def flush(self, name: str, **_: Any) -> None:
        self._gate("flush", name, needs_load=False)

    # --- rows ------------------------------------------------------------------------
    def insert(self, collection_name: str, data: list[dict[str, Any]], **_: Any) -> dict:
        self._gate("insert", collection_name)
        coll = self._coll(collection_name)
        coll.rows.extend(dict(r) for r in data)  # a key that exists gets a second row
        self.calls.append(("insert", collection_name, len(data)))
        self._changed(collection_name, "insert", data)
        self._trace_call("insert", collection_name, data)
        self._maybe_timeout_after_applying("insert")
        return {"insert_count": len(data)}

    def upsert(self, collection_name: str, data: list[dict[str, Any]], **_: Any) -> dict:
        self._gate("upsert", collection_name)
        coll = self._coll(collection_name)
        keys = {r["id"] for r in data}
        coll.rows = [r for r in coll.rows if r["id"] not in keys]
        latest: dict[Any, dict[str, Any]] = {}
        for row in data:  # one request with a key twice keeps the last one (as Milvus does)
            latest[row["id"]] = dict(row)
        coll.rows.extend(latest.values())
        self.calls.append(("upsert", collection_name, len(data)))
        self._changed(collection_name, "upsert", data)
        self._trace_call("upsert", collection_name, data)
        self._maybe_timeout_after_applying("upsert")
        return {"upsert_count": len(data)}

    def delete(
        self,
        collection_name: str,
        ids: list[Any] | None = None,
        filter: str = "",
        **_: Any,
    ) -> dict:
        self._gate("delete", collection_name)
        coll = self._coll(collection_name)
        if ids is not None:
            wanted = set(ids)
            gone = [r for r in coll.rows if r["id"] in wanted]
        else:
            match = _match(filter)
            gone = [r for r in coll.rows if match(r)]
        coll.rows = [r for r in coll.rows if not any(r is g for g in gone)]
        self.calls.append(("delete", collection_name, len(gone)))
        self._changed(collection_name, "delete", gone)
        if self._trace is not None:
            shown = ids if ids is not None else filter
            self._trace(f"milvus delete {collection_name} {shown}")
        self._maybe_timeout_after_applying("delete")
        return {"delete_count": len(gone)}

    def get(
        self,
        collection_name: str,
        ids: list[Any],
        output_fields: list[str] | None = None,
        **_: Any,
    ) -> list[dict[str, Any]]:
        self._gate("get", collection_name)
        rows = self._coll(collection_name).by_id(list(ids))
        return [_project(r, output_fields) for r in rows]

    def query(
        self,
        collection_name: str,
        filter: str = "",
        output_fields: list[str] | None = None,
        ids: list[Any] | None = None,
        **_: Any,
    ) -> list[dict[str, Any]]:
        self._gate("query", collection_name)
        coll = self._coll(collection_name)
        if output_fields == ["count(*)"]:
            match = _match(filter)
            return [{"count(*)": sum(1 for r in coll.rows if match(r))}]
        rows = coll.by_id(list(ids)) if ids is not None else coll.rows
        match = _match(filter)
        return [_project(r, output_fields) for r in rows if match(r)]

    # --- for the invariants (not part of pymilvus) -----------------------------------
    def _changed(self, name: str, method: str, rows: list[dict[str, Any]]) -> None:
        self.mutations += 1
        if self.on_change is not None:
            self.on_change(name, method, rows)

    def rows(self, name: str) -> list[dict[str, Any]]:
        coll = self.collections.get(name)
        return [] if coll is None else list(coll.rows)

    def _trace_call(self, method: str, name: str, data: list[dict[str, Any]]) -> None:
        if self._trace is not None:
            shown = [
                f"{r['id']}@{r.get('kafka_ts')}:{r.get('kafka_partition')}:{r.get('kafka_offset')}"
                for r in data
            ]
            self._trace(f"milvus {method} {name} {shown}")


def _project(row: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    if not fields:
        return dict(row)
    return {k: row[k] for k in ("id", *fields) if k in row}

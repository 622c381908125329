"""Near-duplicates at ingest: each new row is flagged with its nearest original, never dropped.

For every write group the writer hands the rows it is about to upsert to
:meth:`NearDuplicates.annotate`, which asks Milvus once (one batched search for the whole group)
for the nearest stored *original* (a row that is not itself flagged) with an id outside the group,
and compares the group's rows with each other (a row with earlier rows of the group, in version
order). When the best cosine similarity is at or above the threshold, the row stores
``near_duplicate_of`` (the original's id) and ``near_duplicate_score``; otherwise both are null.

Flags point at originals only, so no chains form and an original never ends up flagged against
its own copy (a replay of the original with ``--rewrite-same-version`` finds its copies flagged and
skips them). Deleted rows are gone from the collection (their tombstones live in a side collection
that is never searched), so they are never matched.

Where the flags live:
- Collections created by this version have two nullable fields, ``near_duplicate_of`` and
  ``near_duplicate_score``, in every row (``--filter 'near_duplicate_of is null'`` works).
- Older collections keep their schema (not every Milvus can add fields to a collection, Milvus
  Lite cannot) and gain a side collection ``<collection>_near_duplicates`` with one entry per
  flagged id, created at start with no manual step, the way tombstones are.

Searches with ``--collapse-duplicates`` read the flags from either place (:func:`read_flags`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from consumer.sink.collection import ID_MAX_LENGTH

log = logging.getLogger(__name__)

OF: Final = "near_duplicate_of"
SCORE: Final = "near_duplicate_score"
FIELDS: Final = (OF, SCORE)
SUFFIX: Final = "_near_duplicates"
_VECTOR: Final = [0.0, 0.0]
_VERSION_FIELDS: Final = ("kafka_ts", "kafka_partition", "kafka_offset")
#: Stored neighbours asked for per row: the nearest originals among them are kept (in a side
#: collection's collection the flagged ones can only be left out after the search).
CANDIDATES: Final = 8


def flags_collection(collection: str) -> str:
    """The side collection that holds the flags of an older ``collection``."""
    return f"{collection}{SUFFIX}"


def has_flag_fields(client: Any, collection: str) -> bool:
    """Whether ``collection``'s rows carry the near-duplicate fields themselves."""
    desc = client.describe_collection(collection)
    names = {f.get("name") for f in desc.get("fields", [])}
    return all(name in names for name in FIELDS)


def id_list(ids: Iterable[str]) -> str:
    """A Milvus list literal of string ids (JSON string escapes are Milvus's too)."""
    return json.dumps(list(ids))


@dataclass(frozen=True, slots=True)
class Flag:
    of: str
    score: float


class NearDuplicates:
    """The near-duplicate check of one collection (used by the writer's thread only)."""

    def __init__(
        self,
        client: Any,
        collection: str,
        threshold: float,
        *,
        on_flagged: Callable[[int], None] | None = None,
        candidates: int = CANDIDATES,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], not {threshold}")
        self.client = client
        self.collection = collection
        self.threshold = threshold
        self._on_flagged = on_flagged
        self._candidates = candidates
        self.in_row = True

    @property
    def side_name(self) -> str:
        return flags_collection(self.collection)

    def ensure(self) -> bool:
        """Find where the flags live; an older collection gains its side collection here.
        Returns True when the flags are stored in the rows themselves."""
        self.in_row = has_flag_fields(self.client, self.collection)
        if not self.in_row:
            if not self.client.has_collection(self.side_name):
                try:
                    self._create_side()
                except Exception:
                    if not self.client.has_collection(self.side_name):
                        raise
            self.client.load_collection(self.side_name)
            log.info(
                "collection %s predates near-duplicate fields: flags go to %s",
                self.collection,
                self.side_name,
            )
        return self.in_row

    def _create_side(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
        schema.add_field(OF, DataType.VARCHAR, max_length=ID_MAX_LENGTH)
        schema.add_field(SCORE, DataType.FLOAT)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=len(_VECTOR))
        index = self.client.prepare_index_params()
        index.add_index(field_name="v", index_type="AUTOINDEX", metric_type="L2")
        self.client.create_collection(
            self.side_name, schema=schema, index_params=index, consistency_level="Strong"
        )

    # --- the writer's hook ----------------------------------------------------------------
    def annotate(self, rows: Sequence[dict[str, Any]], group_ids: Iterable[str]) -> int:
        """Flag ``rows`` (about to be upserted) in place; returns how many are flagged.

        ``group_ids`` are every id the write group touches (its upserts and deletes): none of
        them is matched in Milvus, whose copy of them is about to be replaced or deleted.
        """
        if not rows:
            return 0
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        stored = self._nearest_stored(vectors, sorted(set(group_ids)))
        within = vectors @ vectors.T
        order = sorted(range(len(rows)), key=lambda i: tuple(rows[i][f] for f in _VERSION_FIELDS))
        flags: dict[int, Flag] = {}
        originals: list[int] = []
        for i in order:
            best = stored[i]
            for j in originals:
                if str(rows[j]["id"]) == str(rows[i]["id"]):
                    continue
                score = float(within[i, j])
                if best is None or score > best.score:
                    best = Flag(str(rows[j]["id"]), score)
            if best is not None and best.score >= self.threshold:
                flags[i] = Flag(best.of, min(1.0, best.score))
            else:
                originals.append(i)
        self._store(rows, flags)
        return len(flags)

    def flagged(self, count: int) -> None:
        """Called by the writer once the annotated rows are acknowledged by Milvus."""
        if count and self._on_flagged is not None:
            self._on_flagged(count)

    def _nearest_stored(self, vectors: np.ndarray, exclude: list[str]) -> list[Flag | None]:
        """Per vector, its nearest stored original outside ``exclude`` (one batched search)."""
        clauses = []
        if exclude:
            clauses.append(f"id not in {id_list(exclude)}")
        if self.in_row:
            clauses.append(f"{OF} is null")
        hits = self.client.search(
            self.collection,
            data=vectors.tolist(),
            limit=1 if self.in_row else self._candidates,
            filter=" and ".join(clauses),
            output_fields=["id"],
            search_params={"metric_type": "COSINE"},
        )
        flagged: set[str] = set()
        if not self.in_row:
            found = {str(h["id"]) for per in hits for h in per}
            flagged = set(read_side_flags(self.client, self.side_name, found))
        nearest: list[Flag | None] = []
        for per in hits:
            best = None
            for h in per:
                if str(h["id"]) not in flagged:
                    best = Flag(str(h["id"]), float(h["distance"]))
                    break
            nearest.append(best)
        return nearest

    def _store(self, rows: Sequence[dict[str, Any]], flags: dict[int, Flag]) -> None:
        if self.in_row:
            for i, row in enumerate(rows):
                flag = flags.get(i)
                row[OF] = flag.of if flag else None
                row[SCORE] = flag.score if flag else None
            return
        # an older collection: the side collection says it (before the rows are written, so a
        # retried group writes both again; a row rewritten unflagged loses its old flag)
        if flags:
            self.client.upsert(
                self.side_name,
                [
                    {"id": str(rows[i]["id"]), OF: f.of, SCORE: f.score, "v": _VECTOR}
                    for i, f in flags.items()
                ],
            )
        unflagged = [str(r["id"]) for i, r in enumerate(rows) if i not in flags]
        if unflagged:
            self.client.delete(self.side_name, ids=unflagged)


def read_side_flags(client: Any, side: str, ids: Iterable[str]) -> dict[str, Flag]:
    """The flags stored in a side collection for ``ids``."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = client.get(side, ids=wanted, output_fields=["id", OF, SCORE])
    return {str(r["id"]): Flag(str(r[OF]), float(r[SCORE])) for r in rows}


def read_flags(
    client: Any, collection: str, hits: Sequence[dict[str, Any]], *, in_row: bool
) -> dict[str, Flag]:
    """The flags of search hits (``{"id", "entity"}``): from the rows' own fields (``in_row``,
    the hits asked for ``near_duplicate_of`` and ``near_duplicate_score``), else from the side
    collection of an older collection (none there: nothing is flagged)."""
    if in_row:
        return {
            str(h["id"]): Flag(str(h["entity"][OF]), float(h["entity"].get(SCORE) or 0.0))
            for h in hits
            if h["entity"].get(OF) is not None
        }
    side = flags_collection(collection)
    if not hits or not client.has_collection(side):
        return {}
    return read_side_flags(client, side, (str(h["id"]) for h in hits))

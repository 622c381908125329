"""The asynchronous Milvus writer: one thread, rows grouped across micro-batches by size and age.

Guarantees:
- An operation is reported back (``on_results``) only after Milvus acknowledged it, or after it was
  skipped for a reason that makes skipping correct (superseded by a higher version of the same id
  in this process, or not newer than the row already stored: the stale-write guard).
- Within one group each id is written once, with its highest version (:class:`schemas.Version`).
- Failures are retried with exponential backoff and jitter until they pass or the writer is aborted;
  nothing is reported for operations that were not written, so their offsets are never committed.
- A group is written when it is full, when its oldest row is ``max_age_s`` old, or at once after
  ``write_now()`` (the engine's word that nothing more is on its way: waiting would only delay).
- ``flush()`` is never called per group (it seals tiny segments): only every ``flush_interval_s``
  when set, and at close.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from consumer.backoff import Backoff
from consumer.engine.runtime import (
    Clock,
    Joinable,
    SystemClock,
    ThreadStarter,
    start_daemon_thread,
)
from consumer.observability.metrics import Outcome
from consumer.sink.neardup import NearDuplicates
from consumer.sink.tombstones import Tombstones
from schemas import Version

log = logging.getLogger(__name__)

#: The row fields that hold the version a row was written at (see :class:`schemas.Version`).
VERSION_FIELDS = ("kafka_ts", "kafka_partition", "kafka_offset")


#: Milvus' error codes for a collection that is not loaded (e.g. released by a restart):
#: ``collection not loaded`` (101) and ``collection not fully loaded`` (103).
NOT_LOADED_CODES = frozenset({101, 103})


def not_loaded(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says a collection is not loaded."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # chains can loop (grpc's do)
        seen.add(id(current))
        if getattr(current, "code", None) in NOT_LOADED_CODES:
            return True
        current = current.__cause__ or current.__context__
    return False


class _Wake(Enum):
    """What ``write_now()`` puts on the queue: it wakes the loop and carries nothing."""

    WAKE = "wake"


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One row to upsert (``row`` set) or one id to delete (``row`` None)."""

    token: Any
    id: str
    version: Version
    row: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class WriteResult:
    token: Any
    outcome: Outcome


class MilvusWriter:
    """Owns the writes to one collection on a background thread."""

    def __init__(
        self,
        client: Any,
        collection: str,
        *,
        on_results: Callable[[list[WriteResult]], None],
        is_latest: Callable[[WriteOp], bool] = lambda op: True,
        rewrite_same_version: bool = False,
        tombstones: Tombstones | None = None,
        tombstone_retention_s: float | None = None,
        purge_interval_s: float = 3600.0,
        batch_rows: int = 256,
        max_age_s: float = 0.2,
        flush_interval_s: float | None = None,
        on_retry: Callable[[Exception, float], None] | None = None,
        on_write_seconds: Callable[[float], None] | None = None,
        near_duplicates: NearDuplicates | None = None,
        max_backoff_s: float = 5.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        start_thread: ThreadStarter | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._random = rng or random.Random()
        self._start_thread = start_thread or start_daemon_thread
        self._thread: Joinable | None = None
        self._pending: list[WriteOp] = []
        self._oldest = 0.0
        self._done = False
        self._client = client
        self._collection = collection
        self._on_results = on_results
        self._is_latest = is_latest
        self._rewrite_same_version = rewrite_same_version
        self._tombstones = tombstones
        self._tombstone_retention_s = tombstone_retention_s
        self._purge_interval_s = purge_interval_s
        self._last_purge = 0.0
        self._batch_rows = batch_rows
        self._max_age_s = max_age_s
        self._flush_interval_s = flush_interval_s
        self._on_retry = on_retry
        self._on_write_seconds = on_write_seconds
        self._max_backoff_s = max_backoff_s
        self._near_duplicates = near_duplicates
        self._queue: queue.Queue[WriteOp | _Wake | None] = queue.Queue()
        self._write_now = threading.Event()
        self._abort = threading.Event()
        self._closing = threading.Event()
        self._healthy = threading.Event()
        self._healthy.set()
        self._last_flush = self._clock.monotonic()

    # --- public API (any thread) -----------------------------------------------------------
    def start(self) -> None:
        """Run the loop (``step()`` until closed) on the thread the thread starter gives it."""
        self._thread = self._start_thread(self._run, "milvus-writer")

    def submit(self, ops: list[WriteOp]) -> None:
        for op in ops:
            self._queue.put(op)

    def write_now(self) -> None:
        """Write what is pending without waiting for its age (any thread): nothing more is on
        its way soon, so waiting to fill the group would only delay these rows."""
        self._write_now.set()
        self._queue.put(_Wake.WAKE)

    @property
    def healthy(self) -> bool:
        """False while the last attempt failed and retries are under way."""
        return self._healthy.is_set()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 30.0) -> bool:
        """Write what is queued, flush once, stop. Returns False if it did not finish in time."""
        self._closing.set()
        self._queue.put(None)
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(5.0)
            return False
        return True

    def abort(self) -> None:
        """Stop at once; operations not yet acknowledged are never reported."""
        self._abort.set()
        self._queue.put(None)

    # --- the loop (on its own thread, or driven by a caller's step()) ---------------------
    def _run(self) -> None:
        while self.step():
            pass
        if not self._abort.is_set():
            self._flush()

    def step(self, block: bool = True) -> bool:
        """One turn of the writer's loop: take what is queued (with ``block``, waiting at most
        until the oldest pending operation is due), write the groups that are due, flush and
        purge when due. False once it is closed or aborted."""
        if self._done or self._abort.is_set():
            return False
        self._take(self._wait_s() if block else 0.0)
        now = self._clock.monotonic()
        urgent = self._write_now.is_set()
        if urgent:
            self._write_now.clear()
        if self._pending and (
            len(self._pending) >= self._batch_rows
            or now - self._oldest >= self._max_age_s
            or self._done
        ):
            self._write_next_group(now)
        while (self._done or urgent) and self._pending and not self._abort.is_set():
            self._write_next_group(now)
        self._maybe_flush()
        self._maybe_purge()
        return not self._done and not self._abort.is_set()

    def _wait_s(self) -> float | None:
        if self._pending:
            return max(0.0, self._oldest + self._max_age_s - self._clock.monotonic())
        return self._flush_interval_s or None

    def _take(self, timeout: float | None) -> None:
        """Take queued operations, up to the group size; a None marks close or abort."""
        try:
            item = self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is None:
                self._done = self._closing.is_set() or self._abort.is_set()
                return
            if isinstance(item, WriteOp):
                if not self._pending:
                    self._oldest = self._clock.monotonic()
                self._pending.append(item)
                if len(self._pending) >= self._batch_rows:
                    return
            try:  # whatever else is already queued
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def _write_next_group(self, now: float) -> None:
        group, self._pending = self._pending[: self._batch_rows], self._pending[self._batch_rows :]
        self._oldest = now
        self._write_with_retry(group)

    def _maybe_purge(self) -> None:
        """Drop tombstones older than the retention, at most once per ``purge_interval_s``."""
        if self._tombstones is None or self._tombstone_retention_s is None:
            return
        now = self._clock.monotonic()
        if self._last_purge and now - self._last_purge < self._purge_interval_s:
            return
        self._last_purge = now
        try:
            self._tombstones.purge(self._tombstone_retention_s)
        except Exception as exc:  # purging is housekeeping: the next interval tries again
            log.warning("tombstone purge failed: %s", exc)

    def _maybe_flush(self) -> None:
        interval = self._flush_interval_s
        if interval and self._clock.monotonic() - self._last_flush >= interval:
            self._flush()

    def _flush(self) -> None:
        try:
            self._client.flush(self._collection)
        except Exception as exc:  # a flush failure loses nothing: upserts were acknowledged
            log.warning("milvus flush failed: %s", exc)
        self._last_flush = self._clock.monotonic()

    def _write_with_retry(self, group: list[WriteOp]) -> None:
        backoff = Backoff(
            initial=0.1, cap=self._max_backoff_s, start=1, jitter=0.5, random=self._random
        )
        while not self._abort.is_set():
            try:
                started = time.perf_counter()
                results = self._write(group)
                if self._on_write_seconds:
                    self._on_write_seconds(time.perf_counter() - started)
                self._healthy.set()
                self._on_results(results)
                return
            except Exception as exc:
                self._healthy.clear()
                delay = backoff.next_delay()
                log.warning(
                    "milvus write failed (attempt %d), retrying in %.2fs: %s",
                    backoff.attempts,
                    delay,
                    exc,
                )
                if self._on_retry:
                    self._on_retry(exc, delay)
                self._clock.wait(self._abort, delay)
                self._reload_if_released(exc)

    def _reload_if_released(self, exc: Exception) -> None:
        """A restarted Milvus serves a collection only after it is loaded again: the
        collection and its tombstones both (either one released fails every write group)."""
        if not_loaded(exc):
            names = [self._collection]
            if self._tombstones is not None:
                names.append(self._tombstones.name)
            for name in names:
                try:
                    self._client.load_collection(name)
                except Exception as load_exc:  # still down: the next attempt retries
                    log.warning("milvus load_collection(%s) failed: %s", name, load_exc)

    def _write(self, group: list[WriteOp]) -> list[WriteResult]:
        results, latest = self._latest_per_id(group)
        if not latest:
            return results
        stored = self._stored_versions(list(latest))
        upserts: list[WriteOp] = []
        deletes: list[WriteOp] = []
        for op in latest.values():
            if not self._newer_than_stored(op, stored.get(op.id)):
                results.append(WriteResult(op.token, Outcome.SKIPPED_STALE))
            elif op.row is None:
                deletes.append(op)
            else:
                upserts.append(op)
        flagged = 0
        if upserts and self._near_duplicates is not None:  # flags the rows, drops none
            flagged = self._near_duplicates.annotate(
                [op.row for op in upserts if op.row is not None],
                [op.id for op in upserts + deletes],
            )
        if upserts:
            self._client.upsert(self._collection, [op.row for op in upserts])
            if self._near_duplicates is not None:
                self._near_duplicates.flagged(flagged)
        if deletes:
            self._client.delete(self._collection, ids=[op.id for op in deletes])
            if self._tombstones is not None:  # the deletion keeps its version
                self._tombstones.record([(op.id, op.version) for op in deletes])
        results.extend(WriteResult(op.token, Outcome.INGESTED) for op in upserts)
        results.extend(WriteResult(op.token, Outcome.DELETED) for op in deletes)
        return results

    def _latest_per_id(self, group: list[WriteOp]) -> tuple[list[WriteResult], dict[str, WriteOp]]:
        """The highest version per id in ``group``; the others are reported superseded."""
        superseded: list[WriteResult] = []
        latest: dict[str, WriteOp] = {}
        for op in group:
            if not self._is_latest(op):
                superseded.append(WriteResult(op.token, Outcome.SUPERSEDED))
                continue
            other = latest.get(op.id)
            if other is not None and other.version > op.version:
                superseded.append(WriteResult(op.token, Outcome.SUPERSEDED))
                continue
            if other is not None:
                superseded.append(WriteResult(other.token, Outcome.SUPERSEDED))
            latest[op.id] = op
        return superseded, latest

    def _newer_than_stored(self, op: WriteOp, stored: Version | None) -> bool:
        """The stale-write guard: only a strictly higher version than the stored row's is
        written (an equal one too with ``rewrite_same_version``, never an older one)."""
        if stored is None:
            return True
        if self._rewrite_same_version:
            return op.version >= stored
        return op.version > stored

    def _stored_versions(self, ids: list[str]) -> dict[str, Version]:
        """Per id, the higher of the stored row's version and its tombstone's."""
        rows = self._client.get(self._collection, ids=ids, output_fields=["id", *VERSION_FIELDS])
        stored = {str(r["id"]): Version.of_row(r) for r in rows}
        if self._tombstones is not None:
            for id_, deleted in self._tombstones.versions(ids).items():
                if id_ not in stored or deleted > stored[id_]:
                    stored[id_] = deleted
        return stored

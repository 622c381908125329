"""``python -m tests.support.mutant_consumer run ...``: the consumer CLI, instrumented for tests.

The fault-injection tests start the consumer through this launcher. Before the CLI's ``main``
runs it:

- records what the consumer sends: every acknowledged Milvus write (``upsert``, ``insert``,
  ``delete`` of pymilvus' ``MilvusClient``, with the ids) and every synchronous Kafka commit
  (the offsets the broker acknowledged), one JSON line each, to the file named by
  ``EMBEDDER_TEST_CALLS``. Milvus Lite replaces a row whose key exists even on ``insert`` and
  ``count(*)`` counts distinct keys, so only what was sent shows an ``insert`` or a row written
  twice;
- arms the product's crash hook (``IMAGE_EMBEDDER_TEST_CRASH_AT``) only once a commit with an
  offset above zero was acknowledged, when ``EMBEDDER_TEST_CRASH_AFTER_COMMIT`` names a point,
  so a kill provably lands after work was committed;
- applies the deliberately broken variant named by ``EMBEDDER_TEST_MUTANT`` (see ``MUTANTS``),
  which the reliability tests must catch (``tests/reliability/test_mutants.py``).

Mutants patch stable seams (pymilvus, confluent-kafka, the writer's and the offset tracker's
methods, the signal module, settings), not the engine's private methods. A mutant whose seam is
missing stops the process before it starts, so a mutant test can never pass by accident: every
applied mutant is written to the calls file (``{"op": "mutant"}``) and the tests check it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

ENV_CALLS = "EMBEDDER_TEST_CALLS"
ENV_MUTANT = "EMBEDDER_TEST_MUTANT"
ENV_ARM_CRASH = "EMBEDDER_TEST_CRASH_AFTER_COMMIT"

_lock = threading.Lock()


def record(event: dict[str, Any]) -> None:
    """Append one JSON line to the calls file (no-op without ``EMBEDDER_TEST_CALLS``)."""
    path = os.environ.get(ENV_CALLS)
    if not path:
        return
    line = orjson.dumps({"t": time.time(), **event}) + b"\n"
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _ids_of_rows(data: Any) -> list[str]:
    rows = data if isinstance(data, list) else [data]
    return [str(row.get("id")) for row in rows if isinstance(row, dict)]


def _record_milvus() -> None:
    from pymilvus import MilvusClient

    def wrap(name: str, ids_of: Callable[..., list[str]]) -> None:
        original = getattr(MilvusClient, name)

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)  # recorded once acknowledged
            collection = args[0] if args else kwargs.get("collection_name")
            record({"op": name, "collection": collection, "ids": ids_of(*args, **kwargs)})
            return result

        setattr(MilvusClient, name, call)

    def rows_ids(collection_name: Any = None, data: Any = None, *_: Any, **kw: Any) -> list[str]:
        return _ids_of_rows(data if data is not None else kw.get("data"))

    def delete_ids(collection_name: Any = None, ids: Any = None, *_: Any, **kw: Any) -> list[str]:
        ids = ids if ids is not None else kw.get("ids") or kw.get("pks") or []
        return [str(i) for i in (ids if isinstance(ids, list) else [ids])]

    wrap("upsert", rows_ids)
    wrap("insert", rows_ids)
    wrap("delete", delete_ids)


def _record_kafka() -> None:
    """Record synchronous commits; arm the crash hook after the first one above offset 0."""
    import confluent_kafka

    base = confluent_kafka.Consumer
    arm = os.environ.get(ENV_ARM_CRASH)

    class RecordingConsumer(base):  # type: ignore[misc, valid-type]
        def commit(self, *args: Any, **kwargs: Any) -> Any:
            if _MUTANT_STATE.get("in_revoke") and os.environ.get(ENV_MUTANT) == "revoke_no_commit":
                record({"op": "commit_skipped"})
                return []
            result = super().commit(*args, **kwargs)
            if isinstance(result, list):
                offsets = [[tp.topic, tp.partition, tp.offset] for tp in result if tp.error is None]
                record({"op": "commit", "offsets": offsets})
                if arm and any(off > 0 for _, _, off in offsets):
                    os.environ["IMAGE_EMBEDDER_TEST_CRASH_AT"] = arm
            return result

        def subscribe(self, topics: Any, *args: Any, **kwargs: Any) -> Any:
            revoke = kwargs.get("on_revoke")
            if revoke is not None:

                def on_revoke(consumer: Any, partitions: Any) -> None:
                    record({"op": "revoke", "partitions": [tp.partition for tp in partitions]})
                    _MUTANT_STATE["in_revoke"] = True
                    try:
                        revoke(consumer, partitions)
                    finally:
                        _MUTANT_STATE["in_revoke"] = False

                kwargs["on_revoke"] = on_revoke
            lost = kwargs.get("on_lost")
            if lost is not None:

                def on_lost(consumer: Any, partitions: Any) -> None:
                    record({"op": "lost", "partitions": [tp.partition for tp in partitions]})
                    lost(consumer, partitions)

                kwargs["on_lost"] = on_lost
            assign = kwargs.get("on_assign")
            if assign is not None:

                def on_assign(consumer: Any, partitions: Any) -> None:
                    record({"op": "assign", "partitions": [tp.partition for tp in partitions]})
                    assign(consumer, partitions)

                kwargs["on_assign"] = on_assign
            return super().subscribe(topics, *args, **kwargs)

    confluent_kafka.Consumer = RecordingConsumer


_MUTANT_STATE: dict[str, Any] = {}


def _record_commit_points() -> None:
    """Record each time the engine asks the offset tracker what it may commit (a commit point),
    with the answer, so a test can wait for commit points instead of sleeping."""
    from consumer.offsets import tracker

    committable = tracker.OffsetTracker.committable

    def call(self: Any, keys: Any = None) -> Any:
        out = committable(self, keys)
        record({"op": "committable", "positions": [[t, p, off] for (t, p), off in out.items()]})
        return out

    tracker.OffsetTracker.committable = call  # type: ignore[method-assign]


def _mutant_dlq_ack_on_produce() -> None:
    """A dead letter counts as delivered as soon as it is handed to the producer."""
    import confluent_kafka

    base = confluent_kafka.Producer

    class EagerProducer(base):  # type: ignore[misc, valid-type]
        def produce(self, *args: Any, **kwargs: Any) -> Any:
            result = super().produce(*args, **kwargs)  # the real report still comes later
            report = kwargs.get("on_delivery") or kwargs.get("callback")
            if report is not None:
                report(None, None)
            return result

    confluent_kafka.Producer = EagerProducer


# -- the mutants ----------------------------------------------------------------------------------


def _mutant_insert() -> None:
    """Every write an ``insert`` instead of an ``upsert`` (real Milvus keeps duplicate keys)."""
    from pymilvus import MilvusClient

    MilvusClient.upsert = lambda self, collection_name, data, *a, **kw: self.insert(  # type: ignore[method-assign]
        collection_name, data, *a, **kw
    )


def _mutant_double_write() -> None:
    """Every row sent twice."""
    from pymilvus import MilvusClient

    upsert = MilvusClient.upsert

    def twice(self: Any, *args: Any, **kwargs: Any) -> Any:
        upsert(self, *args, **kwargs)
        return upsert(self, *args, **kwargs)

    MilvusClient.upsert = twice  # type: ignore[method-assign]


def _mutant_commit_on_handoff() -> None:
    """Rows reported written when handed to the writer, before Milvus acknowledges them."""
    from consumer.sink import writer

    submit = writer.MilvusWriter.submit

    def early(self: Any, ops: list[Any]) -> None:
        rows = [writer.WriteResult(op.token, "ingested") for op in ops if op.row is not None]
        if rows:
            self._on_results(rows)
        submit(self, ops)

    writer.MilvusWriter.submit = early  # type: ignore[method-assign]


def _mutant_commit_ahead() -> None:
    """Commit what was polled (one past the last delivered offset), not what was finished."""
    from consumer.offsets import tracker

    def committable(self: Any, keys: Any = None) -> dict[Any, int]:
        out = {}
        for key in self._partitions if keys is None else keys:
            part = self._partitions.get(key)
            if part is not None and part.last_delivered >= 0:
                pos = part.last_delivered + 1
                if part.committed is None or pos > part.committed:
                    out[key] = pos
        return out

    tracker.OffsetTracker.committable = committable  # type: ignore[method-assign]


def _mutant_no_stale_guard() -> None:
    """The writer never looks at the stored row's timestamp: an older write overwrites."""
    from consumer.sink import writer

    names = ("_stored_versions", "_stored_timestamps")
    seams = [n for n in names if hasattr(writer.MilvusWriter, n)]
    if not seams:
        raise SystemExit("mutant no_stale_guard: the writer's stored-version read is gone")
    for name in seams:  # what the stored row holds, as far as the guard can tell: nothing
        setattr(writer.MilvusWriter, name, lambda self, ids: {})


def _mutant_sigint_once() -> None:
    """A second SIGINT is ignored (no abort)."""
    install = signal.signal

    def patched(signum: int, handler: Any) -> Any:
        if signum == signal.SIGINT and callable(handler):
            seen = {"n": 0}

            def once(sig: int, frame: Any) -> None:
                seen["n"] += 1
                if seen["n"] == 1:
                    handler(sig, frame)

            return install(signum, once)
        return install(signum, handler)

    signal.signal = patched  # type: ignore[assignment]


def _mutant_no_drain_bound() -> None:
    """The drain waits for in-flight work however long it takes."""
    os.environ["IMAGE_EMBEDDER_DRAIN_TIMEOUT_S"] = "1000000"


def _mutant_no_download_cap() -> None:
    """Downloads are not cut at 32 MiB."""
    os.environ["IMAGE_EMBEDDER_MAX_DOWNLOAD_BYTES"] = str(2**31)


def _mutant_no_rows_cap() -> None:
    """No cap on rows in flight: whatever ``--max-rows-in-flight`` says, a million."""
    os.environ["IMAGE_EMBEDDER_MAX_ROWS_IN_FLIGHT"] = "1000000"
    for i, arg in enumerate(sys.argv[:-1]):
        if arg == "--max-rows-in-flight":
            sys.argv[i + 1] = "1000000"


def _mutant_revoke_no_commit() -> None:
    """Revoked partitions are dropped without the synchronous commit (see RecordingConsumer)."""


def _mutant_no_triton_backoff() -> None:
    """Inference retries without waiting: every backoff delay of the engine is 0."""
    from consumer import backoff

    backoff.Backoff.jittered = lambda self, attempt: 0.0  # type: ignore[method-assign]


MUTANTS: dict[str, Callable[[], None]] = {
    "insert": _mutant_insert,
    "double_write": _mutant_double_write,
    "commit_on_handoff": _mutant_commit_on_handoff,
    "commit_ahead": _mutant_commit_ahead,
    "no_stale_guard": _mutant_no_stale_guard,
    "sigint_once": _mutant_sigint_once,
    "no_drain_bound": _mutant_no_drain_bound,
    "no_download_cap": _mutant_no_download_cap,
    "revoke_no_commit": _mutant_revoke_no_commit,
    "dlq_ack_on_produce": _mutant_dlq_ack_on_produce,
    "no_rows_cap": _mutant_no_rows_cap,
    "no_triton_backoff": _mutant_no_triton_backoff,
}


def install() -> None:
    """Recorders, then the mutant, before the CLI runs."""
    if os.environ.get(ENV_ARM_CRASH):
        os.environ.pop("IMAGE_EMBEDDER_TEST_CRASH_AT", None)
    _record_kafka()
    _record_commit_points()
    _record_milvus()  # innermost: a mutant's extra or changed calls are recorded as sent
    name = os.environ.get(ENV_MUTANT)
    if name:
        if name not in MUTANTS:
            raise SystemExit(f"unknown mutant {name!r}; known: {sorted(MUTANTS)}")
        MUTANTS[name]()
        record({"op": "mutant", "name": name})


def main() -> None:
    install()
    from consumer.cli import main as cli_main

    sys.argv[0] = "consumer"
    cli_main()


if __name__ == "__main__":
    main()

"""``milvus-lite server`` with a gRPC ping policy that tolerates pymilvus's keepalive pings.

pymilvus pings every 10 s, also on idle channels. Milvus Lite's gRPC server keeps gRPC's default
policy (at most one ping every 5 minutes without data), so after a few pings it answers GOAWAY
"too_many_pings" and calls on that channel fail with UNAVAILABLE. Milvus itself accepts such
pings; this launcher makes the dev server accept them too.

Milvus Lite's flush swaps its in-memory table for an empty one before the sealed segment is
readable, so a query or search that runs during another client's flush misses rows that were
acknowledged before it (Strong consistency or not). Milvus keeps growing segments readable while
they seal. The launcher makes a collection's flush and its reads exclusive, so an acknowledged
row is always visible, as in Milvus. Run: ``python -m devstack.milvus_lite_server --data-dir D
--host H --port P``.
"""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Callable
from typing import Any

import grpc

PING_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)


def _install_ping_policy() -> None:
    original = grpc.server

    def server(*args: Any, options: Any = None, **kwargs: Any) -> grpc.Server:
        return original(*args, options=[*(options or ()), *PING_OPTIONS], **kwargs)

    grpc.server = server  # type: ignore[assignment]


#: Collection methods that read rows (``upsert`` reads the rows it merges onto).
READERS: tuple[str, ...] = ("get", "search", "query", "num_entities", "upsert")
#: The method that swaps the in-memory table out and seals it into a segment.
FLUSH = "_trigger_flush"


def _visibility_lock(collection: object) -> threading.RLock:
    """The collection's lock between flush and reads (made on first use; setdefault is atomic)."""
    state = vars(collection)
    lock: threading.RLock | None = state.get("_devstack_visibility")
    if lock is None:
        lock = state.setdefault("_devstack_visibility", threading.RLock())
    return lock


def _exclusive(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: object, *args: Any, **kwargs: Any) -> Any:
        with _visibility_lock(self):
            return method(self, *args, **kwargs)

    return call


def _install_read_visibility() -> None:
    from milvus_lite.engine.collection import Collection

    for name in (*READERS, FLUSH):
        original = vars(Collection)[name]
        if isinstance(original, property):
            assert original.fget is not None
            setattr(Collection, name, property(_exclusive(original.fget)))
        else:
            setattr(Collection, name, _exclusive(original))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19530)
    args = parser.parse_args()
    _install_ping_policy()
    _install_read_visibility()
    from milvus_lite.adapter.grpc.server import run_server

    run_server(args.data_dir, host=args.host, port=args.port)


if __name__ == "__main__":
    main()

"""``milvus-lite server`` with a gRPC ping policy that tolerates pymilvus's keepalive pings.

pymilvus pings every 10 s, also on idle channels. Milvus Lite's gRPC server keeps gRPC's default
policy (at most one ping every 5 minutes without data), so after a few pings it answers GOAWAY
"too_many_pings" and calls on that channel fail with UNAVAILABLE. Milvus itself accepts such
pings; this launcher makes the dev server accept them too. Run: ``python -m
devstack.milvus_lite_server --data-dir D --host H --port P``.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19530)
    args = parser.parse_args()
    _install_ping_policy()
    from milvus_lite.adapter.grpc.server import run_server

    run_server(args.data_dir, host=args.host, port=args.port)


if __name__ == "__main__":
    main()

"""The SSRF guard end to end, through the running consumer.

Only loopback addresses are used as refused targets (127.0.0.2, ::1, ...): no packet of these
tests can leave the machine, and servers listening on 127.0.0.1 and 127.0.0.2 prove that no
refused URI ever reached them. Resolver stubs for private and link-local answers are unit tests
of ``consumer.fetch``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.support.kafka import committed_offsets, create_topic, end_offsets
from tests.support.milvus import rows_by_id
from tests.support.reliability import (
    ConsumerProcess,
    LocalHttpServer,
    Record,
    publish,
    read_topic,
    send_bytes,
    send_redirect,
)

pytestmark = pytest.mark.integration


def _record(msg_id: str, uri: str, partition: int) -> Record:
    return Record(msg_id.encode(), orjson.dumps({"id": msg_id, "uri": uri}), partition)


def _run(
    spawn: Callable[..., ConsumerProcess],
    servers: dict[str, str],
    topic: str,
    cases: list[tuple[str, str, str | None]],
    *flags: str,
    kafka: str,
    name: str,
) -> tuple[ConsumerProcess, dict[str, str | None]]:
    """Publish ``(id, uri, expected error.type or None)`` cases, run to the end, return the
    process and, per id, the error.type found in the dead-letter topic (None: not there)."""
    create_topic(kafka, topic, partitions=2)
    publish(kafka, topic, [_record(i, u, n % 2) for n, (i, u, _) in enumerate(cases)])
    proc = spawn(
        "--topic", topic, "--group", topic, "--collection", topic, "--until-end", *flags,
        **servers, name=name,
    )  # fmt: skip
    assert proc.wait() == 0, proc.log_tail()
    found: dict[str, str | None] = {i: None for i, _, _ in cases}
    for record in read_topic(kafka, f"{topic}.dlq"):
        assert record.key is not None
        found[record.key.decode()] = record.headers["error.type"]
    return proc, found


def test_forbidden_addresses_and_paths_are_dead_lettered_end_to_end(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_url: str,
    photos: list[Path],
    spawn: Callable[..., ConsumerProcess],
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Pass: with the default policy every loopback spelling (127.0.0.1 with a live server
    behind it, 127.0.0.2, localhost, ::1, IPv4-mapped ::ffff:127.0.0.1, 0.0.0.0, decimal and
    hex forms) is dead-lettered as forbidden_address and neither local server sees a single
    connection; file:// outside --file-root, '..' (plain and percent-encoded) and symlinks
    (file and directory) leading out of the root are dead-lettered as forbidden_path; the
    one legitimate file under the root is ingested. Then, with only 127.0.0.1/32 allowed and
    redirects off: 127.0.0.1 is ingested, a redirect is refused (redirect_refused) and
    127.0.0.2 and ::1 stay forbidden_address, and 127.0.0.2 still saw no connection."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    jpeg = photos[2].read_bytes()
    (root / "ok.jpg").write_bytes(jpeg)
    (outside / "secret.jpg").write_bytes(jpeg)  # a real image: a guard failure would ingest it
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    os.symlink(outside, root / "linkdir")

    web = LocalHttpServer(
        {"/ok.jpg": send_bytes(jpeg), "/redirect": send_redirect("/ok.jpg")}
    ).start()
    trap = LocalHttpServer({"/ok.jpg": send_bytes(jpeg)}, host="127.0.0.2").start()
    servers = {"milvus": milvus_uri, "triton": triton_url, "kafka": kafka_bootstrap}
    try:
        p, q = web.port, trap.port
        addr = "forbidden_address"
        path = "forbidden_path"
        default_cases: list[tuple[str, str, str | None]] = [
            ("a-127-0-0-1", f"http://127.0.0.1:{p}/ok.jpg", addr),
            ("a-127-0-0-2", f"http://127.0.0.2:{q}/ok.jpg", addr),
            ("a-localhost", f"http://localhost:{p}/ok.jpg", addr),
            ("a-ipv6-loopback", f"http://[::1]:{p}/ok.jpg", addr),
            ("a-ipv4-mapped", f"http://[::ffff:127.0.0.1]:{p}/ok.jpg", addr),
            ("a-unspecified", f"http://0.0.0.0:{p}/ok.jpg", addr),
            ("a-decimal", f"http://2130706433:{p}/ok.jpg", addr),
            ("a-hex", f"http://0x7f000001:{p}/ok.jpg", addr),
            ("a-short", f"http://127.1:{p}/ok.jpg", addr),
            ("f-outside", "file:///etc/hostname", path),
            ("f-localhost-outside", "file://localhost/etc/hostname", path),
            ("f-dotdot", f"{root.as_uri()}/../outside/secret.jpg", path),
            ("f-encoded-dotdot", f"{root.as_uri()}/%2e%2e/outside/secret.jpg", path),
            ("f-symlink", (root / "link.jpg").as_uri(), path),
            ("f-symlinked-dir", f"{(root / 'linkdir').as_uri()}/secret.jpg", path),
            ("ok-file", (root / "ok.jpg").as_uri(), None),
        ]
        proc, found = _run(
            spawn, servers, unique_name, default_cases, "--file-root", str(root),
            kafka=kafka_bootstrap, name="default-policy",
        )  # fmt: skip
        assert found == {i: t for i, _, t in default_cases}
        assert web.connections == 0 and trap.connections == 0
        assert sorted(rows_by_id(milvus_uri, unique_name, ["id"])) == ["ok-file"]
        assert proc.summary()["dead_lettered"] == len(default_cases) - 1
        assert committed_offsets(kafka_bootstrap, unique_name, unique_name) == end_offsets(
            kafka_bootstrap, unique_name
        )

        allow_cases: list[tuple[str, str, str | None]] = [
            ("ok-allowed", f"http://127.0.0.1:{p}/ok.jpg", None),
            ("r-redirect", f"http://127.0.0.1:{p}/redirect", "redirect_refused"),
            ("a-other-loopback", f"http://127.0.0.2:{q}/ok.jpg", addr),
            ("a-ipv6-loopback", f"http://[::1]:{p}/ok.jpg", addr),
        ]
        topic = f"{unique_name}_allow"
        _, found = _run(
            spawn, servers, topic, allow_cases, "--allowed-network", "127.0.0.1/32",
            kafka=kafka_bootstrap, name="allow-list",
        )  # fmt: skip
        assert found == {i: t for i, _, t in allow_cases}
        assert web.requests == {"/ok.jpg": 1, "/redirect": 1}
        assert trap.connections == 0
        assert sorted(rows_by_id(milvus_uri, topic, ["id"])) == ["ok-allowed"]
    finally:
        web.stop()
        trap.stop()

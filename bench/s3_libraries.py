"""Which library should read ``s3://`` objects: the consumer's fetcher (botocore) against obstore
(Rust ``object_store``) and s3fs (aiobotocore), on one real S3 server (MinIO on loopback).

Each library reads the same photo-sized objects (1.3 MB each, the average of the photo set) with
the same number of threads as the consumer's I/O pool, in a process of its own (so imports,
thread pools and connection pools do not mix), and reports objects/s and the CPU it spent per
object (user + system, all threads): the figure that decides how many consumer cores one GPU
needs. Correctness is checked too: every object read must be byte-for-byte what was written.

``make bench-s3-libraries`` installs the peers (pinned, into a cache folder outside the
environment: they are never dependencies of the service) and runs this.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BUCKET = "bench-photos"
REGION = "us-east-1"
OBJECT_BYTES = 1_300_000
LIBRARIES = ("botocore", "obstore", "s3fs")


def _objects(count: int) -> dict[str, bytes]:
    """Incompressible bodies (JPEG data is): seeded, so every run reads the same bytes."""
    out = {}
    for i in range(count):
        seed = hashlib.sha256(f"photo-{i}".encode()).digest()
        body = bytearray()
        while len(body) < OBJECT_BYTES:
            seed = hashlib.sha256(seed).digest()
            body += seed * 64  # 2 KiB blocks of fresh hash output
        out[f"photos/{i:05d}.jpg"] = bytes(body[:OBJECT_BYTES])
    return out


def _reader(library: str, endpoint: str, user: str, password: str) -> Any:
    """A function key -> bytes for ``library``, built once (its client or store is shared)."""
    if library == "botocore":
        from consumer.fetch import Fetcher, FetchPolicy

        os.environ.update({"AWS_ACCESS_KEY_ID": user, "AWS_SECRET_ACCESS_KEY": password})
        fetcher = Fetcher(FetchPolicy(s3_endpoint_url=endpoint, s3_region=REGION))
        return lambda key: fetcher.fetch(f"s3://{BUCKET}/{key}")
    if library == "obstore":
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            BUCKET,
            endpoint=endpoint,
            region=REGION,
            access_key_id=user,
            secret_access_key=password,
            client_options={"allow_http": True},
        )
        return lambda key: bytes(obstore.get(store, key).bytes())
    if library == "s3fs":
        import s3fs

        fs = s3fs.S3FileSystem(
            key=user,
            secret=password,
            endpoint_url=endpoint,
            client_kwargs={"region_name": REGION},
        )
        return lambda key: fs.cat_file(f"{BUCKET}/{key}")
    raise SystemExit(f"unknown library {library!r}")


def measure(
    library: str, endpoint: str, user: str, password: str, threads: int, count: int
) -> dict[str, Any]:
    """Read every object once to warm up (connections, credentials), then once more, timed."""
    read = _reader(library, endpoint, user, password)
    expected = _objects(count)
    keys = sorted(expected)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, keys[: threads * 2]))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        bodies = list(pool.map(read, keys))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    wrong = sum(body != expected[key] for key, body in zip(keys, bodies, strict=True))
    return {
        "library": library,
        "objects": count,
        "threads": threads,
        "objects_per_s": round(count / wall, 1),
        "mb_per_s": round(count * OBJECT_BYTES / wall / 1e6, 1),
        "cpu_ms_per_object": round(cpu * 1000 / count, 2),
        "wrong_bodies": wrong,
    }


def _child(args: argparse.Namespace) -> None:
    user, password = os.environ["BENCH_S3_USER"], os.environ["BENCH_S3_PASSWORD"]
    result = measure(args.library, args.endpoint, user, password, args.threads, args.objects)
    print(json.dumps(result))


def _run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    import botocore.session

    from devstack import MinioServer
    from devstack.process import free_port

    with tempfile.TemporaryDirectory() as folder:
        server = MinioServer(Path(folder) / "data", Path(folder) / "minio.log", port=free_port())
        server.start()
        try:
            s3 = botocore.session.Session().create_client(
                "s3",
                endpoint_url=server.endpoint,
                region_name=REGION,
                aws_access_key_id=server.root_user,
                aws_secret_access_key=server.root_password,
            )
            s3.create_bucket(Bucket=BUCKET)
            for key, body in _objects(args.objects).items():
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            return [_measure_in_child(args, library, server) for library in args.library]
        finally:
            server.stop()


def _measure_in_child(args: argparse.Namespace, library: str, server: Any) -> dict[str, Any]:
    env = dict(os.environ)
    if library != "botocore" and args.peers:  # the peers' own packages (botocore included)
        env["PYTHONPATH"] = os.pathsep.join([args.peers, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "bench.s3_libraries", "--child", "--library", library]
    command += ["--endpoint", server.endpoint]
    env.update({"BENCH_S3_USER": server.root_user, "BENCH_S3_PASSWORD": server.root_password})
    command += ["--threads", str(args.threads), "--objects", str(args.objects)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"library": library, "error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", action="append", choices=LIBRARIES)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8, help="the I/O pool's default")
    parser.add_argument("--peers", help="folder with the peers' packages (obstore, s3fs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.library = args.library[0]
        _child(args)
        return
    args.library = args.library or list(LIBRARIES)
    results = _run_all(args)
    print(f"{'library':<10} {'objects/s':>10} {'MB/s':>8} {'CPU ms/object':>14}  checked")
    for row in results:
        if "error" in row:
            print(f"{row['library']:<10} failed: {row['error']}")
            continue
        checked = "ok" if row["wrong_bodies"] == 0 else f"{row['wrong_bodies']} WRONG"
        print(
            f"{row['library']:<10} {row['objects_per_s']:>10} {row['mb_per_s']:>8} "
            f"{row['cpu_ms_per_object']:>14}  {checked}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

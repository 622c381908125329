"""``make demo``: the main job end to end on local servers.

Starts what is not running, publishes scikit-image's bundled photos plus a few crops and flips of
them, ingests to the end, searches with a crop of one photo that was not ingested, prints the top
hits, checks that the photo (or one of its variants) ranks first, draws a contact sheet of the
results (a second query too: a flipped crop of another photo) and stops what it started.

``--source s3`` (``make demo DEMO_SOURCE=s3``) puts the images in a bucket of the local MinIO and
publishes ``s3://`` URIs instead of ``file://`` ones; the consumer reads them through botocore.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import orjson
from PIL import Image

from devstack.paths import STACK_DIR
from devstack.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
VARIANTS_OF = ("chelsea", "coffee", "rocket", "astronaut")
QUERY_PHOTO = "chelsea"
SECOND_QUERY_PHOTO = "coffee"


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3]


def write_images(folder: Path) -> Path:
    """Write the photos and variants as JPEG/PNG; return the path of the query crop."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        photos = {name: _rgb(getattr(data, name)()) for name in PHOTOS}
    for i, (name, image) in enumerate(photos.items()):
        fmt = "png" if i % 3 == 2 else "jpg"
        Image.fromarray(image).save(folder / f"{name}.{fmt}", quality=90)
    for name in VARIANTS_OF:
        image = photos[name]
        h, w = image.shape[:2]
        Image.fromarray(image[:, ::-1]).save(folder / f"{name}_flip.jpg", quality=90)
        crop = image[h // 10 : h - h // 10, w // 10 : w - w // 10]
        Image.fromarray(crop).save(folder / f"{name}_crop.jpg", quality=90)
    # the query: an off-centre crop of the photo, never published
    image = photos[QUERY_PHOTO]
    h, w = image.shape[:2]
    query = folder.parent / f"query_{QUERY_PHOTO}.jpg"
    Image.fromarray(image[h // 20 : h - h // 6, w // 8 : w - w // 20]).save(query, quality=90)
    image = photos[SECOND_QUERY_PHOTO]
    h, w = image.shape[:2]
    second = folder.parent / f"query_{SECOND_QUERY_PHOTO}.jpg"
    Image.fromarray(image[h // 8 :, : w - w // 8][:, ::-1]).save(second, quality=85)
    return query


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(args[2:] if args[:1] == [sys.executable] else args), flush=True)
    return subprocess.run(args, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument(
        "--source",
        choices=("files", "s3"),
        default=os.environ.get("DEMO_SOURCE", "files") or "files",
        help="publish file:// URIs (default) or s3:// URIs of a bucket in the local MinIO",
    )
    source = parser.parse_args(argv).source
    stack = Stack()
    names = ["kafka", "milvus", "triton"] + (["minio"] if source == "s3" else [])
    print("starting the local servers (a running one is reused)...", flush=True)
    statuses = stack.up(names, on_status=lambda s: print("  " + s.line(), flush=True))
    failed = [s for s in statuses if not s.ok]
    started = [s.name for s in statuses if s.state == "started"]
    try:
        if failed:
            for status in failed:
                print(f"error: {status.name} failed to start: {status.detail}", file=sys.stderr)
            return 1
        return _demo(stack, source)
    finally:
        if started:
            print(f"stopping what the demo started: {', '.join(started)}", flush=True)
            stack.down(only=started)


def _upload(stack: Stack, images: Path, bucket: str, env: dict[str, str]) -> str:
    """Put every image in ``bucket`` of the local MinIO; return its endpoint (credentials in
    ``env``, as the AWS chain reads them)."""
    import botocore.session

    from devstack.minio import MinioServer

    server = stack.server("minio")
    assert isinstance(server, MinioServer)
    endpoint = env.get("AWS_ENDPOINT_URL") or server.endpoint
    env.setdefault("AWS_ACCESS_KEY_ID", server.root_user)
    env.setdefault("AWS_SECRET_ACCESS_KEY", server.root_password)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    client = botocore.session.Session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=bucket)
    for path in sorted(images.iterdir()):
        client.put_object(Bucket=bucket, Key=f"images/{path.name}", Body=path.read_bytes())
    print(f"uploaded {len(list(images.iterdir()))} images to s3://{bucket}/images/", flush=True)
    return endpoint


def _demo(stack: Stack, source: str = "files") -> int:
    run_id = time.strftime("%Y%m%d%H%M%S")
    work = STACK_DIR / "demo" / run_id
    images = work / "images"
    query = write_images(images)
    topic = f"demo.images.{run_id}"
    collection = f"demo_images_{run_id}"
    env = dict(os.environ)
    env.setdefault("KAFKA_BOOTSTRAP_SERVERS", stack.server("kafka").bootstrap_servers)
    env.setdefault("MILVUS_URI", stack.server("milvus").uri)
    env.setdefault("TRITON_URL", stack.server("triton").grpc_url)
    py = [sys.executable, "-m"]
    _run([*py, "producer", "create-topic", topic, "--partitions", "3"], env=env)
    if source == "s3":
        bucket = f"demo-images-{run_id}"
        endpoint = _upload(stack, images, bucket, env)
        scanned = f"s3://{bucket}/images/"
        scan_args = ["--storage-option", f"endpoint_url={endpoint}"]
        fetch_args = ["--s3-endpoint-url", endpoint, "--allowed-bucket", bucket]
    else:
        scanned, scan_args, fetch_args = str(images), [], ["--file-root", str(images)]
    _run([*py, "producer", "scan", scanned, "--topic", topic, *scan_args], env=env)
    summary_path = work / "summary.json"
    _run(
        [
            *py,
            "consumer",
            "run",
            "--topic",
            topic,
            "--group",
            f"demo-{run_id}",
            "--collection",
            collection,
            "--until-end",
            *fetch_args,
            "--no-metrics",
            "--summary-json",
            str(summary_path),
            "--log-level",
            "WARNING",
        ],
        env=env,
    )
    summary = orjson.loads(summary_path.read_bytes())
    published = len(list(images.iterdir()))
    print(
        f"published {published} images; ingested {summary['ingested']}, "
        f"dead-lettered {summary['dead_lettered']}",
        flush=True,
    )
    sheet = work / "contact_sheet.png"
    second = query.parent / f"query_{SECOND_QUERY_PHOTO}.jpg"
    search_env = dict(env)
    if source == "s3":  # neighbours are fetched from the bucket for the sheet
        search_env["AWS_ENDPOINT_URL"] = fetch_args[1]
        sheet_args = []
    else:
        sheet_args = fetch_args
    result = _run(
        [
            *py,
            "consumer",
            "search",
            "--collection",
            collection,
            "--top-k",
            "5",
            "--contact-sheet",
            str(sheet),
            *sheet_args,
            str(query),
            str(second),
        ],
        env=search_env,
        capture_output=True,
    )
    if result.stderr.strip():
        print(result.stderr.strip(), flush=True)
    hits = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    hits = [hit for hit in hits if hit["query"] == str(query)]
    print(f"\ntop hits for {query.name} (a crop of {QUERY_PHOTO!r} that was not ingested):")
    for rank, hit in enumerate(hits, 1):
        print(f"  {rank}. {hit['score']:.3f}  {Path(hit['uri']).name}")
    if summary["ingested"] != published:
        print("error: not every published image was ingested", file=sys.stderr)
        return 1
    if not hits or not Path(hits[0]["uri"]).name.startswith(QUERY_PHOTO):
        print(f"error: {QUERY_PHOTO} did not rank first", file=sys.stderr)
        return 1
    print(f"\nok: {QUERY_PHOTO} ranks first.")
    print(f"contact sheet of both queries and their neighbours: {sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

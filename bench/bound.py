"""The consumer-bound section: what one consumer core costs per image when the model is free.

Triton serves the benchmark-only near-free model (``python -m serving --bench-model near-free``:
the reference contract at microseconds per image), so the consumer is the bottleneck. The data
set is photo-sized (JPEGs, long side 1600-4000 px, ``bench.dataset.build_photo_dataset``). The
consumer runs on one core of its own (``taskset``); every other process of the run (Kafka,
Milvus, Triton, the image servers and this harness) is moved to the other CPUs for the section.

Measured, in one run and on the same core:

- the decode floor (``bench.floor``): decoding the same files alone at the consumer's reduced
  size, one thread, just before and just after the consumer runs (the mean is the floor);
- per source (``file://``, ``http://`` from a loopback HTTP server, ``s3://`` from a loopback
  MinIO), each in four parts of its backlog run in mirrored order (:func:`run_order`): the
  consumer's images/s on its core, its CPU ms per image in total and per thread group
  (main thread vs the pools), the time its stages took per image, peak memory, the ratio to the
  floor, and the ratios of ``http://`` and ``s3://`` to ``file://``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import orjson
import psutil

from bench.dataset import Dataset
from bench.exceptions import BenchFatalError
from bench.layout import CpuLayout, cpu_list, parse_cpu_list

SOURCES = ("file", "http", "s3")
#: Each source's backlog runs in this many parts, in mirrored order (see :func:`run_order`).
PARTS = 4
BUCKET = "bench-photos"
#: The harness's thread group names of the consumer's threads (see ``bench.e2e.thread_groups``).
MAIN_THREAD = "main thread"
REPO_ROOT = Path(__file__).resolve().parent.parent


class Context(Protocol):
    """What the section needs from the run (``bench.cli``)."""

    def topic(
        self,
        name: str,
        records: int | None = None,
        base_url: str | None = None,
        dataset: Dataset | None = None,
    ) -> str: ...

    def collection(self, name: str) -> str: ...

    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class Plan:
    """Where the section runs and how much it does."""

    core: str | None  # the consumer's core (None: unpinned)
    others: str | None  # every other CPU of the run
    messages: int
    floor_rounds: int
    note: str
    parts: int  # each source's backlog in this many runs (:func:`run_order`)


def plan(layout: CpuLayout, messages: int, floor_rounds: int, parts: int = PARTS) -> Plan:
    """The consumer on the last of the consumer's CPUs; everything else on the rest."""
    if not layout.pinned or not layout.consumer_cpus:
        return Plan(None, None, messages, floor_rounds, "unpinned: no CPU of its own", parts)
    core = max(parse_cpu_list(layout.consumer_cpus))
    others = parse_cpu_list(layout.available) - {core}
    return Plan(
        str(core),
        cpu_list(others),
        messages,
        floor_rounds,
        f"consumer alone on CPU {core}; servers and harness on CPU {cpu_list(others)}",
        parts,
    )


# ---------------------------------------------------------------------------- pinning
def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


@contextlib.contextmanager
def moved_to(cpus: str | None) -> Iterator[list[int]]:
    """This process and every process it started (all their threads) on ``cpus``; restored on
    exit. Yields the pids moved. Processes started inside inherit ``cpus`` unless pinned."""
    if not cpus:
        yield []
        return
    target = parse_cpu_list(cpus)
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    previous: dict[int, set[int]] = {}
    for proc in procs:
        for tid in _tasks(proc.pid):
            with contextlib.suppress(OSError):
                previous[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, target)
    try:
        yield [p.pid for p in procs]
    finally:
        for tid, cpus_before in previous.items():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus_before)


# ---------------------------------------------------------------------------- the floor
def decode_floor(dataset: Dataset, core: str | None, rounds: int) -> dict[str, Any]:
    """``python -m bench.floor`` on the consumer's core: decode alone, one thread."""
    cmd = [sys.executable, "-m", "bench.floor", str(dataset.folder), "--rounds", str(rounds)]
    if core:
        cmd = ["taskset", "-c", core, *cmd]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, check=False
    )
    if proc.returncode != 0:
        raise BenchFatalError(f"the decode floor failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- sources
class Sources:
    """The loopback servers the photo set is read from: HTTP and MinIO (S3), on ``cpus``."""

    def __init__(self, dataset: Dataset, work: Path, cpus: str | None) -> None:
        self.dataset = dataset
        self.work = work
        self.cpus = cpus
        self.http: Any = None
        self.minio: Any = None

    def start(self, which: tuple[str, ...]) -> None:
        from bench.servers import ImageHttpServer
        from devstack import free_port

        if "http" in which:
            self.http = ImageHttpServer(
                self.dataset.folder, self.work / "logs" / "photos-http.log", free_port(), self.cpus
            )
            self.http.start()
        if "s3" in which:
            from devstack.minio import MinioServer

            self.minio = MinioServer(
                self.work / "minio", self.work / "logs" / "minio.log", free_port(), cpus=self.cpus
            )
            self.minio.start()
            self._upload()

    def _s3_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.minio.root_user,
            "AWS_SECRET_ACCESS_KEY": self.minio.root_password,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _upload(self) -> None:
        import botocore.session

        env = self._s3_env()
        client = botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.minio.endpoint,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        for item in self.dataset.files:
            body = (self.dataset.folder / item.name).read_bytes()
            client.put_object(Bucket=BUCKET, Key=f"photos/{item.name}", Body=body)

    def base_url(self, source: str) -> str | None:
        if source == "http":
            return str(self.http.base_url)
        if source == "s3":
            return f"s3://{BUCKET}/photos"
        return None

    def consumer_args(self, source: str) -> tuple[tuple[str, ...], dict[str, str]]:
        """Extra consumer flags and environment for ``source``."""
        if source == "s3":
            flags = ("--s3-endpoint-url", self.minio.endpoint, "--allowed-bucket", BUCKET)
            return flags, self._s3_env()
        return (), {}

    def pids(self) -> dict[str, int]:
        out = {}
        for name, server in (("http", self.http), ("minio", self.minio)):
            if server is not None and server.pid is not None:
                out[name] = server.pid
        return out

    def stop(self) -> None:
        for server in (self.http, self.minio):
            if server is not None:
                server.stop(timeout_s=20.0)


def start_model(work: Path, cpus: str | None) -> Any:
    """Triton with the near-free model on ``cpus``."""
    from devstack import TritonServer, free_port

    server = TritonServer(
        work / "logs" / "triton-near-free.log",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        cpus=cpus,
        extra_args=("--bench-model", "near-free"),
    )
    server.start()
    return server


# ---------------------------------------------------------------------------- run order
def run_order(sources: tuple[str, ...], parts: int = PARTS) -> list[tuple[str, int]]:
    """(source, part) in the order they run: forwards, backwards, forwards, ... (file, http,
    s3, s3, http, file, file, http, s3, s3, http, file for four parts).

    The machine drifts over a section: between the floor's two measurements of one run its CPU
    per image moved by up to 6%, either way. Run once each in a fixed order, the source that ran
    last paid for that drift (the same code gave ``s3://`` / ``file://`` 0.946 with ``file://``
    first and 0.989 with it last). Mirrored, a steady drift weighs on every source alike; but
    the drift is often a step. In two mirrored halves the source in the middle could run both
    its halves before a step that the others straddled (run ``20261208T034610``: the consumer
    20% cheaper per image after it, both ``s3://`` halves before it, ``s3://`` / ``file://``
    0.850 where the section alone gave 0.955-1.030 that day). In four parts a step falls
    between parts so that the sources' shares before it differ by at most one part in four."""
    order: list[tuple[str, int]] = []
    for part in range(parts):
        turn = sources if part % 2 == 0 else tuple(reversed(sources))
        order.extend((source, part) for source in turn)
    return order


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One source's runs (``bench.e2e.run_backlog`` results) as one: counts added, per-image
    figures weighted by the images each measured, rates and shares of a core by the seconds
    each measured, the stage profile by the images each ingested, peak memory the highest;
    ``parts`` keeps each part's own figures."""
    if len(parts) == 1:
        return parts[0]

    def images(h: dict[str, Any]) -> float:
        return float(h["measured_images"])

    def seconds(h: dict[str, Any]) -> float:
        return float(h["measured_seconds"])

    def ingested(h: dict[str, Any]) -> float:
        return float(h["ingested"])

    def machine(h: dict[str, Any]) -> dict[str, Any]:
        return h.get("machine") or {}

    stages = _weighted_map(
        parts,
        lambda h: {k: v["ms_per_image"] for k, v in (h.get("stage_profile") or {}).items()},
        ingested,
    )
    span = sum(seconds(h) for h in parts)
    measured = sum(h["measured_images"] for h in parts)
    return {
        "messages": sum(h["messages"] for h in parts),
        "ingested": sum(h["ingested"] for h in parts),
        "dead_lettered": sum(h["dead_lettered"] for h in parts),
        "window": "; ".join(sorted({str(h["window"]) for h in parts})),
        "measured_images": measured,
        "measured_seconds": round(span, 2),
        "images_per_s": round(measured / span, 2),
        "cpu_s_per_image": round(_weighted(parts, lambda h: h["cpu_s_per_image"], images), 4),
        "cpu_cores_busy": round(_weighted(parts, lambda h: h["cpu_cores_busy"], seconds), 3),
        "thread_cpu_s_per_image": _weighted_map(
            parts, lambda h: h.get("thread_cpu_s_per_image") or {}, images
        ),
        "server_cores_busy": _weighted_map(
            parts, lambda h: h.get("server_cores_busy") or {}, seconds
        ),
        "machine": {
            "cpu_busy": _weighted_map(parts, lambda h: machine(h).get("cpu_busy") or {}, seconds),
            "other_cores_busy": round(
                _weighted(parts, lambda h: machine(h).get("other_cores_busy", 0.0), seconds), 3
            ),
        },
        "peak_rss_mib": max(h["peak_rss_mib"] for h in parts),
        "stage_profile": {stage: {"ms_per_image": round(ms, 3)} for stage, ms in stages.items()},
        "parts": parts,
    }


def _weighted(
    parts: list[dict[str, Any]],
    value: Callable[[dict[str, Any]], float],
    weight: Callable[[dict[str, Any]], float],
) -> float:
    total = sum(weight(h) for h in parts)
    return sum(value(h) * weight(h) for h in parts) / total if total else 0.0


def _weighted_map(
    parts: list[dict[str, Any]],
    values: Callable[[dict[str, Any]], dict[str, float]],
    weight: Callable[[dict[str, Any]], float],
) -> dict[str, float]:
    total = sum(weight(h) for h in parts)
    keys = sorted({k for h in parts for k in values(h)})
    return {
        k: round(sum(values(h).get(k, 0.0) * weight(h) for h in parts) / total, 4) if total else 0.0
        for k in keys
    }


# ---------------------------------------------------------------------------- one run
def summarize(
    run: dict[str, Any], floor: dict[str, Any], core: str | None = None
) -> dict[str, Any]:
    """The section's figures of one consumer run (``bench.e2e.run_backlog``'s result).

    ``over_decode_floor`` compares rates on the core; ``cpu_over_decode_floor`` compares CPU per
    image (the floor's over the consumer's), which holds even when other processes of the machine
    take a share of that core (``core_busy_by_others``)."""
    floor_per_s = floor.get("images_per_s")
    floor_cpu = floor.get("cpu_ms_per_image")
    threads = {
        group: round(1000 * s, 3) for group, s in (run.get("thread_cpu_s_per_image") or {}).items()
    }
    stages = {stage: v["ms_per_image"] for stage, v in (run.get("stage_profile") or {}).items()}
    rate = run["images_per_s"]
    cpu_ms = round(1000 * run["cpu_s_per_image"], 3)
    busy = ((run.get("machine") or {}).get("cpu_busy") or {}).get(core or "")
    others = None
    if busy is not None and run.get("cpu_cores_busy") is not None:
        others = round(max(0.0, busy - run["cpu_cores_busy"]), 3)
    return {
        "images_per_s": rate,
        "over_decode_floor": round(rate / floor_per_s, 3) if floor_per_s else None,
        "cpu_ms_per_image": cpu_ms,
        "images_per_cpu_s": round(1000 / cpu_ms, 2) if cpu_ms else None,
        "cpu_over_decode_floor": round(floor_cpu / cpu_ms, 3) if floor_cpu and cpu_ms else None,
        "core_busy_by_others": others,
        "cpu_cores_busy": run.get("cpu_cores_busy"),
        "main_thread_cpu_ms_per_image": threads.get(MAIN_THREAD),
        "thread_cpu_ms_per_image": threads,
        "stage_ms_per_image": stages,
        "peak_rss_mib": run.get("peak_rss_mib"),
        "measured_images": run.get("measured_images"),
        "window": run.get("window"),
        "ingested": run.get("ingested"),
        "dead_lettered": run.get("dead_lettered"),
        "server_cores_busy": run.get("server_cores_busy"),
        "machine": run.get("machine"),
        "parts": [
            {
                "images_per_s": part["images_per_s"],
                "cpu_ms_per_image": round(1000 * part["cpu_s_per_image"], 3),
                "measured_images": part.get("measured_images"),
            }
            for part in run.get("parts") or []
        ],
    }


def run_section(
    ctx: Context,
    *,
    dataset: Dataset,
    plan_: Plan,
    opts: Any,
    server_pids: dict[str, int],
    work: Path,
    sources: tuple[str, ...] = SOURCES,
) -> dict[str, Any]:
    """The section: floor, the consumer per source (in mirrored parts), floor again; the
    figures and ratios."""
    sizes = split_backlog(plan_.messages, plan_.parts)
    order = run_order(sources, len(sizes))
    out: dict[str, Any] = {
        "layout": {"consumer_cpu": plan_.core, "other_cpus": plan_.others, "note": plan_.note},
        "model": "near-free (benchmark-only, serving/nearfree.py)",
        "dataset": dataset.summary(),
        "messages_per_source": plan_.messages,
        "order": [f"{source} {part + 1}/{len(sizes)}" for source, part in order],
    }
    with moved_to(plan_.others) as moved:
        out["layout"]["processes_moved"] = len(moved)
        model = start_model(work, plan_.others)
        feeds = Sources(dataset, work, plan_.others)
        try:
            feeds.start(sources)
            endpoints = replace(opts.endpoints, triton=model.grpc_url)
            pids = {**server_pids, "triton_near_free": model.pid, **feeds.pids()}
            before = decode_floor(dataset, plan_.core, plan_.floor_rounds)
            by_source: dict[str, list[dict[str, Any]]] = {source: [] for source in sources}
            for source, part in order:
                run = _run_source(
                    ctx,
                    feeds,
                    replace(opts, endpoints=endpoints, file_root=dataset.folder),
                    source=source,
                    name=f"bound-{source}" + (f"-{part + 1}" if len(sizes) > 1 else ""),
                    messages=sizes[part],
                    dataset=dataset,
                    core=plan_.core,
                    pids=pids,
                )
                by_source[source].append(run)
                print(
                    f"   {source} ({part + 1}/{len(sizes)}): {run['images_per_s']} images/s",
                    flush=True,
                )
            runs = {source: merge_parts(done) for source, done in by_source.items()}
            after = decode_floor(dataset, plan_.core, plan_.floor_rounds)
        finally:
            feeds.stop()
            model.stop(timeout_s=20.0)
    floor = round((before["images_per_s"] + after["images_per_s"]) / 2, 2)
    out["decode_floor"] = {
        "images_per_s": floor,
        "cpu_ms_per_image": round((before["cpu_ms_per_image"] + after["cpu_ms_per_image"]) / 2, 3),
        "before": before,
        "after": after,
    }
    out["sources"] = {
        source: summarize(run, out["decode_floor"], plan_.core) for source, run in runs.items()
    }
    out["ratios"] = ratios(out["sources"])
    return out


def split_backlog(messages: int, parts: int = PARTS) -> list[int]:
    """Each source's backlog in ``parts`` parts (fewer when too small to split, at least one)."""
    parts = max(1, min(parts, messages))
    return [messages // parts + (1 if i < messages % parts else 0) for i in range(parts)]


def _run_source(
    ctx: Context,
    feeds: Sources,
    opts: Any,
    *,
    source: str,
    name: str,
    messages: int,
    dataset: Dataset,
    core: str | None,
    pids: dict[str, int],
) -> dict[str, Any]:
    """One consumer run of ``messages`` from ``source`` on the section's core."""
    from bench import e2e

    flags, env = feeds.consumer_args(source)
    source_opts = replace(opts, http=source == "http", extra_args=(*opts.extra_args, *flags))
    topic = ctx.topic(name, messages, feeds.base_url(source) or "", dataset)
    target = ctx.collection(name.replace("-", "_"))
    proc = e2e.ConsumerProcess(source_opts, name=name, topic=topic, collection=target, cpus=core)
    proc.env.update(env)
    try:
        return e2e.run_backlog(proc, messages=messages, server_pids=pids)
    finally:
        ctx.release(target)


def ratios(sources: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``http_over_file`` and ``s3_over_file``, where measured: of the images/s on the one core,
    and (``..._per_cpu_s``) of the images per consumer CPU second, the figure that other
    processes taking a share of the core do not move."""
    file = sources.get("file") or {}
    out = {}
    for source in ("http", "s3"):
        other = sources.get(source) or {}
        for key, suffix in (("images_per_s", ""), ("images_per_cpu_s", "_per_cpu_s")):
            base, value = file.get(key), other.get(key)
            if base and value:
                out[f"{source}_over_file{suffix}"] = round(value / base, 3)
    return out


def cost_model(
    section: dict[str, Any], model_rates: tuple[int, ...] = (1000, 5000, 20000)
) -> dict[str, Any] | None:
    """Consumer cores, memory, partitions and fetch bandwidth per GPU at ``model_rates``.

    From each source's measured figures: one consumer process per core, delivering its images
    per CPU second (what a core of its own gives: on a shared machine other processes take part
    of the measured core), its peak memory each, at least one partition per process; one process
    tops out where its main thread is busy all the time (1000 / main-thread ms per image).
    """
    bytes_kib = (section.get("dataset") or {}).get("file_kib", {}).get("mean")
    out: dict[str, Any] = {"mean_image_kib": bytes_kib, "per_source": {}}
    for source, figures in (section.get("sources") or {}).items():
        per_core = figures.get("images_per_cpu_s") or figures.get("images_per_s")
        if not per_core:
            continue
        main_ms = figures.get("main_thread_cpu_ms_per_image")
        rss = figures.get("peak_rss_mib") or 0.0
        rows = []
        for rate in model_rates:
            cores = -(-rate // per_core)
            rows.append(
                {
                    "model_images_per_s": rate,
                    "consumer_cores": int(cores),
                    "memory_gib": round(cores * rss / 1024, 1),
                    "partitions_at_least": int(cores),
                    "fetch_mbit_per_s": round(rate * (bytes_kib or 0) * 1024 * 8 / 1e6)
                    if bytes_kib
                    else None,
                }
            )
        out["per_source"][source] = {
            "images_per_s_per_core": per_core,
            "process_main_thread_limit_images_per_s": round(1000 / main_ms, 1) if main_ms else None,
            "at": rows,
        }
    return out if out["per_source"] else None

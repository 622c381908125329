"""``python -m bench``: every section in one go, on one machine and one generated data set.

Sections: the stages alone (fetch + decode, JAX preprocessing, Milvus upsert, the Triton ceiling),
the naive sequential consumer, the real consumer end to end (rate, CPU per image, stage profile),
produce-to-searchable latency at 50/80/95% of its rate, peak memory on a small and a large
backlog, and the end-to-end run again without pinning. Writes ``bench/results/<run id>.json`` and a
PNG chart beside it, and prints the ratios against the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bench.exceptions import BenchFatalError
from bench.layout import (
    CpuLayout,
    inherited_cpus,
    machine_info,
    plan_layout,
    reexec_pinned,
    source_version,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("stages", "naive", "e2e", "latency", "memory", "unpinned")
#: Triton setting of the bracketing ceiling when the stage sweep is skipped (one of the
#: sweep's best points on the reference machine).
DEFAULT_CEILING = (4, 16)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.replace(" ", "").split(",") if x)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few dozen messages, short sweeps (CI)"
    )
    parser.add_argument(
        "--messages", type=int, help="backlog of the end-to-end runs (default 3000; quick 40)"
    )
    parser.add_argument(
        "--images", type=int, help="distinct image files generated (default 300; quick 24)"
    )
    parser.add_argument("--seed", type=int, default=0, help="data set seed")
    parser.add_argument("--naive-messages", type=int, help="messages for the naive consumer")
    parser.add_argument("--small-backlog", type=int, help="small backlog (default 1000)")
    parser.add_argument("--large-backlog", type=int, help="large backlog (default 50000)")
    parser.add_argument(
        "--memory-window-s", type=float, help="longest a backlog run lasts (default 120)"
    )
    parser.add_argument("--latency-phase-s", type=float, help="seconds per load level (30)")
    parser.add_argument("--latency-fractions", type=_floats, default=(0.5, 0.8, 0.95))
    parser.add_argument(
        "--ceiling-window-s",
        type=float,
        help="Triton ceiling window just before and just after the end-to-end run (default 15)",
    )
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic")
    parser.add_argument(
        "--http", action="store_true", help="serve the images over loopback HTTP, not file://"
    )
    parser.add_argument("--model-cpus", help="CPUs of the model server (default: the first)")
    parser.add_argument("--no-pin", action="store_true", help="run everything unpinned")
    parser.add_argument(
        "--skip", action="append", choices=SECTIONS, default=[], help="leave a section out"
    )
    parser.add_argument("--kafka-bootstrap", help="use this Kafka instead of starting one")
    parser.add_argument("--milvus-uri", help="use this Milvus instead of starting one")
    parser.add_argument("--triton-url", help="use this Triton (grpc://) instead of starting one")
    parser.add_argument(
        "--consumer-arg",
        action="append",
        default=[],
        help="extra flag for the consumer, e.g. --consumer-arg=--infer-batch-size=2",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".cache" / "bench")
    parser.add_argument("--keep", action="store_true", help="keep server data and logs")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "messages": 40 if quick else 3000,
        "images": 24 if quick else 300,
        "naive_messages": 10 if quick else 200,
        "small_backlog": 20 if quick else 1000,
        "large_backlog": 200 if quick else 50_000,
        "memory_window_s": 15.0 if quick else 120.0,
        "latency_phase_s": 3.0 if quick else 30.0,
        "ceiling_window_s": 1.0 if quick else 15.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.naive_messages < 5:
        parser.error("--naive-messages must be at least 5")
    if args.triton_url and not args.triton_url.startswith("grpc://"):
        parser.error("--triton-url must be a grpc:// URL")
    return args


def _sweep(quick: bool) -> Any:
    from bench.stages import Sweep

    if not quick:
        return Sweep()
    return Sweep(
        io_threads=(1, 4),
        preprocess_batches=(1, 4),
        write_groups=(16, 64),
        write_rows=128,
        triton_concurrency=(1, 2),
        triton_batches=(1, 4),
        triton_window_s=0.5,
        fetch_images=24,
        rounds=1,
    )


class _Clock:
    """Prints each section with its duration."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.sections: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"\n-- {name} ...", flush=True)
        began = time.monotonic()
        try:
            return fn()
        finally:
            took = time.monotonic() - began
            self.sections[name] = round(took, 1)
            print(f"   {name}: {took:.1f} s", flush=True)


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    available = inherited_cpus() or os.sched_getaffinity(0)
    layout = plan_layout(available, args.model_cpus)
    if args.no_pin:
        layout = replace(layout, pinned=False, model_cpus=None, consumer_cpus=None, note="--no-pin")
    reexec_pinned(layout, argv)
    signal.signal(signal.SIGTERM, _on_term)
    try:
        return _run(args, layout)
    except BenchFatalError as exc:
        print(f"\nerror: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; servers and consumers stopped", file=sys.stderr, flush=True)
        return 130


def _run(args: argparse.Namespace, layout: CpuLayout) -> int:
    from bench import e2e, report, stages
    from bench.dataset import backlog, build_dataset, message_value
    from bench.kafka_io import create_topic, publish
    from bench.naive import run_naive
    from bench.servers import BenchServers, ImageHttpServer, drop_collections
    from consumer.settings import Settings
    from devstack import free_port

    run_id = time.strftime("%Y%m%dT%H%M%S")
    clock = _Clock()
    work = args.cache_dir / "runs" / run_id
    for line in layout.lines():
        print(line, flush=True)
    if not layout.pinned:
        print("  (on this machine the figures include the model server's share of the CPUs)")
    machine = machine_info()
    print(
        f"machine: {machine.get('cpu_model')}, {machine.get('cpus_online')} CPUs, "
        f"{machine.get('memory_gib')} GiB; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[str, Any] = {
        "run_id": run_id,
        "quick": args.quick,
        "source": source_version(REPO_ROOT),
        "machine": machine,
        "layout": layout.to_json(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    sweep = _sweep(args.quick)
    dataset = clock.run("data set", lambda: build_dataset(args.cache_dir, args.images, args.seed))
    results["dataset"] = {**dataset.summary(), "uri_scheme": "http" if args.http else "file"}
    print(f"   {orjson.dumps(results['dataset']).decode()}")
    defaults = Settings()
    results["consumer_settings"] = {
        key: getattr(defaults, key, None)
        for key in (
            "batch_size",
            "preprocess_buckets",
            "infer_threads",
            "infer_batch_size",
            "io_threads",
            "max_rows_in_flight",
            "write_batch_rows",
            "write_max_age_s",
            "canvas_px",
        )
    } | {"extra_args": list(args.consumer_arg)}
    model_cpus = layout.model_cpus if layout.pinned else None
    rest_cpus = layout.consumer_cpus if layout.pinned else None
    servers = BenchServers(
        work / "servers",
        kafka_cpus=rest_cpus,
        milvus_cpus=rest_cpus,
        triton_cpus=model_cpus,
        kafka=args.kafka_bootstrap,
        milvus=args.milvus_uri,
        triton=args.triton_url,
    )
    http_server: ImageHttpServer | None = None
    topics: list[str] = []
    collections: list[str] = []
    ok = False
    failure: BaseException | None = None
    try:
        endpoints = clock.run("servers", servers.start)
        print(f"   kafka {endpoints.kafka}  milvus {endpoints.milvus}  triton {endpoints.triton}")
        base_url = None
        if args.http:
            http_server = ImageHttpServer(
                dataset.folder, work / "logs" / "images-http.log", free_port(), rest_cpus
            )
            http_server.start()
            base_url = http_server.base_url
        policy = stages.fetch_policy(dataset, args.http)
        uris = [dataset.uri(i, base_url) for i in range(max(sweep.fetch_images, 1))]
        opts = e2e.ConsumerOptions(
            endpoints, dataset.folder, work / "logs", args.http, tuple(args.consumer_arg)
        )

        def topic(name: str, records: int | None = None) -> str:
            full = f"bench-{run_id}-{name}"
            create_topic(endpoints.kafka, full, args.partitions)
            topics.append(full)
            if records:
                took = publish(endpoints.kafka, full, backlog(dataset, records, full, base_url))
                print(f"   published {records} messages to {full} in {took:.1f} s", flush=True)
            return full

        def collection(name: str) -> str:
            full = f"bench_{run_id}_{name}"
            collections.append(full)
            return full

        def release(name: str) -> None:
            """Drop a section's collection once measured, so that Milvus does not seal, index
            or compact it in the background (on the consumer's core) during later sections."""
            drop_collections(endpoints.milvus, [name])
            collections.remove(name)

        # ---------------------------------------------------------------- stages alone
        if "stages" not in args.skip:
            found: dict[str, Any] = {}

            def fetch() -> None:
                result, squares = stages.measure_fetch_decode(
                    dataset, uris, policy, sweep.io_threads, sweep.rounds
                )
                found["fetch_decode"] = result
                found["_squares"] = squares

            clock.run("stage: fetch + decode", fetch)
            clock.run(
                "stage: JAX preprocessing",
                lambda: found.__setitem__(
                    "preprocess",
                    stages.measure_preprocess(
                        found["_squares"],
                        sweep.preprocess_batches,
                        REPO_ROOT / ".cache" / "jax",
                        min_images=64 if args.quick else 256,
                        rounds=sweep.rounds,
                    ),
                ),
            )
            found.pop("_squares")
            clock.run(
                "stage: Triton ceiling",
                lambda: found.__setitem__(
                    "triton",
                    stages.measure_triton(
                        endpoints.triton,
                        sweep.triton_concurrency,
                        sweep.triton_batches,
                        sweep.triton_max_in_flight,
                        sweep.triton_window_s,
                        sweep.rounds,
                    ),
                ),
            )
            upserts = collection("upsert")
            clock.run(
                "stage: Milvus upsert",
                lambda: found.__setitem__(
                    "milvus_upsert",
                    stages.measure_milvus(
                        endpoints.milvus,
                        upserts,
                        found["triton"]["dim"],
                        sweep.write_groups,
                        sweep.write_rows,
                        sweep.rounds,
                        servers.pids().get("milvus"),
                    ),
                ),
            )
            release(upserts)
            results["stages"] = found
            for key in ("fetch_decode", "preprocess", "triton", "milvus_upsert"):
                print(f"   {key}: best {found[key]['best']}")

        # ---------------------------------------------------------------- naive consumer
        if "naive" not in args.skip:
            naive = collection("naive")
            results["naive"] = clock.run(
                "naive sequential consumer",
                lambda: run_naive(
                    bootstrap=endpoints.kafka,
                    topic=topic("naive", args.naive_messages),
                    group=f"bench-{run_id}-naive",
                    triton_url=endpoints.triton,
                    milvus_uri=endpoints.milvus,
                    collection=naive,
                    policy=policy,
                    messages=args.naive_messages,
                    cache_dir=REPO_ROOT / ".cache" / "jax",
                ),
            )
            release(naive)
            print(f"   {results['naive']}")

        # ---------------------------------------------------------------- end to end
        def backlog_run(name: str, messages: int, cpus: str | None, window: float | None) -> Any:
            t = topic(name, messages)
            target = collection(name)
            proc = e2e.ConsumerProcess(opts, name=name, topic=t, collection=target, cpus=cpus)
            try:
                return e2e.run_backlog(
                    proc, messages=messages, server_pids=servers.pids(), window_s=window
                )
            finally:
                release(target)

        if "e2e" not in args.skip:
            best = (results.get("stages", {}).get("triton") or {}).get("best") or {}
            threads = int(best.get("concurrency") or DEFAULT_CEILING[0])
            batch = int(best.get("batch_size") or DEFAULT_CEILING[1])

            def ceiling(when: str) -> dict[str, Any]:
                point = clock.run(
                    f"Triton ceiling {when} end to end ({threads} x {batch})",
                    lambda: stages.measure_ceiling(
                        endpoints.triton, threads, batch, args.ceiling_window_s
                    ),
                )
                print(f"   {point['images_per_s']} images/s")
                return point

            before = ceiling("before")
            results["end_to_end"] = clock.run(
                f"end to end ({'pinned' if layout.pinned else 'unpinned'})",
                lambda: backlog_run("e2e", args.messages, rest_cpus, None),
            )
            _print_run(results["end_to_end"])
            after = ceiling("after")
            results["ceiling"] = {
                "concurrency": threads,
                "batch_size": batch,
                "window_s": args.ceiling_window_s,
                "before": before,
                "after": after,
                "images_per_s": round((before["images_per_s"] + after["images_per_s"]) / 2, 1),
            }

        if "latency" not in args.skip:
            rate = (results.get("end_to_end") or {}).get("images_per_s")
            if not rate:
                rate = (results.get("stages", {}).get("triton", {}).get("best") or {}).get(
                    "images_per_s"
                )
            rate = e2e.check_positive(rate or 0.0, "the end-to-end rate")
            t = topic("latency")
            name = collection("latency")
            proc = e2e.ConsumerProcess(
                opts, name="latency", topic=t, collection=name, cpus=rest_cpus
            )
            levels = clock.run(
                "latency at load levels",
                lambda: e2e.run_latency(
                    proc,
                    topic=t,
                    collection=name,
                    max_rate=rate,
                    fractions=args.latency_fractions,
                    duration_s=args.latency_phase_s,
                    drain_timeout_s=max(30.0, args.latency_phase_s),
                    make_value=lambda i, id_, sent: message_value(
                        id_,
                        dataset.uri(i, base_url),
                        {"sent_ms": int(sent * 1000)},
                    ),
                    server_pids=servers.pids(),
                ),
            )
            release(name)
            results["latency"] = {"max_rate_per_s": rate, "levels": levels}
            for level in levels:
                print(f"   {level}")

        if "memory" not in args.skip:
            memory: dict[str, Any] = {}
            for label, count in (("small", args.small_backlog), ("large", args.large_backlog)):
                memory[label] = clock.run(
                    f"memory: {count}-message backlog",
                    lambda label=label, count=count: backlog_run(
                        f"mem{label}", count, rest_cpus, args.memory_window_s
                    ),
                )
                print(
                    f"   peak RSS {memory[label]['peak_rss_mib']} MiB, "
                    f"{memory[label]['ingested']} ingested at {memory[label]['images_per_s']}/s"
                )
            results["memory"] = memory

        if "unpinned" not in args.skip and layout.pinned:
            everything = layout.available

            def unpinned() -> Any:
                nonlocal servers, endpoints, opts
                if not (args.kafka_bootstrap and args.milvus_uri and args.triton_url):
                    servers.stop()
                    servers = BenchServers(
                        work / "servers-unpinned",
                        kafka_cpus=everything,
                        milvus_cpus=everything,
                        triton_cpus=everything,
                        kafka=args.kafka_bootstrap,
                        milvus=args.milvus_uri,
                        triton=args.triton_url,
                    )
                    endpoints = servers.start()
                    opts = replace(opts, endpoints=endpoints)
                return backlog_run("unpinned", args.messages, everything, None)

            results["unpinned"] = clock.run("end to end (unpinned)", unpinned)
            _print_run(results["unpinned"])
        ok = True
    except BaseException as exc:  # keep what was measured, then fail
        failure = exc
        results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if http_server is not None:
            http_server.stop()
        if args.kafka_bootstrap or args.milvus_uri:
            _drop(args, topics, collections)
        servers.stop()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            print(f"logs and server data kept in {work}", file=sys.stderr)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["section_seconds"] = clock.sections
    results["total_seconds"] = round(time.monotonic() - clock.started, 1)
    results["cost_model"] = report.cost_model(results)
    table = report.ratios(results)
    results["ratios"] = table
    results["findings"] = report.findings(results, table)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{run_id}.json"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    png_path = args.results_dir / f"{run_id}.png"
    try:
        report.chart(results, png_path)
    except Exception:  # the numbers matter more than the picture
        traceback.print_exc()
    report.print_summary(results, table)
    print(f"\nwrote {json_path} and {png_path.name} in {results['total_seconds']:.0f} s")
    if failure is not None:
        raise failure
    return 0


def _print_run(run: dict[str, Any]) -> None:
    print(
        f"   {run['images_per_s']} images/s over {run['measured_images']} images, "
        f"{run['cpu_s_per_image']} CPU s/image, peak RSS {run['peak_rss_mib']} MiB; "
        f"threads {run['thread_cpu_s_per_image']}; servers {run['server_cpu_s_per_image']}",
        flush=True,
    )


def _drop(args: argparse.Namespace, topics: list[str], collections: list[str]) -> None:
    """Remove what this run created on servers it did not start (best effort)."""
    if args.kafka_bootstrap and topics:
        try:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": args.kafka_bootstrap})
            names = topics + [f"{t}.dlq" for t in topics]
            for future in admin.delete_topics(names, operation_timeout=10).values():
                with contextlib.suppress(Exception):  # a dead-letter topic never created
                    future.result(15)
        except Exception as exc:
            print(f"could not delete the bench topics: {exc}", file=sys.stderr)
    if args.milvus_uri and collections:
        try:
            from bench.servers import drop_collections

            drop_collections(args.milvus_uri, collections)
        except Exception as exc:
            print(f"could not drop the bench collections: {exc}", file=sys.stderr)

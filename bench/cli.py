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
SECTIONS = ("stages", "naive", "e2e", "quix", "latency", "memory", "unpinned", "bound")
#: Triton setting of the bracketing ceiling when the stage sweep is skipped (one of the
#: sweep's best points on the reference machine).
DEFAULT_CEILING = (4, 16)
#: The consumer's settings recorded with the results.
SETTINGS_REPORTED = (
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


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.replace(" ", "").split(",") if x)


def _ints(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected sizes like 600,2400, not {text!r}")
    return sizes


def _names(text: str) -> tuple[str, ...]:
    names = tuple(x for x in text.replace(" ", "").split(",") if x)
    unknown = sorted(set(names) - {"file", "http", "s3"})
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"sources are file, http and s3, not {text!r}")
    return names


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
        "--memory-window-s",
        type=float,
        help="longest a memory run lasts (default 120; quick 60, it ends sooner when done)",
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
        "--photos", type=int, help="photo-sized JPEGs of the consumer-bound set (200; quick 12)"
    )
    parser.add_argument(
        "--bound-messages",
        type=int,
        help="messages per source of the consumer-bound section (default 1500; quick 40)",
    )
    parser.add_argument(
        "--bound-sources",
        type=_names,
        default=("file", "http", "s3"),
        help="sources of the consumer-bound section, e.g. file,http (default file,http,s3)",
    )
    parser.add_argument(
        "--quix-sizes",
        type=_ints,
        help="backlogs of the Quix Streams peer section (default 600,3000; quick 12)",
    )
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
        "memory_window_s": 60.0 if quick else 120.0,
        "latency_phase_s": 3.0 if quick else 30.0,
        "ceiling_window_s": 1.0 if quick else 15.0,
        "photos": 12 if quick else 200,
        "bound_messages": 40 if quick else 1500,
        "quix_sizes": (12,) if quick else (600, 3000),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.photos < 1 or args.bound_messages < 1:
        parser.error("--photos and --bound-messages must be at least 1")
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


class _Bench:
    """One benchmark run: its servers, its topics and collections, and the results so far."""

    def __init__(self, args: argparse.Namespace, layout: CpuLayout) -> None:
        self.args = args
        self.layout = layout
        self.run_id = time.strftime("%Y%m%dT%H%M%S")
        self.clock = _Clock()
        self.work = args.cache_dir / "runs" / self.run_id
        self.sweep = _sweep(args.quick)
        self.model_cpus = layout.model_cpus if layout.pinned else None
        self.rest_cpus = layout.consumer_cpus if layout.pinned else None
        self.topics: list[str] = []
        self.collections: list[str] = []
        self.results: dict[str, Any] = {}
        self.http_server: Any = None
        self.base_url: str | None = None
        self.servers: Any = None
        self.endpoints: Any = None
        self.opts: Any = None
        self.dataset: Any = None
        self.policy: Any = None
        self.uris: list[str] = []

    # ------------------------------------------------------------------ set-up
    def describe_machine(self) -> None:
        for line in self.layout.lines():
            print(line, flush=True)
        if not self.layout.pinned:
            print("  (on this machine the figures include the model server's share of the CPUs)")
        machine = machine_info()
        print(
            f"machine: {machine.get('cpu_model')}, {machine.get('cpus_online')} CPUs, "
            f"{machine.get('memory_gib')} GiB; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        self.results.update(
            {
                "run_id": self.run_id,
                "quick": self.args.quick,
                "source": source_version(REPO_ROOT),
                "machine": machine,
                "layout": self.layout.to_json(),
                "load_average_start": [round(x, 2) for x in os.getloadavg()],
            }
        )

    def build_data(self) -> None:
        from bench.dataset import build_dataset
        from consumer.settings import Settings

        args = self.args
        self.dataset = self.clock.run(
            "data set", lambda: build_dataset(args.cache_dir, args.images, args.seed)
        )
        self.results["dataset"] = {
            **self.dataset.summary(),
            "uri_scheme": "http" if args.http else "file",
        }
        print(f"   {orjson.dumps(self.results['dataset']).decode()}")
        defaults = Settings()
        self.results["consumer_settings"] = {
            key: getattr(defaults, key, None) for key in SETTINGS_REPORTED
        } | {"extra_args": list(args.consumer_arg)}

    def start_servers(self) -> None:
        from bench import e2e, stages
        from bench.servers import BenchServers, ImageHttpServer
        from devstack import free_port

        args = self.args
        self.servers = BenchServers(
            self.work / "servers",
            kafka_cpus=self.rest_cpus,
            milvus_cpus=self.rest_cpus,
            triton_cpus=self.model_cpus,
            kafka=args.kafka_bootstrap,
            milvus=args.milvus_uri,
            triton=args.triton_url,
            with_triton=bool(set(SECTIONS) - {"bound"} - set(args.skip)),
        )
        self.endpoints = self.clock.run("servers", self.servers.start)
        ep = self.endpoints
        print(f"   kafka {ep.kafka}  milvus {ep.milvus}  triton {ep.triton}")
        if args.http:
            self.http_server = ImageHttpServer(
                self.dataset.folder,
                self.work / "logs" / "images-http.log",
                free_port(),
                self.rest_cpus,
            )
            self.http_server.start()
            self.base_url = self.http_server.base_url
        self.policy = stages.fetch_policy(self.dataset, args.http)
        count = max(self.sweep.fetch_images, 1)
        self.uris = [self.dataset.uri(i, self.base_url) for i in range(count)]
        self.opts = e2e.ConsumerOptions(
            ep, self.dataset.folder, self.work / "logs", args.http, tuple(args.consumer_arg)
        )

    # ------------------------------------------------------------------ helpers
    def topic(
        self,
        name: str,
        records: int | None = None,
        base_url: str | None = None,
        dataset: Any = None,
    ) -> str:
        """A fresh topic of this run, with ``records`` backlog messages of ``dataset`` (default:
        the run's set) published to it, their URIs under ``base_url`` (default: the run's)."""
        from bench.dataset import backlog
        from bench.kafka_io import create_topic, publish

        full = f"bench-{self.run_id}-{name}"
        create_topic(self.endpoints.kafka, full, self.args.partitions)
        self.topics.append(full)
        if records:
            url = base_url if base_url is not None else self.base_url
            records_of = backlog(dataset or self.dataset, records, full, url)
            took = publish(self.endpoints.kafka, full, records_of)
            print(f"   published {records} messages to {full} in {took:.1f} s", flush=True)
        return full

    def collection(self, name: str) -> str:
        full = f"bench_{self.run_id}_{name}"
        self.collections.append(full)
        return full

    def release(self, name: str) -> None:
        """Drop a section's collection once measured, so that Milvus does not seal, index or
        compact it in the background (on the consumer's core) during later sections."""
        from bench.servers import drop_collections

        drop_collections(self.endpoints.milvus, [name])
        self.collections.remove(name)

    def backlog_run(self, name: str, messages: int, cpus: str | None, window: float | None) -> Any:
        from bench import e2e

        t = self.topic(name, messages)
        target = self.collection(name)
        proc = e2e.ConsumerProcess(self.opts, name=name, topic=t, collection=target, cpus=cpus)
        try:
            return e2e.run_backlog(
                proc, messages=messages, server_pids=self.servers.pids(), window_s=window
            )
        finally:
            self.release(target)

    # ------------------------------------------------------------------ sections
    def stages(self) -> None:
        """Each stage alone at a sweep of its settings."""
        from bench import stages

        args, sweep, clock = self.args, self.sweep, self.clock
        found: dict[str, Any] = {}
        squares: list[Any] = []

        def fetch() -> None:
            result, loaded = stages.measure_fetch_decode(
                self.dataset, self.uris, self.policy, sweep.io_threads, sweep.rounds
            )
            found["fetch_decode"] = result
            squares.extend(loaded)

        clock.run("stage: fetch + decode", fetch)
        found["preprocess"] = clock.run(
            "stage: JAX preprocessing",
            lambda: stages.measure_preprocess(
                squares,
                sweep.preprocess_batches,
                REPO_ROOT / ".cache" / "jax",
                min_images=64 if args.quick else 256,
                rounds=sweep.rounds,
            ),
        )
        squares.clear()
        found["triton"] = clock.run(
            "stage: Triton ceiling",
            lambda: stages.measure_triton(
                self.endpoints.triton,
                sweep.triton_concurrency,
                sweep.triton_batches,
                sweep.triton_max_in_flight,
                sweep.triton_window_s,
                sweep.rounds,
            ),
        )
        upserts = self.collection("upsert")
        found["milvus_upsert"] = clock.run(
            "stage: Milvus upsert",
            lambda: stages.measure_milvus(
                self.endpoints.milvus,
                upserts,
                found["triton"]["dim"],
                sweep.write_groups,
                sweep.write_rows,
                sweep.rounds,
                self.servers.pids().get("milvus"),
            ),
        )
        self.release(upserts)
        self.results["stages"] = found
        for key in ("fetch_decode", "preprocess", "triton", "milvus_upsert"):
            print(f"   {key}: best {found[key]['best']}")

    def naive(self) -> None:
        from bench.naive import run_naive

        args, ep = self.args, self.endpoints
        naive = self.collection("naive")
        self.results["naive"] = self.clock.run(
            "naive sequential consumer",
            lambda: run_naive(
                bootstrap=ep.kafka,
                topic=self.topic("naive", args.naive_messages),
                group=f"bench-{self.run_id}-naive",
                triton_url=ep.triton,
                milvus_uri=ep.milvus,
                collection=naive,
                policy=self.policy,
                messages=args.naive_messages,
                cache_dir=REPO_ROOT / ".cache" / "jax",
            ),
        )
        self.release(naive)
        print(f"   {self.results['naive']}")

    def _ceiling_setting(self) -> tuple[int, int]:
        best = (self.results.get("stages", {}).get("triton") or {}).get("best") or {}
        threads = int(best.get("concurrency") or DEFAULT_CEILING[0])
        batch = int(best.get("batch_size") or DEFAULT_CEILING[1])
        return threads, batch

    def _ceiling(self, when: str, threads: int, batch: int) -> dict[str, Any]:
        from bench import stages

        point: dict[str, Any] = self.clock.run(
            f"Triton ceiling {when} end to end ({threads} x {batch})",
            lambda: stages.measure_ceiling(
                self.endpoints.triton, threads, batch, self.args.ceiling_window_s
            ),
        )
        print(f"   {point['images_per_s']} images/s")
        return point

    def end_to_end(self) -> None:
        threads, batch = self._ceiling_setting()
        before = self._ceiling("before", threads, batch)
        self.results["end_to_end"] = self.clock.run(
            f"end to end ({'pinned' if self.layout.pinned else 'unpinned'})",
            lambda: self.backlog_run("e2e", self.args.messages, self.rest_cpus, None),
        )
        _print_run(self.results["end_to_end"])
        after = self._ceiling("after", threads, batch)
        self.results["ceiling"] = {
            "concurrency": threads,
            "batch_size": batch,
            "window_s": self.args.ceiling_window_s,
            "before": before,
            "after": after,
            "images_per_s": round((before["images_per_s"] + after["images_per_s"]) / 2, 1),
        }

    def quix(self) -> None:
        """The Quix Streams peer and the consumer on the same backlogs (see ``bench.quixbench``)."""
        from bench import quixbench

        self.results["quix"] = quixbench.run_section(self, tuple(self.args.quix_sizes))

    def _latency_rate(self) -> float:
        from bench import e2e

        rate = (self.results.get("end_to_end") or {}).get("images_per_s")
        if not rate:
            triton = self.results.get("stages", {}).get("triton", {})
            rate = (triton.get("best") or {}).get("images_per_s")
        return e2e.check_positive(rate or 0.0, "the end-to-end rate")

    def latency(self) -> None:
        from bench import e2e
        from bench.dataset import message_value

        args = self.args
        rate = self._latency_rate()
        t = self.topic("latency")
        name = self.collection("latency")
        proc = e2e.ConsumerProcess(
            self.opts, name="latency", topic=t, collection=name, cpus=self.rest_cpus
        )
        dataset, base_url = self.dataset, self.base_url
        levels = self.clock.run(
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
                    id_, dataset.uri(i, base_url), {"sent_ms": int(sent * 1000)}
                ),
                server_pids=self.servers.pids(),
            ),
        )
        self.release(name)
        self.results["latency"] = {"max_rate_per_s": rate, "levels": levels}
        for level in levels:
            print(f"   {level}")

    def memory(self) -> None:
        args = self.args
        memory: dict[str, Any] = {}
        for label, count in (("small", args.small_backlog), ("large", args.large_backlog)):
            run = self.clock.run(
                f"memory: {count}-message backlog",
                lambda label=label, count=count: self.backlog_run(
                    f"mem{label}", count, self.rest_cpus, args.memory_window_s
                ),
            )
            memory[label] = run
            print(
                f"   peak RSS {run['peak_rss_mib']} MiB, "
                f"{run['ingested']} ingested at {run['images_per_s']}/s"
            )
        self.results["memory"] = memory

    def unpinned(self) -> None:
        from bench.servers import BenchServers

        args = self.args
        everything = self.layout.available

        def run() -> Any:
            if not (args.kafka_bootstrap and args.milvus_uri and args.triton_url):
                self.servers.stop()
                self.servers = BenchServers(
                    self.work / "servers-unpinned",
                    kafka_cpus=everything,
                    milvus_cpus=everything,
                    triton_cpus=everything,
                    kafka=args.kafka_bootstrap,
                    milvus=args.milvus_uri,
                    triton=args.triton_url,
                )
                self.endpoints = self.servers.start()
                self.opts = replace(self.opts, endpoints=self.endpoints)
            return self.backlog_run("unpinned", args.messages, everything, None)

        self.results["unpinned"] = self.clock.run("end to end (unpinned)", run)
        _print_run(self.results["unpinned"])

    def bound(self) -> None:
        """The consumer-bound section (see ``bench.bound``)."""
        from bench import bound
        from bench.dataset import build_photo_dataset

        args = self.args
        photos = self.clock.run(
            "photo-sized data set",
            lambda: build_photo_dataset(args.cache_dir, args.photos, args.seed),
        )
        # quick: two parts per source (a CI run's dozen messages), else four (bound.run_order)
        parts = 2 if args.quick else bound.PARTS
        plan = bound.plan(self.layout, args.bound_messages, 1 if args.quick else 3, parts)
        print(f"   {orjson.dumps(photos.summary()).decode()}\n   {plan.note}", flush=True)
        section = self.clock.run(
            "consumer-bound (near-free model, photo-sized set)",
            lambda: bound.run_section(
                self,
                dataset=photos,
                plan_=plan,
                opts=self.opts,
                server_pids=self.servers.pids(),
                work=self.work / "bound",
                sources=tuple(args.bound_sources),
            ),
        )
        section["cost_model"] = bound.cost_model(section)
        self.results["consumer_bound"] = section

    def sections(self) -> list[tuple[str, Callable[[], None]]]:
        """The sections to run, in order (``--skip`` and the layout leave some out)."""
        chosen = [
            ("stages", self.stages),
            ("naive", self.naive),
            ("e2e", self.end_to_end),
            ("quix", self.quix),
            ("latency", self.latency),
            ("memory", self.memory),
            ("bound", self.bound),
        ]
        if self.layout.pinned:
            chosen.append(("unpinned", self.unpinned))
        return [(name, fn) for name, fn in chosen if name not in self.args.skip]

    # ------------------------------------------------------------------ tear-down
    def stop(self, ok: bool) -> None:
        if self.http_server is not None:
            self.http_server.stop()
        if self.args.kafka_bootstrap or self.args.milvus_uri:
            _drop(self.args, self.topics, self.collections)
        if self.servers is not None:
            self.servers.stop()
        if ok and not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        elif not ok:
            print(f"logs and server data kept in {self.work}", file=sys.stderr)

    def write(self) -> Path:
        """Ratios, findings, the JSON and the chart; prints the summary."""
        from bench import report

        results = self.results
        results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        results["section_seconds"] = self.clock.sections
        results["total_seconds"] = round(time.monotonic() - self.clock.started, 1)
        results["cost_model"] = report.cost_model(results)
        table = report.ratios(results)
        results["ratios"] = table
        results["findings"] = report.findings(results, table)
        self.args.results_dir.mkdir(parents=True, exist_ok=True)
        json_path: Path = self.args.results_dir / f"{self.run_id}.json"
        json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        png_path = json_path.with_suffix(".png")
        try:
            report.chart(results, png_path)
        except Exception:  # the numbers matter more than the picture
            traceback.print_exc()
        report.print_summary(results, table)
        print(f"\nwrote {json_path} and {png_path.name} in {results['total_seconds']:.0f} s")
        return json_path


def _run(args: argparse.Namespace, layout: CpuLayout) -> int:
    bench = _Bench(args, layout)
    bench.describe_machine()
    bench.build_data()
    ok = False
    failure: BaseException | None = None
    try:
        bench.start_servers()
        for _name, section in bench.sections():
            section()
        ok = True
    except BaseException as exc:  # keep what was measured, then fail
        failure = exc
        bench.results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        bench.stop(ok)
    bench.write()
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

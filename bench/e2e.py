"""The real consumer end to end, as a separate process under ``taskset``.

- throughput: a backlog is published first, then the consumer works through it; the rate and the
  consumer's CPU seconds per image are taken between the first and the last acknowledged write
  (start-up and JAX warm-up excluded), from its ``/metrics`` and psutil;
- latency: a paced producer stamps each message, a prober queries the ids in Milvus with Strong
  consistency until each is found; percentiles per load level;
- memory: peak resident set size (the kernel's ``VmHWM``) while working through a backlog.

At the end of a throughput run the stage histograms (``image_embedder_stage_duration_seconds``)
are scraped: they are the profile of where the consumer's time goes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.exceptions import BenchFatalError, ConsumerRunFailedError
from bench.servers import Endpoints, tree_cpu_seconds
from devstack import free_port
from devstack.process import log_tail

PREFIX = "image_embedder"
INGESTED = f"{PREFIX}_messages_total"
STAGES = f"{PREFIX}_stage_duration_seconds"
#: Fewer scrapes than this between the 10% and 90% marks: too short to call a steady state.
MIN_STEADY_MARKS = 6


@dataclass(frozen=True)
class ConsumerOptions:
    """How the consumer processes are started."""

    endpoints: Endpoints
    file_root: Path
    log_dir: Path
    http: bool = False
    extra_args: Sequence[str] = ()
    scrape_interval_s: float = 0.5


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text -> {sample name: {sorted labels: value}}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[labels] = float(sample.value)
    return out


def stage_profile(metrics: dict[str, Any], images: int) -> dict[str, Any]:
    """Per stage: observations, mean ms per observation and ms per ingested image."""
    sums = metrics.get(f"{STAGES}_sum", {})
    counts = metrics.get(f"{STAGES}_count", {})
    profile = {}
    for labels, total in sorted(sums.items()):
        stage = dict(labels).get("stage", "?")
        count = counts.get(labels, 0.0)
        if not count:
            continue
        profile[stage] = {
            "observations": int(count),
            "ms_per_observation": round(1000 * total / count, 3),
            "ms_per_image": round(1000 * total / max(1, images), 3),
        }
    return profile


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{thread id: (thread name, user + system CPU seconds)} of a process."""
    out: dict[int, tuple[str, float]] = {}
    try:
        threads = psutil.Process(pid).threads()
    except psutil.Error:
        return out
    for t in threads:
        try:
            name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        out[t.id] = (name, t.user_time + t.system_time)
    return out


def thread_groups(
    pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds between two snapshots, by thread group (main thread vs thread names)."""
    groups: dict[str, float] = {}
    main_name = after.get(pid, ("python", 0.0))[0]
    for tid, (name, cpu) in after.items():
        spent = cpu - before.get(tid, (name, 0.0))[1]
        if tid == pid:
            group = "main thread"
        elif name == main_name:
            group = "worker threads (I/O, inference, writer, XLA)"
        else:
            group = name.rstrip("0123456789").rstrip(":-_ ") or name
        groups[group] = groups.get(group, 0.0) + spent
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, e.g. ``VmHWM`` (peak RSS) or ``VmRSS``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class ConsumerProcess:
    """``python -m consumer run`` for one topic, its metrics on a free loopback port."""

    def __init__(
        self,
        opts: ConsumerOptions,
        *,
        name: str,
        topic: str,
        collection: str,
        cpus: str | None,
    ) -> None:
        self.opts = opts
        self.name = name
        self.metrics_port = free_port()
        self.log_file = opts.log_dir / f"consumer-{name}.log"
        #: The consumer's own run summary (``--summary-json``), written as it exits.
        self.summary_file = opts.log_dir / f"consumer-{name}-summary.json"
        cmd = [
            sys.executable,
            "-m",
            "consumer",
            "run",
            "--topic",
            topic,
            "--group",
            f"{topic}-group",
            "--collection",
            collection,
            "--metrics-port",
            str(self.metrics_port),
            "--log-format",
            "json",
            "--summary-json",
            str(self.summary_file),
            "--log-level",
            "WARNING",
        ]
        if opts.http:
            cmd += ["--allowed-network", "127.0.0.1/32"]
        else:
            cmd += ["--file-root", str(opts.file_root)]
        cmd += list(opts.extra_args)
        self.cmd = ["taskset", "-c", cpus, *cmd] if cpus else cmd
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": opts.endpoints.kafka,
            "MILVUS_URI": opts.endpoints.milvus,
            "TRITON_URL": opts.endpoints.triton,
            "IMAGE_EMBEDDER_METRICS_HOST": "127.0.0.1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=Path(__file__).resolve().parent.parent,
            )

    def own_summary(self) -> dict[str, Any]:
        """The run summary the consumer wrote as it exited (empty when it wrote none)."""
        try:
            summary: dict[str, Any] = json.loads(self.summary_file.read_text())
        except (OSError, ValueError):
            return {}
        return summary

    def failed(self, reason: str) -> ConsumerRunFailedError:
        return ConsumerRunFailedError(
            f"consumer {self.name}: {reason}; log {self.log_file}:\n{log_tail(self.log_file)}"
        )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise self.failed(f"exited with code {self.proc.returncode}")

    def scrape(self) -> dict[str, Any] | None:
        try:
            resp = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5.0)
        except httpx.HTTPError:
            return None
        return parse_metrics(resp.text) if resp.status_code == 200 else None

    def ingested(self, metrics: dict[str, Any] | None) -> int:
        if not metrics:
            return 0
        return int(metrics.get(INGESTED, {}).get((("outcome", "ingested"),), 0.0))

    def dead_lettered(self, metrics: dict[str, Any] | None) -> int:
        if not metrics:
            return 0
        return int(metrics.get(INGESTED, {}).get((("outcome", "dead_lettered"),), 0.0))

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until ``/readyz`` says 200 (partitions assigned, Triton and Milvus reachable)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                resp = httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2.0)
                if resp.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise self.failed(f"not ready after {timeout_s:.0f} s")

    def cpu_seconds(self) -> float:
        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the consumer drains and commits), then SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class _Mark:
    t: float
    ingested: int
    cpu_s: float
    servers_cpu_s: dict[str, float]
    harness_cpu_s: float
    cpu_busy_s: list[float]
    threads: dict[int, tuple[str, float]] = field(default_factory=dict)
    rows_in_flight: float = 0.0
    paused: bool = False


def _busy_per_cpu() -> list[float]:
    """Busy (non-idle, non-iowait) seconds of each CPU since boot, all processes."""
    return [sum(t) - t.idle - t.iowait for t in psutil.cpu_times(percpu=True)]


def _mark(consumer: ConsumerProcess, ingested: int, server_pids: dict[str, int]) -> _Mark:
    me = psutil.Process().cpu_times()
    return _Mark(
        time.monotonic(),
        ingested,
        consumer.cpu_seconds(),
        {name: tree_cpu_seconds(pid) for name, pid in server_pids.items()},
        me.user + me.system,
        _busy_per_cpu(),
        thread_cpu(consumer.pid),
    )


def machine_share(first: _Mark, last: _Mark) -> dict[str, Any]:
    """How busy each CPU was over the window, and how much of it was other people's work.

    ``other_cores_busy`` is everything the machine ran besides this benchmark's processes (the
    consumer, the servers, the harness): on a shared machine it tells whether the figures were
    taken on quiet cores.
    """
    span = max(1e-6, last.t - first.t)
    per_cpu = [
        round((b - a) / span, 3) for a, b in zip(first.cpu_busy_s, last.cpu_busy_s, strict=True)
    ]
    ours = (
        (last.cpu_s - first.cpu_s)
        + sum(last.servers_cpu_s[k] - first.servers_cpu_s[k] for k in last.servers_cpu_s)
        + (last.harness_cpu_s - first.harness_cpu_s)
    ) / span
    return {
        "cpu_busy": {str(i): v for i, v in enumerate(per_cpu)},
        "server_cores_busy": {
            name: round((last.servers_cpu_s[name] - first.servers_cpu_s[name]) / span, 3)
            for name in last.servers_cpu_s
        },
        "harness_cores_busy": round((last.harness_cpu_s - first.harness_cpu_s) / span, 3),
        "other_cores_busy": round(max(0.0, sum(per_cpu) - ours), 3),
    }


def steady_window(
    marks: Sequence[_Mark], low: float = 0.1, high: float = 0.9
) -> tuple[_Mark, _Mark]:
    """The marks where the count first reaches ``low`` and ``high`` of its final value.

    Both ends lie in the steady state: the pipeline is as full at the start as at the end, so the
    work counted matches the images counted (from the first write to the last it would not: the
    first writes come after hundreds of images were already fetched and decoded).
    """
    final = marks[-1].ingested
    first = next(i for i, m in enumerate(marks) if m.ingested >= max(1, low * final))
    last = next(i for i, m in enumerate(marks) if m.ingested >= high * final)
    if last - first >= MIN_STEADY_MARKS:
        return marks[first], marks[last], f"steady: {low:.0%} to {high:.0%} of the images written"
    # a tiny run never reaches a steady state: count from the start, set-up included
    return marks[0], next(m for m in marks if m.ingested >= final), "whole run, set-up included"


def run_backlog(
    consumer: ConsumerProcess,
    *,
    messages: int,
    server_pids: dict[str, int],
    window_s: float | None = None,
) -> dict[str, Any]:
    """Start ``consumer`` on a published backlog; measure until it is done or ``window_s`` ends.

    Returns the steady rate and CPU per image (see :func:`steady_window`), the servers' CPU and
    the consumer's thread groups' CPU over the same span, peak RSS and the stage profile.
    """
    started = time.monotonic()
    consumer.start()
    limit = window_s if window_s is not None else max(300.0, messages / 2.0)
    marks: list[_Mark] = []
    metrics: dict[str, Any] | None = None
    rss_peak_sampled = 0
    try:
        while True:
            consumer.check_alive()
            metrics = consumer.scrape() or metrics
            ingested = consumer.ingested(metrics)
            rss_peak_sampled = max(rss_peak_sampled, status_kib(consumer.pid, "VmRSS"))
            mark = _mark(consumer, ingested, server_pids)
            mark.rows_in_flight = _gauge(metrics, f"{PREFIX}_rows_in_flight")
            mark.paused = _gauge(metrics, f"{PREFIX}_paused_partitions") > 0
            marks.append(mark)
            handled = ingested + consumer.dead_lettered(metrics)
            if handled >= messages or time.monotonic() - started >= limit:
                break
            time.sleep(consumer.opts.scrape_interval_s)
        peak_kib = status_kib(consumer.pid, "VmHWM")
    finally:
        consumer.stop()
    if not marks or marks[-1].ingested == 0:
        raise consumer.failed(
            f"ingested {consumer.ingested(metrics)} of {messages} in {limit:.0f} s"
        )
    first, last, window = steady_window(marks)
    span = max(1e-6, last.t - first.t)
    images = max(1, last.ingested - first.ingested)
    servers = {
        name: round((last.servers_cpu_s[name] - first.servers_cpu_s[name]) / images, 4)
        for name in server_pids
    }
    busy = {
        name: round((last.servers_cpu_s[name] - first.servers_cpu_s[name]) / span, 3)
        for name in server_pids
    }
    groups = thread_groups(consumer.pid, first.threads, last.threads)
    ingested = consumer.ingested(metrics)
    own = consumer.own_summary()
    busy_s = own.get("busy_seconds") or 0.0
    steady = [m for m in marks if first.t <= m.t <= last.t]
    return {
        "messages": messages,
        "ingested": ingested,
        "dead_lettered": consumer.dead_lettered(metrics),
        "seconds_to_first_write": round(next(m.t for m in marks if m.ingested > 0) - started, 2),
        "seconds_total": round(marks[-1].t - started, 2),
        "window": window,
        "measured_images": images,
        "measured_seconds": round(span, 2),
        "images_per_s": round(images / span, 2),
        # the consumer's own clock: from the first message it polled to the last one done
        "startup_seconds": own.get("startup_seconds"),
        "busy_seconds": busy_s or None,
        "images_per_s_from_first_poll": round(own.get("ingested", 0) / busy_s, 2)
        if busy_s
        else None,
        "cpu_s_per_image": round((last.cpu_s - first.cpu_s) / images, 4),
        "cpu_cores_busy": round((last.cpu_s - first.cpu_s) / span, 3),
        "thread_cpu_s_per_image": {k: round(v / images, 4) for k, v in groups.items()},
        "server_cpu_s_per_image": servers,
        "server_cores_busy": busy,
        "machine": machine_share(first, last),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "peak_rss_sampled_mib": round(rss_peak_sampled / 1024, 1),
        "batch_size_mean": _mean_batch(metrics or {}),
        "rows_in_flight_mean": round(sum(m.rows_in_flight for m in steady) / len(steady), 1),
        "paused_share": round(sum(m.paused for m in steady) / len(steady), 3),
        "stage_profile": stage_profile(metrics or {}, ingested),
    }


def _gauge(metrics: dict[str, Any] | None, name: str) -> float:
    """The value of an unlabelled gauge in a scrape (0 when absent)."""
    return float(sum((metrics or {}).get(name, {}).values()))


def _mean_batch(metrics: dict[str, Any]) -> float | None:
    total = sum(metrics.get(f"{PREFIX}_batch_size_sum", {}).values())
    count = sum(metrics.get(f"{PREFIX}_batch_size_count", {}).values())
    return round(total / count, 2) if count else None


END_TO_END = f"{PREFIX}_end_to_end_seconds"


def end_to_end_check(metrics: dict[str, Any], prober_p50_s: float | None) -> dict[str, Any]:
    """The consumer's own freshness histogram (live, written) against the prober's median.

    The histogram gives the bucket its median lies in; they agree when the prober's median lies
    in that bucket or within one bucket width of it (the prober measures from the hand-off to
    the producer to the row found in a Strong query, polled every 50 ms, so it reads a little
    later than the acknowledgement the histogram stops at).
    """
    buckets = []
    for labels, count in metrics.get(f"{END_TO_END}_bucket", {}).items():
        d = dict(labels)
        if d.get("kind") == "written" and d.get("live") == "true":
            buckets.append((float(d["le"]), count))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return {"observed": 0}
    lower = 0.0
    for le, count in buckets:
        if count >= 0.5 * total:
            upper = le
            break
        lower = le
    out: dict[str, Any] = {"observed": int(total), "p50_bucket_s": [lower, upper]}
    if prober_p50_s is not None and upper != float("inf"):
        width = upper - lower
        out["prober_p50_s"] = prober_p50_s
        out["agrees"] = lower - width <= prober_p50_s <= upper + width
    return out


def diff_metrics(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Counter and histogram samples of ``after`` minus ``before`` (one interval's share)."""
    out: dict[str, Any] = {}
    for name, series in after.items():
        prev = before.get(name, {})
        out[name] = {labels: value - prev.get(labels, 0.0) for labels, value in series.items()}
    return out


class Prober:
    """Queries Milvus (Strong consistency) for expected ids until each is found; a thread."""

    def __init__(self, milvus_uri: str, collection: str, interval_s: float = 0.05) -> None:
        from bench.servers import milvus_client

        self.client = milvus_client(milvus_uri)
        self.collection = collection
        self.interval_s = interval_s
        self._pending: dict[str, float] = {}
        self._found: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self.queries = 0

    def start(self) -> None:
        self._thread.start()

    def expect(self, id_: str, sent_at: float) -> None:
        with self._lock:
            self._pending[id_] = sent_at

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def take_latencies(self) -> tuple[list[float], int]:
        """Latencies found so far (seconds) and the count still pending; resets both."""
        with self._lock:
            found = list(self._found.values())
            missing = len(self._pending)
            self._found = {}
            self._pending = {}
        return found, missing

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ids = list(self._pending)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                try:
                    rows = self.client.query(
                        self.collection,
                        filter=f"id in {orjson.dumps(chunk).decode()}",
                        output_fields=["id"],
                        consistency_level="Strong",
                    )
                except Exception:  # a slow or busy server: try again next round
                    continue
                now = time.monotonic()
                self.queries += 1
                with self._lock:
                    for row in rows:
                        sent = self._pending.pop(str(row["id"]), None)
                        if sent is not None:
                            self._found[str(row["id"])] = now - sent
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}
    arr = np.asarray(values)
    return {
        "p50_s": round(float(np.percentile(arr, 50)), 3),
        "p95_s": round(float(np.percentile(arr, 95)), 3),
        "p99_s": round(float(np.percentile(arr, 99)), 3),
        "max_s": round(float(arr.max()), 3),
    }


def run_latency(
    consumer: ConsumerProcess,
    *,
    topic: str,
    collection: str,
    max_rate: float,
    fractions: Sequence[float],
    duration_s: float,
    drain_timeout_s: float,
    make_value: Callable[[int, str, float], bytes],
    server_pids: dict[str, int],
) -> list[dict[str, Any]]:
    """One consumer, one topic; per load fraction a paced phase, then a drain; percentiles.

    ``make_value(index, id, unix time)`` builds each record's value (the time goes into its
    metadata); the prober measures from the moment the record was handed to the producer.
    """
    from bench.kafka_io import publish_paced

    endpoints = consumer.opts.endpoints
    consumer.start()
    levels = []
    levels_sent: list[int] = []
    try:
        consumer.wait_ready()
        prober = Prober(endpoints.milvus, collection)
        prober.start()
        try:
            for fraction in fractions:
                before = consumer.scrape() or {}
                mark_before = _mark(consumer, 0, server_pids)
                rate = max(0.5, fraction * max_rate)
                tag = f"l{round(fraction * 100)}"

                def record(
                    i: int, tag: str = tag, base: int = sum(levels_sent)
                ) -> tuple[bytes, bytes]:
                    id_ = f"{topic}-{tag}-{i:06d}"
                    return id_.encode(), make_value(base + i, id_, time.time())

                def sent(i: int, key: bytes, at: float) -> None:
                    prober.expect(key.decode(), at)

                count = publish_paced(endpoints.kafka, topic, rate, duration_s, record, sent)
                levels_sent.append(count)
                deadline = time.monotonic() + drain_timeout_s
                while prober.pending and time.monotonic() < deadline:
                    consumer.check_alive()
                    time.sleep(0.1)
                latencies, missing = prober.take_latencies()
                spent = diff_metrics(consumer.scrape() or {}, before)
                mark_after = _mark(consumer, 0, server_pids)
                seconds = mark_after.t - mark_before.t
                levels.append(
                    {
                        "load_fraction": fraction,
                        "rate_per_s": round(rate, 2),
                        "published": count,
                        "found": len(latencies),
                        "not_found_in_time": missing,
                        **percentiles(latencies),
                        "consumer_cores_busy": round(
                            (mark_after.cpu_s - mark_before.cpu_s) / seconds, 3
                        ),
                        "machine": machine_share(mark_before, mark_after),
                        "batch_size_mean": _mean_batch(spent),
                        "stage_profile": stage_profile(spent, consumer.ingested(spent)),
                    }
                )
                levels[-1]["end_to_end_metric"] = end_to_end_check(spent, levels[-1]["p50_s"])
                time.sleep(1.0)
        finally:
            prober.stop()
    finally:
        consumer.stop()
    return levels


def check_positive(value: float, what: str) -> float:
    if not value or value <= 0:
        raise BenchFatalError(f"{what} measured as {value}; cannot derive the load levels")
    return value

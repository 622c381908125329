"""Helpers for the fault-injection suite: the consumer as a child process, event-driven waits,
publishing with known positions, reading dead letters, group membership and metrics.

Every wait polls a condition with a generous deadline and fails with the consumer's log tail;
nothing here asserts on how long something took.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parent.parent.parent

#: Generous deadline for one wait: a busy 2-core CI machine, three servers and a JAX process.
WAIT_S = 240.0


# -- the consumer as a process --------------------------------------------------------------------


@dataclass
class ConsumerProcess:
    """``python -m consumer run ...`` in its own process, its output in a log file.

    A sampler thread records the peak resident memory of the process while it runs.
    """

    args: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    summary_path: Path | None = None
    metrics_port: int | None = None
    peak_rss_bytes: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _sampler: threading.Thread | None = field(default=None, repr=False)
    _stop_sampling: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self) -> ConsumerProcess:
        cmd = [sys.executable, "-m", "consumer", "run", *self.args]
        if self.summary_path is not None:
            cmd += ["--summary-json", str(self.summary_path)]
        if self.metrics_port is None:
            cmd.append("--no-metrics")
        else:
            cmd += ["--metrics-port", str(self.metrics_port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=dict(self.env),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        assert self._proc is not None
        try:
            watched = psutil.Process(self._proc.pid)
            while not self._stop_sampling.is_set() and self._proc.poll() is None:
                self.peak_rss_bytes = max(self.peak_rss_bytes, watched.memory_info().rss)
                self._stop_sampling.wait(0.05)
        except psutil.Error:
            return

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout_s: float = WAIT_S) -> int:
        """Wait for the process to exit; fail with the log tail if it does not in time."""
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"consumer did not exit within {timeout_s:.0f} s\n{self.log_tail()}"
            ) from None
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(5)
        return code

    def terminate(self) -> None:
        """SIGTERM: the graceful stop (drain, write, commit, close)."""
        if self.running():
            assert self._proc is not None
            self._proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)
        self._stop_sampling.set()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return f"--- consumer log {self.log_path.name} (tail) ---\n{text[-chars:]}"

    def summary(self) -> dict[str, Any]:
        """The ``--summary-json`` the process wrote when it ended."""
        assert self.summary_path is not None, "started without a summary path"
        assert self.summary_path.exists(), f"no summary written\n{self.log_tail()}"
        return orjson.loads(self.summary_path.read_bytes())

    def scrape(self) -> str:
        """The text of ``/metrics`` (raises while the server does not answer)."""
        assert self.metrics_port is not None, "started without a metrics port"
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def probe(self, path: str) -> int:
        """Status code of ``/livez`` or ``/readyz`` (0 when nothing answers)."""
        assert self.metrics_port is not None, "started without a metrics port"
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5).status_code
        except httpx.HTTPError:
            return 0


def consumer_env(
    kafka: str, milvus: str, triton: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The consumer's environment: the test's servers, JSON logs, no inherited test hooks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_EMBEDDER_")}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "MILVUS_URI": milvus,
            "TRITON_URL": triton,
            "IMAGE_EMBEDDER_LOG_FORMAT": "json",
        }
    )
    env.update(extra or {})
    return env


# -- waiting ---------------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    *,
    timeout_s: float = WAIT_S,
    interval_s: float = 0.5,
    alive: Iterable[ConsumerProcess] = (),
) -> None:
    """Poll ``predicate`` until it holds. A predicate that raises counts as False.

    Fails early, with its log, when one of the ``alive`` processes exits meanwhile.
    """
    watched = list(alive)
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as exc:  # servers restarting, collection not there yet, ...
            last_error = exc
        for proc in watched:
            if not proc.running():
                raise AssertionError(
                    f"consumer exited with {proc.returncode} while waiting for {what}\n"
                    f"{proc.log_tail()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(p.log_tail() for p in watched)
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what} "
                f"(last error: {last_error!r})\n{logs}"
            )
        time.sleep(interval_s)


# -- Kafka -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One record to publish: raw key and value bytes (None for none) and its partition."""

    key: bytes | None
    value: bytes | None
    partition: int = 0


def image_record(msg_id: str, uri: str, partition: int = 0, **fields: Any) -> Record:
    """An ``image.v1`` upsert keyed by its id."""
    return Record(msg_id.encode(), orjson.dumps({"id": msg_id, "uri": uri, **fields}), partition)


def publish(bootstrap: str, topic: str, records: Sequence[Record]) -> list[tuple[int, int]]:
    """Publish ``records`` in order; returns each one's (partition, offset). Raises if any fails."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    positions: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[str] = []

    def on_delivery(index: int, err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            positions[index] = (msg.partition(), msg.offset())

    for index, record in enumerate(records):
        producer.produce(
            topic,
            key=record.key,
            value=record.value,
            partition=record.partition,
            on_delivery=lambda err, msg, i=index: on_delivery(i, err, msg),
        )
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining or errors or any(p is None for p in positions):
        raise KafkaException(f"{remaining} undelivered, errors: {errors[:5]}")
    return [p for p in positions if p is not None]


@dataclass(frozen=True)
class DeadLetterRecord:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int


def read_topic(bootstrap: str, topic: str) -> list[DeadLetterRecord]:
    """Every record now in ``topic`` (up to the high watermarks), with headers decoded.

    A topic that does not exist reads as empty.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=30)
    if topic not in metadata.topics:
        return []
    parts = sorted(metadata.topics[topic].partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    records: list[DeadLetterRecord] = []
    try:
        ends: dict[int, int] = {}
        assignment = []
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, low))
        if not assignment:
            return []
        consumer.assign(assignment)
        positions = {p: -1 for p in ends}
        deadline = time.monotonic() + 60
        while any(positions[p] < ends[p] - 1 for p in ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end: {positions} / {ends}")
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            positions[msg.partition()] = msg.offset()
            headers = {
                k: (v.decode() if isinstance(v, bytes) else str(v))
                for k, v in (msg.headers() or [])
            }
            records.append(
                DeadLetterRecord(msg.key(), msg.value(), headers, msg.partition(), msg.offset())
            )
    finally:
        consumer.close()
    return records


@dataclass(frozen=True)
class GroupState:
    state: str
    members: int
    assigned: int  # partitions assigned over all members


def describe_group(bootstrap: str, group: str) -> GroupState:
    """The group's state, member count and assigned partition count (AdminClient)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(
        timeout=30
    )
    assigned = sum(
        len(m.assignment.topic_partitions) if m.assignment else 0 for m in description.members
    )
    state = getattr(description.state, "name", str(description.state))
    return GroupState(state, len(description.members), assigned)


# -- metrics ---------------------------------------------------------------------------------------


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of metric ``name`` whose label text contains ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{", 1)[0] == name and labels in series:
            total += float(value)
    return total


# -- a local HTTP server for fetch faults ----------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], None]


class LocalHttpServer:
    """A threaded HTTP server on a loopback address whose paths run the given ``routes``.

    It counts accepted connections and requests per path, so a test can prove that a refused
    URI never reached it. Unknown paths answer 404.
    """

    def __init__(self, routes: Mapping[str, Route], host: str = "127.0.0.1", port: int = 0):
        self.routes = dict(routes)
        self.connections = 0
        self.requests: dict[str, int] = {}
        self.released = threading.Event()  # set at stop: handlers that hang return
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                outer.requests[path] = outer.requests.get(path, 0) + 1
                route = outer.routes.get(path)
                try:
                    if route is None:
                        self.send_error(404)
                    else:
                        route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (size limit, timeout): expected

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                outer.connections += 1
                return True

        self._server = Server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}{path}"

    def start(self) -> LocalHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def send_bytes(data: bytes, content_type: str = "image/jpeg") -> Route:
    """A route answering 200 with ``data``."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return route


def send_status(code: int) -> Route:
    """A route answering ``code`` with an empty body."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def send_redirect(location: str) -> Route:
    """A route answering 302 to ``location``."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def send_slowly(data: bytes, delay_s: float, started: threading.Event) -> Route:
    """A route that sets ``started``, waits ``delay_s``, then answers 200 with ``data``."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        started.set()
        time.sleep(delay_s)
        send_bytes(data)(handler)

    return route


def send_endless(total_bytes: int, declare_length: bool) -> Route:
    """A route streaming ``total_bytes`` zero bytes, generated on the fly (never on disk)."""
    chunk = b"\0" * (1024 * 1024)

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        if declare_length:
            handler.send_header("Content-Length", str(total_bytes))
        handler.end_headers()
        sent = 0
        while sent < total_bytes:
            piece = chunk[: min(len(chunk), total_bytes - sent)]
            handler.wfile.write(piece)
            sent += len(piece)

    return route


class SilentServer:
    """A loopback port that accepts TCP connections (kernel backlog) and never answers."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self.host = host

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self._sock.close()

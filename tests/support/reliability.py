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
from collections import Counter
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

from tests.support.mutant_consumer import ENV_CALLS, ENV_MUTANT

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
    #: A deliberately broken variant (``tests/support/mutant_consumer.py``), for tests of tests.
    mutant: str | None = None
    #: (time.monotonic(), RSS bytes) every 50 ms while the process runs.
    rss_samples: list[tuple[float, int]] = field(default_factory=list, repr=False)
    _rss_error: BaseException | None = field(default=None, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _sampler: threading.Thread | None = field(default=None, repr=False)
    _stop_sampling: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def calls_path(self) -> Path:
        """What the process sent: acknowledged Milvus writes and Kafka commits (JSON lines)."""
        return self.log_path.with_name(self.log_path.stem + "-calls.jsonl")

    def start(self) -> ConsumerProcess:
        cmd = [sys.executable, "-m", "tests.support.mutant_consumer", "run", *self.args]
        if self.summary_path is not None:
            cmd += ["--summary-json", str(self.summary_path)]
        if self.metrics_port is None:
            cmd.append("--no-metrics")
        else:
            cmd += ["--metrics-port", str(self.metrics_port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            env = {**self.env, ENV_CALLS: str(self.calls_path)}
            env.pop(ENV_MUTANT, None)
            if self.mutant is not None:
                env[ENV_MUTANT] = self.mutant
            self._proc = subprocess.Popen(
                cmd,
                env=env,
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
                self.rss_samples.append((time.monotonic(), watched.memory_info().rss))
                self._stop_sampling.wait(0.05)
        except psutil.NoSuchProcess:
            return  # it exited between poll() and the read
        except Exception as exc:  # reported by peak_rss_bytes
            self._rss_error = exc

    @property
    def peak_rss_bytes(self) -> int:
        """Peak resident memory seen; fails when the sampler erred or saw nothing."""
        assert self._rss_error is None, f"RSS sampler failed: {self._rss_error!r}"
        assert self.rss_samples, "the RSS sampler recorded nothing"
        peak = max(rss for _, rss in self.rss_samples)
        assert peak > 0, "the RSS sampler read 0 bytes"
        return peak

    def peak_rss_between(self, start: float, end: float = float("inf")) -> int:
        """Peak RSS sampled in [start, end) (time.monotonic()); 0 when no sample fell there."""
        self.peak_rss_bytes  # noqa: B018 - the sampler's own checks
        return max((rss for t, rss in self.rss_samples if start <= t < end), default=0)

    def calls(self) -> list[dict[str, Any]]:
        """The lines of the calls file (empty before the first call)."""
        try:
            text = self.calls_path.read_bytes()
        except FileNotFoundError:
            return []
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]

    def milvus_writes(self) -> list[dict[str, Any]]:
        """Acknowledged writes to the rows' collection, in order: ``{"op": "upsert"|"insert"|
        "delete", "collection", "ids"}`` (bookkeeping collections such as tombstones left out)."""
        return [
            c
            for c in self.calls()
            if c["op"] in ("upsert", "insert", "delete") and not _bookkeeping(c)
        ]

    def upserted_ids(self) -> list[str]:
        """Every id of every acknowledged upsert (or insert), with repeats."""
        return [i for c in self.milvus_writes() if c["op"] != "delete" for i in c["ids"]]

    def assert_mutant_applied(self) -> None:
        assert self.mutant is not None
        applied = [c["name"] for c in self.calls() if c["op"] == "mutant"]
        assert applied == [self.mutant], (applied, self.log_tail())

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

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` if the process still runs."""
        if self.running():
            assert self._proc is not None
            self._proc.send_signal(signum)

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


# -- what was sent, and what was committed ---------------------------------------------------------


def assert_upserts_only(*procs: ConsumerProcess) -> None:
    """Every acknowledged Milvus write of every process was an upsert or a delete.

    Milvus Lite replaces a row whose key exists even on ``insert``; real Milvus keeps both rows,
    so an ``insert`` is a duplicate row there, whatever ``count(*)`` says here.
    """
    for proc in procs:
        bad = [c for c in proc.milvus_writes() if c["op"] not in ("upsert", "delete")]
        assert not bad, f"NOT AN UPSERT: {proc.log_path.name} sent {bad[:3]}"


def assert_written_once_per_ingest(proc: ConsumerProcess) -> None:
    """The ids the process upserted are exactly as many as its summary's ``ingested``, each id
    at most once per message: a row written twice (or once more than counted) fails."""
    summary = proc.summary()
    sent = proc.upserted_ids()
    assert len(sent) == summary["ingested"], (
        f"DUPLICATE WRITE: {proc.log_path.name} upserted {len(sent)} rows for "
        f"{summary['ingested']} ingested messages"
    )


def dead_lettered_positions(bootstrap: str, topic: str) -> set[tuple[int, int]]:
    """The (partition, offset) of every message of ``topic`` in its dead-letter topic now."""
    return {
        (int(r.headers["source.partition"]), int(r.headers["source.offset"]))
        for r in read_topic(bootstrap, f"{topic}.dlq")
        if r.headers.get("source.topic") == topic
    }


@dataclass
class CommitViolation:
    sample: int
    partition: int
    offset: int
    msg_id: str | None


class CommitSampler:
    """Reads the group's committed offsets every ``interval_s`` from the broker and, right after,
    what is durable at that moment (``durable()``: the ids in Milvus); every committed offset's
    message must be durable, or in the dead-letter topic (read only when an id is missing).

    A commit read before the durable set can only name work acknowledged before it, so a sample
    never blames a correct consumer. Use as a context manager, then ``check()``.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topic: str,
        positions: Mapping[str, tuple[int, int]],
        durable: Callable[[], set[str]],
        *,
        interval_s: float = 0.1,
    ) -> None:
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.by_position = {pos: msg_id for msg_id, pos in positions.items()}
        self.partitions = sorted({p for p, _ in positions.values()})
        self.durable = durable
        self.interval_s = interval_s
        self.samples = 0
        self.max_committed: dict[int, int] = {}
        self.violations: list[CommitViolation] = []
        self.errors: list[str] = []
        self._dead: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-sampler", daemon=True)

    def add(self, positions: Mapping[str, tuple[int, int]]) -> None:
        """Messages published after the sampler started."""
        self.by_position.update({pos: msg_id for msg_id, pos in positions.items()})
        self.partitions = sorted(set(self.partitions) | {p for p, _ in positions.values()})

    def _dead_lettered(self, part: int, off: int) -> bool:
        if (part, off) not in self._dead:
            self._dead |= dead_lettered_positions(self.bootstrap, self.topic)
        return (part, off) in self._dead

    def sample_once(self, reader: Consumer) -> None:
        wanted = [TopicPartition(self.topic, p) for p in self.partitions]
        committed = {
            tp.partition: tp.offset for tp in reader.committed(wanted, timeout=10) if tp.offset > 0
        }
        durable = self.durable()
        self.samples += 1
        for part, end in committed.items():
            self.max_committed[part] = max(self.max_committed.get(part, 0), end)
            for off in range(end):
                msg_id = self.by_position.get((part, off))
                if msg_id is not None and msg_id in durable:
                    continue
                if msg_id is None or not self._dead_lettered(part, off):
                    self.violations.append(CommitViolation(self.samples, part, off, msg_id))

    def _reader(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "log_level": 0,  # a broker stopped on purpose is not news
            }
        )

    def _run(self) -> None:
        reader = self._reader()
        try:
            while not self._stop.is_set():
                try:
                    self.sample_once(reader)
                except Exception as exc:  # a broker or Milvus restarting: the next sample counts
                    self.errors.append(repr(exc))
                self._stop.wait(self.interval_s)
        finally:
            reader.close()

    def __enter__(self) -> CommitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling, then take one last sample: the end state is always checked."""
        self._stop.set()
        self._thread.join(30)
        reader = self._reader()
        try:
            self.sample_once(reader)
        except Exception as err:
            self.errors.append(repr(err))
        finally:
            reader.close()

    def check_violations(self) -> None:
        """No sample so far saw a committed offset past a message that is not durable. Called
        first when a scenario times out waiting for rows: a consumer that committed what it had
        not written loses those rows for good, and the commit is the cause to report."""
        assert not self.violations, "COMMITTED BEFORE DURABLE: " + "; ".join(
            f"sample {v.sample}: {v.partition}:{v.offset} ({v.msg_id}) committed, not in "
            "Milvus nor dead-lettered"
            for v in self.violations[:5]
        )

    def check_commits(self, *procs: ConsumerProcess) -> None:
        """Every commit the processes made names only messages whose write Milvus had
        acknowledged before it (to any of them) or that are dead-lettered. Read from what was
        sent, at every commit: no sampling window, so a commit ahead of durable writes fails
        however briefly it was ahead.

        Sound for a correct consumer: the launcher records a write once Milvus acknowledged it,
        before the writer reports it, and a commit once the broker acknowledged it, so a write
        that a commit depends on is recorded first. Processes' calls are merged by their
        timestamps (one machine, one clock), each process's own order kept.
        """
        calls = sorted((c for proc in procs for c in _named_calls(proc)), key=lambda c: c[1]["t"])
        acked: set[str] = set()
        checked: dict[int, int] = {}  # partition -> every offset below it was verified
        for name, call in calls:
            if call["op"] in ("upsert", "insert", "delete"):
                acked.update(call["ids"])
            elif call["op"] == "commit":
                for topic, part, end in call["offsets"]:
                    if topic == self.topic:
                        self._check_commit(name, part, end, checked.get(part, 0), acked)
                        checked[part] = max(checked.get(part, 0), end)

    def _check_commit(self, proc: str, part: int, end: int, start: int, acked: set[str]) -> None:
        for off in range(start, end):
            msg_id = self.by_position.get((part, off))
            if msg_id is not None and msg_id in acked:
                continue
            assert self._dead_lettered(part, off), (
                f"COMMITTED BEFORE DURABLE: {proc} committed {part}:{end}, past {part}:{off} "
                f"({msg_id}) before Milvus acknowledged its write"
            )

    def check(self, *, min_committed: int = 1) -> None:
        """No violation; enough samples; at least ``min_committed`` offsets seen committed."""
        self.check_violations()
        assert self.samples >= 3, (self.samples, self.errors[-3:])
        seen = sum(self.max_committed.values())
        assert seen >= min_committed, (
            f"the sampler saw {seen} committed offsets, wanted {min_committed} "
            f"({self.samples} samples, errors {self.errors[-3:]})"
        )


def _named_calls(proc: ConsumerProcess) -> list[tuple[str, dict[str, Any]]]:
    """The process's calls with its log's name, bookkeeping collections' writes left out."""
    return [(proc.log_path.name, c) for c in proc.calls() if not _bookkeeping(c)]


def _bookkeeping(call: dict[str, Any]) -> bool:
    """A write to a bookkeeping collection (the tombstones), not to the rows' collection."""
    return str(call.get("collection") or "").endswith("_tombstones")


class MilvusIds:
    """``durable()`` for a sampler: the ids in a collection now (Strong consistency), through one
    client. While ``fallback`` is set (Milvus stopped on purpose), the ids the consumer's Milvus
    acknowledged are used instead (its calls file)."""

    def __init__(self, uri: str, collection: str) -> None:
        from pymilvus import MilvusClient

        self.uri, self.collection = uri, collection
        self._client: Any = MilvusClient(uri)
        self.fallback: Callable[[], set[str]] | None = None

    def __call__(self) -> set[str]:
        if self.fallback is not None:
            return self.fallback()
        if not self._client.has_collection(self.collection):
            return set()
        rows = self._client.query(
            self.collection,
            filter='id != ""',
            output_fields=["id"],
            consistency_level="Strong",
            limit=16384,
            timeout=10,
        )
        return {str(r["id"]) for r in rows}

    def close(self) -> None:
        self._client.close()


def acknowledged_ids(*procs: ConsumerProcess) -> Callable[[], set[str]]:
    """``durable()`` from what Milvus acknowledged to the given processes."""
    return lambda: {i for proc in procs for i in proc.upserted_ids()}


def assert_restart_redid_the_rest(
    restart: ConsumerProcess, uncommitted: set[str], acknowledged_before: set[str]
) -> None:
    """Exactly once for committed work: the restart sends only uncommitted messages, each once;
    it sends every uncommitted one that no earlier run had written (one already written may be
    skipped as the same version, or rewritten); its summary accounts for each uncommitted
    message once."""
    sent = Counter(restart.upserted_ids())
    twice = [m for m, n in sent.items() if n > 1]
    assert not twice, f"DUPLICATE WRITE: the restart sent {twice[:5]} more than once"
    again = set(sent) - uncommitted
    assert not again, f"DUPLICATE WRITE: committed work sent again: {sorted(again)[:5]}"
    missing = uncommitted - acknowledged_before - set(sent)
    assert not missing, f"uncommitted, never written, not redone: {sorted(missing)[:5]}"
    summary = restart.summary()
    accounted = summary["ingested"] + summary["skipped_stale"] + summary["superseded"]
    assert accounted == len(uncommitted), (summary, len(uncommitted))
    assert summary["ingested"] == len(sent), (summary, len(sent))

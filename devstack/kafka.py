"""Apache Kafka for the dev stack: jars from Maven Central, one KRaft node (broker + controller).

The jars come from the pinned ``devstack/kafka/pom.xml`` through ``mvn`` (``~/.m2`` is the
download cache) and are copied to ``.cache/kafka/<version>/libs/``; no distribution tarball and
no shell scripts are needed, the broker runs straight from the class path.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from devstack.exceptions import FetchError, ServerError
from devstack.paths import CACHE_DIR
from devstack.process import ServerProcess, port_accepts

KAFKA_VERSION = "4.1.1"
SCALA_BINARY_VERSION = "2.13"
MIN_JAVA_MAJOR = 17
POM_FILE = Path(__file__).resolve().parent / "kafka" / "pom.xml"
LOG4J2_CONFIG = Path(__file__).resolve().parent / "kafka" / "log4j2.properties"
KAFKA_LIBS_DIR = CACHE_DIR / "kafka" / KAFKA_VERSION / "libs"
#: Written last into the libs folder; holds the pom's digest so a changed pom fetches again.
_COMPLETE_MARKER = ".complete"

#: Small heap and a fast-starting JVM: the broker only serves tests and a demo on one machine.
DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)


def java_executable() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else the PATH's."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
        raise ServerError("kafka", f"JAVA_HOME is set but {candidate} does not exist")
    found = shutil.which("java")
    if found is None:
        raise ServerError("kafka", f"no java on PATH (Java {MIN_JAVA_MAJOR}+ is required)")
    return found


@functools.cache
def java_major_version(java: str) -> int:
    """The major version of ``java`` (e.g. 17), read from ``java -version``."""
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match is None:
        raise ServerError("kafka", f"cannot read the version of {java}: {proc.stderr.strip()}")
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_..."
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> str:
    """The java executable, after checking that it is recent enough for Kafka 4."""
    java = java_executable()
    major = java_major_version(java)
    if major < MIN_JAVA_MAJOR:
        raise ServerError("kafka", f"{java} is Java {major}; Kafka 4 needs {MIN_JAVA_MAJOR}+")
    return java


def _pom_digest() -> str:
    return hashlib.sha256(POM_FILE.read_bytes()).hexdigest()


def kafka_libs_ready(libs_dir: Path = KAFKA_LIBS_DIR) -> bool:
    """True when ``libs_dir`` holds a complete copy of the jars the current pom names."""
    marker = libs_dir / _COMPLETE_MARKER
    try:
        return marker.read_text().strip() == _pom_digest()
    except OSError:
        return False


def fetch_kafka(libs_dir: Path = KAFKA_LIBS_DIR, *, force: bool = False) -> Path:
    """Copy Kafka and its runtime dependencies into ``libs_dir`` with Maven; a no-op when done.

    The copy lands in a temporary folder first and is renamed into place, so an interrupted
    fetch never leaves a half-filled ``libs`` behind; a file lock makes concurrent calls safe.
    """
    if not force and kafka_libs_ready(libs_dir):
        return libs_dir
    libs_dir.parent.mkdir(parents=True, exist_ok=True)
    with (libs_dir.parent / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and kafka_libs_ready(libs_dir):
            return libs_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise FetchError("mvn (Apache Maven) is not on PATH; it fetches the Kafka jars")
        staging = libs_dir.with_name(f"{libs_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM_FILE),
            "dependency:copy-dependencies",
            f"-Dkafka.libs.dir={staging}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        main_jar = staging / f"kafka_{SCALA_BINARY_VERSION}-{KAFKA_VERSION}.jar"
        if proc.returncode != 0 or not main_jar.is_file():
            shutil.rmtree(staging, ignore_errors=True)
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise FetchError(
                f"{' '.join(cmd)} failed with code {proc.returncode}:\n{output}".rstrip()
            )
        (staging / _COMPLETE_MARKER).write_text(_pom_digest() + "\n")
        shutil.rmtree(libs_dir, ignore_errors=True)
        staging.rename(libs_dir)
        return libs_dir


def random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid``, never one starting with "-", which command-line
    parsers take for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaServer(ServerProcess):
    """A single-node KRaft Kafka (broker and controller in one JVM) on loopback.

    Storage under ``data_dir`` is formatted on the first start only, so a restart on the same
    ``data_dir`` keeps topics and committed offsets. The settings suit one node: replication
    factors 1, no initial rebalance delay, automatic topic creation.
    ``advertised_port`` lets clients be routed through a proxy (fault tests); it defaults to
    ``port``.
    """

    name = "kafka"
    start_timeout_s = 90.0

    def __init__(
        self,
        data_dir: Path,
        log_file: Path,
        port: int = 9092,
        controller_port: int = 9093,
        host: str = "127.0.0.1",
        *,
        advertised_port: int | None = None,
        libs_dir: Path = KAFKA_LIBS_DIR,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
        extra_config: Mapping[str, str] | None = None,
        pid_file: Path | None = None,
        cpus: str | None = None,
    ) -> None:
        super().__init__(log_file, pid_file=pid_file, cpus=cpus)
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self._host = host
        self.advertised_port = advertised_port or port
        self.libs_dir = Path(libs_dir)
        self.jvm_options = tuple(jvm_options)
        self.extra_config = dict(extra_config or {})
        self.node_id = 1

    @property
    def host(self) -> str:
        return self._host

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the broker listener."""
        return f"{self._host}:{self.port}"

    @property
    def address(self) -> str:
        return self.bootstrap_servers

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        """Kafka's own data ("log.dirs"): partitions and the KRaft metadata log."""
        return self.data_dir / "kraft-data"

    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def identity(self) -> list[str]:
        return ["kafka.Kafka", str(self.config_file)]

    def config(self) -> dict[str, str]:
        """The broker's settings (``extra_config`` wins)."""
        host = self._host
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": f"{self.node_id}@{host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{self.advertised_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a crash, the restarted node waits for its old registration to expire:
            # keep that short (default 9 s) without risking fencing on a busy machine.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
        }
        settings.update(self.extra_config)
        return settings

    def _java(self) -> str:
        return check_java()

    def _classpath(self) -> str:
        if not kafka_libs_ready(self.libs_dir):
            raise self.error(
                f"Kafka jars missing in {self.libs_dir}; run `python -m devstack fetch-kafka`"
            )
        return f"{self.libs_dir}/*"

    def _jvm(self) -> list[str]:
        return [
            self._java(),
            *self.jvm_options,
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.log_file.parent}",
            "-cp",
            self._classpath(),
        ]

    def command(self) -> list[str]:
        return [*self._jvm(), "kafka.Kafka", str(self.config_file)]

    def prepare(self) -> None:
        """Write the settings; format the storage when it has never been formatted."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.config().items()]
        self.config_file.write_text("# written by devstack on every start\n" + "\n".join(lines))
        if (self.log_dir / "meta.properties").is_file():
            return
        cmd = [
            *self._jvm(),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            random_cluster_id(),
            "--config",
            str(self.config_file),
            *self.format_arguments(),
        ]
        with self.log_file.open("ab") as log:
            log.write(f"=== devstack: formatting {self.log_dir}\n".encode())
            log.flush()
            proc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120
            )
        if proc.returncode != 0:
            raise self.error(f"formatting the storage failed with code {proc.returncode}")

    def format_arguments(self) -> list[str]:
        """Extra arguments of the storage format (e.g. SCRAM users of a secured broker)."""
        return []

    def is_ready(self) -> bool:
        """True when the broker answers a metadata request naming itself."""
        if not port_accepts(self.port, self._host):
            return False
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "socket.connection.setup.timeout.ms": 1000,
                "log_level": 0,
            }
        )
        try:
            metadata = admin.list_topics(timeout=2)
        except KafkaException:
            return False
        return self.node_id in metadata.brokers

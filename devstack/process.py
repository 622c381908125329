"""Child-process plumbing shared by the dev-stack servers.

Every server runs in its own session (so its whole process group can be signalled, children
included), writes stdout and stderr to its log file, and is ready only when its own protocol
answers, not merely when its process exists.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import psutil

from devstack.exceptions import ServerError

#: How many lines of a log a ServerError quotes.
LOG_TAIL_LINES = 30
_KILL_WAIT_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (a server could bind it now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True when a TCP connection to ``host:port`` succeeds (cheap pre-check of a probe)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True when ``pid`` names a live process (zombies count as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def pid_cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` ([] when it is gone or unreadable)."""
    try:
        return psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def ignored_signals(pid: int) -> set[int]:
    """Signals ``pid`` ignores (read from /proc; empty when unknown).

    A process started from a background shell job inherits an ignored SIGINT, so sending it
    SIGINT would only waste the stop timeout.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    for line in status.splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {n + 1 for n in range(64) if mask >> n & 1}
    return set()


def read_pid_file(path: Path) -> int | None:
    """The pid written in ``path``, or None when the file is missing or garbled."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_exit(pid: int, timeout_s: float, popen: subprocess.Popen[bytes] | None) -> bool:
    """Wait until ``pid`` has exited (reaping it when it is our child); True if it did."""
    deadline = time.monotonic() + timeout_s
    while True:
        if popen is not None:
            if popen.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def terminate_process(
    pid: int,
    signals: Sequence[int],
    timeout_s: float,
    popen: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Stop a session leader gracefully, then make sure its whole process group is gone.

    Each signal in ``signals`` goes to the leader only (so it can shut its own children down in
    order) and gets an equal share of ``timeout_s``; signals it ignores are skipped. Whatever is
    left afterwards, leader or orphaned children, gets SIGKILL. Returns True when the leader
    exited before SIGKILL was needed.
    """
    ignored = ignored_signals(pid)
    usable = [s for s in signals if s not in ignored]
    share_s = timeout_s / max(1, len(usable))
    graceful = False
    for sig in usable:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            graceful = True
            break
        if _wait_exit(pid, share_s, popen):
            graceful = True
            break
    _signal_group(pid, signal.SIGKILL)
    _wait_exit(pid, _KILL_WAIT_S, popen)
    return graceful


class ServerProcess(ABC):
    """A server process the dev stack starts, waits for, and stops.

    Subclasses give the command line, the ports it binds, the readiness probe and the tokens
    that identify their process (to reuse or stop a server named by a pid file safely).
    """

    #: Name used in messages and file names.
    name: str = "server"
    #: Graceful stop signals, tried in order before SIGKILL.
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)
    #: Seconds between readiness probes.
    poll_interval_s: float = 0.25
    #: Default readiness timeout of ``start``.
    start_timeout_s: float = 90.0

    def __init__(
        self, log_file: Path, *, pid_file: Path | None = None, cpus: str | None = None
    ) -> None:
        self.log_file = Path(log_file)
        self.pid_file = Path(pid_file) if pid_file is not None else None
        self.cpus = cpus
        self._popen: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    # -- what subclasses define ------------------------------------------------------------

    @abstractmethod
    def command(self) -> list[str]:
        """The server's command line (without CPU pinning)."""

    @abstractmethod
    def ports(self) -> list[int]:
        """TCP ports the server binds; each must be free before it starts."""

    @abstractmethod
    def is_ready(self) -> bool:
        """True when the server answers its own protocol (not just when the port is open)."""

    @abstractmethod
    def identity(self) -> list[str]:
        """Arguments that appear in this server's command line and in no other's."""

    @property
    @abstractmethod
    def address(self) -> str:
        """How clients reach the server (shown in status lines)."""

    def environment(self) -> dict[str, str]:
        """The child's environment."""
        return dict(os.environ)

    def cwd(self) -> Path | None:
        """The child's working directory (None: inherit)."""
        return None

    def prepare(self) -> None:
        """Work to do before the first exec, e.g. formatting storage (nothing by default)."""
        return None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the server process (the session leader), None when not started."""
        return self._pid

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def running(self) -> bool:
        """True while the process this object started or attached is alive."""
        if self._pid is None:
            return False
        if self._popen is not None:
            return self._popen.poll() is None
        return pid_alive(self._pid)

    def full_command(self) -> list[str]:
        """The command line as executed: pinned to ``cpus`` by taskset at exec time."""
        cmd = self.command()
        if self.cpus:
            return ["taskset", "-c", self.cpus, *cmd]
        return cmd

    def error(self, reason: str) -> ServerError:
        """A ServerError naming this server, its log file and the log's last lines."""
        return ServerError(self.name, reason, self.log_file, log_tail(self.log_file))

    def start(self, timeout_s: float | None = None) -> None:
        """Start the server and wait until it is ready; on failure it is killed and raises."""
        if self.running():
            raise ServerError(self.name, f"already running as pid {self._pid}", self.log_file)
        busy = [p for p in self.ports() if not port_is_free(p, self.host)]
        if busy:
            raise ServerError(
                self.name,
                f"port(s) {', '.join(map(str, busy))} on {self.host} already in use by another "
                "process",
                self.log_file,
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.prepare()
        cmd = self.full_command()
        with self.log_file.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== {stamp} devstack: starting {self.name}: {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=self.environment(),
                    cwd=self.cwd(),
                )
            except OSError as exc:
                raise self.error(f"cannot execute {cmd[0]}: {exc}") from exc
        self._pid = self._popen.pid
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{self._pid}\n")
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise

    def attach(self, pid: int) -> bool:
        """Adopt a server started earlier (e.g. named by a pid file); False if ``pid`` is not one.

        The process must be alive and its command line must carry this server's identity, so a
        stale pid reused by an unrelated process is never adopted (nor later signalled).
        """
        if not pid_alive(pid):
            return False
        cmdline = " ".join(pid_cmdline(pid))
        if not all(token in cmdline for token in self.identity()):
            return False
        self._popen = None
        self._pid = pid
        return True

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Poll ``is_ready`` until it holds; raise if the process dies or time runs out."""
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running():
                code = self._popen.poll() if self._popen is not None else None
                how = f" with code {code}" if code is not None else ""
                raise self.error(f"process exited{how} before it was ready")
            if self.is_ready():
                return
            if time.monotonic() >= deadline:
                raise self.error(f"not ready after {timeout_s:.0f} s")
            time.sleep(self.poll_interval_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop gracefully (stop signals, bounded wait), then SIGKILL whatever is left."""
        if self._pid is not None:
            terminate_process(self._pid, self.stop_signals, timeout_s, self._popen)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash, for fault tests)."""
        if self._pid is not None:
            _signal_group(self._pid, signal.SIGKILL)
            _wait_exit(self._pid, _KILL_WAIT_S, self._popen)
        self._forget()

    def _forget(self) -> None:
        if self.pid_file is not None and read_pid_file(self.pid_file) == self._pid:
            self.pid_file.unlink(missing_ok=True)
        self._popen = None
        self._pid = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address}, pid={self._pid})"

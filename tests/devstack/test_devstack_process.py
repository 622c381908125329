"""The process plumbing every dev-stack server shares: readiness, early death, stopping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack import ServerError, ServerProcess, free_port
from devstack.process import (
    ignored_signals,
    log_tail,
    pid_alive,
    port_accepts,
    port_is_free,
    terminate_process,
)


class ScriptServer(ServerProcess):
    """A Python one-liner as a server; ready when it listens on ``port``."""

    name = "script"
    poll_interval_s = 0.05

    def __init__(self, log_file: Path, script: str, port: int, **kwargs: object) -> None:
        super().__init__(log_file, **kwargs)  # type: ignore[arg-type]
        self.script = script
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.port)]

    def ports(self) -> list[int]:
        return [self.port]

    def identity(self) -> list[str]:
        return ["-c", str(self.port)]

    def is_ready(self) -> bool:
        return port_accepts(self.port)


LISTEN = """
import socket, sys, time
print("listening", flush=True)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
time.sleep(600)
"""
CRASH = "import sys; print('boom: bad config', flush=True); sys.exit(3)"
NEVER_READY = "import time; print('thinking', flush=True); time.sleep(600)"


def test_free_port_is_free_and_bindable() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)
        assert port_accepts(port)


def test_start_waits_for_readiness_and_stop_ends_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "script.pid"
    server = ScriptServer(tmp_path / "script.log", LISTEN, free_port(), pid_file=pid_file)
    server.start(timeout_s=30)
    pid = server.pid
    assert pid is not None and pid_alive(pid)
    assert server.is_ready()
    assert pid_file.read_text().strip() == str(pid)
    assert os.getpgid(pid) == pid  # its own session and process group
    server.stop(timeout_s=10)
    assert not pid_alive(pid)
    assert not pid_file.exists()
    assert "listening" in (tmp_path / "script.log").read_text()


def test_early_exit_raises_server_error_with_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "script.log"
    server = ScriptServer(log, CRASH, free_port())
    with pytest.raises(ServerError) as info:
        server.start(timeout_s=60)
    message = str(info.value)
    assert info.value.server == "script"
    assert "exited with code 3" in message
    assert str(log) in message
    assert "boom: bad config" in message
    assert server.pid is None


def test_readiness_timeout_kills_the_process(tmp_path: Path) -> None:
    server = ScriptServer(tmp_path / "script.log", NEVER_READY, free_port())
    with pytest.raises(ServerError, match="not ready after 1 s") as info:
        server.start(timeout_s=1)
    assert "thinking" in info.value.log_tail
    assert server.pid is None


def test_busy_port_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = ScriptServer(tmp_path / "script.log", LISTEN, port)
        with pytest.raises(ServerError, match=f"port\\(s\\) {port} .* in use"):
            server.start(timeout_s=5)
    assert not (tmp_path / "script.log").exists()


def test_attach_refuses_a_process_that_is_not_the_server(tmp_path: Path) -> None:
    server = ScriptServer(tmp_path / "script.log", LISTEN, free_port())
    assert not server.attach(os.getpid())  # alive, but another program
    assert server.pid is None


def test_attach_adopts_the_server_and_can_stop_it(tmp_path: Path) -> None:
    first = ScriptServer(tmp_path / "script.log", LISTEN, free_port())
    first.start(timeout_s=30)
    pid = first.pid
    assert pid is not None
    other = ScriptServer(tmp_path / "script.log", LISTEN, first.port)
    assert other.attach(pid)
    other.wait_ready(timeout_s=5)
    other.stop(timeout_s=10)
    assert not first.running()


def test_terminate_kills_what_ignores_sigterm_and_the_whole_group() -> None:
    # a leader that ignores SIGTERM, with a child in its process group
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    child_pid = int(proc.stdout.readline())
    deadline = time.monotonic() + 30
    while signal.SIGTERM not in ignored_signals(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert signal.SIGTERM in ignored_signals(proc.pid)
    graceful = terminate_process(proc.pid, (signal.SIGTERM,), timeout_s=0.5, popen=proc)
    assert not graceful
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while pid_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child_pid)


def test_log_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert log_tail(tmp_path / "missing.log") == ""

"""The loopback TCP proxy used by fault tests: pass-through, added latency, link down and up."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from devstack import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:  # the proxy reset the connection: expected in these tests
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo_port) as p:
        yield p


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _is_cut(sock: socket.socket) -> bool:
    """True when the peer has closed or reset the connection."""
    try:
        sock.sendall(b"ping")
        return sock.recv(16) == b""
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return True


def _refused_or_cut(port: int) -> bool:
    """True when a new connection fails at once or is cut before any data comes back."""
    try:
        sock = _connect(port)
    except (ConnectionResetError, ConnectionRefusedError):
        return True
    with sock:
        return _is_cut(sock)


def test_forwards_both_directions(proxy: TcpProxy) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one chunk
    with _connect(proxy.port) as sock:
        assert _round_trip(sock, payload) == payload
    assert proxy.connections_total == 1


def test_delay_applies_in_both_directions(proxy: TcpProxy) -> None:
    proxy.set_delay(0.3)
    with _connect(proxy.port) as sock:
        started = time.monotonic()
        assert _round_trip(sock, b"hello") == b"hello"
        elapsed = time.monotonic() - started
    # a lower bound only: the echo crossed the proxy twice, each way held for 0.3 s
    assert elapsed >= 0.6
    proxy.set_delay(0)
    with _connect(proxy.port) as sock:
        assert _round_trip(sock, b"again") == b"again"


def test_negative_delay_is_rejected(proxy: TcpProxy) -> None:
    with pytest.raises(ValueError):
        proxy.set_delay(-1)


def test_down_cuts_open_connections_and_refuses_new_ones_until_up(proxy: TcpProxy) -> None:
    open_sock = _connect(proxy.port)
    assert _round_trip(open_sock, b"before") == b"before"

    proxy.set_down(True)
    assert _is_cut(open_sock)
    open_sock.close()
    assert _refused_or_cut(proxy.port)
    assert proxy.active_connections == 0

    proxy.set_down(False)
    with _connect(proxy.port) as sock:
        assert _round_trip(sock, b"after") == b"after"


def test_unreachable_target_cuts_the_client() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    with TcpProxy("127.0.0.1", dead_port) as proxy:
        assert _refused_or_cut(proxy.port)


def test_stop_closes_the_listener(echo_port: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo_port).start()
    port = proxy.port
    with _connect(port) as sock:
        assert _round_trip(sock, b"x") == b"x"
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_fixed_listen_port(echo_port: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        wanted = probe.getsockname()[1]
    with TcpProxy("127.0.0.1", echo_port, listen_port=wanted) as proxy:
        assert proxy.port == wanted
        with _connect(wanted) as sock:
            assert _round_trip(sock, b"y") == b"y"
